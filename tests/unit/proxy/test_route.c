/* Tests of route_resolve: precedence (user, user map, domain, glob in file order, default),
 * login templates, case folding, limits, and a glob that must not blow up. */
#include "route.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "user_map.h"

static struct config_upstream upstreams[] = {
    {.name = (char *)"imap1"}, {.name = (char *)"imap2"}, {.name = (char *)"imap3"},
    {.name = (char *)"imap4"}, {.name = (char *)"imap5"},
};
#define IMAP1 (&upstreams[0])
#define IMAP2 (&upstreams[1])
#define IMAP3 (&upstreams[2])
#define IMAP4 (&upstreams[3])
#define IMAP5 (&upstreams[4])

#define DEFAULT_ROUTE(u)                                                                           \
    {                                                                                              \
        .is_default = true, .upstream_name = (char *)(u)->name, .upstream = (u)                    \
    }
#define USER_ROUTE(who, u)                                                                         \
    {                                                                                              \
        .user = (char *)(who), .upstream_name = (char *)(u)->name, .upstream = (u)                 \
    }
#define DOMAIN_ROUTE(dom, u)                                                                       \
    {                                                                                              \
        .domain = (char *)(dom), .upstream_name = (char *)(u)->name, .upstream = (u)               \
    }
#define MATCH_ROUTE(glob, u)                                                                       \
    {                                                                                              \
        .match = (char *)(glob), .upstream_name = (char *)(u)->name, .upstream = (u)               \
    }

static struct config config_with(struct config_route *routes, size_t n)
{
    return (struct config){.upstreams = upstreams,
                           .nupstreams = sizeof(upstreams) / sizeof(upstreams[0]),
                           .routes = routes,
                           .nroutes = n};
}

/* route_resolve on a C string; -1 or 0 as it returns. */
static int resolve(const struct config *cfg, const char *user, struct route_result *r)
{
    return route_resolve(cfg, user, strlen(user), r);
}

/* A user map from text, for cfg's upstreams. */
static struct user_map *map_from(const struct config *cfg, const char *text)
{
    char path[] = "/tmp/popgate-test-route-map-XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    struct user_map *m = user_map_load(path, cfg, NULL, NULL);
    unlink(path);
    ck_assert_ptr_nonnull(m);
    return m;
}

/* Each rule wins over every rule below it, whatever the order in the file. */
START_TEST(test_precedence)
{
    struct config_route routes[] = {
        DEFAULT_ROUTE(IMAP5),
        MATCH_ROUTE("*@example.com", IMAP4),
        DOMAIN_ROUTE("example.com", IMAP3),
        USER_ROUTE("bob@example.com", IMAP1),
    };
    struct config cfg = config_with(routes, 4);
    cfg.user_map = map_from(&cfg, "bob@example.com imap2\nalice@example.com imap2 alice.map\n");
    struct route_result r;

    ck_assert_int_eq(resolve(&cfg, "bob@example.com", &r), 0);
    ck_assert_ptr_eq(r.upstream, IMAP1);
    ck_assert_ptr_eq(r.route, &routes[3]);
    ck_assert_int_eq(r.source, ROUTE_USER);
    ck_assert_str_eq(r.login, "bob@example.com");
    ck_assert_uint_eq(r.login_len, 15);

    ck_assert_int_eq(resolve(&cfg, "alice@example.com", &r), 0);
    ck_assert_ptr_eq(r.upstream, IMAP2);
    ck_assert_ptr_null(r.route);
    ck_assert_int_eq(r.source, ROUTE_USER_MAP);
    ck_assert_str_eq(r.login, "alice.map");

    ck_assert_int_eq(resolve(&cfg, "carol@example.com", &r), 0);
    ck_assert_ptr_eq(r.upstream, IMAP3);
    ck_assert_ptr_eq(r.route, &routes[2]);
    ck_assert_int_eq(r.source, ROUTE_DOMAIN);

    ck_assert_int_eq(resolve(&cfg, "carol@sub.example.com", &r), 0);
    ck_assert_ptr_eq(r.upstream, IMAP5);
    ck_assert_int_eq(r.source, ROUTE_DEFAULT);
    ck_assert_ptr_eq(r.route, &routes[0]);

    /* Without the domain route, the glob takes what it held. */
    routes[2] = (struct config_route)DOMAIN_ROUTE("example.net", IMAP3);
    ck_assert_int_eq(resolve(&cfg, "carol@example.com", &r), 0);
    ck_assert_ptr_eq(r.upstream, IMAP4);
    ck_assert_int_eq(r.source, ROUTE_MATCH);
    ck_assert_ptr_eq(r.route, &routes[1]);

    user_map_free(&cfg.user_map);
}
END_TEST

