/* Tests of the IMAP response parser: every vector whole, split in two everywhere, byte by byte. */
#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "imap_parser.h"

/* Vectors longer than this are split at every SPLIT_STRIDE-th byte, not every byte. */
#define SPLIT_ALL_MAX 4096
#define SPLIT_STRIDE  509
/* A non-MORE event may use no input (a token ends at the byte that follows it), but
 * never several times in a row: that would be a parser that loops forever. */
#define ZERO_PROGRESS_MAX 3
/* check writes every passing ck_assert's location to a file; the loops below run millions
 * of checks, so they report only failures. */
#define REQUIRE(cond)                                                                              \
    do {                                                                                           \
        if (!(cond))                                                                               \
            ck_abort_msg("%s:%d: %s", __FILE__, __LINE__, #cond);                                  \
    } while (0)
/* Size of the body of the big-literal test. */
#define BIG_LITERAL_SIZE (5u * 1024 * 1024)

/* A growing string: the recorded events. */
struct text {
    char *s;
    size_t len;
    size_t cap;
};

static void text_add(struct text *t, const char *s, size_t n)
{
    if (t->len + n + 1 > t->cap) {
        t->cap = (t->len + n + 1) * 2;
        t->s = realloc(t->s, t->cap);
        REQUIRE(t->s != NULL);
    }
    memcpy(t->s + t->len, s, n);
    t->len += n;
    t->s[t->len] = '\0';
}

static void text_str(struct text *t, const char *s)
{
    text_add(t, s, strlen(s));
}

/* Adds bytes with controls and 8-bit shown as \r, \n or \xHH, so failures read well. */
static void text_bytes(struct text *t, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[8];
        if (c == '\r')
            text_str(t, "\\r");
        else if (c == '\n')
            text_str(t, "\\n");
        else if (c < 0x20 || c >= 0x7f) {
            snprintf(esc, sizeof(esc), "\\x%02x", c);
            text_str(t, esc);
        } else
            text_add(t, (const char *)&s[i], 1);
    }
}

/* Records one run over a list of chunks. LITERAL_DATA chunks are joined. */
struct recorder {
    struct text out;
    struct text data; /* literal bytes not yet written out */
    bool in_data;
    unsigned depth;
    enum imap_resp_kind kind; /* of the response being recorded */
};

static void rec_sep(struct recorder *r)
{
    if (r->in_data) {
        text_str(&r->out, " DATA(");
        text_bytes(&r->out, r->data.s, r->data.len);
        text_str(&r->out, ")");
        r->data.len = 0;
        r->in_data = false;
    }
    if (r->out.len > 0)
        text_str(&r->out, " ");
}

static void rec_slice(struct recorder *r, const char *name, struct imap_slice s)
{
    rec_sep(r);
    text_str(&r->out, name);
    text_str(&r->out, "(");
    text_bytes(&r->out, s.p, s.len);
    text_str(&r->out, ")");
}

static void rec_event(struct recorder *r, const struct imap_event *ev)
{
    char buf[64];

    if (ev->type == IMAP_EV_LITERAL_DATA) {
        text_add(&r->data, ev->str.p, ev->str.len);
        r->in_data = true;
        return;
    }
    if (ev->type == IMAP_EV_BEGIN) {
        bool one = ev->str.len == 1;
        r->kind = one && ev->str.p[0] == '*'   ? IMAP_RESP_UNTAGGED
                  : one && ev->str.p[0] == '+' ? IMAP_RESP_CONTINUATION
                                               : IMAP_RESP_TAGGED;
    }
    REQUIRE(ev->kind == r->kind);
    switch (ev->type) {
    case IMAP_EV_BEGIN:
        rec_slice(r, "BEGIN", ev->str);
        break;
    case IMAP_EV_ATOM:
        rec_sep(r);
        text_str(&r->out, "ATOM(");
        text_bytes(&r->out, ev->str.p, ev->str.len);
        if (ev->is_number) {
            snprintf(buf, sizeof(buf), "#%llu", (unsigned long long)ev->num);
            text_str(&r->out, buf);
        }
        text_str(&r->out, ")");
        break;
    case IMAP_EV_STRING:
        rec_slice(r, "STR", ev->str);
        break;
    case IMAP_EV_NIL:
        rec_sep(r);
        text_str(&r->out, "NIL");
        break;
    case IMAP_EV_LIST_BEGIN:
        REQUIRE(ev->depth == ++r->depth);
        rec_sep(r);
        text_str(&r->out, "(");
        break;
    case IMAP_EV_LIST_END:
        REQUIRE(ev->depth == --r->depth);
        rec_sep(r);
        text_str(&r->out, ")");
        break;
    case IMAP_EV_LITERAL_BEGIN:
        rec_sep(r);
        snprintf(buf, sizeof(buf), "LIT{%llu}", (unsigned long long)ev->num);
        text_str(&r->out, buf);
        break;
    case IMAP_EV_LITERAL_END:
        rec_sep(r);
        text_str(&r->out, "LITEND");
        break;
    case IMAP_EV_CODE:
        rec_sep(r);
        text_str(&r->out, "CODE(");
        text_bytes(&r->out, ev->str.p, ev->str.len);
        if (ev->args.len > 0) {
            text_str(&r->out, "|");
            text_bytes(&r->out, ev->args.p, ev->args.len);
        }
        text_str(&r->out, ")");
        break;
    case IMAP_EV_TEXT:
        rec_slice(r, "TEXT", ev->str);
        break;
    case IMAP_EV_END:
        REQUIRE(ev->depth == 0);
        rec_sep(r);
        text_str(&r->out, "END");
        break;
    default:
        ck_abort_msg("unexpected event %d", (int)ev->type);
    }
}

