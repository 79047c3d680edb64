/* The admin listener: a tiny HTTP server for /metrics (Prometheus) and /healthz. */
#ifndef POPGATE_ADMIN_H
#define POPGATE_ADMIN_H

#include <ev.h>
#include <stdint.h>

#include "config.h"

struct admin;

/*
 * Binds cl's address and serves, on loop, GET /metrics (metrics_render(),
 * "text/plain; version=0.0.4") and GET /healthz ("ok\n"); HEAD too; other paths
 * 404, other methods 405, a malformed request line 400. A query string is
 * ignored. One request per connection (HTTP/1.0 and 1.1, the connection closes
 * after the answer); requests over 8 KiB or slower than 5 s are dropped without
 * an answer, and at most 64 connections are open at once (more are closed on
 * accept). Never blocks the loop. cl is only read here; the caller may free it
 * afterwards. Returns NULL with a reason in *error_r (not to be freed; valid
 * until the next call into libc's strerror).
 */
struct admin *admin_open(struct ev_loop *loop, const struct config_listener *cl,
                         const char **error_r);

/* The port actually bound: the configured one, or the one the kernel chose for
 * port 0 (tests; an operator's log line). */
uint16_t admin_port(const struct admin *a);

/* Stops listening, closes open admin connections, frees, sets *a to NULL
 * (NULL is fine). It only close()s descriptors, never shutdown()s them, so a
 * forked child may call it on its inherited copy without disturbing the
 * parent's connections. */
void admin_free(struct admin **a);

#endif
