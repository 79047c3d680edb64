/* UIDL assignment: which unique-id each message of a login snapshot shows, stable across sessions.
 */
#ifndef POPGATE_UIDL_ASSIGN_H
#define POPGATE_UIDL_ASSIGN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "state.h"
#include "uidl.h"

/* One message of a folder as the server reported it at login. */
struct uidl_assign_msg {
    uint32_t uid;
    uint64_t size;       /* RFC822.SIZE */
    uint64_t msgid_hash; /* uidl_msgid_hash() of the Message-ID; 0 = unknown */
    const char *guid;    /* EMAILID / X-GUID / X-GM-MSGID; NULL = none */
    const char *x_uidl;  /* the X-UIDL header value, unfolded; NULL = none */
};

/* One folder of the maildrop. Pass every message the server has in it, hidden
 * ones included: only the state can tell which are hidden (see hidden_r). */
struct uidl_assign_folder {
    uint16_t folder;                    /* index into doc->folders (state_doc_folder()) */
    uint32_t uidvalidity;               /* the folder's UIDVALIDITY now */
    const struct uidl_assign_msg *msgs; /* any order; borrowed */
    size_t nmsgs;
};

struct uidl_assign_config {
    const char *tmpl; /* mapping.uidl_format, checked; NULL = UIDL_TEMPLATE_DEFAULT */
    bool reuse_xuidl; /* mapping.reuse_xuidl */
};

/* Where the UIDLs came from, for the session's log line. */
struct uidl_assign_stats {
    size_t kept;           /* recorded in the state for this UID */
    size_t reassociated;   /* recorded for an old UID before a UIDVALIDITY change */
    size_t legacy;         /* an imported UIDL of the old POP3 server, matched now */
    size_t xuidl;          /* the message's X-UIDL header */
    size_t generated;      /* the template (or the default when it gave nothing) */
    size_t suffixed;       /* made unique with "-N" */
    size_t dropped;        /* recorded UIDLs lost at a UIDVALIDITY change (no match) */
    size_t legacy_pending; /* imported UIDLs still unmatched afterwards */
    bool rewritten;        /* doc->msgs was rebuilt (a size, a Message-ID, a UIDL changed) */
};

/*
 * Gives every message of the maildrop (folders in the given order, each in
 * ascending UID order: the order POP3 numbers them) its UIDL, in this order of
 * preference:
 *  1. the UIDL the state recorded for (folder, uid) while the folder's
 *     UIDVALIDITY is unchanged;
 *  2. after a UIDVALIDITY change: the UIDL recorded for the old message with
 *     the same (Message-ID hash, size); when several share a key, the k-th old
 *     (by old UID) goes with the k-th new (by new UID). Messages without a
 *     Message-ID cannot be re-associated: they get new UIDLs (a client
 *     downloading twice is better than one skipping a message it never had);
 *  3. an unmatched imported legacy UIDL (doc->legacy), matched by order and
 *     size, then by Message-ID, see uidl_assign.c;
 *  4. with reuse_xuidl, the X-UIDL header when it is a valid unique-id;
 *  5. the template; the default format when the template gives no valid UIDL
 *     for this message (%g without a server id).
 * A UIDL already taken in the maildrop, or recorded in the state for a message
 * no longer present, gets "-2", "-3"... (the base is cut to stay within 70);
 * earlier preferences win, so a UIDL a client knows never moves.
 *
 * Writes the UIDL of message i of the concatenated folders into uidls_r[i]
 * and, when hidden_r is not NULL, whether the state hides it (the caller
 * leaves those out of the snapshot). Updates doc: every message now has an
 * entry with its UIDL, size and Message-ID hash; at a UIDVALIDITY change the
 * folder's entries are replaced by the new UIDs (hidden and real_size carried
 * over) and its uidvalidity updated; matched legacy entries are marked.
 * Entries of messages no longer on the server are left for state_doc_prune().
 * The caller saves doc.
 *
 * Returns 0, or -1 with *error_r (static text) and doc unchanged: out of
 * memory, a folder index out of range or given twice, UID 0 or a UID twice in
 * a folder, a size over 2^63 - 1, an invalid template. Sets doc->msgs_alloc
 * with the array it puts in. O(n log n); stats_r may be NULL.
 */
int uidl_assign(struct state_doc *doc, const struct uidl_assign_folder *folders, size_t nfolders,
                const struct uidl_assign_config *config, char (*uidls_r)[UIDL_MAX + 1],
                bool *hidden_r, struct uidl_assign_stats *stats_r, const char **error_r);

/*
 * The churn hash of a session: 64-bit FNV-1a over "uidl\n" for each UIDL in
 * POP3 order, skipping those with skip[i] set (skip may be NULL). Equal lists
 * give equal hashes; log it as 16 hex digits. uidls is only read (not const:
 * C11 would not take the caller's char (*)[] for a const one without a cast).
 */
uint64_t uidl_assign_list_hash(char (*uidls)[UIDL_MAX + 1], const bool *skip, size_t n);

#endif
