/* Tests of the state document: JSON round trips, every validation error, the sorted
 * message list, and (with POPGATE_BIG_TESTS=1) the speed of a 100,000-message document. */
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "state.h"

#define BIG_MESSAGES 100000
/* Budget per parse and per serialize of the big document (best of BIG_RUNS). */
#define BIG_BUDGET_S 0.5
#define BIG_RUNS     3

/* ASan and UBSan make the code several times slower: the budget is for real builds. */
#if defined(__SANITIZE_ADDRESS__)
#define SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SANITIZED 1
#endif
#endif
#ifndef SANITIZED
#define SANITIZED 0
#endif

static struct state_doc *parse_ok(const char *json)
{
    struct state_doc *doc = NULL;
    const char *error = NULL;

    if (state_doc_parse(json, strlen(json), &doc, &error) != 0)
        ck_abort_msg("parse failed: %s\n  input: %s", error, json);
    ck_assert_ptr_nonnull(doc);
    return doc;
}

static void parse_fails(const char *json, const char *expected)
{
    struct state_doc *doc = (struct state_doc *)1;
    const char *error = NULL;

    if (state_doc_parse(json, strlen(json), &doc, &error) == 0)
        ck_abort_msg("parse succeeded, expected \"%s\"\n  input: %s", expected, json);
    ck_assert_ptr_null(doc);
    ck_assert_ptr_nonnull(error);
    if (strstr(error, expected) == NULL)
        ck_abort_msg("error \"%s\" lacks \"%s\"\n  input: %s", error, expected, json);
}

static void assert_docs_equal(const struct state_doc *a, const struct state_doc *b)
{
    ck_assert_int_eq(a->version, b->version);
    ck_assert_str_eq(a->user, b->user);
    ck_assert_int_eq(a->first_login, b->first_login);
    ck_assert_int_eq(a->last_login, b->last_login);
    ck_assert_uint_eq(a->nfolders, b->nfolders);
    for (size_t i = 0; i < a->nfolders; i++) {
        ck_assert_str_eq(a->folders[i].name, b->folders[i].name);
        ck_assert_uint_eq(a->folders[i].uidvalidity, b->folders[i].uidvalidity);
    }
    ck_assert_uint_eq(a->nmsgs, b->nmsgs);
    for (size_t i = 0; i < a->nmsgs; i++) {
        const struct state_msg *x = &a->msgs[i], *y = &b->msgs[i];

        ck_assert_uint_eq(x->folder, y->folder);
        ck_assert_uint_eq(x->uid, y->uid);
        ck_assert_str_eq(x->uidl, y->uidl);
        ck_assert_uint_eq(x->size, y->size);
        ck_assert_uint_eq(x->real_size, y->real_size);
        ck_assert_uint_eq(x->msgid_hash, y->msgid_hash);
        ck_assert_int_eq(x->hidden, y->hidden);
    }
    ck_assert_uint_eq(a->nlegacy, b->nlegacy);
    for (size_t i = 0; i < a->nlegacy; i++) {
        const struct state_legacy *x = &a->legacy[i], *y = &b->legacy[i];

        ck_assert_str_eq(x->uidl, y->uidl);
        ck_assert_uint_eq(x->size, y->size);
        ck_assert_uint_eq(x->msgid_hash, y->msgid_hash);
        ck_assert_int_eq(x->matched, y->matched);
    }
}

/* Serializes, parses back, compares, and checks the second serialization is identical. */
static char *round_trip(const struct state_doc *doc)
{
    struct state_doc *back = NULL;
    const char *error = NULL;
    size_t len, len2;
    char *json = state_doc_serialize(doc, &len), *json2;

    ck_assert_ptr_nonnull(json);
    ck_assert_uint_eq(strlen(json), len);
    if (state_doc_parse(json, len, &back, &error) != 0)
        ck_abort_msg("own output does not parse: %s\n  %s", error, json);
    assert_docs_equal(doc, back);
    ck_assert_uint_eq(back->msgs_alloc, back->nmsgs); /* no spare room after a parse */
    json2 = state_doc_serialize(back, &len2);
    ck_assert_ptr_nonnull(json2);
    ck_assert_uint_eq(len, len2);
    ck_assert(memcmp(json, json2, len) == 0);
    free(json2);
    state_doc_free(&back);
    return json;
}

static struct state_doc *sample_doc(void)
{
    struct state_doc *doc = state_doc_new("alice@example.net", 17);
    struct state_msg *m;

    ck_assert_ptr_nonnull(doc);
    doc->first_login = 1732871234;
    doc->last_login = 1732871299;
    ck_assert_int_eq(state_doc_folder(doc, "INBOX"), 0);
    ck_assert_int_eq(state_doc_folder(doc, "Archive"), 1);
    doc->folders[0].uidvalidity = 1600000000;
    m = state_doc_upsert(doc, 0, 5);
    ck_assert_ptr_nonnull(m);
    strcpy(m->uidl, "000000055f5ede35");
    m->size = 1234;
    m->real_size = 1236;
    m->msgid_hash = 0x9f86d081884c7d65;
    m->hidden = true;
    m = state_doc_upsert(doc, 1, 7);
    ck_assert_ptr_nonnull(m);
    m->size = 99;
    doc->legacy = calloc(2, sizeof(*doc->legacy));
    ck_assert_ptr_nonnull(doc->legacy);
    doc->nlegacy = 2;
    strcpy(doc->legacy[0].uidl, "UID123-old");
    doc->legacy[0].size = 2048;
    doc->legacy[0].msgid_hash = 0xabc;
    strcpy(doc->legacy[1].uidl, "UID124-old");
    doc->legacy[1].size = 17;
    doc->legacy[1].matched = true;
    return doc;
}

