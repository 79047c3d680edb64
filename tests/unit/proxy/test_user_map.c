/* Tests of the user map: lines and lookups, case folding, every error with its exact line,
 * the cap on error lines, and (with POPGATE_BIG_TESTS=1) one million lines against the
 * time and memory bounds. */
#include "user_map.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "route.h"

static char test_dir[] = "/tmp/popgate-test-user-map-XXXXXX";

static struct config_upstream upstreams[] = {
    {.name = (char *)"imap1"},
    {.name = (char *)"imap2"},
};
static const struct config cfg = {
    .path = (char *)"popgate.json", .upstreams = upstreams, .nupstreams = 2};

/* The error lines of one load, joined with "\n", and the errors they stand for. */
struct sink {
    char text[16384];
    size_t len;
    unsigned errors;
    unsigned lines;
};

static void sink_cb(void *ctx, const char *line, unsigned count)
{
    struct sink *s = ctx;
    int n = snprintf(s->text + s->len, sizeof(s->text) - s->len, "%s\n", line);
    ck_assert_int_gt(n, 0);
    ck_assert_uint_lt(s->len + (size_t)n, sizeof(s->text));
    s->len += (size_t)n;
    s->errors += count;
    s->lines++;
    ck_assert_ptr_null(strchr(line, '\n'));
}

static void write_bytes(const char *name, const char *text, size_t len)
{
    FILE *f = fopen(name, "w");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(text, 1, len, f), len);
    ck_assert_int_eq(fclose(f), 0);
}

static struct user_map *load_text(const char *text, struct sink *s)
{
    memset(s, 0, sizeof(*s));
    write_bytes("users.map", text, strlen(text));
    return user_map_load("users.map", &cfg, sink_cb, s);
}

static const struct user_map_entry *find(const struct user_map *m, const char *user)
{
    return user_map_find(m, user, strlen(user));
}

START_TEST(test_lines)
{
    struct sink s;
    struct user_map *m = load_text("# user upstream [login]\n"
                                   "alice@example.com imap1\n"
                                   "\n"
                                   "bob@example.com\timap2\t\tbob.smith\n"
                                   "   # an indented comment\n"
                                   "  carol   imap1   CAROL@corp  \r\n"
                                   " \t \n"
                                   "\r\n"
                                   "dave imap2",
                                   &s);
    ck_assert_msg(m != NULL, "%s", s.text);
    ck_assert_uint_eq(s.lines, 0);
    ck_assert_uint_eq(user_map_count(m), 4);

    const struct user_map_entry *e = find(m, "alice@example.com");
    ck_assert_ptr_nonnull(e);
    ck_assert_ptr_eq(e->upstream, &upstreams[0]);
    ck_assert_ptr_null(e->login);
    ck_assert_uint_eq(e->login_len, 0);

    e = find(m, "bob@example.com");
    ck_assert_ptr_nonnull(e);
    ck_assert_ptr_eq(e->upstream, &upstreams[1]);
    ck_assert_str_eq(e->login, "bob.smith");
    ck_assert_uint_eq(e->login_len, 9);

    /* Blanks around fields and a CRLF ending are not part of any field. */
    e = find(m, "carol");
    ck_assert_ptr_nonnull(e);
    ck_assert_str_eq(e->login, "CAROL@corp");
    ck_assert_uint_eq(e->login_len, 10);

    /* The last line needs no LF. */
    e = find(m, "dave");
    ck_assert_ptr_nonnull(e);
    ck_assert_ptr_eq(e->upstream, &upstreams[1]);

    ck_assert_ptr_null(find(m, "eve"));
    ck_assert_ptr_null(find(m, ""));
    ck_assert_ptr_null(find(m, "alice@example.co"));
    ck_assert_ptr_null(find(m, "alice@example.comm"));
    ck_assert_ptr_null(find(m, "# user"));
    /* Lengths count, not NULs. */
    ck_assert_ptr_nonnull(user_map_find(m, "daveXYZ", 4));
    ck_assert_ptr_null(user_map_find(m, "dave", 3));
    user_map_free(&m);
    ck_assert_ptr_null(m);
    user_map_free(&m);
    user_map_free(NULL);
}
END_TEST

START_TEST(test_case_folding)
{
    struct sink s;
    struct user_map *m = load_text("Alice@Example.COM imap1 Alice\n"
                                   "\xc3\xa9ve imap2\n",
                                   &s);
    ck_assert_msg(m != NULL, "%s", s.text);
    const char *spellings[] = {"alice@example.com", "ALICE@EXAMPLE.COM", "Alice@Example.COM",
                               "aLiCe@eXaMpLe.CoM"};
    for (size_t i = 0; i < 4; i++) {
        const struct user_map_entry *e = find(m, spellings[i]);
        ck_assert_msg(e != NULL, "%s not found", spellings[i]);
        /* The login is kept as written. */
        ck_assert_str_eq(e->login, "Alice");
    }
    /* ASCII only: other letters compare as bytes. */
    ck_assert_ptr_nonnull(find(m, "\xc3\xa9ve"));
    ck_assert_ptr_nonnull(find(m, "\xc3\xa9VE"));
    ck_assert_ptr_null(find(m, "\xc3\x89ve"));
    user_map_free(&m);
}
END_TEST

