/* Legacy UIDL import owns reading an old POP3 server's UIDL list and making it the state's legacy
 * list.
 */
#include "legacy_import.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "uidl.h"

/* The state document keeps sizes as JSON integers: at most 2^63 - 1. */
#define LEGACY_SIZE_MAX INT64_MAX

/* Deeper nesting under an "x-" key is refused rather than recursed into. */
#define LEGACY_JSON_DEPTH_MAX 32

struct parser {
    const char *p, *end;
    size_t line;
    struct legacy_import *list;
    size_t cap;
    size_t *lines; /* the line of each entry, for duplicate errors */
    const char *error;
    size_t error_line;
    char *sbuf; /* the last decoded JSON string */
    size_t slen, scap;
};

static int fail(struct parser *ps, const char *error)
{
    ps->error = error;
    ps->error_line = ps->line;
    return -1;
}

static int add_entry(struct parser *ps, const char *uidl, size_t uidl_len, uint64_t size,
                     uint64_t msgid_hash)
{
    struct state_legacy *e;

    if (uidl_len == 0)
        return fail(ps, "empty UIDL");
    if (uidl_len > UIDL_MAX)
        return fail(ps, "UIDL longer than 70 characters");
    if (!uidl_is_valid(uidl, uidl_len))
        return fail(ps, "UIDL has a character outside 0x21..0x7E");
    if (ps->list->nentries == ps->cap) {
        size_t cap = ps->cap == 0 ? 64 : ps->cap * 2;
        struct state_legacy *ne;
        size_t *nl;

        if (cap > SIZE_MAX / sizeof(*ne))
            return fail(ps, "out of memory");
        ne = realloc(ps->list->entries, cap * sizeof(*ne));
        if (ne == NULL)
            return fail(ps, "out of memory");
        ps->list->entries = ne;
        nl = realloc(ps->lines, cap * sizeof(*nl));
        if (nl == NULL)
            return fail(ps, "out of memory");
        ps->lines = nl;
        ps->cap = cap;
    }
    e = &ps->list->entries[ps->list->nentries];
    memset(e, 0, sizeof(*e));
    memcpy(e->uidl, uidl, uidl_len);
    e->size = size;
    e->msgid_hash = msgid_hash;
    ps->lines[ps->list->nentries++] = ps->line;
    return 0;
}

struct uidl_line {
    const char *uidl;
    size_t line;
};

static int uidl_line_cmp(const void *x, const void *y)
{
    const struct uidl_line *a = x, *b = y;
    int r = strcmp(a->uidl, b->uidl);

    if (r != 0)
        return r;
    return a->line < b->line ? -1 : a->line > b->line;
}

/* An old server's list with a UIDL twice cannot say which message is which. */
static int check_duplicates(struct parser *ps)
{
    size_t n = ps->list->nentries;
    struct uidl_line *v = malloc((n + 1) * sizeof(*v));
    size_t dup_line = 0;

    if (v == NULL)
        return fail(ps, "out of memory");
    for (size_t i = 0; i < n; i++)
        v[i] = (struct uidl_line){ps->list->entries[i].uidl, ps->lines[i]};
    qsort(v, n, sizeof(*v), uidl_line_cmp);
    for (size_t i = 1; i < n; i++) {
        if (strcmp(v[i - 1].uidl, v[i].uidl) == 0 && (dup_line == 0 || v[i].line < dup_line))
            dup_line = v[i].line;
    }
    free(v);
    if (dup_line != 0) {
        ps->error = "duplicate UIDL (each message of the old server has its own)";
        ps->error_line = dup_line;
        return -1;
    }
    return 0;
}

/* ---- text: "N UIDL SIZE [MESSAGE-ID]" ---- */

static bool is_blank(char c)
{
    return c == ' ' || c == '\t';
}

/* Reads decimal digits at s[*i..len) into *v. Returns 0, 1 when there are none,
 * or -1 on overflow. */
static int read_u64(const char *s, size_t len, size_t *i, uint64_t *v)
{
    size_t start = *i;

    *v = 0;
    while (*i < len && s[*i] >= '0' && s[*i] <= '9') {
        unsigned int d = (unsigned int)(s[*i] - '0');
        if (*v > (UINT64_MAX - d) / 10)
            return -1;
        *v = *v * 10 + d;
        (*i)++;
    }
    return *i == start ? 1 : 0;
}

