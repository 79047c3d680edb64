/* The configuration: a JSON file parsed and validated whole into an immutable struct. */
#ifndef POPGATE_CONFIG_H
#define POPGATE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

enum config_tls {
    CONFIG_TLS_NONE,
    CONFIG_TLS_STARTTLS,
    CONFIG_TLS_IMPLICIT,
};

/* Who may send a password over a connection without TLS. */
enum config_plaintext_auth {
    CONFIG_PLAINTEXT_LOOPBACK, /* only clients on loopback addresses (default) */
    CONFIG_PLAINTEXT_DENY,
    CONFIG_PLAINTEXT_ALLOW,
};

struct config_cert {
    char *cert; /* PEM file: the certificate, then its chain */
    char *key;  /* PEM file: the private key */
};

struct config_listener {
    char *address_text;           /* as written: "127.0.0.1:1110", "[::1]:1110" */
    struct sockaddr_storage addr; /* parsed numeric address */
    socklen_t addr_len;
    enum config_tls tls; /* "tls": none (default), starttls (STLS), implicit */
    /* "cert"+"key" (first, if given), then "certificates": [{"cert","key"}] in order;
     * certs[0] is the default, the others are chosen by SNI (the first whose certificate
     * carries the name the client asked for). At least one unless tls is none; with tls
     * none these and the TLS policy keys below are refused as unused. */
    struct config_cert *certs;
    size_t ncerts;
    int min_version;    /* "min_version": "TLSv1".."TLSv1.3" as OpenSSL's TLS1_VERSION..
                         * TLS1_3_VERSION; default TLS1_2_VERSION */
    char *ciphers;      /* "ciphers": OpenSSL cipher list for TLS <= 1.2, or NULL */
    int security_level; /* "security_level" 0..5; -1 = OpenSSL's default, except that a
                         * min_version below TLS 1.2 defaults to 0 (OpenSSL 3 refuses
                         * TLS 1.0/1.1 at level 1 and above). A "@SECLEVEL=n" in ciphers
                         * wins over that default; an explicit security_level wins over
                         * both. */
    enum config_plaintext_auth plaintext_auth; /* "plaintext_auth"; default loopback */
    void *tls_ctx; /* SSL_CTX *, built at load unless tls is none, so a certificate that
                    * cannot be used refuses the config; owned by the config */
};

struct config_upstream {
    char *name; /* the key in "upstreams" */
    char *host;
    uint16_t port;
    enum config_tls tls; /* "tls"; default implicit for port 993, else none */
    /* verify, ca_file, verify_name and min_version only go with tls starttls/implicit;
     * with tls none they are refused as unused. */
    bool verify;       /* "verify": check the server certificate; default true */
    char *ca_file;     /* "ca_file": PEM CA bundle; NULL = the system store */
    char *verify_name; /* "verify_name": the name the certificate must carry; a copy of
                        * host when not given, so never NULL unless tls is none. May be an
                        * IP literal: OpenSSL 3's SSL_set1_host then checks IP addresses */
    int min_version;   /* "min_version", as for listeners; default TLS1_2_VERSION. Below
                        * TLS 1.2 this upstream's security level is 0, as for listeners */
    void *tls_ctx;     /* SSL_CTX *, built at load unless tls is none; owned by the config */
    /* Resolved at load (off the event loop): every address getaddrinfo gave. */
    struct sockaddr_storage *addrs;
    socklen_t *addr_lens;
    size_t naddrs;
};

struct config_route {
    bool is_default;
    char *user; /* the POP3 user name this route serves; NULL for the default route */
    char *upstream_name;
    const struct config_upstream *upstream; /* points into config.upstreams */
};

struct config_limits {
    uint32_t connect_timeout;  /* seconds, upstream connect + greeting; default 10 */
    uint32_t command_timeout;  /* seconds, any upstream command; default 60 */
    uint32_t auth_timeout;     /* seconds idle in AUTHORIZATION; default 60 */
    uint32_t idle_timeout;     /* seconds idle in TRANSACTION; default 600, min 600 */
    uint32_t max_bad_commands; /* per session before disconnect; default 10 */
    size_t output_buffer;      /* client output high mark, bytes; default 65536 */
};

struct config {
    char *path;
    struct config_listener *listeners;
    size_t nlisteners;
    struct config_upstream *upstreams;
    size_t nupstreams;
    struct config_route *routes;
    size_t nroutes;
    char *state_dir;
    struct config_limits limits;
};

/*
 * Loads and validates the file at path. On success returns a config owned by
 * the caller (free with config_free) and sets *errors_r to NULL. On failure
 * returns NULL and *errors_r is a malloc'd text (caller frees) with one error
 * per line, each ending in "\n", in the style
 *   popgate.json:14:5: error: invalid JSON: '}' expected near '"b"'
 *   popgate.json: routes[0].upstream: unknown upstream "imap9" (defined: main)
 *   popgate.json: limits.idle_timeout: must be between 600 and 86400 seconds, got 5
 *   popgate: 3 errors in popgate.json
 * listing every error found in one run; the last line counts them ("1 error",
 * "3 errors") and carries no verdict, so the caller may add one ("not starting",
 * "keeping the old configuration"). Messages start with path exactly as given.
 * Found values are shown escaped and cut to a few dozen bytes, so a line never
 * holds a newline or a control byte. *errors_r is NULL after a failure only if
 * memory ran out. errors_r may be NULL.
 * Upstream host names are resolved here with getaddrinfo, which may block: call
 * it off the event loop (a name that does not resolve is an error). Once the file has
 * no other error, the TLS contexts are built here too, reading every certificate, key
 * and CA file; one that cannot be used is an error at the key naming it
 * ("listeners[1].certificates[0].key: cannot load key ...").
 */
struct config *config_load(const char *path, char **errors_r);

/* Frees everything cfg owns and sets *cfg to NULL. NULL and *cfg == NULL are fine. */
void config_free(struct config **cfg);

/* Finds the upstream by name (exact, case-sensitive), or NULL. The result
 * points into cfg. */
const struct config_upstream *config_upstream_find(const struct config *cfg, const char *name);

#endif
