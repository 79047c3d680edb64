/* The auth penalty table: recent failed logins per client address, shared by the workers. */
#include "auth_penalty.h"

#include <stdatomic.h>
#include <string.h>
#include <sys/mman.h>

struct slot {
    _Atomic uint64_t key; /* hash of the address; 0 = free */
    _Atomic uint32_t failures;
    _Atomic int64_t last_ms;
};

static struct slot local_table[AUTH_PENALTY_SLOTS];
static struct slot *table = local_table;

int auth_penalty_init(void)
{
    void *p =
        mmap(NULL, sizeof(local_table), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return -1;
    table = p; /* zero-filled: every slot free */
    return 0;
}

uint32_t auth_penalty_fail(uint64_t key, int64_t now_ms, uint32_t base, uint32_t cap)
{
    if (base == 0 || key == 0)
        return 0;
    struct slot *s = &table[key % AUTH_PENALTY_SLOTS];
    uint32_t failures;
    if (atomic_load_explicit(&s->key, memory_order_relaxed) != key ||
        now_ms - atomic_load_explicit(&s->last_ms, memory_order_relaxed) > AUTH_PENALTY_FORGET_MS) {
        atomic_store_explicit(&s->key, key, memory_order_relaxed);
        atomic_store_explicit(&s->failures, 1, memory_order_relaxed);
        failures = 1;
    } else {
        failures = atomic_fetch_add_explicit(&s->failures, 1, memory_order_relaxed) + 1;
    }
    atomic_store_explicit(&s->last_ms, now_ms, memory_order_relaxed);
    uint64_t delay = base;
    for (uint32_t i = 1; i < failures && delay < cap; i++)
        delay *= 2;
    return delay < cap ? (uint32_t)delay : cap;
}
