/* The POP3 command parser: client bytes in, one validated command at a time out. */
#ifndef POPGATE_POP3_PARSER_H
#define POPGATE_POP3_PARSER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pop3_types.h"

/* A command line is at most 255 octets including CRLF (RFC 2449 section 4). */
#define POP3_LINE_MAX 255
/* The most an operator may allow instead (clients that overstep RFC 2449). */
#define POP3_LINE_LIMIT 2048
/* A SASL continuation line (RFC 5034) may carry a long token (OAuth). */
#define POP3_SASL_LINE_MAX 16384
#define POP3_ARGS_MAX      2

enum pop3_cmd {
    POP3_CMD_USER = 1,
    POP3_CMD_PASS,
    POP3_CMD_APOP,
    POP3_CMD_AUTH,
    POP3_CMD_STLS,
    POP3_CMD_CAPA,
    POP3_CMD_QUIT,
    POP3_CMD_STAT,
    POP3_CMD_LIST,
    POP3_CMD_RETR,
    POP3_CMD_DELE,
    POP3_CMD_NOOP,
    POP3_CMD_RSET,
    POP3_CMD_TOP,
    POP3_CMD_UIDL,
    /* A SASL continuation line, returned after pop3_parser_expect_sasl(). */
    POP3_CMD_SASL_LINE,
};

/*
 * One parsed command. Every slice points into the parser's own line buffer and
 * stays valid until the next pop3_parser_feed() call.
 *  - verb: the keyword as the client wrote it.
 *  - arg:  everything after the single space that follows the keyword, with the
 *          line end removed and nothing else trimmed (PASS passwords may hold
 *          spaces, also at either end; USER takes it whole as well).
 *          For POP3_CMD_SASL_LINE: the whole line without its line end.
 *          USER: at least one non-space byte. PASS: may be empty ("PASS ").
 *  - argv/argc: arg split at runs of spaces (for AUTH, APOP, and the numeric
 *          commands; argc is 0 for every other command, USER and PASS included).
 *  - num: num[i] is the decimal value of argv[i] (i < argc) for LIST, UIDL,
 *          RETR, DELE, TOP (validated: digits only, fits in uint32_t; leading
 *          zeros allowed; 0 is syntactically valid and left to the caller).
 */
struct pop3_command {
    enum pop3_cmd cmd;
    struct pop3_slice verb;
    struct pop3_slice arg;
    unsigned argc;
    struct pop3_slice argv[POP3_ARGS_MAX];
    uint32_t num[POP3_ARGS_MAX];
};

enum pop3_parse_status {
    POP3_PARSE_MORE,  /* all input consumed, no complete line yet */
    POP3_PARSE_CMD,   /* *cmd_r holds a command */
    POP3_PARSE_ERROR, /* a bad line was consumed whole; *error_r says why */
};

struct pop3_parser;

/* Returns a new parser (owned by the caller; free with pop3_parser_free), or NULL
 * when out of memory. */
struct pop3_parser *pop3_parser_new(void);
/* The same with command lines of up to line_max octets (CRLF included), clamped to
 * POP3_LINE_MAX .. POP3_LINE_LIMIT; "POP3_LINE_MAX" below then means line_max. */
struct pop3_parser *pop3_parser_new_max(size_t line_max);
void pop3_parser_free(struct pop3_parser **p);

/*
 * Feeds client bytes. Consumes at most one line (up to and including its LF; a
 * CR before the LF is part of the line end; a lone LF also ends a line) and sets
 * *consumed_r to the bytes used. The caller feeds the rest in later calls.
 * Resumes at any byte boundary: a line split over many calls gives the same
 * result as the line in one call. *cmd_r is cleared on every call.
 *
 * The limits count the octets on the wire, line end included: with CRLF a line
 * holds at most 253 bytes of text, with a lone LF 254.
 *
 * Errors (line consumed whole, parser ready for the next line):
 *   "line too long" (over POP3_LINE_MAX with its CRLF, or POP3_SASL_LINE_MAX in
 *   SASL mode; the rest of the line up to LF is discarded, and the error is
 *   returned once, when its LF arrives), "empty command" (nothing or only
 *   spaces), "invalid character" (NUL, DEL or another control byte other than
 *   TAB in the line; a CR is only allowed right before the LF), "unknown
 *   command" (also for a line starting with a space), "missing argument", "too
 *   many arguments", "invalid number".
 * For the last three, cmd_r->cmd and cmd_r->verb name the command, so the reply
 * can say which one was wrong; for the others cmd_r->cmd is 0.
 * *error_r points to a static string.
 */
enum pop3_parse_status pop3_parser_feed(struct pop3_parser *p, const char *buf, size_t len,
                                        size_t *consumed_r, struct pop3_command *cmd_r,
                                        const char **error_r);

/*
 * The next line is a SASL continuation: return it whole as POP3_CMD_SASL_LINE with
 * a line limit of POP3_SASL_LINE_MAX. Applies to one line only. An empty line is
 * returned too (as an empty arg); "line too long" and "invalid character" still
 * apply, and such an error also ends the SASL mode.
 * The big line buffer is allocated here and freed (wiped) at the first feed after
 * the SASL line, so idle sessions keep only the small one. Returns 0, or -1 when
 * out of memory (the mode is then unchanged).
 */
int pop3_parser_expect_sasl(struct pop3_parser *p);

/* Forgets any partial line and a pending SASL mode (used after STLS, where
 * buffered plaintext is dropped). */
void pop3_parser_reset(struct pop3_parser *p);

#endif