static int parse_text_line(struct parser *ps, const char *s, size_t len, uint64_t *prev_n)
{
    size_t i = 0, uidl_start, uidl_len;
    uint64_t n, size;
    int r;

    while (i < len && is_blank(s[i]))
        i++;
    if (i == len || s[i] == '#')
        return 0;
    if (memchr(s, '\0', len) != NULL)
        return fail(ps, "NUL byte");

    r = read_u64(s, len, &i, &n);
    if (r < 0)
        return fail(ps, "message number out of range");
    if (r > 0 || (i < len && !is_blank(s[i])))
        return fail(ps, "expected a message number (line format: N UIDL SIZE [MESSAGE-ID])");
    if (n > UINT32_MAX)
        return fail(ps, "message number out of range");
    if (n == 0)
        return fail(ps, "message number 0 (POP3 numbers start at 1)");
    if (n <= *prev_n)
        return fail(ps, "message numbers must increase (the old server's order)");
    *prev_n = n;

    while (i < len && is_blank(s[i]))
        i++;
    uidl_start = i;
    while (i < len && !is_blank(s[i]))
        i++;
    uidl_len = i - uidl_start;
    if (uidl_len == 0)
        return fail(ps, "missing UIDL (line format: N UIDL SIZE [MESSAGE-ID])");

    while (i < len && is_blank(s[i]))
        i++;
    if (i == len)
        return fail(ps, "missing size (line format: N UIDL SIZE [MESSAGE-ID])");
    r = read_u64(s, len, &i, &size);
    if (r < 0 || size > LEGACY_SIZE_MAX)
        return fail(ps, "size out of range");
    if (r > 0 || (i < len && !is_blank(s[i])))
        return fail(ps, "size must be a decimal number of octets");

    /* The rest, trimmed by the hash, is the Message-ID. */
    return add_entry(ps, s + uidl_start, uidl_len, size, uidl_msgid_hash(s + i, len - i));
}

static int parse_text(struct parser *ps)
{
    uint64_t prev_n = 0;

    while (ps->p < ps->end) {
        const char *eol = memchr(ps->p, '\n', (size_t)(ps->end - ps->p));
        const char *stop = eol != NULL ? eol : ps->end;
        size_t len = (size_t)(stop - ps->p);

        if (len > 0 && ps->p[len - 1] == '\r')
            len--;
        ps->line++;
        if (parse_text_line(ps, ps->p, len, &prev_n) < 0)
            return -1;
        ps->p = eol != NULL ? eol + 1 : ps->end;
    }
    return 0;
}

/* ---- JSON ---- */