START_TEST(test_empty_file)
{
    struct sink s;
    struct user_map *m = load_text("", &s);
    ck_assert_ptr_nonnull(m);
    ck_assert_uint_eq(user_map_count(m), 0);
    ck_assert_ptr_null(find(m, "alice"));
    user_map_free(&m);
    m = load_text("# nobody yet\n\n", &s);
    ck_assert_ptr_nonnull(m);
    ck_assert_uint_eq(user_map_count(m), 0);
    user_map_free(&m);
    ck_assert_ptr_null(user_map_find(NULL, "alice", 5));
    ck_assert_uint_eq(user_map_count(NULL), 0);
}
END_TEST

#define FORM "(expected \"USER UPSTREAM [LOGIN]\")"

/* Every kind of bad line, each reported with its line number; nothing loads. */
START_TEST(test_errors)
{
    char long_user[ROUTE_LOGIN_MAX + 2];
    memset(long_user, 'u', sizeof(long_user));
    long_user[ROUTE_LOGIN_MAX + 1] = '\0';
    char text[4096];
    snprintf(text, sizeof(text),
             "alice imap1\n"
             "bob\n"
             "carol imap9\n"
             "dave imap1 dave extra\n"
             "ALICE imap2\n"
             "%s imap1\n"
             "erin imap1 %s\n"
             "fr\x01"
             "ank imap1\n"
             "gina imap1\rx\n"
             "hugo\x7f imap1\n"
             "   lonely   \n"
             "ivan imap1 \"quoted\\\"\" x y\n"
             "%.*s imap2 %.*s\n",
             long_user, long_user, ROUTE_LOGIN_MAX, long_user, ROUTE_LOGIN_MAX, long_user);
    struct sink s;
    ck_assert_ptr_null(load_text(text, &s));
    const char *expected =
        "users.map:2: missing upstream column " FORM "\n"
        "users.map:3: unknown upstream \"imap9\" (defined: imap1, imap2)\n"
        "users.map:4: too many columns, got 4 " FORM "\n"
        "users.map:5: duplicate user \"ALICE\" (the first is on line 1)\n"
        "users.map:6: user "
        "\"uuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuu...\" is longer than "
        "512 bytes\n"
        "users.map:7: login "
        "\"uuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuu...\" is longer than "
        "512 bytes\n"
        "users.map:8: control byte 0x01 (expected printable \"USER UPSTREAM [LOGIN]\")\n"
        "users.map:9: control byte 0x0d (expected printable \"USER UPSTREAM [LOGIN]\")\n"
        "users.map:10: control byte 0x7f (expected printable \"USER UPSTREAM [LOGIN]\")\n"
        "users.map:11: missing upstream column " FORM "\n"
        "users.map:12: too many columns, got 5 " FORM "\n";
    ck_assert_str_eq(s.text, expected);
    ck_assert_uint_eq(s.errors, 11);
    ck_assert_uint_eq(s.lines, 11);
}
END_TEST

/* A NUL byte is a control byte like any other; the line after it still counts. */
START_TEST(test_nul_byte)
{
    static const char text[] = "alice imap1\nb\0b imap1\nbob imap3\n";
    write_bytes("users.map", text, sizeof(text) - 1);
    struct sink s;
    memset(&s, 0, sizeof(s));
    ck_assert_ptr_null(user_map_load("users.map", &cfg, sink_cb, &s));
    ck_assert_str_eq(s.text, "users.map:2: control byte 0x00 (expected printable \"USER UPSTREAM "
                             "[LOGIN]\")\n"
                             "users.map:3: unknown upstream \"imap3\" (defined: imap1, imap2)\n");
}
END_TEST

/* Found values are escaped and cut: an error line is one printable line. */
START_TEST(test_shown_values)
{
    struct sink s;
    ck_assert_ptr_null(
        load_text("a imap\"\\x\n"
                  "b "
                  "iiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiii\n"
                  "c imap1\nC imap1\n",
                  &s));
    ck_assert_str_eq(s.text,
                     "users.map:1: unknown upstream \"imap\\\"\\\\x\" (defined: imap1, imap2)\n"
                     "users.map:2: unknown upstream "
                     "\"iiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiii...\" "
                     "(defined: imap1, imap2)\n"
                     "users.map:4: duplicate user \"C\" (the first is on line 3)\n");
}
END_TEST

