/* A byte-stream connection: plain TCP today, TLS behind the same calls later. */
#ifndef POPGATE_CONN_H
#define POPGATE_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

enum conn_status {
    CONN_DONE,  /* *n_r bytes moved (> 0) */
    CONN_AGAIN, /* would block; wait for the interest in conn->want_* */
    CONN_EOF,   /* the peer closed (reads only) */
    CONN_ERROR, /* the connection is broken; errno says why */
};

struct conn;

struct conn_ops {
    enum conn_status (*read)(struct conn *c, void *buf, size_t len, size_t *n_r);
    enum conn_status (*write)(struct conn *c, const void *buf, size_t len, size_t *n_r);
    void (*close)(struct conn *c);
};

/*
 * Embeddable. After CONN_AGAIN, want_read/want_write say which readiness lets
 * the call make progress (TLS may need to write to read, and the reverse).
 */
struct conn {
    int fd;
    const struct conn_ops *ops;
    void *impl;
    bool want_read, want_write;
};

/* Sets up a plain TCP connection over fd (non-blocking; the conn owns it). */
void conn_init_plain(struct conn *c, int fd);

static inline enum conn_status conn_read(struct conn *c, void *buf, size_t len, size_t *n_r)
{
    return c->ops->read(c, buf, len, n_r);
}

static inline enum conn_status conn_write(struct conn *c, const void *buf, size_t len, size_t *n_r)
{
    return c->ops->write(c, buf, len, n_r);
}

/* Closes the socket (and any TLS state). Safe to call twice. */
void conn_close(struct conn *c);

/* Sets O_NONBLOCK and FD_CLOEXEC, and TCP_NODELAY for TCP sockets. Returns 0 or -1. */
int conn_prepare_fd(int fd);

/* Formats a socket address as "192.0.2.7:51234" or "[2001:db8::1]:51234". */
void conn_format_addr(const void *sockaddr, char *out, size_t cap);

#endif
