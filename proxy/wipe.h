/* Wiping what library code left of a secret in stack memory. */
#ifndef POPGATE_WIPE_H
#define POPGATE_WIPE_H

#include <ev.h>

/*
 * Building and sending a login copies the password through frames popgate does not own
 * (printf's work buffers, libc's vector code); those copies stay in stack memory until a
 * deeper call reuses it. wipe_stack_later() marks that a callback handled a secret; before
 * the loop next waits, a prepare watcher overwrites the stack below the loop's own frames,
 * so no copy outlives the loop turn, whichever callback made it (client line, upstream
 * read or write, timer).
 */
void wipe_init(struct ev_loop *loop);
void wipe_stack_later(void);

/* Overwrites the stack below the caller's frame now. */
void wipe_stack(void);

#endif