static void skip_ws(struct parser *ps)
{
    while (ps->p < ps->end &&
           (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\r' || *ps->p == '\n')) {
        if (*ps->p == '\n')
            ps->line++;
        ps->p++;
    }
}

/* Skips blanks, then checks the next byte without consuming it. */
static int peek(struct parser *ps, char *c_r)
{
    skip_ws(ps);
    if (ps->p == ps->end)
        return fail(ps, "invalid JSON: unexpected end of input");
    *c_r = *ps->p;
    return 0;
}

static int sbuf_add(struct parser *ps, const void *data, size_t len)
{
    if (len > ps->scap - ps->slen) {
        size_t cap = ps->scap == 0 ? 128 : ps->scap;
        char *n;

        while (len > cap - ps->slen) {
            if (cap > SIZE_MAX / 2)
                return fail(ps, "out of memory");
            cap *= 2;
        }
        n = realloc(ps->sbuf, cap);
        if (n == NULL)
            return fail(ps, "out of memory");
        ps->sbuf = n;
        ps->scap = cap;
    }
    memcpy(ps->sbuf + ps->slen, data, len);
    ps->slen += len;
    return 0;
}

static int hex4(struct parser *ps, unsigned int *v_r)
{
    unsigned int v = 0;

    if (ps->end - ps->p < 4)
        return fail(ps, "invalid JSON: bad \\u escape");
    for (int i = 0; i < 4; i++) {
        char c = *ps->p++;

        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (unsigned int)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (unsigned int)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (unsigned int)(c - 'A' + 10);
        else
            return fail(ps, "invalid JSON: bad \\u escape");
    }
    *v_r = v;
    return 0;
}

static int put_utf8(struct parser *ps, unsigned int cp)
{
    unsigned char b[4];
    size_t n;

    if (cp < 0x80) {
        b[0] = (unsigned char)cp;
        n = 1;
    } else if (cp < 0x800) {
        b[0] = (unsigned char)(0xc0 | (cp >> 6));
        b[1] = (unsigned char)(0x80 | (cp & 0x3f));
        n = 2;
    } else if (cp < 0x10000) {
        b[0] = (unsigned char)(0xe0 | (cp >> 12));
        b[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
        b[2] = (unsigned char)(0x80 | (cp & 0x3f));
        n = 3;
    } else {
        b[0] = (unsigned char)(0xf0 | (cp >> 18));
        b[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3f));
        b[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
        b[3] = (unsigned char)(0x80 | (cp & 0x3f));
        n = 4;
    }
    return sbuf_add(ps, b, n);
}

/* Decodes the string at ps->p (its opening quote) into sbuf[0..slen). */
static int parse_string(struct parser *ps)
{
    ps->slen = 0;
    ps->p++;
    for (;;) {
        const char *q = ps->p;

        /* Copy runs of plain bytes at once. */
        while (q < ps->end && *q != '"' && *q != '\\' && (unsigned char)*q >= 0x20)
            q++;
        if (q > ps->p && sbuf_add(ps, ps->p, (size_t)(q - ps->p)) < 0)
            return -1;
        ps->p = q;
        if (ps->p == ps->end)
            return fail(ps, "invalid JSON: unterminated string");
        if (*ps->p == '"') {
            ps->p++;
            return 0;
        }
        if (*ps->p != '\\')
            return fail(ps, "invalid JSON: control character in a string");
        ps->p++;
        if (ps->p == ps->end)
            return fail(ps, "invalid JSON: unterminated string");

        char c = *ps->p++, out;
        unsigned int cp, lo;

        switch (c) {
        case '"':
        case '\\':
        case '/':
            out = c;
            break;
        case 'b':
            out = '\b';
            break;
        case 'f':
            out = '\f';
            break;
        case 'n':
            out = '\n';
            break;
        case 'r':
            out = '\r';
            break;
        case 't':
            out = '\t';
            break;
        case 'u':
            if (hex4(ps, &cp) < 0)
                return -1;
            if (cp >= 0xdc00 && cp <= 0xdfff)
                return fail(ps, "invalid JSON: bad \\u escape");
            if (cp >= 0xd800 && cp <= 0xdbff) {
                if (ps->end - ps->p < 2 || ps->p[0] != '\\' || ps->p[1] != 'u')
                    return fail(ps, "invalid JSON: bad \\u escape");
                ps->p += 2;
                if (hex4(ps, &lo) < 0)
                    return -1;
                if (lo < 0xdc00 || lo > 0xdfff)
                    return fail(ps, "invalid JSON: bad \\u escape");
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            }
            if (put_utf8(ps, cp) < 0)
                return -1;
            continue;
        default:
            return fail(ps, "invalid JSON: bad escape in a string");
        }
        if (sbuf_add(ps, &out, 1) < 0)
            return -1;
    }
}

/* Scans a JSON number; *is_uint_r when it is a non-negative integer that fits (*v_r). */
static int scan_number(struct parser *ps, bool *is_uint_r, uint64_t *v_r)
{
    bool neg = false, fits = true;
    uint64_t v = 0;

    if (*ps->p == '-') {
        neg = true;
        ps->p++;
    }
    if (ps->p == ps->end || *ps->p < '0' || *ps->p > '9')
        return fail(ps, "invalid JSON: bad number");
    if (*ps->p == '0' && ps->end - ps->p > 1 && ps->p[1] >= '0' && ps->p[1] <= '9')
        return fail(ps, "invalid JSON: leading zeros in a number");
    while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') {
        unsigned int d = (unsigned int)(*ps->p++ - '0');
        if (v > (UINT64_MAX - d) / 10)
            fits = false;
        else
            v = v * 10 + d;
    }
    bool integer = true;
    if (ps->p < ps->end && *ps->p == '.') {
        integer = false;
        ps->p++;
        if (ps->p == ps->end || *ps->p < '0' || *ps->p > '9')
            return fail(ps, "invalid JSON: bad number");
        while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9')
            ps->p++;
    }
    if (ps->p < ps->end && (*ps->p == 'e' || *ps->p == 'E')) {
        integer = false;
        ps->p++;
        if (ps->p < ps->end && (*ps->p == '+' || *ps->p == '-'))
            ps->p++;
        if (ps->p == ps->end || *ps->p < '0' || *ps->p > '9')
            return fail(ps, "invalid JSON: bad number");
        while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9')
            ps->p++;
    }
    *is_uint_r = integer && !neg && fits;
    *v_r = v;
    return 0;
}

static int skip_literal(struct parser *ps, const char *word)
{
    size_t n = strlen(word);

    if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, word, n) != 0)
        return fail(ps, "invalid JSON: unexpected character");
    ps->p += n;
    return 0;
}

