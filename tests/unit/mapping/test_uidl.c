/* Tests of UIDL generation: Dovecot's default format, byte for byte. */
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

static Suite *uidl_suite(void)
{
    Suite *s = suite_create("uidl");
    TCase *tc = tcase_create("core");

    tcase_add_test(tc, test_default_format);
    tcase_add_test(tc, test_rfc1939_charset);
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
