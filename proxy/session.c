/* The session core: client I/O, watchers, the command loop and the session's life. */
#include "session.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conn_limit.h"
#include "log.h"
#include "pop3_writer.h"
#include "proxy_protocol.h"
#include "reaper.h"
#include "session_int.h"
#include "watch.h"
#include "wipe.h"

static struct session *sessions;
static unsigned nsessions;
static uint32_t session_seq;

static void process_commands(struct session *s);

unsigned session_count(void)
{
    return nsessions;
}

const char *session_user_value(struct session *s, char *buf, size_t cap)
{
    if (s->user == NULL)
        return "-";
    return log_value(buf, cap, s->user, s->user_len);
}

void session_log(struct session *s, const char *fmt, ...)
{
    char text[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    char user[LOG_VALUE_MAX];
    log_line(LOG_INFO, "session=%s client=%s user=%s upstream=%s %s", s->id, s->peer,
             session_user_value(s, user, sizeof(user)),
             s->upstream_cfg != NULL ? s->upstream_cfg->name : "-", text);
}

void session_append(struct session *s, const char *p, size_t len)
{
    if (buffer_append(&s->out, p, len) < 0) {
        /* Callers check room first; reaching this is a bug, not a client's doing. */
        session_log(s, "event=internal_error reason=\"output buffer overflow\"");
        session_close(s, "internal_error");
    }
}

void session_reply(struct session *s, bool ok, const char *code, const char *text)
{
    char line[POP3_REPLY_MAX];
    size_t n = pop3_writer_status(line, sizeof(line), ok, code, text);
    session_append(s, line, n);
}

void session_replyf(struct session *s, bool ok, const char *code, const char *fmt, ...)
{
    char text[POP3_REPLY_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    session_reply(s, ok, code, text);
}

enum metrics_upstream_error session_metrics_class(enum upstream_status st)
{
    switch (st) {
    case UPSTREAM_NO:
        return METRICS_UPSTREAM_NO;
    case UPSTREAM_AUTH:
        return METRICS_UPSTREAM_AUTH;
    case UPSTREAM_CONNECT:
        return METRICS_UPSTREAM_CONNECT;
    case UPSTREAM_TIMEOUT:
        return METRICS_UPSTREAM_TIMEOUT;
    case UPSTREAM_PROTOCOL:
        return METRICS_UPSTREAM_PROTOCOL;
    case UPSTREAM_INTERNAL:
        return METRICS_UPSTREAM_INTERNAL;
    case UPSTREAM_CLOSED:
    case UPSTREAM_OK:
        break;
    }
    return METRICS_UPSTREAM_CLOSED;
}

static void session_free_cb(void *p)
{
    struct session *s = p;
    upstream_free(&s->up);
    maildrop_free(&s->md);
    pop3_parser_free(&s->parser);
    buffer_free(&s->in);
    buffer_free(&s->out);
    free(s->uidl_arena);
    free(s->uidl_offsets);
    free(s->fixes);
    session_state_free_headers(s);
    free(s->retr_msgs);
    free(s->hides);
    if (s->user != NULL) {
        explicit_bzero(s->user, s->user_len);
        free(s->user);
    }
    free(s);
}

void session_close(struct session *s, const char *result)
{
    if (s->reaped)
        return;
    s->reaped = true;
    s->state = SESSION_CLOSING;
    if (s->result == NULL)
        s->result = result;
    ev_io_stop(s->loop, &s->io);
    ev_timer_stop(s->loop, &s->idle);
    ev_timer_stop(s->loop, &s->proxy_retry);
    ev_timer_stop(s->loop, &s->auth_delay);
    conn_close(&s->client);
    conn_limit_release(s->conn_limit_key);
    if (s->up != NULL)
        upstream_close(s->up);
    session_state_end(s);
    session_log(s, "event=session_end result=%s retr=%u retr_bytes=%llu deleted=%u duration=%.3f",
                s->result, s->retr_count, (unsigned long long)s->retr_bytes, s->deleted_count,
                ev_now(s->loop) - s->started);
    metrics_session_end(metrics_result_from_name(s->result));
    metrics_bytes_retrieved(s->retr_bytes);
    metrics_messages_retrieved(s->retr_count);
    metrics_messages_deleted(s->deleted_count);
    if (s->prev != NULL)
        s->prev->next = s->next;
    else
        sessions = s->next;
    if (s->next != NULL)
        s->next->prev = s->prev;
    nsessions--;
    reaper_add(session_free_cb, s);
}

void session_close_all(const char *reason)
{
    while (sessions != NULL)
        session_close(sessions, reason);
}

/* Re-arms the idle timer for the state the session is in. */
void session_touch(struct session *s)
{
    uint32_t secs = s->state == SESSION_AUTHORIZATION ? s->cfg->limits.auth_timeout
                                                      : s->cfg->limits.idle_timeout;
    s->idle.repeat = (ev_tstamp)secs;
    ev_timer_again(s->loop, &s->idle);
}

/* Low mark: below it a paused upstream may go on. */
static bool out_below_low_mark(const struct session *s)
{
    return buffer_len(&s->out) <= s->out.cap / 2;
}

static void set_events(struct session *s, int events)
{
    watch_set(s->loop, &s->io, &s->io_events, s->client.fd, events);
}

/* Derives what the watcher waits for from the buffers' state (one place for it). */
void session_update_io(struct session *s)
{
    if (s->reaped)
        return;
    if (s->job == JOB_STLS && buffer_len(&s->out) == 0 && !s->client.handshaking) {
        session_conn_start_stls(s);
        if (s->reaped)
            return;
    }
    if (s->await_proxy) {
        set_events(s, ev_is_active(&s->proxy_retry) ? 0 : EV_READ);
        return;
    }
    if (s->client.handshaking) {
        set_events(s, s->client.hs_wait);
        return;
    }
    bool want_write = buffer_len(&s->out) > 0;
    bool want_read =
        !s->client_eof && !s->flush_close && s->job != JOB_STLS && buffer_room(&s->in) > 0;
    if (!want_write && s->flush_close) {
        session_close(s, s->result != NULL ? s->result : "quit");
        return;
    }
    if (!want_write && s->client_eof && s->job == JOB_NONE && buffer_len(&s->in) == 0) {
        /* The client sent all it will and everything is answered. */
        session_close(s, s->result != NULL ? s->result : "client_closed");
        return;
    }
    watch_conn(s->loop, &s->io, &s->io_events, &s->client, want_read, want_write);
}

static void do_write(struct session *s)
{
    bool progressed = false;
    while (buffer_len(&s->out) > 0) {
        size_t n = 0;
        enum conn_status st = conn_write(&s->client, buffer_data(&s->out), buffer_len(&s->out), &n);
        if (st == CONN_AGAIN)
            break;
        if (st != CONN_DONE) {
            char q[LOG_VALUE_MAX];
            session_log(s, "event=client_write_failed reason=%s",
                        log_str(q, sizeof(q), strerror(errno)));
            session_close(s, "client_error");
            return;
        }
        buffer_consume(&s->out, n);
        progressed = true;
    }
    /* All written and no command running: the output buffer's storage goes until the
     * next reply (an idle session keeps no 64 KiB block). */
    if (buffer_len(&s->out) == 0 && s->job == JOB_NONE)
        buffer_shrink(&s->out);
    if (progressed)
        session_touch(s);
    if (s->flush_close)
        return;
    if (s->up != NULL && out_below_low_mark(s))
        upstream_resume(s->up);
    if (s->reaped)
        return;
    if (s->job == JOB_LISTING)
        session_continue_listing(s);
    if (s->job == JOB_NONE)
        process_commands(s);
}

static void do_read(struct session *s)
{
    size_t avail;
    char *space = buffer_space(&s->in, &avail);
    if (space == NULL)
        return;
    size_t n = 0;
    enum conn_status st = conn_read(&s->client, space, avail, &n);
    switch (st) {
    case CONN_DONE:
        buffer_commit(&s->in, n);
        session_touch(s);
        process_commands(s);
        return;
    case CONN_AGAIN:
        return;
    case CONN_EOF:
        /* A half-close: answer everything already sent (a pipelined QUIT too); a
         * client that is really gone shows as a write error. */
        s->client_eof = true;
        process_commands(s);
        return;
    case CONN_ERROR:
        session_close(s, "client_error");
        return;
    }
}

static void io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    struct session *s = w->data;
    if (s->await_proxy) {
        session_conn_read_proxy(s);
        session_update_io(s);
        return;
    }
    if (s->client.handshaking) {
        session_conn_handshake(s);
        if (!s->reaped && !s->client.handshaking && s->job == JOB_NONE)
            process_commands(s);
        session_update_io(s);
        return;
    }
    if ((revents & s->client.wr_wait) && buffer_len(&s->out) > 0 && !s->reaped)
        do_write(s);
    if ((revents & s->client.rd_wait) && !s->reaped)
        do_read(s);
    /* Answers produced while reading go out now, without another loop turn. */
    if (!s->reaped && buffer_len(&s->out) > 0)
        do_write(s);
    session_update_io(s);
}

/* Whether the session waits on the upstream rather than on the client. */
static bool waits_on_upstream(const struct session *s)
{
    switch (s->job) {
    case JOB_LOGIN:
    case JOB_QUIT_SEEN:
    case JOB_QUIT_DELETE:
    case JOB_QUIT_LOGOUT:
        return true;
    case JOB_RETR:
    case JOB_TOP_HEADER:
    case JOB_TOP_BODY:
        /* With nothing left to write, the client is keeping up. */
        return buffer_len(&s->out) == 0;
    default:
        return false;
    }
}

static void idle_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct session *s = w->data;
    if (waits_on_upstream(s)) {
        /* The upstream's own timeouts watch that side. */
        session_touch(s);
        return;
    }
    session_log(s, "event=idle_timeout state=%s",
                s->state == SESSION_AUTHORIZATION ? "authorization" : "transaction");
    /* RFC 1939 3: on an autologout timeout, close without a response and without
     * entering UPDATE; a reply now could land inside a multi-line answer. */
    session_close(s, "timeout");
}

