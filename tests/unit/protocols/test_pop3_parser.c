/* Tests of the POP3 command parser: every vector whole, split at every byte, and byte by byte. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pop3_parser.h"

/* Vectors longer than this are split at sampled positions only, to keep the
 * every-split run from going quadratic on the 100 KB junk line. */
/* check's assertions record their location on every call; in loops over
 * hundreds of thousands of feeds that dominates, so hot paths use this. */
#define EXPECT(cond)                                                                               \
    do {                                                                                           \
        if (!(cond))                                                                               \
            ck_abort_msg("%s:%d: %s", __FILE__, __LINE__, #cond);                                  \
    } while (0)

#define SPLIT_ALL_MAX 4096
#define SPLIT_STRIDE  997
#define SPLIT_EDGE    64
#define EVENTS_MAX    64
#define DESCRIBE_MAX  (POP3_SASL_LINE_MAX * 4 + 256)

static const char *const cmd_names[] = {
    [POP3_CMD_USER] = "USER",      [POP3_CMD_PASS] = "PASS", [POP3_CMD_APOP] = "APOP",
    [POP3_CMD_AUTH] = "AUTH",      [POP3_CMD_STLS] = "STLS", [POP3_CMD_CAPA] = "CAPA",
    [POP3_CMD_QUIT] = "QUIT",      [POP3_CMD_STAT] = "STAT", [POP3_CMD_LIST] = "LIST",
    [POP3_CMD_RETR] = "RETR",      [POP3_CMD_DELE] = "DELE", [POP3_CMD_NOOP] = "NOOP",
    [POP3_CMD_RSET] = "RSET",      [POP3_CMD_TOP] = "TOP",   [POP3_CMD_UIDL] = "UIDL",
    [POP3_CMD_SASL_LINE] = "SASL",
};

static bool is_numeric(enum pop3_cmd c)
{
    return c == POP3_CMD_LIST || c == POP3_CMD_UIDL || c == POP3_CMD_RETR || c == POP3_CMD_DELE ||
           c == POP3_CMD_TOP;
}

static size_t put_slice(char *out, size_t o, struct pop3_slice s)
{
    for (size_t i = 0; i < s.len; i++) {
        unsigned char c = (unsigned char)s.p[i];
        if (c < 0x20 || c == 0x7f || c == '\\')
            o += (size_t)sprintf(out + o, "\\x%02x", c);
        else
            out[o++] = (char)c;
    }
    out[o] = '\0';
    return o;
}

/* One event as text: "RETR(retr) <1> [1] #1", "SASL() <abc>", "!invalid number(RETR)". */
static char *describe(enum pop3_parse_status st, const struct pop3_command *c, const char *err)
{
    char *out = malloc(DESCRIBE_MAX);
    size_t o = 0;

    EXPECT(out != NULL);
    if (st == POP3_PARSE_ERROR) {
        EXPECT(err != NULL);
        if (c->cmd != 0)
            snprintf(out, DESCRIBE_MAX, "!%s(%s)", err, cmd_names[c->cmd]);
        else
            snprintf(out, DESCRIBE_MAX, "!%s", err);
        return out;
    }
    o += (size_t)sprintf(out, "%s(", cmd_names[c->cmd]);
    o = put_slice(out, o, c->verb);
    o += (size_t)sprintf(out + o, ") <");
    o = put_slice(out, o, c->arg);
    out[o++] = '>';
    out[o] = '\0';
    EXPECT(c->argc <= POP3_ARGS_MAX);
    for (unsigned i = 0; i < c->argc; i++) {
        o += (size_t)sprintf(out + o, " [");
        o = put_slice(out, o, c->argv[i]);
        out[o++] = ']';
        out[o] = '\0';
    }
    if (is_numeric(c->cmd)) {
        for (unsigned i = 0; i < c->argc; i++)
            o += (size_t)sprintf(out + o, " #%u", (unsigned)c->num[i]);
    }
    return out;
}

struct run {
    char *events[EVENTS_MAX];
    size_t n;
};

static void run_free(struct run *r)
{
    for (size_t i = 0; i < r->n; i++)
        free(r->events[i]);
    r->n = 0;
}

/* The line limit run_chunks gives its parsers (limits.line_length). */
static size_t run_line_max = POP3_LINE_MAX;

/* Feeds in[0..len) as chunks ending at cuts[0..ncuts) (the last cut is len). */
static void run_chunks(const char *in, size_t len, const size_t *cuts, size_t ncuts,
                       unsigned sasl_mask, struct run *r)
{
    struct pop3_parser *p =
        run_line_max == POP3_LINE_MAX ? pop3_parser_new() : pop3_parser_new_max(run_line_max);
    size_t start = 0;

    EXPECT(p != NULL);
    r->n = 0;
    for (size_t k = 0; k < ncuts; k++) {
        size_t end = cuts[k];
        /* Each chunk is a fresh copy, so slices pointing into the caller's buffer
         * instead of the parser's would show up under ASan. */
        char *chunk = malloc(end - start + 1);
        size_t pos = 0;

        EXPECT(chunk != NULL);
        memcpy(chunk, in + start, end - start);
        while (pos < end - start) {
            struct pop3_command cmd;
            const char *err = NULL;
            size_t used = 0;
            enum pop3_parse_status st =
                pop3_parser_feed(p, chunk + pos, end - start - pos, &used, &cmd, &err);

            EXPECT(used > 0);
            EXPECT(used <= end - start - pos);
            pos += used;
            if (st == POP3_PARSE_MORE) {
                EXPECT(pos == end - start);
                continue;
            }
            EXPECT(r->n < EVENTS_MAX);
            /* The line end was the last byte consumed. */
            EXPECT(chunk[pos - 1] == '\n');
            r->events[r->n++] = describe(st, &cmd, err);
            if (r->n - 1 < 32 && (sasl_mask & (1u << (r->n - 1))))
                EXPECT(pop3_parser_expect_sasl(p) == 0);
        }
        free(chunk);
        start = end;
    }
    EXPECT(start == len);
    pop3_parser_free(&p);
    EXPECT(p == NULL);
}

static void check_run(const char *how, const struct run *r, const char *const *expected,
                      size_t n_expected)
{
    ck_assert_msg(r->n == n_expected, "%s: %zu events, expected %zu (first: %s)", how, r->n,
                  n_expected, r->n > 0 ? r->events[0] : "-");
    for (size_t i = 0; i < n_expected; i++)
        ck_assert_msg(strcmp(r->events[i], expected[i]) == 0,
                      "%s: event %zu is '%.200s', expected '%.200s'", how, i, r->events[i],
                      expected[i]);
}

static void run_vector(const char *in, size_t len, const char *const *expected, size_t n_expected,
                       unsigned sasl_mask)
{
    struct run r;
    size_t cuts[2];
    char how[64];

    cuts[0] = len;
    run_chunks(in, len, cuts, 1, sasl_mask, &r);
    check_run("whole", &r, expected, n_expected);
    run_free(&r);

    for (size_t k = 1; k < len; k++) {
        if (len > SPLIT_ALL_MAX && k > SPLIT_EDGE && k < len - SPLIT_EDGE && k % SPLIT_STRIDE != 0)
            continue;
        cuts[0] = k;
        cuts[1] = len;
        run_chunks(in, len, cuts, 2, sasl_mask, &r);
        snprintf(how, sizeof(how), "split at %zu", k);
        check_run(how, &r, expected, n_expected);
        run_free(&r);
    }

    size_t *bytes = malloc((len + 1) * sizeof(*bytes));
    ck_assert_ptr_nonnull(bytes);
    for (size_t k = 0; k < len; k++)
        bytes[k] = k + 1;
    run_chunks(in, len, bytes, len, sasl_mask, &r);
    check_run("byte by byte", &r, expected, n_expected);
    run_free(&r);
    free(bytes);
}

#define RUN(in, sasl_mask, ...)                                                                    \
    do {                                                                                           \
        static const char *const ev_[] = {__VA_ARGS__};                                            \
        run_vector((in), sizeof(in) - 1, ev_, sizeof(ev_) / sizeof(ev_[0]), (sasl_mask));          \
    } while (0)

START_TEST(test_single_commands)
{
    RUN("STAT\r\n", 0, "STAT(STAT) <>");
    RUN("STAT\n", 0, "STAT(STAT) <>");
    RUN("NOOP\r\n", 0, "NOOP(NOOP) <>");
    RUN("RSET\r\n", 0, "RSET(RSET) <>");
    RUN("QUIT\r\n", 0, "QUIT(QUIT) <>");
    RUN("CAPA\r\n", 0, "CAPA(CAPA) <>");
    RUN("STLS\r\n", 0, "STLS(STLS) <>");
    RUN("USER bob\r\n", 0, "USER(USER) <bob>");
    RUN("LIST\r\n", 0, "LIST(LIST) <>");
    RUN("UIDL 7\n", 0, "UIDL(UIDL) <7> [7] #7");
    RUN("TOP 3 0\r\n", 0, "TOP(TOP) <3 0> [3] [0] #3 #0");
}
END_TEST

START_TEST(test_pipelined)
{
    RUN("USER bob\r\nPASS secret word \r\nSTAT\r\nLIST\r\nLIST 1\r\nRETR 1\r\nDELE 1\r\n"
        "TOP 1 10\r\nUIDL\r\nUIDL 3\r\nNOOP\r\nRSET\r\nQUIT\r\n",
        0, "USER(USER) <bob>", "PASS(PASS) <secret word >", "STAT(STAT) <>", "LIST(LIST) <>",
        "LIST(LIST) <1> [1] #1", "RETR(RETR) <1> [1] #1", "DELE(DELE) <1> [1] #1",
        "TOP(TOP) <1 10> [1] [10] #1 #10", "UIDL(UIDL) <>", "UIDL(UIDL) <3> [3] #3",
        "NOOP(NOOP) <>", "RSET(RSET) <>", "QUIT(QUIT) <>");
    /* Mixed line ends, a bad line in the middle, and a partial line at the end. */
    RUN("STAT\nbogus\r\nLIST 2\nNOO", 0, "STAT(STAT) <>", "!unknown command",
        "LIST(LIST) <2> [2] #2");
}
END_TEST

START_TEST(test_mixed_case)
{
    RUN("StAt\r\nlist 2\r\nuIdL\r\nretr 5\r\ntop 1 2\r\npass X\r\nuser Y\r\napop a b\r\n"
        "auth plain\r\nstls\r\ncapa\r\nnoop\r\nrset\r\ndele 1\r\nquit\r\n",
        0, "STAT(StAt) <>", "LIST(list) <2> [2] #2", "UIDL(uIdL) <>", "RETR(retr) <5> [5] #5",
        "TOP(top) <1 2> [1] [2] #1 #2", "PASS(pass) <X>", "USER(user) <Y>",
        "APOP(apop) <a b> [a] [b]", "AUTH(auth) <plain> [plain]", "STLS(stls) <>", "CAPA(capa) <>",
        "NOOP(noop) <>", "RSET(rset) <>", "DELE(dele) <1> [1] #1", "QUIT(quit) <>");
}
END_TEST

START_TEST(test_no_arg_commands)
{
    RUN("STAT x\r\nNOOP 1\r\nRSET a\r\nQUIT now\r\nCAPA x\r\nSTLS y\r\n", 0,
        "!too many arguments(STAT)", "!too many arguments(NOOP)", "!too many arguments(RSET)",
        "!too many arguments(QUIT)", "!too many arguments(CAPA)", "!too many arguments(STLS)");
    /* Trailing spaces are tolerated: some clients send "QUIT ". */
    RUN("STAT \r\nQUIT   \nCAPA \r\n", 0, "STAT(STAT) <>", "QUIT(QUIT) <  >", "CAPA(CAPA) <>");
}
END_TEST

START_TEST(test_user_pass)
{
    RUN("USER\r\nUSER \r\nUSER   \r\nUSER  bob\r\nUSER a b\r\n", 0, "!missing argument(USER)",
        "!missing argument(USER)", "!missing argument(USER)", "USER(USER) < bob>",
        "USER(USER) <a b>");
    RUN("PASS\r\nPASS \r\nPASS  two  spaces \r\nPASS a\tb\r\nPASS x y z w\n", 0,
        "!missing argument(PASS)", "PASS(PASS) <>", "PASS(PASS) < two  spaces >",
        "PASS(PASS) <a\\x09b>", "PASS(PASS) <x y z w>");
    /* 8-bit bytes (UTF-8 passwords) pass. */
    RUN("PASS p\xc3\xa4ss\r\n", 0, "PASS(PASS) <p\xc3\xa4ss>");
}
END_TEST

START_TEST(test_auth_apop)
{
    RUN("AUTH\r\nAUTH PLAIN\r\nAUTH PLAIN dGVzdA==\r\nAUTH a b c\r\nAUTH  X   Y  \r\n", 0,
        "AUTH(AUTH) <>", "AUTH(AUTH) <PLAIN> [PLAIN]",
        "AUTH(AUTH) <PLAIN dGVzdA==> [PLAIN] [dGVzdA==]", "!too many arguments(AUTH)",
        "AUTH(AUTH) < X   Y  > [X] [Y]");
    RUN("APOP\r\nAPOP bob\r\nAPOP bob c4c9334bac560ecc979e58001b3e22fb\r\nAPOP a b c\r\n", 0,
        "!missing argument(APOP)", "!missing argument(APOP)",
        "APOP(APOP) <bob c4c9334bac560ecc979e58001b3e22fb> [bob] "
        "[c4c9334bac560ecc979e58001b3e22fb]",
        "!too many arguments(APOP)");
}
END_TEST

START_TEST(test_numeric_arity)
{
    RUN("LIST 1 2\r\nUIDL 1 2\r\nLIST x\r\nUIDL 1x\r\n", 0, "!too many arguments(LIST)",
        "!too many arguments(UIDL)", "!invalid number(LIST)", "!invalid number(UIDL)");
    RUN("RETR\r\nRETR \r\nRETR 1 2\r\nDELE\r\nDELE 1 2\r\nDELE x\r\n", 0, "!missing argument(RETR)",
        "!missing argument(RETR)", "!too many arguments(RETR)", "!missing argument(DELE)",
        "!too many arguments(DELE)", "!invalid number(DELE)");
    RUN("TOP\r\nTOP 1\r\nTOP 1 2 3\r\nTOP 1 x\r\nTOP y 1\r\nTOP  1  0 \r\n", 0,
        "!missing argument(TOP)", "!missing argument(TOP)", "!too many arguments(TOP)",
        "!invalid number(TOP)", "!invalid number(TOP)", "TOP(TOP) < 1  0 > [1] [0] #1 #0");
    /* Only two words are collected: a third is "too many" even when it is junk. */
    RUN("RETR 1 2 3 4 5 6\r\n", 0, "!too many arguments(RETR)");
}
END_TEST

START_TEST(test_numbers)
{
    RUN("RETR 1a\r\nRETR -1\r\nRETR +1\r\nRETR 99999999999\r\nRETR 4294967296\r\n"
        "RETR \t\r\nRETR 0x10\r\n",
        0, "!invalid number(RETR)", "!invalid number(RETR)", "!invalid number(RETR)",
        "!invalid number(RETR)", "!invalid number(RETR)", "!invalid number(RETR)",
        "!invalid number(RETR)");
    RUN("RETR 4294967295\r\nRETR 0\r\nRETR 0000000000000000004294967295\r\nDELE 007\r\n", 0,
        "RETR(RETR) <4294967295> [4294967295] #4294967295", "RETR(RETR) <0> [0] #0",
        "RETR(RETR) <0000000000000000004294967295> [0000000000000000004294967295] #4294967295",
        "DELE(DELE) <007> [007] #7");
    RUN("TOP 4294967295 4294967295\r\n", 0,
        "TOP(TOP) <4294967295 4294967295> [4294967295] [4294967295] #4294967295 #4294967295");
}
END_TEST

START_TEST(test_bad_lines)
{
    RUN("XTND XLST\r\nRETRX 1\r\n STAT\r\nST\r\nSTATS\r\n", 0, "!unknown command",
        "!unknown command", "!unknown command", "!unknown command", "!unknown command");
    RUN("\r\n\n   \r\nSTAT\r\n", 0, "!empty command", "!empty command", "!empty command",
        "STAT(STAT) <>");
    /* A TAB does not separate the keyword. */
    RUN("STAT\t\r\n", 0, "!unknown command");
}
END_TEST

START_TEST(test_invalid_characters)
{
    RUN("ST\0AT\r\nRETR 1\0\r\n\0\r\nSTAT\r\n", 0, "!invalid character", "!invalid character",
        "!invalid character", "STAT(STAT) <>");
    RUN("ST\rAT\r\nSTAT\r\r\nUSER \x01\r\nPASS a\x7f\r\n\x1b[A\nNOOP\n", 0, "!invalid character",
        "!invalid character", "!invalid character", "!invalid character", "!invalid character",
        "NOOP(NOOP) <>");
}
END_TEST

static char *repeat(char c, size_t n)
{
    char *s = malloc(n + 1);

    ck_assert_ptr_nonnull(s);
    memset(s, c, n);
    s[n] = '\0';
    return s;
}

static char *concat(const char *a, const char *b, const char *c)
{
    size_t la = strlen(a), lb = strlen(b), lc = strlen(c);
    char *s = malloc(la + lb + lc + 1);

    ck_assert_ptr_nonnull(s);
    memcpy(s, a, la);
    memcpy(s + la, b, lb);
    memcpy(s + la + lb, c, lc + 1);
    return s;
}

START_TEST(test_line_limit)
{
    /* "USER " + 248 = 253 octets of text; with CRLF exactly POP3_LINE_MAX. */
    char *name = repeat('a', POP3_LINE_MAX - 2 - 5);
    char *ok_line = concat("USER ", name, "\r\nSTAT\r\n");
    char *ok_event = concat("USER(USER) <", name, ">");
    const char *ev_ok[] = {ok_event, "STAT(STAT) <>"};
    run_vector(ok_line, strlen(ok_line), ev_ok, 2, 0);
    ck_assert_uint_eq(strlen(ok_line) - 6, POP3_LINE_MAX);

    /* One more octet: rejected, and the next command still parses. */
    char *long_name = repeat('a', POP3_LINE_MAX - 2 - 5 + 1);
    char *bad_line = concat("USER ", long_name, "\r\nSTAT\r\n");
    const char *ev_bad[] = {"!line too long", "STAT(STAT) <>"};
    run_vector(bad_line, strlen(bad_line), ev_bad, 2, 0);

    /* With a lone LF the line end is one octet, so the text may be one longer. */
    char *lf_ok = concat("USER ", long_name, "\nSTAT\n");
    char *lf_ok_event = concat("USER(USER) <", long_name, ">");
    const char *ev_lf_ok[] = {lf_ok_event, "STAT(STAT) <>"};
    run_vector(lf_ok, strlen(lf_ok), ev_lf_ok, 2, 0);
    char *longer_name = repeat('a', POP3_LINE_MAX - 1 - 5 + 1);
    char *lf_bad = concat("USER ", longer_name, "\nSTAT\n");
    run_vector(lf_bad, strlen(lf_bad), ev_bad, 2, 0);

    /* Two long lines in a row give two errors, one each. */
    char *two = concat(bad_line, bad_line, "");
    const char *ev_two[] = {"!line too long", "STAT(STAT) <>", "!line too long", "STAT(STAT) <>"};
    run_vector(two, strlen(two), ev_two, 4, 0);

    free(name);
    free(ok_line);
    free(ok_event);
    free(long_name);
    free(bad_line);
    free(lf_ok);
    free(lf_ok_event);
    free(longer_name);
    free(lf_bad);
    free(two);
}
END_TEST

/* An operator's longer limit (limits.line_length), clamped to what the parser allows. */
START_TEST(test_configured_line_limit)
{
    static const struct {
        size_t asked, got;
    } limits[] = {{512, 512}, {100, POP3_LINE_MAX}, {100000, POP3_LINE_LIMIT}};
    for (size_t i = 0; i < sizeof(limits) / sizeof(limits[0]); i++) {
        run_line_max = limits[i].asked;
        size_t max = limits[i].got;
        char *name = repeat('b', max - 2 - 5);
        char *ok_line = concat("USER ", name, "\r\nSTAT\r\n");
        char *ok_event = concat("USER(USER) <", name, ">");
        const char *ev_ok[] = {ok_event, "STAT(STAT) <>"};
        run_vector(ok_line, strlen(ok_line), ev_ok, 2, 0);
        char *long_name = repeat('b', max - 2 - 5 + 1);
        char *bad_line = concat("USER ", long_name, "\r\nSTAT\r\n");
        const char *ev_bad[] = {"!line too long", "STAT(STAT) <>"};
        run_vector(bad_line, strlen(bad_line), ev_bad, 2, 0);
        free(name);
        free(ok_line);
        free(ok_event);
        free(long_name);
        free(bad_line);
    }
    run_line_max = POP3_LINE_MAX;
}
END_TEST

START_TEST(test_junk_line)
{
    /* 100 KB without LF, with NULs and CRs inside: one error, then resync. */
    size_t junk = 100 * 1024;
    const char tail[] = "\r\nNOOP\r\n";
    char *in = malloc(junk + sizeof(tail));

    ck_assert_ptr_nonnull(in);
    for (size_t i = 0; i < junk; i++)
        in[i] = (char)("A\0\r x"[i % 5]);
    memcpy(in + junk, tail, sizeof(tail));
    const char *ev[] = {"!line too long", "NOOP(NOOP) <>"};
    run_vector(in, junk + sizeof(tail) - 1, ev, 2, 0);
    free(in);
}
END_TEST

START_TEST(test_sasl_lines)
{
    /* Bit i of the mask: call expect_sasl after event i. */
    RUN("AUTH PLAIN\r\ndGVzdAB0ZXN0AHRlc3Q=\r\nSTAT\r\n", 1u << 0, "AUTH(AUTH) <PLAIN> [PLAIN]",
        "SASL() <dGVzdAB0ZXN0AHRlc3Q=>", "STAT(STAT) <>");
    /* LOGIN: two continuation lines; a cancel "*"; an empty response. */
    RUN("AUTH LOGIN\r\nYm9i\r\nc2VjcmV0\r\nAUTH X\r\n*\r\nAUTH Y\r\n\r\n\r\n",
        0x1 | 0x2 | 0x8 | 0x20, "AUTH(AUTH) <LOGIN> [LOGIN]", "SASL() <Ym9i>", "SASL() <c2VjcmV0>",
        "AUTH(AUTH) <X> [X]", "SASL() <*>", "AUTH(AUTH) <Y> [Y]", "SASL() <>", "!empty command");
    /* A SASL line is not a command: a keyword in it stays text; control bytes do not pass. */
    RUN("AUTH X\r\nQUIT\r\nAUTH X\r\na\0b\r\nQUIT\r\n", 0x1 | 0x4, "AUTH(AUTH) <X> [X]",
        "SASL() <QUIT>", "AUTH(AUTH) <X> [X]", "!invalid character", "QUIT(QUIT) <>");

    /* Up to POP3_SASL_LINE_MAX with CRLF; one more is too long and ends the mode. */
    char *tok = repeat('Q', POP3_SASL_LINE_MAX - 2);
    char *in = concat("AUTH XOAUTH2\r\n", tok, "\r\nSTAT\r\n");
    char *ev_tok = concat("SASL() <", tok, ">");
    const char *ev[] = {"AUTH(AUTH) <XOAUTH2> [XOAUTH2]", ev_tok, "STAT(STAT) <>"};
    run_vector(in, strlen(in), ev, 3, 0x1);
    char *tok2 = repeat('Q', POP3_SASL_LINE_MAX - 1);
    char *in2 = concat("AUTH XOAUTH2\r\n", tok2, "\r\nSTAT\r\n");
    const char *ev2[] = {"AUTH(AUTH) <XOAUTH2> [XOAUTH2]", "!line too long", "STAT(STAT) <>"};
    run_vector(in2, strlen(in2), ev2, 3, 0x1);
    /* Without SASL mode the same token is an over-long command line. */
    const char *ev3[] = {"AUTH(AUTH) <XOAUTH2> [XOAUTH2]", "!line too long", "STAT(STAT) <>"};
    run_vector(in, strlen(in), ev3, 3, 0);
    free(tok);
    free(in);
    free(ev_tok);
    free(tok2);
    free(in2);
}
END_TEST

START_TEST(test_slices_in_parser_buffer)
{
    struct pop3_parser *p = pop3_parser_new();
    char buf[] = "PASS hunter2\r\n";
    struct pop3_command cmd;
    const char *err;
    size_t used;

    ck_assert_int_eq(pop3_parser_feed(p, buf, strlen(buf), &used, &cmd, &err), POP3_PARSE_CMD);
    ck_assert_uint_eq(used, strlen(buf));
    memset(buf, 'X', sizeof(buf) - 1);
    ck_assert_uint_eq(cmd.arg.len, 7);
    ck_assert_mem_eq(cmd.arg.p, "hunter2", 7);
    pop3_parser_free(&p);
    pop3_parser_free(&p);
}
END_TEST

START_TEST(test_reset)
{
    struct pop3_parser *p = pop3_parser_new();
    struct pop3_command cmd;
    const char *err;
    size_t used;

    ck_assert_int_eq(pop3_parser_feed(p, "RETR 1", 6, &used, &cmd, &err), POP3_PARSE_MORE);
    ck_assert_uint_eq(used, 6);
    pop3_parser_reset(p);
    ck_assert_int_eq(pop3_parser_feed(p, "STAT\r\n", 6, &used, &cmd, &err), POP3_PARSE_CMD);
    ck_assert_int_eq(cmd.cmd, POP3_CMD_STAT);

    /* A pending SASL mode and a discarded long line are forgotten too. */
    ck_assert_int_eq(pop3_parser_expect_sasl(p), 0);
    pop3_parser_reset(p);
    ck_assert_int_eq(pop3_parser_feed(p, "NOOP\n", 5, &used, &cmd, &err), POP3_PARSE_CMD);
    ck_assert_int_eq(cmd.cmd, POP3_CMD_NOOP);
    char *junk = repeat('x', 1000);
    ck_assert_int_eq(pop3_parser_feed(p, junk, 1000, &used, &cmd, &err), POP3_PARSE_MORE);
    pop3_parser_reset(p);
    ck_assert_int_eq(pop3_parser_feed(p, "QUIT\r\n", 6, &used, &cmd, &err), POP3_PARSE_CMD);
    ck_assert_int_eq(cmd.cmd, POP3_CMD_QUIT);
    ck_assert_int_eq(pop3_parser_feed(p, "", 0, &used, &cmd, &err), POP3_PARSE_MORE);
    ck_assert_uint_eq(used, 0);
    free(junk);
    pop3_parser_free(&p);
}
END_TEST

START_TEST(test_many_pipelined)
{
    /* Thousands of commands in one buffer: one feed per command, each consuming
     * exactly its line. */
    const char *line = "RETR 12345\r\n";
    size_t n = 20000, ll = strlen(line);
    char *buf = malloc(n * ll);
    struct pop3_parser *p = pop3_parser_new();
    size_t pos = 0, cmds = 0;

    ck_assert_ptr_nonnull(buf);
    for (size_t i = 0; i < n; i++)
        memcpy(buf + i * ll, line, ll);
    while (pos < n * ll) {
        struct pop3_command cmd;
        const char *err;
        size_t used;
        EXPECT(pop3_parser_feed(p, buf + pos, n * ll - pos, &used, &cmd, &err) == POP3_PARSE_CMD);
        EXPECT(used == ll);
        EXPECT(cmd.num[0] == 12345);
        pos += used;
        cmds++;
    }
    ck_assert_uint_eq(cmds, n);
    free(buf);
    pop3_parser_free(&p);
}
END_TEST

static Suite *pop3_parser_suite(void)
{
    Suite *s = suite_create("pop3_parser");
    TCase *tc = tcase_create("core");

    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_single_commands);
    tcase_add_test(tc, test_pipelined);
    tcase_add_test(tc, test_mixed_case);
    tcase_add_test(tc, test_no_arg_commands);
    tcase_add_test(tc, test_user_pass);
    tcase_add_test(tc, test_auth_apop);
    tcase_add_test(tc, test_numeric_arity);
    tcase_add_test(tc, test_numbers);
    tcase_add_test(tc, test_bad_lines);
    tcase_add_test(tc, test_invalid_characters);
    tcase_add_test(tc, test_line_limit);
    tcase_add_test(tc, test_configured_line_limit);
    tcase_add_test(tc, test_junk_line);
    tcase_add_test(tc, test_sasl_lines);
    tcase_add_test(tc, test_slices_in_parser_buffer);
    tcase_add_test(tc, test_reset);
    tcase_add_test(tc, test_many_pipelined);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(pop3_parser_suite());
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
