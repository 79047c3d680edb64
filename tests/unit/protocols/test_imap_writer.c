/* Tests of the IMAP command writer: exact wire bytes, quoting versus literals, UID sets. */
#include <check.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "imap_writer.h"

/* check writes every passing ck_assert's location to a file; the big-set loops report
 * only failures. */
#define REQUIRE(cond)                                                                              \
    do {                                                                                           \
        if (!(cond))                                                                               \
            ck_abort_msg("%s:%d: %s", __FILE__, __LINE__, #cond);                                  \
    } while (0)
/* The huge UID set split over many commands. */
#define BIG_SET_SIZE 100000

/* Builds "<tag> LOGIN <user> <pass>" and checks the exact bytes and sync points. */
static void check_login(bool literal_plus, const char *pass, size_t pass_len, const char *want,
                        size_t want_len, unsigned want_nsync)
{
    struct imap_cmd c;
    const char *error = NULL;

    imap_cmd_begin(&c, "L1", "LOGIN", literal_plus);
    imap_cmd_string(&c, "bob", 3);
    imap_cmd_string(&c, pass, pass_len);
    ck_assert_int_eq(imap_cmd_end(&c, &error), 0);
    ck_assert_ptr_null(error);
    ck_assert_msg(c.len == want_len && memcmp(c.buf, want, want_len) == 0, "got [%.*s]", (int)c.len,
                  c.buf);
    ck_assert_uint_eq(c.nsync, want_nsync);
    for (unsigned i = 0; i < c.nsync; i++)
        ck_assert(c.sync[i] >= 3 && memcmp(c.buf + c.sync[i] - 3, "}\r\n", 3) == 0);
}

#define CHECK_LOGIN(plus, pass, want, nsync)                                                       \
    check_login((plus), (pass), sizeof(pass) - 1, (want), sizeof(want) - 1, (nsync))

START_TEST(quoted_strings)
{
    CHECK_LOGIN(false, "secret", "L1 LOGIN \"bob\" \"secret\"\r\n", 0);
    CHECK_LOGIN(false, "p\"w\\d", "L1 LOGIN \"bob\" \"p\\\"w\\\\d\"\r\n", 0);
    CHECK_LOGIN(false, "\"", "L1 LOGIN \"bob\" \"\\\"\"\r\n", 0);
    CHECK_LOGIN(false, "\\\\", "L1 LOGIN \"bob\" \"\\\\\\\\\"\r\n", 0);
    /* Looks like a literal or an injected command, but is only text inside quotes. */
    CHECK_LOGIN(false, "{5}", "L1 LOGIN \"bob\" \"{5}\"\r\n", 0);
    CHECK_LOGIN(false, "a b) X1 LOGOUT", "L1 LOGIN \"bob\" \"a b) X1 LOGOUT\"\r\n", 0);
    CHECK_LOGIN(false, " ~!#$%&'()*+,-./:;<=>?@[]^_`{|}", /* all printable specials */
                "L1 LOGIN \"bob\" \" ~!#$%&'()*+,-./:;<=>?@[]^_`{|}\"\r\n", 0);
    CHECK_LOGIN(false, "", "L1 LOGIN \"bob\" \"\"\r\n", 0);
}
END_TEST

START_TEST(literal_strings)
{
    /* 8-bit UTF-8: "pässword" is 9 bytes. */
    CHECK_LOGIN(false, "p\xc3\xa4ssword", "L1 LOGIN \"bob\" {9}\r\np\xc3\xa4ssword\r\n", 1);
    CHECK_LOGIN(true, "p\xc3\xa4ssword", "L1 LOGIN \"bob\" {9+}\r\np\xc3\xa4ssword\r\n", 0);
    /* CR and LF would end the command: they travel inside a literal. */
    CHECK_LOGIN(false, "a\r\nX1 LOGOUT", "L1 LOGIN \"bob\" {12}\r\na\r\nX1 LOGOUT\r\n", 1);
    CHECK_LOGIN(true, "\n", "L1 LOGIN \"bob\" {1+}\r\n\n\r\n", 0);
    CHECK_LOGIN(false, "tab\there", "L1 LOGIN \"bob\" {8}\r\ntab\there\r\n", 1);
    CHECK_LOGIN(false, "del\x7f", "L1 LOGIN \"bob\" {4}\r\ndel\x7f\r\n", 1);
    /* A literal carries quotes and backslashes as they are. */
    CHECK_LOGIN(false, "\"\\\xff", "L1 LOGIN \"bob\" {3}\r\n\"\\\xff\r\n", 1);
}
END_TEST

START_TEST(sync_points)
{
    struct imap_cmd c;
    const char *error = NULL;
    static const char want[] = "A7 LOGIN {2}\r\n\xc3\xa9 {1}\r\n\r\r\n";

    imap_cmd_begin(&c, "A7", "LOGIN", false);
    imap_cmd_string(&c, "\xc3\xa9", 2);
    imap_cmd_string(&c, "\r", 1);
    ck_assert_int_eq(imap_cmd_end(&c, &error), 0);
    ck_assert_uint_eq(c.len, sizeof(want) - 1);
    ck_assert(memcmp(c.buf, want, c.len) == 0);
    ck_assert_uint_eq(c.nsync, 2);
    ck_assert_uint_eq(c.sync[0], strlen("A7 LOGIN {2}\r\n"));
    ck_assert_uint_eq(c.sync[1], strlen("A7 LOGIN {2}\r\n\xc3\xa9 {1}\r\n"));
}
END_TEST

static void expect_failure(struct imap_cmd *c, const char *want)
{
    const char *error = NULL;

    ck_assert_int_eq(imap_cmd_end(c, &error), -1);
    ck_assert(c->failed);
    ck_assert_str_eq(error, want);
}

START_TEST(failures)
{
    struct imap_cmd c;

    imap_cmd_begin(&c, "L1", "LOGIN", false);
    imap_cmd_string(&c, "bob", 3);
    imap_cmd_string(&c, "se\0cret", 7);
    expect_failure(&c, "string contains NUL");

    /* The first failure is the one reported. */
    imap_cmd_begin(&c, "L1", "LOGIN", true);
    imap_cmd_string(&c, "\0", 1);
    imap_cmd_raw(&c, "x\r\n");
    expect_failure(&c, "string contains NUL");

    imap_cmd_begin(&c, "L2", "SELECT", false);
    imap_cmd_raw(&c, "INBOX\r\nL3 DELETE INBOX");
    expect_failure(&c, "raw command text contains CR or LF");

    imap_cmd_begin(&c, "L2\n", "NOOP", false);
    expect_failure(&c, "raw command text contains CR or LF");

    imap_cmd_begin(&c, "L4", "X", false);
    for (int i = 0; i <= IMAP_CMD_SYNC_MAX; i++)
        imap_cmd_string(&c, "\xff", 1);
    expect_failure(&c, "too many synchronizing literals in one command");

    /* LITERAL+ needs no sync points, so any number of literals fit. */
    const char *error = NULL;
    imap_cmd_begin(&c, "L4", "X", true);
    for (int i = 0; i <= IMAP_CMD_SYNC_MAX; i++)
        imap_cmd_string(&c, "\xff", 1);
    ck_assert_int_eq(imap_cmd_end(&c, &error), 0);

    /* Reusing a failed command starts afresh. */
    imap_cmd_begin(&c, "L5", "NOOP", false);
    ck_assert_int_eq(imap_cmd_end(&c, &error), 0);
    ck_assert(!c.failed);
    ck_assert_uint_eq(c.len, 9);
}
END_TEST

START_TEST(length_limit)
{
    struct imap_cmd c;
    const char *error = NULL;
    /* "A AUTHENTICATE PLAIN " + token + CRLF filling the buffer exactly. */
    size_t room = IMAP_CMD_MAX - strlen("A AUTHENTICATE PLAIN") - 1 - 2;
    char *token = malloc(room + 2);

    ck_assert_ptr_nonnull(token);
    memset(token, 'x', room + 1);
    token[room] = '\0';
    imap_cmd_begin(&c, "A", "AUTHENTICATE PLAIN", false);
    imap_cmd_raw(&c, token);
    ck_assert_int_eq(imap_cmd_end(&c, &error), 0);
    ck_assert_uint_eq(c.len, IMAP_CMD_MAX);
    ck_assert(memcmp(c.buf + IMAP_CMD_MAX - 2, "\r\n", 2) == 0);

    token[room] = 'x';
    token[room + 1] = '\0';
    imap_cmd_begin(&c, "A", "AUTHENTICATE PLAIN", false);
    imap_cmd_raw(&c, token);
    expect_failure(&c, "command longer than IMAP_CMD_MAX");

    /* A quoted string's escapes count too: "A LOGIN " + 2 quotes + CRLF leave room for
     * (IMAP_CMD_MAX - 12) / 2 escaped quotes. */
    size_t quotes = (IMAP_CMD_MAX - 12) / 2;
    memset(token, '"', quotes + 1);
    imap_cmd_begin(&c, "A", "LOGIN", false);
    imap_cmd_string(&c, token, quotes);
    ck_assert_int_eq(imap_cmd_end(&c, &error), 0);
    ck_assert_uint_eq(c.len, IMAP_CMD_MAX);
    imap_cmd_begin(&c, "A", "LOGIN", false);
    imap_cmd_string(&c, token, quotes + 1);
    expect_failure(&c, "command longer than IMAP_CMD_MAX");
    free(token);
}
END_TEST

static void check_set(const uint32_t *uids, size_t n, size_t cap, const char *want,
                      size_t want_used)
{
    char out[64];
    size_t used = 12345;

    ck_assert_uint_le(cap, sizeof(out));
    size_t len = imap_writer_uid_set(out, cap, uids, n, &used);
    ck_assert_str_eq(out, want);
    ck_assert_uint_eq(len, strlen(want));
    ck_assert_uint_eq(used, want_used);
}

START_TEST(uid_sets)
{
    static const uint32_t a[] = {1, 2, 3, 5, 7, 8, 9};
    static const uint32_t top[] = {4294967293u, 4294967294u, 4294967295u};
    static const uint32_t one[] = {4294967295u};
    static const uint32_t wide[] = {9, 10, 11, 12, 200};

    check_set(a, 7, 64, "1:3,5,7:9", 7);
    check_set(a, 0, 64, "", 0);
    check_set(a, 1, 64, "1", 1);
    check_set(a, 2, 64, "1:2", 2);
    check_set(top, 3, 64, "4294967293:4294967295", 3);
    check_set(top, 3, 22, "4294967293:4294967295", 3);
    /* Too small for the range: the first UID alone. */
    check_set(top, 3, 21, "4294967293", 1);
    check_set(one, 1, 11, "4294967295", 1);
    check_set(one, 1, 10, "", 0);
    /* Cut short: "1:3,5,7" fits 8 bytes; a range cut ends where fewer digits do. */
    check_set(a, 7, 8, "1:3,5,7", 5);
    check_set(a, 7, 9, "1:3,5,7", 5);
    check_set(a, 7, 10, "1:3,5,7:9", 7);
    check_set(wide, 5, 5, "9:12", 4);
    check_set(wide, 5, 4, "9", 1);
    check_set(wide, 5, 7, "9:12", 4);
    check_set(wide, 5, 8, "9:12", 4);
    check_set(wide, 5, 9, "9:12,200", 5);
    check_set(wide + 1, 4, 5, "10", 1);
    check_set(wide + 1, 4, 6, "10:12", 3);

    /* A range cut short ends at the largest UID with as many digits as fit. */
    uint32_t run[146];
    for (uint32_t i = 0; i < 146; i++)
        run[i] = 5 + i;
    check_set(run, 146, 5, "5:99", 95);
    check_set(run, 146, 6, "5:150", 146);
    check_set(run + 95, 51, 6, "100", 1);
    check_set(run + 95, 51, 8, "100:150", 51);

    size_t used = 1;
    char out[1];
    ck_assert_uint_eq(imap_writer_uid_set(out, 0, a, 7, &used), 0);
    ck_assert_uint_eq(used, 0);
    ck_assert_uint_eq(imap_writer_uid_set(out, 1, a, 7, &used), 0);
    ck_assert_uint_eq(used, 0);
    ck_assert_str_eq(out, "");
}
END_TEST

/* Parses "a:b,c" back, checking that it covers exactly uids[0..used) in order. */
static void check_cover(const char *set, const uint32_t *uids, size_t used)
{
    size_t k = 0;
    const char *s = set;

    while (*s != '\0') {
        char *end;
        unsigned long long first = strtoull(s, &end, 10), last = first;
        if (*end == ':')
            last = strtoull(end + 1, &end, 10);
        REQUIRE(first <= last);
        for (unsigned long long u = first; u <= last; u++, k++) {
            REQUIRE(k < used);
            REQUIRE(uids[k] == u);
        }
        REQUIRE(*end == ',' || *end == '\0');
        s = *end == ',' ? end + 1 : end;
    }
    ck_assert_uint_eq(k, used);
}

START_TEST(big_sets)
{
    static const size_t caps[] = {11, 12, 22, 40, 1000, 8192};
    uint32_t *uids = malloc(BIG_SET_SIZE * sizeof(*uids));
    char *out = malloc(8192);
    uint64_t u = 1;
    unsigned seed = 12345;

    ck_assert(uids != NULL && out != NULL);
    /* Runs and gaps of varied length: the low half counts up from 1, the high half down
     * from the largest UID, so digit counts from 1 to 10 all occur. */
    uint64_t down = UINT32_MAX;
    for (size_t i = 0; i < BIG_SET_SIZE / 2; i++) {
        size_t hi = BIG_SET_SIZE - 1 - i;
        seed = seed * 1103515245u + 12345u;
        uint64_t step = (seed >> 16) % 4 == 0 ? 1 + (seed >> 20) % 1000 : 1;
        uids[i] = (uint32_t)u;
        uids[hi] = (uint32_t)down;
        u += step;
        down -= step;
    }
    ck_assert_uint_eq(uids[BIG_SET_SIZE - 1], 4294967295u);
    for (size_t c = 0; c < sizeof(caps) / sizeof(caps[0]); c++) {
        size_t done = 0, calls = 0;
        while (done < BIG_SET_SIZE) {
            size_t used = 0;
            size_t len = imap_writer_uid_set(out, caps[c], uids + done, BIG_SET_SIZE - done, &used);
            REQUIRE(used > 0);
            REQUIRE(len < caps[c]);
            REQUIRE(len == strlen(out));
            check_cover(out, uids + done, used);
            done += used;
            calls++;
        }
        ck_assert_uint_eq(done, BIG_SET_SIZE);
        ck_assert_uint_gt(calls, 1);
    }
    free(uids);
    free(out);
}
END_TEST

static Suite *imap_writer_suite(void)
{
    Suite *s = suite_create("imap_writer");
    TCase *tc = tcase_create("core");

    tcase_add_test(tc, quoted_strings);
    tcase_add_test(tc, literal_strings);
    tcase_add_test(tc, sync_points);
    tcase_add_test(tc, failures);
    tcase_add_test(tc, length_limit);
    tcase_add_test(tc, uid_sets);
    tcase_add_test(tc, big_sets);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(imap_writer_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
