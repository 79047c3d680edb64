/* Metrics: one shared-memory segment of per-worker counter slots, summed into Prometheus text. */
#include "metrics.h"

#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

/*
 * Every counter is an _Atomic unsigned long long touched only with relaxed loads
 * and stores. A slot has one writer (its worker; the master only after that worker
 * has exited), so an increment is a load and a store, not a locked read-modify-write:
 * on x86-64 and aarch64 both compile to plain aligned moves. The atomics are there
 * for the master, which reads slots while workers write them: with them the race is
 * defined C11 and a 64-bit value is never torn. Nothing orders one counter against
 * another, so a scrape may see a login's bucket before its _sum; Prometheus copes.
 * Atomics in memory shared between processes are only sound when lock-free (a
 * fallback lock would live in each process's own memory), hence the assertion.
 */
_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2, "metrics need lock-free 64-bit atomics");

#define METRICS_MAX_WORKERS 4096
#define METRICS_CACHE_LINE  64
#define METRICS_MAGIC       0x706f706d65747231ULL /* "popmetr1" */

/* Upper bounds of the login latency buckets, in nanoseconds; a last bucket is +Inf. */
static const uint64_t bucket_bound_ns[] = {
    5000000ULL,   10000000ULL,   25000000ULL,   50000000ULL,   100000000ULL,   250000000ULL,
    500000000ULL, 1000000000ULL, 2500000000ULL, 5000000000ULL, 10000000000ULL,
};
#define METRICS_FINITE_BUCKETS (sizeof(bucket_bound_ns) / sizeof(bucket_bound_ns[0]))
#define METRICS_BUCKETS        (METRICS_FINITE_BUCKETS + 1)

/* The same bounds as Prometheus label values, written out so no float formatting drifts. */
static const char *const bucket_le[METRICS_BUCKETS] = {
    "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf",
};

static const char *const result_names[METRICS_RESULT_COUNT] = {
    [METRICS_RESULT_QUIT] = "quit",
    [METRICS_RESULT_CLIENT_CLOSED] = "client_closed",
    [METRICS_RESULT_TIMEOUT] = "timeout",
    [METRICS_RESULT_AUTH_FAILED] = "auth_failed",
    [METRICS_RESULT_UPSTREAM_ERROR] = "upstream_error",
    [METRICS_RESULT_UPDATE_FAILED] = "update_failed",
    [METRICS_RESULT_UPDATE_PARTIAL] = "update_partial",
    [METRICS_RESULT_BAD_COMMANDS] = "bad_commands",
    [METRICS_RESULT_TLS_FAILED] = "tls_failed",
    [METRICS_RESULT_PROXY_REFUSED] = "proxy_refused",
    [METRICS_RESULT_SHUTDOWN] = "shutdown",
    [METRICS_RESULT_CLIENT_ERROR] = "client_error",
    [METRICS_RESULT_INTERNAL_ERROR] = "internal_error",
    [METRICS_RESULT_CONNECTION_LIMIT] = "connection_limit",
};

static const char *const login_names[METRICS_LOGIN_COUNT] = {
    [METRICS_LOGIN_OK] = "ok",
    [METRICS_LOGIN_AUTH_FAILED] = "auth_failed",
    [METRICS_LOGIN_TEMP_FAILED] = "temp_failed",
};

static const char *const upstream_names[METRICS_UPSTREAM_COUNT] = {
    [METRICS_UPSTREAM_NO] = "no",
    [METRICS_UPSTREAM_AUTH] = "auth",
    [METRICS_UPSTREAM_CONNECT] = "connect",
    [METRICS_UPSTREAM_TIMEOUT] = "timeout",
    [METRICS_UPSTREAM_PROTOCOL] = "protocol",
    [METRICS_UPSTREAM_CLOSED] = "closed",
    [METRICS_UPSTREAM_INTERNAL] = "internal",
};

static const char *const refused_names[METRICS_REFUSED_COUNT] = {
    [METRICS_REFUSED_TOTAL] = "total",
    [METRICS_REFUSED_PER_ADDRESS] = "per_address",
    [METRICS_REFUSED_TABLE_FULL] = "table_full",
};