START_TEST(test_precedence_other_order)
{
    struct config_route routes[] = {
        USER_ROUTE("bob@example.com", IMAP1),
        DOMAIN_ROUTE("example.com", IMAP3),
        MATCH_ROUTE("*", IMAP4),
        DEFAULT_ROUTE(IMAP5),
    };
    struct config cfg = config_with(routes, 4);
    struct route_result r;
    ck_assert_int_eq(resolve(&cfg, "bob@example.com", &r), 0);
    ck_assert_int_eq(r.source, ROUTE_USER);
    ck_assert_int_eq(resolve(&cfg, "x@example.com", &r), 0);
    ck_assert_int_eq(r.source, ROUTE_DOMAIN);
    /* A "*" glob takes everyone else: the default is never reached. */
    ck_assert_int_eq(resolve(&cfg, "x@example.org", &r), 0);
    ck_assert_int_eq(r.source, ROUTE_MATCH);
    ck_assert_int_eq(resolve(&cfg, "nodomain", &r), 0);
    ck_assert_int_eq(r.source, ROUTE_MATCH);
}
END_TEST

/* Globs are tried in file order: the first that matches wins, not the most specific. */
START_TEST(test_globs_in_file_order)
{
    struct config_route routes[] = {
        MATCH_ROUTE("*@*.example.org", IMAP1),
        MATCH_ROUTE("*@mx.example.org", IMAP2),
        MATCH_ROUTE("a*", IMAP3),
        MATCH_ROUTE("*", IMAP4),
    };
    struct config cfg = config_with(routes, 4);
    struct route_result r;
    ck_assert_int_eq(resolve(&cfg, "bob@mx.example.org", &r), 0);
    ck_assert_ptr_eq(r.route, &routes[0]);
    ck_assert_int_eq(resolve(&cfg, "alice@example.org", &r), 0);
    ck_assert_ptr_eq(r.route, &routes[2]);
    ck_assert_int_eq(resolve(&cfg, "bob@example.org", &r), 0);
    ck_assert_ptr_eq(r.route, &routes[3]);
}
END_TEST

/* The domain is what follows the LAST "@"; a name without one has none. */
START_TEST(test_domain_part)
{
    struct config_route routes[] = {
        DOMAIN_ROUTE("example.com", IMAP1),
        DOMAIN_ROUTE("relay.example.com", IMAP2),
        DEFAULT_ROUTE(IMAP5),
    };
    struct config cfg = config_with(routes, 3);
    struct route_result r;
    ck_assert_int_eq(resolve(&cfg, "bob@example.com", &r), 0);
    ck_assert_ptr_eq(r.upstream, IMAP1);
    ck_assert_int_eq(resolve(&cfg, "bob@example.com@relay.example.com", &r), 0);
    ck_assert_ptr_eq(r.upstream, IMAP2);
    ck_assert_int_eq(resolve(&cfg, "example.com", &r), 0);
    ck_assert_int_eq(r.source, ROUTE_DEFAULT);
    ck_assert_int_eq(resolve(&cfg, "bob@", &r), 0);
    ck_assert_int_eq(r.source, ROUTE_DEFAULT);
    ck_assert_int_eq(resolve(&cfg, "bob@sub.example.com", &r), 0);
    ck_assert_int_eq(r.source, ROUTE_DEFAULT);
    ck_assert_int_eq(resolve(&cfg, "bob@example.com.", &r), 0);
    ck_assert_int_eq(r.source, ROUTE_DEFAULT);
}
END_TEST

