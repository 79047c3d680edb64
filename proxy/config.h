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

struct config_listener {
    char *address_text;           /* as written: "127.0.0.1:1110", "[::1]:1110" */
    struct sockaddr_storage addr; /* parsed numeric address */
    socklen_t addr_len;
};

struct config_upstream {
    char *name; /* the key in "upstreams" */
    char *host;
    uint16_t port;
    enum config_tls tls;
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
 * it off the event loop (a name that does not resolve is an error).
 */
struct config *config_load(const char *path, char **errors_r);

/* Frees everything cfg owns and sets *cfg to NULL. NULL and *cfg == NULL are fine. */
void config_free(struct config **cfg);

/* Finds the upstream by name (exact, case-sensitive), or NULL. The result
 * points into cfg. */
const struct config_upstream *config_upstream_find(const struct config *cfg, const char *name);

#endif
