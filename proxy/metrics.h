/* Metrics: counters every worker writes into shared memory, rendered as Prometheus text. */
#ifndef POPGATE_METRICS_H
#define POPGATE_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* How a session ended (the summary line's result=). */
enum metrics_result {
    METRICS_RESULT_QUIT,
    METRICS_RESULT_CLIENT_CLOSED,
    METRICS_RESULT_TIMEOUT,
    METRICS_RESULT_AUTH_FAILED,
    METRICS_RESULT_UPSTREAM_ERROR,
    METRICS_RESULT_UPDATE_FAILED,
    METRICS_RESULT_UPDATE_PARTIAL,
    METRICS_RESULT_BAD_COMMANDS,
    METRICS_RESULT_TLS_FAILED,
    METRICS_RESULT_PROXY_REFUSED,
    METRICS_RESULT_SHUTDOWN,
    METRICS_RESULT_CLIENT_ERROR,
    METRICS_RESULT_INTERNAL_ERROR,
    METRICS_RESULT_CONNECTION_LIMIT, /* refused once the PROXY header named the client */
    METRICS_RESULT_COUNT
};

enum metrics_login {
    METRICS_LOGIN_OK,
    METRICS_LOGIN_AUTH_FAILED, /* [AUTH]: wrong credentials or no route */
    METRICS_LOGIN_TEMP_FAILED, /* [SYS/TEMP]: upstream down, timeout, TLS failure */
    METRICS_LOGIN_COUNT
};

/* The upstream failure classes (upstream_status without OK), as labels. */
enum metrics_upstream_error {
    METRICS_UPSTREAM_NO,
    METRICS_UPSTREAM_AUTH,
    METRICS_UPSTREAM_CONNECT,
    METRICS_UPSTREAM_TIMEOUT,
    METRICS_UPSTREAM_PROTOCOL,
    METRICS_UPSTREAM_CLOSED,
    METRICS_UPSTREAM_INTERNAL,
    METRICS_UPSTREAM_COUNT
};

/* Why a connection limit refused a client (conn_limit.h). */
enum metrics_refused {
    METRICS_REFUSED_TOTAL,       /* limits.max_connections */
    METRICS_REFUSED_PER_ADDRESS, /* limits.max_connections_per_ip */
    METRICS_REFUSED_TABLE_FULL,  /* a worker's address table is full */
    METRICS_REFUSED_COUNT
};

/*
 * Master, before forking: maps a shared anonymous segment with one slot per
 * worker (max_workers, at most 4096; a few hundred bytes each) plus the totals of retired
 * workers. Returns 0 or -1. Calling it again replaces the segment (tests).
 * In a process that never called it, every recording call is a no-op, and
 * metrics_render() renders zeros.
 */
int metrics_init(unsigned max_workers);

/* Worker, after fork: record into slot (0..max_workers-1). The slot is zeroed
 * and marked in use. An out-of-range slot leaves recording a no-op. */
void metrics_attach(unsigned slot);

/* Master, once the worker of slot has exited (never while it runs, and before a
 * new worker attaches to slot): folds its counters into the retired totals
 * (counters stay monotonic across restarts and reloads), drops its gauge
 * (sessions it had open), zeroes the slot and marks it free. */
void metrics_retire(unsigned slot);

/* Worker side: no-ops until metrics_attach. Each worker writes only its own
 * slot, with relaxed atomic loads and stores: no locks, no read-modify-write. */
void metrics_session_start(void);
void metrics_session_end(enum metrics_result result);
void metrics_login(enum metrics_login result, double seconds); /* seconds: PASS to answer */
void metrics_upstream_error(enum metrics_upstream_error cls);
void metrics_bytes_retrieved(uint64_t n);
void metrics_messages_retrieved(uint32_t n);
void metrics_messages_deleted(uint32_t n);
void metrics_connection_refused(enum metrics_refused reason);

/* Master side (safe from any process once metrics_init ran: an atomic add). */
void metrics_config_reload(bool ok);

/* Maps a summary-line result name ("quit", "timeout", ...) to its enum;
 * METRICS_RESULT_INTERNAL_ERROR for an unknown name. */
enum metrics_result metrics_result_from_name(const char *name);

/*
 * Renders every metric, summed over all slots, in the Prometheus text format
 * (version 0.0.4) into a malloc'd string (caller frees); NULL when out of memory.
 * Names: popgate_sessions_active (gauge), popgate_sessions_total{result=...},
 * popgate_logins_total{result="ok|auth_failed|temp_failed"},
 * popgate_upstream_errors_total{class=...}, popgate_retrieved_bytes_total,
 * popgate_retrieved_messages_total, popgate_deleted_messages_total,
 * popgate_login_duration_seconds (histogram: _bucket{le=...}, _sum, _count),
 * popgate_config_reloads_total{result="ok|failed"},
 * popgate_connections_refused_total{reason="total|per_address|table_full"}, popgate_workers (gauge:
 * slots in use), popgate_start_time_seconds.
 */
char *metrics_render(void);

/* Master: marks slot as in use (for popgate_workers) or free. metrics_attach
 * and metrics_retire already do; this covers the time between fork and attach. */
void metrics_slot_in_use(unsigned slot, bool in_use);

#endif
