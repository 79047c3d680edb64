/* Routing: which upstream, and which login name, serve a POP3 user. */
#ifndef POPGATE_ROUTE_H
#define POPGATE_ROUTE_H

#include "config.h"

/*
 * Picks the route for user. Returns the route (pointing into cfg) or NULL when
 * no route matches. For now: exact user, then the default route.
 */
const struct config_route *route_lookup(const struct config *cfg, const char *user);

#endif