/*
 * Feeds each chunk from its own heap copy of exactly its size (so ASan catches a read
 * past it), looping until MORE like a real caller. Returns the events as a string the
 * caller frees.
 */
static char *run_chunks(const char *const *chunks, const size_t *lens, size_t n)
{
    struct imap_parser *p = imap_parser_new();
    struct recorder r = {0};
    bool failed = false;

    REQUIRE(p != NULL);
    text_add(&r.out, "", 0);
    for (size_t c = 0; c < n && !failed; c++) {
        char *buf = malloc(lens[c] + 1); /* +1: malloc(0) may return NULL */
        size_t off = 0;
        unsigned zero_progress = 0;

        REQUIRE(buf != NULL);
        memcpy(buf, chunks[c], lens[c]);
        for (;;) {
            struct imap_event ev;
            size_t consumed = 99;
            const char *error = NULL;
            enum imap_ev type =
                imap_parser_feed(p, buf + off, lens[c] - off, &consumed, &ev, &error);

            REQUIRE(type == ev.type);
            REQUIRE(consumed <= lens[c] - off);
            if (type == IMAP_EV_ERROR) {
                REQUIRE(error != NULL);
                rec_sep(&r);
                text_str(&r.out, "ERROR(");
                text_str(&r.out, error);
                text_str(&r.out, ")");
                /* The parser stays dead whatever comes next. */
                REQUIRE(imap_parser_feed(p, "* OK\r\n", 6, &consumed, &ev, &error) ==
                        IMAP_EV_ERROR);
                failed = true;
                break;
            }
            if (type == IMAP_EV_LITERAL_DATA) {
                REQUIRE(ev.str.p == buf + off);
                REQUIRE(ev.str.len == consumed);
                REQUIRE(consumed > 0);
            }
            off += consumed;
            if (type == IMAP_EV_MORE) {
                REQUIRE(off == lens[c]);
                break;
            }
            zero_progress = consumed == 0 ? zero_progress + 1 : 0;
            REQUIRE(zero_progress <= ZERO_PROGRESS_MAX);
            rec_event(&r, &ev);
        }
        free(buf);
    }
    rec_sep(&r); /* flushes pending literal data */
    if (r.out.len > 0 && r.out.s[r.out.len - 1] == ' ')
        r.out.s[--r.out.len] = '\0';
    free(r.data.s);
    imap_parser_free(&p);
    REQUIRE(p == NULL);
    return r.out.s;
}

static void expect_run(const char *what, size_t at, const char *const *chunks, const size_t *lens,
                       size_t n, const char *want)
{
    char *got = run_chunks(chunks, lens, n);
    if (strcmp(got, want) != 0)
        ck_abort_msg("%s %zu:\n got: %.2000s\nwant: %.2000s", what, at, got, want);
    free(got);
}

/* Runs in[0..len) whole, split in two at every (or every stride-th) byte, and byte by byte. */
static void check_vector_len(const char *in, size_t len, const char *want)
{
    size_t stride = len > SPLIT_ALL_MAX ? SPLIT_STRIDE : 1;
    const char *chunks[2] = {in, in};
    size_t lens[2] = {len, 0};

    expect_run("whole", 0, chunks, lens, 1, want);
    for (size_t k = 0; k <= len; k += stride) {
        lens[0] = k;
        chunks[1] = in + k;
        lens[1] = len - k;
        expect_run("split at", k, chunks, lens, 2, want);
    }

    const char **bytes = malloc((len + 1) * sizeof(*bytes));
    size_t *ones = malloc((len + 1) * sizeof(*ones));
    ck_assert(bytes != NULL && ones != NULL);
    for (size_t i = 0; i < len; i++) {
        bytes[i] = in + i;
        ones[i] = 1;
    }
    expect_run("byte by byte", len, bytes, ones, len, want);
    free(bytes);
    free(ones);
}

static void check_vector(const char *in, const char *want)
{
    check_vector_len(in, strlen(in), want);
}

/* A literal's bytes may hold NUL, so such vectors give their length. */
#define CHECK_BYTES(in, want) check_vector_len((in), sizeof(in) - 1, (want))

