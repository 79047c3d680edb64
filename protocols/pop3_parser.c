/* The POP3 command parser owns client line framing, line limits, keywords and arity checks. */
#include "pop3_parser.h"

#include <stdlib.h>
#include <string.h>

#define POP3_PARSER_SASL_BUF (POP3_SASL_LINE_MAX + 1)
/* Keywords are 3 (TOP) or 4 letters; anything longer cannot match. */
#define POP3_PARSER_VERB_MAX 4

struct pop3_parser {
    /* Bytes of the current line stored so far, LF excluded; 0 while discarding. */
    size_t len;
    /* The current line went over its limit: discard up to LF, then report once. */
    bool overflow;
    /* The current line is a SASL continuation (set by pop3_parser_expect_sasl). */
    bool sasl;
    /* Allocated only around SASL lines, so an idle session costs the small buffer. */
    char *sasl_buf;
    /* Length of the last complete line in line[]: wiped at the next feed, so a PASS
     * line does not outlive its command in memory. */
    size_t last_len;
    /* The longest command line, CRLF included; line[] holds it without its LF. */
    size_t line_max;
    char line[];
};

enum arg_rule {
    ARGS_NONE,     /* no argument; trailing spaces tolerated */
    ARGS_TEXT,     /* USER: the rest of the line, at least one non-space byte */
    ARGS_VERBATIM, /* PASS: the rest of the line, possibly empty, spaces kept */
    ARGS_WORDS,    /* AUTH, APOP: split at spaces */
    ARGS_NUMBERS,  /* LIST, UIDL, RETR, DELE, TOP: split, each a uint32 */
};

struct verb_def {
    char name[POP3_PARSER_VERB_MAX + 1];
    enum pop3_cmd cmd;
    enum arg_rule rule;
    unsigned min_args, max_args;
};

static const struct verb_def verbs[] = {
    {"USER", POP3_CMD_USER, ARGS_TEXT, 1, 1},    {"PASS", POP3_CMD_PASS, ARGS_VERBATIM, 0, 0},
    {"APOP", POP3_CMD_APOP, ARGS_WORDS, 2, 2},   {"AUTH", POP3_CMD_AUTH, ARGS_WORDS, 0, 2},
    {"STLS", POP3_CMD_STLS, ARGS_NONE, 0, 0},    {"CAPA", POP3_CMD_CAPA, ARGS_NONE, 0, 0},
    {"QUIT", POP3_CMD_QUIT, ARGS_NONE, 0, 0},    {"STAT", POP3_CMD_STAT, ARGS_NONE, 0, 0},
    {"LIST", POP3_CMD_LIST, ARGS_NUMBERS, 0, 1}, {"RETR", POP3_CMD_RETR, ARGS_NUMBERS, 1, 1},
    {"DELE", POP3_CMD_DELE, ARGS_NUMBERS, 1, 1}, {"NOOP", POP3_CMD_NOOP, ARGS_NONE, 0, 0},
    {"RSET", POP3_CMD_RSET, ARGS_NONE, 0, 0},    {"TOP", POP3_CMD_TOP, ARGS_NUMBERS, 2, 2},
    {"UIDL", POP3_CMD_UIDL, ARGS_NUMBERS, 0, 1},
};

/* A plain memset before free() may be optimised away; the SASL line holds credentials. */
static void *(*const volatile wipe_memset)(void *, int, size_t) = memset;

static void wipe(void *p, size_t len)
{
    wipe_memset(p, 0, len);
}

struct pop3_parser *pop3_parser_new(void)
{
    return pop3_parser_new_max(POP3_LINE_MAX);
}

struct pop3_parser *pop3_parser_new_max(size_t line_max)
{
    if (line_max < POP3_LINE_MAX)
        line_max = POP3_LINE_MAX;
    if (line_max > POP3_LINE_LIMIT)
        line_max = POP3_LINE_LIMIT;
    struct pop3_parser *p = calloc(1, sizeof(*p) + line_max + 1);
    if (p != NULL)
        p->line_max = line_max;
    return p;
}

static void release_sasl_buf(struct pop3_parser *p)
{
    if (p->sasl_buf == NULL)
        return;
    wipe(p->sasl_buf, POP3_PARSER_SASL_BUF);
    free(p->sasl_buf);
    p->sasl_buf = NULL;
}

