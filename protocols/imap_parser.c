/* The IMAP response parser: a byte-driven state machine that turns server bytes into events. */
#include "imap_parser.h"

#include <stdlib.h>
#include <string.h>

/* A number must fit RFC 9051's number64 (63 bits); anything longer stays a plain atom. */
#define NUMBER64_MAX ((uint64_t)INT64_MAX)

enum parse_state {
    S_TAG,          /* start of a line: "*", "+" or a tag */
    S_ITEMS,        /* between items of a data response */
    S_ATOM,         /* inside an atom */
    S_ATOM_BRACKET, /* inside "[...]" of an atom: spaces and parentheses belong to it */
    S_QUOTED,       /* inside a quoted string */
    S_QUOTED_ESC,   /* after a backslash in a quoted string */
    S_LIT_SIZE,     /* after "{": digits up to "}" */
    S_LIT_CR,       /* after "}": CRLF or LF */
    S_LIT_LF,       /* after "}" CR: LF */
    S_LIT_DATA,     /* the literal's bytes */
    S_LIT_END,      /* the literal is done; LITERAL_END not yet reported */
    S_STATUS_SP,    /* after OK/NO/BAD/BYE/PREAUTH */
    S_STATUS_CODE,  /* after the status word's space: "[" opens a code */
    S_CODE_NAME,    /* inside "[NAME" */
    S_CODE_ARGS,    /* inside "[NAME args" */
    S_TEXT_SP,      /* after "]" or "+": one space before the text */
    S_TEXT,         /* human-readable text up to the line end */
    S_EOL,          /* at CR or LF ending a response */
    S_EOL_LF,       /* after the CR ending a response */
    S_ERROR,
};

/* What one byte did: whether it was used, and whether it finished an event. */
enum step {
    STEP_TAKE,      /* byte used, no event yet */
    STEP_TAKE_EMIT, /* byte used and it finished an event */
    STEP_EMIT,      /* byte ends the previous token; it is parsed again on the next call */
    STEP_FAIL,
};

struct imap_parser {
    enum parse_state state;
    enum imap_resp_kind kind;
    bool first_item;     /* the next item follows the tag, so it may be a status word */
    bool has_lit_digits; /* "{" has been followed by at least one digit */
    unsigned depth;
    size_t line_len; /* bytes of this response outside literals */
    size_t tok_len;
    size_t code_name_len; /* where NAME ends and args begin in tok */
    uint64_t lit_left;    /* size while reading the header, then bytes still to hand on */
    const char *error;
    /* The token: in small, or in a heap block of IMAP_TOKEN_MAX while a response has
     * a longer one (a capability list, a long text), freed at the response's end, so
     * an idle connection keeps only the small buffer. */
    char *tok;
    size_t tok_cap;
    char small[IMAP_TOKEN_SMALL];
};

struct imap_parser *imap_parser_new(void)
{
    struct imap_parser *p = calloc(1, sizeof(*p));

    if (p == NULL)
        return NULL;
    p->state = S_TAG;
    p->tok = p->small;
    p->tok_cap = sizeof(p->small);
    return p;
}

static void release_token(struct imap_parser *p)
{
    if (p->tok != p->small)
        free(p->tok);
    p->tok = p->small;
    p->tok_cap = sizeof(p->small);
}

void imap_parser_free(struct imap_parser **p)
{
    if (*p != NULL)
        release_token(*p);
    free(*p);
    *p = NULL;
}

bool imap_parser_in_literal(const struct imap_parser *p)
{
    return p->state == S_LIT_DATA;
}

static enum step fail(struct imap_parser *p, const char *error)
{
    p->state = S_ERROR;
    p->error = error;
    return STEP_FAIL;
}

static enum step push(struct imap_parser *p, unsigned char c)
{
    if (p->tok_len == IMAP_TOKEN_MAX)
        return fail(p, "token longer than IMAP_TOKEN_MAX");
    if (p->tok_len == p->tok_cap) {
        char *big = malloc(IMAP_TOKEN_MAX);
        if (big == NULL)
            return fail(p, "out of memory for a token");
        memcpy(big, p->tok, p->tok_len);
        p->tok = big;
        p->tok_cap = IMAP_TOKEN_MAX;
    }
    p->tok[p->tok_len++] = (char)c;
    return STEP_TAKE;
}

static void start_token(struct imap_parser *p, enum parse_state state)
{
    p->state = state;
    p->tok_len = 0;
}

