/* TLS contexts: builds a listener's server SSL_CTX (certificates chosen by SNI, the
 * listener's policy) and an upstream's client SSL_CTX (verification) from the config. */
#include "tls.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/*
 * Error texts, which config.c maps back to the key that names the file, so their forms
 * are fixed:
 *   cannot load certificate "FILE": REASON
 *   cannot load key "FILE": REASON
 *   key "KEY" does not match certificate "CERT"
 *   invalid ciphers "LIST": REASON
 *   cannot load CA file "FILE": REASON
 * FILE is shown as configured, with control bytes escaped.
 */

/* No PEM file of certificates, keys or CAs comes near this; a larger "regular" file is
 * something like /proc/kcore, which would be read for ever. */
#define TLS_FILE_MAX (16 * 1024 * 1024)

/* Bytes of a file name or cipher list shown in an error. */
#define TLS_SHOW_MAX 400

/* The contexts of a listener's second and later certificates, hung on the default context
 * as ex_data so that whoever frees the default (SSL_CTX_free or tls_ctx_free) frees them. */
struct tls_sni {
    size_t n;
    SSL_CTX **ctxs; /* ctxs[0] is the default context itself, not owned here */
};

static CRYPTO_ONCE sni_once = CRYPTO_ONCE_STATIC_INIT;
static int sni_index = -1;

static void sni_free_cb(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
    (void)parent;
    (void)ad;
    (void)idx;
    (void)argl;
    (void)argp;
    struct tls_sni *sni = ptr;
    if (sni == NULL)
        return;
    for (size_t i = 1; i < sni->n; i++)
        SSL_CTX_free(sni->ctxs[i]);
    free(sni->ctxs);
    free(sni);
}

static void sni_index_init(void)
{
    sni_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, sni_free_cb);
}

static void errf(char *err, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void errf(char *err, size_t cap, const char *fmt, ...)
{
    if (err == NULL || cap == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, cap, fmt, ap);
    va_end(ap);
}

#define SHOWN_LEN (TLS_SHOW_MAX * 4 + 4)

/* s with control bytes escaped and cut, so an error stays one line. dst holds SHOWN_LEN
 * bytes. */
static const char *shown(char *dst, const char *s)
{
    size_t o = 0, i = 0;
    for (; s[i] != '\0' && i < TLS_SHOW_MAX; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f)
            o += (size_t)sprintf(dst + o, "\\x%02x", c);
        else
            dst[o++] = (char)c;
    }
    if (s[i] != '\0') {
        memcpy(dst + o, "...", 3);
        o += 3;
    }
    dst[o] = '\0';
    return dst;
}

/* OpenSSL's reason for the oldest queued error (the cause; later entries are the callers
 * giving up), then an empty queue. */
static const char *ssl_reason(char *buf, size_t cap)
{
    unsigned long e = ERR_get_error();
    ERR_clear_error();
    if (e == 0)
        return "unknown error";
    if (ERR_SYSTEM_ERROR(e))
        return strerror(ERR_GET_REASON(e));
    const char *r = ERR_reason_error_string(e);
    if (r != NULL)
        return r;
    snprintf(buf, cap, "OpenSSL error %#lx", e);
    return buf;
}

/*
 * Checks that file can be read before OpenSSL opens it, so a missing file says "No such
 * file or directory" rather than OpenSSL's "system lib", and a FIFO, device or huge file
 * is refused rather than waited on or read for ever (hence O_NONBLOCK for the open).
 */
static int check_readable(const char *file, const char **why_r)
{
    int fd = open(file, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        *why_r = strerror(errno);
        return -1;
    }
    struct stat st;
    int rc = fstat(fd, &st);
    int saved = errno;
    close(fd);
    if (rc != 0) {
        *why_r = strerror(saved);
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        *why_r = "not a regular file";
        return -1;
    }
    if (st.st_size > TLS_FILE_MAX) {
        *why_r = "larger than 16 MiB, too large for a PEM file";
        return -1;
    }
    return 0;
}

/* A key file that asks for a passphrase is refused instead of prompting on a terminal
 * that a daemon does not have. */
static int no_passphrase_cb(char *buf, int size, int rwflag, void *userdata)
{
    (void)buf;
    (void)size;
    (void)rwflag;
    if (userdata != NULL)
        *(bool *)userdata = true;
    return -1;
}

/* OpenSSL's reason for a file that held no PEM object of the wanted kind ("no start
 * line", "unsupported") says little on its own; what, then OpenSSL's words. */
