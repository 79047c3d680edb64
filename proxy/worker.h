/* A worker process: accepts on the shared listening sockets and runs sessions. */
#ifndef POPGATE_WORKER_H
#define POPGATE_WORKER_H

#include <ev.h>

#include "config.h"

/*
 * Serves cfg's listeners from listen_fds (one per cfg->listeners entry, bound
 * by the master) on loop until SIGTERM or SIGINT: then stops accepting, lets
 * running sessions finish for cfg->shutdown_timeout seconds, closes the rest
 * (no QUIT ran for them, so nothing is deleted) and returns the exit status.
 */
int worker_run(struct ev_loop *loop, const struct config *cfg, const int *listen_fds);

#endif
