/* Tests of the legacy UIDL import: both formats, every error with its line, idempotent merges. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "legacy_import.h"
#include "uidl.h"

static struct legacy_import *parse_ok(const char *text, enum legacy_import_format fmt)
{
    struct legacy_import *list = NULL;
    const char *error = NULL;
    size_t line = 99;

    ck_assert_msg(legacy_import_parse(text, strlen(text), fmt, &list, &error, &line) == 0,
                  "line %zu: %s", line, error);
    ck_assert_ptr_nonnull(list);
    return list;
}

static void parse_bad(const char *text, size_t len, enum legacy_import_format fmt,
                      size_t expected_line, const char *expected_error)
{
    struct legacy_import *list = NULL;
    const char *error = NULL;
    size_t line = 99;

    ck_assert_msg(legacy_import_parse(text, len, fmt, &list, &error, &line) == -1, "accepted: %s",
                  text);
    ck_assert_ptr_null(list);
    ck_assert_str_eq(error, expected_error);
    ck_assert_msg(line == expected_line, "%s: line %zu, want %zu", error, line, expected_line);
}

static void bad_text(const char *text, size_t expected_line, const char *expected_error)
{
    parse_bad(text, strlen(text), LEGACY_IMPORT_TEXT, expected_line, expected_error);
}

static void bad_json(const char *text, size_t expected_line, const char *expected_error)
{
    parse_bad(text, strlen(text), LEGACY_IMPORT_JSON, expected_line, expected_error);
}

static uint64_t h(const char *s)
{
    return uidl_msgid_hash(s, strlen(s));
}

START_TEST(test_text)
{
    struct legacy_import *l = parse_ok("# exported from the old server\r\n"
                                       "\r\n"
                                       "1 AAAA0001 2048 <20240101.1234@example.com>\r\n"
                                       "  3\tAAAA0003   512\r\n"
                                       "4 UID-4 0   <x@y>  \n"
                                       "10 !~ 9223372036854775807",
                                       LEGACY_IMPORT_AUTO);

    ck_assert_ptr_null(l->user);
    ck_assert_uint_eq(l->nentries, 4);
    ck_assert_str_eq(l->entries[0].uidl, "AAAA0001");
    ck_assert_uint_eq(l->entries[0].size, 2048);
    ck_assert_uint_eq(l->entries[0].msgid_hash, h("<20240101.1234@example.com>"));
    ck_assert_str_eq(l->entries[1].uidl, "AAAA0003");
    ck_assert_uint_eq(l->entries[1].size, 512);
    ck_assert_uint_eq(l->entries[1].msgid_hash, 0);
    ck_assert_uint_eq(l->entries[2].size, 0);
    ck_assert_uint_eq(l->entries[2].msgid_hash, h("<x@y>"));
    ck_assert_str_eq(l->entries[3].uidl, "!~");
    ck_assert_uint_eq(l->entries[3].size, INT64_MAX);
    for (size_t i = 0; i < l->nentries; i++)
        ck_assert(!l->entries[i].matched);
    legacy_import_free(&l);
    ck_assert_ptr_null(l);

    l = parse_ok("", LEGACY_IMPORT_AUTO);
    ck_assert_uint_eq(l->nentries, 0);
    legacy_import_free(&l);
    legacy_import_free(&l); /* NULL is fine */
}
END_TEST

