/* The maildrop snapshot: POP3 message number <-> IMAP folder, UID and size, fixed at login. */
#ifndef POPGATE_MAILDROP_H
#define POPGATE_MAILDROP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Folders merged into one maildrop (mapping.folders); the config allows fewer. */
#define MAILDROP_FOLDERS_MAX 64

struct maildrop_msg {
    uint64_t size;
    uint32_t uid;
    uint16_t folder; /* index of maildrop_add_folder() order */
    bool deleted;    /* marked by DELE in this session */
    bool gone;       /* the server no longer has it (maildrop_set_gone) */
};

enum maildrop_lookup {
    MAILDROP_OK,
    MAILDROP_NO_SUCH, /* 0 or beyond the last message */
    MAILDROP_DELETED, /* marked deleted in this session */
};

struct maildrop;

/* Returns a new, open (unsealed) maildrop without folders, owned by the caller, or NULL. */
struct maildrop *maildrop_new(void);
void maildrop_free(struct maildrop **m);

/*
 * While open: starts the next folder (name is copied); later maildrop_add()
 * calls go into it. Folders are numbered 0, 1, ... in this order. Returns the
 * folder's index, or -1 when sealed, out of memory or at MAILDROP_FOLDERS_MAX.
 */
int maildrop_add_folder(struct maildrop *m, const char *name, uint32_t uidvalidity);

/*
 * While open: records a message of the last folder added (in any order). A UID
 * reported again in that folder replaces the earlier size. Returns 0, or -1
 * when out of memory, uid == 0 or no folder was added.
 */
int maildrop_add(struct maildrop *m, uint32_t uid, uint64_t size);

/*
 * While open: records the server's stable id of message uid of the last folder
 * added (EMAILID, X-GUID, X-GM-MSGID; guid is copied). Returns 0, or -1 when out
 * of memory or no folder was added.
 */
int maildrop_set_guid(struct maildrop *m, uint32_t uid, const char *guid);

/* Fixes the snapshot: messages sorted by folder, then ascending UID, get numbers
 * 1..n. After this, maildrop_add() is refused (returns -1). Until it is called,
 * the count, STAT and lookups see an empty maildrop. Calling it again does nothing. */
void maildrop_seal(struct maildrop *m);

size_t maildrop_folder_count(const struct maildrop *m);
/* Folder f's name (owned by the maildrop) and UIDVALIDITY; f < maildrop_folder_count(). */
const char *maildrop_folder_name(const struct maildrop *m, size_t f);
uint32_t maildrop_folder_uidvalidity(const struct maildrop *m, size_t f);
/* Once sealed: folder f's messages are numbers *first_r .. *first_r + count - 1
 * (count 0: none); returns count. */
uint32_t maildrop_folder_range(const struct maildrop *m, size_t f, uint32_t *first_r);

/* Messages in the snapshot, deleted ones included (the highest message number). */
uint32_t maildrop_count(const struct maildrop *m);

/* Messages not marked deleted, and the sum of their sizes (STAT). */
void maildrop_stat(const struct maildrop *m, uint32_t *count_r, uint64_t *octets_r);

/* Looks message n (1-based) up. On MAILDROP_OK *msg_r points into the maildrop
 * (valid until it is freed). */
enum maildrop_lookup maildrop_get(const struct maildrop *m, uint32_t n,
                                  const struct maildrop_msg **msg_r);

/* Once sealed: message n's stable id from maildrop_set_guid(), or NULL. Valid until the
 * maildrop is freed. */
const char *maildrop_guid(const struct maildrop *m, uint32_t n);

/* Message n (1-based), marked deleted or not, or NULL beyond the snapshot. Valid
 * until the maildrop is freed. */
const struct maildrop_msg *maildrop_at(const struct maildrop *m, uint32_t n);

/* DELE: marks message n. Returns what maildrop_get() would have said before. */
enum maildrop_lookup maildrop_delete(struct maildrop *m, uint32_t n);

/* Marks message n as gone from the server (another client expunged it): RETR
 * can answer at once from then on. Does nothing beyond the snapshot. */
void maildrop_set_gone(struct maildrop *m, uint32_t n);

/* RSET: unmarks every message. */
void maildrop_reset(struct maildrop *m);

/* Number of messages marked deleted. */
uint32_t maildrop_deleted_count(const struct maildrop *m);

/*
 * Writes the UIDs of folder f's deleted messages, ascending, into uids (room
 * for maildrop_deleted_count() entries is always enough). Returns how many were
 * written.
 */
size_t maildrop_deleted_uids(const struct maildrop *m, size_t f, uint32_t *uids, size_t cap);

#endif
