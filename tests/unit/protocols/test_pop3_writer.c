/* Tests of the POP3 reply writer: status lines, truncation, CAPA order and listing lines. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "pop3_writer.h"

#define BIG 4096

static void check_out(const char *out, size_t len, const char *expected)
{
    ck_assert_msg(len == strlen(expected) && memcmp(out, expected, len) == 0,
                  "got '%.*s' (%zu), expected '%s'", (int)len, out, len, expected);
}

START_TEST(test_status)
{
    char out[BIG];

    check_out(out, pop3_writer_status(out, sizeof(out), true, NULL, NULL), "+OK\r\n");
    check_out(out, pop3_writer_status(out, sizeof(out), true, NULL, ""), "+OK\r\n");
    check_out(out, pop3_writer_status(out, sizeof(out), true, NULL, "2 320"), "+OK 2 320\r\n");
    check_out(out, pop3_writer_status(out, sizeof(out), false, NULL, "no such message"),
              "-ERR no such message\r\n");
    check_out(out, pop3_writer_status(out, sizeof(out), false, "AUTH", "bad credentials"),
              "-ERR [AUTH] bad credentials\r\n");
    check_out(out, pop3_writer_status(out, sizeof(out), false, "SYS/TEMP", NULL),
              "-ERR [SYS/TEMP]\r\n");
    check_out(out, pop3_writer_status(out, sizeof(out), false, "", "x"), "-ERR x\r\n");
}
END_TEST

START_TEST(test_status_framing)
{
    char out[BIG];

    /* A server message cannot smuggle a second reply line. */
    check_out(out, pop3_writer_status(out, sizeof(out), false, "IN\r\nUSE", "a\r\n+OK b\rc\n"),
              "-ERR [IN  USE] a  +OK b c \r\n");
}
END_TEST

START_TEST(test_status_truncation)
{
    char out[BIG];
    char text[1000];
    size_t n;

    memset(text, 'x', sizeof(text) - 1);
    text[sizeof(text) - 1] = '\0';
    n = pop3_writer_status(out, sizeof(out), false, "SYS/TEMP", text);
    ck_assert_uint_eq(n, POP3_REPLY_MAX);
    ck_assert_mem_eq(out, "-ERR [SYS/TEMP] xxx", 19);
    ck_assert_mem_eq(out + n - 3, "x\r\n", 3);

    /* Exactly at the limit, nothing is cut; one more and one byte goes. */
    text[POP3_REPLY_MAX - 6] = '\0';
    n = pop3_writer_status(out, sizeof(out), true, NULL, text);
    ck_assert_uint_eq(n, POP3_REPLY_MAX);
    ck_assert_mem_eq(out + n - 3, "x\r\n", 3);
    text[POP3_REPLY_MAX - 6] = 'x';
    text[POP3_REPLY_MAX - 5] = '\0';
    n = pop3_writer_status(out, sizeof(out), true, NULL, text);
    ck_assert_uint_eq(n, POP3_REPLY_MAX);

    /* A small cap cuts at the cap, CRLF still intact. */
    n = pop3_writer_status(out, 10, true, NULL, "hello world");
    check_out(out, n, "+OK hell\r\n");
    check_out(out, pop3_writer_status(out, 5, true, NULL, "hello"), "+OK\r\n");
    ck_assert_uint_eq(pop3_writer_status(out, 4, true, NULL, "hello"), 0);
    ck_assert_uint_eq(pop3_writer_status(out, 5, false, NULL, "x"), 0);
    /* A code that does not fit whole is left out rather than cut. */
    check_out(out, pop3_writer_status(out, 9, false, "AUTH", "x"), "-ERR x\r\n");
    check_out(out, pop3_writer_status(out, 13, false, "AUTH", "xyz"), "-ERR [AUTH]\r\n");
}
END_TEST

START_TEST(test_capa)
{
    char out[BIG];
    struct pop3_capa all = {
        .top = true,
        .uidl = true,
        .user = true,
        .resp_codes = true,
        .auth_resp_code = true,
        .pipelining = true,
        .stls = true,
        .sasl = "PLAIN LOGIN",
        .login_delay = "900",
        .expire = "NEVER",
        .implementation = "popgate",
    };
    struct pop3_capa none = {0};
    struct pop3_capa some = {.uidl = true, .stls = true, .sasl = "", .expire = "31 USER"};
    size_t n;

    check_out(out, pop3_writer_capa(out, sizeof(out), &all),
              "+OK Capability list follows\r\nTOP\r\nUIDL\r\nUSER\r\nRESP-CODES\r\n"
              "AUTH-RESP-CODE\r\nPIPELINING\r\nSTLS\r\nSASL PLAIN LOGIN\r\nLOGIN-DELAY 900\r\n"
              "EXPIRE NEVER\r\nIMPLEMENTATION popgate\r\n.\r\n");
    check_out(out, pop3_writer_capa(out, sizeof(out), &none),
              "+OK Capability list follows\r\n.\r\n");
    /* An empty SASL list would announce nothing; it is left out. */
    check_out(out, pop3_writer_capa(out, sizeof(out), &some),
              "+OK Capability list follows\r\nUIDL\r\nSTLS\r\nEXPIRE 31 USER\r\n.\r\n");

    n = pop3_writer_capa(out, sizeof(out), &all);
    ck_assert_uint_eq(pop3_writer_capa(out, n, &all), n);
    ck_assert_uint_eq(pop3_writer_capa(out, n - 1, &all), 0);
    ck_assert_uint_eq(pop3_writer_capa(out, 0, &all), 0);

    struct pop3_capa evil = {.implementation = "x\r\n.\r\nUSER"};
    check_out(out, pop3_writer_capa(out, sizeof(out), &evil),
              "+OK Capability list follows\r\nIMPLEMENTATION x  .  USER\r\n.\r\n");
}
END_TEST

START_TEST(test_list_uidl_lines)
{
    char out[BIG];
    size_t n;

    check_out(out, pop3_writer_list_line(out, sizeof(out), 1, 120), "1 120\r\n");
    check_out(out, pop3_writer_list_line(out, sizeof(out), 0, 0), "0 0\r\n");
    check_out(out, pop3_writer_list_line(out, sizeof(out), UINT32_MAX, UINT64_MAX),
              "4294967295 18446744073709551615\r\n");
    n = strlen("12 3456\r\n");
    ck_assert_uint_eq(pop3_writer_list_line(out, n, 12, 3456), n);
    ck_assert_uint_eq(pop3_writer_list_line(out, n - 1, 12, 3456), 0);

    check_out(out, pop3_writer_uidl_line(out, sizeof(out), 3, "000000015f5ede35"),
              "3 000000015f5ede35\r\n");
    n = strlen("3 abc\r\n");
    ck_assert_uint_eq(pop3_writer_uidl_line(out, n, 3, "abc"), n);
    ck_assert_uint_eq(pop3_writer_uidl_line(out, n - 1, 3, "abc"), 0);
    ck_assert_uint_eq(pop3_writer_uidl_line(out, 0, 3, "abc"), 0);
}
END_TEST

static Suite *pop3_writer_suite(void)
{
    Suite *s = suite_create("pop3_writer");
    TCase *tc = tcase_create("core");

    tcase_add_test(tc, test_status);
    tcase_add_test(tc, test_status_framing);
    tcase_add_test(tc, test_status_truncation);
    tcase_add_test(tc, test_capa);
    tcase_add_test(tc, test_list_uidl_lines);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(pop3_writer_suite());
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
