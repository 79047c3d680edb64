/* Routing: picks the upstream and the login name that serve a POP3 user. */
#include "route.h"

#include <stdbool.h>
#include <string.h>

#include "user_map.h"

static inline unsigned char fold(unsigned char c)
{
    return c >= 'A' && c <= 'Z' ? (unsigned char)(c + ('a' - 'A')) : c;
}

/* True when the NUL-terminated s equals t[0..n), ignoring ASCII case. */
static bool equal_folded(const char *s, const char *t, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] == '\0' || fold((unsigned char)s[i]) != fold((unsigned char)t[i]))
            return false;
    return s[n] == '\0';
}

/*
 * Matches the NUL-terminated glob pat ("*" any run, "?" one byte, ASCII case ignored)
 * against s[0..n). Iterative with one backtrack point, the last "*": an earlier "*" never
 * needs to take more, since the last one can absorb whatever it would. So a hostile
 * pattern such as "*a*a*a*a*b" costs O(len(pat) * n), never an exponential search.
 */
static bool glob_match(const char *pat, const char *s, size_t n)
{
    size_t p = 0, i = 0;
    size_t star_p = SIZE_MAX, star_i = 0;
    while (i < n) {
        char c = pat[p];
        if (c == '*') {
            star_p = ++p;
            star_i = i;
        } else if (c != '\0' && (c == '?' || fold((unsigned char)c) == fold((unsigned char)s[i]))) {
            p++;
            i++;
        } else if (star_p != SIZE_MAX) {
            p = star_p;
            i = ++star_i;
        } else {
            return false;
        }
    }
    while (pat[p] == '*')
        p++;
    return pat[p] == '\0';
}

static bool append(struct route_result *r, const char *s, size_t n)
{
    if (n > ROUTE_LOGIN_MAX - r->login_len)
        return false;
    memcpy(r->login + r->login_len, s, n);
    r->login_len += n;
    return true;
}

/* Expands tmpl for user into r->login. False when it would exceed ROUTE_LOGIN_MAX, or on a
 * placeholder config_load would have refused (a route built by hand). */
static bool expand(const char *tmpl, bool lowercase, const char *user, size_t user_len,
                   struct route_result *r)
{
    size_t at = user_len;
    for (size_t i = user_len; i > 0; i--) {
        if (user[i - 1] == '@') {
            at = i - 1;
            break;
        }
    }
    const char *domain = at < user_len ? user + at + 1 : "";
    size_t domain_len = at < user_len ? user_len - at - 1 : 0;

    r->login_len = 0;
    for (const char *t = tmpl; *t != '\0'; t++) {
        bool ok;
        if (*t != '%') {
            ok = append(r, t, 1);
        } else {
            switch (*++t) {
            case 'u':
                ok = append(r, user, user_len);
                break;
            case 'n':
                ok = append(r, user, at);
                break;
            case 'd':
                ok = append(r, domain, domain_len);
                break;
            case '%':
                ok = append(r, "%", 1);
                break;
            default:
                ok = false;
                break;
            }
        }
        if (!ok)
            return false;
    }
    if (lowercase)
        for (size_t i = 0; i < r->login_len; i++)
            r->login[i] = (char)fold((unsigned char)r->login[i]);
    r->login[r->login_len] = '\0';
    return true;
}

static int use_route(const struct config_route *route, enum route_source source, const char *user,
                     size_t user_len, struct route_result *r)
{
    r->upstream = route->upstream;
    r->route = route;
    r->source = source;
    r->mapping = &route->mapping;
    if (!expand(route->login != NULL ? route->login : "%u", route->lowercase, user, user_len, r))
        return -1;
    return r->login_len > 0 && r->upstream != NULL ? 0 : -1;
}

/* Route tables in a config file are small and scanned in order; the large populations go
 * in the user map, which is hashed. */
int route_resolve(const struct config *cfg, const char *user, size_t user_len,
                  struct route_result *r)
{
    if (cfg == NULL || user == NULL || r == NULL)
        return -1;
    r->upstream = NULL;
    r->route = NULL;
    r->source = ROUTE_DEFAULT;
    r->mapping = NULL;
    r->login[0] = '\0';
    r->login_len = 0;

    for (size_t i = 0; i < cfg->nroutes; i++) {
        const struct config_route *route = &cfg->routes[i];
        if (route->user != NULL && equal_folded(route->user, user, user_len))
            return use_route(route, ROUTE_USER, user, user_len, r);
    }

    const struct user_map_entry *e = user_map_find(cfg->user_map, user, user_len);
    if (e != NULL) {
        r->upstream = e->upstream;
        r->source = ROUTE_USER_MAP;
        /* A line names no route, so its users get the top-level settings. */
        r->mapping = &cfg->mapping;
        const char *login = e->login != NULL ? e->login : user;
        size_t len = e->login != NULL ? e->login_len : user_len;
        if (len == 0 || !append(r, login, len) || r->upstream == NULL)
            return -1;
        r->login[r->login_len] = '\0';
        return 0;
    }

    const char *domain = NULL;
    size_t domain_len = 0;
    for (size_t i = user_len; i > 0; i--) {
        if (user[i - 1] == '@') {
            domain = user + i;
            domain_len = user_len - i;
            break;
        }
    }
    if (domain != NULL) {
        for (size_t i = 0; i < cfg->nroutes; i++) {
            const struct config_route *route = &cfg->routes[i];
            if (route->domain != NULL && equal_folded(route->domain, domain, domain_len))
                return use_route(route, ROUTE_DOMAIN, user, user_len, r);
        }
    }

    for (size_t i = 0; i < cfg->nroutes; i++) {
        const struct config_route *route = &cfg->routes[i];
        if (route->match != NULL && glob_match(route->match, user, user_len))
            return use_route(route, ROUTE_MATCH, user, user_len, r);
    }

    for (size_t i = 0; i < cfg->nroutes; i++)
        if (cfg->routes[i].is_default)
            return use_route(&cfg->routes[i], ROUTE_DEFAULT, user, user_len, r);
    return -1;
}

const char *route_source_name(enum route_source source)
{
    switch (source) {
    case ROUTE_USER:
        return "user";
    case ROUTE_USER_MAP:
        return "user_map";
    case ROUTE_DOMAIN:
        return "domain";
    case ROUTE_MATCH:
        return "match";
    case ROUTE_DEFAULT:
        return "default";
    }
    return "unknown";
}
