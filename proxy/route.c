/* Routing: maps a POP3 user name to the route, and so the upstream, that serves it. */
#include "route.h"

#include <string.h>

/* A linear scan: route tables are small today, and the config is immutable, so an index
 * can be built at load when they are not. */
const struct config_route *route_lookup(const struct config *cfg, const char *user)
{
    if (cfg == NULL || user == NULL)
        return NULL;
    const struct config_route *fallback = NULL;
    for (size_t i = 0; i < cfg->nroutes; i++) {
        const struct config_route *r = &cfg->routes[i];
        if (r->is_default) {
            if (fallback == NULL)
                fallback = r;
        } else if (r->user != NULL && strcmp(r->user, user) == 0) {
            return r;
        }
    }
    return fallback;
}