/* The running command finished: release idle memory and take the next one. */
void session_job_done(struct session *s)
{
    s->job = JOB_NONE;
    if (s->reaped)
        return;
    buffer_shrink(&s->in);
    process_commands(s);
    session_update_io(s);
}

void session_bad_command(struct session *s, const char *reason)
{
    s->bad_commands++;
    if (s->bad_commands >= s->cfg->limits.max_bad_commands) {
        session_reply(s, false, NULL, "Too many bad commands, closing connection");
        session_log(s, "event=too_many_bad_commands count=%u", s->bad_commands);
        s->flush_close = true;
        s->result = "bad_commands";
        return;
    }
    session_replyf(s, false, NULL, "%s", reason);
}

static void cmd_noop(struct session *s)
{
    session_reply(s, true, NULL, NULL);
}

static void dispatch_authorization(struct session *s, const struct pop3_command *cmd)
{
    switch (cmd->cmd) {
    case POP3_CMD_USER:
        session_cmd_user(s, cmd);
        return;
    case POP3_CMD_PASS:
        session_cmd_pass(s, cmd);
        return;
    case POP3_CMD_CAPA:
        session_cmd_capa(s);
        return;
    case POP3_CMD_QUIT:
        session_reply(s, true, NULL, "popgate signing off");
        s->flush_close = true;
        s->result = "quit";
        return;
    case POP3_CMD_APOP:
        /* APOP needs the plaintext password on our side; popgate never has it. */
        session_bad_command(s, "APOP is not supported; use USER and PASS");
        return;
    case POP3_CMD_AUTH:
        session_cmd_auth(s, cmd);
        return;
    case POP3_CMD_SASL_LINE:
        session_sasl_line(s, cmd);
        return;
    case POP3_CMD_STLS:
        session_cmd_stls(s);
        return;
    default:
        session_bad_command(s, "Command not valid before login");
        return;
    }
}