/* A slot's counters, as indexes into one array so retiring and summing are loops. */
enum {
    C_SESSIONS = 0, /* by enum metrics_result */
    C_LOGINS = C_SESSIONS + METRICS_RESULT_COUNT,
    C_UPSTREAM = C_LOGINS + METRICS_LOGIN_COUNT,
    C_BYTES_RETRIEVED = C_UPSTREAM + METRICS_UPSTREAM_COUNT,
    C_MESSAGES_RETRIEVED,
    C_MESSAGES_DELETED,
    C_REFUSED,                                           /* by enum metrics_refused */
    C_LOGIN_BUCKETS = C_REFUSED + METRICS_REFUSED_COUNT, /* per bucket, not cumulative */
    C_LOGIN_SUM_NS = C_LOGIN_BUCKETS + METRICS_BUCKETS,
    C_COUNT
};

/* One worker's numbers, cache-line aligned so two workers never write the same line. */
struct metrics_slot {
    _Alignas(METRICS_CACHE_LINE) atomic_ullong sessions_active; /* gauge, two's complement */
    atomic_ullong c[C_COUNT];
};

struct metrics_header {
    uint64_t magic;
    unsigned nworkers;        /* slots 0..nworkers-1; slot nworkers holds retired totals */
    struct timespec started;  /* written once before any fork */
    atomic_ullong reloads[2]; /* [0] ok, [1] failed; several processes may add */
    atomic_uchar in_use[];    /* nworkers flags */
};

static struct {
    void *base;
    size_t size;
    struct metrics_header *hdr;
    struct metrics_slot *slots; /* nworkers + 1 */
    struct metrics_slot *mine;  /* this worker's slot; NULL = recording is a no-op */
} m;

static size_t round_up(size_t n, size_t to)
{
    return (n + to - 1) / to * to;
}

static void counter_add(atomic_ullong *c, unsigned long long n)
{
    /* Single writer: a relaxed load and store are enough (see the top of the file). */
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n,
                          memory_order_relaxed);
}

static unsigned long long counter_get(atomic_ullong *c)
{
    return atomic_load_explicit(c, memory_order_relaxed);
}

static void slot_zero(struct metrics_slot *s)
{
    atomic_store_explicit(&s->sessions_active, 0, memory_order_relaxed);
    for (size_t i = 0; i < C_COUNT; i++)
        atomic_store_explicit(&s->c[i], 0, memory_order_relaxed);
}

int metrics_init(unsigned max_workers)
{
    if (max_workers > METRICS_MAX_WORKERS)
        return -1;
    size_t header_size = round_up(sizeof(struct metrics_header) + max_workers, METRICS_CACHE_LINE);
    size_t size = header_size + ((size_t)max_workers + 1) * sizeof(struct metrics_slot);
    long page = sysconf(_SC_PAGESIZE);
    size = round_up(size, page > 0 ? (size_t)page : 4096);
    /* Anonymous shared memory starts zeroed, which is every counter's initial value. */
    void *base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED)
        return -1;
    if (m.base != NULL)
        (void)munmap(m.base, m.size);
    m.base = base;
    m.size = size;
    m.hdr = base;
    m.slots = (struct metrics_slot *)((char *)base + header_size);
    m.mine = NULL;
    m.hdr->magic = METRICS_MAGIC;
    m.hdr->nworkers = max_workers;
    clock_gettime(CLOCK_REALTIME, &m.hdr->started);
    return 0;
}

void metrics_attach(unsigned slot)
{
    if (m.hdr == NULL || slot >= m.hdr->nworkers)
        return;
    m.mine = &m.slots[slot];
    slot_zero(m.mine);
    atomic_store_explicit(&m.hdr->in_use[slot], 1, memory_order_relaxed);
}

void metrics_retire(unsigned slot)
{
    if (m.hdr == NULL || slot >= m.hdr->nworkers)
        return;
    struct metrics_slot *dead = &m.slots[slot];
    struct metrics_slot *retired = &m.slots[m.hdr->nworkers];
    for (size_t i = 0; i < C_COUNT; i++)
        counter_add(&retired->c[i], counter_get(&dead->c[i]));
    slot_zero(dead);
    atomic_store_explicit(&m.hdr->in_use[slot], 0, memory_order_relaxed);
    if (m.mine == dead)
        m.mine = NULL;
}

