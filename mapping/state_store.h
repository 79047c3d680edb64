/* The state store: load, save (atomically), lock and unlock per-user state documents. */
#ifndef POPGATE_STATE_STORE_H
#define POPGATE_STATE_STORE_H

#include <stddef.h>

#include "state.h"

/* Files live in one folder; a distributed backend (Redis) can implement the same calls. */
struct state_store;
struct state_lock;

enum state_lock_result {
    STATE_LOCK_OK,
    STATE_LOCK_BUSY,  /* another session holds this mailbox */
    STATE_LOCK_ERROR, /* the store cannot be used; err says why */
};

/*
 * Opens the file backend on dir (the last component is created 0700 if missing),
 * owned by the caller. Temporary files left by saves that died ("*.tmp-<pid>-<n>",
 * never read by load) and older than an hour are removed. NULL with a reason in
 * err. Safe to share between threads.
 */
struct state_store *state_store_open(const char *dir, char *err, size_t cap);
void state_store_close(struct state_store **st);

/*
 * The base file name for user[0..len): every byte outside [a-z0-9.-] (upper case
 * included, so case variants never collide) is written as "_xx" (lower-case hex),
 * and "." alone or a leading "." is escaped too, so no name reaches outside the
 * folder; the empty name is "_". A result over 200 bytes becomes its first 136
 * bytes, "~", and the hex SHA-256 of the whole user name (a small built-in
 * SHA-256: mapping/ links no OpenSSL). The files are "<name>.json" (the document),
 * "<name>.lock", "<name>.tmp-<pid>-<n>" and "<name>.corrupt-<unix time>[-<n>]":
 * '.' may occur in a name, but no name's files are another name's files, because
 * the last dot-separated part tells the kinds apart. Writes into out
 * (cap >= STATE_STORE_NAME_MAX + 1; a smaller cap gets ""). Pure; exposed for tests.
 */
#define STATE_STORE_NAME_MAX 250
void state_store_file_name(const char *user, size_t len, char *out, size_t cap);

/*
 * Loads user's document ("<name>.json"; temporary files are ignored); *doc_r is
 * the caller's. A missing file gives a new empty document. A file that does not
 * parse, or whose "user" is another user (a name collision), is renamed to
 * "<name>.corrupt-<unix time>", a warning is put in warn (cap bytes; "" when none)
 * and a new empty document is returned: the session goes on. Returns 0 with
 * *doc_r, or -1 with err on an I/O error, a user name that is empty, holds a NUL
 * byte or is not UTF-8, a document of a newer version (left in place: rebuilding
 * it would throw away what a newer popgate recorded), or a document that is not a
 * regular file (a symbolic link is never followed).
 * Blocking: call it off the event loop.
 */
int state_store_load(struct state_store *st, const char *user, size_t len, struct state_doc **doc_r,
                     char *warn, size_t wcap, char *err, size_t ecap);

/*
 * Saves atomically: write "<name>.tmp-<pid>-<n>" (O_EXCL, mode 0600), fsync,
 * rename over "<name>.json", fsync the folder. A crash leaves the old or the new
 * document, never a torn one (and maybe a temporary file, which nothing reads).
 * On failure the temporary file is removed. Returns 0 or -1 with err.
 * Blocking: off the loop.
 */
int state_store_save(struct state_store *st, const struct state_doc *doc, char *err, size_t cap);

/*
 * Takes user's mailbox lock without waiting (flock on "<name>.lock", so it is
 * shared by every process on this host and released when its holder dies).
 * Two sessions of one process conflict too. *lock_r is the caller's, released by
 * state_store_unlock. Lock files are never removed (removing one while another
 * process has it open would let two sessions hold "the" lock).
 */
enum state_lock_result state_store_lock(struct state_store *st, const char *user, size_t len,
                                        struct state_lock **lock_r, char *err, size_t cap);
void state_store_unlock(struct state_lock **lock);

#endif
