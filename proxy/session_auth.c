/* The AUTHORIZATION phase: USER and PASS, and the upstream login they start. */
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "reaper.h"
#include "route.h"
#include "session_int.h"

static void clear_user(struct session *s)
{
    if (s->user != NULL) {
        memset(s->user, 0, s->user_len);
        free(s->user);
    }
    s->user = NULL;
    s->user_len = 0;
}

void session_cmd_user(struct session *s, const struct pop3_command *cmd)
{
    if (cmd->arg.len == 0 || cmd->arg.len > SESSION_USER_MAX) {
        session_reply(s, false, NULL, "Invalid user name");
        return;
    }
    if (memchr(cmd->arg.p, '\0', cmd->arg.len) != NULL) {
        session_reply(s, false, NULL, "Invalid user name");
        return;
    }
    clear_user(s);
    s->user = malloc(cmd->arg.len + 1);
    if (s->user == NULL) {
        session_reply(s, false, "SYS/TEMP", "Out of memory");
        return;
    }
    memcpy(s->user, cmd->arg.p, cmd->arg.len);
    s->user[cmd->arg.len] = '\0';
    s->user_len = cmd->arg.len;
    session_reply(s, true, NULL, "Send your password");
}

static void auth_failed(struct session *s, const char *code, const char *text)
{
    s->auth_failures++;
    clear_user(s);
    s->route = NULL;
    session_reply(s, false, code, text);
    if (s->auth_failures >= SESSION_MAX_AUTH_FAILURES) {
        session_log(s, "event=too_many_auth_failures count=%u", s->auth_failures);
        s->flush_close = true;
        s->result = "auth_failed";
    }
}

void session_cmd_pass(struct session *s, const struct pop3_command *cmd)
{
    if (s->user == NULL) {
        session_reply(s, false, NULL, "USER first");
        return;
    }
    s->route = route_lookup(s->cfg, s->user);
    if (s->route == NULL) {
        /* Same answer as a wrong password: no enumeration of who exists. */
        session_log(s, "event=login_failed reason=\"no route for user\"");
        auth_failed(s, "AUTH", "Authentication failed");
        return;
    }
    s->up = upstream_new(s->loop, s->route->upstream, &s->cfg->limits, s->id,
                         &session_upstream_handler, s);
    if (s->up == NULL) {
        session_log(s, "event=login_failed reason=\"out of memory\"");
        session_reply(s, false, "SYS/TEMP", "Temporary failure, try again later");
        return;
    }
    s->job = JOB_LOGIN;
    upstream_login(s->up, s->user, s->user_len, cmd->arg.p, cmd->arg.len);
}

void session_drop_upstream(struct session *s)
{
    if (s->up != NULL) {
        upstream_close(s->up);
        reaper_add(upstream_free_cb, s->up);
        s->up = NULL;
    }
}

static void login_done(struct session *s, enum upstream_status st, const char *detail)
{
    if (st == UPSTREAM_OK) {
        s->md = upstream_take_maildrop(s->up);
        s->state = SESSION_TRANSACTION;
        uint32_t count;
        uint64_t octets;
        maildrop_stat(s->md, &count, &octets);
        session_log(s, "event=login messages=%u octets=%llu uidvalidity=%u", count,
                    (unsigned long long)octets, maildrop_uidvalidity(s->md));
        session_replyf(s, true, NULL, "Logged in, %u messages (%llu octets)", count,
                       (unsigned long long)octets);
        return;
    }
    session_log(s, "event=login_failed class=%s reason=%s", upstream_status_name(st), detail);
    session_drop_upstream(s);
    if (st == UPSTREAM_AUTH)
        auth_failed(s, "AUTH", "Authentication failed");
    else
        auth_failed(s, "SYS/TEMP", "Mail server temporarily unavailable, try again later");
}

static void up_done(void *ctx, enum upstream_status st, const char *raw_detail)
{
    struct session *s = ctx;
    /* Server text reaches the log only escaped: it is the upstream's to choose. */
    char q[LOG_VALUE_MAX];
    const char *detail = log_str(q, sizeof(q), raw_detail);
    switch (s->job) {
    case JOB_LOGIN:
        login_done(s, st, detail);
        break;
    case JOB_RETR:
    case JOB_TOP_HEADER:
    case JOB_TOP_BODY:
        session_retr_done(s, st, detail);
        return; /* it ends the job itself, or starts the next fetch */
    case JOB_QUIT_DELETE:
    case JOB_QUIT_LOGOUT:
        session_quit_done(s, st, detail);
        return;
    default:
        break;
    }
    session_job_done(s);
}

static void up_failed(void *ctx, enum upstream_status st, const char *raw_detail)
{
    struct session *s = ctx;
    char q[LOG_VALUE_MAX];
    const char *detail = log_str(q, sizeof(q), raw_detail);
    session_log(s, "event=upstream_lost class=%s reason=%s", upstream_status_name(st), detail);
    /* Between commands: the transaction cannot go on; nothing was changed upstream. */
    session_reply(s, false, "SYS/TEMP", "Lost connection to the mail server");
    s->flush_close = true;
    s->result = "upstream_error";
    session_update_io(s);
}

static size_t up_body_room(void *ctx)
{
    return session_body_room(ctx);
}

static void up_body_begin(void *ctx, uint64_t size)
{
    session_body_begin(ctx, size);
}

static void up_body_data(void *ctx, const char *p, size_t n)
{
    session_body_data(ctx, p, n);
}

static void up_body_end(void *ctx)
{
    (void)ctx;
}

const struct upstream_handler session_upstream_handler = {
    .done = up_done,
    .failed = up_failed,
    .body_room = up_body_room,
    .body_begin = up_body_begin,
    .body_data = up_body_data,
    .body_end = up_body_end,
};