/* User, domain, glob and user map all ignore ASCII case; the login keeps the case typed. */
START_TEST(test_case_insensitive)
{
    struct config_route routes[] = {
        USER_ROUTE("Bob@Example.com", IMAP1),
        DOMAIN_ROUTE("Example.NET", IMAP2),
        MATCH_ROUTE("*@*.EXAMPLE.org", IMAP3),
    };
    struct config cfg = config_with(routes, 3);
    cfg.user_map = map_from(&cfg, "Carol@Example.COM imap4\n");
    struct route_result r;
    ck_assert_int_eq(resolve(&cfg, "BOB@EXAMPLE.COM", &r), 0);
    ck_assert_ptr_eq(r.upstream, IMAP1);
    ck_assert_str_eq(r.login, "BOB@EXAMPLE.COM");
    ck_assert_int_eq(resolve(&cfg, "dave@example.net", &r), 0);
    ck_assert_ptr_eq(r.upstream, IMAP2);
    ck_assert_int_eq(resolve(&cfg, "Eve@MX.example.ORG", &r), 0);
    ck_assert_ptr_eq(r.upstream, IMAP3);
    ck_assert_str_eq(r.login, "Eve@MX.example.ORG");
    ck_assert_int_eq(resolve(&cfg, "carol@example.com", &r), 0);
    ck_assert_ptr_eq(r.upstream, IMAP4);
    /* Without a login column, the login is the user as typed, not as the map spells it. */
    ck_assert_str_eq(r.login, "carol@example.com");
    /* Only ASCII folds: bytes of other letters compare exactly. */
    struct config_route u8[] = {USER_ROUTE("\xc3\xa9ve", IMAP1)};
    struct config cfg8 = config_with(u8, 1);
    ck_assert_int_eq(resolve(&cfg8, "\xc3\xa9ve", &r), 0);
    ck_assert_int_eq(resolve(&cfg8, "\xc3\x89ve", &r), -1);
    ck_assert_int_eq(resolve(&cfg8, "\xc3\xa9VE", &r), 0);
    user_map_free(&cfg.user_map);
}
END_TEST

/* Near misses do not match a user route: no prefix, no trimming. */
START_TEST(test_user_exact_bytes)
{
    struct config_route routes[] = {
        USER_ROUTE("bob@example.com", IMAP1),
        DEFAULT_ROUTE(IMAP5),
    };
    struct config cfg = config_with(routes, 2);
    const char *near_misses[] = {"bob", "bob@example.com ", " bob@example.com", "bob@example.co",
                                 "bob@example.comx"};
    struct route_result r;
    for (size_t i = 0; i < sizeof(near_misses) / sizeof(near_misses[0]); i++) {
        ck_assert_int_eq(resolve(&cfg, near_misses[i], &r), 0);
        ck_assert_msg(r.upstream == IMAP5, "\"%s\" did not fall to the default", near_misses[i]);
    }
    /* An empty name would log in as nobody: refused even with a default route. */
    ck_assert_int_eq(resolve(&cfg, "", &r), -1);
    /* The length given is what counts, not a NUL further on. */
    ck_assert_int_eq(route_resolve(&cfg, "bob@example.comXYZ", 15, &r), 0);
    ck_assert_ptr_eq(r.upstream, IMAP1);
    ck_assert_str_eq(r.login, "bob@example.com");
}
END_TEST

START_TEST(test_no_route)
{
    struct config_route routes[] = {
        USER_ROUTE("bob@example.com", IMAP1),
        DOMAIN_ROUTE("example.com", IMAP2),
        MATCH_ROUTE("*@example.org", IMAP3),
    };
    struct config cfg = config_with(routes, 3);
    struct route_result r;
    ck_assert_int_eq(resolve(&cfg, "carol@example.net", &r), -1);
    ck_assert_int_eq(resolve(&cfg, "carol", &r), -1);
    ck_assert_int_eq(resolve(&cfg, "", &r), -1);
    struct config empty = config_with(NULL, 0);
    ck_assert_int_eq(resolve(&empty, "bob@example.com", &r), -1);
}
END_TEST

START_TEST(test_null_arguments)
{
    struct config_route routes[] = {DEFAULT_ROUTE(IMAP1)};
    struct config cfg = config_with(routes, 1);
    struct route_result r;
    ck_assert_int_eq(route_resolve(NULL, "bob", 3, &r), -1);
    ck_assert_int_eq(route_resolve(&cfg, NULL, 0, &r), -1);
    ck_assert_int_eq(route_resolve(&cfg, "bob", 3, NULL), -1);
}
END_TEST