START_TEST(test_new)
{
    struct state_doc *doc = state_doc_new("bob@example.net", 15);

    ck_assert_ptr_nonnull(doc);
    ck_assert_int_eq(doc->version, STATE_VERSION);
    ck_assert_str_eq(doc->user, "bob@example.net");
    ck_assert_uint_eq(doc->nfolders + doc->nmsgs + doc->nlegacy, 0);
    ck_assert_int_eq(doc->first_login, 0);
    state_doc_free(&doc);
    ck_assert_ptr_null(doc);
    state_doc_free(&doc); /* twice is fine */

    /* Only the given length is taken. */
    doc = state_doc_new("carolXYZ", 5);
    ck_assert_str_eq(doc->user, "carol");
    state_doc_free(&doc);
    doc = state_doc_new("j\xc3\xb6rg@\xe4\xbe\x8b.jp", 12);
    ck_assert_ptr_nonnull(doc);
    state_doc_free(&doc);

    /* Names JSON could not carry back. */
    static const struct {
        const char *s;
        size_t len;
    } bad[] = {
        {"", 0},
        {"a\0b", 3},
        {"\xff", 1},
        {"j\xf6rg", 4},
        {"\xc0\xaf", 2},
        {"\xed\xa0\x80", 3},
        {"\xf4\x90\x80\x80", 4},
        {"\xe2\x82", 2},
        {"\xe0\x80\xaf", 3},
        {"\xf0\x80\x80\xaf", 4},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        errno = 0;
        ck_assert_ptr_null(state_doc_new(bad[i].s, bad[i].len));
        ck_assert_int_eq(errno, EINVAL);
    }
}
END_TEST

START_TEST(test_round_trip_exact_bytes)
{
    struct state_doc *doc = sample_doc();
    char *json = round_trip(doc);

    ck_assert_str_eq(
        json, "{\"version\":1,\"user\":\"alice@example.net\",\"first_login\":1732871234,"
              "\"last_login\":1732871299,\"folders\":[{\"name\":\"INBOX\",\"uidvalidity\":"
              "1600000000},{\"name\":\"Archive\",\"uidvalidity\":0}],\"messages\":[{\"f\":0,"
              "\"uid\":5,\"uidl\":\"000000055f5ede35\",\"size\":1234,\"real_size\":1236,"
              "\"msgid\":\"9f86d081884c7d65\",\"hidden\":true},{\"f\":1,\"uid\":7,\"size\":99}],"
              "\"legacy\":[{\"uidl\":\"UID123-old\",\"size\":2048,\"msgid\":\"0000000000000abc\"},"
              "{\"uidl\":\"UID124-old\",\"size\":17,\"matched\":true}]}\n");
    free(json);
    state_doc_free(&doc);
}
END_TEST

START_TEST(test_round_trip_empty_and_extremes)
{
    struct state_doc *doc = state_doc_new("x", 1);
    struct state_msg *m;
    char *json = round_trip(doc);

    ck_assert_str_eq(json, "{\"version\":1,\"user\":\"x\",\"first_login\":0,\"last_login\":0,"
                           "\"folders\":[],\"messages\":[],\"legacy\":[]}\n");
    free(json);

    doc->first_login = INT64_MAX;
    doc->last_login = INT64_MAX;
    state_doc_folder(doc, "INBOX");
    doc->folders[0].uidvalidity = UINT32_MAX;
    m = state_doc_upsert(doc, 0, UINT32_MAX);
    m->size = INT64_MAX;
    m->real_size = INT64_MAX;
    m->msgid_hash = UINT64_MAX;
    memset(m->uidl, '~', UIDL_MAX);
    m->uidl[UIDL_MAX] = '\0';
    m = state_doc_upsert(doc, 0, 1);
    strcpy(m->uidl, "\"\\!"); /* printable, but JSON needs escapes */
    free(round_trip(doc));
    state_doc_free(&doc);
}
END_TEST

START_TEST(test_round_trip_escapes)
{
    static const char user[] = "q\"b\\s/\x01\x1f\n\t\x7f-\xc3\xa9\xe2\x80\xa8\xf0\x9f\x93\xa7";
    struct state_doc *doc = state_doc_new(user, sizeof(user) - 1);
    char *json;

    ck_assert_ptr_nonnull(doc);
    ck_assert_int_eq(state_doc_folder(doc, "Entw\xc3\xbcrfe \"&\" \\ \x02"), 0);
    json = round_trip(doc);
    ck_assert_ptr_nonnull(
        strstr(json, "\"user\":\"q\\\"b\\\\s/\\u0001\\u001f\\u000a\\u0009\x7f-\xc3\xa9"));
    free(json);
    state_doc_free(&doc);
}
END_TEST

