/* The IMAP command writer: tags, atoms, quoted strings, literals and UID sets. */
#ifndef POPGATE_IMAP_WRITER_H
#define POPGATE_IMAP_WRITER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Longest command the writer builds (an OAuth token fits). */
#define IMAP_CMD_MAX 16384
/* Synchronizing literals one command may hold. */
#define IMAP_CMD_SYNC_MAX 4

/*
 * A command under construction. Embeddable; build it on the stack. After
 * imap_cmd_end(), buf[0..len) is the whole command with its CRLF. Where a
 * synchronizing literal was used (no LITERAL+), sync[i] is the offset just
 * after a "{n}\r\n": the caller sends buf up to sync[0], waits for the
 * server's "+" continuation, sends up to sync[1], and so on.
 */
struct imap_cmd {
    char buf[IMAP_CMD_MAX];
    size_t len;
    size_t sync[IMAP_CMD_SYNC_MAX];
    unsigned nsync;
    bool literal_plus; /* server announced LITERAL+ (or LITERAL- and the literal is <= 4096) */
    bool failed;       /* something did not fit or could not be encoded */
    const char *error; /* static reason when failed */
};

/* Starts "<tag> <name>", e.g. ("P3", "UID FETCH"). name is written as it is. */
void imap_cmd_begin(struct imap_cmd *c, const char *tag, const char *name, bool literal_plus);

/* Appends " " and text exactly as given: atoms, numbers, sets, parenthesized
 * lists built by the caller ("(UID RFC822.SIZE)"). The caller vouches for it;
 * only CR or LF in it (which would end the command early) fails the command. */
void imap_cmd_raw(struct imap_cmd *c, const char *text);

/*
 * Appends " " and s[0..len) as an IMAP string that reaches the server byte for
 * byte: a quoted string when every byte is printable 7-bit ASCII (with \" and \\
 * escaped), else a literal {n} (with "+" when literal_plus), which carries
 * 8-bit bytes, CR and LF. NUL cannot be sent in any string: fails with
 * "string contains NUL".
 */
void imap_cmd_string(struct imap_cmd *c, const char *s, size_t len);

/* Appends CRLF. Returns 0, or -1 with *error_r (the first failure's static reason)
 * when any step failed; buf is then not a command to send. */
int imap_cmd_end(struct imap_cmd *c, const char **error_r);

/*
 * Writes sorted, distinct UIDs uids[0..n) as an IMAP sequence set using ranges
 * ("1:3,7,9:12") into out (cap bytes, NUL-terminated). Writes as many UIDs as fit
 * and sets *used_r to how many were covered, so a huge set is split over several
 * commands. Returns the string length (0 when n == 0 or nothing fits).
 * A range that does not fit whole is cut short, and the next call goes on from
 * *used_r. cap >= 11 (a UID's 10 digits and the NUL) always covers at least one
 * UID, so a loop over a huge set always makes progress; cap >= 22 fits any
 * "first:last" range whole.
 */
size_t imap_writer_uid_set(char *out, size_t cap, const uint32_t *uids, size_t n, size_t *used_r);

#endif
