/* Routing: which upstream, and which login name, serve a POP3 user. */
#ifndef POPGATE_ROUTE_H
#define POPGATE_ROUTE_H

#include "config.h"

/*
 * Picks the route for user. Returns the route (pointing into cfg) or NULL when
 * no route matches (the caller refuses the login). For now: the "user" route
 * whose name equals user byte for byte, else the default route. The compare is
 * case-sensitive, so "Bob@example.com" does not match a route for
 * "bob@example.com" and falls to the default route; case folding of the local
 * part is a policy decision left for later. NULL cfg or user gives NULL.
 */
const struct config_route *route_lookup(const struct config *cfg, const char *user);

#endif
