/* Tests of route_lookup: an exact user route wins over the default, whatever the order. */
#include "route.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static struct config_upstream upstreams[] = {
    {.name = (char *)"imap1"},
    {.name = (char *)"imap2"},
};

#define DEFAULT_ROUTE(u)                                                                           \
    {                                                                                              \
        .is_default = true, .upstream_name = (char *)(u)->name, .upstream = (u)                    \
    }
#define USER_ROUTE(login, u)                                                                       \
    {                                                                                              \
        .user = (char *)(login), .upstream_name = (char *)(u)->name, .upstream = (u)               \
    }

static struct config config_with(struct config_route *routes, size_t n)
{
    return (struct config){.upstreams = upstreams, .nupstreams = 2, .routes = routes, .nroutes = n};
}

START_TEST(test_user_beats_default_listed_first)
{
    struct config_route routes[] = {
        DEFAULT_ROUTE(&upstreams[0]),
        USER_ROUTE("bob@example.com", &upstreams[1]),
        USER_ROUTE("alice@example.com", &upstreams[0]),
    };
    struct config cfg = config_with(routes, 3);
    ck_assert_ptr_eq(route_lookup(&cfg, "bob@example.com"), &routes[1]);
    ck_assert_ptr_eq(route_lookup(&cfg, "bob@example.com")->upstream, &upstreams[1]);
    ck_assert_ptr_eq(route_lookup(&cfg, "alice@example.com"), &routes[2]);
    ck_assert_ptr_eq(route_lookup(&cfg, "carol@example.com"), &routes[0]);
}
END_TEST

START_TEST(test_user_beats_default_listed_last)
{
    struct config_route routes[] = {
        USER_ROUTE("bob@example.com", &upstreams[1]),
        DEFAULT_ROUTE(&upstreams[0]),
    };
    struct config cfg = config_with(routes, 2);
    ck_assert_ptr_eq(route_lookup(&cfg, "bob@example.com"), &routes[0]);
    ck_assert_ptr_eq(route_lookup(&cfg, "carol@example.com"), &routes[1]);
}
END_TEST

START_TEST(test_no_default)
{
    struct config_route routes[] = {
        USER_ROUTE("bob@example.com", &upstreams[1]),
    };
    struct config cfg = config_with(routes, 1);
    ck_assert_ptr_eq(route_lookup(&cfg, "bob@example.com"), &routes[0]);
    ck_assert_ptr_null(route_lookup(&cfg, "carol@example.com"));
    ck_assert_ptr_null(route_lookup(&cfg, ""));
}
END_TEST

/* The compare is exact for now: no case folding, no trimming, no prefix match. */
START_TEST(test_exact_match_only)
{
    struct config_route routes[] = {
        USER_ROUTE("bob@example.com", &upstreams[1]),
        DEFAULT_ROUTE(&upstreams[0]),
    };
    struct config cfg = config_with(routes, 2);
    const char *near_misses[] = {
        "Bob@example.com", "bob@EXAMPLE.COM",  "bob", "bob@example.com ", " bob@example.com",
        "bob@example.co",  "bob@example.comx", ""};
    for (size_t i = 0; i < sizeof(near_misses) / sizeof(near_misses[0]); i++)
        ck_assert_msg(route_lookup(&cfg, near_misses[i]) == &routes[1],
                      "\"%s\" did not fall to the default route", near_misses[i]);
}
END_TEST

START_TEST(test_null_arguments)
{
    struct config_route routes[] = {DEFAULT_ROUTE(&upstreams[0])};
    struct config cfg = config_with(routes, 1);
    ck_assert_ptr_null(route_lookup(NULL, "bob"));
    ck_assert_ptr_null(route_lookup(&cfg, NULL));
    struct config empty = config_with(NULL, 0);
    ck_assert_ptr_null(route_lookup(&empty, "bob"));
}
END_TEST

/* The same precedence through a loaded file. */
START_TEST(test_loaded_config)
{
    char path[] = "/tmp/popgate-test-route-XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    FILE *f = fdopen(fd, "w");
    ck_assert_ptr_nonnull(f);
    fputs("{\"listeners\": [{\"address\": \"127.0.0.1:1110\"}],\n"
          " \"upstreams\": {\"imap1\": {\"host\": \"127.0.0.1\"},\n"
          "               \"imap2\": {\"host\": \"127.0.0.1\", \"port\": 10143}},\n"
          " \"routes\": [{\"default\": true, \"upstream\": \"imap1\"},\n"
          "            {\"user\": \"bob@example.com\", \"upstream\": \"imap2\"}],\n"
          " \"state\": {\"dir\": \"/var/lib/popgate\"}}\n",
          f);
    ck_assert_int_eq(fclose(f), 0);
    char *errors = NULL;
    struct config *cfg = config_load(path, &errors);
    unlink(path);
    ck_assert_msg(cfg != NULL, "%s", errors);

    const struct config_route *r = route_lookup(cfg, "bob@example.com");
    ck_assert_ptr_nonnull(r);
    ck_assert_ptr_eq(r->upstream, config_upstream_find(cfg, "imap2"));
    ck_assert_uint_eq(r->upstream->port, 10143);
    r = route_lookup(cfg, "BOB@example.com");
    ck_assert_ptr_nonnull(r);
    ck_assert(r->is_default);
    ck_assert_ptr_eq(r->upstream, config_upstream_find(cfg, "imap1"));
    config_free(&cfg);
}
END_TEST

static Suite *route_suite(void)
{
    Suite *s = suite_create("route");
    TCase *tc = tcase_create("lookup");
    tcase_add_test(tc, test_user_beats_default_listed_first);
    tcase_add_test(tc, test_user_beats_default_listed_last);
    tcase_add_test(tc, test_no_default);
    tcase_add_test(tc, test_exact_match_only);
    tcase_add_test(tc, test_null_arguments);
    tcase_add_test(tc, test_loaded_config);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(route_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
