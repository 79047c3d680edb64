/* The config file: parses the JSON, checks every key, resolves upstreams, and reports every
 * error of one run as compiler-style lines. */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <grp.h>
#include <jansson.h>
#include <netdb.h>
#include <netinet/in.h>
#include <openssl/tls1.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "route.h"
#include "tls.h"
#include "uidl.h"
#include "user_map.h"

#define CONFIG_DEFAULT_CONNECT_TIMEOUT        10
#define CONFIG_DEFAULT_COMMAND_TIMEOUT        60
#define CONFIG_DEFAULT_AUTH_TIMEOUT           60
#define CONFIG_DEFAULT_IDLE_TIMEOUT           600 /* RFC 1939 section 3: at least 10 minutes */
#define CONFIG_DEFAULT_MAX_BAD_COMMANDS       10
#define CONFIG_DEFAULT_OUTPUT_BUFFER          65536
#define CONFIG_DEFAULT_LINE_LENGTH            255 /* RFC 2449 section 4 */
#define CONFIG_DEFAULT_MAX_AUTH_FAILURES      3
#define CONFIG_DEFAULT_AUTH_FAILURE_DELAY     2
#define CONFIG_DEFAULT_AUTH_FAILURE_DELAY_MAX 15
#define CONFIG_DEFAULT_MAX_CONNECTIONS        10000
#define CONFIG_DEFAULT_MAX_CONNECTIONS_PER_IP 100
#define CONFIG_DEFAULT_UPSTREAM_KEEPALIVE     1500 /* RFC 3501 5.4: autologout after >= 30 min */
#define CONFIG_DEFAULT_SHUTDOWN_TIMEOUT       30
#define CONFIG_SHUTDOWN_TIMEOUT_MAX           3600
#define CONFIG_WORKERS_MAX                    256
/* getpwnam_r/getgrnam_r buffers grow up to this (a group with many members needs room). */
#define CONFIG_PWBUF_MAX (1024 * 1024)

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
/* Room for a reason from tls.c: two file names of a few hundred bytes and OpenSSL's text. */
#define CONFIG_TLS_ERROR_LEN 4096

#define CONFIG_DEFAULT_MIN_VERSION TLS1_2_VERSION

/* RFC 2449 LOGIN-DELAY: a day is already far more than any client waits. */
#define CONFIG_LOGIN_DELAY_MAX 86400
/* RFC 2449 EXPIRE, in days: a hundred years is as good as NEVER. */
#define CONFIG_EXPIRE_DAYS_MAX 36500
/* A move target within what IMAP servers accept as a mailbox name and one command line. */
#define CONFIG_FOLDER_MAX 255
/* Folders merged into one maildrop: each costs a SELECT and a size fetch per login. */
#define CONFIG_FOLDERS_MAX 16

static const char ADDRESS_FORMS[] = "expected \"IPv4:port\" or \"[IPv6]:port\"";
static const char CERTS_FORM[] = "expected [{\"cert\": FILE, \"key\": FILE}, ...]";
static const char TLS_ONLY[] = "only used with tls \"starttls\" or \"implicit\"";

static const char *const TLS_NAMES[] = {"none", "starttls", "implicit", NULL};
static const int TLS_VALUES[] = {CONFIG_TLS_NONE, CONFIG_TLS_STARTTLS, CONFIG_TLS_IMPLICIT};
static const char *const VERSION_NAMES[] = {"TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3", NULL};
static const int VERSION_VALUES[] = {TLS1_VERSION, TLS1_1_VERSION, TLS1_2_VERSION, TLS1_3_VERSION};
static const char *const PLAINTEXT_NAMES[] = {"deny", "allow", "loopback", NULL};
static const int PLAINTEXT_VALUES[] = {CONFIG_PLAINTEXT_DENY, CONFIG_PLAINTEXT_ALLOW,
                                       CONFIG_PLAINTEXT_LOOPBACK};

static const char *const ON_RETR_NAMES[] = {"none", "seen", NULL};
static const int ON_RETR_VALUES[] = {0, 1};
static const char *const WINDOW_NAMES[] = {"all", "since_first_login", NULL};
static const int WINDOW_VALUES[] = {0, 1};
static const char ON_DELETE_ALLOWED[] =
    "(allowed: \"expunge\", \"move:FOLDER\", \"flag:KEYWORD\", \"hide\")";
static const char KEYWORD_EXAMPLE[] = "as in \"flag:$POP3Deleted\"";

static const char *const LOG_NAMES[] = {"stderr", "syslog", NULL};
static const int LOG_VALUES[] = {CONFIG_LOG_STDERR, CONFIG_LOG_SYSLOG};

static const char ROUTE_ONE_OF[] =
    "a route has exactly one of \"user\", \"domain\", \"match\" and \"default\"";
static const char TEMPLATE_ALLOWED[] = "(allowed: %u, %n, %d, %%)";
static const char CIDR_FORMS[] = "expected \"ADDRESS\" or \"ADDRESS/PREFIX\", as in "
                                 "\"192.0.2.0/24\" or \"2001:db8::/32\"";

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

/* Reads an optional non-empty string obj[key] into a copy; *out stays NULL when absent.
 * Returns false only after an error. */
static bool get_opt_string(struct loader *ld, json_t *obj, const char *key, char **out)
{
    if (json_object_get(obj, key) == NULL)
        return true;
    return get_string(ld, obj, key, out);
}

/* Reads an optional boolean obj[key] into *out. Returns false only after an error. */
static bool get_bool(struct loader *ld, json_t *obj, const char *key, bool *out)
{
    json_t *v = json_object_get(obj, key);
    if (v == NULL)
        return true;
    if (json_is_boolean(v)) {
        *out = json_is_true(v);
        return true;
    }
    size_t mark = path_push_key(ld, key);
    err(ld, "expected true or false, got %s", found(ld, v));
    path_pop(ld, mark);
    return false;
}

/* Reads an optional string obj[key] that must be one of names (NULL-terminated) into the
 * matching entry of values. Returns false only after an error; *out stays as is when
 * absent. */