static const char *pem_reason(const char *what, char *buf, size_t cap)
{
    unsigned long e = ERR_peek_error();
    bool none = (ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE) ||
                (ERR_GET_LIB(e) == ERR_LIB_OSSL_DECODER && ERR_GET_REASON(e) == ERR_R_UNSUPPORTED);
    char reason[64];
    const char *r = ssl_reason(reason, sizeof(reason));
    if (!none)
        snprintf(buf, cap, "%s", r);
    else
        snprintf(buf, cap, "no PEM %s found (%s)", what, r);
    return buf;
}

static int is_key_mismatch(unsigned long e)
{
    return ERR_GET_LIB(e) == ERR_LIB_X509 && (ERR_GET_REASON(e) == X509_R_KEY_VALUES_MISMATCH ||
                                              ERR_GET_REASON(e) == X509_R_KEY_TYPE_MISMATCH);
}

static int load_cert_pair(SSL_CTX *ctx, const struct config_cert *c, char *err, size_t cap)
{
    char name[SHOWN_LEN], name2[SHOWN_LEN], buf[128];
    const char *why;
    bool asked = false;
    SSL_CTX_set_default_passwd_cb(ctx, no_passphrase_cb);
    SSL_CTX_set_default_passwd_cb_userdata(ctx, &asked);
    if (check_readable(c->cert, &why) != 0) {
        errf(err, cap, "cannot load certificate \"%s\": %s", shown(name, c->cert), why);
        return -1;
    }
    if (check_readable(c->key, &why) != 0) {
        errf(err, cap, "cannot load key \"%s\": %s", shown(name, c->key), why);
        return -1;
    }
    ERR_clear_error();
    if (SSL_CTX_use_certificate_chain_file(ctx, c->cert) != 1) {
        errf(err, cap, "cannot load certificate \"%s\": %s", shown(name, c->cert),
             pem_reason("certificate", buf, sizeof(buf)));
        return -1;
    }
    /* OpenSSL checks the key against the certificate while loading it; a mismatch then
     * fails here rather than in SSL_CTX_check_private_key. */
    if (SSL_CTX_use_PrivateKey_file(ctx, c->key, SSL_FILETYPE_PEM) != 1) {
        if (is_key_mismatch(ERR_peek_error())) {
            ERR_clear_error();
            errf(err, cap, "key \"%s\" does not match certificate \"%s\"", shown(name, c->key),
                 shown(name2, c->cert));
        } else if (asked) {
            ERR_clear_error();
            errf(err, cap,
                 "cannot load key \"%s\": it is encrypted, and popgate asks for no passphrase "
                 "(store the key unencrypted, readable only by popgate)",
                 shown(name, c->key));
        } else {
            errf(err, cap, "cannot load key \"%s\": %s", shown(name, c->key),
                 pem_reason("private key", buf, sizeof(buf)));
        }
        return -1;
    }
    /* The flag lives in this frame; the callback stays, so nothing ever prompts. */
    SSL_CTX_set_default_passwd_cb_userdata(ctx, NULL);
    if (SSL_CTX_check_private_key(ctx) != 1) {
        ERR_clear_error();
        errf(err, cap, "key \"%s\" does not match certificate \"%s\"", shown(name, c->key),
             shown(name2, c->cert));
        return -1;
    }
    return 0;
}

/* The policy every context of one listener shares. */
static SSL_CTX *server_ctx_one(const struct config_listener *l, const struct config_cert *c,
                               char *err, size_t cap)
{
    char buf[64];
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) {
        errf(err, cap, "cannot create a TLS context: %s", ssl_reason(buf, sizeof(buf)));
        return NULL;
    }
    if (SSL_CTX_set_min_proto_version(ctx, l->min_version) != 1) {
        errf(err, cap, "cannot set the minimum TLS version %s: %s",
             tls_version_name(l->min_version), ssl_reason(buf, sizeof(buf)));
        goto fail;
    }
    /* OpenSSL 3 refuses TLS 1.0 and 1.1 above level 0. The derived 0 goes first, so a
     * "@SECLEVEL=n" in ciphers still wins; an explicit security_level goes last and wins
     * over both. */
    if (l->security_level < 0 && l->min_version < TLS1_2_VERSION)
        SSL_CTX_set_security_level(ctx, 0);
    if (l->ciphers != NULL && SSL_CTX_set_cipher_list(ctx, l->ciphers) != 1) {
        char list[SHOWN_LEN];
        errf(err, cap, "invalid ciphers \"%s\": %s", shown(list, l->ciphers),
             ssl_reason(buf, sizeof(buf)));
        goto fail;
    }
    if (l->security_level >= 0)
        SSL_CTX_set_security_level(ctx, l->security_level);

    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_TICKET);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                              SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    /* No resumption: workers are separate processes behind a load balancer, so a cache
     * or ticket key of one process would rarely see the client again, and an idle
     * session should hold nothing. */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_num_tickets(ctx, 0);

    if (load_cert_pair(ctx, c, err, cap) != 0)
        goto fail;
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

