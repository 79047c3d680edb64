/* The watcher of one connection: what it waits for, derived in one place for both sides. */
#include "watch.h"

void watch_set(struct ev_loop *loop, ev_io *io, int *current, int fd, int events)
{
    if (events == *current)
        return;
    ev_io_stop(loop, io);
    if (events != 0) {
        ev_io_set(io, fd, events);
        ev_io_start(loop, io);
    }
    *current = events;
}

void watch_conn(struct ev_loop *loop, ev_io *io, int *current, struct conn *c, bool want_read,
                bool want_write)
{
    int events = want_read ? c->rd_wait : 0;
    bool feed_write = false;
    if (want_write) {
        if (c->wr_blocked || (*current > 0 && (*current & c->wr_wait) != 0))
            events |= c->wr_wait;
        else
            feed_write = true;
    }
    /* Fed events go after the change: stopping a watcher drops its pending events. */
    watch_set(loop, io, current, c->fd, events);
    if (feed_write)
        ev_feed_event(loop, io, c->wr_wait);
    if (want_read && conn_pending(c) > 0)
        ev_feed_event(loop, io, c->rd_wait);
}
