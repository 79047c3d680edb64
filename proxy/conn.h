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
    enum conn_status (*handshake)(struct conn *c); /* CONN_DONE when complete */
    size_t (*pending)(const struct conn *c);       /* bytes readable without the socket */
    void (*close)(struct conn *c);
};

/* The readiness an operation waits for; the values are libev's EV_READ and EV_WRITE. */
#define CONN_WAIT_READ  0x01
#define CONN_WAIT_WRITE 0x02

/*
 * Embeddable. After CONN_AGAIN, rd_wait / wr_wait / hs_wait say which socket
 * readiness lets the read / write / handshake make progress: TLS may need to
 * write to read, and the reverse.
 */
struct conn {
    int fd;
    const struct conn_ops *ops;
    void *impl; /* SSL * for TLS */
    int rd_wait, wr_wait, hs_wait;
    bool wr_blocked;  /* the last write would have blocked: wait for wr_wait first */
    bool handshaking; /* a TLS handshake is under way: only conn_handshake() may run */
    char error[160];  /* the last TLS failure, for the log */
};
/* Sets up a plain TCP connection over fd (non-blocking; the conn owns it). */
void conn_init_plain(struct conn *c, int fd);

static inline enum conn_status conn_read(struct conn *c, void *buf, size_t len, size_t *n_r)
{
    enum conn_status st = c->ops->read(c, buf, len, n_r);
    if (st != CONN_AGAIN)
        c->rd_wait = CONN_WAIT_READ; /* a TLS read that waited for writability is over */
    return st;
}

static inline enum conn_status conn_write(struct conn *c, const void *buf, size_t len, size_t *n_r)
{
    enum conn_status st = c->ops->write(c, buf, len, n_r);
    c->wr_blocked = st == CONN_AGAIN;
    if (!c->wr_blocked)
        c->wr_wait = CONN_WAIT_WRITE; /* a TLS write that waited for readability is over */
    return st;
}

static inline enum conn_status conn_handshake(struct conn *c)
{
    return c->ops->handshake(c);
}

/* Decrypted bytes buffered inside the connection: read them even without a socket
 * event (libev only reports the socket). */
static inline size_t conn_pending(const struct conn *c)
{
    return c->ops->pending(c);
}

static inline bool conn_is_tls(const struct conn *c)
{
    return c->impl != NULL;
}

/*
 * Puts TLS on a connected plain conn, as the server (ctx from a listener) or
 * as the client (ctx from an upstream; sni may be NULL for an address;
 * verify_name is the name the certificate must carry, NULL when not
 * verifying). conn->handshaking is set: drive conn_handshake() until
 * CONN_DONE. Returns 0, or -1 with conn->error set.
 */
int conn_tls_accept(struct conn *c, void *ctx);
int conn_tls_connect(struct conn *c, void *ctx, const char *sni, const char *verify_name);

/* "TLSv1.3 TLS_AES_256_GCM_SHA384", or "-" for plain connections. */
void conn_tls_describe(const struct conn *c, char *out, size_t cap);

/* Closes the socket (and any TLS state). Safe to call twice. */
void conn_close(struct conn *c);

/* Sets O_NONBLOCK and FD_CLOEXEC, and TCP_NODELAY for TCP sockets. Returns 0 or -1. */
int conn_prepare_fd(int fd);
/* TCP_NODELAY on a socket made non-blocking and close-on-exec by accept4/socket. */
void conn_set_nodelay(int fd);

/* Formats a socket address as "192.0.2.7:51234" or "[2001:db8::1]:51234". */
void conn_format_addr(const void *sockaddr, char *out, size_t cap);

#endif
