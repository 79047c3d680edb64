/* The config file: parses the JSON, checks every key, resolves upstreams, and reports every
 * error of one run as compiler-style lines. */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CONFIG_DEFAULT_CONNECT_TIMEOUT  10
#define CONFIG_DEFAULT_COMMAND_TIMEOUT  60
#define CONFIG_DEFAULT_AUTH_TIMEOUT     60
#define CONFIG_DEFAULT_IDLE_TIMEOUT     600 /* RFC 1939 section 3: at least 10 minutes */
#define CONFIG_DEFAULT_MAX_BAD_COMMANDS 10
#define CONFIG_DEFAULT_OUTPUT_BUFFER    65536

#define CONFIG_IMAP_PORT  143
#define CONFIG_IMAPS_PORT 993

/* Bytes of a found value or key shown in a message; the rest becomes "...". */
#define CONFIG_SHOW_MAX 64
/* Room for CONFIG_SHOW_MAX bytes escaped as \xNN, quotes, "..." and a type word. */
#define CONFIG_SCRATCH_LEN (CONFIG_SHOW_MAX * 4 + 32)
/* Scratch strings one message may hold at once. */
#define CONFIG_SCRATCH_N     4
#define CONFIG_JSON_PATH_MAX 512
/* Upstream names appear in log lines as upstream=NAME, so they stay one plain word. */
#define CONFIG_UPSTREAM_NAME_MAX 64
/* Names listed after "defined:" before "and N more". */
#define CONFIG_DEFINED_SHOWN 10

static const char ADDRESS_FORMS[] = "expected \"IPv4:port\" or \"[IPv6]:port\"";
static const char ROUTE_FORMS[] =
    "a route is {\"user\": NAME, \"upstream\": NAME} or {\"default\": true, \"upstream\": NAME}";

/* Error lines collected in one growable text. */
struct errors {
    char *text;
    size_t len;
    size_t cap;
    unsigned count;
    bool oom;
};

/* One run of config_load: the config being built, the JSON path being checked, and the
 * errors so far. Everything is per run, so loads on several threads do not meet. */
struct loader {
    const char *file;
    struct config *cfg;
    struct errors errs;
    char path[CONFIG_JSON_PATH_MAX];
    size_t path_len;
    char scratch[CONFIG_SCRATCH_N][CONFIG_SCRATCH_LEN];
    unsigned next_scratch;
};

