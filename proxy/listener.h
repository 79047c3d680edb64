/* Listening sockets: bind, accept, and hand each client to a new session. */
#ifndef POPGATE_LISTENER_H
#define POPGATE_LISTENER_H

#include <ev.h>

#include "config.h"

struct listener;

/*
 * Binds and listens on the configured address and starts accepting. cfg must
 * outlive the listener. Returns NULL with a static-or-errno reason in *error_r.
 */
struct listener *listener_open(struct ev_loop *loop, const struct config *cfg,
                               const struct config_listener *cl, const char **error_r);

/* Stops accepting and closes the socket. */
void listener_free(struct listener **l);

#endif