static bool get_enum(struct loader *ld, json_t *obj, const char *key, const char *const *names,
                     const int *values, int *out)
{
    json_t *v = json_object_get(obj, key);
    if (v == NULL)
        return true;
    size_t mark = path_push_key(ld, key);
    bool ok = expect(ld, v, JSON_STRING);
    if (ok) {
        const char *s = json_string_value(v);
        size_t i = 0;
        while (names[i] != NULL && strcmp(names[i], s) != 0)
            i++;
        if (names[i] != NULL) {
            *out = values[i];
        } else {
            char list[128] = "";
            size_t used = 0;
            for (size_t j = 0; names[j] != NULL; j++) {
                int n = snprintf(list + used, sizeof(list) - used, "%s\"%s\"", j > 0 ? ", " : "",
                                 names[j]);
                if (n > 0 && (size_t)n < sizeof(list) - used)
                    used += (size_t)n;
            }
            err(ld, "unknown value %s (allowed: %s)", quote(ld, s), list);
            ok = false;
        }
    }
    path_pop(ld, mark);
    return ok;
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

/* Reads an optional "tls" into *out. False after an error. */
static bool get_tls(struct loader *ld, json_t *obj, enum config_tls *out)
{
    int v = (int)*out;
    bool ok = get_enum(ld, obj, "tls", TLS_NAMES, TLS_VALUES, &v);
    *out = (enum config_tls)v;
    return ok;
}

/* Reports each of keys (NULL-terminated) present in obj: they only matter with TLS, and
 * obj's tls is "none". tail ends the message. */
static void check_tls_only(struct loader *ld, json_t *obj, const char *const *keys,
                           const char *tail)
{
    for (size_t i = 0; keys[i] != NULL; i++) {
        if (json_object_get(obj, keys[i]) == NULL)
            continue;
        size_t mark = path_push_key(ld, keys[i]);
        err(ld, "%s%s", TLS_ONLY, tail);
        path_pop(ld, mark);
    }
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

/* Reads "certificates": [{"cert", "key"}, ...] into l->certs after any top-level pair.
 * Every entry is stored, even half-read ones, so config_free frees what was copied; a
 * config with an error never reaches a caller. */
static void load_certificates(struct loader *ld, json_t *item, struct config_listener *l)
{
    json_t *top_cert = json_object_get(item, "cert");
    json_t *top_key = json_object_get(item, "key");
    json_t *list = json_object_get(item, "certificates");
    size_t n = 0;
    if (list != NULL) {
        size_t mark = path_push_key(ld, "certificates");
        if (expect(ld, list, JSON_ARRAY)) {
            n = json_array_size(list);
            if (n == 0)
                err(ld, "must not be empty (%s)", CERTS_FORM);
        }
        path_pop(ld, mark);
    }
    bool top = top_cert != NULL || top_key != NULL;
    if (!top && n == 0)
        return;
    l->certs = calloc((top ? 1 : 0) + n, sizeof(*l->certs));
    if (l->certs == NULL) {
        err_oom(ld);
        return;
    }
    if (top) {
        struct config_cert *c = &l->certs[l->ncerts++];
        if (top_cert != NULL)
            get_string(ld, item, "cert", &c->cert);
        if (top_key != NULL)
            get_string(ld, item, "key", &c->key);
        if (top_key == NULL)
            err(ld, "\"cert\" needs \"key\" (give both or neither)");
        else if (top_cert == NULL)
            err(ld, "\"key\" needs \"cert\" (give both or neither)");
    }
    static const char *const keys[] = {"cert", "key", NULL};
    size_t mark = path_push_key(ld, "certificates");
    for (size_t i = 0; i < n; i++) {
        struct config_cert *c = &l->certs[l->ncerts++];
        json_t *entry = json_array_get(list, i);
        size_t imark = path_push_index(ld, i);
        if (json_is_object(entry)) {
            check_keys(ld, entry, keys);
            get_string(ld, entry, "cert", &c->cert);
            get_string(ld, entry, "key", &c->key);
        } else {
            err(ld, "expected an object {\"cert\": FILE, \"key\": FILE}, got %s", found(ld, entry));
        }
        path_pop(ld, imark);
    }
    path_pop(ld, mark);
}

/* Parses "ADDRESS" or "ADDRESS/PREFIX" into *b. Reports at the current path and returns
 * false on a bad form, a prefix out of range, or host bits beyond the prefix. */
static bool parse_cidr(struct loader *ld, const char *text, struct config_cidr *b)
{
    const char *shown = quote(ld, text);
    const char *slash = strchr(text, '/');
    size_t addr_len = slash != NULL ? (size_t)(slash - text) : strlen(text);
    char addr_buf[INET6_ADDRSTRLEN];
    b->family = memchr(text, ':', addr_len) != NULL ? AF_INET6 : AF_INET;
    unsigned max = b->family == AF_INET ? 32 : 128;
    memset(b->addr, 0, sizeof(b->addr));
    bool ok = addr_len < sizeof(addr_buf);
    if (ok) {
        memcpy(addr_buf, text, addr_len);
        addr_buf[addr_len] = '\0';
        ok = inet_pton(b->family, addr_buf, b->addr) == 1;
    }
    if (!ok) {
        err(ld, "%s: not a numeric IPv4 or IPv6 address (%s)", shown, CIDR_FORMS);
        return false;
    }
    b->prefix = max;
    if (slash != NULL) {
        const char *p = slash + 1;
        if (*p == '\0') {
            err(ld, "%s: missing prefix length after \"/\" (%s)", shown, CIDR_FORMS);
            return false;
        }
        unsigned n = 0;
        for (const char *q = p; *q != '\0'; q++) {
            if (*q < '0' || *q > '9') {
                err(ld, "%s: prefix length %s is not a number (%s)", shown, quote(ld, p),
                    CIDR_FORMS);
                return false;
            }
            if (n <= 1000)
                n = n * 10 + (unsigned)(*q - '0');
        }
        if (n > max) {
            err(ld, "%s: prefix length must be between 0 and %u for %s, got %.12s%s", shown, max,
                b->family == AF_INET ? "IPv4" : "IPv6", p, strlen(p) > 12 ? "..." : "");
            return false;
        }
        b->prefix = n;
    }
    /* Host bits are refused rather than masked: "10.1.2.3/8" may mean one host or a whole
     * network, and a trust list is no place to guess which. */
    unsigned char masked[16];
    memcpy(masked, b->addr, sizeof(masked));
    for (unsigned bit = b->prefix; bit < max; bit++)
        masked[bit / 8] &= (unsigned char)~(0x80u >> (bit % 8));
    if (memcmp(masked, b->addr, sizeof(masked)) != 0) {
        char net[INET6_ADDRSTRLEN];
        inet_ntop(b->family, masked, net, sizeof(net));
        err(ld, "%s: has bits set after the /%u prefix (did you mean \"%s/%u\"?)", shown, b->prefix,
            net, b->prefix);
        return false;
    }
    return true;
}

/* Reads "trusted_proxies": ["CIDR", ...] into l. */
static void load_trusted_proxies(struct loader *ld, json_t *arr, struct config_listener *l)
{
    size_t mark = path_push_key(ld, "trusted_proxies");
    if (!expect(ld, arr, JSON_ARRAY))
        goto out;
    size_t n = json_array_size(arr);
    if (n == 0)
        goto out;
    l->trusted_proxies = calloc(n, sizeof(*l->trusted_proxies));
    if (l->trusted_proxies == NULL) {
        err_oom(ld);
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *v = json_array_get(arr, i);
        size_t imark = path_push_index(ld, i);
        if (expect(ld, v, JSON_STRING)) {
            if (json_string_length(v) == 0)
                err(ld, "must not be empty (%s)", CIDR_FORMS);
            else if (parse_cidr(ld, json_string_value(v), &l->trusted_proxies[l->ntrusted_proxies]))
                l->ntrusted_proxies++;
        }
        path_pop(ld, imark);
    }
out:
    path_pop(ld, mark);
}

/* "proxy_protocol" and "trusted_proxies" go together: one without the other is a mistake
 * that would either refuse every client or trust nobody's header silently. */
static void load_proxy_protocol(struct loader *ld, json_t *item, struct config_listener *l)
{
    bool pp_ok = get_bool(ld, item, "proxy_protocol", &l->proxy_protocol);
    json_t *tp = json_object_get(item, "trusted_proxies");
    if (tp != NULL)
        load_trusted_proxies(ld, tp, l);
    if (!pp_ok)
        return;
    if (l->proxy_protocol && tp == NULL) {
        err(ld, "\"proxy_protocol\": true needs \"trusted_proxies\" (the addresses of the load "
                "balancers that may send PROXY headers, as in [\"192.0.2.0/24\"])");
    } else if (l->proxy_protocol && json_is_array(tp) && json_array_size(tp) == 0) {
        size_t mark = path_push_key(ld, "trusted_proxies");
        err(ld, "must not be empty with \"proxy_protocol\": true (expected the load balancers' "
                "addresses, as in [\"192.0.2.0/24\"])");
        path_pop(ld, mark);
    } else if (!l->proxy_protocol && tp != NULL) {
        size_t mark = path_push_key(ld, "trusted_proxies");
        err(ld, "only used with \"proxy_protocol\": true (so it would be unused)");
        path_pop(ld, mark);
    }
}

static void load_listener(struct loader *ld, json_t *item, size_t index)
{
    static const char *const keys[] = {"address",
                                       "tls",
                                       "cert",
                                       "key",
                                       "certificates",
                                       "min_version",
                                       "ciphers",
                                       "security_level",
                                       "plaintext_auth",
                                       "proxy_protocol",
                                       "trusted_proxies",
                                       NULL};
    /* Keys that set up TLS, which a plaintext listener would silently ignore. */
    static const char *const tls_keys[] = {
        "cert", "key", "certificates", "min_version", "ciphers", "security_level", NULL};
    struct config *cfg = ld->cfg;
    struct config_listener *l = &cfg->listeners[index];
    l->tls = CONFIG_TLS_NONE;
    l->min_version = CONFIG_DEFAULT_MIN_VERSION;
    l->security_level = -1;
    l->plaintext_auth = CONFIG_PLAINTEXT_LOOPBACK;
    if (!expect(ld, item, JSON_OBJECT))
        return;
    check_keys(ld, item, keys);

    char *text = NULL;
    if (get_string(ld, item, "address", &text)) {
        size_t amark = path_push_key(ld, "address");
        l->address_text = text;
        if (parse_listen_address(ld, text, l)) {
            for (size_t j = 0; j < index; j++) {
                struct config_listener *o = &cfg->listeners[j];
                if (o->addr_len == l->addr_len && memcmp(&o->addr, &l->addr, l->addr_len) == 0) {
                    err(ld, "duplicate address %s (the first is listeners[%zu])", quote(ld, text),
                        j);
                    break;
                }
            }
        }
        path_pop(ld, amark);
    }

    bool tls_ok = get_tls(ld, item, &l->tls);
    load_certificates(ld, item, l);
    get_enum(ld, item, "min_version", VERSION_NAMES, VERSION_VALUES, &l->min_version);
    get_opt_string(ld, item, "ciphers", &l->ciphers);
    json_int_t level = -1;
    if (get_int_range(ld, item, "security_level", 0, 5, "", &level))
        l->security_level = (int)level;
    int plaintext = (int)l->plaintext_auth;
    get_enum(ld, item, "plaintext_auth", PLAINTEXT_NAMES, PLAINTEXT_VALUES, &plaintext);
    l->plaintext_auth = (enum config_plaintext_auth)plaintext;
    load_proxy_protocol(ld, item, l);

    if (!tls_ok)
        return;
    bool has_certs = json_object_get(item, "cert") != NULL ||
                     json_object_get(item, "key") != NULL ||
                     json_object_get(item, "certificates") != NULL;
    if (l->tls != CONFIG_TLS_NONE && !has_certs)
        err(ld, "tls \"%s\" needs \"cert\" and \"key\" or \"certificates\"", tls_name(l->tls));
    if (l->tls == CONFIG_TLS_NONE)
        check_tls_only(ld, item, tls_keys, " (tls is \"none\", so it would be unused)");
}

static void load_listeners(struct loader *ld, json_t *arr)
{
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
        size_t imark = path_push_index(ld, i);
        load_listener(ld, json_array_get(arr, i), i);
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
    static const char *const keys[] = {"host",        "port",           "tls",
                                       "verify",      "ca_file",        "verify_name",
                                       "min_version", "send_client_ip", NULL};
    static const char *const tls_keys[] = {"verify", "ca_file", "verify_name", "min_version", NULL};
    u->verify = true;
    u->min_version = CONFIG_DEFAULT_MIN_VERSION;
    if (!is_upstream_name(u->name))
        err(ld, "invalid upstream name (allowed: 1 to %d letters, digits, '.', '-', '_')",
            CONFIG_UPSTREAM_NAME_MAX);
    if (!expect(ld, obj, JSON_OBJECT))
        return;
    check_keys(ld, obj, keys);
    bool host_ok = get_string(ld, obj, "host", &u->host);

    json_int_t port = 0;
    bool port_ok = get_int_range(ld, obj, "port", 1, 65535, "", &port);

    /* Without "tls", port 993 means implicit TLS and any other port plaintext. */
    u->tls = port == CONFIG_IMAPS_PORT ? CONFIG_TLS_IMPLICIT : CONFIG_TLS_NONE;
    bool tls_ok = get_tls(ld, obj, &u->tls);
    if (port == 0)
        port = u->tls == CONFIG_TLS_IMPLICIT ? CONFIG_IMAPS_PORT : CONFIG_IMAP_PORT;
    u->port = (uint16_t)port;

    get_bool(ld, obj, "verify", &u->verify);
    get_opt_string(ld, obj, "ca_file", &u->ca_file);
    get_opt_string(ld, obj, "verify_name", &u->verify_name);
    get_enum(ld, obj, "min_version", VERSION_NAMES, VERSION_VALUES, &u->min_version);
    get_bool(ld, obj, "send_client_ip", &u->send_client_ip);
    if (tls_ok && u->tls == CONFIG_TLS_NONE)
        check_tls_only(ld, obj, tls_keys, "");
    /* Callers check one name, whichever way it was set. */
    if (u->tls != CONFIG_TLS_NONE && u->verify_name == NULL && u->host != NULL)
        u->verify_name = dup_or_oom(ld, u->host);

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

/* Checks a "login" template: only %u, %n, %d and %% may follow a "%". */
static void check_template(struct loader *ld, const char *tmpl)
{
    for (const char *t = tmpl; *t != '\0'; t++) {
        if (*t != '%')
            continue;
        t++;
        if (*t == 'u' || *t == 'n' || *t == 'd' || *t == '%')
            continue;
        if (*t == '\0') {
            err(ld, "%s ends in a lone \"%%\" %s", quote(ld, tmpl), TEMPLATE_ALLOWED);
            return;
        }
        /* Show the placeholder with its whole UTF-8 character. */
        char ph[8];
        size_t n = 0;
        ph[n++] = '%';
        ph[n++] = *t;
        if ((unsigned char)*t >= 0xc0)
            for (const char *q = t + 1; n < 6 && ((unsigned char)*q & 0xc0) == 0x80; q++)
                ph[n++] = *q;
        ph[n] = '\0';
        err(ld, "unknown placeholder %s in %s %s", quote(ld, ph), quote(ld, tmpl),
            TEMPLATE_ALLOWED);
        return;
    }
    if (strlen(tmpl) > ROUTE_LOGIN_MAX)
        err(ld, "must be at most %d bytes, got %zu", ROUTE_LOGIN_MAX, strlen(tmpl));
}

/* The selectors of a route that name users. */
enum route_selector {
    SELECT_USER,
    SELECT_DOMAIN,
    SELECT_MATCH,
};

static char **route_selector_field(struct config_route *r, enum route_selector sel)
{
    switch (sel) {
    case SELECT_USER:
        return &r->user;
    case SELECT_DOMAIN:
        return &r->domain;
    case SELECT_MATCH:
        break;
    }
    return &r->match;
}

/* ASCII case ignored, as routing compares names (route.c): a locale never changes it. */
static bool equal_nocase(const char *a, const char *b)
{
    for (;; a++, b++) {
        unsigned char x = (unsigned char)*a, y = (unsigned char)*b;
        if (x >= 'A' && x <= 'Z')
            x = (unsigned char)(x + ('a' - 'A'));
        if (y >= 'A' && y <= 'Z')
            y = (unsigned char)(y + ('a' - 'A'));
        if (x != y)
            return false;
        if (x == '\0')
            return true;
    }
}

/* Reads the selector at obj[key] (a non-empty string) into the route, and reports a second
 * user or domain route for the same name (ASCII case ignored, as routing compares them). */
static void load_route_name(struct loader *ld, json_t *obj, const char *key, size_t index,
                            enum route_selector sel)
{
    json_t *v = json_object_get(obj, key);
    if (v == NULL)
        return;
    size_t mark = path_push_key(ld, key);
    if (!expect(ld, v, JSON_STRING))
        goto out;
    const char *name = json_string_value(v);
    if (name[0] == '\0') {
        err(ld, "must not be empty");
        goto out;
    }
    if (sel == SELECT_DOMAIN) {
        if (strchr(name, '@') != NULL) {
            err(ld,
                "%s must not contain \"@\" (the domain is what follows the last \"@\" of a user "
                "name, as in \"example.com\")",
                quote(ld, name));
            goto out;
        }
        if (strpbrk(name, "*?") != NULL) {
            err(ld,
                "%s must not contain \"*\" or \"?\" (for a pattern use \"match\", as in "
                "{\"match\": \"*@*.example.com\"})",
                quote(ld, name));
            goto out;
        }
    }
    char **field = route_selector_field(&ld->cfg->routes[index], sel);
    if ((*field = dup_or_oom(ld, name)) == NULL || sel == SELECT_MATCH)
        goto out;
    for (size_t j = 0; j < index; j++) {
        const char *other = *route_selector_field(&ld->cfg->routes[j], sel);
        if (other != NULL && equal_nocase(other, name)) {
            err(ld, "a second route for %s (the first is routes[%zu])", quote(ld, name), j);
            break;
        }
    }
out:
    path_pop(ld, mark);
}

/* Frees the strings of m and resets it to the defaults. */
static void mapping_clear(struct config_mapping *m)
{
    free(m->uidl_format);
    free(m->on_delete_arg);
    free(m->expire);
    for (size_t i = 0; i < m->nfolders; i++)
        free(m->folders[i]);
    free(m->folders);
    memset(m, 0, sizeof(*m));
}

static bool dup_opt(const char *s, char **out)
{
    *out = NULL;
    if (s == NULL)
        return true;
    *out = strdup(s);
    return *out != NULL;
}

/* Copies src into dst with strings of its own, so config_free frees each once. False when
 * memory ran out; dst is then still safe to clear. */
static bool mapping_dup(struct config_mapping *dst, const struct config_mapping *src)
{
    *dst = *src;
    bool ok = dup_opt(src->uidl_format, &dst->uidl_format);
    ok = dup_opt(src->on_delete_arg, &dst->on_delete_arg) && ok;
    ok = dup_opt(src->expire, &dst->expire) && ok;
    dst->folders = NULL;
    dst->nfolders = 0;
    if (src->nfolders > 0) {
        dst->folders = calloc(src->nfolders, sizeof(*dst->folders));
        if (dst->folders == NULL)
            return false;
        dst->nfolders = src->nfolders;
        for (size_t i = 0; i < src->nfolders; i++)
            ok = dup_opt(src->folders[i], &dst->folders[i]) && ok;
    }
    return ok;
}

/* Replaces *field with a copy of s. False after an error. */
static bool set_string(struct loader *ld, char **field, const char *s)
{
    char *copy = dup_or_oom(ld, s);
    if (copy == NULL)
        return false;
    free(*field);
    *field = copy;
    return true;
}

static void load_uidl_format(struct loader *ld, json_t *v, struct config_mapping *m)
{
    if (!expect(ld, v, JSON_STRING))
        return;
    const char *why = NULL;
    if (uidl_template_check(json_string_value(v), &why) < 0) {
        err(ld, "%s", why);
        return;
    }
    set_string(ld, &m->uidl_format, json_string_value(v));
}

/* The folder of "move:FOLDER" (text is the whole value, for messages). */
static bool check_folder(struct loader *ld, const char *text, const char *folder, size_t len)
{
    if (len == 0) {
        err(ld, "%s needs a folder after \"move:\", as in \"move:Trash\"", quote(ld, text));
        return false;
    }
    if (len > CONFIG_FOLDER_MAX) {
        err(ld, "the folder in %s must be at most %d bytes, got %zu", quote(ld, text),
            CONFIG_FOLDER_MAX, len);
        return false;
    }
    if (strlen(folder) != len || strpbrk(folder, "\r\n") != NULL) {
        err(ld, "the folder in %s must not contain CR, LF or NUL", quote(ld, text));
        return false;
    }
    /* POP3 reads INBOX: what is moved there comes back as new mail in the next session. */
    if (equal_nocase(folder, "INBOX")) {
        err(ld,
            "%s would move deleted messages back into INBOX, where POP3 shows them again "
            "(name another folder, as in \"move:Trash\")",
            quote(ld, text));
        return false;
    }
    return true;
}

/* RFC 3501 atom-specials and resp-specials: what an atom (so a flag keyword) cannot hold
 * besides control bytes, space and non-ASCII. */
static bool is_atom_char(unsigned char c)
{
    return c > 0x20 && c < 0x7f && strchr("(){%*\"\\]", c) == NULL;
}

/* The keyword of "flag:KEYWORD" (text is the whole value, for messages). */
static bool check_keyword(struct loader *ld, const char *text, const char *kw, size_t len)
{
    if (len == 0) {
        err(ld, "%s needs a keyword after \"flag:\", %s", quote(ld, text), KEYWORD_EXAMPLE);
        return false;
    }
    if (kw[0] == '\\') {
        err(ld,
            "%s names a system flag; on_delete sets a keyword (an IMAP atom without \"\\\"), %s",
            quote(ld, text), KEYWORD_EXAMPLE);
        return false;
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)kw[i];
        if (is_atom_char(c))
            continue;
        char *what = scratch(ld);
        if (c > 0x20 && c < 0x7f)
            snprintf(what, CONFIG_SCRATCH_LEN, "\"%s%c\"", c == '"' || c == '\\' ? "\\" : "", c);
        else if (c == ' ')
            snprintf(what, CONFIG_SCRATCH_LEN, "a space");
        else
            snprintf(what, CONFIG_SCRATCH_LEN, "byte 0x%02x", c);
        err(ld,
            "the keyword in %s must not contain %s (a keyword is an IMAP atom: ASCII without "
            "spaces, control bytes or any of ( ) { %% * \" \\ ])",
            quote(ld, text), what);
        return false;
    }
    return true;
}

static void load_on_delete(struct loader *ld, json_t *v, struct config_mapping *m)
{
    if (!expect(ld, v, JSON_STRING))
        return;
    const char *s = json_string_value(v);
    size_t len = json_string_length(v);
    enum config_on_delete kind;
    const char *arg = NULL;
    if (strcmp(s, "expunge") == 0) {
        kind = CONFIG_DELETE_EXPUNGE;
    } else if (strcmp(s, "hide") == 0) {
        kind = CONFIG_DELETE_HIDE;
    } else if (strncmp(s, "move:", 5) == 0 || strcmp(s, "move") == 0) {
        kind = CONFIG_DELETE_MOVE;
        arg = s[4] == ':' ? s + 5 : s + 4;
        if (!check_folder(ld, s, arg, len - (size_t)(arg - s)))
            return;
    } else if (strncmp(s, "flag:", 5) == 0 || strcmp(s, "flag") == 0) {
        kind = CONFIG_DELETE_FLAG;
        arg = s[4] == ':' ? s + 5 : s + 4;
        if (!check_keyword(ld, s, arg, len - (size_t)(arg - s)))
            return;
    } else {
        err(ld, "unknown value %s %s", quote(ld, s), ON_DELETE_ALLOWED);
        return;
    }
    char *copy = NULL;
    if (arg != NULL && (copy = dup_or_oom(ld, arg)) == NULL)
        return;
    free(m->on_delete_arg);
    m->on_delete = kind;
    m->on_delete_arg = copy;
}

/* "expire": days as a JSON integer, or "NEVER"; kept as the text CAPA shows. */
static void load_expire(struct loader *ld, json_t *obj, struct config_mapping *m)
{
    json_t *v = json_object_get(obj, "expire");
    if (json_is_integer(v)) {
        json_int_t days = -1;
        if (get_int_range(ld, obj, "expire", 0, CONFIG_EXPIRE_DAYS_MAX, "days", &days)) {
            char text[24];
            snprintf(text, sizeof(text), "%" JSON_INTEGER_FORMAT, days);
            set_string(ld, &m->expire, text);
        }
        return;
    }
    size_t mark = path_push_key(ld, "expire");
    if (json_is_string(v) && strcmp(json_string_value(v), "NEVER") == 0 &&
        json_string_length(v) == 5)
        set_string(ld, &m->expire, "NEVER");
    else
        err(ld, "expected a number of days (0 to %d) or \"NEVER\", got %s", CONFIG_EXPIRE_DAYS_MAX,
            found(ld, v));
    path_pop(ld, mark);
}

/* A folder name as IMAP carries it: what is wrong with it, or NULL. */
static const char *folder_name_problem(const char *name, size_t len)
{
    if (len == 0)
        return "is empty";
    if (len > CONFIG_FOLDER_MAX)
        return "is longer than 255 bytes";
    if (strlen(name) != len || strpbrk(name, "\r\n") != NULL)
        return "contains CR, LF or NUL";
    return NULL;
}

/* IMAP folder names are case-sensitive, except INBOX (RFC 3501 5.1). */
static bool same_folder(const char *a, const char *b)
{
    return strcmp(a, b) == 0 || (equal_nocase(a, "INBOX") && equal_nocase(b, "INBOX"));
}

/* "folders": 1 to CONFIG_FOLDERS_MAX distinct names, in the order POP3 numbers them. */
static void load_folders(struct loader *ld, json_t *v, struct config_mapping *m)
{
    if (!json_is_array(v) || json_array_size(v) == 0 || json_array_size(v) > CONFIG_FOLDERS_MAX) {
        err(ld, "expected a list of 1 to %d folder names, as in [\"INBOX\", \"Spam\"], got %s",
            CONFIG_FOLDERS_MAX, found(ld, v));
        return;
    }
    size_t n = json_array_size(v);
    char **names = calloc(n, sizeof(*names));
    if (names == NULL) {
        err_oom(ld);
        return;
    }
    bool ok = true;
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_array_get(v, i);
        size_t imark = path_push_index(ld, i);
        const char *problem = NULL;
        if (!json_is_string(e)) {
            err(ld, "expected a folder name (a string), got %s", found(ld, e));
            ok = false;
        } else if ((problem = folder_name_problem(json_string_value(e), json_string_length(e))) !=
                   NULL) {
            err(ld, "the folder name %s", problem);
            ok = false;
        } else {
            for (size_t j = 0; j < i; j++) {
                if (names[j] != NULL && same_folder(names[j], json_string_value(e))) {
                    err(ld, "%s is already folders[%zu]", quote(ld, json_string_value(e)), j);
                    ok = false;
                    break;
                }
            }
            names[i] = dup_or_oom(ld, json_string_value(e));
            ok = ok && names[i] != NULL;
        }
        path_pop(ld, imark);
    }
    if (!ok) {
        for (size_t i = 0; i < n; i++)
            free(names[i]);
        free(names);
        return;
    }
    for (size_t i = 0; i < m->nfolders; i++)
        free(m->folders[i]);
    free(m->folders);
    m->folders = names;
    m->nfolders = n;
}

/* What on_delete moves must leave the maildrop, or it comes back as new mail. */
static void check_move_target(struct loader *ld, const struct config_mapping *m)
{
    if (m->on_delete != CONFIG_DELETE_MOVE || m->on_delete_arg == NULL)
        return;
    for (size_t i = 0; i < m->nfolders; i++) {
        if (same_folder(m->folders[i], m->on_delete_arg)) {
            err(ld,
                "on_delete \"move:%s\" moves deleted messages into folders[%zu], where POP3 "
                "shows them again (move them to a folder outside \"folders\")",
                m->on_delete_arg, i);
            return;
        }
    }
}

/*
 * Reads a "mapping" object (obj may be NULL: absent) over m, so a route's keys land on
 * its copy of the top-level settings and the keys it leaves out keep their values.
 */
static void load_mapping(struct loader *ld, json_t *obj, struct config_mapping *m)
{
    static const char *const keys[] = {"uidl_format", "reuse_xuidl", "on_delete",
                                       "on_retr",     "window",      "login_delay",
                                       "expire",      "folders",     NULL};
    if (obj == NULL)
        return;
    size_t mark = path_push_key(ld, "mapping");
    if (!expect(ld, obj, JSON_OBJECT))
        goto out;
    check_keys(ld, obj, keys);
    json_t *v;
    if ((v = json_object_get(obj, "uidl_format")) != NULL) {
        size_t kmark = path_push_key(ld, "uidl_format");
        load_uidl_format(ld, v, m);
        path_pop(ld, kmark);
    }
    get_bool(ld, obj, "reuse_xuidl", &m->reuse_xuidl);
    if ((v = json_object_get(obj, "on_delete")) != NULL) {
        size_t kmark = path_push_key(ld, "on_delete");
        load_on_delete(ld, v, m);
        path_pop(ld, kmark);
    }
    int e = m->on_retr_seen;
    if (get_enum(ld, obj, "on_retr", ON_RETR_NAMES, ON_RETR_VALUES, &e))
        m->on_retr_seen = e != 0;
    e = m->window_since_first_login;
    if (get_enum(ld, obj, "window", WINDOW_NAMES, WINDOW_VALUES, &e))
        m->window_since_first_login = e != 0;
    json_int_t delay = m->login_delay;
    if (get_int_range(ld, obj, "login_delay", 0, CONFIG_LOGIN_DELAY_MAX, "seconds", &delay))
        m->login_delay = (uint32_t)delay;
    if (json_object_get(obj, "expire") != NULL)
        load_expire(ld, obj, m);
    if ((v = json_object_get(obj, "folders")) != NULL) {
        size_t kmark = path_push_key(ld, "folders");
        load_folders(ld, v, m);
        path_pop(ld, kmark);
    }
    check_move_target(ld, m);
out:
    path_pop(ld, mark);
}

static void load_route(struct loader *ld, json_t *obj, size_t index, bool upstreams_known,
                       size_t *first_default)
{
    static const char *const keys[] = {"user",  "domain",    "match",   "default", "upstream",
                                       "login", "lowercase", "mapping", NULL};
    static const char *const selectors[] = {"user", "domain", "match", "default"};
    struct config *cfg = ld->cfg;
    struct config_route *r = &cfg->routes[index];
    /* The top-level settings first (load_root reads them before the routes), then the
     * route's own keys over them. */
    if (!mapping_dup(&r->mapping, &cfg->mapping))
        err_oom(ld);
    if (!expect(ld, obj, JSON_OBJECT))
        return;
    check_keys(ld, obj, keys);

    const char *present[4];
    size_t npresent = 0;
    for (size_t i = 0; i < 4; i++)
        if (json_object_get(obj, selectors[i]) != NULL)
            present[npresent++] = selectors[i];
    if (npresent == 0) {
        err(ld, "needs one of \"user\", \"domain\", \"match\" or \"default\" (as in {\"domain\": "
                "\"example.com\", \"upstream\": NAME})");
    } else if (npresent == 2) {
        err(ld, "has both \"%s\" and \"%s\" (%s)", present[0], present[1], ROUTE_ONE_OF);
    } else if (npresent > 2) {
        char list[128] = "";
        size_t used = 0;
        for (size_t i = 0; i < npresent; i++) {
            const char *sep = i == 0 ? "" : i + 1 < npresent ? ", " : " and ";
            int n = snprintf(list + used, sizeof(list) - used, "%s\"%s\"", sep, present[i]);
            if (n > 0 && (size_t)n < sizeof(list) - used)
                used += (size_t)n;
        }
        err(ld, "has %s (%s)", list, ROUTE_ONE_OF);
    }

    json_t *def = json_object_get(obj, "default");
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
    load_route_name(ld, obj, "user", index, SELECT_USER);
    load_route_name(ld, obj, "domain", index, SELECT_DOMAIN);
    load_route_name(ld, obj, "match", index, SELECT_MATCH);

    if (get_opt_string(ld, obj, "login", &r->login) && r->login != NULL) {
        size_t mark = path_push_key(ld, "login");
        check_template(ld, r->login);
        path_pop(ld, mark);
    }
    get_bool(ld, obj, "lowercase", &r->lowercase);
    load_mapping(ld, json_object_get(obj, "mapping"), &r->mapping);

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
    struct config_limits *l = &ld->cfg->limits;
    /* Every key with its bounds and where it lands; values are read as json_int_t. */
    struct rule {
        const char *key;
        json_int_t min, max;
        const char *unit;
        uint32_t *u32;
        size_t *size;
    };
    const struct rule rules[] = {
        {"connect_timeout", 1, 300, "seconds", &l->connect_timeout, NULL},
        {"command_timeout", 1, 3600, "seconds", &l->command_timeout, NULL},
        {"auth_timeout", 10, 3600, "seconds", &l->auth_timeout, NULL},
        /* RFC 1939 section 3: the autologout timer is at least 10 minutes. */
        {"idle_timeout", 600, 86400, "seconds", &l->idle_timeout, NULL},
        {"max_bad_commands", 1, 1000, "", &l->max_bad_commands, NULL},
        {"output_buffer", 4096, 16777216, "bytes", NULL, &l->output_buffer},
        {"line_length", 255, 2048, "bytes", &l->line_length, NULL},
        {"max_auth_failures", 1, 100, "", &l->max_auth_failures, NULL},
        {"auth_failure_delay", 0, 60, "seconds", &l->auth_failure_delay, NULL},
        {"auth_failure_delay_max", 0, 3600, "seconds", &l->auth_failure_delay_max, NULL},
        {"max_connections", 1, 1000000, "", &l->max_connections, NULL},
        {"max_connections_per_ip", 0, 1000000, "", &l->max_connections_per_ip, NULL},
        /* Below the 30 minutes of RFC 3501 5.4, with a margin for a slow answer. */
        {"upstream_keepalive", 1, 1740, "seconds", &l->upstream_keepalive, NULL},
    };
    enum { NRULES = sizeof(rules) / sizeof(rules[0]) };
    const char *keys[NRULES + 1];
    for (size_t i = 0; i < NRULES; i++)
        keys[i] = rules[i].key;
    keys[NRULES] = NULL;
    if (obj == NULL)
        return;
    size_t mark = path_push_key(ld, "limits");
    if (expect(ld, obj, JSON_OBJECT)) {
        check_keys(ld, obj, keys);
        for (size_t i = 0; i < NRULES; i++) {
            const struct rule *r = &rules[i];
            json_int_t v = r->u32 != NULL ? (json_int_t)*r->u32 : (json_int_t)*r->size;
            if (!get_int_range(ld, obj, r->key, r->min, r->max, r->unit, &v))
                continue;
            if (r->u32 != NULL)
                *r->u32 = (uint32_t)v;
            else
                *r->size = (size_t)v;
        }
        if (l->auth_failure_delay_max < l->auth_failure_delay) {
            size_t kmark = path_push_key(ld, "auth_failure_delay_max");
            err(ld, "must be at least auth_failure_delay (%u seconds), got %u",
                l->auth_failure_delay, l->auth_failure_delay_max);
            path_pop(ld, kmark);
        }
    }
    path_pop(ld, mark);
}

/* True when a and b (listener addresses) would take the same socket: equal, or the same
 * port and family with either the wildcard address. */
static bool addresses_overlap(const struct config_listener *a, const struct config_listener *b)
{
    if (a->addr.ss_family != b->addr.ss_family || a->addr_len == 0 || b->addr_len == 0)
        return false;
    if (a->addr.ss_family == AF_INET) {
        const struct sockaddr_in *x = (const struct sockaddr_in *)&a->addr;
        const struct sockaddr_in *y = (const struct sockaddr_in *)&b->addr;
        return x->sin_port == y->sin_port &&
               (x->sin_addr.s_addr == y->sin_addr.s_addr || x->sin_addr.s_addr == INADDR_ANY ||
                y->sin_addr.s_addr == INADDR_ANY);
    }
    const struct sockaddr_in6 *x = (const struct sockaddr_in6 *)&a->addr;
    const struct sockaddr_in6 *y = (const struct sockaddr_in6 *)&b->addr;
    return x->sin6_port == y->sin6_port &&
           (memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0 ||
            IN6_IS_ADDR_UNSPECIFIED(&x->sin6_addr) || IN6_IS_ADDR_UNSPECIFIED(&y->sin6_addr));
}

static void load_admin(struct loader *ld, json_t *obj)
{
    static const char *const keys[] = {"address", NULL};
    struct config *cfg = ld->cfg;
    size_t mark = path_push_key(ld, "admin");
    if (!expect(ld, obj, JSON_OBJECT))
        goto out;
    check_keys(ld, obj, keys);
    struct config_listener *l = calloc(1, sizeof(*l));
    if (l == NULL) {
        err_oom(ld);
        goto out;
    }
    cfg->admin = l;
    l->tls = CONFIG_TLS_NONE;
    l->min_version = CONFIG_DEFAULT_MIN_VERSION;
    l->security_level = -1;
    l->plaintext_auth = CONFIG_PLAINTEXT_DENY;
    if (!get_string(ld, obj, "address", &l->address_text))
        goto out;
    size_t amark = path_push_key(ld, "address");
    if (parse_listen_address(ld, l->address_text, l)) {
        for (size_t i = 0; i < cfg->nlisteners; i++) {
            const struct config_listener *o = &cfg->listeners[i];
            if (!addresses_overlap(l, o))
                continue;
            bool same = o->addr_len == l->addr_len && memcmp(&o->addr, &l->addr, l->addr_len) == 0;
            if (same)
                err(ld,
                    "%s is also the address of listeners[%zu] (the admin listener needs an "
                    "address of its own)",
                    quote(ld, l->address_text), i);
            else
                err(ld,
                    "%s overlaps listeners[%zu] %s (the admin listener needs a port of its own)",
                    quote(ld, l->address_text), i, quote(ld, o->address_text));
            break;
        }
    }
    path_pop(ld, amark);
out:
    path_pop(ld, mark);
}

/* getpwnam_r/getgrnam_r report a name that is not there as 0 and no result, or as one of
 * these, depending on the NSS module. */
static bool is_not_found(int rc)
{
    return rc == 0 || rc == ENOENT || rc == ESRCH || rc == EBADF || rc == EPERM;
}

/* Looks up a user (is_group false) or a group by name; thread-safe, since a reload may
 * load a config on another thread. Returns 1 found, 0 unknown, -1 with errno_r. */
static int lookup_id(const char *name, bool is_group, uid_t *uid, gid_t *gid, int *errno_r)
{
    long hint = sysconf(is_group ? _SC_GETGR_R_SIZE_MAX : _SC_GETPW_R_SIZE_MAX);
    size_t size = hint > 0 ? (size_t)hint : 16384;
    for (;;) {
        char *buf = malloc(size);
        if (buf == NULL) {
            *errno_r = ENOMEM;
            return -1;
        }
        int rc;
        bool got;
        if (is_group) {
            struct group gr, *res = NULL;
            rc = getgrnam_r(name, &gr, buf, size, &res);
            got = rc == 0 && res != NULL;
            if (got)
                *gid = gr.gr_gid;
        } else {
            struct passwd pw, *res = NULL;
            rc = getpwnam_r(name, &pw, buf, size, &res);
            got = rc == 0 && res != NULL;
            if (got) {
                *uid = pw.pw_uid;
                *gid = pw.pw_gid;
            }
        }
        free(buf);
        if (got)
            return 1;
        if (rc == ERANGE && size < CONFIG_PWBUF_MAX) {
            size *= 2;
            continue;
        }
        if (is_not_found(rc))
            return 0;
        *errno_r = rc;
        return -1;
    }
}

/* "user" and "group": checked now, so a typo stops the config rather than the start. */
static void load_run_as(struct loader *ld, json_t *root)
{
    struct config *cfg = ld->cfg;
    bool has_user = json_object_get(root, "user") != NULL;
    if (get_opt_string(ld, root, "user", &cfg->run_user) && cfg->run_user != NULL) {
        size_t mark = path_push_key(ld, "user");
        int e = 0;
        int rc = lookup_id(cfg->run_user, false, &cfg->uid, &cfg->gid, &e);
        if (rc == 0)
            err(ld, "unknown user %s", quote(ld, cfg->run_user));
        else if (rc < 0)
            err(ld, "cannot look up user %s: %s", quote(ld, cfg->run_user), strerror(e));
        path_pop(ld, mark);
    }
    if (json_object_get(root, "group") == NULL)
        return;
    if (!get_opt_string(ld, root, "group", &cfg->run_group))
        return;
    size_t mark = path_push_key(ld, "group");
    if (!has_user) {
        err(ld, "only used with \"user\" (popgate changes its group only when it changes its "
                "user)");
    } else {
        uid_t unused;
        int e = 0;
        int rc = lookup_id(cfg->run_group, true, &unused, &cfg->gid, &e);
        if (rc == 0)
            err(ld, "unknown group %s", quote(ld, cfg->run_group));
        else if (rc < 0)
            err(ld, "cannot look up group %s: %s", quote(ld, cfg->run_group), strerror(e));
    }
    path_pop(ld, mark);
}

/* The top-level keys of how the process runs. */
static void load_process(struct loader *ld, json_t *root)
{
    struct config *cfg = ld->cfg;
    json_int_t v = cfg->workers;
    if (get_int_range(ld, root, "workers", 1, CONFIG_WORKERS_MAX, "", &v))
        cfg->workers = (unsigned)v;
    load_run_as(ld, root);
    v = cfg->shutdown_timeout;
    if (get_int_range(ld, root, "shutdown_timeout", 0, CONFIG_SHUTDOWN_TIMEOUT_MAX, "seconds", &v))
        cfg->shutdown_timeout = (uint32_t)v;
    int log = (int)cfg->log;
    get_enum(ld, root, "log", LOG_NAMES, LOG_VALUES, &log);
    cfg->log = (enum config_log)log;
}

/* The user map's lines come already formed ("users.map:17: ..."); each counts as the
 * errors it stands for. */
static void user_map_error_cb(void *ctx, const char *line, unsigned count)
{
    struct loader *ld = ctx;
    ld->errs.count += count;
    errors_append(&ld->errs, "%s\n", line);
}

static void load_root(struct loader *ld, json_t *root)
{
    static const char *const keys[] = {
        "listeners", "upstreams", "routes",           "state", "limits", "user_map", "workers",
        "user",      "group",     "shutdown_timeout", "log",   "admin",  "mapping",  NULL};
    if (!json_is_object(root)) {
        err(ld, "the top level must be an object, got %s", found(ld, root));
        return;
    }
    check_keys(ld, root, keys);
    json_t *listeners = get_required(ld, root, "listeners");
    json_t *upstreams = get_required(ld, root, "upstreams");
    json_t *routes = get_required(ld, root, "routes");
    json_t *state = get_required(ld, root, "state");
    /* Without a usable "upstreams" every route and every user map line would also be an
     * unknown-upstream error; one cause, one message. */
    bool known = json_is_object(upstreams) && json_object_size(upstreams) > 0;
    if (listeners != NULL)
        load_listeners(ld, listeners);
    if (upstreams != NULL)
        load_upstreams(ld, upstreams);
    /* Before the routes: each route starts from a copy of it. */
    load_mapping(ld, json_object_get(root, "mapping"), &ld->cfg->mapping);
    if (routes != NULL)
        load_routes(ld, routes, known);
    if (state != NULL)
        load_state(ld, state);
    load_limits(ld, json_object_get(root, "limits"));
    load_process(ld, root);
    json_t *admin = json_object_get(root, "admin");
    if (admin != NULL)
        load_admin(ld, admin);
    /* Last: its errors are lines of another file, and it needs the upstreams. */
    if (get_opt_string(ld, root, "user_map", &ld->cfg->user_map_path) &&
        ld->cfg->user_map_path != NULL && known)
        ld->cfg->user_map = user_map_load(ld->cfg->user_map_path, ld->cfg, user_map_error_cb, ld);
}

/* True when msg is prefix, then file, then a closing quote: tls.c names the file it could
 * not use that way. */
static bool names_file(const char *msg, const char *prefix, const char *file)
{
    size_t p = strlen(prefix), f = strlen(file);
    return strncmp(msg, prefix, p) == 0 && strncmp(msg + p, file, f) == 0 && msg[p + f] == '"';
}

/* Reports tls.c's reason at the current path, one printable line. */
static void err_tls(struct loader *ld, const char *why)
{
    char text[CONFIG_TLS_ERROR_LEN + 8];
    escape_into(text, sizeof(text), why, CONFIG_TLS_ERROR_LEN, false);
    err(ld, "%s", text);
}

/* Reports a listener's context failure at the key that names what failed: the cert or
 * key of one certificate, or ciphers; the listener itself when the reason names none. */
static void err_listener_tls(struct loader *ld, json_t *item, const struct config_listener *l,
                             const char *why)
{
    bool top = json_object_get(item, "cert") != NULL;
    for (size_t i = 0; i < l->ncerts; i++) {
        const struct config_cert *c = &l->certs[i];
        const char *key = NULL;
        if (names_file(why, "cannot load certificate \"", c->cert))
            key = "cert";
        else if (names_file(why, "cannot load key \"", c->key) || names_file(why, "key \"", c->key))
            key = "key";
        if (key == NULL)
            continue;
        size_t mark = ld->path_len;
        if (!top || i > 0) {
            path_push_key(ld, "certificates");
            path_push_index(ld, top ? i - 1 : i);
        }
        path_push_key(ld, key);
        err_tls(ld, why);
        path_pop(ld, mark);
        return;
    }
    if (strncmp(why, "invalid ciphers", 15) == 0) {
        size_t mark = path_push_key(ld, "ciphers");
        err_tls(ld, why);
        path_pop(ld, mark);
        return;
    }
    err_tls(ld, why);
}

/*
 * Builds the TLS context of every listener and upstream that uses TLS, once the config is
 * known to be well formed, so that a certificate that cannot be read refuses the config
 * now rather than failing each handshake later. Reports every failure.
 */
static void build_tls(struct loader *ld, json_t *root)
{
    struct config *cfg = ld->cfg;
    char why[CONFIG_TLS_ERROR_LEN];
    json_t *listeners = json_object_get(root, "listeners");
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        struct config_listener *l = &cfg->listeners[i];
        if (l->tls == CONFIG_TLS_NONE)
            continue;
        why[0] = '\0';
        l->tls_ctx = tls_server_ctx_new(l, why, sizeof(why));
        if (l->tls_ctx != NULL)
            continue;
        size_t mark = path_push_key(ld, "listeners");
        path_push_index(ld, i);
        err_listener_tls(ld, json_array_get(listeners, i), l, why);
        path_pop(ld, mark);
    }
    for (size_t i = 0; i < cfg->nupstreams; i++) {
        struct config_upstream *u = &cfg->upstreams[i];
        if (u->tls == CONFIG_TLS_NONE)
            continue;
        why[0] = '\0';
        u->tls_ctx = tls_client_ctx_new(u, why, sizeof(why));
        if (u->tls_ctx != NULL)
            continue;
        size_t mark = path_push_key(ld, "upstreams");
        path_push_key(ld, u->name);
        if (u->ca_file != NULL && names_file(why, "cannot load CA file \"", u->ca_file))
            path_push_key(ld, "ca_file");
        err_tls(ld, why);
        path_pop(ld, mark);
    }
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
        .line_length = CONFIG_DEFAULT_LINE_LENGTH,
        .max_auth_failures = CONFIG_DEFAULT_MAX_AUTH_FAILURES,
        .auth_failure_delay = CONFIG_DEFAULT_AUTH_FAILURE_DELAY,
        .auth_failure_delay_max = CONFIG_DEFAULT_AUTH_FAILURE_DELAY_MAX,
        .max_connections = CONFIG_DEFAULT_MAX_CONNECTIONS,
        .max_connections_per_ip = CONFIG_DEFAULT_MAX_CONNECTIONS_PER_IP,
        .upstream_keepalive = CONFIG_DEFAULT_UPSTREAM_KEEPALIVE,
    };
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    cfg->workers = cpus < 1 ? 1 : cpus > CONFIG_WORKERS_MAX ? CONFIG_WORKERS_MAX : (unsigned)cpus;
    cfg->shutdown_timeout = CONFIG_DEFAULT_SHUTDOWN_TIMEOUT;
    cfg->log = CONFIG_LOG_STDERR;
    cfg->path = dup_or_oom(ld, path);

    json_error_t je;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (root == NULL)
        append_json_error(ld, &je);
    else
        load_root(ld, root);
    if (root != NULL && ld->errs.count == 0)
        build_tls(ld, root);
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
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        struct config_listener *l = &cfg->listeners[i];
        free(l->address_text);
        for (size_t j = 0; j < l->ncerts; j++) {
            free(l->certs[j].cert);
            free(l->certs[j].key);
        }
        free(l->certs);
        free(l->ciphers);
        free(l->trusted_proxies);
        tls_ctx_free(l->tls_ctx);
    }
    free(cfg->listeners);
    if (cfg->admin != NULL) {
        free(cfg->admin->address_text);
        free(cfg->admin);
    }
    for (size_t i = 0; i < cfg->nupstreams; i++) {
        struct config_upstream *u = &cfg->upstreams[i];
        free(u->name);
        free(u->host);
        free(u->ca_file);
        free(u->verify_name);
        tls_ctx_free(u->tls_ctx);
        free(u->addrs);
        free(u->addr_lens);
    }
    free(cfg->upstreams);
    for (size_t i = 0; i < cfg->nroutes; i++) {
        free(cfg->routes[i].user);
        free(cfg->routes[i].domain);
        free(cfg->routes[i].match);
        free(cfg->routes[i].login);
        free(cfg->routes[i].upstream_name);
        mapping_clear(&cfg->routes[i].mapping);
    }
    free(cfg->routes);
    user_map_free(&cfg->user_map);
    free(cfg->user_map_path);
    free(cfg->run_user);
    free(cfg->run_group);
    free(cfg->state_dir);
    mapping_clear(&cfg->mapping);
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