static void errors_vappend(struct errors *e, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));
static void errors_append(struct errors *e, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void err(struct loader *ld, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void errors_vappend(struct errors *e, const char *fmt, va_list ap)
{
    if (e->oom)
        return;
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap2);
    va_end(ap2);
    if (n < 0) {
        e->oom = true;
        return;
    }
    size_t need = e->len + (size_t)n + 1;
    if (need > e->cap) {
        size_t cap = e->cap ? e->cap : 256;
        while (cap < need)
            cap *= 2;
        char *text = realloc(e->text, cap);
        if (text == NULL) {
            e->oom = true;
            return;
        }
        e->text = text;
        e->cap = cap;
    }
    vsnprintf(e->text + e->len, e->cap - e->len, fmt, ap);
    e->len += (size_t)n;
}

static void errors_append(struct errors *e, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    errors_vappend(e, fmt, ap);
    va_end(ap);
}

/* Reports one error at the current JSON path: "FILE: PATH: message". */
static void err(struct loader *ld, const char *fmt, ...)
{
    ld->errs.count++;
    if (ld->path_len > 0)
        errors_append(&ld->errs, "%s: %s: ", ld->file, ld->path);
    else
        errors_append(&ld->errs, "%s: ", ld->file);
    va_list ap;
    va_start(ap, fmt);
    errors_vappend(&ld->errs, fmt, ap);
    va_end(ap);
    errors_append(&ld->errs, "\n");
}

static void err_oom(struct loader *ld)
{
    err(ld, "out of memory");
}

static char *scratch(struct loader *ld)
{
    char *s = ld->scratch[ld->next_scratch];
    ld->next_scratch = (ld->next_scratch + 1) % CONFIG_SCRATCH_N;
    s[0] = '\0';
    return s;
}

/*
 * Writes at most max bytes of s into dst, escaping control bytes (and, when in_quotes,
 * quotes and backslashes), so a message stays one printable line. A cut never splits a
 * UTF-8 sequence and ends in "...".
 */
static void escape_into(char *dst, size_t room, const char *s, size_t max, bool in_quotes)
{
    size_t o = 0, i = 0;
    for (; s[i] != '\0' && i < max; i++) {
        unsigned char c = (unsigned char)s[i];
        if (o + 8 >= room)
            break;
        if (in_quotes && (c == '"' || c == '\\')) {
            dst[o++] = '\\';
            dst[o++] = (char)c;
        } else if (c == '\n') {
            dst[o++] = '\\';
            dst[o++] = 'n';
        } else if (c == '\t') {
            dst[o++] = '\\';
            dst[o++] = 't';
        } else if (c < 0x20 || c == 0x7f) {
            o += (size_t)snprintf(dst + o, room - o, "\\x%02x", c);
        } else {
            dst[o++] = (char)c;
        }
    }
    if (s[i] != '\0') {
        /* Back off to the start of a UTF-8 sequence before cutting. */
        while (o > 0 && i > 0 && ((unsigned char)s[i] & 0xc0) == 0x80) {
            i--;
            o--;
        }
        if (o + 4 > room)
            o = room - 4;
        memcpy(dst + o, "...", 3);
        o += 3;
    }
    dst[o] = '\0';
}

/* s as a quoted, escaped, shortened string for a message. */
static const char *quote(struct loader *ld, const char *s)
{
    char *out = scratch(ld);
    out[0] = '"';
    escape_into(out + 1, CONFIG_SCRATCH_LEN - 2, s, CONFIG_SHOW_MAX, true);
    strcat(out, "\"");
    return out;
}

/* What a JSON value is, for "got ...": `string "143"`, `integer 5`, `an array`. */
static const char *found(struct loader *ld, const json_t *v)
{
    char *out = scratch(ld);
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        memcpy(out, "string \"", 8);
        escape_into(out + 8, CONFIG_SCRATCH_LEN - 9, json_string_value(v), CONFIG_SHOW_MAX, true);
        strcat(out, "\"");
        return out;
    case JSON_INTEGER:
        snprintf(out, CONFIG_SCRATCH_LEN, "integer %" JSON_INTEGER_FORMAT, json_integer_value(v));
        return out;
    case JSON_REAL:
        snprintf(out, CONFIG_SCRATCH_LEN, "real %.17g", json_real_value(v));
        return out;
    case JSON_TRUE:
        return "true";
    case JSON_FALSE:
        return "false";
    case JSON_NULL:
        return "null";
    }
    return "an unknown value";
}

static bool is_word_key(const char *key)
{
    if (*key == '\0')
        return false;
    for (; *key != '\0'; key++) {
        char c = *key;
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '_' || c == '-';
        if (!ok)
            return false;
    }
    return true;
}

/* Descends into key: ".key", or `["key"]` when the key is not a plain word. Returns the
 * mark that path_pop restores. */
static size_t path_push_key(struct loader *ld, const char *key)
{
    size_t mark = ld->path_len;
    size_t room = sizeof(ld->path) - ld->path_len;
    int n;
    if (is_word_key(key) && strlen(key) <= CONFIG_SHOW_MAX) {
        n = snprintf(ld->path + ld->path_len, room, "%s%s", ld->path_len > 0 ? "." : "", key);
    } else {
        char esc[CONFIG_SCRATCH_LEN];
        escape_into(esc, sizeof(esc), key, CONFIG_SHOW_MAX, true);
        n = snprintf(ld->path + ld->path_len, room, "[\"%s\"]", esc);
    }
    if (n > 0)
        ld->path_len += (size_t)n < room ? (size_t)n : room - 1;
    return mark;
}

static size_t path_push_index(struct loader *ld, size_t index)
{
    size_t mark = ld->path_len;
    size_t room = sizeof(ld->path) - ld->path_len;
    int n = snprintf(ld->path + ld->path_len, room, "[%zu]", index);
    if (n > 0)
        ld->path_len += (size_t)n < room ? (size_t)n : room - 1;
    return mark;
}

static void path_pop(struct loader *ld, size_t mark)
{
    ld->path_len = mark;
    ld->path[mark] = '\0';
}

static const char *type_name(json_type t)
{
    switch (t) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
        return "an integer";
    default:
        return "a value";
    }
}

