/* Blocking state-store work (load, save with fsync) on a thread, off the event loop. */
#ifndef POPGATE_STATE_WORKER_H
#define POPGATE_STATE_WORKER_H

#include <ev.h>

/*
 * Starts the thread; completions run on loop (through an ev_async). Call once
 * per worker process, after fork. Returns 0 or -1.
 */
int state_worker_start(struct ev_loop *loop);

/*
 * Queues work(arg) to run on the thread, then done(arg) on the loop. Jobs run
 * one at a time in order. Returns 0, or -1 (out of memory, or not started): then
 * nothing runs and the caller still owns arg.
 */
int state_worker_submit(void (*work)(void *arg), void (*done)(void *arg), void *arg);

/* Runs every queued job to completion (their done callbacks too), then stops the
 * thread. For shutdown: no state write is lost. */
void state_worker_stop(void);

#endif