START_TEST(test_text_errors)
{
    char long_uidl[128];

    bad_text("x A 1", 1, "expected a message number (line format: N UIDL SIZE [MESSAGE-ID])");
    bad_text("1x A 1", 1, "expected a message number (line format: N UIDL SIZE [MESSAGE-ID])");
    bad_text("-1 A 1", 1, "expected a message number (line format: N UIDL SIZE [MESSAGE-ID])");
    bad_text("1 A 1\n\n0 B 1", 3, "message number 0 (POP3 numbers start at 1)");
    bad_text("4294967296 A 1", 1, "message number out of range");
    bad_text("99999999999999999999999 A 1", 1, "message number out of range");
    bad_text("2 A 1\n2 B 1", 2, "message numbers must increase (the old server's order)");
    bad_text("2 A 1\n1 B 1", 2, "message numbers must increase (the old server's order)");
    bad_text("1", 1, "missing UIDL (line format: N UIDL SIZE [MESSAGE-ID])");
    bad_text("1  \t ", 1, "missing UIDL (line format: N UIDL SIZE [MESSAGE-ID])");
    bad_text("1 A", 1, "missing size (line format: N UIDL SIZE [MESSAGE-ID])");
    bad_text("1 A \r\n", 1, "missing size (line format: N UIDL SIZE [MESSAGE-ID])");
    bad_text("1 A 12x", 1, "size must be a decimal number of octets");
    bad_text("1 A -5", 1, "size must be a decimal number of octets");
    bad_text("1 A 9223372036854775808", 1, "size out of range");
    bad_text("1 A 18446744073709551616", 1, "size out of range");
    snprintf(long_uidl, sizeof(long_uidl), "1 %071d 5", 0);
    bad_text(long_uidl, 1, "UIDL longer than 70 characters");
    bad_text("1 A\x01 5", 1, "UIDL has a character outside 0x21..0x7E");
    bad_text("1 caf\xc3\xa9 5", 1, "UIDL has a character outside 0x21..0x7E");
    bad_text("1 A\r5 6", 1, "UIDL has a character outside 0x21..0x7E");
    parse_bad("1 A 1\n2 B\0 1\n", 13, LEGACY_IMPORT_TEXT, 2, "NUL byte");
    bad_text("1 A 1\n2 B 2\n# x\n3 A 3\n4 B 4", 4,
             "duplicate UIDL (each message of the old server has its own)");
}
END_TEST

START_TEST(test_json)
{
    struct legacy_import *l = parse_ok(
        "  {\"user\": \"bob\\u00e9\",\n"
        "   \"x-exported-by\": {\"tool\": [1, 2.5e3, -0.5, true, false, null, \"s\"]},\n"
        "   \"messages\": [\n"
        "     {\"uidl\": \"AAAA0001\", \"size\": 2048,\n"
        "      \"message_id\": \" <20240101.1234@example.com>\\r\\n\"},\n"
        "     {\"number\": 3, \"size\": 0, \"uidl\": \"A\\\"\\\\\\/b\", \"message_id\": null},\n"
        "     {\"uidl\": \"x\", \"size\": 9223372036854775807, \"x-date\": \"Mon\",\n"
        "      \"message_id\": \"<\\ud83d\\ude00@x>\"}\n"
        "   ]}\n",
        LEGACY_IMPORT_AUTO);

    ck_assert_str_eq(l->user, "bob\xc3\xa9");
    ck_assert_uint_eq(l->nentries, 3);
    ck_assert_str_eq(l->entries[0].uidl, "AAAA0001");
    ck_assert_uint_eq(l->entries[0].size, 2048);
    ck_assert_uint_eq(l->entries[0].msgid_hash, h("<20240101.1234@example.com>"));
    ck_assert_str_eq(l->entries[1].uidl, "A\"\\/b");
    ck_assert_uint_eq(l->entries[1].msgid_hash, 0);
    ck_assert_uint_eq(l->entries[2].size, INT64_MAX);
    ck_assert_uint_eq(l->entries[2].msgid_hash, h("<\xf0\x9f\x98\x80@x>"));
    legacy_import_free(&l);

    l = parse_ok("{\"messages\": []}", LEGACY_IMPORT_JSON);
    ck_assert_uint_eq(l->nentries, 0);
    ck_assert_ptr_null(l->user);
    legacy_import_free(&l);
}
END_TEST