/* True when v has type t; else reports "expected T, got V" at the current path. */
static bool expect(struct loader *ld, const json_t *v, json_type t)
{
    if (json_typeof(v) == t)
        return true;
    err(ld, "expected %s, got %s", type_name(t), found(ld, v));
    return false;
}

/* Reports every key of obj not in allowed (a NULL-terminated list). */
static void check_keys(struct loader *ld, json_t *obj, const char *const *allowed)
{
    char list[256] = "";
    size_t used = 0;
    for (size_t i = 0; allowed[i] != NULL; i++) {
        int n = snprintf(list + used, sizeof(list) - used, "%s%s", i > 0 ? ", " : "", allowed[i]);
        if (n > 0 && (size_t)n < sizeof(list) - used)
            used += (size_t)n;
    }
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v)
    {
        size_t i = 0;
        while (allowed[i] != NULL && strcmp(allowed[i], key) != 0)
            i++;
        if (allowed[i] != NULL)
            continue;
        size_t mark = path_push_key(ld, key);
        err(ld, "unknown key (allowed: %s)", list);
        path_pop(ld, mark);
    }
}

/* obj[key], or NULL after reporting "missing required key" at obj's path. */
static json_t *get_required(struct loader *ld, json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);
    if (v == NULL)
        err(ld, "missing required key \"%s\"", key);
    return v;
}

static char *dup_or_oom(struct loader *ld, const char *s)
{
    char *d = strdup(s);
    if (d == NULL)
        err_oom(ld);
    return d;
}

/* Reads a required non-empty string at obj[key] into a copy. False after an error. */
static bool get_string(struct loader *ld, json_t *obj, const char *key, char **out)
{
    json_t *v = get_required(ld, obj, key);
    if (v == NULL)
        return false;
    size_t mark = path_push_key(ld, key);
    bool ok = expect(ld, v, JSON_STRING);
    if (ok && json_string_length(v) == 0) {
        err(ld, "must not be empty");
        ok = false;
    }
    if (ok) {
        *out = dup_or_oom(ld, json_string_value(v));
        ok = *out != NULL;
    }
    path_pop(ld, mark);
    return ok;
}

/* Reads an optional integer obj[key] in min..max into *out; unit ("seconds") goes into
 * the range message. Returns false only after an error; *out stays as is when absent. */
static bool get_int_range(struct loader *ld, json_t *obj, const char *key, json_int_t min,
                          json_int_t max, const char *unit, json_int_t *out)
{
    json_t *v = json_object_get(obj, key);
    if (v == NULL)
        return true;
    size_t mark = path_push_key(ld, key);
    bool ok = expect(ld, v, JSON_INTEGER);
    if (ok) {
        json_int_t n = json_integer_value(v);
        if (n < min || n > max) {
            err(ld,
                "must be between %" JSON_INTEGER_FORMAT " and %" JSON_INTEGER_FORMAT
                "%s%s, got %" JSON_INTEGER_FORMAT,
                min, max, unit[0] != '\0' ? " " : "", unit, n);
            ok = false;
        } else {
            *out = n;
        }
    }
    path_pop(ld, mark);
    return ok;
}

/* Parses a decimal port 1..65535. Returns false with *why set. */
static bool parse_port(struct loader *ld, const char *text, uint16_t *port, const char **why)
{
    if (*text == '\0') {
        *why = "missing port";
        return false;
    }
    unsigned long n = 0;
    for (const char *p = text; *p != '\0'; p++) {
        if (*p < '0' || *p > '9') {
            char *msg = scratch(ld);
            snprintf(msg, CONFIG_SCRATCH_LEN, "port %s is not a number", quote(ld, text));
            *why = msg;
            return false;
        }
        if (n <= 65535)
            n = n * 10 + (unsigned long)(*p - '0');
    }
    if (n < 1 || n > 65535) {
        /* Only digits got here, so the text needs no escaping, just a cut. */
        char *msg = scratch(ld);
        snprintf(msg, CONFIG_SCRATCH_LEN, "port must be between 1 and 65535, got %.12s%s", text,
                 strlen(text) > 12 ? "..." : "");
        *why = msg;
        return false;
    }
    *port = (uint16_t)n;
    return true;
}

/* Fills l->addr from "IPv4:port" or "[IPv6]:port"; numeric only, because a listener binds
 * before any resolver is worth trusting. Reports and returns false on a bad form. */