START_TEST(status_responses)
{
    check_vector("* OK [CAPABILITY IMAP4rev1 SASL-IR LITERAL+ AUTH=PLAIN] Dovecot ready.\r\n",
                 "BEGIN(*) ATOM(OK) CODE(CAPABILITY|IMAP4rev1 SASL-IR LITERAL+ AUTH=PLAIN) "
                 "TEXT(Dovecot ready.) END");
    check_vector("A1 OK [READ-WRITE] SELECT completed\r\n",
                 "BEGIN(A1) ATOM(OK) CODE(READ-WRITE) TEXT(SELECT completed) END");
    check_vector("A2 NO Mailbox doesn't exist\r\n",
                 "BEGIN(A2) ATOM(NO) TEXT(Mailbox doesn't exist) END");
    check_vector("* BYE Autologout\r\n", "BEGIN(*) ATOM(BYE) TEXT(Autologout) END");
    check_vector("A3 BAD\r\n", "BEGIN(A3) ATOM(BAD) TEXT() END");
    check_vector("A3 BAD \r\n", "BEGIN(A3) ATOM(BAD) TEXT() END");
    check_vector("a4 ok done\r\n", "BEGIN(a4) ATOM(ok) TEXT(done) END");
    check_vector("* PREAUTH [CAPABILITY IMAP4rev1] Logged in\r\n",
                 "BEGIN(*) ATOM(PREAUTH) CODE(CAPABILITY|IMAP4rev1) TEXT(Logged in) END");
    check_vector("* OK [UIDVALIDITY 1600000000] UIDs valid\r\n",
                 "BEGIN(*) ATOM(OK) CODE(UIDVALIDITY|1600000000) TEXT(UIDs valid) END");
    check_vector("* OK [ALERT] System shutdown in 10 minutes\r\n",
                 "BEGIN(*) ATOM(OK) CODE(ALERT) TEXT(System shutdown in 10 minutes) END");
    check_vector("L1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n",
                 "BEGIN(L1) ATOM(NO) CODE(AUTHENTICATIONFAILED) TEXT(Authentication failed.) END");
    check_vector("L1 NO [UNAVAILABLE]\r\n", "BEGIN(L1) ATOM(NO) CODE(UNAVAILABLE) TEXT() END");
    check_vector("* OK [PERMANENTFLAGS (\\Deleted \\Seen \\*)] Flags permitted.\r\n",
                 "BEGIN(*) ATOM(OK) CODE(PERMANENTFLAGS|(\\Deleted \\Seen \\*)) "
                 "TEXT(Flags permitted.) END");
    check_vector("* OK [UIDNEXT 5] Predicted next UID\r\n",
                 "BEGIN(*) ATOM(OK) CODE(UIDNEXT|5) TEXT(Predicted next UID) END");
    check_vector("* OK [HIGHESTMODSEQ 5]\r\n",
                 "BEGIN(*) ATOM(OK) CODE(HIGHESTMODSEQ|5) TEXT() END");
}
END_TEST

START_TEST(status_edges)
{
    /* Text is what follows exactly one space; a code needs no space after "]". */
    check_vector("A1 OK  two spaces\r\n", "BEGIN(A1) ATOM(OK) TEXT( two spaces) END");
    check_vector("* OK [ALERT]no space\r\n", "BEGIN(*) ATOM(OK) CODE(ALERT) TEXT(no space) END");
    check_vector("* OK [X ]\r\n", "BEGIN(*) ATOM(OK) CODE(X) TEXT() END");
    check_vector("* OK []\r\n", "BEGIN(*) ATOM(OK) CODE() TEXT() END");
    check_vector("* OK text [not a code]\r\n", "BEGIN(*) ATOM(OK) TEXT(text [not a code]) END");
    check_vector("* OK(x) y\r\n", "BEGIN(*) ATOM(OK) TEXT((x) y) END");
    check_vector("* OK \"quoted\" {3}\r\n", "BEGIN(*) ATOM(OK) TEXT(\"quoted\" {3}) END");
    /* Only the first item after the tag can be a status word. */
    check_vector("* 1 OK x\r\n", "BEGIN(*) ATOM(1#1) ATOM(OK) ATOM(x) END");
    check_vector("A1 FOO bar\r\n", "BEGIN(A1) ATOM(FOO) ATOM(bar) END");
    check_vector("* \"OK\" x\r\n", "BEGIN(*) STR(OK) ATOM(x) END");
    check_vector("*\r\n", "BEGIN(*) END");
    check_vector("A1\r\n", "BEGIN(A1) END");
    check_vector("A.b-7] OK\r\n", "BEGIN(A.b-7]) ATOM(OK) TEXT() END");
}
END_TEST

START_TEST(continuations)
{
    check_vector("+ \r\n", "BEGIN(+) TEXT() END");
    check_vector("+\r\n", "BEGIN(+) TEXT() END");
    check_vector("+\n", "BEGIN(+) TEXT() END");
    check_vector("+ base64==\r\n", "BEGIN(+) TEXT(base64==) END");
    check_vector("+ Ready for literal data\r\n", "BEGIN(+) TEXT(Ready for literal data) END");
    check_vector("+ [ALERT] not parsed\r\n", "BEGIN(+) TEXT([ALERT] not parsed) END");
    check_vector("+  x\r\n", "BEGIN(+) TEXT( x) END");
}
END_TEST

