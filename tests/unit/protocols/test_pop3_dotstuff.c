/* Tests of the dot-stuffer: fixed vectors, every chunking and output cap, and TOP line limits. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pop3_dotstuff.h"

/* Caps from one byte up exercise the paths where a "." or CR is written ahead. */
/* check's assertions record their location on every call; in loops over
 * hundreds of thousands of feeds that dominates, so hot paths use this. */
#define EXPECT(cond)                                                                               \
    do {                                                                                           \
        if (!(cond))                                                                               \
            ck_abort_msg("%s:%d: %s", __FILE__, __LINE__, #cond);                                  \
    } while (0)

#define CAP_MIN  1
#define CAP_MAX  8
#define NO_LIMIT UINT64_MAX

struct bytes {
    char *p;
    size_t len, alloc;
};

static void bytes_add(struct bytes *b, const char *s, size_t len)
{
    if (b->len + len + 1 > b->alloc) {
        b->alloc = (b->len + len + 1) * 2;
        b->p = realloc(b->p, b->alloc);
        EXPECT(b->p != NULL);
    }
    memcpy(b->p + b->len, s, len);
    b->len += len;
    b->p[b->len] = '\0';
}

/* The rules of RFC 1939 section 3 written the slow, obvious way. */
static struct bytes reference(const char *in, size_t len, size_t head, uint64_t lines)
{
    struct bytes b = {0};
    bool line_start = true, last_cr = false;
    uint64_t seen = 0;

    bytes_add(&b, "", 0);
    for (size_t i = 0; i < len; i++) {
        if (lines != NO_LIMIT && i >= head && line_start && seen == lines)
            break;
        char c = in[i];
        if (line_start && c == '.')
            bytes_add(&b, ".", 1);
        if (c == '\n' && !last_cr)
            bytes_add(&b, "\r", 1);
        bytes_add(&b, &c, 1);
        line_start = c == '\n';
        last_cr = c == '\r';
        if (c == '\n' && i >= head)
            seen++;
    }
    if (!line_start)
        bytes_add(&b, last_cr ? "\n" : "\r\n", last_cr ? 1 : 2);
    bytes_add(&b, ".\r\n", 3);
    return b;
}

/* Feeds in[0..head) unlimited, then sets the line limit (unless NO_LIMIT) and
 * feeds the rest; chunks of `chunk` bytes, output `cap` bytes at a time. */
static struct bytes stuff(const char *in, size_t len, size_t head, uint64_t lines, size_t chunk,
                          size_t cap, uint64_t *in_total_r)
{
    struct pop3_dotstuff d;
    struct bytes b = {0};
    char *out = malloc(cap);
    char fin[POP3_DOTSTUFF_FINISH_MAX];
    size_t pos = 0;
    bool limit_set = false;

    EXPECT(out != NULL);
    bytes_add(&b, "", 0);
    pop3_dotstuff_init(&d);
    if (head == 0 && lines != NO_LIMIT) {
        pop3_dotstuff_limit_lines(&d, lines);
        limit_set = true;
    }
    while (pos < len && !pop3_dotstuff_is_done(&d)) {
        size_t end = pos + chunk < len ? pos + chunk : len;
        if (pos < head && end > head)
            end = head;
        while (pos < end && !pop3_dotstuff_is_done(&d)) {
            size_t used = 0;
            size_t n = pop3_dotstuff_feed(&d, in + pos, end - pos, &used, out, cap);
            EXPECT(n <= cap);
            EXPECT(used <= end - pos);
            /* Every call makes progress while there is room and input. */
            EXPECT(n > 0 || used > 0 || pop3_dotstuff_is_done(&d));
            bytes_add(&b, out, n);
            pos += used;
            /* Stuffing at most doubles the input; more means a runaway loop. */
            EXPECT(b.len <= 2 * pos + 2);
        }
        if (pos == head && lines != NO_LIMIT && !limit_set) {
            pop3_dotstuff_limit_lines(&d, lines);
            limit_set = true;
        }
    }
    /* Done: nothing more is consumed. */
    if (pos < len) {
        size_t used = 1;
        EXPECT(pop3_dotstuff_feed(&d, in + pos, len - pos, &used, out, cap) == 0);
        EXPECT(used == 0);
    }
    size_t f = pop3_dotstuff_finish(&d, fin);
    EXPECT(f <= POP3_DOTSTUFF_FINISH_MAX);
    bytes_add(&b, fin, f);
    *in_total_r = d.in_total;
    EXPECT(d.in_total == pos);
    free(out);
    return b;
}

static void check_all_ways(const char *in, size_t len, size_t head, uint64_t lines,
                           const char *expected, size_t expected_len)
{
    struct bytes ref = reference(in, len, head, lines);
    uint64_t total = 0, first_total = 0;

    /* The slow reference and the literal expectation agree first. */
    if (expected != NULL) {
        ck_assert_msg(ref.len == expected_len && memcmp(ref.p, expected, ref.len) == 0,
                      "reference gives '%s'", ref.p);
    }
    for (size_t chunk = 1; chunk <= len + 1; chunk++) {
        size_t caps[] = {1, 2, 3, 4, 5, 6, 7, 8, 64, 2 * len + 16};
        for (size_t c = 0; c < sizeof(caps) / sizeof(caps[0]); c++) {
            struct bytes got = stuff(in, len, head, lines, chunk, caps[c], &total);
            ck_assert_msg(got.len == ref.len && memcmp(got.p, ref.p, ref.len) == 0,
                          "chunk %zu cap %zu: got '%s' expected '%s'", chunk, caps[c], got.p,
                          ref.p);
            if (chunk == 1 && c == 0)
                first_total = total;
            ck_assert_uint_eq(total, first_total);
            free(got.p);
        }
    }
    free(ref.p);
}

#define CHECK(in, out) check_all_ways((in), sizeof(in) - 1, 0, NO_LIMIT, (out), sizeof(out) - 1)

START_TEST(test_vectors)
{
    CHECK("", ".\r\n");
    CHECK(".", "..\r\n.\r\n");
    CHECK(".\r\n", "..\r\n.\r\n");
    CHECK(".\r\n.\r\n.\r\n", "..\r\n..\r\n..\r\n.\r\n");
    CHECK("..\r\n", "...\r\n.\r\n");
    CHECK("a\r\n.\r\n..\r\nb.c\r\n", "a\r\n..\r\n...\r\nb.c\r\n.\r\n");
    CHECK("a\nb\n", "a\r\nb\r\n.\r\n");
    CHECK("\n\n.\n", "\r\n\r\n..\r\n.\r\n");
    CHECK("a\rb\r\n", "a\rb\r\n.\r\n");
    CHECK("a\r.b\r\n", "a\r.b\r\n.\r\n");
    CHECK("abc", "abc\r\n.\r\n");
    CHECK("abc\r", "abc\r\n.\r\n");
    CHECK(".\r", "..\r\n.\r\n");
    CHECK("\r", "\r\n.\r\n");
    CHECK("\r\r\n\r", "\r\r\n\r\n.\r\n");
    CHECK("x\r\n.", "x\r\n..\r\n.\r\n");
    CHECK("Subject: a\r\n\r\n.body\n..\r\nend", "Subject: a\r\n\r\n..body\r\n...\r\nend\r\n.\r\n");
    CHECK("a\0b\n", "a\0b\r\n.\r\n");
}
END_TEST

START_TEST(test_crlf_split_between_chunks)
{
    struct pop3_dotstuff d;
    char out[16];
    size_t used, n;

    pop3_dotstuff_init(&d);
    n = pop3_dotstuff_feed(&d, "ab\r", 3, &used, out, sizeof(out));
    ck_assert_uint_eq(used, 3);
    ck_assert_uint_eq(n, 3);
    ck_assert_mem_eq(out, "ab\r", n);
    /* The LF completes the CRLF: no second CR. Then the "." starts a line. */
    n = pop3_dotstuff_feed(&d, "\n.", 2, &used, out, sizeof(out));
    ck_assert_uint_eq(used, 2);
    ck_assert_uint_eq(n, 3);
    ck_assert_mem_eq(out, "\n..", 3);
    ck_assert_uint_eq(d.in_total, 5);
    n = pop3_dotstuff_finish(&d, out);
    ck_assert_uint_eq(n, 5);
    ck_assert_mem_eq(out, "\r\n.\r\n", 5);
}
END_TEST

START_TEST(test_one_byte_output)
{
    struct pop3_dotstuff d;
    char out[1];
    size_t used, n;

    /* With one byte of room the added "." goes out alone, the input "." waits. */
    pop3_dotstuff_init(&d);
    n = pop3_dotstuff_feed(&d, ".x", 2, &used, out, 1);
    ck_assert_uint_eq(n, 1);
    ck_assert_uint_eq(used, 0);
    ck_assert_int_eq(out[0], '.');
    n = pop3_dotstuff_feed(&d, ".x", 2, &used, out, 1);
    ck_assert_uint_eq(n, 1);
    ck_assert_uint_eq(used, 1);
    ck_assert_int_eq(out[0], '.');
    ck_assert_uint_eq(d.in_total, 1);
    /* A bare LF: the CR first, then the LF. */
    pop3_dotstuff_init(&d);
    n = pop3_dotstuff_feed(&d, "\n", 1, &used, out, 1);
    ck_assert_uint_eq(n, 1);
    ck_assert_uint_eq(used, 0);
    ck_assert_int_eq(out[0], '\r');
    n = pop3_dotstuff_feed(&d, "\n", 1, &used, out, 1);
    ck_assert_uint_eq(n, 1);
    ck_assert_uint_eq(used, 1);
    ck_assert_int_eq(out[0], '\n');
    /* No room at all: nothing happens. */
    n = pop3_dotstuff_feed(&d, "abc", 3, &used, out, 0);
    ck_assert_uint_eq(n, 0);
    ck_assert_uint_eq(used, 0);
}
END_TEST

START_TEST(test_top_limits)
{
    static const char msg[] = "From: a\r\nSubject: b\r\n\r\nline1\r\n.line2\nline3\r\n";
    size_t head = strlen("From: a\r\nSubject: b\r\n\r\n");
    size_t len = sizeof(msg) - 1;

    /* 0 body lines: only the header. */
    static const char top0[] = "From: a\r\nSubject: b\r\n\r\n.\r\n";
    check_all_ways(msg, len, head, 0, top0, sizeof(top0) - 1);
    static const char top1[] = "From: a\r\nSubject: b\r\n\r\nline1\r\n.\r\n";
    check_all_ways(msg, len, head, 1, top1, sizeof(top1) - 1);
    static const char top2[] = "From: a\r\nSubject: b\r\n\r\nline1\r\n..line2\r\n.\r\n";
    check_all_ways(msg, len, head, 2, top2, sizeof(top2) - 1);
    /* More lines than the body has: the whole message. */
    static const char all[] = "From: a\r\nSubject: b\r\n\r\nline1\r\n..line2\r\nline3\r\n.\r\n";
    check_all_ways(msg, len, head, 3, all, sizeof(all) - 1);
    check_all_ways(msg, len, head, 1000, all, sizeof(all) - 1);
    /* A body whose last line has no line end. */
    static const char open_msg[] = "H: x\r\n\r\nb1\nb2";
    static const char open_top[] = "H: x\r\n\r\nb1\r\nb2\r\n.\r\n";
    check_all_ways(open_msg, sizeof(open_msg) - 1, 8, 5, open_top, sizeof(open_top) - 1);
}
END_TEST

START_TEST(test_top_state)
{
    struct pop3_dotstuff d;
    char out[64];
    size_t used, n;
    const char *body = "one\r\ntwo\r\nthree\r\n";

    pop3_dotstuff_init(&d);
    n = pop3_dotstuff_feed(&d, "H: 1\r\n\r\n", 8, &used, out, sizeof(out));
    ck_assert_uint_eq(used, 8);
    ck_assert_uint_eq(n, 8);
    pop3_dotstuff_limit_lines(&d, 0);
    ck_assert(pop3_dotstuff_is_done(&d));
    ck_assert_uint_eq(pop3_dotstuff_feed(&d, body, strlen(body), &used, out, sizeof(out)), 0);
    ck_assert_uint_eq(used, 0);
    ck_assert_uint_eq(pop3_dotstuff_finish(&d, out), 3);
    ck_assert_mem_eq(out, ".\r\n", 3);
    ck_assert_uint_eq(d.in_total, 8);

    pop3_dotstuff_init(&d);
    pop3_dotstuff_feed(&d, "H: 1\r\n\r\n", 8, &used, out, sizeof(out));
    pop3_dotstuff_limit_lines(&d, 2);
    ck_assert(!pop3_dotstuff_is_done(&d));
    n = pop3_dotstuff_feed(&d, body, strlen(body), &used, out, sizeof(out));
    ck_assert_uint_eq(used, 10);
    ck_assert_uint_eq(n, 10);
    ck_assert_mem_eq(out, "one\r\ntwo\r\n", n);
    ck_assert(pop3_dotstuff_is_done(&d));
    ck_assert_uint_eq(d.in_total, 18);

    /* Limit 0 set in the middle of a line: the line is finished, not cut. */
    pop3_dotstuff_init(&d);
    pop3_dotstuff_feed(&d, "ab", 2, &used, out, sizeof(out));
    pop3_dotstuff_limit_lines(&d, 0);
    ck_assert(!pop3_dotstuff_is_done(&d));
    n = pop3_dotstuff_feed(&d, "c\nd\n", 4, &used, out, sizeof(out));
    ck_assert_uint_eq(used, 2);
    ck_assert_uint_eq(n, 3);
    ck_assert_mem_eq(out, "c\r\n", n);
    ck_assert(pop3_dotstuff_is_done(&d));
}
END_TEST

START_TEST(test_large_chunks)
{
    /* Long lines and many dots through a small output buffer: the stuffer must
     * keep up without a byte loop over the whole input per call. */
    size_t len = 4 * 1024 * 1024;
    char *in = malloc(len);
    uint64_t total;

    ck_assert_ptr_nonnull(in);
    for (size_t i = 0; i < len; i++)
        in[i] = (i % 1000 == 999) ? '\n' : (i % 1000 == 0 ? '.' : 'x');
    struct bytes ref = reference(in, len, 0, NO_LIMIT);
    struct bytes got = stuff(in, len, 0, NO_LIMIT, 65536, 4096, &total);
    ck_assert_uint_eq(got.len, ref.len);
    ck_assert(memcmp(got.p, ref.p, ref.len) == 0);
    ck_assert_uint_eq(total, len);
    free(got.p);
    /* No LF at all in a big chunk and a tiny output buffer. */
    memset(in, 'y', len);
    got = stuff(in, len, 0, NO_LIMIT, len, 4096, &total);
    ck_assert_uint_eq(got.len, len + 5);
    free(got.p);
    free(ref.p);
    free(in);
}
END_TEST

START_TEST(test_random_against_reference)
{
    /* Dense CR, LF and "." at every offset: the word-at-a-time search for LF meets
     * them at each position in a word, at chunk ends and at output ends. */
    static const char alphabet[] = "\r\n.\r\n.ab";
    char in[200];
    uint64_t total;
    unsigned seed = 12345;

    for (int round = 0; round < 2000; round++) {
        size_t len = (size_t)(rand_r(&seed) % sizeof(in)) + 1;
        for (size_t i = 0; i < len; i++)
            in[i] = alphabet[rand_r(&seed) % (sizeof(alphabet) - 1)];
        struct bytes ref = reference(in, len, 0, NO_LIMIT);
        size_t chunk = (size_t)(rand_r(&seed) % len) + 1;
        size_t cap = (size_t)(rand_r(&seed) % (2 * len + 8)) + 1;
        struct bytes got = stuff(in, len, 0, NO_LIMIT, chunk, cap, &total);
        ck_assert_msg(got.len == ref.len && memcmp(got.p, ref.p, ref.len) == 0,
                      "round %d: chunk %zu cap %zu", round, chunk, cap);
        ck_assert_uint_eq(total, len);
        free(got.p);
        free(ref.p);
    }
}
END_TEST

static Suite *pop3_dotstuff_suite(void)
{
    Suite *s = suite_create("pop3_dotstuff");
    TCase *tc = tcase_create("core");

    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_vectors);
    tcase_add_test(tc, test_crlf_split_between_chunks);
    tcase_add_test(tc, test_one_byte_output);
    tcase_add_test(tc, test_top_limits);
    tcase_add_test(tc, test_top_state);
    tcase_add_test(tc, test_large_chunks);
    tcase_add_test(tc, test_random_against_reference);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(pop3_dotstuff_suite());
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
