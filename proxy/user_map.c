/* The user map: reads a file of "USER UPSTREAM [LOGIN]" lines into one buffer and one
 * open-addressing hash table, and answers case-insensitive lookups in O(1). */
#include "user_map.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "route.h"

/* Bytes of a found value shown in a message; the rest becomes "...". */
#define USER_MAP_SHOW_MAX 64
/* Room for USER_MAP_SHOW_MAX bytes escaped as \xNN, quotes and "...". */
#define USER_MAP_SHOW_LEN (USER_MAP_SHOW_MAX * 4 + 8)
/* One error line: a path shown in full (escaped), a line number and a message. */
#define USER_MAP_LINE_LEN 8192
/* Upstream names listed after "defined:" before "and N more". */
#define USER_MAP_DEFINED_SHOWN 10
/* First read when the size is unknown (a pipe); regular files are read in one call. */
#define USER_MAP_READ_START 65536
/* Entries are indexed by uint32_t slots; a file this long would not fit in memory anyway. */
#define USER_MAP_LINES_MAX (UINT32_MAX / 4)

static const char LINE_SHAPE[] = "\"USER UPSTREAM [LOGIN]\"";

struct map_entry {
    struct user_map_entry pub; /* first, so a pointer to it is what user_map_find returns */
    const char *user;          /* into the buffer, NUL-terminated */
    uint32_t user_len;
    uint32_t hash; /* the high half of the 64-bit hash, checked before the bytes */
    uint32_t line; /* for "the first is on line N" */
};

struct user_map {
    char *buf; /* the whole file: every user and login points into it */
    struct map_entry *entries;
    size_t count;
    uint32_t *slots; /* 0 = empty, else index + 1 into entries */
    size_t mask;     /* capacity - 1; capacity is a power of two, load at most 1/2 */
};

/* One run of user_map_load: where errors go and how many were shown. */
struct reader {
    const struct config *cfg;
    void (*err_cb)(void *ctx, const char *line, unsigned count);
    void *ctx;
    unsigned errors;
    unsigned hidden;
    char shown_path[USER_MAP_LINE_LEN / 2];
};

static inline unsigned char fold(unsigned char c)
{
    return c >= 'A' && c <= 'Z' ? (unsigned char)(c + ('a' - 'A')) : c;
}

/* FNV-1a over the ASCII-folded bytes, then a 64-bit finalizer (murmur3's fmix64) so the
 * low bits that pick a slot depend on every byte. */