START_TEST(data_responses)
{
    check_vector("* 3 EXISTS\r\n", "BEGIN(*) ATOM(3#3) ATOM(EXISTS) END");
    check_vector("* 2 EXPUNGE\r\n", "BEGIN(*) ATOM(2#2) ATOM(EXPUNGE) END");
    check_vector("* 4 FETCH (UID 7 RFC822.SIZE 1234)\r\n",
                 "BEGIN(*) ATOM(4#4) ATOM(FETCH) ( ATOM(UID) ATOM(7#7) ATOM(RFC822.SIZE) "
                 "ATOM(1234#1234) ) END");
    check_vector("* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n",
                 "BEGIN(*) ATOM(FLAGS) ( ATOM(\\Answered) ATOM(\\Flagged) ATOM(\\Deleted) "
                 "ATOM(\\Seen) ATOM(\\Draft) ) END");
    check_vector("* CAPABILITY IMAP4rev1 SASL-IR LITERAL+ ID ENABLE IDLE AUTH=PLAIN\r\n",
                 "BEGIN(*) ATOM(CAPABILITY) ATOM(IMAP4rev1) ATOM(SASL-IR) ATOM(LITERAL+) ATOM(ID) "
                 "ATOM(ENABLE) ATOM(IDLE) ATOM(AUTH=PLAIN) END");
    check_vector("* LIST (\\HasNoChildren) \"/\" INBOX\r\n",
                 "BEGIN(*) ATOM(LIST) ( ATOM(\\HasNoChildren) ) STR(/) ATOM(INBOX) END");
    check_vector("* LIST () NIL \"\"\r\n", "BEGIN(*) ATOM(LIST) ( ) NIL STR() END");
    check_vector("* ID NIL\r\n", "BEGIN(*) ATOM(ID) NIL END");
    check_vector("* ID (\"name\" \"Dovecot\" \"x\" nil)\r\n",
                 "BEGIN(*) ATOM(ID) ( STR(name) STR(Dovecot) STR(x) NIL ) END");
    check_vector("* ENABLED\r\n", "BEGIN(*) ATOM(ENABLED) END");
    check_vector("* ENABLED CONDSTORE\r\n", "BEGIN(*) ATOM(ENABLED) ATOM(CONDSTORE) END");
    check_vector("* SEARCH\r\n", "BEGIN(*) ATOM(SEARCH) END");
    check_vector("*   3    EXISTS  \r\n", "BEGIN(*) ATOM(3#3) ATOM(EXISTS) END");
}
END_TEST

START_TEST(bracket_atoms)
{
    check_vector("* 1 FETCH (UID 9 BODY[TEXT]<0> {5}\r\nhello)\r\n",
                 "BEGIN(*) ATOM(1#1) ATOM(FETCH) ( ATOM(UID) ATOM(9#9) ATOM(BODY[TEXT]<0>) "
                 "LIT{5} DATA(hello) LITEND ) END");
    check_vector("* 2 FETCH (BODY[HEADER.FIELDS (MESSAGE-ID DATE)] {4}\r\nab\r\n UID 3)\r\n",
                 "BEGIN(*) ATOM(2#2) ATOM(FETCH) ( ATOM(BODY[HEADER.FIELDS (MESSAGE-ID DATE)]) "
                 "LIT{4} DATA(ab\\r\\n) LITEND ATOM(UID) ATOM(3#3) ) END");
    check_vector("* 1 FETCH (BODY[HEADER] {12}\r\nSubject: x\r\n)\r\n",
                 "BEGIN(*) ATOM(1#1) ATOM(FETCH) ( ATOM(BODY[HEADER]) LIT{12} "
                 "DATA(Subject: x\\r\\n) LITEND ) END");
    check_vector("* 1 FETCH (BODY[1.MIME]<10.20> \"x\")\r\n",
                 "BEGIN(*) ATOM(1#1) ATOM(FETCH) ( ATOM(BODY[1.MIME]<10.20>) STR(x) ) END");
    check_vector("* X [a(b)c]d)\r\n", "BEGIN(*) ATOM(X) ATOM([a(b)c]d) ERROR(unbalanced \")\")");
}
END_TEST

START_TEST(strings_and_lists)
{
    check_vector("* LIST () \"\\\\\" \"a \\\"b\\\" c\"\r\n",
                 "BEGIN(*) ATOM(LIST) ( ) STR(\\) STR(a \"b\" c) END");
    check_vector("* X \"NIL\" \"(not a list)\" \"{3}\"\r\n",
                 "BEGIN(*) ATOM(X) STR(NIL) STR((not a list)) STR({3}) END");
    check_vector("* X \"caf\xc3\xa9\" \"\\q\"\r\n",
                 "BEGIN(*) ATOM(X) STR(caf\\xc3\\xa9) STR(q) END");
    check_vector("* X (a (b (c NIL)) \"d\")(e)\r\n",
                 "BEGIN(*) ATOM(X) ( ATOM(a) ( ATOM(b) ( ATOM(c) NIL ) ) STR(d) ) ( ATOM(e) ) END");
    check_vector("* X a\"b\"(c)d\r\n", "BEGIN(*) ATOM(X) ATOM(a) STR(b) ( ATOM(c) ) ATOM(d) END");
}
END_TEST