START_TEST(test_json_errors)
{
    bad_json("", 1, "invalid JSON: unexpected end of input");
    bad_json("[]", 1, "the list must be a JSON object with \"messages\"");
    bad_json("{}", 1, "no \"messages\" array");
    bad_json("{\"user\": \"a\"\n}", 2, "no \"messages\" array");
    bad_json("{\"messages\": {}}", 1, "\"messages\" must be an array");
    bad_json("{\"messages\": [], \"messages\": []}", 1, "\"messages\" given twice");
    bad_json("{\"user\": 5, \"messages\": []}", 1, "\"user\" must be a string");
    bad_json("{\"user\": \"\", \"messages\": []}", 1,
             "\"user\" must be a non-empty string without NUL");
    bad_json("{\"user\": \"a\\u0000b\", \"messages\": []}", 1,
             "\"user\" must be a non-empty string without NUL");
    bad_json("{\"user\": \"a\", \"user\": \"b\", \"messages\": []}", 1, "\"user\" given twice");
    bad_json("{\"users\": \"a\", \"messages\": []}", 1,
             "unknown key at the top level (allowed: \"user\", \"messages\", \"x-...\")");
    bad_json("{\"messages\": [\n5]}", 2, "each element of \"messages\" must be an object");
    bad_json("{\"messages\": [\n{\"size\": 1}]}", 2, "a message has no \"uidl\"");
    bad_json("{\"messages\": [\n{\"uidl\": \"a\",\n\"x-n\": 1}]}", 2, "a message has no \"size\"");
    bad_json("{\"messages\": [{\"uidl\": \"a\", \"size\": 1, \"mesage_id\": \"<x>\"}]}", 1,
             "unknown key in a message (allowed: \"uidl\", \"size\", \"message_id\", "
             "\"number\", \"x-...\")");
    bad_json("{\"messages\": [{\"uidl\": 5, \"size\": 1}]}", 1, "\"uidl\" must be a string");
    bad_json("{\"messages\": [{\"uidl\": \"\", \"size\": 1}]}", 1, "empty UIDL");
    bad_json("{\"messages\": [{\"uidl\": "
             "\"0123456789012345678901234567890123456789012345678901234567890123456789x\", "
             "\"size\": 1}]}",
             1, "UIDL longer than 70 characters");
    bad_json("{\"messages\": [{\"uidl\": \"a b\", \"size\": 1}]}", 1,
             "UIDL has a character outside 0x21..0x7E");
    bad_json("{\"messages\": [{\"uidl\": \"a\\u0000\", \"size\": 1}]}", 1,
             "UIDL has a character outside 0x21..0x7E");
    bad_json("{\"messages\": [{\"uidl\": \"a\", \"uidl\": \"b\", \"size\": 1}]}", 1,
             "\"uidl\" given twice in one message");
    bad_json("{\"messages\": [{\"uidl\": \"a\", \"size\": 1, \"size\": 1}]}", 1,
             "\"size\" given twice in one message");
    bad_json("{\"messages\": [{\"uidl\": \"a\", \"size\": 1, \"message_id\": null, "
             "\"message_id\": null}]}",
             1, "\"message_id\" given twice in one message");
    bad_json("{\"messages\": [{\"uidl\": \"a\", \"size\": 1, \"number\": 1, \"number\": 2}]}", 1,
             "\"number\" given twice in one message");
    bad_json("{\"messages\": [{\"uidl\": \"a\", \"size\": -1}]}", 1,
             "\"size\" must be a non-negative integer");
    bad_json("{\"messages\": [{\"uidl\": \"a\", \"size\": 1.5}]}", 1,
             "\"size\" must be a non-negative integer");
    bad_json("{\"messages\": [{\"uidl\": \"a\", \"size\": 1e3}]}", 1,
             "\"size\" must be a non-negative integer");
    bad_json("{\"messages\": [{\"uidl\": \"a\", \"size\": \"12\"}]}", 1,
             "\"size\" must be a non-negative integer");
    bad_json("{\"messages\": [{\"uidl\": \"a\", \"size\": 18446744073709551616}]}", 1,
             "\"size\" must be a non-negative integer");
    bad_json("{\"messages\": [{\"uidl\": \"a\", \"size\": 9223372036854775808}]}", 1,
             "\"size\" must be a non-negative integer");
    bad_json("{\"messages\": [{\"uidl\": \"a\", \"size\": 012}]}", 1,
             "invalid JSON: leading zeros in a number");
    bad_json("{\"messages\": [{\"uidl\": \"a\", \"size\": 1, \"message_id\": 5}]}", 1,
             "\"message_id\" must be a string or null");
    bad_json("{\"messages\": [{\"uidl\": \"a\", \"size\": 1, \"message_id\": nul}]}", 1,
             "invalid JSON: unexpected character");
    bad_json("{\"messages\": [\n{\"uidl\": \"a\", \"size\": 1},\n{\"uidl\": \"a\", \"size\": 2}]}",
             3, "duplicate UIDL (each message of the old server has its own)");
    /* syntax */
    bad_json("{\"messages\": [}", 1, "each element of \"messages\" must be an object");
    bad_json("{\"messages\": []", 1, "invalid JSON: unexpected end of input");
    bad_json("{\"messages\": [] x", 1, "invalid JSON: expected ',' or '}'");
    bad_json("{\"messages\": [{\"uidl\": \"a\", \"size\": 1} {}]}", 1,
             "invalid JSON: expected ',' or ']'");
    bad_json("{\"messages\": [], }", 1, "invalid JSON: expected a key in quotes");
    bad_json("{\"messages\" []}", 1, "invalid JSON: expected ':'");
    bad_json("{messages: []}", 1, "invalid JSON: expected a key in quotes");
    bad_json("{\"messages\": []} {}", 1, "invalid JSON: data after the object");
    bad_json("{\"messages\": [], \"x-a\": \"unterminated", 1, "invalid JSON: unterminated string");
    bad_json("{\"messages\": [], \"x-a\": \"a\nb\"}", 1,
             "invalid JSON: control character in a string");
    bad_json("{\"messages\": [], \"x-a\": \"\\x\"}", 1, "invalid JSON: bad escape in a string");
    bad_json("{\"messages\": [], \"x-a\": \"\\u12g4\"}", 1, "invalid JSON: bad \\u escape");
    bad_json("{\"messages\": [], \"x-a\": \"\\u12\"}", 1, "invalid JSON: bad \\u escape");
    bad_json("{\"messages\": [], \"x-a\": \"\\udc00\"}", 1, "invalid JSON: bad \\u escape");
    bad_json("{\"messages\": [], \"x-a\": \"\\ud800x\"}", 1, "invalid JSON: bad \\u escape");
    bad_json("{\"messages\": [], \"x-a\": \"\\ud800\\u0041\"}", 1, "invalid JSON: bad \\u escape");
    bad_json("{\"messages\": [], \"x-a\": tru}", 1, "invalid JSON: unexpected character");
    bad_json("{\"messages\": [], \"x-a\": -}", 1, "invalid JSON: bad number");
    bad_json("{\"messages\": [], \"x-a\": 1.}", 1, "invalid JSON: bad number");
    bad_json("{\"messages\": [], \"x-a\": 1e+}", 1, "invalid JSON: bad number");
    bad_json("{\"messages\": [], \"x-a\": @}", 1, "invalid JSON: unexpected character");
    /* the line is where the error is */
    bad_json("{\n\"messages\": [\n\n  {\"uidl\": \"ok\", \"size\": 1},\n  {\"uidl\": \"a b\", "
             "\"size\": 1}\n]}",
             5, "UIDL has a character outside 0x21..0x7E");

    char deep[200];
    size_t n = (size_t)snprintf(deep, sizeof(deep), "{\"messages\": [], \"x-a\": ");
    for (int i = 0; i < 40; i++)
        deep[n++] = '[';
    deep[n] = '\0';
    bad_json(deep, 1, "invalid JSON: nested too deeply");
}
END_TEST