static uint64_t hash_folded(const char *s, size_t n)
{
    uint64_t h = 0xcbf29ce484222325u;
    for (size_t i = 0; i < n; i++) {
        h ^= fold((unsigned char)s[i]);
        h *= 0x100000001b3u;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdu;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53u;
    h ^= h >> 33;
    return h;
}

static bool equal_folded(const char *a, const char *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (fold((unsigned char)a[i]) != fold((unsigned char)b[i]))
            return false;
    return true;
}

/*
 * Writes s[0..n) into dst (room bytes), escaping control bytes and, when quoted, quotes and
 * backslashes; cut after max bytes at a UTF-8 boundary with "...". Keeps a message one
 * printable line whatever the file holds.
 */
static void escape(char *dst, size_t room, const char *s, size_t n, size_t max, bool quoted)
{
    size_t o = 0, i = 0;
    if (quoted)
        dst[o++] = '"';
    for (; i < n && i < max; i++) {
        unsigned char c = (unsigned char)s[i];
        if (o + 8 >= room)
            break;
        if (quoted && (c == '"' || c == '\\')) {
            dst[o++] = '\\';
            dst[o++] = (char)c;
        } else if (c < 0x20 || c == 0x7f) {
            o += (size_t)snprintf(dst + o, room - o, "\\x%02x", c);
        } else {
            dst[o++] = (char)c;
        }
    }
    if (i < n) {
        while (o > 1 && i > 0 && ((unsigned char)s[i] & 0xc0) == 0x80) {
            i--;
            o--;
        }
        if (o + 5 > room)
            o = room - 5;
        memcpy(dst + o, "...", 3);
        o += 3;
    }
    if (quoted)
        dst[o++] = '"';
    dst[o] = '\0';
}

static void report(struct reader *rd, const char *line, unsigned count)
{
    if (rd->err_cb != NULL)
        rd->err_cb(rd->ctx, line, count);
}

static void line_error(struct reader *rd, size_t lineno, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Reports "PATH:LINE: what", or only counts it once USER_MAP_ERRORS_SHOWN were shown. */
static void line_error(struct reader *rd, size_t lineno, const char *fmt, ...)
{
    rd->errors++;
    if (rd->errors > USER_MAP_ERRORS_SHOWN) {
        rd->hidden++;
        return;
    }
    char text[USER_MAP_LINE_LEN];
    int n = snprintf(text, sizeof(text), "%s:%zu: ", rd->shown_path, lineno);
    if (n < 0 || (size_t)n >= sizeof(text))
        n = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text + n, sizeof(text) - (size_t)n, fmt, ap);
    va_end(ap);
    report(rd, text, 1);
}

/* "imap1, imap2", cut after USER_MAP_DEFINED_SHOWN names. */
static void defined_upstreams(const struct config *cfg, char *out, size_t room)
{
    size_t used = 0;
    out[0] = '\0';
    for (size_t i = 0; i < cfg->nupstreams && i < USER_MAP_DEFINED_SHOWN; i++) {
        const char *name = cfg->upstreams[i].name;
        char esc[USER_MAP_SHOW_LEN];
        escape(esc, sizeof(esc), name, strlen(name), USER_MAP_SHOW_MAX, false);
        int n = snprintf(out + used, room - used, "%s%s", i > 0 ? ", " : "", esc);
        if (n < 0 || (size_t)n >= room - used)
            return;
        used += (size_t)n;
    }
    if (cfg->nupstreams > USER_MAP_DEFINED_SHOWN)
        snprintf(out + used, room - used, " and %zu more",
                 cfg->nupstreams - USER_MAP_DEFINED_SHOWN);
}

/* Reads the whole file into one malloc'd buffer with a spare byte. 0, or -1 with errno. */
static int read_file(const char *path, char **buf_r, size_t *len_r)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    size_t cap =
        S_ISREG(st.st_mode) && st.st_size > 0 ? (size_t)st.st_size + 1 : USER_MAP_READ_START;
    char *buf = malloc(cap);
    size_t len = 0;
    if (buf == NULL) {
        close(fd);
        errno = ENOMEM;
        return -1;
    }
    for (;;) {
        if (len + 1 >= cap) {
            /* The file grew since fstat, or is not a regular file: keep reading. */
            char *more = cap < SIZE_MAX / 2 ? realloc(buf, cap * 2) : NULL;
            if (more == NULL) {
                free(buf);
                close(fd);
                errno = ENOMEM;
                return -1;
            }
            buf = more;
            cap *= 2;
        }
        ssize_t n = read(fd, buf + len, cap - 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int e = errno;
            free(buf);
            close(fd);
            errno = e;
            return -1;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    close(fd);
    buf[len] = '\0';
    *buf_r = buf;
    *len_r = len;
    return 0;
}

/* The slot of user, or of the empty slot where it would go. */
static uint32_t *probe(const struct user_map *m, const char *user, size_t len, uint64_t h)
{
    uint32_t tag = (uint32_t)(h >> 32);
    size_t i = (size_t)h & m->mask;
    for (;;) {
        uint32_t *slot = &m->slots[i];
        if (*slot == 0)
            return slot;
        const struct map_entry *e = &m->entries[*slot - 1];
        if (e->hash == tag && e->user_len == len && equal_folded(e->user, user, len))
            return slot;
        i = (i + 1) & m->mask;
    }
}

static const struct config_upstream *find_upstream(const struct config *cfg, const char *name,
                                                   size_t len)
{
    for (size_t i = 0; i < cfg->nupstreams; i++) {
        const char *n = cfg->upstreams[i].name;
        if (n != NULL && strncmp(n, name, len) == 0 && n[len] == '\0')
            return &cfg->upstreams[i];
    }
    return NULL;
}

static inline bool is_blank(char c)
{
    return c == ' ' || c == '\t';
}

/*
 * Parses one line [p, end) (without its LF) numbered lineno, and adds its user. Fields are
 * NUL-terminated in place: the byte after each stored field is a blank, CR, LF or the
 * buffer's spare byte, none of which another field needs.
 */
static void parse_line(struct reader *rd, struct user_map *m, char *p, char *end, size_t lineno,
                       const struct config_upstream **last_up)
{
    if (end > p && end[-1] == '\r')
        end--;
    while (p < end && is_blank(*p))
        p++;
    if (p == end || *p == '#')
        return;

    char *field[3];
    size_t flen[3];
    size_t nfields = 0;
    for (char *q = p; q < end;) {
        unsigned char c = (unsigned char)*q;
        if ((c < 0x20 && c != '\t') || c == 0x7f) {
            line_error(rd, lineno, "control byte 0x%02x (expected printable %s)", c, LINE_SHAPE);
            return;
        }
        if (is_blank((char)c)) {
            q++;
            continue;
        }
        char *start = q;
        while (q < end && !is_blank(*q) && (unsigned char)*q >= 0x20 && *q != 0x7f)
            q++;
        if (nfields < 3) {
            field[nfields] = start;
            flen[nfields] = (size_t)(q - start);
        }
        nfields++;
    }
    if (nfields < 2) {
        line_error(rd, lineno, "missing upstream column (expected %s)", LINE_SHAPE);
        return;
    }
    if (nfields > 3) {
        line_error(rd, lineno, "too many columns, got %zu (expected %s)", nfields, LINE_SHAPE);
        return;
    }
    char shown[USER_MAP_SHOW_LEN];
    if (flen[0] > ROUTE_LOGIN_MAX) {
        escape(shown, sizeof(shown), field[0], flen[0], USER_MAP_SHOW_MAX, true);
        line_error(rd, lineno, "user %s is longer than %d bytes", shown, ROUTE_LOGIN_MAX);
        return;
    }
    if (nfields == 3 && flen[2] > ROUTE_LOGIN_MAX) {
        escape(shown, sizeof(shown), field[2], flen[2], USER_MAP_SHOW_MAX, true);
        line_error(rd, lineno, "login %s is longer than %d bytes", shown, ROUTE_LOGIN_MAX);
        return;
    }
    /* Neighbouring lines mostly name the same upstream. */
    const struct config_upstream *up = *last_up;
    if (up == NULL || strncmp(up->name, field[1], flen[1]) != 0 || up->name[flen[1]] != '\0')
        up = find_upstream(rd->cfg, field[1], flen[1]);
    if (up == NULL) {
        char defined[1024];
        escape(shown, sizeof(shown), field[1], flen[1], USER_MAP_SHOW_MAX, true);
        defined_upstreams(rd->cfg, defined, sizeof(defined));
        line_error(rd, lineno, "unknown upstream %s (defined: %s)", shown, defined);
        return;
    }
    *last_up = up;

    uint64_t h = hash_folded(field[0], flen[0]);
    uint32_t *slot = probe(m, field[0], flen[0], h);
    if (*slot != 0) {
        escape(shown, sizeof(shown), field[0], flen[0], USER_MAP_SHOW_MAX, true);
        line_error(rd, lineno, "duplicate user %s (the first is on line %u)", shown,
                   m->entries[*slot - 1].line);
        return;
    }
    struct map_entry *e = &m->entries[m->count];
    field[0][flen[0]] = '\0';
    e->user = field[0];
    e->user_len = (uint32_t)flen[0];
    e->hash = (uint32_t)(h >> 32);
    e->line = (uint32_t)lineno;
    e->pub.upstream = up;
    if (nfields == 3) {
        field[2][flen[2]] = '\0';
        e->pub.login = field[2];
        e->pub.login_len = flen[2];
    }
    m->count++;
    *slot = (uint32_t)m->count;
}

struct user_map *user_map_load(const char *path, const struct config *cfg,
                               void (*err_cb)(void *ctx, const char *line, unsigned count),
                               void *ctx)
{
    struct reader rd = {.cfg = cfg, .err_cb = err_cb, .ctx = ctx};
    if (path == NULL || cfg == NULL)
        return NULL;
    escape(rd.shown_path, sizeof(rd.shown_path), path, strlen(path), sizeof(rd.shown_path) / 5,
           false);

    struct user_map *m = calloc(1, sizeof(*m));
    char *buf = NULL;
    size_t len = 0;
    if (m == NULL || read_file(path, &buf, &len) != 0) {
        const char *why = m == NULL ? strerror(ENOMEM) : strerror(errno);
        char text[USER_MAP_LINE_LEN];
        char quoted[USER_MAP_LINE_LEN / 2];
        escape(quoted, sizeof(quoted), path, strlen(path), sizeof(quoted) / 5, true);
        if (cfg->path != NULL) {
            char shown_cfg[USER_MAP_LINE_LEN / 4];
            escape(shown_cfg, sizeof(shown_cfg), cfg->path, strlen(cfg->path),
                   sizeof(shown_cfg) / 5, false);
            snprintf(text, sizeof(text), "%s: user_map: cannot read %s: %s", shown_cfg, quoted,
                     why);
        } else {
            snprintf(text, sizeof(text), "user_map: cannot read %s: %s", quoted, why);
        }
        report(&rd, text, 1);
        free(m);
        return NULL;
    }
    m->buf = buf;

    /* One counting pass sizes both arrays, so neither ever grows. */
    size_t lines = 1;
    for (const char *q = buf; (q = memchr(q, '\n', (size_t)(buf + len - q))) != NULL; q++)
        lines++;
    if (lines > USER_MAP_LINES_MAX) {
        char text[USER_MAP_LINE_LEN];
        snprintf(text, sizeof(text), "%s: too many lines, %zu (at most %u)", rd.shown_path, lines,
                 (unsigned)USER_MAP_LINES_MAX);
        report(&rd, text, 1);
        user_map_free(&m);
        return NULL;
    }
    size_t cap = 16;
    while (cap < lines * 2)
        cap *= 2;
    m->mask = cap - 1;
    m->slots = calloc(cap, sizeof(*m->slots));
    m->entries = calloc(lines, sizeof(*m->entries));
    if (m->slots == NULL || m->entries == NULL) {
        char text[USER_MAP_LINE_LEN];
        snprintf(text, sizeof(text), "%s: out of memory for %zu lines", rd.shown_path, lines);
        report(&rd, text, 1);
        user_map_free(&m);
        return NULL;
    }

    const struct config_upstream *last_up = NULL;
    char *p = buf, *buf_end = buf + len;
    for (size_t lineno = 1; p < buf_end; lineno++) {
        char *nl = memchr(p, '\n', (size_t)(buf_end - p));
        char *end = nl != NULL ? nl : buf_end;
        parse_line(&rd, m, p, end, lineno, &last_up);
        p = end + 1;
    }

    if (rd.hidden > 0) {
        char text[USER_MAP_LINE_LEN];
        snprintf(text, sizeof(text), "%s: %u more error%s", rd.shown_path, rd.hidden,
                 rd.hidden == 1 ? "" : "s");
        report(&rd, text, rd.hidden);
    }
    if (rd.errors > 0)
        user_map_free(&m);
    return m;
}

void user_map_free(struct user_map **mp)
{
    if (mp == NULL || *mp == NULL)
        return;
    struct user_map *m = *mp;
    free(m->slots);
    free(m->entries);
    free(m->buf);
    free(m);
    *mp = NULL;
}

const struct user_map_entry *user_map_find(const struct user_map *m, const char *user,
                                           size_t user_len)
{
    if (m == NULL || user == NULL || user_len > UINT32_MAX || m->slots == NULL)
        return NULL;
    uint32_t *slot = probe(m, user, user_len, hash_folded(user, user_len));
    return *slot != 0 ? &m->entries[*slot - 1].pub : NULL;
}

size_t user_map_count(const struct user_map *m)
{
    return m != NULL ? m->count : 0;
}