START_TEST(test_parse_example_and_defaults)
{
    static const char example[] =
        "{\"version\":1,\"user\":\"alice@example.net\",\"first_login\":1732871234,"
        "\"last_login\":1732871299,\n \"folders\":[{\"name\":\"INBOX\",\"uidvalidity\":1600000000}"
        "],\n \"messages\":[{\"f\":0,\"uid\":5,\"uidl\":\"000000055f5ede35\",\"size\":1234,"
        "\"real_size\":1236,\"msgid\":\"9f86d081884c7d65\",\"hidden\":true}],\n "
        "\"legacy\":[{\"uidl\":\"UID123-old\",\"size\":2048,\"msgid\":\"00000000000000ff\","
        "\"matched\":false}]}";
    struct state_doc *doc = parse_ok(example);
    char *json;

    ck_assert_str_eq(doc->user, "alice@example.net");
    ck_assert_int_eq(doc->first_login, 1732871234);
    ck_assert_uint_eq(doc->nfolders, 1);
    ck_assert_uint_eq(doc->folders[0].uidvalidity, 1600000000);
    ck_assert_uint_eq(doc->nmsgs, 1);
    ck_assert_uint_eq(doc->msgs[0].uid, 5);
    ck_assert_uint_eq(doc->msgs[0].real_size, 1236);
    ck_assert_uint_eq(doc->msgs[0].msgid_hash, 0x9f86d081884c7d65);
    ck_assert(doc->msgs[0].hidden);
    ck_assert_uint_eq(doc->nlegacy, 1);
    ck_assert_uint_eq(doc->legacy[0].msgid_hash, 0xff);
    ck_assert(!doc->legacy[0].matched);
    json = round_trip(doc);
    /* Defaults are left out when written. */
    ck_assert_ptr_null(strstr(json, "matched"));
    free(json);
    state_doc_free(&doc);

    /* Only version and user are required; explicit defaults are accepted. */
    doc = parse_ok("{\"version\":1,\"user\":\"u\"}");
    ck_assert_uint_eq(doc->nfolders + doc->nmsgs + doc->nlegacy, 0);
    state_doc_free(&doc);
    doc = parse_ok("{\"version\":1,\"user\":\"u\",\"folders\":[{\"uidvalidity\":0,\"name\":\"A\"}],"
                   "\"messages\":[{\"size\":0,\"uid\":1,\"f\":0,\"real_size\":0,"
                   "\"msgid\":\"0000000000000000\",\"hidden\":false}]}");
    json = state_doc_serialize(doc, NULL);
    ck_assert_ptr_nonnull(strstr(json, "\"messages\":[{\"f\":0,\"uid\":1,\"size\":0}]"));
    free(json);
    state_doc_free(&doc);
}
END_TEST

/* The same document, written the way a person or another tool might: keys in any order,
 * escaped key names, white space everywhere. Some of these take the fast parse, some the
 * whole-tree one; all give the same document. */
START_TEST(test_spellings)
{
    static const char *const spellings[] = {
        "{\"version\":1,\"user\":\"u\",\"folders\":[{\"name\":\"INBOX\",\"uidvalidity\":7}],"
        "\"messages\":[{\"f\":0,\"uid\":1,\"size\":10,\"uidl\":\"a\"},{\"f\":0,\"uid\":2,"
        "\"size\":20}],\"legacy\":[{\"uidl\":\"L\",\"size\":3}]}",
        " \r\n\t{ \"legacy\" : [ { \"size\" : 3 , \"uidl\" : \"L\" } ] , \"messages\" : [ "
        "{\"uid\":2,"
        "\"f\":0,\"size\":20} , {\"size\":10,\"uidl\":\"a\",\"uid\":1,\"f\":0} ] , \"folders\":[{"
        "\"uidvalidity\":7,\"name\":\"INBOX\"}],\"user\":\"u\",\"version\":1 } \n",
        "{\"\\u0076ersion\":1,\"user\":\"\\u0075\",\"folders\":[{\"name\":\"INBOX\","
        "\"uidvalidity\":7}],"
        "\"messages\":[{\"f\":0,\"uid\":1,\"size\":10,\"uidl\":\"\\u0061\"},{\"f\":0,\"uid\":2,"
        "\"size\":20}],\"legacy\":[{\"uidl\":\"L\",\"size\":3}]}",
        "{\"x-\\\"q\\\"\":\"]}\\\"[{\",\"version\":1,\"user\":\"u\",\"folders\":[{\"name\":"
        "\"INBOX\","
        "\"uidvalidity\":7}],\"messages\":[{\"f\":0,\"uid\":1,\"size\":10,\"uidl\":\"a\"},{\"f\":0,"
        "\"uid\":2,\"size\":20,\"x\":1}],\"legacy\":[{\"uidl\":\"L\",\"size\":3}]}",
    };
    struct state_doc *first = parse_ok(spellings[0]);

    for (size_t i = 1; i < 3; i++) {
        struct state_doc *doc = parse_ok(spellings[i]);

        assert_docs_equal(first, doc);
        state_doc_free(&doc);
    }
    /* Quotes and brackets inside strings do not confuse the walk. */
    parse_fails(spellings[3], "messages[1].\"x\": unknown key");
    state_doc_free(&first);
}
END_TEST

START_TEST(test_unknown_x_keys)
{
    struct state_doc *doc =
        parse_ok("{\"x-note\":{\"any\":[1,2]},\"version\":1,\"user\":\"u\",\"x-\":null}");
    char *json = state_doc_serialize(doc, NULL);

    ck_assert_ptr_null(strstr(json, "x-"));
    free(json);
    state_doc_free(&doc);
}
END_TEST

