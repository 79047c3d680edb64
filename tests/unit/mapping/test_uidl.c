/* Tests of UIDL generation: Dovecot's default format byte for byte, templates, Message-ID hashes.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "uidl.h"

static void check_uidl(uint32_t uid, uint32_t uidvalidity, const char *expected)
{
    char out[UIDL_MAX + 1];

    memset(out, '#', sizeof(out));
    ck_assert_uint_eq(uidl_default(out, uid, uidvalidity), strlen(expected));
    ck_assert_str_eq(out, expected);
}

START_TEST(test_default_format)
{
    check_uidl(1, 0x5f5ede35, "000000015f5ede35");
    check_uidl(0, 0, "0000000000000000");
    check_uidl(UINT32_MAX, UINT32_MAX, "ffffffffffffffff");
    check_uidl(0xABCDEF12, 0x10, "abcdef1200000010");
}
END_TEST

START_TEST(test_rfc1939_charset)
{
    char out[UIDL_MAX + 1];
    size_t n = uidl_default(out, 0x7fa3b2c1, 0x0d0a2e20);

    /* Whatever the numbers, the id stays within 0x21..0x7E and 1..70 chars. */
    ck_assert_uint_ge(n, 1);
    ck_assert_uint_le(n, UIDL_MAX);
    for (size_t i = 0; i < n; i++)
        ck_assert(out[i] >= 0x21 && out[i] <= 0x7e);
}
END_TEST

/* A template expands to expected (or, with expected NULL, to nothing). */
static void check_fmt(const char *tmpl, uint32_t uid, uint32_t uv, const char *guid,
                      const char *expected)
{
    char out[UIDL_MAX + 1];
    size_t n;

    memset(out, '#', sizeof(out));
    n = uidl_template_format(tmpl, uid, uv, guid, out);
    if (expected == NULL) {
        ck_assert_msg(n == 0, "%s gave \"%s\"", tmpl, out);
        ck_assert_str_eq(out, "");
        return;
    }
    ck_assert_msg(n == strlen(expected), "%s: got \"%s\", want \"%s\"", tmpl, out, expected);
    ck_assert_str_eq(out, expected);
}

static void check_bad(const char *tmpl, const char *expected_error)
{
    const char *error = NULL;
    char out[UIDL_MAX + 1];

    ck_assert_msg(uidl_template_check(tmpl, &error) == -1, "%s accepted", tmpl);
    ck_assert_str_eq(error, expected_error);
    ck_assert_uint_eq(uidl_template_format(tmpl, 1, 2, "g", out), 0);
}

/* The default template and uidl_default() are the same function. */
START_TEST(test_template_default_agrees)
{
    static const char *const tmpls[] = {UIDL_TEMPLATE_DEFAULT, "%08Xu%08Xv", "%08xu%08xv"};
    const char *error;
    uint64_t x = 0x9e3779b97f4a7c15ULL;

    for (size_t t = 0; t < sizeof(tmpls) / sizeof(tmpls[0]); t++) {
        ck_assert_int_eq(uidl_template_check(tmpls[t], &error), 0);
        for (int i = 0; i < 20000; i++) {
            char a[UIDL_MAX + 1], b[UIDL_MAX + 1];
            uint32_t uid, uv;

            /* edge values first, then a xorshift sequence */
            if (i < 9) {
                static const uint32_t edge[] = {0,  1,      9,          10,        15,
                                                16, 0xffff, 0x7fffffff, UINT32_MAX};
                uid = edge[i];
                uv = edge[8 - i];
            } else {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                uid = (uint32_t)x >> (x % 29);
                uv = (uint32_t)(x >> 32);
            }
            ck_assert_uint_eq(uidl_default(a, uid, uv), 16);
            ck_assert_uint_eq(uidl_template_format(tmpls[t], uid, uv, NULL, b), 16);
            ck_assert_str_eq(a, b);
        }
    }
}
END_TEST

