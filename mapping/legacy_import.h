/* Legacy UIDL import: an old POP3 server's UIDL list, parsed and merged into a state document. */
#ifndef POPGATE_LEGACY_IMPORT_H
#define POPGATE_LEGACY_IMPORT_H

#include <stddef.h>

#include "state.h"

/*
 * Two formats, both listing the old server's messages in its own order (the
 * order matters: it is matched against ascending IMAP UIDs).
 *
 * Text, one message per line, fields separated by spaces or tabs, LF or CRLF:
 *
 *     # comment lines and blank lines are ignored
 *     N UIDL SIZE [MESSAGE-ID]
 *     1 AAAA0001 2048 <20240101.1234@example.com>
 *     3 AAAA0003 512
 *
 *   N is the old POP3 message number (1.., increasing; gaps are fine): the
 *   "UIDL" answer's lines with the matching "LIST" size appended. MESSAGE-ID is
 *   the rest of the line, optional but strongly advised: without it, messages
 *   can only be matched by order and size.
 *
 * JSON, one object:
 *
 *     {"user": "bob", "messages": [
 *        {"uidl": "AAAA0001", "size": 2048, "message_id": "<...>"}, ...]}
 *
 *   "user" is optional (reported to the caller, not checked here); in a
 *   message, "uidl" and "size" (a non-negative integer) are required,
 *   "message_id" is a string or null, "number" (the old message number) is
 *   allowed and ignored, as is any key starting with "x-". Other keys are
 *   errors, so a misspelt "message_id" is not silently dropped.
 *
 * In both, every UIDL must be 1..70 characters of 0x21..0x7E and appear once,
 * and sizes are at most 2^63 - 1 (what the state document can hold).
 */
struct legacy_import {
    char *user;                   /* owned; NULL when the input names none */
    struct state_legacy *entries; /* owned; in the old server's order; matched = false */
    size_t nentries;
};

enum legacy_import_format {
    LEGACY_IMPORT_AUTO, /* JSON when the first non-blank byte is '{', else text */
    LEGACY_IMPORT_TEXT,
    LEGACY_IMPORT_JSON,
};

/*
 * Parses buf[0..len). Returns 0 with *list_r (owned by the caller, free with
 * legacy_import_free()), or -1 with *error_r (static text) and *line_r, the
 * 1-based line the error is on (0 when it is about the whole input).
 */
int legacy_import_parse(const char *buf, size_t len, enum legacy_import_format format,
                        struct legacy_import **list_r, const char **error_r, size_t *line_r);

void legacy_import_free(struct legacy_import **list);

struct legacy_import_merge_stats {
    size_t entries;      /* in the new list */
    size_t kept_matched; /* already matched before and kept */
    size_t pending;      /* waiting to be matched at the next login */
};

/*
 * Makes list the document's legacy list. Entries a login already matched are
 * kept matched: an entry of list with the UIDL of a matched one takes its
 * place, matched; matched ones not in list stay, after the others. So
 * importing the same list twice, or again after a login, changes nothing more.
 * Returns 0, or -1 with *error_r when out of memory (doc unchanged).
 * stats_r may be NULL.
 */
int legacy_import_merge(struct state_doc *doc, const struct legacy_import *list,
                        struct legacy_import_merge_stats *stats_r, const char **error_r);

#endif
