/* The plain TCP connection and the socket helpers shared by both sides. */
#include "conn.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

static enum conn_status plain_read(struct conn *c, void *buf, size_t len, size_t *n_r)
{
    for (;;) {
        ssize_t n = read(c->fd, buf, len);
        if (n > 0) {
            *n_r = (size_t)n;
            return CONN_DONE;
        }
        if (n == 0)
            return CONN_EOF;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            c->rd_wait = CONN_WAIT_READ;
            return CONN_AGAIN;
        }
        return CONN_ERROR;
    }
}

static enum conn_status plain_write(struct conn *c, const void *buf, size_t len, size_t *n_r)
{
    for (;;) {
        /* MSG_NOSIGNAL: a peer that went away is an error here, not a SIGPIPE. */
        ssize_t n = send(c->fd, buf, len, MSG_NOSIGNAL);
        if (n >= 0) {
            *n_r = (size_t)n;
            return CONN_DONE;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            c->wr_wait = CONN_WAIT_WRITE;
            return CONN_AGAIN;
        }
        return CONN_ERROR;
    }
}

static enum conn_status plain_handshake(struct conn *c)
{
    c->handshaking = false;
    return CONN_DONE;
}

static size_t plain_pending(const struct conn *c)
{
    (void)c;
    return 0;
}

static void plain_close(struct conn *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
}

static const struct conn_ops plain_ops = {
    .read = plain_read,
    .write = plain_write,
    .handshake = plain_handshake,
    .pending = plain_pending,
    .close = plain_close,
};

void conn_init_plain(struct conn *c, int fd)
{
    c->fd = fd;
    c->ops = &plain_ops;
    c->impl = NULL;
    c->rd_wait = c->hs_wait = CONN_WAIT_READ;
    c->wr_wait = CONN_WAIT_WRITE;
    c->wr_blocked = false;
    c->handshaking = false;
    c->error[0] = '\0';
}

void conn_close(struct conn *c)
{
    if (c->ops != NULL)
        c->ops->close(c);
}

void conn_set_nodelay(int fd)
{
    int one = 1;
    /* Replies are small and latency matters; the data path writes big chunks anyway. */
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

int conn_prepare_fd(int fd)
{
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
        return -1;
    if (fcntl(fd, F_SETFD, FD_CLOEXEC) < 0)
        return -1;
    conn_set_nodelay(fd);
    return 0;
}

void conn_format_addr(const void *sockaddr, char *out, size_t cap)
{
    const struct sockaddr *sa = sockaddr;
    char host[INET6_ADDRSTRLEN];
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = sockaddr;
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
        snprintf(out, cap, "%s:%u", host, (unsigned)ntohs(in->sin_port));
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = sockaddr;
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
        snprintf(out, cap, "[%s]:%u", host, (unsigned)ntohs(in6->sin6_port));
    } else {
        snprintf(out, cap, "unknown");
    }
}