START_TEST(test_version)
{
    parse_fails("{\"user\":\"u\"}", "version: missing");
    parse_fails("{\"version\":\"1\",\"user\":\"u\"}", "version: not an integer");
    parse_fails("{\"version\":1.0,\"user\":\"u\"}", "version: not an integer");
    parse_fails("{\"version\":null,\"user\":\"u\"}", "version: not an integer");
    parse_fails("{\"version\":0,\"user\":\"u\"}", "version: 0 is not a version (1 is)");
    parse_fails("{\"version\":-1,\"user\":\"u\"}", "version: -1 is not a version");
    parse_fails("{\"version\":2,\"user\":\"u\"}",
                "version: 2 is newer than this popgate understands (1)");
    /* A newer document is reported as newer, not by the keys it added. */
    parse_fails("{\"version\":3,\"user\":\"u\",\"labels\":[]}", "version: 3 is newer");
}
END_TEST

static const struct {
    const char *json;
    const char *error;
} top_errors[] = {
    {"", "invalid JSON"},
    {"{\"version\":1,", "1:13: invalid JSON"},
    {"[]", "not a JSON object"},
    {"{\"version\":1,\"version\":1,\"user\":\"u\"}", "invalid JSON: duplicate object key"},
    {"{\"version\":1,\"user\":\"u\",\"size\":99999999999999999999}", "invalid JSON"},
    {"{\"version\":1,\"user\":\"\\u0000\"}", "invalid JSON"},
    {"{\"version\":1,\"user\":\"\\ud800\"}", "invalid JSON"},
    {"{\"version\":1,\"user\":\"\xff\"}", "invalid JSON"},
    {"{\"version\":1,\"user\":\"u\",\"folder\":[]}",
     "\"folder\": unknown key (only \"x-...\" keys may be added)"},
    {"{\"version\":1,\"user\":\"u\",\"X-Note\":1}", "\"X-Note\": unknown key"},
    {"{\"version\":1,\"user\":\"u\",\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\\n\":1}",
     "\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa...\": unknown key"},
    {"{\"version\":1}", "user: missing"},
    {"{\"version\":1,\"user\":5}", "user: not a string"},
    {"{\"version\":1,\"user\":\"\"}", "user: empty"},
    {"{\"version\":1,\"user\":\"u\",\"first_login\":-1}",
     "first_login: -1 out of range 0..9223372036854775807"},
    {"{\"version\":1,\"user\":\"u\",\"first_login\":\"now\"}", "first_login: not an integer"},
    {"{\"version\":1,\"user\":\"u\",\"last_login\":1.5}", "last_login: not an integer"},
    {"{\"version\":1,\"user\":\"u\",\"folders\":{}}", "folders: not an array"},
    {"{\"version\":1,\"user\":\"u\",\"folders\":[\"INBOX\"]}", "folders[0]: not an object"},
    {"{\"version\":1,\"user\":\"u\",\"folders\":[{\"uidvalidity\":1}]}",
     "folders[0].name: missing"},
    {"{\"version\":1,\"user\":\"u\",\"folders\":[{\"name\":\"A\"}]}",
     "folders[0].uidvalidity: missing"},
    {"{\"version\":1,\"user\":\"u\",\"folders\":[{\"name\":5,\"uidvalidity\":1}]}",
     "folders[0].name: not a string"},
    {"{\"version\":1,\"user\":\"u\",\"folders\":[{\"name\":\"\",\"uidvalidity\":1}]}",
     "folders[0].name: not 1..255 bytes"},
    {"{\"version\":1,\"user\":\"u\",\"folders\":[{\"name\":\"A\",\"uidvalidity\":-1}]}",
     "folders[0].uidvalidity: -1 out of range 0..4294967295"},
    {"{\"version\":1,\"user\":\"u\",\"folders\":[{\"name\":\"A\",\"uidvalidity\":4294967296}]}",
     "folders[0].uidvalidity: 4294967296 out of range"},
    {"{\"version\":1,\"user\":\"u\",\"folders\":[{\"name\":\"A\",\"uidvalidity\":1,\"n\":1}]}",
     "folders[0].\"n\": unknown key"},
    {"{\"version\":1,\"user\":\"u\",\"folders\":[{\"name\":\"A\",\"uidvalidity\":1},"
     "{\"name\":\"B\",\"uidvalidity\":1},{\"name\":\"A\",\"uidvalidity\":2}]}",
     "folders: two folders have the same name"},
    {"{\"version\":1,\"user\":\"u\",\"messages\":{}}", "messages: not an array"},
    {"{\"version\":1,\"user\":\"u\",\"legacy\":null}", "legacy: not an array"},
};

START_TEST(test_top_errors)
{
    parse_fails(top_errors[_i].json, top_errors[_i].error);
}
END_TEST

START_TEST(test_folder_name_too_long)
{
    char json[600];
    char name[STATE_FOLDER_MAX + 2];

    memset(name, 'n', sizeof(name) - 1);
    name[sizeof(name) - 1] = '\0';
    snprintf(json, sizeof(json),
             "{\"version\":1,\"user\":\"u\",\"folders\":[{\"name\":\"%s\",\"uidvalidity\":1}]}",
             name);
    parse_fails(json, "folders[0].name: not 1..255 bytes");
    name[STATE_FOLDER_MAX] = '\0'; /* 255 is fine */
    snprintf(json, sizeof(json),
             "{\"version\":1,\"user\":\"u\",\"folders\":[{\"name\":\"%s\",\"uidvalidity\":1}]}",
             name);
    struct state_doc *doc = parse_ok(json);
    ck_assert_uint_eq(strlen(doc->folders[0].name), STATE_FOLDER_MAX);
    state_doc_free(&doc);
}
END_TEST