static int skip_value(struct parser *ps, int depth);

/* Calls item_cb for each element of the array or value of the object at ps->p.
 * For objects, the key is in sbuf when item_cb runs. */
typedef int item_fn(struct parser *ps, void *ctx);

static int parse_container(struct parser *ps, char open, item_fn *item_cb, void *ctx)
{
    char close = open == '{' ? '}' : ']';
    char c;

    ps->p++;
    if (peek(ps, &c) < 0)
        return -1;
    if (c == close) {
        ps->p++;
        return 0;
    }
    for (;;) {
        if (open == '{') {
            if (peek(ps, &c) < 0)
                return -1;
            if (c != '"')
                return fail(ps, "invalid JSON: expected a key in quotes");
            if (parse_string(ps) < 0)
                return -1;
            if (peek(ps, &c) < 0)
                return -1;
            if (c != ':')
                return fail(ps, "invalid JSON: expected ':'");
            ps->p++;
        }
        if (peek(ps, &c) < 0 || item_cb(ps, ctx) < 0)
            return -1;
        if (peek(ps, &c) < 0)
            return -1;
        ps->p++;
        if (c == close)
            return 0;
        if (c != ',')
            return fail(ps, open == '{' ? "invalid JSON: expected ',' or '}'"
                                        : "invalid JSON: expected ',' or ']'");
    }
}

static int skip_item(struct parser *ps, void *ctx)
{
    return skip_value(ps, *(int *)ctx);
}

static int skip_value(struct parser *ps, int depth)
{
    char c;
    bool is_uint;
    uint64_t v;
    int inner = depth + 1;

    if (peek(ps, &c) < 0)
        return -1;
    switch (c) {
    case '{':
    case '[':
        if (depth >= LEGACY_JSON_DEPTH_MAX)
            return fail(ps, "invalid JSON: nested too deeply");
        return parse_container(ps, c, skip_item, &inner);
    case '"':
        return parse_string(ps);
    case 't':
        return skip_literal(ps, "true");
    case 'f':
        return skip_literal(ps, "false");
    case 'n':
        return skip_literal(ps, "null");
    default:
        if (c == '-' || (c >= '0' && c <= '9'))
            return scan_number(ps, &is_uint, &v);
        return fail(ps, "invalid JSON: unexpected character");
    }
}

static bool key_is(const struct parser *ps, const char *key)
{
    return ps->slen == strlen(key) && memcmp(ps->sbuf, key, ps->slen) == 0;
}

static bool key_is_extension(const struct parser *ps)
{
    return ps->slen >= 2 && memcmp(ps->sbuf, "x-", 2) == 0;
}

struct msg_fields {
    bool has_uidl, has_size, has_msgid, has_number;
    char uidl[UIDL_MAX + 1];
    size_t uidl_len;
    uint64_t size;
    uint64_t msgid_hash;
};