static bool parse_listen_address(struct loader *ld, const char *text, struct config_listener *l)
{
    const char *shown = quote(ld, text);
    const char *host, *host_end, *port_text;
    int family;

    if (text[0] == '[') {
        family = AF_INET6;
        host = text + 1;
        host_end = strchr(host, ']');
        if (host_end == NULL) {
            err(ld, "%s: missing ']' after the IPv6 address (%s)", shown, ADDRESS_FORMS);
            return false;
        }
        if (host_end[1] == '\0') {
            err(ld, "%s: missing port (%s)", shown, ADDRESS_FORMS);
            return false;
        }
        if (host_end[1] != ':') {
            err(ld, "%s: expected ':' and a port after ']' (%s)", shown, ADDRESS_FORMS);
            return false;
        }
        port_text = host_end + 2;
    } else {
        family = AF_INET;
        host = text;
        host_end = strrchr(text, ':');
        if (host_end == NULL) {
            err(ld, "%s: missing port (%s)", shown, ADDRESS_FORMS);
            return false;
        }
        if (memchr(text, ':', (size_t)(host_end - text)) != NULL) {
            err(ld, "%s: an IPv6 address needs brackets, as in \"[::1]:110\"", shown);
            return false;
        }
        port_text = host_end + 1;
    }

    char host_buf[INET6_ADDRSTRLEN];
    size_t host_len = (size_t)(host_end - host);
    bool host_ok = host_len < sizeof(host_buf);
    if (host_ok) {
        memcpy(host_buf, host, host_len);
        host_buf[host_len] = '\0';
    }
    struct sockaddr_in *sin = (struct sockaddr_in *)&l->addr;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&l->addr;
    void *dst = family == AF_INET ? (void *)&sin->sin_addr : (void *)&sin6->sin6_addr;
    if (!host_ok || inet_pton(family, host_buf, dst) != 1) {
        if (family == AF_INET)
            err(ld, "%s: not a numeric IPv4 address (host names are not allowed; %s)", shown,
                ADDRESS_FORMS);
        else
            err(ld, "%s: not a numeric IPv6 address (%s)", shown, ADDRESS_FORMS);
        return false;
    }

    uint16_t port;
    const char *why;
    if (!parse_port(ld, port_text, &port, &why)) {
        err(ld, "%s: %s (%s)", shown, why, ADDRESS_FORMS);
        return false;
    }
    if (family == AF_INET) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons(port);
        l->addr_len = sizeof(*sin);
    } else {
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(port);
        l->addr_len = sizeof(*sin6);
    }
    return true;
}

static void load_listeners(struct loader *ld, json_t *arr)
{
    static const char *const keys[] = {"address", NULL};
    struct config *cfg = ld->cfg;
    size_t mark = path_push_key(ld, "listeners");
    if (!expect(ld, arr, JSON_ARRAY))
        goto out;
    size_t n = json_array_size(arr);
    if (n == 0) {
        err(ld, "must not be empty (expected at least one {\"address\": \"IP:port\"})");
        goto out;
    }
    cfg->listeners = calloc(n, sizeof(*cfg->listeners));
    if (cfg->listeners == NULL) {
        err_oom(ld);
        goto out;
    }
    cfg->nlisteners = n;
    for (size_t i = 0; i < n; i++) {
        /* Entry i stays zeroed (addr_len 0) when it has an error; the config is then
         * discarded, so a hole never reaches a caller. */
        struct config_listener *l = &cfg->listeners[i];
        json_t *item = json_array_get(arr, i);
        size_t imark = path_push_index(ld, i);
        if (expect(ld, item, JSON_OBJECT)) {
            check_keys(ld, item, keys);
            char *text = NULL;
            if (get_string(ld, item, "address", &text)) {
                size_t amark = path_push_key(ld, "address");
                l->address_text = text;
                if (parse_listen_address(ld, text, l)) {
                    for (size_t j = 0; j < i; j++) {
                        struct config_listener *o = &cfg->listeners[j];
                        if (o->addr_len == l->addr_len &&
                            memcmp(&o->addr, &l->addr, l->addr_len) == 0) {
                            err(ld, "duplicate address %s (the first is listeners[%zu])",
                                quote(ld, text), j);
                            break;
                        }
                    }
                }
                path_pop(ld, amark);
            }
        }
        path_pop(ld, imark);
    }
out:
    path_pop(ld, mark);
}

