/* Tests of base64: RFC 4648 vectors, strict decoding, output caps and binary round trips. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "base64.h"

/* Longest input of the round-trip test. */
#define ROUND_TRIP_MAX 300

static const struct {
    const char *plain;
    const char *encoded;
} rfc4648[] = {
    {"", ""},
    {"f", "Zg=="},
    {"fo", "Zm8="},
    {"foo", "Zm9v"},
    {"foob", "Zm9vYg=="},
    {"fooba", "Zm9vYmE="},
    {"foobar", "Zm9vYmFy"},
};

START_TEST(rfc4648_vectors)
{
    for (size_t i = 0; i < sizeof(rfc4648) / sizeof(rfc4648[0]); i++) {
        const char *plain = rfc4648[i].plain, *enc = rfc4648[i].encoded;
        char out[32];

        ck_assert_int_eq(base64_encode(plain, strlen(plain), out, sizeof(out)), strlen(enc));
        ck_assert_str_eq(out, enc);
        ck_assert_int_eq(base64_decode(enc, strlen(enc), out, sizeof(out)), strlen(plain));
        ck_assert(memcmp(out, plain, strlen(plain)) == 0);
    }
}
END_TEST

START_TEST(sasl_plain)
{
    static const char plain[] = "\0bob\0secret";
    char enc[BASE64_ENCODED_SIZE(sizeof(plain) - 1)];
    char dec[sizeof(plain)];

    ck_assert_int_eq(base64_encode(plain, sizeof(plain) - 1, enc, sizeof(enc)), 16);
    ck_assert_str_eq(enc, "AGJvYgBzZWNyZXQ=");
    ck_assert_int_eq(base64_decode(enc, 16, dec, sizeof(dec)), sizeof(plain) - 1);
    ck_assert(memcmp(dec, plain, sizeof(plain) - 1) == 0);
}
END_TEST

START_TEST(strict_decoding)
{
    /* Wrong length, padding in the wrong place, characters outside the alphabet (CRLF,
     * space, the URL-safe "-" and "_", 8-bit), and non-zero bits under the padding. */
    static const char *const bad[] = {
        "Zg",       "Zg=",  "Zm9vY", "Z===", "====", "Zg==Zg==", "Zm=v",     "Zm9vYg=a",
        "Zm9v\r\n", "Zm 9", "Zm9-",  "Zm9_", "Zh==", "Zm9=",     "Zm9v====", "Zm9\xc3",
    };
    char out[16];

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        ck_assert_msg(base64_decode(bad[i], strlen(bad[i]), out, sizeof(out)) == -1, "accepted %s",
                      bad[i]);
    ck_assert_int_eq(base64_decode("Zg=\0", 4, out, sizeof(out)), -1);
    ck_assert_int_eq(base64_decode("\0\0\0\0", 4, out, sizeof(out)), -1);
}
END_TEST

START_TEST(caps)
{
    char out[BASE64_ENCODED_SIZE(6)];

    ck_assert_int_eq(sizeof(out), 9);
    ck_assert_int_eq(base64_encode("foobar", 6, out, sizeof(out)), 8);
    ck_assert_int_eq(base64_encode("foobar", 6, out, sizeof(out) - 1), -1);
    ck_assert_int_eq(base64_encode("", 0, out, 1), 0);
    ck_assert_str_eq(out, "");
    ck_assert_int_eq(base64_encode("", 0, out, 0), -1);
    ck_assert_int_eq(base64_encode("f", 1, out, 4), -1);
    ck_assert_int_eq(base64_encode("f", 1, out, 5), 4);

    ck_assert_int_eq(base64_decode("Zm9vYmFy", 8, out, 6), 6);
    ck_assert_int_eq(base64_decode("Zm9vYmFy", 8, out, 5), -1);
    ck_assert_int_eq(base64_decode("Zm9vYg==", 8, out, 4), 4);
    ck_assert_int_eq(base64_decode("Zm9vYg==", 8, out, 3), -1);
    ck_assert_int_eq(base64_decode("", 0, out, 0), 0);
    ck_assert_int_eq(base64_decode(NULL, 0, NULL, 0), 0);
}
END_TEST

START_TEST(round_trip)
{
    unsigned char in[ROUND_TRIP_MAX], dec[ROUND_TRIP_MAX];
    char enc[BASE64_ENCODED_SIZE(ROUND_TRIP_MAX)];

    for (size_t i = 0; i < ROUND_TRIP_MAX; i++)
        in[i] = (unsigned char)(255 - i * 37);
    for (size_t len = 0; len <= ROUND_TRIP_MAX; len++) {
        long n = base64_encode(in, len, enc, BASE64_ENCODED_SIZE(len));
        ck_assert_int_eq(n, BASE64_ENCODED_SIZE(len) - 1);
        ck_assert_int_eq(base64_decode(enc, (size_t)n, dec, len), len);
        ck_assert(len == 0 || memcmp(in, dec, len) == 0);
    }
}
END_TEST

static Suite *base64_suite(void)
{
    Suite *s = suite_create("base64");
    TCase *tc = tcase_create("core");

    tcase_add_test(tc, rfc4648_vectors);
    tcase_add_test(tc, sasl_plain);
    tcase_add_test(tc, strict_decoding);
    tcase_add_test(tc, caps);
    tcase_add_test(tc, round_trip);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(base64_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
