/* Connection limits: per-worker counts of open connections and of their client addresses, in
 * shared memory, summed over the workers at each admission. */
#include "conn_limit.h"

#include <netinet/in.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

/*
 * Layout and races. Each worker slot has a total and an open-addressing hash table
 * (linear probing) of {address key, count}, written only by the slot's worker: an
 * increment is a relaxed load and store, with no lock and no read-modify-write, so
 * a worker that dies at any instruction leaves nothing held that others wait for
 * (a process-shared mutex it held would block every other worker for good). Other
 * workers read every slot and add them up; the master zeroes a slot once its worker
 * has exited (conn_limit_retire), which is what frees the connections of a killed
 * worker. Workers of an old generation keep their slots while they drain, so both
 * generations count together after a reload.
 *
 * The counts are approximate while workers race:
 * - Two workers may both see limit - 1 and both admit: the limit can be exceeded by
 *   at most one connection per worker admitting at that very moment.
 * - A reader may probe a table while its owner moves an entry (deletion shifts later
 *   entries back so probe chains stay short) and miss or double-see that entry for
 *   that one read.
 * - An entry read while it is being rewritten is detected and counted as 0: its
 *   count word carries the low half of its key, and a pair that does not match is
 *   a torn read.
 * An error is gone by the next admission; none accumulates.
 *
 * Keys are a 64-bit SipHash of the address under a secret made at start, so a
 * client cannot aim its addresses at one probe chain, and two addresses share a
 * count only with probability 2^-64. IPv6 is counted per full address; counting per
 * /64 (what one subscriber usually gets) would be a mask before hashing.
 *
 * Memory: capacity entries of 16 bytes per slot, capacity the power of two at or
 * above 1.5 x max_connections, for every slot the master may use (a worker may
 * hold every connection). The mapping is MAP_NORESERVE and its pages are touched
 * only for workers that run: 256 KiB per running worker at the default 10000.
 */
_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2, "conn_limit needs lock-free 64-bit atomics");

#define CONN_LIMIT_MAX_SLOTS    4096
#define CONN_LIMIT_MIN_CAPACITY 64
#define CONN_LIMIT_MAX_CAPACITY (1u << 22)
#define CONN_LIMIT_CACHE_LINE   64
#define CONN_LIMIT_MAGIC        0x706f70636c696d31ULL /* "popclim1" */

struct conn_limit_entry {
    atomic_ullong key;   /* 0: empty */
    atomic_ullong count; /* (low 32 bits of key) << 32 | count, never 0 while key is set */
};

/* One worker's header, on its own cache line so workers never write the same line. */
struct conn_limit_slot {
    _Alignas(CONN_LIMIT_CACHE_LINE) atomic_ullong total; /* connections it holds */
    atomic_ullong entries;                               /* keys in its table */
};

struct conn_limit_header {
    uint64_t magic;
    uint64_t secret[2]; /* SipHash key; written once, before any fork */
    unsigned nslots;
    uint32_t capacity; /* entries per slot, a power of two */
};

struct conn_limit {
    void *base;
    size_t size;
    struct conn_limit_header *hdr;
    struct conn_limit_slot *slots;
    struct conn_limit_entry *tables; /* nslots x capacity */
};

/* The table and slot this process counts into; cl NULL: admit everything. */
static struct {
    struct conn_limit *cl;
    unsigned slot;
} mine;

static size_t round_up(size_t n, size_t to)
{
    return (n + to - 1) / to * to;
}

static uint64_t load(atomic_ullong *a)
{
    return atomic_load_explicit(a, memory_order_relaxed);
}

static void store(atomic_ullong *a, uint64_t v)
{
    atomic_store_explicit(a, v, memory_order_relaxed);
}

/* ---- keys ---- */

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                                   \
    do {                                                                                           \
        v0 += v1;                                                                                  \
        v1 = ROTL(v1, 13);                                                                         \
        v1 ^= v0;                                                                                  \
        v0 = ROTL(v0, 32);                                                                         \
        v2 += v3;                                                                                  \
        v3 = ROTL(v3, 16);                                                                         \
        v3 ^= v2;                                                                                  \
        v0 += v3;                                                                                  \
        v3 = ROTL(v3, 21);                                                                         \
        v3 ^= v0;                                                                                  \
        v2 += v1;                                                                                  \
        v1 = ROTL(v1, 17);                                                                         \
        v1 ^= v2;                                                                                  \
        v2 = ROTL(v2, 32);                                                                         \
    } while (0)

