/* The configuration: a JSON file parsed and validated whole into an immutable struct. */
#ifndef POPGATE_CONFIG_H
#define POPGATE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

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

/*
 * An address block of "trusted_proxies": "192.0.2.0/24", "2001:db8::/32"; a bare address
 * is one host ("10.0.0.1" is /32, "::1" is /128). Host bits set beyond the prefix
 * ("192.0.2.1/24") are refused, not masked: in a list of who may claim any client
 * address, a block that is not what it looks like is a mistake to show, not to guess.
 */
struct config_cidr {
    int family;             /* AF_INET or AF_INET6 */
    unsigned char addr[16]; /* network byte order; IPv4 in the first 4 bytes, rest zero */
    unsigned prefix;        /* 0..32 for AF_INET, 0..128 for AF_INET6 */
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
    /* "proxy_protocol": every connection starts with a PROXY v1/v2 header; default false.
     * When true, "trusted_proxies" is required and non-empty; without it, refused as
     * unused. Peers outside these blocks are refused. */
    bool proxy_protocol;
    struct config_cidr *trusted_proxies; /* owned by the config */
    size_t ntrusted_proxies;
};

struct config_upstream {
    char *name; /* the key in "upstreams" */
    char *host;
    uint16_t port;
    enum config_tls tls; /* "tls"; default implicit for port 993, else none */
    /* verify, ca_file, verify_name and min_version only go with tls starttls/implicit;
     * with tls none they are refused as unused. */
    bool verify;         /* "verify": check the server certificate; default true */
    char *ca_file;       /* "ca_file": PEM CA bundle; NULL = the system store */
    char *verify_name;   /* "verify_name": the name the certificate must carry; a copy of
                          * host when not given, so never NULL unless tls is none. May be an
                          * IP literal: OpenSSL 3's SSL_set1_host then checks IP addresses */
    int min_version;     /* "min_version", as for listeners; default TLS1_2_VERSION. Below
                          * TLS 1.2 this upstream's security level is 0, as for listeners */
    void *tls_ctx;       /* SSL_CTX *, built at load unless tls is none; owned by the config */
    bool send_client_ip; /* "send_client_ip": IMAP ID x-originating-ip/-port before login */
    /* Resolved at load (off the event loop): every address getaddrinfo gave. */
    struct sockaddr_storage *addrs;
    socklen_t *addr_lens;
    size_t naddrs;
};

/* One entry of "routes". Exactly one of user, domain, match and is_default is set;
 * route_resolve (route.h) says which wins. */
/* What POP3 actions do upstream, and how the maildrop looks ("mapping"). */
enum config_on_delete {
    CONFIG_DELETE_EXPUNGE, /* "expunge": \Deleted + UID EXPUNGE of exactly those (default) */
    CONFIG_DELETE_MOVE,    /* "move:<folder>": UID MOVE (COPY + STORE + UID EXPUNGE without
                            * MOVE) */
    CONFIG_DELETE_FLAG,    /* "flag:<keyword>": set the keyword; POP3 hides the message */
    CONFIG_DELETE_HIDE,    /* "hide": nothing upstream; the state hides it from POP3 */
};

struct config_mapping {
    char *uidl_format; /* "uidl_format": a uidl.h template; NULL = the default */
    bool reuse_xuidl;  /* "reuse_xuidl": a message's X-UIDL header is its UIDL */
    enum config_on_delete on_delete;
    char *on_delete_arg;           /* the folder of move:, the keyword of flag:; else NULL */
    bool on_retr_seen;             /* "on_retr": "seen" sets \Seen at QUIT on RETR'd messages;
                                    * "none" (default) */
    bool window_since_first_login; /* "window": "since_first_login"; "all" (default) */
    uint32_t login_delay;          /* "login_delay": seconds between logins, advertised in CAPA
                                    * (RFC 2449 LOGIN-DELAY) and enforced; 0 = none (default) */
    char *expire;                  /* "expire": CAPA EXPIRE value: "NEVER" or days as digits;
                                    * NULL = not advertised */
    char **folders;  /* "folders": IMAP folders merged into one maildrop, in POP3 order;
                      * distinct, none the target of on_delete move:. NULL = ["INBOX"] */
    size_t nfolders; /* 0 with folders NULL */
};