START_TEST(numbers)
{
    check_vector("* 0 RECENT\r\n", "BEGIN(*) ATOM(0#0) ATOM(RECENT) END");
    check_vector("* 007 X\r\n", "BEGIN(*) ATOM(007#7) ATOM(X) END");
    check_vector("* 9223372036854775807 X\r\n",
                 "BEGIN(*) ATOM(9223372036854775807#9223372036854775807) ATOM(X) END");
    /* Above number64: still an atom, but not a number. */
    check_vector("* 9223372036854775808 X\r\n", "BEGIN(*) ATOM(9223372036854775808) ATOM(X) END");
    check_vector("* 184467440737095516160 X\r\n",
                 "BEGIN(*) ATOM(184467440737095516160) ATOM(X) END");
    check_vector("* 12a -1 +2\r\n", "BEGIN(*) ATOM(12a) ATOM(-1) ATOM(+2) END");
}
END_TEST

START_TEST(literals)
{
    check_vector("* 1 FETCH (UID 1 BODY[] {3}\r\nabc)\r\n",
                 "BEGIN(*) ATOM(1#1) ATOM(FETCH) ( ATOM(UID) ATOM(1#1) ATOM(BODY[]) LIT{3} "
                 "DATA(abc) LITEND ) END");
    check_vector("* 1 FETCH (BODY[] {0}\r\n)\r\n",
                 "BEGIN(*) ATOM(1#1) ATOM(FETCH) ( ATOM(BODY[]) LIT{0} LITEND ) END");
    check_vector(
        "* 1 FETCH (BODY[] {0}\r\n UID 4)\r\n",
        "BEGIN(*) ATOM(1#1) ATOM(FETCH) ( ATOM(BODY[]) LIT{0} LITEND ATOM(UID) ATOM(4#4) ) "
        "END");
    check_vector("* X {2}\r\nab\r\n", "BEGIN(*) ATOM(X) LIT{2} DATA(ab) LITEND END");
    check_vector("* X {2}\r\nab{1}\r\nc\"d\"{0}\r\n\r\n",
                 "BEGIN(*) ATOM(X) LIT{2} DATA(ab) LITEND LIT{1} DATA(c) LITEND STR(d) LIT{0} "
                 "LITEND END");
    /* A literal in the first position is data, and the atom after it no status word. */
    check_vector("* {2}\r\n\r\n OK\r\n", "BEGIN(*) LIT{2} DATA(\\r\\n) LITEND ATOM(OK) END");
    check_vector("* X ({1}\r\n))\r\n", "BEGIN(*) ATOM(X) ( LIT{1} DATA()) LITEND ) END");
    check_vector("* X ((({1}\r\n()))\r\n",
                 "BEGIN(*) ATOM(X) ( ( ( LIT{1} DATA(() LITEND ) ) ) END");
    CHECK_BYTES(
        "* 1 FETCH (BINARY[] ~{3}\r\nx\0y)\r\n",
        "BEGIN(*) ATOM(1#1) ATOM(FETCH) ( ATOM(BINARY[]) LIT{3} DATA(x\\x00y) LITEND ) END");
    check_vector("* X ~ a~b ~\r\n", "BEGIN(*) ATOM(X) ATOM(~) ATOM(a~b) ATOM(~) END");
    check_vector("* X {18446744073709551615}\r\n", "BEGIN(*) ATOM(X) LIT{18446744073709551615}");
    check_vector("* X {007}\r\nabcdefg)\r\n",
                 "BEGIN(*) ATOM(X) LIT{7} DATA(abcdefg) LITEND ERROR(unbalanced \")\")");
}
END_TEST

START_TEST(several_responses)
{
    check_vector("* 1 EXISTS\r\nA1 OK done\r\n",
                 "BEGIN(*) ATOM(1#1) ATOM(EXISTS) END BEGIN(A1) ATOM(OK) TEXT(done) END");
    /* Another IMAP client expunges and new mail arrives while we fetch. */
    check_vector("* 1 FETCH (UID 5 BODY[] {3}\r\nabc)\r\n* 7 EXISTS\r\n* 2 EXPUNGE\r\n"
                 "* 2 FETCH (FLAGS (\\Seen))\r\n* 2 FETCH (UID 6 BODY[] {2}\r\nde)\r\n"
                 "A5 OK Fetch completed.\r\n",
                 "BEGIN(*) ATOM(1#1) ATOM(FETCH) ( ATOM(UID) ATOM(5#5) ATOM(BODY[]) LIT{3} "
                 "DATA(abc) LITEND ) END "
                 "BEGIN(*) ATOM(7#7) ATOM(EXISTS) END BEGIN(*) ATOM(2#2) ATOM(EXPUNGE) END "
                 "BEGIN(*) ATOM(2#2) ATOM(FETCH) ( ATOM(FLAGS) ( ATOM(\\Seen) ) ) END "
                 "BEGIN(*) ATOM(2#2) ATOM(FETCH) ( ATOM(UID) ATOM(6#6) ATOM(BODY[]) LIT{2} "
                 "DATA(de) LITEND ) END BEGIN(A5) ATOM(OK) TEXT(Fetch completed.) END");
}
END_TEST