static struct state_doc *doc_new(void)
{
    struct state_doc *doc = calloc(1, sizeof(*doc));

    ck_assert_ptr_nonnull(doc);
    doc->version = STATE_VERSION;
    return doc;
}

static void doc_free(struct state_doc **doc)
{
    free((*doc)->legacy);
    free(*doc);
    *doc = NULL;
}

static void merge(struct state_doc *doc, const struct legacy_import *l,
                  struct legacy_import_merge_stats *st)
{
    const char *error;

    ck_assert_int_eq(legacy_import_merge(doc, l, st, &error), 0);
}

static void check_legacy(const struct state_doc *doc, const char *expected)
{
    char got[512] = "";
    size_t n = 0;

    /* "uidl:size[*]" for each entry, "*" when matched */
    for (size_t j = 0; j < doc->nlegacy; j++)
        n += (size_t)snprintf(got + n, sizeof(got) - n, "%s%s:%llu%s", j ? " " : "",
                              doc->legacy[j].uidl, (unsigned long long)doc->legacy[j].size,
                              doc->legacy[j].matched ? "*" : "");
    ck_assert_str_eq(got, expected);
}

START_TEST(test_merge)
{
    struct state_doc *doc = doc_new();
    struct legacy_import *l = parse_ok("1 A 10\n2 B 20\n3 C 30\n", LEGACY_IMPORT_TEXT);
    struct legacy_import_merge_stats st;

    merge(doc, l, &st);
    check_legacy(doc, "A:10 B:20 C:30");
    ck_assert_uint_eq(st.entries, 3);
    ck_assert_uint_eq(st.pending, 3);
    ck_assert_uint_eq(st.kept_matched, 0);

    /* Twice: the same. */
    merge(doc, l, &st);
    check_legacy(doc, "A:10 B:20 C:30");

    /* A login matched B and C; importing again keeps them matched, in place. */
    doc->legacy[1].matched = true;
    doc->legacy[2].matched = true;
    merge(doc, l, &st);
    check_legacy(doc, "A:10 B:20* C:30*");
    ck_assert_uint_eq(st.kept_matched, 2);
    ck_assert_uint_eq(st.pending, 1);

    /* A corrected list without C and with D: C stays matched (after the rest), D is new. */
    struct legacy_import *l2 = parse_ok("{\"messages\": [{\"uidl\": \"D\", \"size\": 40},"
                                        "{\"uidl\": \"B\", \"size\": 21},"
                                        "{\"uidl\": \"A\", \"size\": 10}]}",
                                        LEGACY_IMPORT_AUTO);
    merge(doc, l2, &st);
    check_legacy(doc, "D:40 B:21* A:10 C:30*");
    ck_assert_uint_eq(st.entries, 3);
    ck_assert_uint_eq(st.kept_matched, 2);
    ck_assert_uint_eq(st.pending, 2);
    merge(doc, l2, &st);
    check_legacy(doc, "D:40 B:21* A:10 C:30*");

    /* An empty list drops what is pending, never what was matched. */
    struct legacy_import *empty = parse_ok("", LEGACY_IMPORT_TEXT);
    merge(doc, empty, &st);
    check_legacy(doc, "B:21* C:30*");
    ck_assert_uint_eq(st.pending, 0);

    legacy_import_free(&l);
    legacy_import_free(&l2);
    legacy_import_free(&empty);
    doc_free(&doc);
}
END_TEST

static Suite *legacy_import_suite(void)
{
    Suite *s = suite_create("legacy_import");
    TCase *tc = tcase_create("core");

    tcase_add_test(tc, test_text);
    tcase_add_test(tc, test_text_errors);
    tcase_add_test(tc, test_json);
    tcase_add_test(tc, test_json_errors);
    tcase_add_test(tc, test_merge);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(legacy_import_suite());
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
