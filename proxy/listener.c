/* Listening sockets: bind, accept, and hand each client to a new session. */
/* accept4 (Linux): the accepted socket is non-blocking without fcntl calls. */
#define _GNU_SOURCE
#include "listener.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conn.h"
#include "conn_limit.h"
#include "log.h"
#include "metrics.h"
#include "pop3_writer.h"
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

/*
 * Turns a client away without a session: it costs a flood one log line and one
 * write. The reply is best effort (a non-blocking send into an empty socket
 * buffer, which only a dead peer refuses); an implicit-TLS client gets no
 * plaintext it could not read, only the close.
 */
static void refuse(const struct listener *l, int fd, const struct sockaddr_storage *peer,
                   enum conn_limit_verdict v)
{
    if (l->cl->tls != CONFIG_TLS_IMPLICIT) {
        char reply[128];
        size_t len =
            pop3_writer_status(reply, sizeof(reply), false, "SYS/TEMP", CONN_LIMIT_REFUSED_TEXT);
        ssize_t n = send(fd, reply, len, MSG_NOSIGNAL);
        (void)n;
        /* Whatever the client sent (a PROXY header) would turn the close into a
         * reset, which may destroy the reply before the client reads it. */
        char drain[1024];
        for (int i = 0; i < 4 && recv(fd, drain, sizeof(drain), MSG_DONTWAIT) > 0; i++)
            ;
    }
    close(fd);
    char client[64];
    conn_format_addr(peer, client, sizeof(client));
    log_line(LOG_INFO, "event=connection_refused client=%s listener=%s reason=\"%s\" limit=%u",
             client, l->cl->address_text, conn_limit_reason(v),
             conn_limit_bound(&l->cfg->limits, v));
    metrics_connection_refused(conn_limit_metrics_reason(v));
}

static void accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)revents;
    struct listener *l = w->data;
    for (int i = 0; i < LISTENER_ACCEPT_BURST; i++) {
        struct sockaddr_storage peer;
        socklen_t len = sizeof(peer);
        /* Non-blocking and close-on-exec from the start: two fcntl calls fewer a client. */
        int fd = accept4(l->fd, (struct sockaddr *)&peer, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
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
        conn_set_nodelay(fd);
        /* Behind a PROXY header the peer is the load balancer: its connection counts in
         * the total now, the client's address once the header names it (session_conn.c).
         * session_start keys the peer the same way and releases the count at the end. */
        uint64_t key = l->cl->proxy_protocol ? 0 : conn_limit_key(&peer);
        enum conn_limit_verdict v = conn_limit_admit(&l->cfg->limits, key);
        if (v != CONN_LIMIT_OK) {
            refuse(l, fd, &peer, v);
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