START_TEST(bare_lf)
{
    check_vector("* 3 EXISTS\nA1 OK [READ-WRITE] done\n* 1 FETCH (BODY[] {2}\nab)\n+\n"
                 "* OK\nA2 NO\n",
                 "BEGIN(*) ATOM(3#3) ATOM(EXISTS) END BEGIN(A1) ATOM(OK) CODE(READ-WRITE) "
                 "TEXT(done) END BEGIN(*) ATOM(1#1) ATOM(FETCH) ( ATOM(BODY[]) LIT{2} DATA(ab) "
                 "LITEND ) END BEGIN(+) TEXT() END BEGIN(*) ATOM(OK) TEXT() END "
                 "BEGIN(A2) ATOM(NO) TEXT() END");
}
END_TEST

START_TEST(errors)
{
    static const char *const bad_start = "ERROR(line starts with neither \"*\", \"+\" nor a tag)";
    static const char *const starts[] = {
        "\r\n",       "\n",          " A1 OK\r\n", "(x)\r\n",    "*x OK\r\n",       "+x\r\n",
        "A(1 OK\r\n", "A\"1 OK\r\n", "A%1 OK\r\n", "A+1 OK\r\n", "\xc3\xa9 OK\r\n", "\x7f OK\r\n"};
    char want[128];

    for (size_t i = 0; i < sizeof(starts) / sizeof(starts[0]); i++)
        check_vector(starts[i], bad_start);
    snprintf(want, sizeof(want), "BEGIN(A1) ATOM(OK) TEXT() END %s", bad_start);
    check_vector("A1 OK\r\n\r\n", want);

    check_vector("* )\r\n", "BEGIN(*) ERROR(unbalanced \")\")");
    check_vector("* (a))\r\n", "BEGIN(*) ( ATOM(a) ) ERROR(unbalanced \")\")");
    CHECK_BYTES("* A\0B\r\n", "BEGIN(*) ERROR(NUL byte outside a literal)");
    CHECK_BYTES("* OK a\0\r\n", "BEGIN(*) ATOM(OK) ERROR(NUL byte outside a literal)");
    CHECK_BYTES("\0", "ERROR(NUL byte outside a literal)");
    CHECK_BYTES("* \"a\0\"\r\n", "BEGIN(*) ERROR(NUL byte outside a literal)");
    check_vector("* (a\r\n", "BEGIN(*) ( ATOM(a) ERROR(line ended inside a list)");
    check_vector("* \"ab\r\n", "BEGIN(*) ERROR(line ended inside a quoted string)");
    check_vector("* \"ab\\\ncd\"\r\n", "BEGIN(*) ERROR(line ended inside a quoted string)");
    check_vector("* BODY[HEADER\r\n", "BEGIN(*) ERROR(line ended inside \"[\" of an atom)");
    check_vector("* OK [ALERT\r\n", "BEGIN(*) ATOM(OK) ERROR(unterminated response code)");
    check_vector("* OK [UIDNEXT 5\n", "BEGIN(*) ATOM(OK) ERROR(unterminated response code)");
    check_vector("* 1 EXISTS\rX", "BEGIN(*) ATOM(1#1) ATOM(EXISTS) ERROR(CR not followed by LF)");
    check_vector("* OK x\r\r\n", "BEGIN(*) ATOM(OK) TEXT(x) ERROR(CR not followed by LF)");

    static const char *const bad_literals[] = {"* X {x}\r\n",  "* X {}\r\n",   "* X {3\r\n",
                                               "* X {3}x",     "* X {3}\rx",   "* X {3+}\r\nabc",
                                               "* X {-1}\r\n", "* X { 3}\r\n", "* X ~{}\r\n"};
    for (size_t i = 0; i < sizeof(bad_literals) / sizeof(bad_literals[0]); i++)
        check_vector(bad_literals[i], "BEGIN(*) ATOM(X) ERROR(bad literal header)");
    check_vector("* X {18446744073709551616}\r\n",
                 "BEGIN(*) ATOM(X) ERROR(literal size too large)");
}
END_TEST