static void dispatch_transaction(struct session *s, const struct pop3_command *cmd)
{
    if (s->up == NULL) {
        /* The upstream went away between commands: say so now, as this answer. */
        session_reply(s, false, "SYS/TEMP", "Lost connection to the mail server");
        s->flush_close = true;
        s->result = "upstream_error";
        return;
    }
    switch (cmd->cmd) {
    case POP3_CMD_STAT:
        session_cmd_stat(s);
        return;
    case POP3_CMD_LIST:
        session_cmd_list(s, cmd, false);
        return;
    case POP3_CMD_UIDL:
        session_cmd_list(s, cmd, true);
        return;
    case POP3_CMD_RETR:
        session_cmd_retr(s, cmd);
        return;
    case POP3_CMD_TOP:
        session_cmd_top(s, cmd);
        return;
    case POP3_CMD_DELE:
        session_cmd_dele(s, cmd);
        return;
    case POP3_CMD_RSET:
        session_cmd_rset(s);
        return;
    case POP3_CMD_NOOP:
        cmd_noop(s);
        return;
    case POP3_CMD_CAPA:
        session_cmd_capa(s);
        return;
    case POP3_CMD_QUIT:
        session_cmd_quit(s);
        return;
    default:
        session_bad_command(s, "Command not valid in TRANSACTION state");
        return;
    }
}

