/* UIDL generation owns the mapping from (UID, UIDVALIDITY) to the unique-id a POP3 client stores.
 */
#include "uidl.h"

#include <string.h>
#include <strings.h>

/* Each of UID and UIDVALIDITY is a uint32_t: eight hex digits. */
#define UIDL_HEX_DIGITS 8

/* Dovecot's var_expand allows ten modifiers per variable. */
#define UIDL_MODIFIER_MAX 10

/* A uint64_t in decimal: 20 digits. */
#define UIDL_DEC64_MAX 20

static size_t put_hex32(char *out, uint32_t v)
{
    static const char digits[] = "0123456789abcdef";

    for (int i = UIDL_HEX_DIGITS - 1; i >= 0; i--) {
        out[i] = digits[v & 0xf];
        v >>= 4;
    }
    return UIDL_HEX_DIGITS;
}

size_t uidl_default(char *out, uint32_t uid, uint32_t uidvalidity)
{
    size_t len = 0;

    /* Dovecot's default format: a client moved from Dovecot's POP3 server to us
     * sees the same unique-ids and does not download everything again. */
    len += put_hex32(out + len, uid);
    len += put_hex32(out + len, uidvalidity);
    out[len] = '\0';
    return len;
}

static bool is_uidl_char(unsigned char c)
{
    return c >= 0x21 && c <= 0x7e;
}

bool uidl_is_valid(const char *s, size_t len)
{
    if (len == 0 || len > UIDL_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        if (!is_uidl_char((unsigned char)s[i]))
            return false;
    }
    return true;
}

/* One element of a template: a literal byte, "%%", or a variable. */
struct element {
    char var; /* 'u', 'v', 'g'; '%' for "%%"; 0 for a literal */
    char literal;
    bool zero_pad;
    unsigned int width; /* 0 = none */
    char mods[UIDL_MODIFIER_MAX];
    unsigned int nmods;
};

/* Parses the element at *pp and moves past it. Returns 1 with *e, 0 at the end
 * of the template, or -1 with *error_r. */
static int next_element(const char **pp, struct element *e, const char **error_r)
{
    const char *p = *pp;

    memset(e, 0, sizeof(*e));
    if (*p == '\0')
        return 0;
    if (*p != '%') {
        if (!is_uidl_char((unsigned char)*p)) {
            *error_r = "a character outside 0x21..0x7E (space, control or non-ASCII) "
                       "cannot be part of a UIDL";
            return -1;
        }
        e->literal = *p;
        *pp = p + 1;
        return 1;
    }
    p++;
    if (*p == '-') {
        *error_r = "negative widths are not supported (allowed: %u, %v, %g with an optional "
                   "width like %08Xu, and %%)";
        return -1;
    }
    if (*p == '0') {
        e->zero_pad = true;
        p++;
    }
    while (*p >= '0' && *p <= '9') {
        e->width = e->width * 10 + (unsigned int)(*p - '0');
        if (e->width > UIDL_MAX) {
            *error_r = "width over 70, the longest UIDL";
            return -1;
        }
        p++;
    }
    if (*p == '.') {
        *error_r = "offsets (%N.Mu) are not supported: only a width like %08Xu or %8g";
        return -1;
    }
    for (;; p++) {
        if (*p == 'X' || *p == 'x' || *p == 'U' || *p == 'L') {
            if (e->nmods == UIDL_MODIFIER_MAX) {
                *error_r = "more than 10 modifiers on one variable";
                return -1;
            }
            e->mods[e->nmods++] = *p;
        } else if (*p != '\0' && strchr("ERHNMDT", *p) != NULL) {
            *error_r = "this Dovecot modifier is not supported (allowed: X or x for hex, "
                       "U and L for case)";
            return -1;
        } else {
            break;
        }
    }
    switch (*p) {
    case '\0':
        *error_r = "'%' at the end of the template (write %% for a literal '%')";
        return -1;
    case '%':
        if (e->zero_pad || e->width != 0 || e->nmods != 0) {
            *error_r = "%% takes no width or modifiers";
            return -1;
        }
        break;
    case 'u':
    case 'v':
    case 'g':
        break;
    case '{':
        *error_r = "long variable names are not supported: write Dovecot 2.4's "
                   "%{uid | hex(8)} as %08Xu (variables: %u, %v, %g, %%)";
        return -1;
    default:
        *error_r = "unknown variable (allowed: %u UID, %v UIDVALIDITY, %g server id, %%)";
        return -1;
    }
    e->var = *p;
    *pp = p + 1;
    return 1;
}

int uidl_template_check(const char *tmpl, const char **error_r)
{
    struct element e;
    size_t min_len = 0;
    bool unique = false;
    int r;

    if (tmpl == NULL || *tmpl == '\0') {
        *error_r = "empty template";
        return -1;
    }
    while ((r = next_element(&tmpl, &e, error_r)) > 0) {
        /* A variable gives at least one character; zero padding at least width. */
        min_len += e.zero_pad && e.width > 1 ? e.width : 1;
        if (e.var == 'u' || e.var == 'g')
            unique = true;
    }
    if (r < 0)
        return -1;
    if (!unique) {
        *error_r = "the template needs %u or %g, or every message gets the same UIDL";
        return -1;
    }
    if (min_len > UIDL_MAX) {
        *error_r = "the template gives UIDLs longer than 70 characters";
        return -1;
    }
    return 0;
}

bool uidl_template_uses_guid(const char *tmpl)
{
    struct element e;
    const char *error;

    while (next_element(&tmpl, &e, &error) > 0) {
        if (e.var == 'g')
            return true;
    }
    return false;
}