static bool is_upstream_name(const char *name)
{
    size_t len = strlen(name);
    if (len == 0 || len > CONFIG_UPSTREAM_NAME_MAX)
        return false;
    for (const char *p = name; *p != '\0'; p++) {
        char c = *p;
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '_' || c == '-' || c == '.';
        if (!ok)
            return false;
    }
    return true;
}

static const char *tls_name(enum config_tls tls)
{
    switch (tls) {
    case CONFIG_TLS_NONE:
        return "none";
    case CONFIG_TLS_STARTTLS:
        return "starttls";
    case CONFIG_TLS_IMPLICIT:
        return "implicit";
    }
    return "?";
}

/* Resolves u->host now, at load, so the event loop never waits on a resolver. Reports
 * at the current path (the host key). */
static void resolve_upstream(struct loader *ld, struct config_upstream *u)
{
    char port[8];
    snprintf(port, sizeof(port), "%u", (unsigned)u->port);
    struct addrinfo hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(u->host, port, &hints, &res);
    if (rc != 0) {
        const char *why = rc == EAI_SYSTEM ? strerror(errno) : gai_strerror(rc);
        err(ld, "cannot resolve %s: %s", quote(ld, u->host), why);
        return;
    }
    size_t n = 0;
    for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next)
        if (ai->ai_addrlen <= sizeof(struct sockaddr_storage))
            n++;
    if (n == 0) {
        err(ld, "cannot resolve %s: no usable address", quote(ld, u->host));
        freeaddrinfo(res);
        return;
    }
    u->addrs = calloc(n, sizeof(*u->addrs));
    u->addr_lens = calloc(n, sizeof(*u->addr_lens));
    if (u->addrs == NULL || u->addr_lens == NULL) {
        err_oom(ld);
        freeaddrinfo(res);
        return;
    }
    for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
        if (ai->ai_addrlen > sizeof(struct sockaddr_storage))
            continue;
        memcpy(&u->addrs[u->naddrs], ai->ai_addr, ai->ai_addrlen);
        u->addr_lens[u->naddrs] = ai->ai_addrlen;
        u->naddrs++;
    }
    freeaddrinfo(res);
}

static void load_upstream(struct loader *ld, json_t *obj, struct config_upstream *u)
{
    static const char *const keys[] = {"host", "port", "tls", NULL};
    if (!is_upstream_name(u->name))
        err(ld, "invalid upstream name (allowed: 1 to %d letters, digits, '.', '-', '_')",
            CONFIG_UPSTREAM_NAME_MAX);
    if (!expect(ld, obj, JSON_OBJECT))
        return;
    check_keys(ld, obj, keys);
    bool host_ok = get_string(ld, obj, "host", &u->host);

    json_int_t port = 0;
    bool port_ok = get_int_range(ld, obj, "port", 1, 65535, "", &port);

    bool tls_given = false, tls_ok = true;
    json_t *tls = json_object_get(obj, "tls");
    if (tls != NULL) {
        size_t mark = path_push_key(ld, "tls");
        tls_ok = expect(ld, tls, JSON_STRING);
        if (tls_ok) {
            const char *t = json_string_value(tls);
            tls_given = true;
            if (strcmp(t, "none") == 0) {
                u->tls = CONFIG_TLS_NONE;
            } else if (strcmp(t, "starttls") == 0) {
                u->tls = CONFIG_TLS_STARTTLS;
            } else if (strcmp(t, "implicit") == 0) {
                u->tls = CONFIG_TLS_IMPLICIT;
            } else {
                err(ld, "unknown value %s (allowed: \"none\", \"starttls\", \"implicit\")",
                    quote(ld, t));
                tls_ok = false;
            }
        }
        path_pop(ld, mark);
    }
    if (!tls_given)
        u->tls = port == CONFIG_IMAPS_PORT ? CONFIG_TLS_IMPLICIT : CONFIG_TLS_NONE;
    if (port == 0)
        port = u->tls == CONFIG_TLS_IMPLICIT ? CONFIG_IMAPS_PORT : CONFIG_IMAP_PORT;
    u->port = (uint16_t)port;

    /* The parser knows every TLS mode; the proxy does not speak TLS upstream yet, so
     * refusing here keeps popgate from starting with a config it cannot honour. */
    if (tls_ok && u->tls != CONFIG_TLS_NONE) {
        size_t mark = path_push_key(ld, "tls");
        err(ld, "\"%s\"%s is not supported yet (TLS arrives with the TLS issue); use \"none\"",
            tls_name(u->tls), tls_given ? "" : " (the default for port 993)");
        path_pop(ld, mark);
    }

    if (host_ok && port_ok) {
        size_t mark = path_push_key(ld, "host");
        resolve_upstream(ld, u);
        path_pop(ld, mark);
    }
}

