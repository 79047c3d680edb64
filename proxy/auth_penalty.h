/* The growing delay before a failed login is answered, kept per client address. */
#ifndef POPGATE_AUTH_PENALTY_H
#define POPGATE_AUTH_PENALTY_H

#include <stdint.h>

/* Addresses tracked at once; a busier address takes the slot of an older one. */
#define AUTH_PENALTY_SLOTS 8192
/* An address with no failure for this long starts again from the base delay. */
#define AUTH_PENALTY_FORGET_MS (15 * 60 * 1000)

/*
 * Maps the table shared by every process forked after this call (the master
 * calls it before the workers start). Without it, each process keeps a table
 * of its own. Returns 0, or -1 when the mapping fails.
 */
int auth_penalty_init(void);

/*
 * Records a failed login from the client address of key (conn_limit_key(): the
 * port left out, IPv4-mapped IPv6 as IPv4; 0 counts nothing) at now_ms and returns the seconds to
 * wait before answering: base doubled for each earlier recent failure from that address, at most
 * cap; 0 when base is 0. Lock-free: two processes failing the same address at once may count one
 * failure less (harmless).
 */
uint32_t auth_penalty_fail(uint64_t key, int64_t now_ms, uint32_t base, uint32_t cap);

#endif
