/* The maildrop snapshot: POP3 message number <-> IMAP UID and size, fixed at login. */
#ifndef POPGATE_MAILDROP_H
#define POPGATE_MAILDROP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct maildrop_msg {
    uint32_t uid;
    uint64_t size;
    bool deleted; /* marked by DELE in this session */
};

enum maildrop_lookup {
    MAILDROP_OK,
    MAILDROP_NO_SUCH, /* 0 or beyond the last message */
    MAILDROP_DELETED, /* marked deleted in this session */
};

struct maildrop;

/* Returns a new, open (unsealed) maildrop owned by the caller, or NULL. */
struct maildrop *maildrop_new(uint32_t uidvalidity);
void maildrop_free(struct maildrop **m);

/*
 * While open: records a message the server reported (in any order). A UID
 * reported again replaces the earlier size. Returns 0, or -1 when out of memory
 * or uid == 0.
 */
int maildrop_add(struct maildrop *m, uint32_t uid, uint64_t size);

/* Fixes the snapshot: messages sorted by ascending UID get numbers 1..n. After
 * this, maildrop_add() is refused (returns -1). Until it is called, the count,
 * STAT and lookups see an empty maildrop. Calling it again does nothing. */
void maildrop_seal(struct maildrop *m);

uint32_t maildrop_uidvalidity(const struct maildrop *m);

/* Messages in the snapshot, deleted ones included (the highest message number). */
uint32_t maildrop_count(const struct maildrop *m);

/* Messages not marked deleted, and the sum of their sizes (STAT). */
void maildrop_stat(const struct maildrop *m, uint32_t *count_r, uint64_t *octets_r);

/* Looks message n (1-based) up. On MAILDROP_OK *msg_r points into the maildrop
 * (valid until it is freed). */
enum maildrop_lookup maildrop_get(const struct maildrop *m, uint32_t n,
                                  const struct maildrop_msg **msg_r);

/* DELE: marks message n. Returns what maildrop_get() would have said before. */
enum maildrop_lookup maildrop_delete(struct maildrop *m, uint32_t n);

/* RSET: unmarks every message. */
void maildrop_reset(struct maildrop *m);

/* Number of messages marked deleted. */
uint32_t maildrop_deleted_count(const struct maildrop *m);

/*
 * Writes the UIDs of the deleted messages, ascending, into uids (room for
 * maildrop_deleted_count() entries). Returns how many were written.
 */
size_t maildrop_deleted_uids(const struct maildrop *m, uint32_t *uids, size_t cap);

#endif
