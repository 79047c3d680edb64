/* The POP3 reply writer owns the exact bytes of status lines, the CAPA list and listing lines. */
#include "pop3_writer.h"

#include <string.h>

/* "18446744073709551615": the longest uint64_t in decimal. */
#define POP3_WRITER_U64_DIGITS 20

/* Appends into a fixed buffer and remembers if anything did not fit, so a caller
 * checks once at the end instead of after every piece. */
struct out {
    char *p;
    size_t len, cap;
    bool overflow;
};

static void put_bytes(struct out *o, const char *s, size_t len)
{
    if (len > o->cap - o->len) {
        o->overflow = true;
        return;
    }
    memcpy(o->p + o->len, s, len);
    o->len += len;
}

static void put_str(struct out *o, const char *s)
{
    put_bytes(o, s, strlen(s));
}

/* Text from callers (server messages, config values) must never end a line early:
 * a stray CR or LF would let it forge a second reply. */
static void put_text(struct out *o, const char *s)
{
    size_t len = strlen(s);

    if (len > o->cap - o->len) {
        o->overflow = true;
        return;
    }
    for (size_t i = 0; i < len; i++)
        o->p[o->len + i] = (s[i] == '\r' || s[i] == '\n') ? ' ' : s[i];
    o->len += len;
}

static void put_u64(struct out *o, uint64_t v)
{
    char tmp[POP3_WRITER_U64_DIGITS];
    size_t i = sizeof(tmp);

    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    put_bytes(o, tmp + i, sizeof(tmp) - i);
}

/* Copies s into dst (room bytes at most) with CR/LF made spaces; returns bytes written. */
static size_t copy_clean(char *dst, size_t room, const char *s)
{
    size_t i = 0;

    for (; i < room && s[i] != '\0'; i++)
        dst[i] = (s[i] == '\r' || s[i] == '\n') ? ' ' : s[i];
    return i;
}

size_t pop3_writer_status(char *out, size_t cap, bool ok, const char *code, const char *text)
{
    const char *word = ok ? "+OK" : "-ERR";
    size_t word_len = strlen(word);
    size_t limit = cap < POP3_REPLY_MAX ? cap : POP3_REPLY_MAX;
    /* Everything before the CRLF, which is always kept. */
    size_t room;
    size_t len;

    if (limit < word_len + 2)
        return 0;
    room = limit - 2;
    memcpy(out, word, word_len);
    len = word_len;
    /* A response code goes in whole or not at all: a cut "[SYS/TE" would be
     * misread by clients that act on codes. */
    if (code != NULL && code[0] != '\0' && strlen(code) + 3 <= room - len) {
        out[len++] = ' ';
        out[len++] = '[';
        len += copy_clean(out + len, room - len, code);
        out[len++] = ']';
    }
    if (text != NULL && text[0] != '\0' && len < room) {
        out[len++] = ' ';
        len += copy_clean(out + len, room - len, text);
    }
    out[len++] = '\r';
    out[len++] = '\n';
    return len;
}

static void put_capa_flag(struct out *o, bool on, const char *name)
{
    if (!on)
        return;
    put_str(o, name);
    put_str(o, "\r\n");
}

/* An empty value would print a bare keyword that promises something it lacks. */
static void put_capa_value(struct out *o, const char *name, const char *value)
{
    if (value == NULL || value[0] == '\0')
        return;
    put_str(o, name);
    put_str(o, " ");
    put_text(o, value);
    put_str(o, "\r\n");
}

size_t pop3_writer_capa(char *out, size_t cap, const struct pop3_capa *capa)
{
    struct out o = {out, 0, cap, false};

    put_str(&o, "+OK Capability list follows\r\n");
    put_capa_flag(&o, capa->top, "TOP");
    put_capa_flag(&o, capa->uidl, "UIDL");
    put_capa_flag(&o, capa->user, "USER");
    put_capa_flag(&o, capa->resp_codes, "RESP-CODES");
    put_capa_flag(&o, capa->auth_resp_code, "AUTH-RESP-CODE");
    put_capa_flag(&o, capa->pipelining, "PIPELINING");
    put_capa_flag(&o, capa->stls, "STLS");
    put_capa_value(&o, "SASL", capa->sasl);
    put_capa_value(&o, "LOGIN-DELAY", capa->login_delay);
    put_capa_value(&o, "EXPIRE", capa->expire);
    put_capa_value(&o, "IMPLEMENTATION", capa->implementation);
    put_str(&o, ".\r\n");
    return o.overflow ? 0 : o.len;
}

size_t pop3_writer_list_line(char *out, size_t cap, uint32_t n, uint64_t size)
{
    struct out o = {out, 0, cap, false};

    put_u64(&o, n);
    put_bytes(&o, " ", 1);
    put_u64(&o, size);
    put_bytes(&o, "\r\n", 2);
    return o.overflow ? 0 : o.len;
}

size_t pop3_writer_uidl_line(char *out, size_t cap, uint32_t n, const char *uidl)
{
    struct out o = {out, 0, cap, false};

    put_u64(&o, n);
    put_bytes(&o, " ", 1);
    put_text(&o, uidl);
    put_bytes(&o, "\r\n", 2);
    return o.overflow ? 0 : o.len;
}