static void emit(const struct imap_parser *p, struct imap_event *ev, enum imap_ev type)
{
    ev->type = type;
    ev->str.p = p->tok;
    ev->str.len = p->tok_len;
}

static bool is_line_end(unsigned char c)
{
    return c == '\r' || c == '\n';
}

/* RFC 3501 tag: ASTRING-CHAR except "+", so no CTL, 8-bit, SP or ( ) { " \ % *. */
static bool is_tag_char(unsigned char c)
{
    return c > ' ' && c < 0x7f && strchr("(){\"\\%*+", c) == NULL;
}

/* Bytes that end an atom. Other specials are taken into the atom: servers are lenient. */
static bool is_atom_end(unsigned char c)
{
    return c == ' ' || c == '(' || c == ')' || c == '"' || c == '{' || is_line_end(c);
}

static bool token_equals(const struct imap_parser *p, const char *word)
{
    size_t n = strlen(word);

    if (p->tok_len != n)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p->tok[i];
        if (c >= 'a' && c <= 'z')
            c = (unsigned char)(c - 'a' + 'A');
        if (c != (unsigned char)word[i])
            return false;
    }
    return true;
}

static bool token_is_status(const struct imap_parser *p)
{
    static const char *const words[] = {"OK", "NO", "BAD", "BYE", "PREAUTH"};

    for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++) {
        if (token_equals(p, words[i]))
            return true;
    }
    return false;
}

static bool token_number(const struct imap_parser *p, uint64_t *num_r)
{
    uint64_t num = 0;

    if (p->tok_len == 0)
        return false;
    for (size_t i = 0; i < p->tok_len; i++) {
        unsigned digit = (unsigned)(unsigned char)p->tok[i] - '0';
        if (digit > 9 || num > (NUMBER64_MAX - digit) / 10)
            return false;
        num = num * 10 + digit;
    }
    *num_r = num;
    return true;
}

static enum step step_eol(struct imap_parser *p, unsigned char c, struct imap_event *ev)
{
    if (p->state == S_EOL && c == '\r') {
        p->state = S_EOL_LF;
        return STEP_TAKE;
    }
    if (c != '\n')
        return fail(p, "CR not followed by LF");
    ev->type = IMAP_EV_END;
    start_token(p, S_TAG);
    p->depth = 0;
    release_token(p); /* nothing of this response is referenced from here on */
    return STEP_TAKE_EMIT;
}

static enum step step_tag(struct imap_parser *p, unsigned char c, struct imap_event *ev)
{
    if (c == ' ' || is_line_end(c)) {
        if (p->tok_len == 0)
            return fail(p, "line starts with neither \"*\", \"+\" nor a tag");
        if (token_equals(p, "*"))
            p->kind = IMAP_RESP_UNTAGGED;
        else if (token_equals(p, "+"))
            p->kind = IMAP_RESP_CONTINUATION;
        else
            p->kind = IMAP_RESP_TAGGED;
        emit(p, ev, IMAP_EV_BEGIN);
        /* The terminator is left for the next state: a continuation's text starts after
         * exactly one space, and items skip any number of them. */
        p->state = p->kind == IMAP_RESP_CONTINUATION ? S_TEXT_SP : S_ITEMS;
        p->first_item = true;
        return STEP_EMIT;
    }
    /* A new response starts: its length counts from here. */
    if (p->tok_len == 0)
        p->line_len = 0;
    bool star_or_plus = c == '*' || c == '+';
    if (p->tok_len == 0 ? !(star_or_plus || is_tag_char(c))
                        : (p->tok[0] == '*' || p->tok[0] == '+' || !is_tag_char(c)))
        return fail(p, "line starts with neither \"*\", \"+\" nor a tag");
    return push(p, c);
}

static enum step step_literal_header(struct imap_parser *p, unsigned char c, struct imap_event *ev)
{
    if (p->state == S_LIT_SIZE) {
        if (c == '}' && p->has_lit_digits) {
            p->state = S_LIT_CR;
            return STEP_TAKE;
        }
        if (c < '0' || c > '9')
            return fail(p, "bad literal header");
        if (p->lit_left > (UINT64_MAX - (uint64_t)(c - '0')) / 10)
            return fail(p, "literal size too large");
        p->lit_left = p->lit_left * 10 + (uint64_t)(c - '0');
        p->has_lit_digits = true;
        return STEP_TAKE;
    }
    if (p->state == S_LIT_CR && c == '\r') {
        p->state = S_LIT_LF;
        return STEP_TAKE;
    }
    /* After "}" a bare LF ends the header as well as CRLF does. */
    if (c != '\n')
        return fail(p, "bad literal header");
    ev->type = IMAP_EV_LITERAL_BEGIN;
    ev->num = p->lit_left;
    p->state = p->lit_left > 0 ? S_LIT_DATA : S_LIT_END;
    return STEP_TAKE_EMIT;
}

