/* The TLS connection: OpenSSL over a non-blocking socket, behind the conn interface. */
#include <arpa/inet.h>
#include <errno.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "conn.h"

/* Records why TLS failed: the peer certificate's verify result beats the error queue. */
static void record_error(struct conn *c, const char *what, int ssl_error)
{
    SSL *ssl = c->impl;
    long vr = ssl != NULL ? SSL_get_verify_result(ssl) : X509_V_OK;
    unsigned long e = ERR_peek_last_error();
    if (vr != X509_V_OK) {
        snprintf(c->error, sizeof(c->error), "%s: certificate verify failed: %s", what,
                 X509_verify_cert_error_string(vr));
    } else if (e != 0) {
        const char *reason = ERR_reason_error_string(e);
        snprintf(c->error, sizeof(c->error), "%s: %s", what,
                 reason != NULL ? reason : "unknown OpenSSL error");
    } else if (ssl_error == SSL_ERROR_SYSCALL && errno != 0) {
        snprintf(c->error, sizeof(c->error), "%s: %s", what, strerror(errno));
    } else if (ssl_error == SSL_ERROR_SYSCALL || ssl_error == SSL_ERROR_ZERO_RETURN) {
        snprintf(c->error, sizeof(c->error), "%s: connection closed by peer", what);
    } else {
        snprintf(c->error, sizeof(c->error), "%s: SSL error %d", what, ssl_error);
    }
    ERR_clear_error();
}

/* Maps an SSL_ERROR_WANT_* to the readiness the operation waits for; 0 otherwise. */
static int wait_for(int ssl_error)
{
    if (ssl_error == SSL_ERROR_WANT_READ)
        return CONN_WAIT_READ;
    if (ssl_error == SSL_ERROR_WANT_WRITE)
        return CONN_WAIT_WRITE;
    return 0;
}

static enum conn_status tls_handshake(struct conn *c)
{
    SSL *ssl = c->impl;
    ERR_clear_error();
    errno = 0;
    int rc = SSL_do_handshake(ssl);
    if (rc == 1) {
        c->handshaking = false;
        return CONN_DONE;
    }
    int e = SSL_get_error(ssl, rc);
    int w = wait_for(e);
    if (w != 0) {
        c->hs_wait = w;
        return CONN_AGAIN;
    }
    record_error(c, "TLS handshake failed", e);
    return CONN_ERROR;
}

static enum conn_status tls_read(struct conn *c, void *buf, size_t len, size_t *n_r)
{
    SSL *ssl = c->impl;
    ERR_clear_error();
    errno = 0;
    if (SSL_read_ex(ssl, buf, len, n_r) == 1)
        return CONN_DONE;
    int e = SSL_get_error(ssl, 0);
    int w = wait_for(e);
    if (w != 0) {
        c->rd_wait = w;
        return CONN_AGAIN;
    }
    if (e == SSL_ERROR_ZERO_RETURN)
        return CONN_EOF;
    /* A peer that closes TCP without close_notify: POP3 and IMAP frame their own data,
     * so a cut-off message is caught by the protocol (no final "." / literal short). */
    if (e == SSL_ERROR_SYSCALL && errno == 0) {
        ERR_clear_error();
        return CONN_EOF;
    }
    if (e == SSL_ERROR_SSL &&
        ERR_GET_REASON(ERR_peek_last_error()) == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
        ERR_clear_error();
        return CONN_EOF;
    }
    record_error(c, "TLS read failed", e);
    return CONN_ERROR;
}

static enum conn_status tls_write(struct conn *c, const void *buf, size_t len, size_t *n_r)
{
    SSL *ssl = c->impl;
    ERR_clear_error();
    errno = 0;
    if (SSL_write_ex(ssl, buf, len, n_r) == 1)
        return CONN_DONE;
    int e = SSL_get_error(ssl, 0);
    int w = wait_for(e);
    if (w != 0) {
        c->wr_wait = w;
        return CONN_AGAIN;
    }
    record_error(c, "TLS write failed", e);
    return CONN_ERROR;
}

static size_t tls_pending(const struct conn *c)
{
    return (size_t)SSL_pending(c->impl);
}

static void tls_close(struct conn *c)
{
    SSL *ssl = c->impl;
    if (ssl != NULL) {
        /* One try at close_notify; never wait for the peer's. */
        if (!c->handshaking)
            (void)SSL_shutdown(ssl);
        SSL_free(ssl);
        ERR_clear_error();
    }
    c->impl = NULL;
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
}

static const struct conn_ops tls_ops = {
    .read = tls_read,
    .write = tls_write,
    .handshake = tls_handshake,
    .pending = tls_pending,
    .close = tls_close,
};

static int tls_start(struct conn *c, void *ctx, bool server)
{
    ERR_clear_error();
    SSL *ssl = SSL_new(ctx);
    if (ssl == NULL || SSL_set_fd(ssl, c->fd) != 1) {
        c->impl = ssl;
        record_error(c, "TLS setup failed", SSL_ERROR_SSL);
        SSL_free(ssl);
        c->impl = NULL;
        return -1;
    }
    if (server)
        SSL_set_accept_state(ssl);
    else
        SSL_set_connect_state(ssl);
    c->impl = ssl;
    c->ops = &tls_ops;
    c->handshaking = true;
    c->hs_wait = server ? CONN_WAIT_READ : CONN_WAIT_WRITE;
    c->rd_wait = CONN_WAIT_READ;
    c->wr_wait = CONN_WAIT_WRITE;
    return 0;
}

int conn_tls_accept(struct conn *c, void *ctx)
{
    return tls_start(c, ctx, true);
}

int conn_tls_connect(struct conn *c, void *ctx, const char *sni, const char *verify_name)
{
    if (tls_start(c, ctx, false) < 0)
        return -1;
    SSL *ssl = c->impl;
    if (sni != NULL && SSL_set_tlsext_host_name(ssl, sni) != 1) {
        record_error(c, "TLS setup failed (SNI)", SSL_ERROR_SSL);
        return -1;
    }
    if (verify_name != NULL) {
        /* An IP address is checked against the certificate's IP entries, a name
         * against its DNS names (RFC 6125). */
        unsigned char addr[16];
        int ok;
        if (inet_pton(AF_INET, verify_name, addr) == 1 ||
            inet_pton(AF_INET6, verify_name, addr) == 1)
            ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), verify_name);
        else
            ok = SSL_set1_host(ssl, verify_name);
        if (ok != 1) {
            record_error(c, "TLS setup failed (verify name)", SSL_ERROR_SSL);
            return -1;
        }
    }
    return 0;
}

void conn_tls_describe(const struct conn *c, char *out, size_t cap)
{
    if (c->impl == NULL) {
        snprintf(out, cap, "-");
        return;
    }
    snprintf(out, cap, "%s/%s", SSL_get_version(c->impl), SSL_get_cipher_name(c->impl));
}
