/* libFuzzer target for the POP3 command parser: any input, any chunking, same events, no crash. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pop3_parser.h"

/* Serialised events of one run; the cap keeps a run's memory bounded. */
#define FUZZ_LOG_MAX (1u << 20)

struct log {
    unsigned char *p;
    size_t len;
};

static void log_add(struct log *l, const void *s, size_t len)
{
    if (len > FUZZ_LOG_MAX - l->len)
        len = FUZZ_LOG_MAX - l->len;
    if (len == 0)
        return; /* an empty slice may have a NULL pointer */
    memcpy(l->p + l->len, s, len);
    l->len += len;
}

static void check_slice(const struct pop3_command *c, struct pop3_slice s)
{
    /* Every slice lies inside arg or is arg itself, except the verb. */
    if (s.len > 0 && (s.p < c->arg.p || s.p + s.len > c->arg.p + c->arg.len))
        abort();
}

static void record(struct log *l, enum pop3_parse_status st, const struct pop3_command *c,
                   const char *err)
{
    unsigned char tag = (unsigned char)st;

    log_add(l, &tag, 1);
    if (st == POP3_PARSE_ERROR) {
        if (err == NULL)
            abort();
        log_add(l, err, strlen(err) + 1);
        log_add(l, &c->cmd, sizeof(c->cmd));
        return;
    }
    if (c->arg.len > POP3_SASL_LINE_MAX || c->argc > POP3_ARGS_MAX)
        abort();
    for (size_t i = 0; i < c->arg.len; i++) {
        unsigned char ch = (unsigned char)c->arg.p[i];
        if ((ch < 0x20 && ch != '\t') || ch == 0x7f)
            abort();
    }
    for (unsigned i = 0; i < c->argc; i++)
        check_slice(c, c->argv[i]);
    log_add(l, &c->cmd, sizeof(c->cmd));
    log_add(l, &c->arg.len, sizeof(c->arg.len));
    log_add(l, c->arg.p, c->arg.len);
    log_add(l, c->verb.p, c->verb.len);
    log_add(l, &c->argc, sizeof(c->argc));
    log_add(l, c->num, sizeof(c->num[0]) * c->argc);
}

/* Feeds data in chunks whose sizes come from `seed` (0: whole), switching to SASL
 * mode after every AUTH as a session would. */
static void run(const uint8_t *data, size_t size, uint8_t seed, struct log *l)
{
    struct pop3_parser *p = pop3_parser_new();
    size_t pos = 0;
    unsigned step = 0;

    if (p == NULL)
        abort();
    while (pos < size) {
        size_t chunk = seed == 0 ? size - pos : (size_t)((seed * (step + 7)) % 61) + 1;
        if (chunk > size - pos)
            chunk = size - pos;
        /* A fresh copy per chunk, so a slice into the caller's memory shows under ASan. */
        char *buf = malloc(chunk);
        size_t off = 0;
        if (buf == NULL)
            abort();
        memcpy(buf, data + pos, chunk);
        while (off < chunk) {
            struct pop3_command cmd;
            const char *err;
            size_t used = 0;
            enum pop3_parse_status st =
                pop3_parser_feed(p, buf + off, chunk - off, &used, &cmd, &err);
            if (used == 0 || used > chunk - off)
                abort();
            off += used;
            if (st == POP3_PARSE_MORE) {
                if (off != chunk)
                    abort();
                continue;
            }
            if (buf[off - 1] != '\n')
                abort();
            record(l, st, &cmd, err);
            if (st == POP3_PARSE_CMD && cmd.cmd == POP3_CMD_AUTH && pop3_parser_expect_sasl(p) != 0)
                abort();
        }
        free(buf);
        pos += chunk;
        step++;
    }
    pop3_parser_free(&p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static unsigned char *a, *b;
    struct log whole, chunked;

    if (size < 1)
        return 0;
    if (a == NULL) {
        a = malloc(FUZZ_LOG_MAX);
        b = malloc(FUZZ_LOG_MAX);
        if (a == NULL || b == NULL)
            abort();
    }
    whole = (struct log){a, 0};
    chunked = (struct log){b, 0};
    run(data + 1, size - 1, 0, &whole);
    run(data + 1, size - 1, data[0] == 0 ? 1 : data[0], &chunked);
    if (whole.len != chunked.len || memcmp(whole.p, chunked.p, whole.len) != 0)
        abort();
    return 0;
}