static void load_upstreams(struct loader *ld, json_t *obj)
{
    struct config *cfg = ld->cfg;
    size_t mark = path_push_key(ld, "upstreams");
    if (!expect(ld, obj, JSON_OBJECT))
        goto out;
    size_t n = json_object_size(obj);
    if (n == 0) {
        err(ld, "must define at least one upstream (expected {\"NAME\": {\"host\": HOST}})");
        goto out;
    }
    cfg->upstreams = calloc(n, sizeof(*cfg->upstreams));
    if (cfg->upstreams == NULL) {
        err_oom(ld);
        goto out;
    }
    const char *name;
    json_t *v;
    json_object_foreach(obj, name, v)
    {
        struct config_upstream *u = &cfg->upstreams[cfg->nupstreams];
        u->name = dup_or_oom(ld, name);
        if (u->name == NULL)
            break;
        cfg->nupstreams++;
        size_t umark = path_push_key(ld, name);
        load_upstream(ld, v, u);
        path_pop(ld, umark);
    }
out:
    path_pop(ld, mark);
}

/* "imap1, imap2", cut after CONFIG_DEFINED_SHOWN names. */
static void defined_upstreams(const struct config *cfg, char *out, size_t room)
{
    size_t used = 0;
    out[0] = '\0';
    for (size_t i = 0; i < cfg->nupstreams && i < CONFIG_DEFINED_SHOWN; i++) {
        char esc[CONFIG_SCRATCH_LEN];
        escape_into(esc, sizeof(esc), cfg->upstreams[i].name, CONFIG_SHOW_MAX, true);
        int n = snprintf(out + used, room - used, "%s%s", i > 0 ? ", " : "", esc);
        if (n < 0 || (size_t)n >= room - used)
            return;
        used += (size_t)n;
    }
    if (cfg->nupstreams > CONFIG_DEFINED_SHOWN)
        snprintf(out + used, room - used, " and %zu more", cfg->nupstreams - CONFIG_DEFINED_SHOWN);
}

static void load_route(struct loader *ld, json_t *obj, size_t index, bool upstreams_known,
                       size_t *first_default)
{
    static const char *const keys[] = {"default", "user", "upstream", NULL};
    struct config *cfg = ld->cfg;
    struct config_route *r = &cfg->routes[index];
    if (!expect(ld, obj, JSON_OBJECT))
        return;
    check_keys(ld, obj, keys);

    json_t *def = json_object_get(obj, "default");
    json_t *user = json_object_get(obj, "user");
    if (def != NULL && user != NULL)
        err(ld, "has both \"default\" and \"user\" (%s)", ROUTE_FORMS);
    else if (def == NULL && user == NULL)
        err(ld, "needs \"user\" or \"default\" (%s)", ROUTE_FORMS);

    if (def != NULL) {
        size_t mark = path_push_key(ld, "default");
        if (json_is_true(def))
            r->is_default = true;
        else if (json_is_false(def))
            err(ld, "must be true or absent, got false");
        else
            err(ld, "expected true, got %s", found(ld, def));
        path_pop(ld, mark);
    }
    if (r->is_default) {
        if (*first_default != SIZE_MAX)
            err(ld, "a second default route (the first is routes[%zu])", *first_default);
        else
            *first_default = index;
    }

    if (user != NULL) {
        size_t mark = path_push_key(ld, "user");
        if (expect(ld, user, JSON_STRING)) {
            const char *name = json_string_value(user);
            if (name[0] == '\0')
                err(ld, "must not be empty");
            else if ((r->user = dup_or_oom(ld, name)) != NULL) {
                for (size_t j = 0; j < index; j++) {
                    if (cfg->routes[j].user != NULL && strcmp(cfg->routes[j].user, name) == 0) {
                        err(ld, "a second route for %s (the first is routes[%zu])", quote(ld, name),
                            j);
                        break;
                    }
                }
            }
        }
        path_pop(ld, mark);
    }

    if (get_string(ld, obj, "upstream", &r->upstream_name) && upstreams_known) {
        r->upstream = config_upstream_find(cfg, r->upstream_name);
        if (r->upstream == NULL) {
            char defined[1024];
            defined_upstreams(cfg, defined, sizeof(defined));
            size_t mark = path_push_key(ld, "upstream");
            err(ld, "unknown upstream %s (defined: %s)", quote(ld, r->upstream_name), defined);
            path_pop(ld, mark);
        }
    }
}

