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

size_t pop3_dotstuff_feed(struct pop3_dotstuff *d, const char *in, size_t len, size_t *consumed_r,
                          char *out, size_t cap)
{
    size_t i = 0, o = 0;

    /* One pass per line: memchr finds the LF, memcpy moves the run before it. The
     * search never looks further than the output can take, so a small output
     * buffer over a huge LF-less chunk stays linear. */
    while (i < len && !d->done && o < cap) {
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