void metrics_slot_in_use(unsigned slot, bool in_use)
{
    if (m.hdr == NULL || slot >= m.hdr->nworkers)
        return;
    atomic_store_explicit(&m.hdr->in_use[slot], in_use ? 1 : 0, memory_order_relaxed);
}

void metrics_session_start(void)
{
    if (m.mine != NULL)
        counter_add(&m.mine->sessions_active, 1);
}

void metrics_session_end(enum metrics_result result)
{
    if (m.mine == NULL)
        return;
    if ((unsigned)result >= METRICS_RESULT_COUNT)
        result = METRICS_RESULT_INTERNAL_ERROR;
    /* Unsigned wrap-around is the two's complement decrement of the gauge. */
    counter_add(&m.mine->sessions_active, (unsigned long long)-1);
    counter_add(&m.mine->c[C_SESSIONS + result], 1);
}

void metrics_login(enum metrics_login result, double seconds)
{
    if (m.mine == NULL || (unsigned)result >= METRICS_LOGIN_COUNT)
        return;
    uint64_t ns = 0;
    if (seconds > 1e9) /* also +Inf; NaN and negatives stay 0 */
        ns = UINT64_C(1000000000) * 1000000000;
    else if (seconds > 0)
        ns = (uint64_t)(seconds * 1e9 + 0.5);
    size_t b = 0;
    while (b < METRICS_FINITE_BUCKETS && ns > bucket_bound_ns[b])
        b++;
    counter_add(&m.mine->c[C_LOGINS + result], 1);
    counter_add(&m.mine->c[C_LOGIN_BUCKETS + b], 1);
    counter_add(&m.mine->c[C_LOGIN_SUM_NS], ns);
}

void metrics_upstream_error(enum metrics_upstream_error cls)
{
    if (m.mine != NULL && (unsigned)cls < METRICS_UPSTREAM_COUNT)
        counter_add(&m.mine->c[C_UPSTREAM + cls], 1);
}

void metrics_bytes_retrieved(uint64_t n)
{
    if (m.mine != NULL)
        counter_add(&m.mine->c[C_BYTES_RETRIEVED], n);
}

void metrics_messages_retrieved(uint32_t n)
{
    if (m.mine != NULL)
        counter_add(&m.mine->c[C_MESSAGES_RETRIEVED], n);
}

void metrics_messages_deleted(uint32_t n)
{
    if (m.mine != NULL)
        counter_add(&m.mine->c[C_MESSAGES_DELETED], n);
}

void metrics_connection_refused(enum metrics_refused reason)
{
    if (m.mine != NULL && (unsigned)reason < METRICS_REFUSED_COUNT)
        counter_add(&m.mine->c[C_REFUSED + reason], 1);
}

void metrics_config_reload(bool ok)
{
    /* Not a per-slot counter: whichever process reloads may add, so use a real RMW. */
    if (m.hdr != NULL)
        atomic_fetch_add_explicit(&m.hdr->reloads[ok ? 0 : 1], 1, memory_order_relaxed);
}

enum metrics_result metrics_result_from_name(const char *name)
{
    if (name != NULL)
        for (int i = 0; i < METRICS_RESULT_COUNT; i++)
            if (strcmp(name, result_names[i]) == 0)
                return (enum metrics_result)i;
    return METRICS_RESULT_INTERNAL_ERROR;
}

/* The sum over every slot, live and retired, read once per scrape. */
struct metrics_sum {
    long long sessions_active;
    unsigned long long c[C_COUNT];
    unsigned long long reloads[2];
    unsigned workers;
    long long start_sec;
    long start_nsec;
};

static void sum_all(struct metrics_sum *t)
{
    memset(t, 0, sizeof(*t));
    if (m.hdr == NULL)
        return;
    for (unsigned i = 0; i <= m.hdr->nworkers; i++) {
        struct metrics_slot *s = &m.slots[i];
        t->sessions_active += (long long)counter_get(&s->sessions_active);
        for (size_t j = 0; j < C_COUNT; j++)
            t->c[j] += counter_get(&s->c[j]);
    }
    for (unsigned i = 0; i < m.hdr->nworkers; i++)
        t->workers += atomic_load_explicit(&m.hdr->in_use[i], memory_order_relaxed) != 0;
    for (int i = 0; i < 2; i++)
        t->reloads[i] = atomic_load_explicit(&m.hdr->reloads[i], memory_order_relaxed);
    t->start_sec = (long long)m.hdr->started.tv_sec;
    t->start_nsec = m.hdr->started.tv_nsec;
}

