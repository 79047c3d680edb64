/* The per-user state document: what POP3 has shown, hidden and measured, as JSON. */
#ifndef POPGATE_STATE_H
#define POPGATE_STATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "uidl.h"

#define STATE_VERSION    1
#define STATE_FOLDER_MAX 255

/* A message POP3 has seen. Kept sorted by (folder, uid). */
struct state_msg {
    uint16_t folder;         /* index into state_doc.folders */
    uint32_t uid;            /* 1..2^32-1 */
    char uidl[UIDL_MAX + 1]; /* the UIDL a client was shown; "" = none yet */
    uint64_t size;           /* RFC822.SIZE the server reported (at most INT64_MAX) */
    uint64_t real_size;      /* octets actually streamed, when they differed; 0 = same */
    uint64_t msgid_hash;     /* 64-bit hash of the Message-ID header (0 = unknown), used to
                              * re-associate messages after a UIDVALIDITY change */
    bool hidden;             /* hidden from POP3 (on_delete hide / flag) */
};

struct state_folder {
    char name[STATE_FOLDER_MAX + 1]; /* IMAP mailbox name, e.g. "INBOX"; 1..255 bytes UTF-8 */
    uint32_t uidvalidity;            /* 0 = not seen yet */
};

/* A legacy UIDL imported from an old POP3 server, waiting to be matched at login. */
struct state_legacy {
    char uidl[UIDL_MAX + 1]; /* 1..70 characters of 0x21..0x7E */
    uint64_t size;
    uint64_t msgid_hash; /* 0 when the import had no Message-ID */
    bool matched;
};

/*
 * msgs and legacy are malloc'd. Code that replaces msgs with an array of its own
 * (built by a merge, say) sets msgs_alloc to the entries that array holds, so that
 * state_doc_upsert knows when it must grow it.
 */
struct state_doc {
    int version;                  /* STATE_VERSION */
    char *user;                   /* owned; non-empty UTF-8, no NUL */
    int64_t first_login;          /* unix seconds; 0 = never */
    int64_t last_login;           /* unix seconds; 0 = never */
    struct state_folder *folders; /* owned; names unique; at most 65536 (folder is uint16_t) */
    size_t nfolders;
    struct state_msg *msgs; /* owned, sorted by (folder, uid), no duplicates */
    size_t nmsgs;
    size_t msgs_alloc;           /* entries allocated at msgs (>= nmsgs) */
    struct state_legacy *legacy; /* owned (malloc); in the old server's order */
    size_t nlegacy;
};

/*
 * A new empty document for user[0..user_len) (copied), owned by the caller. NULL
 * with errno EINVAL when the name is empty, holds a NUL byte or is not UTF-8 (JSON
 * could not carry it back), or ENOMEM.
 */
struct state_doc *state_doc_new(const char *user, size_t user_len);
void state_doc_free(struct state_doc **doc);

/* A deep copy of doc (owned by the caller), or NULL when out of memory. */
struct state_doc *state_doc_dup(const struct state_doc *doc);

/*
 * Parses a document; *doc_r is the caller's. Strict: unknown top-level keys are
 * errors unless named "x-..." (those are ignored and not written back); unknown
 * keys inside entries, wrong types, missing required keys ("version", "user";
 * "f", "uid", "size" of a message; "uidl", "size" of a legacy entry), a missing or
 * newer "version", UIDLs outside 1..70 chars of 0x21..0x7E, msgid other than 16
 * lower-case hex digits, numbers out of range, duplicate folder names, duplicate
 * (folder, uid) pairs, folder indexes out of range and duplicate JSON keys are
 * errors. Messages may come in any order (they are sorted). Returns 0 with
 * *doc_r, or -1 with *error_r naming the key path ("messages[3].uidl: ...") or
 * the JSON line and column ("3:17: invalid JSON: ..."); that text lives in a
 * thread-local buffer, valid until this thread's next state_doc_parse call.
 */
int state_doc_parse(const char *json, size_t len, struct state_doc **doc_r, const char **error_r);

/*
 * Serializes (compact, fixed key order, default fields left out): the same
 * document always gives the same bytes, and state_doc_parse reads them back.
 * Returns a malloc'd NUL-terminated string (the caller's) and its length, or NULL
 * with errno ENOMEM, or EINVAL when doc breaks a rule state_doc_parse checks
 * (then its bytes would not load back, so none are made).
 */
char *state_doc_serialize(const struct state_doc *doc, size_t *len_r);

/* Finds or adds a folder; returns its index, or -1 when name is not 1..255 bytes
 * of UTF-8, out of memory, or there are 65536 folders already. */
int state_doc_folder(struct state_doc *doc, const char *name);

/* Finds the message (folder, uid) (binary search), or NULL. The pointer is valid
 * until the next upsert or prune. */
struct state_msg *state_doc_find(struct state_doc *doc, uint16_t folder, uint32_t uid);

/* Inserts (zeroed but for folder and uid) or returns (folder, uid), keeping the
 * order; appending in ascending order is O(1). NULL when out of memory, folder is
 * not an index of doc->folders, or uid is 0. Valid until the next upsert or prune. */
struct state_msg *state_doc_upsert(struct state_doc *doc, uint16_t folder, uint32_t uid);

/* Drops every message of folder whose uid is not in uids[0..n) (sorted ascending):
 * they are gone from the server. */
void state_doc_prune(struct state_doc *doc, uint16_t folder, const uint32_t *uids, size_t n);

#endif