START_TEST(test_template_forms)
{
    const char *error;

    /* Decimal, as Dovecot's %u and %v. */
    check_fmt("%u", 1234, 99, NULL, "1234");
    check_fmt("%v.%u", 7, 1700000000, NULL, "1700000000.7"); /* Cyrus >= 2.1.4 */
    check_fmt("%v-%u", 7, 42, NULL, "42-7");                 /* Courier v2 */
    check_fmt("%u", UINT32_MAX, 0, NULL, "4294967295");
    /* Hex: X is lower case (Dovecot prints %llx); x is the same; U upper-cases. */
    check_fmt("%08Xv%08Xu", 0xab, 0x5f5ede35, NULL, "5f5ede35000000ab"); /* UW ipop3d */
    check_fmt("%08xv%u", 1, 0xABCDEF, NULL, "00abcdef1");
    check_fmt("%08XUu", 0xabcdef, 0, NULL, "00ABCDEF");
    check_fmt("%XUu%XLv", 0xbeef, 0xcafe, NULL, "BEEFcafe");
    check_fmt("%UXu", 0xbeef, 0, NULL, "beef"); /* modifiers apply in order: U, then X */
    check_fmt("%Xu", 0, 0, NULL, "0");
    check_fmt("%Xu", UINT32_MAX, 0, NULL, "ffffffff");
    /* Widths: zero padding never truncates; a plain width truncates, as Dovecot does. */
    check_fmt("%012u", 42, 0, NULL, "000000000042");
    check_fmt("%02u", 12345, 0, NULL, "12345");
    check_fmt("%2u", 12345, 0, NULL, "12");
    check_fmt("%8u", 42, 0, NULL, "42");
    check_fmt("%0u", 42, 0, NULL, "42");
    check_fmt("%070u", 1, 0, NULL,
              "0000000000000000000000000000000000000000000000000000000000000000000001");
    /* %g: the server's id, with case modifiers, truncation, and X for Gmail's numbers. */
    check_fmt("%g", 1, 2, "M5e0c0a7b4ec3b1a2", "M5e0c0a7b4ec3b1a2");
    check_fmt("%Lg", 1, 2, "ABCdef", "abcdef");
    check_fmt("%Ug", 1, 2, "ABCdef", "ABCDEF");
    check_fmt("%8g", 1, 2, "0123456789abcdef", "01234567");
    check_fmt("%Xg", 1, 2, "1278455344230334865", "11bdfc5cae0c8191");
    check_fmt("%016Xg", 1, 2, "255", "00000000000000ff");
    check_fmt("%Xg", 1, 2, "18446744073709551615", "ffffffffffffffff");
    check_fmt("gm-%g-%u", 3, 2, "abc", "gm-abc-3");
    /* %% and literals. */
    check_fmt("%%%u%%", 5, 0, NULL, "%5%");
    check_fmt("pop.%u", 5, 0, NULL, "pop.5");

    ck_assert(uidl_template_uses_guid("a%Ug"));
    ck_assert(!uidl_template_uses_guid("%08Xu%08Xv"));
    ck_assert(!uidl_template_uses_guid("%%g%u"));
    ck_assert_int_eq(uidl_template_check("%u", &error), 0);
    ck_assert_int_eq(uidl_template_check("%g", &error), 0);
    ck_assert_int_eq(uidl_template_check("%Xxu%XUXLUg", &error), 0);
}
END_TEST

START_TEST(test_template_bad)
{
    check_bad("", "empty template");
    check_bad("%", "'%' at the end of the template (write %% for a literal '%')");
    check_bad("%u%08X", "'%' at the end of the template (write %% for a literal '%')");
    check_bad("%q", "unknown variable (allowed: %u UID, %v UIDVALIDITY, %g server id, %%)");
    check_bad("%m", "unknown variable (allowed: %u UID, %v UIDVALIDITY, %g server id, %%)");
    check_bad("%f%u", "unknown variable (allowed: %u UID, %v UIDVALIDITY, %g server id, %%)");
    check_bad("%5%%u", "%% takes no width or modifiers");
    check_bad("%X%%u", "%% takes no width or modifiers");
    check_bad("%-5u", "negative widths are not supported (allowed: %u, %v, %g with an optional "
                      "width like %08Xu, and %%)");
    check_bad("%1.5u", "offsets (%N.Mu) are not supported: only a width like %08Xu or %8g");
    check_bad("%Mu", "this Dovecot modifier is not supported (allowed: X or x for hex, U and L "
                     "for case)");
    check_bad("%08XHu", "this Dovecot modifier is not supported (allowed: X or x for hex, U and "
                        "L for case)");
    check_bad("%{uid}", "long variable names are not supported: write Dovecot 2.4's "
                        "%{uid | hex(8)} as %08Xu (variables: %u, %v, %g, %%)");
    check_bad("%71u", "width over 70, the longest UIDL");
    check_bad("%099999999999999999999u", "width over 70, the longest UIDL");
    check_bad("a b%u", "a character outside 0x21..0x7E (space, control or non-ASCII) cannot be "
                       "part of a UIDL");
    check_bad("\xc3\xa9%u", "a character outside 0x21..0x7E (space, control or non-ASCII) "
                            "cannot be part of a UIDL");
    check_bad("%v", "the template needs %u or %g, or every message gets the same UIDL");
    check_bad("%%", "the template needs %u or %g, or every message gets the same UIDL");
    check_bad("%070u%v", "the template gives UIDLs longer than 70 characters");
    check_bad("%XXXXXXXXXXXu", "more than 10 modifiers on one variable");
}
END_TEST