/* Builds "<prefix><n times fill><suffix>" in a heap buffer the caller frees. */
static char *repeat(const char *prefix, char fill, size_t n, const char *suffix)
{
    size_t lp = strlen(prefix), ls = strlen(suffix);
    char *s = malloc(lp + n + ls + 1);

    ck_assert_ptr_nonnull(s);
    memcpy(s, prefix, lp);
    memset(s + lp, fill, n);
    memcpy(s + lp + n, suffix, ls + 1);
    return s;
}

static void check_repeat(const char *prefix, size_t n, const char *suffix, const char *want_pre,
                         const char *want_post)
{
    char *in = repeat(prefix, 'a', n, suffix);
    char *want = repeat(want_pre, 'a', n, want_post);

    check_vector(in, want);
    free(in);
    free(want);
}

START_TEST(token_limit)
{
    static const char *const too_long = "ERROR(token longer than IMAP_TOKEN_MAX)";

    check_repeat("* ", IMAP_TOKEN_MAX, "\r\n", "BEGIN(*) ATOM(", ") END");
    check_repeat("* \"", IMAP_TOKEN_MAX, "\"\r\n", "BEGIN(*) STR(", ") END");
    check_repeat("* OK ", IMAP_TOKEN_MAX, "\r\n", "BEGIN(*) ATOM(OK) TEXT(", ") END");
    check_repeat("+ ", IMAP_TOKEN_MAX, "\r\n", "BEGIN(+) TEXT(", ") END");
    check_repeat("", IMAP_TOKEN_MAX, " OK\r\n", "BEGIN(", ") ATOM(OK) TEXT() END");
    /* A code's NAME and args share the token: "X " then IMAP_TOKEN_MAX - 1 bytes. */
    check_repeat("* OK [X ", IMAP_TOKEN_MAX - 1, "]\r\n", "BEGIN(*) ATOM(OK) CODE(X|",
                 ") TEXT() END");

    /* One byte more of each fails; the code's "X " holds two bytes of its token. */
    const char *const over[] = {"* ", "* \"", "* OK ", "+ ", "", "* OK [X "};
    const char *const over_want[] = {"BEGIN(*) ", "BEGIN(*) ", "BEGIN(*) ATOM(OK) ",
                                     "BEGIN(+) ", "",          "BEGIN(*) ATOM(OK) "};
    for (size_t i = 0; i < sizeof(over) / sizeof(over[0]); i++) {
        size_t n = IMAP_TOKEN_MAX + (strchr(over[i], '[') != NULL ? 0 : 1);
        char *in = repeat(over[i], 'a', n, "\"]\r\n");
        char want[64];
        snprintf(want, sizeof(want), "%s%s", over_want[i], too_long);
        check_vector(in, want);
        free(in);
    }
}
END_TEST

/* A response of exactly IMAP_LINE_MAX bytes (CRLF included) passes; one more fails. */
START_TEST(line_limit)
{
    /* "* " + 4 atoms + 3 spaces + CRLF, the atoms as long as a token may be. */
    size_t last = IMAP_LINE_MAX - 2 - 3 * IMAP_TOKEN_MAX - 3 - 2;

    for (int extra = 0; extra <= 1; extra++) {
        struct text in = {0}, want = {0};
        char *atom = repeat("", 'a', IMAP_TOKEN_MAX, "");

        text_str(&in, "* ");
        text_str(&want, "BEGIN(*)");
        for (int i = 0; i < 4; i++) {
            size_t n = i < 3 ? IMAP_TOKEN_MAX : last + (size_t)extra;
            text_add(&in, atom, n);
            text_str(&in, i < 3 ? " " : "\r\n");
            text_str(&want, " ATOM(");
            text_add(&want, atom, n);
            text_str(&want, ")");
        }
        ck_assert_uint_eq(in.len, IMAP_LINE_MAX + (size_t)extra);
        text_str(&want, extra ? " ERROR(response longer than IMAP_LINE_MAX)" : " END");
        check_vector(in.s, want.s);
        free(atom);
        free(in.s);
        free(want.s);
    }
}
END_TEST

START_TEST(depth_limit)
{
    struct text in = {0}, want = {0};

    text_str(&in, "* X ");
    text_str(&want, "BEGIN(*) ATOM(X)");
    for (int i = 0; i < IMAP_DEPTH_MAX; i++) {
        text_str(&in, "(");
        text_str(&want, " (");
    }
    text_str(&in, "NIL");
    text_str(&want, " NIL");
    for (int i = 0; i < IMAP_DEPTH_MAX; i++) {
        text_str(&in, ")");
        text_str(&want, " )");
    }
    text_str(&in, "\r\n");
    text_str(&want, " END");
    check_vector(in.s, want.s);

    /* One level deeper fails at the extra "(". */
    in.len = 0;
    want.len = 0;
    text_str(&in, "* X ");
    text_str(&want, "BEGIN(*) ATOM(X)");
    for (int i = 0; i <= IMAP_DEPTH_MAX; i++) {
        text_str(&in, "(");
        if (i < IMAP_DEPTH_MAX)
            text_str(&want, " (");
    }
    text_str(&in, ")\r\n");
    text_str(&want, " ERROR(lists nested deeper than IMAP_DEPTH_MAX)");
    check_vector(in.s, want.s);
    free(in.s);
    free(want.s);
}
END_TEST