/* Three good messages, then the one under test: errors name messages[3]. */
#define MSG_PREFIX                                                                                 \
    "{\"version\":1,\"user\":\"u\",\"folders\":[{\"name\":\"INBOX\",\"uidvalidity\":7}],"          \
    "\"messages\":[{\"f\":0,\"uid\":1,\"size\":1},{\"f\":0,\"uid\":2,\"size\":1},"                 \
    "{\"f\":0,\"uid\":3,\"size\":1},"
#define MSG_SUFFIX "]}"

static const struct {
    const char *msg;
    const char *error;
} msg_errors[] = {
    {"[]", "messages[3]: not an object"},
    {"{\"uid\":4,\"size\":1}", "messages[3].f: missing"},
    {"{\"f\":0,\"size\":1}", "messages[3].uid: missing"},
    {"{\"f\":0,\"uid\":4}", "messages[3].size: missing"},
    {"{\"f\":1,\"uid\":4,\"size\":1}", "messages[3].f: folder 1 out of range (1 folders)"},
    {"{\"f\":-1,\"uid\":4,\"size\":1}", "messages[3].f: folder -1 out of range"},
    {"{\"f\":\"0\",\"uid\":4,\"size\":1}", "messages[3].f: not an integer"},
    {"{\"f\":0,\"uid\":0,\"size\":1}", "messages[3].uid: 0 out of range 1..4294967295"},
    {"{\"f\":0,\"uid\":4294967296,\"size\":1}", "messages[3].uid: 4294967296 out of range"},
    {"{\"f\":0,\"uid\":true,\"size\":1}", "messages[3].uid: not an integer"},
    {"{\"f\":0,\"uid\":4,\"size\":-1}", "messages[3].size: -1 out of range"},
    {"{\"f\":0,\"uid\":4,\"size\":1e3}", "messages[3].size: not an integer"},
    {"{\"f\":0,\"uid\":4,\"size\":1,\"real_size\":-5}", "messages[3].real_size: -5 out of range"},
    {"{\"f\":0,\"uid\":4,\"size\":1,\"uidl\":\"\"}",
     "messages[3].uidl: not 1..70 printable characters"},
    {"{\"f\":0,\"uid\":4,\"size\":1,\"uidl\":\"a b\"}",
     "messages[3].uidl: not 1..70 printable characters"},
    {"{\"f\":0,\"uid\":4,\"size\":1,\"uidl\":\"a\\u007f\"}",
     "messages[3].uidl: not 1..70 printable characters"},
    {"{\"f\":0,\"uid\":4,\"size\":1,\"uidl\":\"\xc3\xa9\"}",
     "messages[3].uidl: not 1..70 printable characters"},
    {"{\"f\":0,\"uid\":4,\"size\":1,\"uidl\":"
     "\"12345678901234567890123456789012345678901234567890123456789012345678901\"}",
     "messages[3].uidl: not 1..70 printable characters"},
    {"{\"f\":0,\"uid\":4,\"size\":1,\"uidl\":7}", "messages[3].uidl: not a string"},
    {"{\"f\":0,\"uid\":4,\"size\":1,\"msgid\":\"9F86D081884C7D65\"}",
     "messages[3].msgid: not 16 lower-case hex digits"},
    {"{\"f\":0,\"uid\":4,\"size\":1,\"msgid\":\"9f86d081884c7d6\"}",
     "messages[3].msgid: not 16 lower-case hex digits"},
    {"{\"f\":0,\"uid\":4,\"size\":1,\"msgid\":\"9f86d081884c7d65a\"}",
     "messages[3].msgid: not 16 lower-case hex digits"},
    {"{\"f\":0,\"uid\":4,\"size\":1,\"msgid\":\"0x86d081884c7d65\"}",
     "messages[3].msgid: not 16 lower-case hex digits"},
    {"{\"f\":0,\"uid\":4,\"size\":1,\"msgid\":12}", "messages[3].msgid: not a string"},
    {"{\"f\":0,\"uid\":4,\"size\":1,\"hidden\":1}", "messages[3].hidden: not true or false"},
    {"{\"f\":0,\"uid\":4,\"size\":1,\"deleted\":true}", "messages[3].\"deleted\": unknown key"},
    {"{\"f\":0,\"uid\":4,\"size\":1,\"x-a\":1}", "messages[3].\"x-a\": unknown key"},
    {"{\"f\":0,\"uid\":3,\"size\":1}", "messages[3]: duplicate of messages[2] (f 0, uid 3)"},
    {"{\"f\":0,\"uid\":2,\"size\":1}", "messages: two entries for f 0, uid 2"},
};

START_TEST(test_message_errors)
{
    char json[1024];

    snprintf(json, sizeof(json), "%s%s%s", MSG_PREFIX, msg_errors[_i].msg, MSG_SUFFIX);
    parse_fails(json, msg_errors[_i].error);
}
END_TEST

#define LEGACY_PREFIX "{\"version\":1,\"user\":\"u\",\"legacy\":[{\"uidl\":\"a\",\"size\":1},"

static const struct {
    const char *entry;
    const char *error;
} legacy_errors[] = {
    {"1", "legacy[1]: not an object"},
    {"{\"size\":1}", "legacy[1].uidl: missing"},
    {"{\"uidl\":\"b\"}", "legacy[1].size: missing"},
    {"{\"uidl\":\"b c\",\"size\":1}", "legacy[1].uidl: not 1..70 printable characters"},
    {"{\"uidl\":[],\"size\":1}", "legacy[1].uidl: not a string"},
    {"{\"uidl\":\"b\",\"size\":-2}", "legacy[1].size: -2 out of range"},
    {"{\"uidl\":\"b\",\"size\":1,\"msgid\":\"x\"}",
     "legacy[1].msgid: not 16 lower-case hex digits"},
    {"{\"uidl\":\"b\",\"size\":1,\"matched\":\"no\"}", "legacy[1].matched: not true or false"},
    {"{\"uidl\":\"b\",\"size\":1,\"date\":0}", "legacy[1].\"date\": unknown key"},
};