/* Switches the connection to the first certificate that carries the name the client
 * asked for; any other name, or none, keeps the default. */
static int sni_cb(SSL *ssl, int *alert, void *arg)
{
    (void)alert;
    const struct tls_sni *sni = arg;
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    if (name == NULL || *name == '\0')
        return SSL_TLSEXT_ERR_OK;
    for (size_t i = 0; i < sni->n; i++) {
        X509 *x = SSL_CTX_get0_certificate(sni->ctxs[i]);
        if (x != NULL && X509_check_host(x, name, 0, 0, NULL) == 1) {
            if (i > 0 && SSL_set_SSL_CTX(ssl, sni->ctxs[i]) == NULL)
                return SSL_TLSEXT_ERR_ALERT_FATAL;
            break;
        }
    }
    return SSL_TLSEXT_ERR_OK;
}

void *tls_server_ctx_new(const struct config_listener *l, char *err, size_t cap)
{
    if (l == NULL || l->ncerts == 0) {
        errf(err, cap, "no certificate");
        return NULL;
    }
    SSL_CTX *ctx = server_ctx_one(l, &l->certs[0], err, cap);
    if (ctx == NULL || l->ncerts == 1)
        return ctx;

    if (!CRYPTO_THREAD_run_once(&sni_once, sni_index_init) || sni_index < 0) {
        errf(err, cap, "cannot set up SNI");
        SSL_CTX_free(ctx);
        return NULL;
    }
    struct tls_sni *sni = calloc(1, sizeof(*sni));
    if (sni == NULL || (sni->ctxs = calloc(l->ncerts, sizeof(*sni->ctxs))) == NULL) {
        free(sni);
        errf(err, cap, "out of memory");
        SSL_CTX_free(ctx);
        return NULL;
    }
    sni->ctxs[0] = ctx;
    sni->n = 1;
    /* From here the default context owns sni: freeing it frees the others. */
    if (SSL_CTX_set_ex_data(ctx, sni_index, sni) != 1) {
        free(sni->ctxs);
        free(sni);
        errf(err, cap, "cannot set up SNI");
        SSL_CTX_free(ctx);
        return NULL;
    }
    for (size_t i = 1; i < l->ncerts; i++) {
        SSL_CTX *c = server_ctx_one(l, &l->certs[i], err, cap);
        if (c == NULL) {
            SSL_CTX_free(ctx);
            return NULL;
        }
        sni->ctxs[sni->n++] = c;
    }
    SSL_CTX_set_tlsext_servername_callback(ctx, sni_cb);
    SSL_CTX_set_tlsext_servername_arg(ctx, sni);
    return ctx;
}

void *tls_client_ctx_new(const struct config_upstream *u, char *err, size_t cap)
{
    char buf[64];
    if (u == NULL) {
        errf(err, cap, "no upstream");
        return NULL;
    }
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL) {
        errf(err, cap, "cannot create a TLS context: %s", ssl_reason(buf, sizeof(buf)));
        return NULL;
    }
    if (SSL_CTX_set_min_proto_version(ctx, u->min_version) != 1) {
        errf(err, cap, "cannot set the minimum TLS version %s: %s",
             tls_version_name(u->min_version), ssl_reason(buf, sizeof(buf)));
        goto fail;
    }
    /* As for listeners: an upstream that only speaks TLS 1.0/1.1 needs level 0. */
    if (u->min_version < TLS1_2_VERSION)
        SSL_CTX_set_security_level(ctx, 0);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                              SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);

    if (!u->verify) {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
        return ctx;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if (u->ca_file != NULL) {
        char name[SHOWN_LEN];
        const char *why;
        if (check_readable(u->ca_file, &why) != 0) {
            errf(err, cap, "cannot load CA file \"%s\": %s", shown(name, u->ca_file), why);
            goto fail;
        }
        if (SSL_CTX_load_verify_locations(ctx, u->ca_file, NULL) != 1) {
            errf(err, cap, "cannot load CA file \"%s\": %s", shown(name, u->ca_file),
                 ssl_reason(buf, sizeof(buf)));
            goto fail;
        }
    } else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
        errf(err, cap, "cannot load the system CA store: %s", ssl_reason(buf, sizeof(buf)));
        goto fail;
    }
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

void tls_ctx_free(void *ctx)
{
    SSL_CTX_free(ctx);
}

const char *tls_version_name(int version)
{
    switch (version) {
    case SSL3_VERSION:
        return "SSLv3";
    case TLS1_VERSION:
        return "TLSv1";
    case TLS1_1_VERSION:
        return "TLSv1.1";
    case TLS1_2_VERSION:
        return "TLSv1.2";
    case TLS1_3_VERSION:
        return "TLSv1.3";
    case 0:
        return "any";
    }
    return "unknown";
}