static void start_literal_header(struct imap_parser *p)
{
    p->state = S_LIT_SIZE;
    p->lit_left = 0;
    p->has_lit_digits = false;
}

static enum step step_atom(struct imap_parser *p, unsigned char c, struct imap_event *ev)
{
    if (p->state == S_ATOM_BRACKET) {
        if (is_line_end(c))
            return fail(p, "line ended inside \"[\" of an atom");
        if (c == ']')
            p->state = S_ATOM;
        return push(p, c);
    }
    if (!is_atom_end(c)) {
        if (c == '[')
            p->state = S_ATOM_BRACKET;
        return push(p, c);
    }
    if (c == '{' && token_equals(p, "~")) {
        start_literal_header(p); /* literal8 "~{n}" */
        return STEP_TAKE;
    }
    if (token_equals(p, "NIL")) {
        emit(p, ev, IMAP_EV_NIL);
    } else {
        emit(p, ev, IMAP_EV_ATOM);
        ev->is_number = token_number(p, &ev->num);
    }
    p->state = p->first_item && token_is_status(p) ? S_STATUS_SP : S_ITEMS;
    return STEP_EMIT;
}

static enum step step_quoted(struct imap_parser *p, unsigned char c, struct imap_event *ev)
{
    if (is_line_end(c))
        return fail(p, "line ended inside a quoted string");
    if (p->state == S_QUOTED_ESC) {
        p->state = S_QUOTED;
        return push(p, c);
    }
    if (c == '\\') {
        p->state = S_QUOTED_ESC;
        return STEP_TAKE;
    }
    if (c != '"')
        return push(p, c);
    emit(p, ev, IMAP_EV_STRING);
    p->state = S_ITEMS;
    return STEP_TAKE_EMIT;
}

static enum step step_items(struct imap_parser *p, unsigned char c, struct imap_event *ev)
{
    switch (c) {
    case ' ':
        return STEP_TAKE;
    case '\r':
    case '\n':
        if (p->depth > 0)
            return fail(p, "line ended inside a list");
        p->state = S_EOL;
        return step_eol(p, c, ev);
    case '(':
        if (p->depth == IMAP_DEPTH_MAX)
            return fail(p, "lists nested deeper than IMAP_DEPTH_MAX");
        p->depth++;
        ev->type = IMAP_EV_LIST_BEGIN;
        return STEP_TAKE_EMIT;
    case ')':
        if (p->depth == 0)
            return fail(p, "unbalanced \")\"");
        p->depth--;
        ev->type = IMAP_EV_LIST_END;
        return STEP_TAKE_EMIT;
    case '"':
        start_token(p, S_QUOTED);
        return STEP_TAKE;
    case '{':
        start_literal_header(p);
        return STEP_TAKE;
    default:
        start_token(p, S_ATOM);
        return step_atom(p, c, ev);
    }
}

static enum step step_text(struct imap_parser *p, unsigned char c, struct imap_event *ev)
{
    if (!is_line_end(c))
        return push(p, c);
    emit(p, ev, IMAP_EV_TEXT);
    p->state = S_EOL;
    return STEP_EMIT;
}

/* Status responses: "OK [NAME args] text"; the code is optional and so is the text. */
static enum step step_status(struct imap_parser *p, unsigned char c, struct imap_event *ev)
{
    switch (p->state) {
    case S_STATUS_SP:
        if (c == ' ') {
            p->state = S_STATUS_CODE;
            return STEP_TAKE;
        }
        break;
    case S_TEXT_SP:
        if (c == ' ') {
            start_token(p, S_TEXT);
            return STEP_TAKE;
        }
        break;
    case S_STATUS_CODE:
        if (c == '[') {
            start_token(p, S_CODE_NAME);
            p->code_name_len = 0;
            return STEP_TAKE;
        }
        break;
    default: /* S_CODE_NAME, S_CODE_ARGS */
        if (is_line_end(c))
            return fail(p, "unterminated response code");
        if (c == ' ' && p->state == S_CODE_NAME) {
            p->code_name_len = p->tok_len;
            p->state = S_CODE_ARGS;
            return STEP_TAKE;
        }
        if (c != ']')
            return push(p, c);
        if (p->state == S_CODE_NAME)
            p->code_name_len = p->tok_len;
        ev->type = IMAP_EV_CODE;
        ev->str.p = p->tok;
        ev->str.len = p->code_name_len;
        ev->args.p = p->tok + p->code_name_len;
        ev->args.len = p->tok_len - p->code_name_len;
        p->state = S_TEXT_SP;
        return STEP_TAKE_EMIT;
    }
    /* No code, or no space: the rest of the line is the text. */
    start_token(p, S_TEXT);
    return step_text(p, c, ev);
}