static void load_routes(struct loader *ld, json_t *arr, bool upstreams_known)
{
    struct config *cfg = ld->cfg;
    size_t mark = path_push_key(ld, "routes");
    if (!expect(ld, arr, JSON_ARRAY))
        goto out;
    size_t n = json_array_size(arr);
    if (n == 0) {
        err(ld, "must not be empty (expected at least one route, such as "
                "{\"default\": true, \"upstream\": NAME})");
        goto out;
    }
    cfg->routes = calloc(n, sizeof(*cfg->routes));
    if (cfg->routes == NULL) {
        err_oom(ld);
        goto out;
    }
    cfg->nroutes = n;
    size_t first_default = SIZE_MAX;
    for (size_t i = 0; i < n; i++) {
        size_t imark = path_push_index(ld, i);
        load_route(ld, json_array_get(arr, i), i, upstreams_known, &first_default);
        path_pop(ld, imark);
    }
out:
    path_pop(ld, mark);
}

static void load_state(struct loader *ld, json_t *obj)
{
    static const char *const keys[] = {"dir", NULL};
    size_t mark = path_push_key(ld, "state");
    if (expect(ld, obj, JSON_OBJECT)) {
        check_keys(ld, obj, keys);
        get_string(ld, obj, "dir", &ld->cfg->state_dir);
    }
    path_pop(ld, mark);
}

static void load_limits(struct loader *ld, json_t *obj)
{
    static const struct {
        const char *key;
        json_int_t min, max;
        const char *unit;
    } rules[] = {
        {"connect_timeout", 1, 300, "seconds"},
        {"command_timeout", 1, 3600, "seconds"},
        {"auth_timeout", 10, 3600, "seconds"},
        /* RFC 1939 section 3: the autologout timer is at least 10 minutes. */
        {"idle_timeout", 600, 86400, "seconds"},
        {"max_bad_commands", 1, 1000, ""},
        {"output_buffer", 4096, 16777216, "bytes"},
    };
    static const char *const keys[] = {"connect_timeout",
                                       "command_timeout",
                                       "auth_timeout",
                                       "idle_timeout",
                                       "max_bad_commands",
                                       "output_buffer",
                                       NULL};
    if (obj == NULL)
        return;
    struct config_limits *l = &ld->cfg->limits;
    json_int_t v[] = {l->connect_timeout, l->command_timeout,  l->auth_timeout,
                      l->idle_timeout,    l->max_bad_commands, (json_int_t)l->output_buffer};
    size_t mark = path_push_key(ld, "limits");
    if (expect(ld, obj, JSON_OBJECT)) {
        check_keys(ld, obj, keys);
        for (size_t i = 0; i < sizeof(rules) / sizeof(rules[0]); i++)
            get_int_range(ld, obj, rules[i].key, rules[i].min, rules[i].max, rules[i].unit, &v[i]);
        l->connect_timeout = (uint32_t)v[0];
        l->command_timeout = (uint32_t)v[1];
        l->auth_timeout = (uint32_t)v[2];
        l->idle_timeout = (uint32_t)v[3];
        l->max_bad_commands = (uint32_t)v[4];
        l->output_buffer = (size_t)v[5];
    }
    path_pop(ld, mark);
}