START_TEST(test_legacy_errors)
{
    char json[512];

    snprintf(json, sizeof(json), "%s%s]}", LEGACY_PREFIX, legacy_errors[_i].entry);
    parse_fails(json, legacy_errors[_i].error);
}
END_TEST

START_TEST(test_unsorted_messages_are_sorted)
{
    struct state_doc *doc = parse_ok(
        "{\"version\":1,\"user\":\"u\",\"folders\":[{\"name\":\"A\",\"uidvalidity\":1},"
        "{\"name\":\"B\",\"uidvalidity\":2}],\"messages\":[{\"f\":1,\"uid\":1,\"size\":10},"
        "{\"f\":0,\"uid\":9,\"size\":11},{\"f\":0,\"uid\":2,\"size\":12,\"uidl\":\"x\"}]}");

    ck_assert_uint_eq(doc->nmsgs, 3);
    ck_assert_uint_eq(doc->msgs[0].uid, 2);
    ck_assert_str_eq(doc->msgs[0].uidl, "x");
    ck_assert_uint_eq(doc->msgs[1].uid, 9);
    ck_assert_uint_eq(doc->msgs[2].folder, 1);
    ck_assert_ptr_eq(state_doc_find(doc, 0, 9), &doc->msgs[1]);
    free(round_trip(doc));
    state_doc_free(&doc);
}
END_TEST

START_TEST(test_serialize_refuses_invalid)
{
    struct state_doc *doc = sample_doc();
    struct state_msg saved;
    char *user;

#define EXPECT_EINVAL()                                                                            \
    do {                                                                                           \
        errno = 0;                                                                                 \
        ck_assert_ptr_null(state_doc_serialize(doc, NULL));                                        \
        ck_assert_int_eq(errno, EINVAL);                                                           \
    } while (0)

    saved = doc->msgs[0];
    strcpy(doc->msgs[0].uidl, "has space");
    EXPECT_EINVAL();
    memset(doc->msgs[0].uidl, 'u', sizeof(doc->msgs[0].uidl)); /* unterminated */
    EXPECT_EINVAL();
    doc->msgs[0] = saved;
    doc->msgs[0].size = (uint64_t)INT64_MAX + 1;
    EXPECT_EINVAL();
    doc->msgs[0] = saved;
    doc->msgs[0].real_size = UINT64_MAX;
    EXPECT_EINVAL();
    doc->msgs[0] = saved;
    doc->msgs[0].folder = 2;
    EXPECT_EINVAL();
    doc->msgs[0] = saved;
    doc->msgs[0].uid = 0;
    EXPECT_EINVAL();
    doc->msgs[0] = saved;
    doc->msgs[0].folder = 1;
    doc->msgs[0].uid = 9; /* now after msgs[1] = (1, 7) */
    EXPECT_EINVAL();
    doc->msgs[0].uid = 7; /* a duplicate */
    EXPECT_EINVAL();
    doc->msgs[0] = saved;

    strcpy(doc->folders[1].name, "INBOX");
    EXPECT_EINVAL();
    doc->folders[1].name[0] = '\0';
    EXPECT_EINVAL();
    strcpy(doc->folders[1].name, "\xff");
    EXPECT_EINVAL();
    strcpy(doc->folders[1].name, "Archive");

    strcpy(doc->legacy[1].uidl, "");
    EXPECT_EINVAL();
    strcpy(doc->legacy[1].uidl, "ok");
    doc->legacy[1].size = UINT64_MAX;
    EXPECT_EINVAL();
    doc->legacy[1].size = 0;

    doc->first_login = -1;
    EXPECT_EINVAL();
    doc->first_login = 0;
    doc->version = 2;
    EXPECT_EINVAL();
    doc->version = STATE_VERSION;
    user = doc->user;
    doc->user = NULL;
    EXPECT_EINVAL();
    doc->user = "";
    EXPECT_EINVAL();
    doc->user = "\xc3";
    EXPECT_EINVAL();
    doc->user = user;
#undef EXPECT_EINVAL

    free(round_trip(doc));
    state_doc_free(&doc);
}
END_TEST

START_TEST(test_folders)
{
    struct state_doc *doc = state_doc_new("u", 1);
    char name[STATE_FOLDER_MAX + 2];

    ck_assert_int_eq(state_doc_folder(doc, "INBOX"), 0);
    ck_assert_int_eq(state_doc_folder(doc, "Sent"), 1);
    ck_assert_int_eq(state_doc_folder(doc, "INBOX"), 0);
    ck_assert_int_eq(state_doc_folder(doc, "inbox"), 2); /* IMAP names are case-sensitive */
    ck_assert_int_eq(state_doc_folder(doc, ""), -1);
    ck_assert_int_eq(state_doc_folder(doc, "\xe2\x82"), -1);
    memset(name, 'n', sizeof(name) - 1);
    name[sizeof(name) - 1] = '\0';
    ck_assert_int_eq(state_doc_folder(doc, name), -1);
    name[STATE_FOLDER_MAX] = '\0';
    ck_assert_int_eq(state_doc_folder(doc, name), 3);
    ck_assert_uint_eq(doc->nfolders, 4);
    free(round_trip(doc));
    state_doc_free(&doc);
}
END_TEST

