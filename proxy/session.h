/* A POP3 client session served from an IMAP upstream: the public face. */
#ifndef POPGATE_SESSION_H
#define POPGATE_SESSION_H

#include <ev.h>
#include <sys/socket.h>

#include "config.h"

/*
 * Takes over an accepted, non-blocking client socket and serves it until the
 * client quits or fails. cfg and listener (one of cfg's) must outlive the session. On failure the
 * socket is closed and -1 returned.
 */
int session_start(struct ev_loop *loop, const struct config *cfg,
                  const struct config_listener *listener, int fd,
                  const struct sockaddr_storage *peer);

/* Sessions alive in this process. */
unsigned session_count(void);

/* Closes every session at once (shutdown). Nothing is deleted: no QUIT ran. */
void session_close_all(const char *reason);

#endif