static int message_field(struct parser *ps, void *ctx)
{
    struct msg_fields *m = ctx;
    bool is_uint;
    char c = *ps->p;

    if (key_is(ps, "uidl")) {
        if (m->has_uidl)
            return fail(ps, "\"uidl\" given twice in one message");
        m->has_uidl = true;
        if (c != '"')
            return fail(ps, "\"uidl\" must be a string");
        if (parse_string(ps) < 0)
            return -1;
        if (ps->slen == 0)
            return fail(ps, "empty UIDL");
        if (ps->slen > UIDL_MAX)
            return fail(ps, "UIDL longer than 70 characters");
        memcpy(m->uidl, ps->sbuf, ps->slen);
        m->uidl_len = ps->slen;
        return 0;
    }
    if (key_is(ps, "size")) {
        if (m->has_size)
            return fail(ps, "\"size\" given twice in one message");
        m->has_size = true;
        if (c != '-' && (c < '0' || c > '9'))
            return fail(ps, "\"size\" must be a non-negative integer");
        if (scan_number(ps, &is_uint, &m->size) < 0)
            return -1;
        if (!is_uint || m->size > LEGACY_SIZE_MAX)
            return fail(ps, "\"size\" must be a non-negative integer");
        return 0;
    }
    if (key_is(ps, "message_id")) {
        if (m->has_msgid)
            return fail(ps, "\"message_id\" given twice in one message");
        m->has_msgid = true;
        if (c == 'n')
            return skip_literal(ps, "null");
        if (c != '"')
            return fail(ps, "\"message_id\" must be a string or null");
        if (parse_string(ps) < 0)
            return -1;
        m->msgid_hash = uidl_msgid_hash(ps->sbuf, ps->slen);
        return 0;
    }
    if (key_is(ps, "number")) {
        if (m->has_number)
            return fail(ps, "\"number\" given twice in one message");
        m->has_number = true;
        return skip_value(ps, 2);
    }
    if (key_is_extension(ps))
        return skip_value(ps, 2);
    return fail(ps, "unknown key in a message (allowed: \"uidl\", \"size\", \"message_id\", "
                    "\"number\", \"x-...\")");
}

static int message_item(struct parser *ps, void *ctx)
{
    struct msg_fields m = {0};
    size_t line = ps->line;

    (void)ctx;
    if (*ps->p != '{')
        return fail(ps, "each element of \"messages\" must be an object");
    if (parse_container(ps, '{', message_field, &m) < 0)
        return -1;
    /* Errors about the whole message name the line it starts on. */
    size_t end_line = ps->line;
    ps->line = line;
    if (!m.has_uidl)
        return fail(ps, "a message has no \"uidl\"");
    if (!m.has_size)
        return fail(ps, "a message has no \"size\"");
    if (add_entry(ps, m.uidl, m.uidl_len, m.size, m.msgid_hash) < 0)
        return -1;
    ps->line = end_line;
    return 0;
}

struct top_fields {
    bool has_user, has_messages;
};

static int top_field(struct parser *ps, void *ctx)
{
    struct top_fields *t = ctx;
    char c = *ps->p;

    if (key_is(ps, "user")) {
        if (t->has_user)
            return fail(ps, "\"user\" given twice");
        t->has_user = true;
        if (c != '"')
            return fail(ps, "\"user\" must be a string");
        if (parse_string(ps) < 0)
            return -1;
        if (ps->slen == 0 || memchr(ps->sbuf, '\0', ps->slen) != NULL)
            return fail(ps, "\"user\" must be a non-empty string without NUL");
        ps->list->user = malloc(ps->slen + 1);
        if (ps->list->user == NULL)
            return fail(ps, "out of memory");
        memcpy(ps->list->user, ps->sbuf, ps->slen);
        ps->list->user[ps->slen] = '\0';
        return 0;
    }
    if (key_is(ps, "messages")) {
        if (t->has_messages)
            return fail(ps, "\"messages\" given twice");
        t->has_messages = true;
        if (c != '[')
            return fail(ps, "\"messages\" must be an array");
        return parse_container(ps, '[', message_item, NULL);
    }
    if (key_is_extension(ps))
        return skip_value(ps, 1);
    return fail(ps, "unknown key at the top level (allowed: \"user\", \"messages\", \"x-...\")");
}