/* Templates: each placeholder, with and without an "@", and lower-casing. */
START_TEST(test_templates)
{
    static const struct {
        const char *tmpl;
        bool lowercase;
        const char *user;
        const char *login; /* NULL: refused */
    } cases[] = {
        {NULL, false, "Bob@Example.com", "Bob@Example.com"},
        {"%u", false, "Bob@Example.com", "Bob@Example.com"},
        {"%n", false, "Bob@Example.com", "Bob"},
        {"%d", false, "Bob@Example.com", "Example.com"},
        {"%n@corp.example", false, "Bob@Example.com", "Bob@corp.example"},
        {"%d\\%n", false, "bob@example.com", "example.com\\bob"},
        {"%n%%%d", false, "bob@example.com", "bob%example.com"},
        {"%%u", false, "bob@example.com", "%u"},
        {"%u/%u", false, "a@b", "a@b/a@b"},
        {"user-%n", true, "Bob@Example.com", "user-bob"},
        {"%u", true, "Bob@Example.COM", "bob@example.com"},
        {"%u", true, "\xc3\x89VE", "\xc3\x89ve"},
        {"static", false, "anyone", "static"},
        /* Without "@": %n is the whole name, %d is empty. */
        {"%n", false, "bob", "bob"},
        {"%n+%d", false, "bob", "bob+"},
        /* The last "@" splits. */
        {"%n", false, "a@b@c", "a@b"},
        {"%d", false, "a@b@c", "c"},
        {"[%n][%d]", false, "@", "[][]"},
        /* A login that comes out empty is refused, not sent. */
        {"%d", false, "bob", NULL},
        {"%n", false, "@example.com", NULL},
        /* A placeholder config_load refuses is refused here too. */
        {"%x", false, "bob", NULL},
        {"bob%", false, "bob", NULL},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct config_route routes[] = {{.is_default = true,
                                         .login = (char *)cases[i].tmpl,
                                         .lowercase = cases[i].lowercase,
                                         .upstream_name = (char *)"imap1",
                                         .upstream = IMAP1}};
        struct config cfg = config_with(routes, 1);
        struct route_result r;
        int rc = resolve(&cfg, cases[i].user, &r);
        if (cases[i].login == NULL) {
            ck_assert_msg(rc == -1, "case %zu: \"%s\" gave \"%s\"", i, cases[i].tmpl, r.login);
            continue;
        }
        ck_assert_msg(rc == 0, "case %zu refused", i);
        ck_assert_msg(strcmp(r.login, cases[i].login) == 0, "case %zu: got \"%s\", expected \"%s\"",
                      i, r.login, cases[i].login);
        ck_assert_uint_eq(r.login_len, strlen(cases[i].login));
    }
}
END_TEST

/* A login is at most ROUTE_LOGIN_MAX bytes, whichever way it is made. */
START_TEST(test_login_limit)
{
    char user[ROUTE_LOGIN_MAX + 2];
    memset(user, 'a', sizeof(user));
    user[ROUTE_LOGIN_MAX + 1] = '\0';
    struct config_route routes[] = {{.is_default = true, .upstream = IMAP1}};
    struct config cfg = config_with(routes, 1);
    struct route_result r;
    ck_assert_int_eq(route_resolve(&cfg, user, ROUTE_LOGIN_MAX, &r), 0);
    ck_assert_uint_eq(r.login_len, ROUTE_LOGIN_MAX);
    ck_assert_uint_eq(strlen(r.login), ROUTE_LOGIN_MAX);
    ck_assert_int_eq(route_resolve(&cfg, user, ROUTE_LOGIN_MAX + 1, &r), -1);

    routes[0].login = (char *)"%u%u";
    ck_assert_int_eq(route_resolve(&cfg, user, ROUTE_LOGIN_MAX / 2, &r), 0);
    ck_assert_uint_eq(r.login_len, ROUTE_LOGIN_MAX);
    ck_assert_int_eq(route_resolve(&cfg, user, ROUTE_LOGIN_MAX / 2 + 1, &r), -1);

    /* A user map line without a login sends the user: the same limit. */
    routes[0].login = NULL;
    char text[ROUTE_LOGIN_MAX + 64];
    snprintf(text, sizeof(text), "%.*s imap2\n", ROUTE_LOGIN_MAX, user);
    cfg.user_map = map_from(&cfg, text);
    ck_assert_int_eq(route_resolve(&cfg, user, ROUTE_LOGIN_MAX, &r), 0);
    ck_assert_int_eq(r.source, ROUTE_USER_MAP);
    ck_assert_uint_eq(r.login_len, ROUTE_LOGIN_MAX);
    user_map_free(&cfg.user_map);
}
END_TEST