/* A template that checks can still give no UIDL for one message: the caller falls back. */
START_TEST(test_template_invalid_results)
{
    char out[UIDL_MAX + 1];

    check_fmt("%g", 1, 2, "has space", NULL);
    check_fmt("%g", 1, 2, "tab\there", NULL);
    check_fmt("%g", 1, 2, "caf\xc3\xa9", NULL);
    check_fmt("%g", 1, 2, NULL, NULL);
    check_fmt("%g", 1, 2, "", NULL);
    check_fmt("%u-%g", 1, 2, NULL, NULL);
    check_fmt("%Xg", 1, 2, "not-a-number", NULL);
    check_fmt("%Xg", 1, 2, "18446744073709551616", NULL); /* 2^64 */
    check_fmt("%XXu", 10, 2, NULL, NULL);                 /* "a" is not decimal */
    check_fmt("%XXu", 9, 2, NULL, "9");
    /* Over 70 characters once the numbers are long. */
    check_fmt("%060u%v", 1, 4000000000u, NULL,
              "0000000000000000000000000000000000000000000000000000000000014000000000");
    check_fmt("%061u%v", 1, 4000000000u, NULL, NULL);
    {
        char g[200];
        memset(g, 'a', sizeof(g) - 1);
        g[sizeof(g) - 1] = '\0';
        check_fmt("%g", 1, 2, g, NULL);
        /* truncation brings a long id back within 70 */
        ck_assert_uint_eq(uidl_template_format("%70g", 1, 2, g, out), 70);
        ck_assert_uint_eq(uidl_template_format("x%70g", 1, 2, g, out), 0);
    }
    ck_assert_uint_eq(uidl_template_format("%q", 1, 2, NULL, out), 0);
}
END_TEST

START_TEST(test_is_valid)
{
    char s71[72];

    ck_assert(uidl_is_valid("a", 1));
    ck_assert(uidl_is_valid("!~", 2));
    ck_assert(!uidl_is_valid("", 0));
    ck_assert(!uidl_is_valid("a b", 3));
    ck_assert(!uidl_is_valid("a\x7f", 2));
    ck_assert(!uidl_is_valid("a\0", 2));
    memset(s71, 'x', sizeof(s71));
    ck_assert(uidl_is_valid(s71, 70));
    ck_assert(!uidl_is_valid(s71, 71));
}
END_TEST

START_TEST(test_msgid_hash)
{
    /* FNV-1a 64 reference vectors */
    ck_assert_uint_eq(uidl_fnv1a(UIDL_FNV_OFFSET, "", 0), 0xcbf29ce484222325ULL);
    ck_assert_uint_eq(uidl_fnv1a(UIDL_FNV_OFFSET, "a", 1), 0xaf63dc4c8601ec8cULL);
    ck_assert_uint_eq(uidl_fnv1a(UIDL_FNV_OFFSET, "foobar", 6), 0x85944171f73967e8ULL);

    ck_assert_uint_eq(uidl_msgid_hash("<a@b>", 5), uidl_fnv1a(UIDL_FNV_OFFSET, "<a@b>", 5));
    ck_assert_uint_eq(uidl_msgid_hash(" \t<a@b>\r\n", 9), uidl_msgid_hash("<a@b>", 5));
    ck_assert_uint_ne(uidl_msgid_hash("<A@b>", 5), uidl_msgid_hash("<a@b>", 5));
    ck_assert_uint_ne(uidl_msgid_hash("<a @b>", 6), uidl_msgid_hash("<a@b>", 5));
    ck_assert_uint_eq(uidl_msgid_hash("", 0), 0);
    ck_assert_uint_eq(uidl_msgid_hash(" \r\n\t", 4), 0);
    ck_assert_uint_ne(uidl_msgid_hash("x", 1), 0);
}
END_TEST

static Suite *uidl_suite(void)
{
    Suite *s = suite_create("uidl");
    TCase *tc = tcase_create("core");

    tcase_add_test(tc, test_default_format);
    tcase_add_test(tc, test_rfc1939_charset);
    tcase_add_test(tc, test_template_default_agrees);
    tcase_add_test(tc, test_template_forms);
    tcase_add_test(tc, test_template_bad);
    tcase_add_test(tc, test_template_invalid_results);
    tcase_add_test(tc, test_is_valid);
    tcase_add_test(tc, test_msgid_hash);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(uidl_suite());
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