static int parse_json(struct parser *ps)
{
    struct top_fields t = {0};
    char c;

    ps->line = 1;
    if (peek(ps, &c) < 0)
        return -1;
    if (c != '{')
        return fail(ps, "the list must be a JSON object with \"messages\"");
    if (parse_container(ps, '{', top_field, &t) < 0)
        return -1;
    if (!t.has_messages)
        return fail(ps, "no \"messages\" array");
    skip_ws(ps);
    if (ps->p != ps->end)
        return fail(ps, "invalid JSON: data after the object");
    return 0;
}

int legacy_import_parse(const char *buf, size_t len, enum legacy_import_format format,
                        struct legacy_import **list_r, const char **error_r, size_t *line_r)
{
    struct parser ps = {.p = buf, .end = buf + len};
    int r;

    ps.list = calloc(1, sizeof(*ps.list));
    if (ps.list == NULL) {
        *error_r = "out of memory";
        *line_r = 0;
        return -1;
    }
    if (format == LEGACY_IMPORT_AUTO) {
        size_t i = 0;

        while (i < len && (buf[i] == ' ' || buf[i] == '\t' || buf[i] == '\r' || buf[i] == '\n'))
            i++;
        format = i < len && buf[i] == '{' ? LEGACY_IMPORT_JSON : LEGACY_IMPORT_TEXT;
    }
    r = format == LEGACY_IMPORT_JSON ? parse_json(&ps) : parse_text(&ps);
    if (r == 0)
        r = check_duplicates(&ps);
    free(ps.sbuf);
    free(ps.lines);
    if (r < 0) {
        *error_r = ps.error;
        *line_r = ps.error_line;
        legacy_import_free(&ps.list);
        return -1;
    }
    *list_r = ps.list;
    return 0;
}

void legacy_import_free(struct legacy_import **list)
{
    if (*list == NULL)
        return;
    free((*list)->user);
    free((*list)->entries);
    free(*list);
    *list = NULL;
}

static int legacy_ptr_cmp(const void *x, const void *y)
{
    const struct state_legacy *const *a = x, *const *b = y;

    return strcmp((*a)->uidl, (*b)->uidl);
}

int legacy_import_merge(struct state_doc *doc, const struct legacy_import *list,
                        struct legacy_import_merge_stats *stats_r, const char **error_r)
{
    const struct state_legacy **matched;
    bool *consumed;
    struct state_legacy *out;
    size_t nmatched = 0, n = 0, kept = 0;

    if (list->nentries > SIZE_MAX / sizeof(*out) - doc->nlegacy - 1) {
        *error_r = "out of memory";
        return -1;
    }
    matched = malloc((doc->nlegacy + 1) * sizeof(*matched));
    consumed = calloc(doc->nlegacy + 1, sizeof(*consumed));
    out = malloc((list->nentries + doc->nlegacy + 1) * sizeof(*out));
    if (matched == NULL || consumed == NULL || out == NULL) {
        free(matched);
        free(consumed);
        free(out);
        *error_r = "out of memory";
        return -1;
    }
    for (size_t j = 0; j < doc->nlegacy; j++) {
        if (doc->legacy[j].matched)
            matched[nmatched++] = &doc->legacy[j];
    }
    qsort(matched, nmatched, sizeof(*matched), legacy_ptr_cmp);
    for (size_t i = 0; i < list->nentries; i++) {
        const struct state_legacy *key = &list->entries[i];
        const struct state_legacy **hit;

        out[n] = *key;
        out[n].matched = false;
        hit = bsearch(&key, matched, nmatched, sizeof(*matched), legacy_ptr_cmp);
        if (hit != NULL && !consumed[*hit - doc->legacy]) {
            consumed[*hit - doc->legacy] = true;
            out[n].matched = true;
            kept++;
        }
        n++;
    }
    /* Matched at a login but missing from this list: the match stays true. */
    for (size_t j = 0; j < doc->nlegacy; j++) {
        if (doc->legacy[j].matched && !consumed[j]) {
            out[n++] = doc->legacy[j];
            kept++;
        }
    }
    free(matched);
    free(consumed);
    free(doc->legacy);
    doc->legacy = out;
    doc->nlegacy = n;
    if (stats_r != NULL) {
        stats_r->entries = list->nentries;
        stats_r->kept_matched = kept;
        stats_r->pending = n - kept;
    }
    return 0;
}