START_TEST(test_globs)
{
    static const struct {
        const char *glob;
        const char *user;
        bool match;
    } cases[] = {
        {"*", "", true},
        {"*", "anything", true},
        {"**", "x", true},
        {"?", "", false},
        {"?", "a", true},
        {"?", "ab", false},
        {"a?c", "abc", true},
        {"a?c", "ac", false},
        {"a*", "a", true},
        {"a*", "ba", false},
        {"*a", "ba", true},
        {"*a", "ab", false},
        {"*@*.example.net", "bob@mx.example.net", true},
        {"*@*.example.net", "bob@example.net", false},
        {"*@*.example.net", "bob@a.b.example.net", true},
        {"*@*.example.net", "bob@mx.example.net.evil", false},
        {"b*b", "bob", true},
        {"b*b", "bo", false},
        {"*b*b*", "abcbd", true},
        {"*b*b*", "abcd", false},
        {"user??@x", "user42@x", true},
        {"user??@x", "user4@x", false},
        {"a*b*c", "aXbYbZc", true},
        {"a*b*c", "aXbYbZ", false},
        {"*.*", "nodot", false},
        {"x", "X", true},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct config_route routes[] = {MATCH_ROUTE(cases[i].glob, IMAP1)};
        struct config cfg = config_with(routes, 1);
        struct route_result r;
        /* An empty user is refused for its empty login even when matched, so check the
         * route through a template that is never empty. */
        routes[0].login = (char *)"fixed";
        bool got = resolve(&cfg, cases[i].user, &r) == 0;
        ck_assert_msg(got == cases[i].match, "\"%s\" vs \"%s\": expected %s", cases[i].glob,
                      cases[i].user, cases[i].match ? "a match" : "none");
    }
}
END_TEST

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* A backtracking matcher takes exponential time on this; ours is linear in each length. */
START_TEST(test_hostile_glob)
{
    static const char *const globs[] = {"*a*a*a*a*a*a*b", "*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b",
                                        "a*a*a*a*a*a*a*a*a*a*a*a*?b", "*?*?*?*?*?*?*?*?*?*?*b"};
    size_t n = 200000;
    char *user = malloc(n + 1);
    ck_assert_ptr_nonnull(user);
    memset(user, 'a', n);
    user[n] = '\0';
    double start = now();
    for (size_t i = 0; i < sizeof(globs) / sizeof(globs[0]); i++) {
        struct config_route routes[] = {MATCH_ROUTE(globs[i], IMAP1), DEFAULT_ROUTE(IMAP2)};
        routes[0].login = routes[1].login = (char *)"x";
        struct config cfg = config_with(routes, 2);
        struct route_result r;
        ck_assert_int_eq(route_resolve(&cfg, user, n, &r), 0);
        ck_assert_int_eq(r.source, ROUTE_DEFAULT);
        /* And it still matches when it should. */
        user[n - 1] = 'b';
        ck_assert_int_eq(route_resolve(&cfg, user, n, &r), 0);
        ck_assert_int_eq(r.source, ROUTE_MATCH);
        user[n - 1] = 'a';
    }
    double took = now() - start;
    ck_assert_msg(took < 2.0, "hostile globs took %.2f s", took);
    free(user);
}
END_TEST

START_TEST(test_source_names)
{
    ck_assert_str_eq(route_source_name(ROUTE_USER), "user");
    ck_assert_str_eq(route_source_name(ROUTE_USER_MAP), "user_map");
    ck_assert_str_eq(route_source_name(ROUTE_DOMAIN), "domain");
    ck_assert_str_eq(route_source_name(ROUTE_MATCH), "match");
    ck_assert_str_eq(route_source_name(ROUTE_DEFAULT), "default");
}
END_TEST

