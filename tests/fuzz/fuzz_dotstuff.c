/* libFuzzer target for the dot-stuffer: unstuff(stuff(x)) == x up to the documented normalisations.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pop3_dotstuff.h"

struct buf {
    char *p;
    size_t len, alloc;
};

static void buf_add(struct buf *b, const char *s, size_t len)
{
    if (b->len + len > b->alloc) {
        b->alloc = (b->len + len) * 2 + 16;
        b->p = realloc(b->p, b->alloc);
        if (b->p == NULL)
            abort();
    }
    memcpy(b->p + b->len, s, len);
    b->len += len;
}

/* What a client reading the multi-line reply gets back: every line ends in CRLF,
 * a stuffed "." is removed, and ".\r\n" ends the message exactly at the end. */
static struct buf unstuff(const struct buf *in)
{
    struct buf out = {0};
    size_t p = 0;

    for (;;) {
        const char *lf = memchr(in->p + p, '\n', in->len - p);
        if (lf == NULL)
            abort(); /* never terminated */
        size_t end = (size_t)(lf - in->p) + 1;
        if (end - p < 2 || in->p[end - 2] != '\r')
            abort(); /* a bare LF reached the client */
        if (end - p == 3 && in->p[p] == '.') {
            if (end != in->len)
                abort(); /* terminator before the end */
            return out;
        }
        if (in->p[p] == '.') {
            if (in->p[p + 1] != '.')
                abort(); /* a line-start dot was not stuffed */
            p++;
        }
        buf_add(&out, in->p + p, end - p);
        p = end;
    }
}

/* The message as a client must see it: bare LF made CRLF, a last line completed. */
static struct buf normalise(const char *in, size_t len)
{
    struct buf out = {0};

    for (size_t i = 0; i < len; i++) {
        if (in[i] == '\n' && (i == 0 || in[i - 1] != '\r'))
            buf_add(&out, "\r", 1);
        buf_add(&out, in + i, 1);
    }
    if (len > 0 && in[len - 1] != '\n')
        buf_add(&out, in[len - 1] == '\r' ? "\n" : "\r\n", in[len - 1] == '\r' ? 1 : 2);
    return out;
}

static struct buf stuff(const char *in, size_t len, size_t chunk, size_t cap, uint64_t lines,
                        size_t *consumed_r)
{
    struct pop3_dotstuff d;
    struct buf out = {0};
    char *tmp = malloc(cap);
    char fin[POP3_DOTSTUFF_FINISH_MAX];
    size_t pos = 0;

    if (tmp == NULL)
        abort();
    pop3_dotstuff_init(&d);
    if (lines != UINT64_MAX)
        pop3_dotstuff_limit_lines(&d, lines);
    while (pos < len && !pop3_dotstuff_is_done(&d)) {
        size_t n = len - pos < chunk ? len - pos : chunk;
        size_t off = 0;
        while (off < n && !pop3_dotstuff_is_done(&d)) {
            size_t used = 0;
            size_t w = pop3_dotstuff_feed(&d, in + pos + off, n - off, &used, tmp, cap);
            if (w > cap || used > n - off || (w == 0 && used == 0))
                abort();
            buf_add(&out, tmp, w);
            off += used;
            if (out.len > 2 * (pos + off) + 2)
                abort();
        }
        pos += off;
    }
    if (d.in_total != pos)
        abort();
    size_t f = pop3_dotstuff_finish(&d, fin);
    if (f > POP3_DOTSTUFF_FINISH_MAX)
        abort();
    buf_add(&out, fin, f);
    free(tmp);
    *consumed_r = pos;
    return out;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 3)
        return 0;
    size_t chunk = (size_t)data[0] + 1;
    size_t cap = (size_t)(data[1] & 0x3f) + 1;
    /* Top bit of the third byte: a TOP-style line limit of its low bits. */
    uint64_t lines = (data[2] & 0x80) ? (uint64_t)(data[2] & 0x0f) : UINT64_MAX;
    const char *msg = (const char *)data + 3;
    size_t len = size - 3;
    size_t used_whole, used_chunked;

    struct buf whole = stuff(msg, len, len + 1, 2 * len + 16, lines, &used_whole);
    struct buf chunked = stuff(msg, len, chunk, cap, lines, &used_chunked);
    if (used_whole != used_chunked || whole.len != chunked.len ||
        memcmp(whole.p, chunked.p, whole.len) != 0)
        abort();

    /* With a limit, what goes out is the input up to the lines-th LF. */
    size_t expect_len = len;
    if (lines != UINT64_MAX) {
        uint64_t seen = 0;
        expect_len = 0;
        while (expect_len < len && seen < lines) {
            if (msg[expect_len] == '\n')
                seen++;
            expect_len++;
        }
    }
    if (used_whole != expect_len)
        abort();
    struct buf back = unstuff(&whole);
    struct buf norm = normalise(msg, expect_len);
    if (back.len != norm.len || (norm.len > 0 && memcmp(back.p, norm.p, norm.len) != 0))
        abort();
    free(whole.p);
    free(chunked.p);
    free(back.p);
    free(norm.p);
    return 0;
}
