/* RETR and TOP: a message streamed from UID FETCH through the dot-stuffer to the client. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "session_int.h"

/* Output kept free for the end of a message ("\r\n.\r\n") and slack. */
#define RETR_OUT_RESERVE 16
/* The dot-stuffer writes at most two bytes for one consumed byte. */
#define RETR_MAX_EXPANSION 2
/* The answer for a message another client expunged since the snapshot. */
#define RETR_GONE_TEXT "Message %u is no longer available"

static void start_fetch(struct session *s, enum session_job job, uint32_t n)
{
    const struct maildrop_msg *msg = session_message(s, n);
    if (msg == NULL)
        return;
    if (msg->gone) {
        /* Asked again for a message already found gone: a client stuck on it spends
         * its bad-command budget instead of the server's time. */
        char text[64];
        snprintf(text, sizeof(text), RETR_GONE_TEXT, n);
        session_bad_command(s, text);
        return;
    }
    s->job = job;
    s->xfer_n = n;
    s->xfer_uid = msg->uid;
    s->xfer_folder = msg->folder;
    s->xfer_started = false;
    pop3_dotstuff_init(&s->ds);
    upstream_fetch(s->up, msg->folder, msg->uid,
                   job == JOB_RETR ? "BODY.PEEK[]" : "BODY.PEEK[HEADER]");
}

void session_cmd_retr(struct session *s, const struct pop3_command *cmd)
{
    start_fetch(s, JOB_RETR, cmd->num[0]);
}

void session_cmd_top(struct session *s, const struct pop3_command *cmd)
{
    s->top_lines = cmd->num[1];
    start_fetch(s, JOB_TOP_HEADER, cmd->num[0]);
}

size_t session_body_room(struct session *s)
{
    if (pop3_dotstuff_is_done(&s->ds))
        return SIZE_MAX; /* TOP has its lines: the rest of the chunk is dropped */
    size_t room = buffer_room(&s->out);
    if (room <= RETR_OUT_RESERVE)
        return 0;
    return (room - RETR_OUT_RESERVE) / RETR_MAX_EXPANSION;
}

void session_body_begin(struct session *s, uint64_t size)
{
    if (s->job == JOB_TOP_BODY) {
        (void)size;
        return;
    }
    if (s->xfer_started)
        return;
    s->xfer_started = true;
    if (s->job == JOB_RETR) {
        const struct maildrop_msg *msg = NULL;
        (void)maildrop_get(s->md, s->xfer_n, &msg);
        /* LIST's size, which is what RFC 1939 clients compare against. */
        session_replyf(s, true, NULL, "%llu octets", (unsigned long long)msg->size);
    } else {
        session_reply(s, true, NULL, "Top of message follows");
    }
}

void session_body_data(struct session *s, const char *p, size_t n)
{
    if (s->job == JOB_TOP_BODY)
        s->top_got += n;
    while (n > 0 && !pop3_dotstuff_is_done(&s->ds)) {
        size_t avail;
        char *space = buffer_space_min(&s->out, RETR_MAX_EXPANSION, &avail);
        if (space == NULL) {
            session_log(s, "event=internal_error reason=\"no room for message data\"");
            session_close(s, "internal_error");
            return;
        }
        size_t consumed = 0;
        size_t written = pop3_dotstuff_feed(&s->ds, p, n, &consumed, space, avail);
        buffer_commit(&s->out, written);
        if (s->job == JOB_RETR)
            s->retr_bytes += consumed;
        p += consumed;
        n -= consumed;
    }
}

static void finish_message(struct session *s)
{
    char end[POP3_DOTSTUFF_FINISH_MAX];
    size_t n = pop3_dotstuff_finish(&s->ds, end);
    session_append(s, end, n);
    if (s->job == JOB_RETR) {
        s->retr_count++;
        /* Servers that estimate RFC822.SIZE: later sessions list what was really sent. */
        const struct maildrop_msg *msg = NULL;
        if (maildrop_get(s->md, s->xfer_n, &msg) == MAILDROP_OK && msg->size != s->ds.in_total)
            session_state_size_fix(s, s->xfer_n, s->ds.in_total);
        uint32_t *r = realloc(s->retr_msgs, (s->nretr_msgs + 1) * sizeof(*r));
        if (r != NULL) { /* without it only \Seen is not set */
            s->retr_msgs = r;
            s->retr_msgs[s->nretr_msgs++] = s->xfer_n;
        }
    }
    session_job_done(s);
}

static void next_top_chunk(struct session *s)
{
    char item[64];
    snprintf(item, sizeof(item), "BODY.PEEK[TEXT]<%llu.%llu>", (unsigned long long)s->top_offset,
             (unsigned long long)s->top_chunk);
    s->top_got = 0;
    upstream_fetch(s->up, s->xfer_folder, s->xfer_uid, item);
}

void session_retr_done(struct session *s, enum upstream_status st, const char *detail)
{
    if (st != UPSTREAM_OK && st != UPSTREAM_NO) {
        session_log(s, "event=retr_failed msg=%u uid=%u class=%s reason=%s", s->xfer_n, s->xfer_uid,
                    upstream_status_name(st), detail);
        metrics_upstream_error(session_metrics_class(st));
        if (s->xfer_started) {
            /* Never end a broken message with ".": the client must not keep it. */
            session_close(s, "upstream_error");
            return;
        }
        session_drop_upstream(s);
        session_reply(s, false, "SYS/TEMP", "Lost connection to the mail server");
        s->flush_close = true;
        s->result = "upstream_error";
        session_job_done(s);
        return;
    }
    if (!s->xfer_started) {
        /* Another client expunged it since the snapshot. */
        session_log(s, "event=message_gone msg=%u uid=%u reason=%s", s->xfer_n, s->xfer_uid,
                    st == UPSTREAM_NO ? detail : "\"no data in fetch reply\"");
        session_replyf(s, false, NULL, RETR_GONE_TEXT, s->xfer_n);
        maildrop_set_gone(s->md, s->xfer_n);
        session_job_done(s);
        return;
    }
    if (st == UPSTREAM_NO) {
        session_log(s, "event=retr_failed msg=%u uid=%u reason=%s", s->xfer_n, s->xfer_uid, detail);
        session_close(s, "upstream_error");
        return;
    }
    switch (s->job) {
    case JOB_TOP_HEADER:
        if (s->top_lines == 0)
            break;
        pop3_dotstuff_limit_lines(&s->ds, s->top_lines);
        s->job = JOB_TOP_BODY;
        s->top_offset = 0;
        s->top_chunk = SESSION_TOP_CHUNK_MIN;
        next_top_chunk(s);
        return;
    case JOB_TOP_BODY:
        if (pop3_dotstuff_is_done(&s->ds) || s->top_got < s->top_chunk)
            break;
        s->top_offset += s->top_chunk;
        if (s->top_chunk < SESSION_TOP_CHUNK_MAX)
            s->top_chunk *= 2;
        next_top_chunk(s);
        return;
    default:
        break;
    }
    finish_message(s);
}
