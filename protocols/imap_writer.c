/* The IMAP command writer: one command line, with every string quoted or sent as a literal. */
#include "imap_writer.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

/* A uint32 UID has at most 10 decimal digits. */
#define UID_DIGITS_MAX 10
/* "{18446744073709551615+}\r\n" and its NUL. */
#define LITERAL_HEADER_MAX 32

static void fail(struct imap_cmd *c, const char *error)
{
    /* The first failure is the one worth reporting; later ones follow from it. */
    if (!c->failed) {
        c->failed = true;
        c->error = error;
    }
}

static void append(struct imap_cmd *c, const char *s, size_t n)
{
    if (c->failed)
        return;
    if (n > IMAP_CMD_MAX - c->len) {
        fail(c, "command longer than IMAP_CMD_MAX");
        return;
    }
    memcpy(c->buf + c->len, s, n);
    c->len += n;
}

/* Caller-vouched text still may not break the line: that would let it inject a command. */
static void append_raw(struct imap_cmd *c, const char *text)
{
    if (strpbrk(text, "\r\n") != NULL) {
        fail(c, "raw command text contains CR or LF");
        return;
    }
    append(c, text, strlen(text));
}

void imap_cmd_begin(struct imap_cmd *c, const char *tag, const char *name, bool literal_plus)
{
    c->len = 0;
    c->nsync = 0;
    c->literal_plus = literal_plus;
    c->failed = false;
    c->error = NULL;
    append_raw(c, tag);
    append(c, " ", 1);
    append_raw(c, name);
}

void imap_cmd_raw(struct imap_cmd *c, const char *text)
{
    append(c, " ", 1);
    append_raw(c, text);
}

static bool is_quotable(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char b = (unsigned char)s[i];
        if (b < 0x20 || b > 0x7e)
            return false;
    }
    return true;
}

static void append_quoted(struct imap_cmd *c, const char *s, size_t len)
{
    size_t start = 0;

    append(c, "\"", 1);
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '"' || s[i] == '\\') {
            append(c, s + start, i - start);
            append(c, "\\", 1);
            start = i; /* the special itself goes out with the next run */
        }
    }
    append(c, s + start, len - start);
    append(c, "\"", 1);
}

static void append_literal(struct imap_cmd *c, const char *s, size_t len)
{
    char header[LITERAL_HEADER_MAX];
    int n = snprintf(header, sizeof(header), "{%zu%s}\r\n", len, c->literal_plus ? "+" : "");

    append(c, header, (size_t)n);
    if (!c->literal_plus && !c->failed) {
        if (c->nsync == IMAP_CMD_SYNC_MAX)
            fail(c, "too many synchronizing literals in one command");
        else
            c->sync[c->nsync++] = c->len;
    }
    append(c, s, len);
}

void imap_cmd_string(struct imap_cmd *c, const char *s, size_t len)
{
    if (len > 0 && memchr(s, '\0', len) != NULL) {
        fail(c, "string contains NUL");
        return;
    }
    append(c, " ", 1);
    if (is_quotable(s, len))
        append_quoted(c, s, len);
    else
        append_literal(c, s, len);
}

int imap_cmd_end(struct imap_cmd *c, const char **error_r)
{
    append(c, "\r\n", 2);
    if (!c->failed)
        return 0;
    if (error_r != NULL)
        *error_r = c->error;
    return -1;
}

static size_t digits(uint64_t v)
{
    size_t n = 1;

    while (v >= 10) {
        v /= 10;
        n++;
    }
    return n;
}

/*
 * Writes the run first..first+run-1 (consecutive UIDs) into item, using at most room
 * bytes. When the whole range does not fit, a shorter one whose end has fewer digits
 * may. Returns how many UIDs the item covers (0: nothing fits).
 */
static size_t format_run(char *item, size_t room, uint32_t first, size_t run, size_t *len_r)
{
    uint64_t last = (uint64_t)first + run - 1;
    size_t first_len = digits(first);

    if (first_len > room)
        return 0;
    if (run > 1 && room > first_len + 1) {
        size_t last_room = room - first_len - 1;
        if (digits(last) > last_room) {
            uint64_t limit = 1;
            for (size_t i = 0; i < last_room; i++)
                limit *= 10;
            last = limit - 1;
        }
        if (last > first) {
            *len_r = (size_t)snprintf(item, room + 1, "%" PRIu32 ":%" PRIu64, first, last);
            return (size_t)(last - first + 1);
        }
    }
    *len_r = (size_t)snprintf(item, room + 1, "%" PRIu32, first);
    return 1;
}

size_t imap_writer_uid_set(char *out, size_t cap, const uint32_t *uids, size_t n, size_t *used_r)
{
    size_t len = 0;
    size_t used = 0;

    *used_r = 0;
    if (cap == 0)
        return 0;
    while (used < n) {
        size_t sep = len > 0 ? 1 : 0;
        size_t run = 1;
        size_t item_len = 0;
        char item[2 * UID_DIGITS_MAX + 2];

        /* Room for the item: what is left after the separator and the NUL. */
        if (cap - 1 - len <= sep)
            break;
        size_t room = cap - 1 - len - sep;
        if (room > sizeof(item) - 1)
            room = sizeof(item) - 1;
        while (used + run < n && (uint64_t)uids[used + run - 1] + 1 == uids[used + run])
            run++;
        size_t covered = format_run(item, room, uids[used], run, &item_len);
        if (covered == 0)
            break;
        if (sep)
            out[len++] = ',';
        memcpy(out + len, item, item_len);
        len += item_len;
        used += covered;
        if (covered < run)
            break; /* the rest of the range starts the next set */
    }
    out[len] = '\0';
    *used_r = used;
    return len;
}
