/* The dot-stuffer: turns a message's bytes into POP3 multi-line framing, chunk by chunk. */
#ifndef POPGATE_POP3_DOTSTUFF_H
#define POPGATE_POP3_DOTSTUFF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The bytes pop3_dotstuff_finish() may write: CRLF "." CRLF. */
#define POP3_DOTSTUFF_FINISH_MAX 5

/*
 * Embeddable (no allocation). Fields are private to pop3_dotstuff.c.
 * Rules (RFC 1939 section 3): a line starting with "." gets another "." (the
 * message's first line too); a bare LF becomes CRLF; CRLF passes as it is; a CR
 * not followed by LF passes as it is.
 */
struct pop3_dotstuff {
    unsigned char at_line_start; /* private */
    unsigned char last_cr;       /* private */
    unsigned char done;          /* private */
    unsigned char limited;       /* private */
    uint64_t lines_left;         /* private */
    uint64_t in_total;           /* bytes consumed so far (message octets) */
};

void pop3_dotstuff_init(struct pop3_dotstuff *d);

/*
 * From now on, stop after `lines` more complete lines (TOP: the body lines): the
 * stuffer counts LFs consumed from here on and is done right after the last one.
 * With lines == 0 the stuffer is done at once if it stands at a line start;
 * otherwise it is done at the end of the line in progress (a line is never cut,
 * and that line ends the count just as the first LF would with lines == 1).
 */
void pop3_dotstuff_limit_lines(struct pop3_dotstuff *d, uint64_t lines);

/*
 * Stuffs in[0..len) into out[0..cap). Consumes as much input as fits (every
 * output byte that results from a consumed input byte is written, so nothing is
 * half-done across calls), sets *consumed_r, and returns the bytes written. Any
 * chunking of the input and any cap >= 1 give the same total output. Output is
 * at most 2 * len bytes. With a line limit reached, consumes nothing more.
 * When one byte of room is left before a line-start "." or a bare LF, the added
 * byte ("." or CR) is written alone and the input byte is left unconsumed; the
 * next call passes it as it is. So a call may write bytes and consume none: the
 * caller must feed unconsumed bytes again (after draining its output).
 */
size_t pop3_dotstuff_feed(struct pop3_dotstuff *d, const char *in, size_t len, size_t *consumed_r,
                          char *out, size_t cap);

/* True once a line limit has been reached. */
bool pop3_dotstuff_is_done(const struct pop3_dotstuff *d);

/*
 * Ends the message: adds CRLF if the last line lacks one (a pending lone CR gets
 * its LF), then ".\r\n". An empty message gives ".\r\n" alone; after a line
 * limit was reached it is ".\r\n" as well. out must have POP3_DOTSTUFF_FINISH_MAX
 * bytes. Returns the bytes written; afterwards the stuffer is done.
 */
size_t pop3_dotstuff_finish(struct pop3_dotstuff *d, char *out);

#endif