static enum step step(struct imap_parser *p, unsigned char c, struct imap_event *ev)
{
    if (c == '\0')
        return fail(p, "NUL byte outside a literal");
    switch (p->state) {
    case S_TAG:
        return step_tag(p, c, ev);
    case S_ITEMS:
        return step_items(p, c, ev);
    case S_ATOM:
    case S_ATOM_BRACKET:
        return step_atom(p, c, ev);
    case S_QUOTED:
    case S_QUOTED_ESC:
        return step_quoted(p, c, ev);
    case S_LIT_SIZE:
    case S_LIT_CR:
    case S_LIT_LF:
        return step_literal_header(p, c, ev);
    case S_TEXT:
        return step_text(p, c, ev);
    case S_EOL:
    case S_EOL_LF:
        return step_eol(p, c, ev);
    case S_STATUS_SP:
    case S_STATUS_CODE:
    case S_CODE_NAME:
    case S_CODE_ARGS:
    case S_TEXT_SP:
        return step_status(p, c, ev);
    default: /* S_LIT_DATA, S_LIT_END and S_ERROR never reach the byte loop */
        return fail(p, "internal parser state");
    }
}

/* The hot path of a message body: one slice per call, no per-byte work. */
static enum imap_ev literal_data(struct imap_parser *p, const char *buf, size_t len,
                                 size_t *consumed_r, struct imap_event *ev)
{
    size_t n = p->lit_left < len ? (size_t)p->lit_left : len;

    if (n == 0)
        return IMAP_EV_MORE;
    ev->type = IMAP_EV_LITERAL_DATA;
    ev->str.p = buf;
    ev->str.len = n;
    p->lit_left -= n;
    if (p->lit_left == 0)
        p->state = S_LIT_END;
    *consumed_r = n;
    return ev->type;
}

enum imap_ev imap_parser_feed(struct imap_parser *p, const char *buf, size_t len,
                              size_t *consumed_r, struct imap_event *ev_r, const char **error_r)
{
    memset(ev_r, 0, sizeof(*ev_r));
    ev_r->kind = p->kind;
    ev_r->depth = p->depth;
    *consumed_r = 0;

    if (p->state == S_LIT_DATA)
        return literal_data(p, buf, len, consumed_r, ev_r);
    if (p->state == S_LIT_END) {
        /* Needs no input: the literal's end is known once its last byte was handed on. */
        p->state = S_ITEMS;
        ev_r->type = IMAP_EV_LITERAL_END;
        return ev_r->type;
    }
    for (size_t i = 0; i < len && p->state != S_ERROR;) {
        enum step s = step(p, (unsigned char)buf[i], ev_r);

        if (s == STEP_FAIL)
            break;
        if (s != STEP_EMIT) {
            i++;
            /* Counted as bytes are used, so every split of the input fails at the same byte. */
            if (++p->line_len > IMAP_LINE_MAX) {
                fail(p, "response longer than IMAP_LINE_MAX");
                break;
            }
        }
        if (s != STEP_TAKE) {
            if (ev_r->type != IMAP_EV_BEGIN)
                p->first_item = false;
            ev_r->kind = p->kind;
            ev_r->depth = p->depth;
            *consumed_r = i;
            return ev_r->type;
        }
    }
    if (p->state == S_ERROR) {
        memset(ev_r, 0, sizeof(*ev_r));
        ev_r->type = IMAP_EV_ERROR;
        ev_r->kind = p->kind;
        if (error_r != NULL)
            *error_r = p->error;
        return IMAP_EV_ERROR;
    }
    *consumed_r = len;
    return IMAP_EV_MORE;
}