void pop3_parser_free(struct pop3_parser **pp)
{
    struct pop3_parser *p = *pp;

    if (p == NULL)
        return;
    release_sasl_buf(p);
    /* The last line may have been a PASS. */
    wipe(p, sizeof(*p));
    free(p);
    *pp = NULL;
}

int pop3_parser_expect_sasl(struct pop3_parser *p)
{
    if (p->sasl_buf == NULL) {
        p->sasl_buf = malloc(POP3_PARSER_SASL_BUF);
        if (p->sasl_buf == NULL)
            return -1;
    }
    /* Feeds stop after each line, so a partial line here is only possible if the
     * caller switched mid-line; keep it rather than lose bytes. */
    if (p->len > 0 && !p->sasl)
        memcpy(p->sasl_buf, p->line, p->len);
    p->sasl = true;
    return 0;
}

void pop3_parser_reset(struct pop3_parser *p)
{
    wipe(p->line, p->line_max + 1);
    p->last_len = 0;
    p->len = 0;
    p->overflow = false;
    p->sasl = false;
    release_sasl_buf(p);
}

static char ascii_upper(char c)
{
    return (c >= 'a' && c <= 'z') ? (char)(c - 'a' + 'A') : c;
}

static const struct verb_def *find_verb(const char *s, size_t len)
{
    char up[POP3_PARSER_VERB_MAX];

    if (len == 0 || len > POP3_PARSER_VERB_MAX)
        return NULL;
    for (size_t i = 0; i < len; i++)
        up[i] = ascii_upper(s[i]);
    for (size_t i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++) {
        if (strlen(verbs[i].name) == len && memcmp(verbs[i].name, up, len) == 0)
            return &verbs[i];
    }
    return NULL;
}

/* NUL and control bytes have no place in a command and could reach logs or IMAP;
 * TAB is let through because passwords may hold it. */
static bool has_control_char(const unsigned char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if ((s[i] < 0x20 && s[i] != '\t') || s[i] == 0x7f)
            return true;
    }
    return false;
}

static bool has_non_space(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (s[i] != ' ')
            return true;
    }
    return false;
}

/* Splits at runs of spaces. Returns the number of words found, counting at most
 * POP3_ARGS_MAX + 1 so that "too many" is known without scanning further. */
static unsigned split_words(const char *s, size_t len, struct pop3_slice *argv)
{
    unsigned n = 0;
    size_t i = 0;

    while (i < len) {
        while (i < len && s[i] == ' ')
            i++;
        if (i == len)
            break;
        size_t start = i;
        while (i < len && s[i] != ' ')
            i++;
        if (n == POP3_ARGS_MAX)
            return n + 1;
        argv[n].p = s + start;
        argv[n].len = i - start;
        n++;
    }
    return n;
}

static bool parse_uint32(const struct pop3_slice *s, uint32_t *value_r)
{
    uint64_t v = 0;

    if (s->len == 0)
        return false;
    for (size_t i = 0; i < s->len; i++) {
        char c = s->p[i];
        if (c < '0' || c > '9')
            return false;
        v = v * 10 + (uint64_t)(c - '0');
        /* Checked per digit, so leading zeros of any length are fine and v never wraps. */
        if (v > UINT32_MAX)
            return false;
    }
    *value_r = (uint32_t)v;
    return true;
}