struct config_route {
    bool is_default;
    /* "mapping": this route's settings, the top-level "mapping" with the route's keys laid
     * over it (each route's is complete: no lookups at session time). */
    struct config_mapping mapping;
    char *user;     /* "user": one POP3 user name, compared case-insensitively (ASCII);
                     * unique among user routes */
    char *domain;   /* "domain": the part after the last "@", compared case-insensitively;
                     * no "@", "*" or "?"; unique among domain routes */
    char *match;    /* "match": a glob (* any run, ? one byte) over the whole user name,
                     * case-insensitive */
    char *login;    /* "login": template of the name sent upstream: %u as typed, %n local
                     * part, %d domain, %% a percent sign (no other "%"); NULL means "%u" */
    bool lowercase; /* "lowercase": lower-case (ASCII) the login after expansion */
    char *upstream_name;
    const struct config_upstream *upstream; /* points into config.upstreams */
};

struct config_limits {
    uint32_t connect_timeout;        /* seconds, upstream connect + greeting; default 10 */
    uint32_t command_timeout;        /* seconds, any upstream command; default 60 */
    uint32_t auth_timeout;           /* seconds idle in AUTHORIZATION; default 60 */
    uint32_t idle_timeout;           /* seconds idle in TRANSACTION; default 600, min 600 */
    uint32_t max_bad_commands;       /* per session before disconnect; default 10 */
    size_t output_buffer;            /* client output high mark, bytes; default 65536 */
    uint32_t line_length;            /* longest POP3 command line with CRLF; default 255 (RFC
                                      * 2449), at most 2048 */
    uint32_t max_auth_failures;      /* failed logins per connection before disconnect; 3 */
    uint32_t auth_failure_delay;     /* seconds before a failed login is answered; doubles
                                      * with each recent failure from the client's address;
                                      * default 2, 0 = none */
    uint32_t auth_failure_delay_max; /* the cap of that growth; default 15 */
    uint32_t max_connections;        /* client connections, all workers; default 10000 */
    uint32_t max_connections_per_ip; /* from one client address, all workers; default 100,
                                      * 0 = no limit */
    uint32_t upstream_keepalive;     /* seconds a TRANSACTION session's upstream may sit
                                      * idle before popgate sends NOOP (servers log out
                                      * after 30 minutes); default 1500 */
};

enum config_log {
    CONFIG_LOG_STDERR,
    CONFIG_LOG_SYSLOG,
};

struct user_map; /* user_map.h */

struct config {
    char *path;
    unsigned workers;          /* "workers" 1..256: processes; default the number of online CPUs
                                * (at least 1, at most 256) */
    char *run_user;            /* "user": drop to this user after binding; NULL = stay. Must exist
                                * at load (getpwnam) */
    char *run_group;           /* "group": only with "user"; NULL = the user's primary group */
    uid_t uid;                 /* resolved at load when run_user is set */
    gid_t gid;                 /* run_group's, else run_user's primary group; set with uid */
    uint32_t shutdown_timeout; /* "shutdown_timeout": seconds sessions get on SIGTERM;
                                * default 30, 0..3600 */
    enum config_log log;       /* "log": "stderr" (default) or "syslog" */
    /* "admin": {"address": "IP:port"}: metrics and /healthz; NULL if absent. Only
     * address_text, addr and addr_len are set (tls none); the address may not be (or,
     * for a wildcard of the same family, overlap) a POP3 listener's. */
    struct config_listener *admin;
    char *user_map_path;       /* "user_map": file of "USER UPSTREAM [LOGIN]" lines, opened
                                * as given (relative to the working directory) */
    struct user_map *user_map; /* loaded at config load (and so at every reload); NULL
                                * without user_map_path; owned by the config */
    struct config_listener *listeners;
    size_t nlisteners;
    struct config_upstream *upstreams;
    size_t nupstreams;
    struct config_route *routes;
    size_t nroutes;
    char *state_dir;
    struct config_limits limits;
    struct config_mapping mapping; /* top-level "mapping"; user_map lines use it */
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

/* True when addr (a sockaddr_in/in6) lies in one of the blocks. A v4-mapped IPv6 peer
 * (::ffff:192.0.2.7, as a dual-stack socket reports it) matches IPv4 blocks, and an IPv4
 * peer matches IPv6 blocks that hold its mapped form (::ffff:0:0/96, ::/0). Other
 * families, NULL addr and n == 0 give false. */
bool config_cidr_match(const struct config_cidr *blocks, size_t n, const struct sockaddr *addr);

/* Finds the upstream by name (exact, case-sensitive), or NULL. The result
 * points into cfg. */
const struct config_upstream *config_upstream_find(const struct config *cfg, const char *name);

#endif
