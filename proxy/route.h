/* Routing: which upstream, and which login name, serve a POP3 user. */
#ifndef POPGATE_ROUTE_H
#define POPGATE_ROUTE_H

#include "config.h"

#define ROUTE_LOGIN_MAX 512

/* Where a user's routing came from, for logs. */
enum route_source {
    ROUTE_USER,
    ROUTE_USER_MAP,
    ROUTE_DOMAIN,
    ROUTE_MATCH,
    ROUTE_DEFAULT,
};

struct route_result {
    const struct config_upstream *upstream; /* points into cfg */
    const struct config_route *route;       /* the route, or NULL for a user_map line */
    enum route_source source;
    const struct config_mapping *mapping; /* the route's, or the top-level one for user_map */
    char login[ROUTE_LOGIN_MAX + 1];      /* the name to send upstream, NUL-terminated */
    size_t login_len;
};

/*
 * Routes user (user_len bytes, no NUL inside). The most specific match wins:
 *   1. a "user" route equal to user (ASCII case ignored);
 *   2. a line of the user_map (ASCII case ignored);
 *   3. a "domain" route equal to what follows the last "@" (none without an "@");
 *   4. the first "match" glob in file order ("*" any run, "?" one byte, case ignored);
 *   5. the default route.
 * The login is the route's template expanded: %u the user as typed, %n the part before
 * the last "@" (the whole name without one), %d the part after it ("" without one), %% a
 * "%"; then lower-cased (ASCII) if the route says so. A user_map line's login, if given,
 * is taken as it is; without one the login is the user as typed.
 * Returns 0 with *r filled (pointers into cfg, which must outlive them), or -1 when
 * nothing matches, or the login would be empty or longer than ROUTE_LOGIN_MAX bytes: the
 * caller refuses the login alike. NULL arguments give -1.
 */
int route_resolve(const struct config *cfg, const char *user, size_t user_len,
                  struct route_result *r);

/* "user", "user_map", "domain", "match", "default": static text for log lines. */
const char *route_source_name(enum route_source source);

#endif