static enum pop3_parse_status parse_command(const char *s, size_t len, struct pop3_command *cmd,
                                            const char **error_r)
{
    const char *sp = memchr(s, ' ', len);
    size_t verb_len = sp != NULL ? (size_t)(sp - s) : len;
    const struct verb_def *def;

    if (!has_non_space(s, len)) {
        *error_r = "empty command";
        return POP3_PARSE_ERROR;
    }
    def = find_verb(s, verb_len);
    if (def == NULL) {
        *error_r = "unknown command";
        return POP3_PARSE_ERROR;
    }
    cmd->cmd = def->cmd;
    cmd->verb.p = s;
    cmd->verb.len = verb_len;
    cmd->arg.p = sp != NULL ? sp + 1 : s + len;
    cmd->arg.len = sp != NULL ? len - verb_len - 1 : 0;

    switch (def->rule) {
    case ARGS_NONE:
        if (has_non_space(cmd->arg.p, cmd->arg.len)) {
            *error_r = "too many arguments";
            return POP3_PARSE_ERROR;
        }
        return POP3_PARSE_CMD;
    case ARGS_TEXT:
        if (!has_non_space(cmd->arg.p, cmd->arg.len)) {
            *error_r = "missing argument";
            return POP3_PARSE_ERROR;
        }
        return POP3_PARSE_CMD;
    case ARGS_VERBATIM:
        /* "PASS " is an empty password; "PASS" has none at all. */
        if (sp == NULL) {
            *error_r = "missing argument";
            return POP3_PARSE_ERROR;
        }
        return POP3_PARSE_CMD;
    case ARGS_WORDS:
    case ARGS_NUMBERS:
        break;
    }

    unsigned n = split_words(cmd->arg.p, cmd->arg.len, cmd->argv);
    if (n < def->min_args) {
        *error_r = "missing argument";
        return POP3_PARSE_ERROR;
    }
    if (n > def->max_args) {
        *error_r = "too many arguments";
        return POP3_PARSE_ERROR;
    }
    cmd->argc = n;
    if (def->rule == ARGS_NUMBERS) {
        for (unsigned i = 0; i < n; i++) {
            if (!parse_uint32(&cmd->argv[i], &cmd->num[i])) {
                *error_r = "invalid number";
                return POP3_PARSE_ERROR;
            }
        }
    }
    return POP3_PARSE_CMD;
}

/* A whole line (LF removed) is in the buffer: strip the CR and interpret it. */
static enum pop3_parse_status finish_line(const char *s, size_t len, bool sasl,
                                          struct pop3_command *cmd, const char **error_r)
{
    if (len > 0 && s[len - 1] == '\r')
        len--;
    if (has_control_char((const unsigned char *)s, len)) {
        *error_r = "invalid character";
        return POP3_PARSE_ERROR;
    }
    if (sasl) {
        /* Even an empty line is handed on: it ends the exchange, and the SASL layer
         * knows best how to answer it. */
        cmd->cmd = POP3_CMD_SASL_LINE;
        cmd->arg.p = s;
        cmd->arg.len = len;
        return POP3_PARSE_CMD;
    }
    if (len == 0) {
        *error_r = "empty command";
        return POP3_PARSE_ERROR;
    }
    return parse_command(s, len, cmd, error_r);
}

enum pop3_parse_status pop3_parser_feed(struct pop3_parser *p, const char *buf, size_t len,
                                        size_t *consumed_r, struct pop3_command *cmd_r,
                                        const char **error_r)
{
    /* The previous SASL line's slices were valid until this call: now the big
     * buffer can go, unless another SASL line is expected. */
    if (!p->sasl && p->sasl_buf != NULL)
        release_sasl_buf(p);
    if (p->last_len > p->len)
        memset(p->line + p->len, 0, p->last_len - p->len);
    p->last_len = 0;

    bool sasl = p->sasl;
    size_t limit = sasl ? POP3_SASL_LINE_MAX : p->line_max;
    char *line = sasl ? p->sasl_buf : p->line;
    const char *lf = memchr(buf, '\n', len);
    size_t seg = lf != NULL ? (size_t)(lf - buf) : len;

    memset(cmd_r, 0, sizeof(*cmd_r));
    *error_r = NULL;

    if (!p->overflow) {
        /* The limit counts wire octets, LF included: stored + seg + 1 <= limit. */
        if (seg >= limit - p->len) {
            p->overflow = true;
            p->len = 0;
        } else {
            memcpy(line + p->len, buf, seg);
            p->len += seg;
        }
    }
    if (lf == NULL) {
        *consumed_r = len;
        return POP3_PARSE_MORE;
    }

    *consumed_r = seg + 1;
    size_t line_len = p->len;
    if (!sasl)
        p->last_len = line_len;
    bool overflow = p->overflow;
    p->len = 0;
    p->overflow = false;
    p->sasl = false;
    if (overflow) {
        *error_r = "line too long";
        return POP3_PARSE_ERROR;
    }
    return finish_line(line, line_len, sasl, cmd_r, error_r);
}