/* Exactly ROUTE_LOGIN_MAX bytes is fine. */
START_TEST(test_longest_fields)
{
    char field[ROUTE_LOGIN_MAX + 1];
    memset(field, 'x', ROUTE_LOGIN_MAX);
    field[ROUTE_LOGIN_MAX] = '\0';
    char text[2 * ROUTE_LOGIN_MAX + 32];
    snprintf(text, sizeof(text), "%s imap1 %s\n", field, field);
    struct sink s;
    struct user_map *m = load_text(text, &s);
    ck_assert_msg(m != NULL, "%s", s.text);
    const struct user_map_entry *e = find(m, field);
    ck_assert_ptr_nonnull(e);
    ck_assert_uint_eq(e->login_len, ROUTE_LOGIN_MAX);
    user_map_free(&m);
}
END_TEST

/* After 20 error lines, one line says how many more there were; it stands for them all. */
START_TEST(test_error_cap)
{
    char text[8192];
    size_t len = 0;
    for (int i = 1; i <= 57; i++)
        len += (size_t)snprintf(text + len, sizeof(text) - len, "user%d imap9\n", i);
    struct sink s;
    ck_assert_ptr_null(load_text(text, &s));
    ck_assert_uint_eq(s.lines, USER_MAP_ERRORS_SHOWN + 1);
    ck_assert_uint_eq(s.errors, 57);
    ck_assert_ptr_nonnull(strstr(s.text, "users.map:20: unknown upstream \"imap9\""));
    ck_assert_ptr_null(strstr(s.text, "users.map:21:"));
    const char *last = "users.map: 37 more errors\n";
    ck_assert_str_eq(s.text + s.len - strlen(last), last);

    /* One over the cap: singular. */
    len = 0;
    for (int i = 1; i <= 21; i++)
        len += (size_t)snprintf(text + len, sizeof(text) - len, "u%d\n", i);
    ck_assert_ptr_null(load_text(text, &s));
    last = "users.map: 1 more error\n";
    ck_assert_str_eq(s.text + s.len - strlen(last), last);
    ck_assert_uint_eq(s.errors, 21);

    /* Exactly at the cap: no summary line. */
    len = 0;
    for (int i = 1; i <= 20; i++)
        len += (size_t)snprintf(text + len, sizeof(text) - len, "u%d\n", i);
    ck_assert_ptr_null(load_text(text, &s));
    ck_assert_uint_eq(s.lines, 20);
    ck_assert_uint_eq(s.errors, 20);
}
END_TEST

START_TEST(test_unreadable)
{
    struct sink s;
    memset(&s, 0, sizeof(s));
    ck_assert_ptr_null(user_map_load("missing.map", &cfg, sink_cb, &s));
    ck_assert_str_eq(s.text, "popgate.json: user_map: cannot read \"missing.map\": No such file or "
                             "directory\n");
    ck_assert_uint_eq(s.errors, 1);
    memset(&s, 0, sizeof(s));
    ck_assert_ptr_null(user_map_load(".", &cfg, sink_cb, &s));
    ck_assert_str_eq(s.text, "popgate.json: user_map: cannot read \".\": Is a directory\n");
    /* Without a config path the line starts at the key. */
    struct config bare = cfg;
    bare.path = NULL;
    memset(&s, 0, sizeof(s));
    ck_assert_ptr_null(user_map_load("missing.map", &bare, sink_cb, &s));
    ck_assert_str_eq(s.text, "user_map: cannot read \"missing.map\": No such file or directory\n");
    /* No sink is fine. */
    ck_assert_ptr_null(user_map_load("missing.map", &cfg, NULL, NULL));
    ck_assert_ptr_null(user_map_load(NULL, &cfg, NULL, NULL));
    ck_assert_ptr_null(user_map_load("users.map", NULL, NULL, NULL));
}
END_TEST

/* Many users sharing long prefixes still all land, and none is found twice. */
START_TEST(test_many_users)
{
    size_t n = 20000;
    FILE *f = fopen("users.map", "w");
    ck_assert_ptr_nonnull(f);
    for (size_t i = 0; i < n; i++)
        fprintf(f, "user%zu@a-rather-long-shared-domain.example imap%zu login%zu\n", i, 1 + i % 2,
                i);
    ck_assert_int_eq(fclose(f), 0);
    struct sink s;
    memset(&s, 0, sizeof(s));
    struct user_map *m = user_map_load("users.map", &cfg, sink_cb, &s);
    ck_assert_msg(m != NULL, "%s", s.text);
    ck_assert_uint_eq(user_map_count(m), n);
    for (size_t i = 0; i < n; i++) {
        char user[96], login[32];
        snprintf(user, sizeof(user), "USER%zu@A-Rather-Long-Shared-Domain.example", i);
        snprintf(login, sizeof(login), "login%zu", i);
        const struct user_map_entry *e = find(m, user);
        ck_assert_msg(e != NULL, "%s", user);
        ck_assert_str_eq(e->login, login);
        ck_assert_ptr_eq(e->upstream, &upstreams[i % 2]);
    }
    ck_assert_ptr_null(find(m, "user20000@a-rather-long-shared-domain.example"));
    user_map_free(&m);
}
END_TEST

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Resident set size now, in KiB, from /proc (ru_maxrss only gives the peak). */
static long rss_kib(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long size = 0, resident = 0;
    if (f == NULL)
        return -1;
    if (fscanf(f, "%ld %ld", &size, &resident) != 2)
        resident = -1;
    fclose(f);
    return resident < 0 ? -1 : resident * (sysconf(_SC_PAGESIZE) / 1024);
}