static size_t put_dec(char *out, uint64_t v)
{
    char tmp[UIDL_DEC64_MAX];
    size_t n = 0;

    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    for (size_t i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    return n;
}

/* Dovecot's X reads the value as a decimal number. Returns false when it is not one. */
static bool parse_dec64(const char *s, size_t len, uint64_t *v_r)
{
    uint64_t v = 0;

    if (len == 0)
        return false;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        unsigned int d = (unsigned int)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
    }
    *v_r = v;
    return true;
}

static size_t put_hex64(char *out, uint64_t v)
{
    static const char digits[] = "0123456789abcdef";
    char tmp[16];
    size_t n = 0;

    do {
        tmp[n++] = digits[v & 0xf];
        v >>= 4;
    } while (v != 0);
    for (size_t i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    return n;
}

/* Appends one variable to out[*len]. Returns false when the result cannot be a UIDL. */
static bool expand(const struct element *e, uint32_t uid, uint32_t uidvalidity, const char *guid,
                   char *out, size_t *len)
{
    char num[UIDL_DEC64_MAX];
    const char *val;
    size_t val_len;
    char case_map = 0; /* the last U or L since the last X; digits have no case */

    switch (e->var) {
    case 'u':
        val_len = put_dec(num, uid);
        val = num;
        break;
    case 'v':
        val_len = put_dec(num, uidvalidity);
        val = num;
        break;
    default:
        if (guid == NULL || *guid == '\0')
            return false;
        val = guid;
        val_len = strlen(guid);
        break;
    }
    for (unsigned int i = 0; i < e->nmods; i++) {
        uint64_t v;

        if (e->mods[i] == 'U' || e->mods[i] == 'L') {
            case_map = e->mods[i];
            continue;
        }
        /* Case changes do not touch digits, so X sees the same digits either way. */
        if (!parse_dec64(val, val_len, &v))
            return false;
        val_len = put_hex64(num, v);
        val = num;
        case_map = 0;
    }

    size_t take = val_len;
    size_t pad = 0;

    if (e->zero_pad) {
        if (e->width > val_len)
            pad = e->width - val_len;
    } else if (e->width != 0 && e->width < val_len) {
        take = e->width;
    }
    if (pad + take > UIDL_MAX - *len)
        return false;
    memset(out + *len, '0', pad);
    *len += pad;
    for (size_t i = 0; i < take; i++) {
        char c = val[i];

        if (!is_uidl_char((unsigned char)c))
            return false;
        if (case_map == 'U' && c >= 'a' && c <= 'z')
            c = (char)(c - 'a' + 'A');
        else if (case_map == 'L' && c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        out[(*len)++] = c;
    }
    return true;
}

size_t uidl_template_format(const char *tmpl, uint32_t uid, uint32_t uidvalidity, const char *guid,
                            char *out)
{
    struct element e;
    const char *error;
    size_t len = 0;
    int r;

    out[0] = '\0';
    if (uidl_template_check(tmpl, &error) < 0)
        return 0;
    while ((r = next_element(&tmpl, &e, &error)) > 0) {
        if (e.var == 0 || e.var == '%') {
            if (len == UIDL_MAX)
                break;
            out[len++] = e.var == '%' ? '%' : e.literal;
        } else if (!expand(&e, uid, uidvalidity, guid, out, &len)) {
            break;
        }
    }
    if (r != 0 || len == 0) {
        /* Stopped early: the result would not be a valid unique-id. */
        out[0] = '\0';
        return 0;
    }
    out[len] = '\0';
    return len;
}

uint64_t uidl_fnv1a(uint64_t h, const void *data, size_t len)
{
    const unsigned char *p = data;

    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

static bool is_header_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

uint64_t uidl_msgid_hash(const char *msgid, size_t len)
{
    uint64_t h;

    while (len > 0 && is_header_space(msgid[0])) {
        msgid++;
        len--;
    }
    while (len > 0 && is_header_space(msgid[len - 1]))
        len--;
    if (len == 0)
        return 0;
    h = uidl_fnv1a(UIDL_FNV_OFFSET, msgid, len);
    /* 0 means "unknown" in the state; a real id must never look like that. */
    return h != 0 ? h : 1;
}

size_t uidl_header_field(const char *hdr, size_t len, const char *name, char *out, size_t cap)
{
    const size_t name_len = strlen(name);
    size_t i = 0;
    if (cap == 0)
        return 0;
    while (i < len) {
        size_t eol = i;
        while (eol < len && hdr[eol] != '\n')
            eol++;
        if (eol - i > name_len && hdr[i + name_len] == ':' &&
            strncasecmp(hdr + i, name, name_len) == 0) {
            /* The value, with continuation lines unfolded and the ends trimmed. */
            size_t o = 0;
            size_t p = i + name_len + 1;
            for (;;) {
                for (; p < eol; p++) {
                    char c = hdr[p] == '\t' || hdr[p] == '\r' ? ' ' : hdr[p];
                    if (c == ' ' && (o == 0 || out[o - 1] == ' '))
                        continue;
                    if (o + 1 < cap)
                        out[o++] = c;
                }
                if (eol + 1 < len && (hdr[eol + 1] == ' ' || hdr[eol + 1] == '\t')) {
                    p = eol + 1;
                    eol = p;
                    while (eol < len && hdr[eol] != '\n')
                        eol++;
                    continue;
                }
                break;
            }
            while (o > 0 && out[o - 1] == ' ')
                o--;
            out[o] = '\0';
            return o;
        }
        i = eol + 1;
    }
    out[0] = '\0';
    return 0;
}
