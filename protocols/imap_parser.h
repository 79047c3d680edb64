/* The incremental IMAP response parser: server bytes in, one event at a time out. */
#ifndef POPGATE_IMAP_PARSER_H
#define POPGATE_IMAP_PARSER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "imap_types.h"

/* The longest single token (atom, quoted string, response code, text) kept whole. */
#define IMAP_TOKEN_MAX 16384
/* Tokens up to this size need no allocation beyond the parser itself. */
#define IMAP_TOKEN_SMALL 256
/* The most bytes outside literals one response may have before it is an error. */
#define IMAP_LINE_MAX 65536
/* Deepest nesting of parenthesized lists. */
#define IMAP_DEPTH_MAX 32

enum imap_resp_kind {
    IMAP_RESP_TAGGED,       /* "<tag> OK|NO|BAD ..." */
    IMAP_RESP_UNTAGGED,     /* "* ..." */
    IMAP_RESP_CONTINUATION, /* "+ ..." */
};

enum imap_ev {
    IMAP_EV_MORE = 0,      /* all input consumed; feed more */
    IMAP_EV_ERROR,         /* protocol error; *error_r says why; the parser is dead */
    IMAP_EV_BEGIN,         /* a response begins: kind; str = tag for tagged ones */
    IMAP_EV_ATOM,          /* an atom or number: str; is_number and num for numbers.
                            * "BODY[HEADER.FIELDS (A B)]<0>" is one atom: a "[" inside
                            * an atom runs to its "]", spaces and parentheses included. */
    IMAP_EV_STRING,        /* a quoted string, unescaped: str */
    IMAP_EV_NIL,           /* NIL */
    IMAP_EV_LIST_BEGIN,    /* "(" ; depth is the depth inside it (1 for the outer list) */
    IMAP_EV_LIST_END,      /* ")" ; depth is the depth after it */
    IMAP_EV_LITERAL_BEGIN, /* "{n}" CRLF: num = n (literal8 "~{n}" too) */
    IMAP_EV_LITERAL_DATA,  /* str = the next chunk of the literal's bytes; it points into
                            * the caller's buffer, never copied */
    IMAP_EV_LITERAL_END,   /* the literal's last byte has been handed on */
    IMAP_EV_CODE,          /* a response code "[NAME args]" of a status response: str = NAME,
                            * args = the raw text after NAME's space, up to "]" (may be empty) */
    IMAP_EV_TEXT,          /* the human-readable text of a status response (after the code),
                            * or everything after "+ " of a continuation; may be empty */
    IMAP_EV_END,           /* the response's CRLF */
};

/*
 * One event. Slices point into the parser's token buffer or, for literal data,
 * into the fed buffer; both stay valid until the next imap_parser_feed().
 */
struct imap_event {
    enum imap_ev type;
    enum imap_resp_kind kind; /* of the current response */
    struct imap_slice str;
    struct imap_slice args;
    uint64_t num;
    bool is_number;
    unsigned depth;
};

struct imap_parser;

/* Returns a new parser owned by the caller (free with imap_parser_free), or NULL. */
struct imap_parser *imap_parser_new(void);
void imap_parser_free(struct imap_parser **p);

/*
 * Feeds server bytes and returns the next event; *consumed_r is how much of buf
 * was used for it. Call again with the unused rest (and then with more input):
 * the caller loops until IMAP_EV_MORE. Resumes at any byte boundary; any
 * split of the input gives the same events (LITERAL_DATA chunks differ only in
 * how the bytes are cut).
 *
 * Grammar handled (RFC 3501 / 9051 responses, leniently):
 *  - "* " or "<tag> " then, when the next atom is OK, NO, BAD, BYE or PREAUTH,
 *    a status response: ATOM(status), optional CODE, TEXT, END.
 *  - "+ text" or "+" alone: BEGIN(CONTINUATION), TEXT, END.
 *  - anything else: a run of ATOM, STRING, NIL, LIST_BEGIN/END and literals up
 *    to CRLF ("* 3 FETCH (UID 7 BODY[] {12}\r\n...)", "* CAPABILITY ...",
 *    "* FLAGS (...)", "* LIST (...) "/" INBOX").
 * Lines may end in CRLF or a bare LF.
 *
 * Errors: a token over IMAP_TOKEN_MAX, a response over IMAP_LINE_MAX outside
 * literals, lists deeper than IMAP_DEPTH_MAX, an unbalanced ")", NUL outside a
 * literal, a bad literal header, or a line that starts with neither "*", "+"
 * nor a tag. After an error the parser stays in error.
 *
 * Details the grammar above leaves open:
 *  - BEGIN's str is the tag, or "*" / "+" for untagged and continuation lines.
 *  - A status response always has a TEXT event, empty when there is no text.
 *    A code's args run to the first "]"; a line end before it is an error.
 *    A continuation's text is not searched for a code.
 *  - is_number is true for an all-digit atom up to 2^63-1 (RFC 9051 number64);
 *    a longer one is still an ATOM, with is_number false and num 0.
 *  - NIL (any case) is a NIL event, str "NIL" as sent; "NIL" quoted is a STRING.
 *  - A line may not end inside a list, a quoted string or the "[...]" of an atom
 *    (errors). A quoted string keeps the byte after any backslash; 8-bit bytes are
 *    kept in atoms and quoted strings.
 *  - IMAP_LINE_MAX counts every byte of the response but literal bytes: tag,
 *    items, literal headers and the final CRLF. A token may hold exactly
 *    IMAP_TOKEN_MAX bytes (a code counts NAME and args together).
 *  - LITERAL_END needs no input: it may come from a call with len == 0, which
 *    is why the caller loops until MORE even when nothing is left. {0} gives
 *    LITERAL_BEGIN num 0 then LITERAL_END, no data. "~{n}" gives the same events.
 */
enum imap_ev imap_parser_feed(struct imap_parser *p, const char *buf, size_t len,
                              size_t *consumed_r, struct imap_event *ev_r, const char **error_r);

/* True while the parser is inside a literal's bytes. */
bool imap_parser_in_literal(const struct imap_parser *p);

#endif