/*
 * One million lines (a third with a login column) must load in under 2 s and 300 MB.
 * Slow and large, so only with POPGATE_BIG_TESTS=1; it prints what it measured.
 */
START_TEST(test_million_lines)
{
    if (getenv("POPGATE_BIG_TESTS") == NULL || strcmp(getenv("POPGATE_BIG_TESTS"), "1") != 0)
        return;
    const size_t n = 1000000;
    FILE *f = fopen("big.map", "w");
    ck_assert_ptr_nonnull(f);
    for (size_t i = 0; i < n; i++) {
        if (i % 3 == 0)
            fprintf(f, "user%07zu@customers.example.net imap%zu u%07zu@mail.internal\n", i,
                    1 + i % 2, i);
        else
            fprintf(f, "user%07zu@customers.example.net imap%zu\n", i, 1 + i % 2);
    }
    long file_size = ftell(f);
    ck_assert_int_eq(fclose(f), 0);

    long rss_before = rss_kib();
    struct rusage ru_before;
    getrusage(RUSAGE_SELF, &ru_before);
    struct sink s;
    memset(&s, 0, sizeof(s));
    double start = now();
    struct user_map *m = user_map_load("big.map", &cfg, sink_cb, &s);
    double load = now() - start;
    long rss_after = rss_kib();
    struct rusage ru_after;
    getrusage(RUSAGE_SELF, &ru_after);
    unlink("big.map");
    ck_assert_msg(m != NULL, "%s", s.text);
    ck_assert_uint_eq(user_map_count(m), n);

    /* Counted, not asserted, inside the loop: a check assertion costs a write each. */
    size_t wrong = 0;
    start = now();
    for (size_t i = 0; i < n; i++) {
        char user[64];
        int len = snprintf(user, sizeof(user), "USER%07zu@Customers.Example.NET", i);
        const struct user_map_entry *e = user_map_find(m, user, (size_t)len);
        if (e == NULL || e->upstream != &upstreams[i % 2] || (e->login != NULL) != (i % 3 == 0))
            wrong++;
    }
    double lookups = now() - start;
    user_map_free(&m);
    ck_assert_uint_eq(wrong, 0);

    double rss_mb = (double)(rss_after - rss_before) / 1024.0;
    double peak_mb = (double)ru_after.ru_maxrss / 1024.0;
    printf("user_map: %zu lines, %.1f MB file: load %.3f s, RSS +%.1f MB (process peak %.1f MB), "
           "%zu lookups %.3f s (%.0f ns each)\n",
           n, (double)file_size / 1e6, load, rss_mb, peak_mb, n, lookups,
           lookups * 1e9 / (double)n);
    fflush(stdout);
    ck_assert_msg(load < 2.0, "loading took %.3f s", load);
    ck_assert_msg(rss_mb < 300.0, "loading took %.1f MB", rss_mb);
}
END_TEST

static Suite *user_map_suite(void)
{
    Suite *s = suite_create("user_map");
    TCase *tc = tcase_create("load");
    tcase_add_test(tc, test_lines);
    tcase_add_test(tc, test_case_folding);
    tcase_add_test(tc, test_empty_file);
    tcase_add_test(tc, test_errors);
    tcase_add_test(tc, test_nul_byte);
    tcase_add_test(tc, test_shown_values);
    tcase_add_test(tc, test_longest_fields);
    tcase_add_test(tc, test_error_cap);
    tcase_add_test(tc, test_unreadable);
    tcase_add_test(tc, test_many_users);
    suite_add_tcase(s, tc);
    tc = tcase_create("big");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_million_lines);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    if (mkdtemp(test_dir) == NULL || chdir(test_dir) != 0) {
        perror(test_dir);
        return EXIT_FAILURE;
    }
    SRunner *sr = srunner_create(user_map_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    unlink("users.map");
    unlink("big.map");
    if (chdir("/") != 0 || rmdir(test_dir) != 0)
        perror(test_dir);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