static uint64_t le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

/* SipHash-2-4 of exactly 16 bytes. */
static uint64_t siphash16(const uint64_t k[2], const unsigned char in[16])
{
    uint64_t v0 = 0x736f6d6570736575ULL ^ k[0], v1 = 0x646f72616e646f6dULL ^ k[1];
    uint64_t v2 = 0x6c7967656e657261ULL ^ k[0], v3 = 0x7465646279746573ULL ^ k[1];
    for (int i = 0; i < 2; i++) {
        uint64_t m = le64(in + 8 * i);
        v3 ^= m;
        SIPROUND;
        SIPROUND;
        v0 ^= m;
    }
    uint64_t b = (uint64_t)16 << 56;
    v3 ^= b;
    SIPROUND;
    SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

uint64_t conn_limit_key(const struct sockaddr_storage *addr)
{
    /* Every address as 16 bytes, IPv4 in its mapped form, so ::ffff:a.b.c.d and
     * a.b.c.d are one client (what a dual-stack listener reports for IPv4). */
    unsigned char a[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (addr->ss_family == AF_INET)
        memcpy(a + 12, &((const struct sockaddr_in *)addr)->sin_addr, 4);
    else if (addr->ss_family == AF_INET6)
        memcpy(a, &((const struct sockaddr_in6 *)addr)->sin6_addr, 16);
    else
        return 0;
    static const uint64_t no_secret[2];
    const uint64_t *secret = mine.cl != NULL ? mine.cl->hdr->secret : no_secret;
    uint64_t key = siphash16(secret, a);
    return key != 0 ? key : 1;
}

/* ---- one slot's table ---- */

static struct conn_limit_entry *table_of(const struct conn_limit *cl, unsigned slot)
{
    return cl->tables + (size_t)slot * cl->hdr->capacity;
}

static uint32_t count_of(uint64_t word)
{
    return (uint32_t)word;
}

static uint64_t count_word(uint64_t key, uint32_t count)
{
    return (key << 32) | count;
}

/* Any process: what slot's table holds for key (0 when absent or torn). */
static uint32_t slot_count(const struct conn_limit *cl, unsigned slot, uint64_t key)
{
    if (atomic_load_explicit(&cl->slots[slot].entries, memory_order_acquire) == 0)
        return 0;
    struct conn_limit_entry *t = table_of(cl, slot);
    uint32_t mask = cl->hdr->capacity - 1;
    for (uint32_t i = (uint32_t)key & mask, n = 0; n <= mask; i = (i + 1) & mask, n++) {
        uint64_t k = atomic_load_explicit(&t[i].key, memory_order_acquire);
        if (k == 0)
            return 0;
        if (k != key)
            continue;
        uint64_t w = atomic_load_explicit(&t[i].count, memory_order_acquire);
        return (w >> 32) == (key & 0xffffffffu) ? count_of(w) : 0;
    }
    return 0;
}

/* Owner: the index of key in its table, or (with *found false) where it would go. */
static uint32_t own_find(struct conn_limit_entry *t, uint32_t mask, uint64_t key, bool *found)
{
    uint32_t i = (uint32_t)key & mask;
    for (uint32_t n = 0; n <= mask; i = (i + 1) & mask, n++) {
        uint64_t k = load(&t[i].key);
        if (k == key || k == 0) {
            *found = k == key;
            return i;
        }
    }
    *found = false; /* unreachable: the table always keeps one empty entry */
    return i;
}

static enum conn_limit_verdict own_add(uint64_t key)
{
    struct conn_limit *cl = mine.cl;
    struct conn_limit_slot *s = &cl->slots[mine.slot];
    struct conn_limit_entry *t = table_of(cl, mine.slot);
    uint32_t mask = cl->hdr->capacity - 1;
    bool found;
    uint32_t i = own_find(t, mask, key, &found);
    if (found) {
        uint64_t w = load(&t[i].count);
        if (count_of(w) == UINT32_MAX)
            return CONN_LIMIT_TABLE_FULL;
        store(&t[i].count, w + 1);
        return CONN_LIMIT_OK;
    }
    /* One entry stays empty: every probe chain must end. */
    uint64_t entries = load(&s->entries);
    if (entries + 1 >= cl->hdr->capacity)
        return CONN_LIMIT_TABLE_FULL;
    /* Entries first, so a reader that skips empty tables does not skip this one. */
    atomic_store_explicit(&s->entries, entries + 1, memory_order_release);
    store(&t[i].count, count_word(key, 1));
    atomic_store_explicit(&t[i].key, key, memory_order_release);
    return CONN_LIMIT_OK;
}

static void own_remove(uint64_t key)
{
    struct conn_limit *cl = mine.cl;
    struct conn_limit_slot *s = &cl->slots[mine.slot];
    struct conn_limit_entry *t = table_of(cl, mine.slot);
    uint32_t mask = cl->hdr->capacity - 1;
    bool found;
    uint32_t i = own_find(t, mask, key, &found);
    if (!found)
        return; /* retired under us: nothing to take back */
    uint64_t w = load(&t[i].count);
    if (count_of(w) > 1) {
        store(&t[i].count, w - 1);
        return;
    }
    /* Backward-shift deletion (Knuth 6.4, algorithm R): later entries of the chain
     * move up into the hole, so no tombstones pile up and chains stay short. */
    for (;;) {
        uint32_t j = i;
        uint64_t kj;
        for (;;) {
            j = (j + 1) & mask;
            kj = load(&t[j].key);
            if (kj == 0) {
                atomic_store_explicit(&t[i].key, 0, memory_order_release);
                store(&t[i].count, 0);
                atomic_store_explicit(&s->entries, load(&s->entries) - 1, memory_order_release);
                return;
            }
            uint32_t home = (uint32_t)kj & mask;
            /* The entry at j may fill the hole at i unless its home lies in (i, j]. */
            bool stays = i <= j ? (i < home && home <= j) : (i < home || home <= j);
            if (!stays)
                break;
        }
        store(&t[i].count, load(&t[j].count));
        atomic_store_explicit(&t[i].key, kj, memory_order_release);
        i = j;
    }
}

/* ---- the shared segment ---- */

static void make_secret(uint64_t secret[2])
{
    if (getrandom(secret, 2 * sizeof(secret[0]), GRND_NONBLOCK) == 2 * sizeof(secret[0]))
        return;
    /* No entropy yet (early boot): a secret that still differs per start. */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t k[2] = {(uint64_t)ts.tv_sec, (uint64_t)ts.tv_nsec << 32 ^ (uint64_t)getpid()};
    unsigned char in[16] = {0};
    secret[0] = siphash16(k, in);
    in[0] = 1;
    secret[1] = siphash16(k, in);
}

struct conn_limit *conn_limit_new(unsigned nslots, uint32_t max_connections, const char **error_r)
{
    if (nslots == 0 || nslots > CONN_LIMIT_MAX_SLOTS) {
        *error_r = "bad number of worker slots";
        return NULL;
    }
    uint64_t want = (uint64_t)max_connections + max_connections / 2;
    uint32_t capacity = CONN_LIMIT_MIN_CAPACITY;
    while (capacity < want && capacity < CONN_LIMIT_MAX_CAPACITY)
        capacity *= 2;
    struct conn_limit *cl = calloc(1, sizeof(*cl));
    if (cl == NULL) {
        *error_r = "out of memory";
        return NULL;
    }
    size_t header_size = round_up(sizeof(struct conn_limit_header), CONN_LIMIT_CACHE_LINE);
    size_t slots_size = (size_t)nslots * sizeof(struct conn_limit_slot);
    size_t size =
        header_size + slots_size + (size_t)nslots * capacity * sizeof(struct conn_limit_entry);
    long page = sysconf(_SC_PAGESIZE);
    size = round_up(size, page > 0 ? (size_t)page : 4096);
    /* Zeroed on first touch, which is every count's initial value; NORESERVE because
     * most of it (the slots of workers that never run) is never touched. */
    void *base =
        mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED) {
        free(cl);
        *error_r = "cannot map shared memory";
        return NULL;
    }
    cl->base = base;
    cl->size = size;
    cl->hdr = base;
    cl->slots = (struct conn_limit_slot *)((char *)base + header_size);
    cl->tables = (struct conn_limit_entry *)((char *)base + header_size + slots_size);
    cl->hdr->magic = CONN_LIMIT_MAGIC;
    cl->hdr->nslots = nslots;
    cl->hdr->capacity = capacity;
    make_secret(cl->hdr->secret);
    return cl;
}

void conn_limit_free(struct conn_limit **clp)
{
    struct conn_limit *cl = *clp;
    if (cl == NULL)
        return;
    if (mine.cl == cl)
        mine.cl = NULL;
    (void)munmap(cl->base, cl->size);
    free(cl);
    *clp = NULL;
}

void conn_limit_attach(struct conn_limit *cl, unsigned slot)
{
    mine.cl = cl != NULL && slot < cl->hdr->nslots ? cl : NULL;
    mine.slot = slot;
}

void conn_limit_retire(struct conn_limit *cl, unsigned slot)
{
    if (cl == NULL || slot >= cl->hdr->nslots)
        return;
    struct conn_limit_slot *s = &cl->slots[slot];
    store(&s->total, 0);
    if (load(&s->entries) == 0)
        return;
    /* Readers see the table empty first, then the entries go (never a torn count). */
    atomic_store_explicit(&s->entries, 0, memory_order_release);
    struct conn_limit_entry *t = table_of(cl, slot);
    for (uint32_t i = 0; i < cl->hdr->capacity; i++) {
        if (load(&t[i].key) != 0) {
            atomic_store_explicit(&t[i].key, 0, memory_order_release);
            store(&t[i].count, 0);
        }
    }
}

uint32_t conn_limit_capacity(const struct conn_limit *cl)
{
    /* One entry always stays empty. */
    return cl != NULL ? cl->hdr->capacity - 1 : 0;
}

/* ---- admission ---- */

uint64_t conn_limit_total(void)
{
    struct conn_limit *cl = mine.cl;
    uint64_t n = 0;
    for (unsigned i = 0; cl != NULL && i < cl->hdr->nslots; i++)
        n += load(&cl->slots[i].total);
    return n;
}

uint64_t conn_limit_address_count(uint64_t key)
{
    struct conn_limit *cl = mine.cl;
    uint64_t n = 0;
    for (unsigned i = 0; cl != NULL && key != 0 && i < cl->hdr->nslots; i++)
        n += slot_count(cl, i, key);
    return n;
}

enum conn_limit_verdict conn_limit_admit_address(const struct config_limits *lim, uint64_t key)
{
    if (mine.cl == NULL || key == 0)
        return CONN_LIMIT_OK;
    if (lim->max_connections_per_ip != 0 &&
        conn_limit_address_count(key) >= lim->max_connections_per_ip)
        return CONN_LIMIT_PER_ADDRESS;
    return own_add(key);
}

enum conn_limit_verdict conn_limit_admit(const struct config_limits *lim, uint64_t key)
{
    if (mine.cl == NULL)
        return CONN_LIMIT_OK;
    if (conn_limit_total() >= lim->max_connections)
        return CONN_LIMIT_TOTAL;
    enum conn_limit_verdict v = conn_limit_admit_address(lim, key);
    if (v != CONN_LIMIT_OK)
        return v;
    atomic_ullong *total = &mine.cl->slots[mine.slot].total;
    store(total, load(total) + 1);
    return CONN_LIMIT_OK;
}

void conn_limit_release(uint64_t key)
{
    if (mine.cl == NULL)
        return;
    if (key != 0)
        own_remove(key);
    atomic_ullong *total = &mine.cl->slots[mine.slot].total;
    uint64_t n = load(total);
    if (n > 0)
        store(total, n - 1);
}

uint32_t conn_limit_bound(const struct config_limits *lim, enum conn_limit_verdict v)
{
    return v == CONN_LIMIT_PER_ADDRESS ? lim->max_connections_per_ip : lim->max_connections;
}

const char *conn_limit_reason(enum conn_limit_verdict v)
{
    switch (v) {
    case CONN_LIMIT_TOTAL:
        return "connection limit";
    case CONN_LIMIT_PER_ADDRESS:
        return "per-address limit";
    case CONN_LIMIT_TABLE_FULL:
        return "address table full";
    case CONN_LIMIT_OK:
        break;
    }
    return "admitted";
}

enum metrics_refused conn_limit_metrics_reason(enum conn_limit_verdict v)
{
    switch (v) {
    case CONN_LIMIT_PER_ADDRESS:
        return METRICS_REFUSED_PER_ADDRESS;
    case CONN_LIMIT_TABLE_FULL:
        return METRICS_REFUSED_TABLE_FULL;
    case CONN_LIMIT_TOTAL:
    case CONN_LIMIT_OK:
        break;
    }
    return METRICS_REFUSED_TOTAL;
}
