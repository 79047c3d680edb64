/* The dot-stuffer owns the RFC 1939 multi-line framing of one message body as it streams through.
 */
#include "pop3_dotstuff.h"

#include <string.h>

void pop3_dotstuff_init(struct pop3_dotstuff *d)
{
    memset(d, 0, sizeof(*d));
    /* The message's first byte starts a line, so a leading "." is stuffed too. */
    d->at_line_start = 1;
}

void pop3_dotstuff_limit_lines(struct pop3_dotstuff *d, uint64_t lines)
{
    d->limited = 1;
    d->lines_left = lines;
    if (lines == 0 && d->at_line_start)
        d->done = 1;
}

bool pop3_dotstuff_is_done(const struct pop3_dotstuff *d)
{
    return d->done != 0;
}

/* One in each byte: for the word-at-a-time search of LF. */
#define BYTES_1  0x0101010101010101ULL
#define BYTES_80 0x8080808080808080ULL

/* Nonzero when the 8 bytes may hold an LF; exact when they hold none. */
static uint64_t word_has_lf(uint64_t w)
{
    uint64_t x = w ^ (BYTES_1 * '\n');
    return (x - BYTES_1) & ~x & BYTES_80;
}

/*
 * The length of the prefix of in[0..len) that passes unchanged: it ends before a
 * line-start "." and before an LF without its CR. Messages are mostly such runs, so
 * they go out with one memcpy instead of one call per line. LFs are found a word at
 * a time; only a word that may hold one is looked at byte by byte.
 */
static size_t clean_prefix(const struct pop3_dotstuff *d, const char *in, size_t len)
{
    const unsigned char *p = (const unsigned char *)in;
    size_t i = 0;

    if (len > 0 && d->at_line_start && p[0] == '.')
        return 0;
    while (i < len) {
        if (len - i >= 8) {
            uint64_t w;
            memcpy(&w, p + i, sizeof(w));
            if (word_has_lf(w) == 0) {
                i += 8;
                continue;
            }
        }
        size_t end = len - i >= 8 ? i + 8 : len;
        for (; i < end; i++) {
            if (p[i] != '\n')
                continue;
            bool cr = i > 0 ? p[i - 1] == '\r' : d->last_cr != 0;
            if (!cr)
                return i;
            if (i + 1 < len && p[i + 1] == '.')
                return i + 1;
        }
    }
    return len;
}

size_t pop3_dotstuff_feed(struct pop3_dotstuff *d, const char *in, size_t len, size_t *consumed_r,
                          char *out, size_t cap)
{
    size_t i = 0, o = 0;

    /* Clean runs go out whole; what is left is a line-start ".", a bare LF, or TOP's
     * line counting, done a line at a time: memchr finds the LF, memcpy moves the run
     * before it. No search looks further than the output can take, so a small output
     * buffer over a huge LF-less chunk stays linear. */
    while (i < len && !d->done && o < cap) {
        if (!d->limited) {
            size_t room = cap - o;
            size_t avail = len - i;
            size_t run = clean_prefix(d, in + i, avail < room ? avail : room);
            if (run > 0) {
                memcpy(out + o, in + i, run);
                o += run;
                i += run;
                d->at_line_start = in[i - 1] == '\n';
                d->last_cr = in[i - 1] == '\r';
                continue;
            }
        }
        if (d->at_line_start && in[i] == '.') {
            /* The stuffed dot goes out ahead of the input dot, which then passes as
             * an ordinary byte: one byte of room is always enough to progress. */
            out[o++] = '.';
            d->at_line_start = 0;
            d->last_cr = 0;
            continue;
        }

        size_t room = cap - o;
        size_t avail = len - i;
        size_t scan = avail < room ? avail : room;
        const char *lf = memchr(in + i, '\n', scan);
        size_t run = lf != NULL ? (size_t)(lf - (in + i)) : scan;

        if (run > 0) {
            memcpy(out + o, in + i, run);
            o += run;
            i += run;
            d->at_line_start = 0;
            d->last_cr = in[i - 1] == '\r';
        }
        if (lf == NULL)
            continue;

        /* A bare LF gets the CR that POP3 framing requires, written ahead of the
         * LF for the same reason as the stuffed dot. */
        if (!d->last_cr) {
            out[o++] = '\r';
            d->at_line_start = 0;
            d->last_cr = 1;
            if (o == cap)
                break;
        }
        out[o++] = '\n';
        i++;
        d->at_line_start = 1;
        d->last_cr = 0;
        if (d->limited) {
            if (d->lines_left > 0)
                d->lines_left--;
            if (d->lines_left == 0)
                d->done = 1;
        }
    }
    d->in_total += i;
    *consumed_r = i;
    return o;
}

size_t pop3_dotstuff_finish(struct pop3_dotstuff *d, char *out)
{
    size_t o = 0;

    if (!d->at_line_start) {
        /* A client must never see the terminator glued to a partial line. */
        if (!d->last_cr)
            out[o++] = '\r';
        out[o++] = '\n';
    }
    out[o++] = '.';
    out[o++] = '\r';
    out[o++] = '\n';
    d->at_line_start = 1;
    d->last_cr = 0;
    d->done = 1;
    return o;
}