static void load_root(struct loader *ld, json_t *root)
{
    static const char *const keys[] = {"listeners", "upstreams", "routes", "state", "limits", NULL};
    if (!json_is_object(root)) {
        err(ld, "the top level must be an object, got %s", found(ld, root));
        return;
    }
    check_keys(ld, root, keys);
    json_t *listeners = get_required(ld, root, "listeners");
    json_t *upstreams = get_required(ld, root, "upstreams");
    json_t *routes = get_required(ld, root, "routes");
    json_t *state = get_required(ld, root, "state");
    if (listeners != NULL)
        load_listeners(ld, listeners);
    if (upstreams != NULL)
        load_upstreams(ld, upstreams);
    if (routes != NULL) {
        /* Without a usable "upstreams" every route would also be an unknown-upstream
         * error; one cause, one message. */
        bool known = json_is_object(upstreams) && json_object_size(upstreams) > 0;
        load_routes(ld, routes, known);
    }
    if (state != NULL)
        load_state(ld, state);
    load_limits(ld, json_object_get(root, "limits"));
}

/* Jansson's message, with any control byte from the input escaped. */
static void append_json_error(struct loader *ld, const json_error_t *je)
{
    char text[CONFIG_SCRATCH_LEN];
    escape_into(text, sizeof(text), je->text, sizeof(je->text), false);
    ld->errs.count++;
    if (je->line >= 0)
        errors_append(&ld->errs, "%s:%d:%d: error: invalid JSON: %s\n", ld->file, je->line,
                      je->column, text);
    else
        errors_append(&ld->errs, "%s: error: %s\n", ld->file, text);
}

struct config *config_load(const char *path, char **errors_r)
{
    struct loader *ld = calloc(1, sizeof(*ld));
    struct config *cfg = calloc(1, sizeof(*cfg));
    char *errors = NULL;
    if (ld == NULL || cfg == NULL || path == NULL) {
        free(ld);
        free(cfg);
        if (errors_r != NULL)
            *errors_r = path == NULL ? strdup("popgate: no config file given\n") : NULL;
        return NULL;
    }
    ld->file = path;
    ld->cfg = cfg;
    cfg->limits = (struct config_limits){
        .connect_timeout = CONFIG_DEFAULT_CONNECT_TIMEOUT,
        .command_timeout = CONFIG_DEFAULT_COMMAND_TIMEOUT,
        .auth_timeout = CONFIG_DEFAULT_AUTH_TIMEOUT,
        .idle_timeout = CONFIG_DEFAULT_IDLE_TIMEOUT,
        .max_bad_commands = CONFIG_DEFAULT_MAX_BAD_COMMANDS,
        .output_buffer = CONFIG_DEFAULT_OUTPUT_BUFFER,
    };
    cfg->path = dup_or_oom(ld, path);

    json_error_t je;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (root == NULL)
        append_json_error(ld, &je);
    else
        load_root(ld, root);
    json_decref(root);

    if (ld->errs.count > 0) {
        errors_append(&ld->errs, "popgate: %u error%s in %s\n", ld->errs.count,
                      ld->errs.count == 1 ? "" : "s", path);
        if (ld->errs.oom) {
            free(ld->errs.text);
            ld->errs.text = strdup("popgate: out of memory while loading the configuration\n");
        }
        errors = ld->errs.text;
        config_free(&cfg);
    } else {
        free(ld->errs.text);
    }
    free(ld);
    if (errors_r != NULL)
        *errors_r = errors;
    else
        free(errors);
    return cfg;
}

void config_free(struct config **cfgp)
{
    if (cfgp == NULL || *cfgp == NULL)
        return;
    struct config *cfg = *cfgp;
    for (size_t i = 0; i < cfg->nlisteners; i++)
        free(cfg->listeners[i].address_text);
    free(cfg->listeners);
    for (size_t i = 0; i < cfg->nupstreams; i++) {
        struct config_upstream *u = &cfg->upstreams[i];
        free(u->name);
        free(u->host);
        free(u->addrs);
        free(u->addr_lens);
    }
    free(cfg->upstreams);
    for (size_t i = 0; i < cfg->nroutes; i++) {
        free(cfg->routes[i].user);
        free(cfg->routes[i].upstream_name);
    }
    free(cfg->routes);
    free(cfg->state_dir);
    free(cfg->path);
    free(cfg);
    *cfgp = NULL;
}

const struct config_upstream *config_upstream_find(const struct config *cfg, const char *name)
{
    if (cfg == NULL || name == NULL)
        return NULL;
    for (size_t i = 0; i < cfg->nupstreams; i++)
        if (strcmp(cfg->upstreams[i].name, name) == 0)
            return &cfg->upstreams[i];
    return NULL;
}