static void family(FILE *f, const char *name, const char *type, const char *help)
{
    fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void labelled(FILE *f, const char *name, const char *label, const char *const *values,
                     const unsigned long long *counts, size_t n)
{
    for (size_t i = 0; i < n; i++)
        fprintf(f, "%s{%s=\"%s\"} %llu\n", name, label, values[i], counts[i]);
}

char *metrics_render(void)
{
    struct metrics_sum t;
    sum_all(&t);

    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (f == NULL)
        return NULL;

    family(f, "popgate_sessions_active", "gauge", "POP3 sessions open now.");
    fprintf(f, "popgate_sessions_active %lld\n", t.sessions_active);

    family(f, "popgate_sessions_total", "counter", "POP3 sessions ended, by result.");
    labelled(f, "popgate_sessions_total", "result", result_names, &t.c[C_SESSIONS],
             METRICS_RESULT_COUNT);

    family(f, "popgate_logins_total", "counter",
           "POP3 logins answered, by result (auth_failed: -ERR [AUTH], temp_failed: "
           "-ERR [SYS/TEMP]).");
    labelled(f, "popgate_logins_total", "result", login_names, &t.c[C_LOGINS], METRICS_LOGIN_COUNT);

    family(f, "popgate_upstream_errors_total", "counter", "Upstream IMAP failures, by class.");
    labelled(f, "popgate_upstream_errors_total", "class", upstream_names, &t.c[C_UPSTREAM],
             METRICS_UPSTREAM_COUNT);

    family(f, "popgate_retrieved_bytes_total", "counter", "Message bytes sent to POP3 clients.");
    fprintf(f, "popgate_retrieved_bytes_total %llu\n", t.c[C_BYTES_RETRIEVED]);

    family(f, "popgate_retrieved_messages_total", "counter", "Messages sent by RETR.");
    fprintf(f, "popgate_retrieved_messages_total %llu\n", t.c[C_MESSAGES_RETRIEVED]);

    family(f, "popgate_deleted_messages_total", "counter",
           "Messages deleted upstream at QUIT (UPDATE state).");
    fprintf(f, "popgate_deleted_messages_total %llu\n", t.c[C_MESSAGES_DELETED]);

    family(f, "popgate_connections_refused_total", "counter",
           "Client connections refused by limits.max_connections (total), "
           "limits.max_connections_per_ip (per_address) or a full address table.");
    labelled(f, "popgate_connections_refused_total", "reason", refused_names, &t.c[C_REFUSED],
             METRICS_REFUSED_COUNT);

    family(f, "popgate_login_duration_seconds", "histogram",
           "Time from PASS (or AUTH) to the login's answer, in seconds.");
    unsigned long long cumulative = 0;
    for (size_t i = 0; i < METRICS_BUCKETS; i++) {
        cumulative += t.c[C_LOGIN_BUCKETS + i];
        fprintf(f, "popgate_login_duration_seconds_bucket{le=\"%s\"} %llu\n", bucket_le[i],
                cumulative);
    }
    fprintf(f, "popgate_login_duration_seconds_sum %llu.%09llu\n",
            t.c[C_LOGIN_SUM_NS] / 1000000000ULL, t.c[C_LOGIN_SUM_NS] % 1000000000ULL);
    fprintf(f, "popgate_login_duration_seconds_count %llu\n", cumulative);

    family(f, "popgate_config_reloads_total", "counter", "Configuration reloads, by result.");
    static const char *const reload_names[2] = {"ok", "failed"};
    labelled(f, "popgate_config_reloads_total", "result", reload_names, t.reloads, 2);

    family(f, "popgate_workers", "gauge", "Worker processes running.");
    fprintf(f, "popgate_workers %u\n", t.workers);

    family(f, "popgate_start_time_seconds", "gauge",
           "Start time of the popgate master since the Unix epoch, in seconds.");
    fprintf(f, "popgate_start_time_seconds %lld.%03ld\n", t.start_sec, t.start_nsec / 1000000);

    bool failed = ferror(f) != 0;
    if (fclose(f) != 0 || failed) {
        free(text);
        return NULL;
    }
    return text;
}
