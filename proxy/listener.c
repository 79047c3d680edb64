/* Listening sockets: bind, accept, and hand each client to a new session. */
#include "listener.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conn.h"
#include "log.h"
#include "session.h"

#define LISTENER_BACKLOG 1024
/* Accepts per wake-up, so one busy listener cannot starve the loop. */
#define LISTENER_ACCEPT_BURST 64
/* Pause after running out of file descriptors, before trying again. */
#define LISTENER_EMFILE_PAUSE 0.5

struct listener {
    struct ev_loop *loop;
    const struct config *cfg;
    const struct config_listener *cl;
    int fd;
    ev_io io;
    ev_timer pause;
};

static void pause_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    struct listener *l = w->data;
    ev_io_start(loop, &l->io);
}

static void accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)revents;
    struct listener *l = w->data;
    for (int i = 0; i < LISTENER_ACCEPT_BURST; i++) {
        struct sockaddr_storage peer;
        socklen_t len = sizeof(peer);
        int fd = accept(l->fd, (struct sockaddr *)&peer, &len);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                char q[LOG_VALUE_MAX];
                log_line(LOG_ERROR, "event=accept_failed listener=%s reason=%s",
                         l->cl->address_text, log_str(q, sizeof(q), strerror(errno)));
                ev_io_stop(loop, &l->io);
                ev_timer_set(&l->pause, LISTENER_EMFILE_PAUSE, 0);
                ev_timer_start(loop, &l->pause);
            }
            return;
        }
        if (conn_prepare_fd(fd) < 0) {
            close(fd);
            continue;
        }
        (void)session_start(loop, l->cfg, l->cl, fd, &peer);
    }
}

int listener_bind(const struct config_listener *cl, const char **error_r)
{
    int fd = socket(cl->addr.ss_family, SOCK_STREAM, 0);
    if (fd < 0) {
        *error_r = strerror(errno);
        return -1;
    }
    int one = 1;
    (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    (void)setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    if (cl->addr.ss_family == AF_INET6)
        (void)setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, (const struct sockaddr *)&cl->addr, cl->addr_len) < 0 ||
        listen(fd, LISTENER_BACKLOG) < 0 || conn_prepare_fd(fd) < 0) {
        *error_r = strerror(errno);
        close(fd);
        return -1;
    }
    return fd;
}

struct listener *listener_attach(struct ev_loop *loop, const struct config *cfg,
                                 const struct config_listener *cl, int fd)
{
    struct listener *l = calloc(1, sizeof(*l));
    if (l == NULL)
        return NULL;
    l->fd = fd;
    l->loop = loop;
    l->cfg = cfg;
    l->cl = cl;
    ev_io_init(&l->io, accept_cb, l->fd, EV_READ);
    l->io.data = l;
    ev_init(&l->pause, pause_cb);
    l->pause.data = l;
    ev_io_start(loop, &l->io);
    return l;
}

void listener_free(struct listener **lp)
{
    struct listener *l = *lp;
    if (l == NULL)
        return;
    ev_io_stop(l->loop, &l->io);
    ev_timer_stop(l->loop, &l->pause);
    close(l->fd);
    free(l);
    *lp = NULL;
}
