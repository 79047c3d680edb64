/* A connection's one libev watcher, pointed at the readiness the connection needs. */
#ifndef POPGATE_WATCH_H
#define POPGATE_WATCH_H

#include <ev.h>
#include <stdbool.h>

#include "conn.h"

/*
 * Points io at fd and events (0 stops it), calling into epoll only on a change.
 * *current is what io watches now; -1 forces a restart (a new fd).
 */
void watch_set(struct ev_loop *loop, ev_io *io, int *current, int fd, int events);

/*
 * Watches c for reading when want_read and for writing when want_write. A write is not
 * waited for unless the last one would have blocked (or the watcher already waits for
 * it): it is fed to io instead, which libev runs in this loop turn before it polls
 * again. So output made outside the connection's own callback (upstream data, a
 * finished command) goes out at once, without an epoll_ctl on and off around every
 * reply. Decrypted TLS bytes waiting inside the connection are fed as a read for the
 * same reason.
 */
void watch_conn(struct ev_loop *loop, ev_io *io, int *current, struct conn *c, bool want_read,
                bool want_write);

#endif