/* r->mapping is the matched route's settings, or the top level's for a user_map line. */
START_TEST(test_mapping_by_source)
{
    struct config_route routes[] = {
        DEFAULT_ROUTE(IMAP5),
        MATCH_ROUTE("*@example.org", IMAP4),
        DOMAIN_ROUTE("example.com", IMAP3),
        USER_ROUTE("bob@example.com", IMAP1),
    };
    for (size_t i = 0; i < 4; i++)
        routes[i].mapping.login_delay = (uint32_t)(i + 1);
    struct config cfg = config_with(routes, 4);
    cfg.mapping.on_delete = CONFIG_DELETE_HIDE;
    cfg.user_map = map_from(&cfg, "alice@example.com imap2\n");
    struct route_result r;

    ck_assert_int_eq(resolve(&cfg, "bob@example.com", &r), 0);
    ck_assert_int_eq(r.source, ROUTE_USER);
    ck_assert_ptr_eq(r.mapping, &routes[3].mapping);

    ck_assert_int_eq(resolve(&cfg, "alice@example.com", &r), 0);
    ck_assert_int_eq(r.source, ROUTE_USER_MAP);
    ck_assert_ptr_eq(r.mapping, &cfg.mapping);
    ck_assert_int_eq(r.mapping->on_delete, CONFIG_DELETE_HIDE);

    ck_assert_int_eq(resolve(&cfg, "carol@example.com", &r), 0);
    ck_assert_int_eq(r.source, ROUTE_DOMAIN);
    ck_assert_ptr_eq(r.mapping, &routes[2].mapping);

    ck_assert_int_eq(resolve(&cfg, "carol@example.org", &r), 0);
    ck_assert_int_eq(r.source, ROUTE_MATCH);
    ck_assert_ptr_eq(r.mapping, &routes[1].mapping);

    ck_assert_int_eq(resolve(&cfg, "carol@example.net", &r), 0);
    ck_assert_int_eq(r.source, ROUTE_DEFAULT);
    ck_assert_ptr_eq(r.mapping, &routes[0].mapping);
    ck_assert_uint_eq(r.mapping->login_delay, 1);

    /* No match leaves no settings behind from an earlier call. */
    struct config none = config_with(routes + 1, 1);
    ck_assert_int_eq(resolve(&none, "carol@example.net", &r), -1);
    ck_assert_ptr_null(r.mapping);

    user_map_free(&cfg.user_map);
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
          "            {\"match\": \"*@*.example.com\", \"upstream\": \"imap2\",\n"
          "             \"login\": \"%n\", \"lowercase\": true},\n"
          "            {\"user\": \"bob@example.com\", \"upstream\": \"imap2\",\n"
          "             \"mapping\": {\"on_delete\": \"move:Trash\"}}],\n"
          " \"mapping\": {\"uidl_format\": \"%u-%v\", \"on_retr\": \"seen\"},\n"
          " \"state\": {\"dir\": \"/var/lib/popgate\"}}\n",
          f);
    ck_assert_int_eq(fclose(f), 0);
    char *errors = NULL;
    struct config *cfg = config_load(path, &errors);
    unlink(path);
    ck_assert_msg(cfg != NULL, "%s", errors);

    struct route_result r;
    ck_assert_int_eq(resolve(cfg, "BOB@example.com", &r), 0);
    ck_assert_ptr_eq(r.route, &cfg->routes[2]);
    ck_assert_ptr_eq(r.upstream, config_upstream_find(cfg, "imap2"));
    ck_assert_uint_eq(r.upstream->port, 10143);
    ck_assert_str_eq(r.login, "BOB@example.com");
    ck_assert_ptr_eq(r.mapping, &cfg->routes[2].mapping);
    ck_assert_int_eq(r.mapping->on_delete, CONFIG_DELETE_MOVE);
    ck_assert_str_eq(r.mapping->on_delete_arg, "Trash");
    ck_assert_str_eq(r.mapping->uidl_format, "%u-%v");
    ck_assert(r.mapping->on_retr_seen);
    ck_assert_int_eq(resolve(cfg, "Carol@mx.example.com", &r), 0);
    ck_assert_int_eq(r.source, ROUTE_MATCH);
    ck_assert_str_eq(r.login, "carol");
    ck_assert_int_eq(resolve(cfg, "carol@example.com", &r), 0);
    ck_assert(r.route->is_default);
    ck_assert_ptr_eq(r.mapping, &cfg->routes[0].mapping);
    ck_assert_int_eq(r.mapping->on_delete, CONFIG_DELETE_EXPUNGE);
    ck_assert_str_eq(r.mapping->uidl_format, "%u-%v");
    ck_assert_ptr_eq(r.upstream, config_upstream_find(cfg, "imap1"));
    config_free(&cfg);
}
END_TEST

static Suite *route_suite(void)
{
    Suite *s = suite_create("route");
    TCase *tc = tcase_create("resolve");
    tcase_add_test(tc, test_precedence);
    tcase_add_test(tc, test_precedence_other_order);
    tcase_add_test(tc, test_mapping_by_source);
    tcase_add_test(tc, test_globs_in_file_order);
    tcase_add_test(tc, test_domain_part);
    tcase_add_test(tc, test_case_insensitive);
    tcase_add_test(tc, test_user_exact_bytes);
    tcase_add_test(tc, test_no_route);
    tcase_add_test(tc, test_null_arguments);
    tcase_add_test(tc, test_templates);
    tcase_add_test(tc, test_login_limit);
    tcase_add_test(tc, test_globs);
    tcase_add_test(tc, test_hostile_glob);
    tcase_add_test(tc, test_source_names);
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
