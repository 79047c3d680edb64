/* TLS contexts: a listener's server context (certificates, SNI, policy) and an upstream's
 * client context (verification), built from the configuration. */
#ifndef POPGATE_TLS_H
#define POPGATE_TLS_H

#include <stddef.h>

#include "config.h"

/*
 * Builds the SSL_CTX for a listener: every certificate of l->certs (the first is
 * the default; an SNI callback switches to the one whose certificate matches the
 * name the client asked for), l->min_version, l->ciphers, l->security_level,
 * SSL_MODE_RELEASE_BUFFERS, no compression, no renegotiation, server cipher
 * preference. Returns the context (caller owns; SSL_CTX_free) or NULL with a
 * one-line reason in err ("cannot load certificate \"/x.pem\": No such file or
 * directory", "key \"/k.pem\" does not match certificate \"/c.pem\"", "invalid
 * ciphers \"FOO\"").
 */
void *tls_server_ctx_new(const struct config_listener *l, char *err, size_t cap);

/*
 * Builds the SSL_CTX for an upstream: verification on unless u->verify is false
 * (against u->ca_file, or the system store), u->min_version,
 * SSL_MODE_RELEASE_BUFFERS. The host name check itself is set per connection
 * (conn_tls_connect). Returns the context or NULL with a reason in err.
 */
void *tls_client_ctx_new(const struct config_upstream *u, char *err, size_t cap);

void tls_ctx_free(void *ctx);

/* "TLSv1.2" for TLS1_2_VERSION, and so on. */
const char *tls_version_name(int version);

#endif
