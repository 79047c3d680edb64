/* Deferred frees: objects torn down inside callbacks are freed once the loop is idle. */
#ifndef POPGATE_REAPER_H
#define POPGATE_REAPER_H

#include <ev.h>

/* Hooks the reaper into the loop (once, at start). */
void reaper_init(struct ev_loop *loop);

/*
 * Queues fn(ptr) to run after every callback of this loop iteration has
 * returned, so no caller up the stack still uses ptr. Aborts on out of memory
 * rather than leak a session silently.
 */
void reaper_add(void (*fn)(void *ptr), void *ptr);

/* Runs every queued free now (at shutdown). */
void reaper_run(void);

#endif
