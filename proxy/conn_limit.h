/* Connection limits: open client connections counted in total and per client address, across
 * every worker, in memory the master shares with them. */
#ifndef POPGATE_CONN_LIMIT_H
#define POPGATE_CONN_LIMIT_H

#include <stdint.h>
#include <sys/socket.h>

#include "config.h"
#include "metrics.h"

enum conn_limit_verdict {
    CONN_LIMIT_OK,
    CONN_LIMIT_TOTAL,       /* limits.max_connections reached */
    CONN_LIMIT_PER_ADDRESS, /* limits.max_connections_per_ip reached for this address */
    CONN_LIMIT_TABLE_FULL,  /* this worker's address table is full (a reload raised
                             * max_connections past what it was sized for at start) */
};

struct conn_limit;

/*
 * Master, before forking: maps the shared tables, one region per worker slot
 * (0..nslots-1, the slots of metrics_attach), each able to count the addresses
 * of max_connections connections (fixed for the master's life). Returns the
 * tables (free with conn_limit_free; forked workers inherit them), or NULL with
 * a reason in *error_r.
 */
struct conn_limit *conn_limit_new(unsigned nslots, uint32_t max_connections, const char **error_r);

/* Unmaps the tables in this process, detaches it if attached, sets *clp to NULL. */
void conn_limit_free(struct conn_limit **clp);

/* Worker, after fork: count into slot from now on (an out-of-range slot or a
 * NULL cl leaves this process uncounted: every connection is admitted). */
void conn_limit_attach(struct conn_limit *cl, unsigned slot);

/* Master, once the worker of slot has exited (and before a new one attaches to
 * it): forgets every connection it counted, so a killed worker leaks nothing. */
void conn_limit_retire(struct conn_limit *cl, unsigned slot);

/* Addresses one worker can count at once (fixed at conn_limit_new). */
uint32_t conn_limit_capacity(const struct conn_limit *cl);

/* The key an address is counted under: an IPv4-mapped IPv6 address is its IPv4
 * address, the port is ignored. 0 (never a key) for a family other than IP. */
uint64_t conn_limit_key(const struct sockaddr_storage *addr);

/*
 * Worker: admits a new connection when fewer than lim->max_connections are open
 * over all workers and, for key != 0, fewer than lim->max_connections_per_ip
 * (0: no limit) from that address; then counts it (in this worker's slot). On
 * any other verdict nothing is counted. Release with conn_limit_release(key)
 * when the connection ends, whatever the verdict of a later
 * conn_limit_admit_address.
 */
enum conn_limit_verdict conn_limit_admit(const struct config_limits *lim, uint64_t key);

/* Worker: an admitted connection's address became known (PROXY header): counts
 * it under key, within lim->max_connections_per_ip. Nothing changes on refusal. */
enum conn_limit_verdict conn_limit_admit_address(const struct config_limits *lim, uint64_t key);

/* Worker: the connection admitted under key (0: counted in the total only) ends. */
void conn_limit_release(uint64_t key);

/* Open connections over all workers: in total, and under key (0 in a process that
 * is not attached). Races with workers admitting or releasing at the same moment
 * make these approximate. */
uint64_t conn_limit_total(void);
uint64_t conn_limit_address_count(uint64_t key);

/* For log lines and /metrics, of a verdict other than CONN_LIMIT_OK. */
const char *conn_limit_reason(enum conn_limit_verdict v); /* "per-address limit", ... */
/* The configured limit a refusal hit, for the log. */
uint32_t conn_limit_bound(const struct config_limits *lim, enum conn_limit_verdict v);
/* What a refused client reads after -ERR [SYS/TEMP] (RFC 3206: try again later). */
#define CONN_LIMIT_REFUSED_TEXT "Too many connections, try again later"
enum metrics_refused conn_limit_metrics_reason(enum conn_limit_verdict v);

#endif
