/* The POP3 reply writer: status lines, CAPA, and multi-line listing lines. */
#ifndef POPGATE_POP3_WRITER_H
#define POPGATE_POP3_WRITER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The longest status line the writer produces, CRLF included (RFC 2449: 512). */
#define POP3_REPLY_MAX 512

/*
 * Writes "+OK text\r\n" or "-ERR [CODE] text\r\n" into out (cap bytes). code may
 * be NULL (no response code); text may be NULL or empty ("+OK\r\n"). The line is
 * cut to POP3_REPLY_MAX (or cap, if smaller) with its CRLF kept; CR and LF in
 * code and text are replaced by spaces, so no caller can break the framing. A
 * code that does not fit whole is left out rather than cut. Returns the length
 * written (never 0 when cap >= POP3_REPLY_MAX; 0 only when cap cannot hold
 * "+OK\r\n" or "-ERR\r\n").
 */
size_t pop3_writer_status(char *out, size_t cap, bool ok, const char *code, const char *text);

/* What CAPA announces; each NULL, empty or false entry is left out. */
struct pop3_capa {
    bool top, uidl, user, resp_codes, auth_resp_code, pipelining, stls;
    const char *sasl;           /* "PLAIN LOGIN": the SASL line's mechanisms */
    const char *login_delay;    /* "900" or "900 USER" */
    const char *expire;         /* "NEVER", "31", "31 USER" */
    const char *implementation; /* "popgate" */
};

/*
 * Writes the whole CAPA reply, "+OK ...\r\n", one capability per line, and the
 * terminating ".\r\n". Returns the length, or 0 if it does not fit in cap.
 */
size_t pop3_writer_capa(char *out, size_t cap, const struct pop3_capa *capa);

/* Writes "n value\r\n" (LIST: value is the size; UIDL: the uidl string). Returns
 * the length, or 0 if it does not fit. */
size_t pop3_writer_list_line(char *out, size_t cap, uint32_t n, uint64_t size);
size_t pop3_writer_uidl_line(char *out, size_t cap, uint32_t n, const char *uidl);

#endif