START_TEST(test_upsert_find_prune)
{
    struct state_doc *doc = state_doc_new("u", 1);
    struct state_msg *m;

    state_doc_folder(doc, "INBOX");
    state_doc_folder(doc, "Other");
    ck_assert_ptr_null(state_doc_upsert(doc, 2, 1)); /* no such folder */
    ck_assert_ptr_null(state_doc_upsert(doc, 0, 0)); /* uid 0 */
    ck_assert_ptr_null(state_doc_find(doc, 0, 1));

    for (uint32_t uid = 10; uid <= 100; uid += 10) {
        m = state_doc_upsert(doc, 0, uid);
        ck_assert_ptr_nonnull(m);
        m->size = uid;
    }
    for (uint32_t uid = 5; uid <= 25; uid += 10)
        ck_assert_ptr_nonnull(state_doc_upsert(doc, 1, uid));
    /* Out of order: inserted in place. */
    m = state_doc_upsert(doc, 0, 15);
    ck_assert_uint_eq(m->size, 0);
    ck_assert_str_eq(m->uidl, "");
    m->size = 15;
    ck_assert_ptr_nonnull(state_doc_upsert(doc, 0, 1));
    /* Existing: the same entry, unchanged. */
    m = state_doc_upsert(doc, 0, 50);
    ck_assert_uint_eq(m->size, 50);
    ck_assert_uint_eq(doc->nmsgs, 15);
    for (size_t i = 1; i < doc->nmsgs; i++)
        ck_assert(doc->msgs[i - 1].folder < doc->msgs[i].folder ||
                  (doc->msgs[i - 1].folder == doc->msgs[i].folder &&
                   doc->msgs[i - 1].uid < doc->msgs[i].uid));
    ck_assert_uint_eq(state_doc_find(doc, 0, 15)->size, 15);
    ck_assert_ptr_null(state_doc_find(doc, 0, 16));
    ck_assert_ptr_null(state_doc_find(doc, 1, 10));
    ck_assert_ptr_nonnull(state_doc_find(doc, 1, 25));

    /* Gone from the server: everything of folder 0 but 1, 15, 100 (and 999, never seen). */
    static const uint32_t keep[] = {1, 15, 100, 999};
    state_doc_prune(doc, 0, keep, 4);
    ck_assert_uint_eq(doc->nmsgs, 6);
    ck_assert_uint_eq(doc->msgs[0].uid, 1);
    ck_assert_uint_eq(doc->msgs[1].uid, 15);
    ck_assert_uint_eq(doc->msgs[1].size, 15);
    ck_assert_uint_eq(doc->msgs[2].uid, 100);
    ck_assert_uint_eq(doc->msgs[3].folder, 1);
    ck_assert_ptr_nonnull(state_doc_find(doc, 1, 5));

    state_doc_prune(doc, 1, NULL, 0);
    ck_assert_uint_eq(doc->nmsgs, 3);
    state_doc_prune(doc, 1, NULL, 0); /* nothing left there */
    state_doc_prune(doc, 0, keep, 4); /* nothing to drop */
    ck_assert_uint_eq(doc->nmsgs, 3);
    state_doc_prune(doc, 0, NULL, 0);
    ck_assert_uint_eq(doc->nmsgs, 0);
    /* The array is reused after emptying. */
    for (uint32_t uid = 40; uid > 0; uid--)
        ck_assert_ptr_nonnull(state_doc_upsert(doc, 1, uid));
    ck_assert_uint_eq(doc->nmsgs, 40);
    free(round_trip(doc));
    state_doc_free(&doc);
}
END_TEST

/* Another module builds msgs by a merge and hands its array over (msgs_alloc left 0 here):
 * upsert must not trust a capacity it did not make. */
START_TEST(test_upsert_after_replaced_msgs)
{
    struct state_doc *doc = state_doc_new("u", 1);
    struct state_msg *msgs = calloc(3, sizeof(*msgs));

    state_doc_folder(doc, "INBOX");
    for (uint32_t i = 0; i < 3; i++) {
        msgs[i].uid = 10 * (i + 1);
        msgs[i].size = i;
    }
    free(doc->msgs);
    doc->msgs = msgs;
    doc->nmsgs = 3;
    doc->msgs_alloc = 0;
    ck_assert_ptr_nonnull(state_doc_upsert(doc, 0, 40));
    ck_assert_ptr_nonnull(state_doc_upsert(doc, 0, 5));
    for (uint32_t uid = 41; uid < 100; uid++)
        ck_assert_ptr_nonnull(state_doc_upsert(doc, 0, uid));
    ck_assert_uint_eq(doc->nmsgs, 64);
    ck_assert_uint_ge(doc->msgs_alloc, doc->nmsgs);
    ck_assert_uint_eq(state_doc_find(doc, 0, 30)->size, 2);
    free(round_trip(doc));
    state_doc_free(&doc);
}
END_TEST