/*
 * Feeds the big response in chunks of `chunk` bytes (0: whole) and checks that the
 * literal passes as slices of the fed buffer, in order, with nothing copied.
 */
static void feed_big(const char *in, size_t len, size_t body_off, size_t chunk)
{
    struct imap_parser *p = imap_parser_new();
    size_t pos = 0, body_seen = 0, data_events = 0, ends = 0;

    REQUIRE(p != NULL);
    while (pos < len) {
        size_t n = chunk == 0 || chunk > len - pos ? len - pos : chunk;
        const char *buf = in + pos;
        size_t off = 0;
        for (;;) {
            struct imap_event ev;
            size_t consumed;
            const char *error = NULL;
            enum imap_ev t = imap_parser_feed(p, buf + off, n - off, &consumed, &ev, &error);
            if (t == IMAP_EV_ERROR)
                ck_abort_msg("error %s", error);
            if (t == IMAP_EV_LITERAL_DATA) {
                REQUIRE(ev.str.p >= buf && ev.str.p + ev.str.len <= buf + n);
                REQUIRE(ev.str.p == in + body_off + body_seen);
                body_seen += ev.str.len;
                data_events++;
            }
            ends += t == IMAP_EV_END;
            off += consumed;
            if (t == IMAP_EV_MORE)
                break;
        }
        pos += n;
    }
    REQUIRE(body_seen == BIG_LITERAL_SIZE);
    REQUIRE(ends == 2);
    REQUIRE(!imap_parser_in_literal(p));
    /* One slice per fed buffer: no per-byte or fixed-size chopping. */
    if (chunk == 0)
        REQUIRE(data_events == 1);
    else
        REQUIRE(data_events <= BIG_LITERAL_SIZE / chunk + 2);
    imap_parser_free(&p);
}

START_TEST(big_literal)
{
    static const char head[] = "* 1 FETCH (UID 1 BODY[] {5242880}\r\n";
    static const char tail[] = ")\r\nA1 OK done\r\n";
    size_t len = sizeof(head) - 1 + BIG_LITERAL_SIZE + sizeof(tail) - 1;
    char *in = malloc(len);
    static const size_t chunks[] = {0, 1, 7, 4096, 65536, 1000003};

    ck_assert_ptr_nonnull(in);
    memcpy(in, head, sizeof(head) - 1);
    for (size_t i = 0; i < BIG_LITERAL_SIZE; i++)
        in[sizeof(head) - 1 + i] = (char)(i * 7 + i / 251); /* CRLF, NUL, ")" all occur */
    memcpy(in + sizeof(head) - 1 + BIG_LITERAL_SIZE, tail, sizeof(tail) - 1);
    for (size_t i = 0; i < sizeof(chunks) / sizeof(chunks[0]); i++)
        feed_big(in, len, sizeof(head) - 1, chunks[i]);
    free(in);
}
END_TEST

START_TEST(in_literal)
{
    struct imap_parser *p = imap_parser_new();
    static const char in[] = "* X {2}\r\nab\r\n";
    struct imap_event ev;
    size_t consumed, off = 0;
    const char *error;
    bool seen[4] = {false};

    for (;;) {
        enum imap_ev t = imap_parser_feed(p, in + off, 1, &consumed, &ev, &error);
        off += consumed;
        if (t == IMAP_EV_LITERAL_BEGIN)
            seen[0] = imap_parser_in_literal(p);
        if (t == IMAP_EV_LITERAL_DATA && ev.str.p[0] == 'a')
            seen[1] = imap_parser_in_literal(p);
        if (t == IMAP_EV_LITERAL_DATA && ev.str.p[0] == 'b')
            seen[2] = !imap_parser_in_literal(p);
        if (t == IMAP_EV_END) {
            seen[3] = !imap_parser_in_literal(p);
            break;
        }
    }
    ck_assert(seen[0] && seen[1] && seen[2] && seen[3]);
    imap_parser_free(&p);
    imap_parser_free(&p); /* freeing NULL is harmless */
}
END_TEST

static Suite *imap_parser_suite(void)
{
    Suite *s = suite_create("imap_parser");
    TCase *tc = tcase_create("core");

    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, status_responses);
    tcase_add_test(tc, status_edges);
    tcase_add_test(tc, continuations);
    tcase_add_test(tc, data_responses);
    tcase_add_test(tc, bracket_atoms);
    tcase_add_test(tc, strings_and_lists);
    tcase_add_test(tc, numbers);
    tcase_add_test(tc, literals);
    tcase_add_test(tc, several_responses);
    tcase_add_test(tc, bare_lf);
    tcase_add_test(tc, errors);
    tcase_add_test(tc, token_limit);
    tcase_add_test(tc, line_limit);
    tcase_add_test(tc, depth_limit);
    tcase_add_test(tc, big_literal);
    tcase_add_test(tc, in_literal);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(imap_parser_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