/* Runs buffered commands one at a time while nothing is in flight and output has room. */
static void process_commands(struct session *s)
{
    /* A command that completes at once calls back here (session_job_done): the
     * outer loop goes on by itself, so do not recurse. */
    if (s->in_commands)
        return;
    /* USER, PASS and AUTH lines are handled here, whichever callback got here. */
    if (s->state == SESSION_AUTHORIZATION)
        wipe_stack_later();
    s->in_commands = true;
    while (!s->reaped && !s->flush_close && s->job == JOB_NONE && buffer_len(&s->in) > 0 &&
           buffer_room(&s->out) >= SESSION_REPLY_ROOM) {
        struct pop3_command cmd;
        size_t consumed = 0;
        const char *error = NULL;
        enum pop3_parse_status st = pop3_parser_feed(s->parser, buffer_data(&s->in),
                                                     buffer_len(&s->in), &consumed, &cmd, &error);
        if (st == POP3_PARSE_ERROR) {
            buffer_consume(&s->in, consumed);
            session_bad_command(s, error);
            continue;
        }
        if (st == POP3_PARSE_CMD) {
            /* The command's slices point into the parser's own line, so the input can go
             * first: a command that completes at once may run the next one from here. */
            buffer_consume(&s->in, consumed);
            if (s->state == SESSION_AUTHORIZATION)
                dispatch_authorization(s, &cmd);
            else if (s->state == SESSION_TRANSACTION)
                dispatch_transaction(s, &cmd);
            continue;
        }
        buffer_consume(&s->in, consumed);
        break;
    }
    s->in_commands = false;
    if (s->reaped)
        return;
    if (s->job == JOB_NONE && buffer_len(&s->in) == 0)
        buffer_shrink(&s->in);
}

int session_start(struct ev_loop *loop, const struct config *cfg,
                  const struct config_listener *listener, int fd,
                  const struct sockaddr_storage *peer)
{
    /* The listener admitted the connection under the peer's address, or (behind a
     * PROXY header) in the total only; from here on the session releases it. */
    uint64_t limit_key = listener->proxy_protocol ? 0 : conn_limit_key(peer);
    struct session *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        conn_limit_release(limit_key);
        close(fd);
        return -1;
    }
    s->conn_limit_key = limit_key;
    s->parser = pop3_parser_new_max(cfg->limits.line_length);
    if (s->parser == NULL) {
        free(s);
        conn_limit_release(limit_key);
        close(fd);
        return -1;
    }
    s->loop = loop;
    s->cfg = cfg;
    s->started = ev_now(loop);
    snprintf(s->id, sizeof(s->id), "%08x",
             (unsigned)(++session_seq * 2654435761u) ^ (unsigned)getpid());
    conn_format_addr(peer, s->peer, sizeof(s->peer));
    s->client_addr = *peer;
    conn_init_plain(&s->client, fd);
    buffer_init(&s->in, SESSION_IN_MAX, true);
    buffer_init(&s->out, cfg->limits.output_buffer, false);
    s->listener = listener;
    s->is_loopback = session_conn_is_loopback(peer);
    ev_io_init(&s->io, io_cb, fd, 0);
    s->io.data = s;
    ev_init(&s->idle, idle_cb);
    s->idle.data = s;
    ev_init(&s->proxy_retry, session_conn_proxy_retry_cb);
    s->proxy_retry.data = s;
    ev_init(&s->auth_delay, session_auth_delay_cb);
    s->auth_delay.data = s;
    s->state = SESSION_AUTHORIZATION;

    s->next = sessions;
    if (sessions != NULL)
        sessions->prev = s;
    sessions = s;
    nsessions++;

    session_log(s, "event=session_start");
    metrics_session_start();
    session_touch(s);
    if (listener->proxy_protocol) {
        if (!config_cidr_match(listener->trusted_proxies, listener->ntrusted_proxies,
                               (const struct sockaddr *)peer)) {
            session_log(s, "event=proxy_refused reason=\"source not in trusted_proxies\"");
            session_close(s, "proxy_refused");
            return -1;
        }
        /* The header comes before anything else, TLS included. */
        s->await_proxy = true;
        session_update_io(s);
        return 0;
    }
    session_conn_begin(s);
    session_update_io(s);
    return 0;
}