/* True when the first prefix bits of a and b agree. */
static bool prefix_equal(const unsigned char *a, const unsigned char *b, unsigned prefix)
{
    unsigned whole = prefix / 8, rest = prefix % 8;
    if (memcmp(a, b, whole) != 0)
        return false;
    if (rest == 0)
        return true;
    unsigned char mask = (unsigned char)(0xffu << (8 - rest));
    return (a[whole] & mask) == (b[whole] & mask);
}

bool config_cidr_match(const struct config_cidr *blocks, size_t n, const struct sockaddr *addr)
{
    if (blocks == NULL || addr == NULL)
        return false;
    /* The peer in both forms: a dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d,
     * and an operator writes their blocks as IPv4. */
    static const unsigned char mapped_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    unsigned char v4[4], v6[16];
    bool has_v4 = false;
    if (addr->sa_family == AF_INET) {
        memcpy(v4, &((const struct sockaddr_in *)addr)->sin_addr, 4);
        memcpy(v6, mapped_prefix, 12);
        memcpy(v6 + 12, v4, 4);
        has_v4 = true;
    } else if (addr->sa_family == AF_INET6) {
        memcpy(v6, &((const struct sockaddr_in6 *)addr)->sin6_addr, 16);
        if (memcmp(v6, mapped_prefix, 12) == 0) {
            memcpy(v4, v6 + 12, 4);
            has_v4 = true;
        }
    } else {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        const struct config_cidr *b = &blocks[i];
        if (b->family == AF_INET && has_v4 && b->prefix <= 32 &&
            prefix_equal(v4, b->addr, b->prefix))
            return true;
        if (b->family == AF_INET6 && b->prefix <= 128 && prefix_equal(v6, b->addr, b->prefix))
            return true;
    }
    return false;
}