START_TEST(test_upsert_random_order)
{
    struct state_doc *doc = state_doc_new("u", 1);
    unsigned seed = 12345;
    size_t n = 0;

    state_doc_folder(doc, "A");
    state_doc_folder(doc, "B");
    state_doc_folder(doc, "C");
    for (int i = 0; i < 5000; i++) {
        seed = seed * 1103515245 + 12345;
        uint16_t folder = (uint16_t)((seed >> 16) % 3);
        uint32_t uid = 1 + (seed >> 8) % 3000;
        bool existed = state_doc_find(doc, folder, uid) != NULL;
        struct state_msg *m = state_doc_upsert(doc, folder, uid);

        ck_assert_ptr_nonnull(m);
        ck_assert_uint_eq(m->folder, folder);
        ck_assert_uint_eq(m->uid, uid);
        m->size = (uint64_t)folder << 32 | uid;
        n += !existed;
    }
    ck_assert_uint_eq(doc->nmsgs, n);
    for (size_t i = 0; i < doc->nmsgs; i++) {
        ck_assert_uint_eq(doc->msgs[i].size,
                          (uint64_t)doc->msgs[i].folder << 32 | doc->msgs[i].uid);
        if (i > 0)
            ck_assert_uint_lt(doc->msgs[i - 1].size, doc->msgs[i].size);
    }
    free(round_trip(doc));
    state_doc_free(&doc);
}
END_TEST

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

START_TEST(test_big_document)
{
    struct state_doc *doc, *back = NULL;
    const char *error = NULL;
    double t0, t_build, t_ser[BIG_RUNS], t_parse[BIG_RUNS], best_ser = 1e9, best_parse = 1e9;
    size_t len = 0;
    char *json = NULL;

    if (getenv("POPGATE_BIG_TESTS") == NULL || strcmp(getenv("POPGATE_BIG_TESTS"), "1") != 0)
        return;
    t0 = now_s();
    doc = state_doc_new("big@example.net", 15);
    ck_assert_int_eq(state_doc_folder(doc, "INBOX"), 0);
    doc->folders[0].uidvalidity = 1600000000;
    for (uint32_t uid = 1; uid <= BIG_MESSAGES; uid++) {
        struct state_msg *m = state_doc_upsert(doc, 0, uid);

        if (m == NULL) /* not ck_assert: it records every call, which would be the timing */
            ck_abort_msg("upsert %u failed", uid);
        uidl_default(m->uidl, uid, 1600000000);
        m->size = 1000 + uid % 100000;
        m->msgid_hash = 0x9e3779b97f4a7c15ull * uid;
        m->real_size = uid % 10 == 0 ? m->size + 2 : 0;
        m->hidden = uid % 7 == 0;
    }
    t_build = now_s() - t0;

    /* The first run pays for fresh heap pages; the best run measures the code. */
    for (int run = 0; run < BIG_RUNS; run++) {
        free(json);
        t0 = now_s();
        json = state_doc_serialize(doc, &len);
        t_ser[run] = now_s() - t0;
        ck_assert_ptr_nonnull(json);

        state_doc_free(&back);
        t0 = now_s();
        ck_assert_int_eq(state_doc_parse(json, len, &back, &error), 0);
        t_parse[run] = now_s() - t0;
        best_ser = t_ser[run] < best_ser ? t_ser[run] : best_ser;
        best_parse = t_parse[run] < best_parse ? t_parse[run] : best_parse;
    }
    assert_docs_equal(doc, back);

    printf("state big document: %d messages, %zu bytes; upsert in order %.3f s; serialize "
           "%.3f %.3f %.3f s; parse %.3f %.3f %.3f s%s\n",
           BIG_MESSAGES, len, t_build, t_ser[0], t_ser[1], t_ser[2], t_parse[0], t_parse[1],
           t_parse[2], SANITIZED ? " (sanitizers: budget not checked)" : "");
    free(json);
    state_doc_free(&back);
    state_doc_free(&doc);
    if (!SANITIZED) {
        ck_assert_msg(best_ser < BIG_BUDGET_S, "serialize took %.3f s", best_ser);
        ck_assert_msg(best_parse < BIG_BUDGET_S, "parse took %.3f s", best_parse);
    }
}
END_TEST

static Suite *state_suite(void)
{
    Suite *s = suite_create("state");
    TCase *tc = tcase_create("document");
    TCase *big = tcase_create("big");

    tcase_add_test(tc, test_new);
    tcase_add_test(tc, test_round_trip_exact_bytes);
    tcase_add_test(tc, test_round_trip_empty_and_extremes);
    tcase_add_test(tc, test_round_trip_escapes);
    tcase_add_test(tc, test_parse_example_and_defaults);
    tcase_add_test(tc, test_spellings);
    tcase_add_test(tc, test_unknown_x_keys);
    tcase_add_test(tc, test_version);
    tcase_add_loop_test(tc, test_top_errors, 0, sizeof(top_errors) / sizeof(top_errors[0]));
    tcase_add_test(tc, test_folder_name_too_long);
    tcase_add_loop_test(tc, test_message_errors, 0, sizeof(msg_errors) / sizeof(msg_errors[0]));
    tcase_add_loop_test(tc, test_legacy_errors, 0,
                        sizeof(legacy_errors) / sizeof(legacy_errors[0]));
    tcase_add_test(tc, test_unsorted_messages_are_sorted);
    tcase_add_test(tc, test_serialize_refuses_invalid);
    tcase_add_test(tc, test_folders);
    tcase_add_test(tc, test_upsert_find_prune);
    tcase_add_test(tc, test_upsert_after_replaced_msgs);
    tcase_add_test(tc, test_upsert_random_order);
    suite_add_tcase(s, tc);
    tcase_add_test(big, test_big_document);
    tcase_set_timeout(big, 60);
    suite_add_tcase(s, big);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(state_suite());
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
