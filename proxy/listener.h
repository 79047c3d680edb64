/* Listening sockets: bind, accept, and hand each client to a new session. */
#ifndef POPGATE_LISTENER_H
#define POPGATE_LISTENER_H

#include <ev.h>

#include "config.h"

struct listener;

/*
 * Master: creates, binds and listens on cl's address (SO_REUSEADDR, and
 * SO_REUSEPORT so a restarted popgate can bind while the old one drains).
 * Returns the non-blocking, close-on-exec fd, or -1 with a reason in *error_r.
 */
int listener_bind(const struct config_listener *cl, const char **error_r);

/*
 * Worker: accepts on the bound fd (shared with the other workers) and hands
 * each client to a new session with cfg and cl (cfg must outlive the listener).
 * The listener does not own fd's lifetime beyond closing it in listener_free.
 * Returns NULL when out of memory.
 */
struct listener *listener_attach(struct ev_loop *loop, const struct config *cfg,
                                 const struct config_listener *cl, int fd);

/* Stops accepting and closes the fd. */
void listener_free(struct listener **l);

#endif
