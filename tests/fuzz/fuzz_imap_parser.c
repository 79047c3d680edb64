/* libFuzzer target for the IMAP response parser: any split of the input gives the same events. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "imap_parser.h"

/* A non-MORE event may use no input, but never this many times in a row. */
#define ZERO_PROGRESS_MAX 3

/* The events of one run, serialized; consecutive literal data is joined. */
struct trace {
    unsigned char *s;
    size_t len;
    size_t cap;
    bool in_data;
};

static void trace_add(struct trace *t, const void *p, size_t n)
{
    if (t->len + n > t->cap) {
        t->cap = (t->len + n) * 2;
        t->s = realloc(t->s, t->cap);
        if (t->s == NULL)
            abort();
    }
    if (n > 0)
        memcpy(t->s + t->len, p, n);
    t->len += n;
}

static void trace_slice(struct trace *t, struct imap_slice s)
{
    trace_add(t, &s.len, sizeof(s.len));
    trace_add(t, s.p, s.len);
}

static void trace_event(struct trace *t, const struct imap_event *ev)
{
    if (ev->type == IMAP_EV_LITERAL_DATA) {
        /* Only the bytes: how they were cut depends on the split. */
        if (!t->in_data) {
            unsigned char mark = IMAP_EV_LITERAL_DATA;
            trace_add(t, &mark, 1);
        }
        trace_add(t, ev->str.p, ev->str.len);
        t->in_data = true;
        return;
    }
    t->in_data = false;
    if (ev->depth > IMAP_DEPTH_MAX || ev->str.len > IMAP_TOKEN_MAX || ev->args.len > IMAP_TOKEN_MAX)
        abort();
    unsigned char head[4] = {(unsigned char)ev->type, (unsigned char)ev->kind,
                             (unsigned char)ev->depth, ev->is_number};
    trace_add(t, head, sizeof(head));
    trace_add(t, &ev->num, sizeof(ev->num));
    trace_slice(t, ev->str);
    trace_slice(t, ev->args);
}

/* Feeds data[0..size) cut at the given offsets, each piece from its own exact-size copy. */
static void run(const uint8_t *data, size_t size, const size_t *cuts, size_t ncuts, struct trace *t)
{
    struct imap_parser *p = imap_parser_new();
    size_t start = 0;

    if (p == NULL)
        abort();
    for (size_t c = 0; c <= ncuts; c++) {
        size_t end = c < ncuts ? cuts[c] : size;
        size_t len = end - start, off = 0;
        unsigned zero_progress = 0;
        char *buf = malloc(len + 1);

        if (buf == NULL)
            abort();
        memcpy(buf, data + start, len);
        for (;;) {
            struct imap_event ev;
            size_t consumed;
            const char *error = NULL;
            enum imap_ev type = imap_parser_feed(p, buf + off, len - off, &consumed, &ev, &error);

            if (type != ev.type || consumed > len - off)
                abort();
            if (type == IMAP_EV_LITERAL_DATA &&
                (ev.str.p != buf + off || ev.str.len != consumed || consumed == 0))
                abort();
            if (type == IMAP_EV_MORE) {
                if (off + consumed != len)
                    abort();
                break;
            }
            off += consumed;
            zero_progress = consumed == 0 ? zero_progress + 1 : 0;
            if (zero_progress > ZERO_PROGRESS_MAX)
                abort();
            trace_event(t, &ev);
            if (type == IMAP_EV_ERROR) {
                if (error == NULL)
                    abort();
                free(buf);
                imap_parser_free(&p);
                return;
            }
        }
        free(buf);
        start = end;
    }
    imap_parser_free(&p);
}

static void check_same(const struct trace *a, const struct trace *b)
{
    if (a->len != b->len || (a->len > 0 && memcmp(a->s, b->s, a->len) != 0))
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct trace whole = {0}, split = {0}, bytes = {0};

    if (size == 0)
        return 0;
    /* The first byte picks the split point; the rest is what the server sent. */
    size_t cut = size > 1 ? data[0] * (size - 1) / 255 : 0;
    data++;
    size--;

    run(data, size, NULL, 0, &whole);
    run(data, size, &cut, 1, &split);
    check_same(&whole, &split);

    size_t *cuts = malloc((size + 1) * sizeof(*cuts));
    if (cuts == NULL)
        abort();
    for (size_t i = 0; i < size; i++)
        cuts[i] = i + 1;
    run(data, size, cuts, size > 0 ? size - 1 : 0, &bytes);
    check_same(&whole, &bytes);

    free(cuts);
    free(whole.s);
    free(split.s);
    free(bytes.s);
    return 0;
}
