/* The AUTHORIZATION phase: USER and PASS, and the upstream login they start. */
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>
#include <string.h>

#include "auth_penalty.h"
#include "base64.h"
#include "conn_limit.h"
#include "log.h"
#include "metrics.h"
#include "reaper.h"
#include "route.h"
#include "session_int.h"
#include "uidl.h"

static void clear_user(struct session *s)
{
    if (s->user != NULL) {
        explicit_bzero(s->user, s->user_len);
        free(s->user);
    }
    s->user = NULL;
    s->user_len = 0;
}

/* RFC 2595 / 8314: no password over a connection the policy calls insecure. */
static bool refuse_plaintext(struct session *s)
{
    if (session_plaintext_ok(s))
        return false;
    session_reply(s, false, "AUTH", "Plaintext authentication disallowed on non-secure connection");
    return true;
}

static int set_user(struct session *s, const char *name, size_t len)
{
    clear_user(s);
    if (len == 0 || len > SESSION_USER_MAX || memchr(name, '\0', len) != NULL)
        return -1;
    s->user = malloc(len + 1);
    if (s->user == NULL)
        return -1;
    memcpy(s->user, name, len);
    s->user[len] = '\0';
    s->user_len = len;
    return 0;
}

void session_cmd_user(struct session *s, const struct pop3_command *cmd)
{
    if (refuse_plaintext(s))
        return;
    if (set_user(s, cmd->arg.p, cmd->arg.len) < 0) {
        session_reply(s, false, NULL, "Invalid user name");
        return;
    }
    session_reply(s, true, NULL, "Send your password");
}

/* The answer to a failed login, once its delay is over. */
static void auth_failed_reply(struct session *s, const char *code, const char *text)
{
    session_reply(s, false, code, text);
    if (s->auth_failures >= s->cfg->limits.max_auth_failures) {
        session_log(s, "event=too_many_auth_failures count=%u", s->auth_failures);
        s->flush_close = true;
        s->result = "auth_failed";
    }
}

void session_auth_delay_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct session *s = w->data;
    auth_failed_reply(s, s->auth_delay_code, s->auth_delay_text);
    session_job_done(s);
}

/* code and text are static strings. A refused login ([AUTH]) is answered after a delay
 * that grows with the failures from the client's address (guessing passwords gets slow);
 * meanwhile the session reads no command. */
static void auth_failed(struct session *s, const char *code, const char *text)
{
    s->auth_failures++;
    clear_user(s);
    s->upstream_cfg = NULL;
    s->sasl = SASL_NONE;
    const struct config_limits *l = &s->cfg->limits;
    uint32_t delay = 0;
    if (strcmp(code, "AUTH") == 0)
        delay =
            auth_penalty_fail(conn_limit_key(&s->client_addr), (int64_t)(ev_now(s->loop) * 1000),
                              l->auth_failure_delay, l->auth_failure_delay_max);
    if (delay == 0) {
        auth_failed_reply(s, code, text);
        return;
    }
    session_log(s, "event=auth_delay seconds=%u", delay);
    s->auth_delay_code = code;
    s->auth_delay_text = text;
    s->job = JOB_AUTH_DELAY;
    ev_timer_set(&s->auth_delay, (ev_tstamp)delay, 0.);
    ev_timer_start(s->loop, &s->auth_delay);
}

/* Routes s->user and opens its upstream; NULL (after answering the client) on failure. */
static struct upstream *open_upstream(struct session *s)
{
    struct route_result r = {0};
    s->login_started = ev_now(s->loop);
    if (route_resolve(s->cfg, s->user, s->user_len, &r) < 0) {
        /* Same answer as a wrong password: no enumeration of who exists. */
        session_log(s, "event=login_failed reason=\"no route for user\"");
        metrics_login(METRICS_LOGIN_AUTH_FAILED, 0);
        auth_failed(s, "AUTH", "Authentication failed");
        return NULL;
    }
    s->upstream_cfg = r.upstream;
    s->mapping = r.mapping != NULL ? r.mapping : &s->cfg->mapping;
    memcpy(s->login, r.login, r.login_len + 1);
    s->login_len = r.login_len;
    s->up = upstream_new(s->loop, r.upstream, &s->cfg->limits, s->id, &session_upstream_handler, s);
    if (s->up == NULL) {
        session_log(s, "event=login_failed reason=\"out of memory\"");
        session_reply(s, false, "SYS/TEMP", "Temporary failure, try again later");
        return NULL;
    }
    upstream_set_folders(s->up, (const char *const *)s->mapping->folders, s->mapping->nfolders);
    upstream_want_guid(s->up, s->mapping->uidl_format != NULL &&
                                  uidl_template_uses_guid(s->mapping->uidl_format));
    if (r.upstream->send_client_ip)
        upstream_set_client(s->up, (const struct sockaddr *)&s->client_addr);
    if (r.source != ROUTE_DEFAULT || s->login_len != s->user_len ||
        memcmp(s->login, s->user, s->user_len) != 0) {
        char q[LOG_VALUE_MAX];
        session_log(s, "event=routed source=%s login=%s", route_source_name(r.source),
                    log_value(q, sizeof(q), s->login, s->login_len));
    }
    s->job = JOB_LOGIN;
    return s->up;
}

static void start_login(struct session *s, const char *pass, size_t pass_len)
{
    struct upstream *u = open_upstream(s);
    if (u != NULL)
        upstream_login(u, s->login, s->login_len, pass, pass_len);
    /* The upstream has its copy: the parser's line with the password goes now. */
    pop3_parser_reset(s->parser);
}

void session_cmd_pass(struct session *s, const struct pop3_command *cmd)
{
    if (refuse_plaintext(s))
        return;
    if (s->user == NULL) {
        session_reply(s, false, NULL, "USER first");
        return;
    }
    start_login(s, cmd->arg.p, cmd->arg.len);
}

/* ---- AUTH (RFC 5034) ---- */

static const char *const sasl_mechs[] = {"PLAIN", "LOGIN", "XOAUTH2", "OAUTHBEARER"};
#define SASL_MECHS_LINE "PLAIN LOGIN XOAUTH2 OAUTHBEARER"

const char *session_sasl_mechs(const struct session *s)
{
    return session_plaintext_ok(s) ? SASL_MECHS_LINE : NULL;
}

/* Asks the client for the next SASL line with a base64 challenge (may be ""). */
static void sasl_challenge(struct session *s, enum session_sasl step, const char *b64)
{
    if (pop3_parser_expect_sasl(s->parser) < 0) {
        s->sasl = SASL_NONE;
        session_reply(s, false, "SYS/TEMP", "Out of memory");
        return;
    }
    s->sasl = step;
    char line[64];
    int n = snprintf(line, sizeof(line), "+ %s\r\n", b64);
    session_append(s, line, (size_t)n);
}

/* Decodes a client's base64 SASL data into a fresh buffer; "=" is the empty response. */
static char *sasl_decode(const char *p, size_t len, size_t *out_len)
{
    char *out = malloc(len / 4 * 3 + 3);
    if (out == NULL)
        return NULL;
    if (len == 1 && p[0] == '=') {
        *out_len = 0;
        return out;
    }
    long n = base64_decode(p, len, out, len / 4 * 3 + 3);
    if (n < 0) {
        free(out);
        return NULL;
    }
    *out_len = (size_t)n;
    return out;
}

static void wipe(char *p, size_t len)
{
    if (p != NULL) {
        explicit_bzero(p, len);
        free(p);
    }
}

/* PLAIN: [authzid] NUL authcid NUL password (RFC 4616). */
static void sasl_plain(struct session *s, const char *msg, size_t len)
{
    const char *nul1 = memchr(msg, '\0', len);
    const char *nul2 = nul1 != NULL ? memchr(nul1 + 1, '\0', len - (size_t)(nul1 + 1 - msg)) : NULL;
    if (nul2 == NULL) {
        auth_failed(s, "AUTH", "Malformed PLAIN response");
        return;
    }
    size_t authz_len = (size_t)(nul1 - msg);
    const char *authc = nul1 + 1;
    size_t authc_len = (size_t)(nul2 - authc);
    /* Acting for another user would need the server's admin rights: not offered. */
    if (authz_len > 0 && (authz_len != authc_len || memcmp(msg, authc, authc_len) != 0)) {
        auth_failed(s, "AUTH", "Authorization identity not supported");
        return;
    }
    if (set_user(s, authc, authc_len) < 0) {
        auth_failed(s, "AUTH", "Invalid user name");
        return;
    }
    start_login(s, nul2 + 1, len - (size_t)(nul2 + 1 - msg));
}

/* The user an OAuth response is for: XOAUTH2 "user=" or OAUTHBEARER's GS2 "a=". */
static int oauth_user(struct session *s, const char *msg, size_t len)
{
    char name[SESSION_USER_MAX + 1];
    size_t n = 0;
    if (strcmp(s->sasl_mech, "XOAUTH2") == 0) {
        if (len < 5 || memcmp(msg, "user=", 5) != 0)
            return -1;
        for (size_t i = 5; i < len && msg[i] != '\x01'; i++) {
            if (n == SESSION_USER_MAX)
                return -1;
            name[n++] = msg[i];
        }
        return set_user(s, name, n);
    }
    /* gs2-header: flag "," [ "a=" saslname ] "," with =2C and =3D escapes (RFC 5801). */
    const char *comma = memchr(msg, ',', len);
    if (comma == NULL || (size_t)(comma - msg) + 3 > len || memcmp(comma + 1, "a=", 2) != 0)
        return -1;
    for (size_t i = (size_t)(comma - msg) + 3; i < len && msg[i] != ','; i++) {
        char c = msg[i];
        if (c == '=') {
            if (i + 2 >= len)
                return -1;
            if (msg[i + 1] == '2' && msg[i + 2] == 'C')
                c = ',';
            else if (msg[i + 1] == '3' && msg[i + 2] == 'D')
                c = '=';
            else
                return -1;
            i += 2;
        }
        if (n == SESSION_USER_MAX)
            return -1;
        name[n++] = c;
    }
    return set_user(s, name, n);
}

static void sasl_oauth(struct session *s, const char *msg, size_t len)
{
    if (oauth_user(s, msg, len) < 0) {
        auth_failed(s, "AUTH", "Malformed OAuth response");
        return;
    }
    struct upstream *u = open_upstream(s);
    if (u != NULL)
        upstream_login_sasl(u, s->sasl_mech, msg, len);
    pop3_parser_reset(s->parser);
}

void session_cmd_auth(struct session *s, const struct pop3_command *cmd)
{
    if (cmd->argc == 0) {
        /* A bare AUTH lists the mechanisms (RFC 1734; old Outlook asks this way). */
        session_reply(s, true, NULL, "Mechanisms follow");
        const char *mechs = session_sasl_mechs(s);
        for (size_t i = 0; mechs != NULL && i < sizeof(sasl_mechs) / sizeof(sasl_mechs[0]); i++) {
            session_append(s, sasl_mechs[i], strlen(sasl_mechs[i]));
            session_append(s, "\r\n", 2);
        }
        session_append(s, ".\r\n", 3);
        return;
    }
    if (refuse_plaintext(s))
        return;
    const struct pop3_slice *mech = &cmd->argv[0];
    enum session_sasl step = SASL_NONE;
    s->sasl_mech = NULL;
    for (size_t i = 0; i < sizeof(sasl_mechs) / sizeof(sasl_mechs[0]); i++) {
        if (mech->len == strlen(sasl_mechs[i]) &&
            strncasecmp(mech->p, sasl_mechs[i], mech->len) == 0)
            s->sasl_mech = sasl_mechs[i];
    }
    if (s->sasl_mech == NULL) {
        session_reply(s, false, NULL, "Unsupported authentication mechanism");
        return;
    }
    if (strcmp(s->sasl_mech, "PLAIN") == 0)
        step = SASL_PLAIN;
    else if (strcmp(s->sasl_mech, "LOGIN") == 0)
        step = SASL_LOGIN_USER;
    else
        step = SASL_OAUTH;
    clear_user(s);
    if (cmd->argc == 2) {
        /* The initial response counts as the first line of the exchange. */
        s->sasl = step;
        session_sasl_line(s,
                          &(struct pop3_command){.cmd = POP3_CMD_SASL_LINE, .arg = cmd->argv[1]});
        return;
    }
    sasl_challenge(s, step, step == SASL_LOGIN_USER ? "VXNlcm5hbWU6" : "");
}

void session_sasl_line(struct session *s, const struct pop3_command *cmd)
{
    enum session_sasl step = s->sasl;
    s->sasl = SASL_NONE;
    if (cmd->arg.len == 1 && cmd->arg.p[0] == '*') {
        clear_user(s);
        session_reply(s, false, NULL, "Authentication cancelled");
        return;
    }
    size_t len = 0;
    char *msg = sasl_decode(cmd->arg.p, cmd->arg.len, &len);
    if (msg == NULL) {
        auth_failed(s, "AUTH", "Invalid base64 in SASL response");
        return;
    }
    switch (step) {
    case SASL_PLAIN:
        sasl_plain(s, msg, len);
        break;
    case SASL_LOGIN_USER:
        if (set_user(s, msg, len) < 0)
            auth_failed(s, "AUTH", "Invalid user name");
        else
            sasl_challenge(s, SASL_LOGIN_PASS, "UGFzc3dvcmQ6");
        break;
    case SASL_LOGIN_PASS:
        start_login(s, msg, len);
        break;
    case SASL_OAUTH:
        sasl_oauth(s, msg, len);
        break;
    case SASL_NONE:
        session_reply(s, false, NULL, "No authentication in progress");
        break;
    }
    wipe(msg, cmd->arg.len / 4 * 3 + 3);
}

void session_cmd_stls(struct session *s)
{
    if (s->listener->tls != CONFIG_TLS_STARTTLS) {
        session_reply(s, false, NULL, "STLS is not available on this listener");
        return;
    }
    if (s->secure) {
        session_reply(s, false, NULL, "TLS is already active");
        return;
    }
    clear_user(s);
    session_reply(s, true, NULL, "Begin TLS negotiation");
    s->job = JOB_STLS;
}

void session_drop_upstream(struct session *s)
{
    if (s->up != NULL) {
        upstream_close(s->up);
        reaper_add(upstream_free_cb, s->up);
        s->up = NULL;
    }
}

void session_login_ready(struct session *s)
{
    s->state = SESSION_TRANSACTION;
    upstream_set_keepalive(s->up, s->cfg->limits.upstream_keepalive);
    uint32_t count;
    uint64_t octets;
    maildrop_stat(s->md, &count, &octets);
    session_log(s, "event=login messages=%u octets=%llu uidvalidity=%u folders=%zu", count,
                (unsigned long long)octets, maildrop_folder_uidvalidity(s->md, 0),
                maildrop_folder_count(s->md));
    metrics_login(METRICS_LOGIN_OK, ev_now(s->loop) - s->login_started);
    session_replyf(s, true, NULL, "Logged in, %u messages (%llu octets)", count,
                   (unsigned long long)octets);
    session_job_done(s);
}

void session_login_refused(struct session *s, const char *code, const char *text)
{
    maildrop_free(&s->md);
    session_drop_upstream(s);
    metrics_login(METRICS_LOGIN_TEMP_FAILED, ev_now(s->loop) - s->login_started);
    clear_user(s);
    s->upstream_cfg = NULL;
    session_reply(s, false, code, text);
    session_job_done(s);
}

/* A configured folder the server would not SELECT (it does not exist for this user)
 * is left out of the maildrop; the operator should hear of it. */
static void log_missing_folders(struct session *s)
{
    size_t k = 0;
    for (size_t i = 0; i < s->mapping->nfolders; i++) {
        const char *want = s->mapping->folders[i];
        if (k < maildrop_folder_count(s->md) && strcmp(maildrop_folder_name(s->md, k), want) == 0) {
            k++;
            continue;
        }
        char q[LOG_VALUE_MAX];
        session_log(s, "event=folder_missing folder=%s", log_str(q, sizeof(q), want));
    }
}

/* Returns true when the login is over (answered), false while the state loads. */
static bool login_done(struct session *s, enum upstream_status st, const char *detail)
{
    double took = ev_now(s->loop) - s->login_started;
    if (st == UPSTREAM_OK) {
        s->md = upstream_take_maildrop(s->up);
        log_missing_folders(s);
        session_state_snapshot_ready(s);
        return false; /* the state job, or the refusal, ends the login */
    }
    session_log(s, "event=login_failed class=%s reason=%s", upstream_status_name(st), detail);
    session_state_abandon(s);
    session_drop_upstream(s);
    metrics_login(st == UPSTREAM_AUTH ? METRICS_LOGIN_AUTH_FAILED : METRICS_LOGIN_TEMP_FAILED,
                  took);
    if (st != UPSTREAM_AUTH)
        metrics_upstream_error(session_metrics_class(st));
    if (st == UPSTREAM_AUTH)
        auth_failed(s, "AUTH", "Authentication failed");
    else
        auth_failed(s, "SYS/TEMP", "Mail server temporarily unavailable, try again later");
    return s->job != JOB_AUTH_DELAY; /* the delay's end ends the job */
}

static void up_done(void *ctx, enum upstream_status st, const char *raw_detail)
{
    struct session *s = ctx;
    /* Server text reaches the log only escaped: it is the upstream's to choose. */
    char q[LOG_VALUE_MAX];
    const char *detail = log_str(q, sizeof(q), raw_detail);
    switch (s->job) {
    case JOB_LOGIN:
        if (s->fetching_headers) {
            session_state_headers_done(s, st, detail);
            return;
        }
        if (!login_done(s, st, detail))
            return; /* the state job (or a refusal) ends it */
        break;
    case JOB_RETR:
    case JOB_TOP_HEADER:
    case JOB_TOP_BODY:
        session_retr_done(s, st, detail);
        return; /* it ends the job itself, or starts the next fetch */
    case JOB_QUIT_SEEN:
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
    session_drop_upstream(s);
    if (s->flush_close || s->state != SESSION_TRANSACTION)
        return;
    /* Between commands (or during a listing, which needs no upstream): POP3 has no
     * unsolicited replies, so the next command gets the -ERR. Nothing was changed. */
    session_log(s, "event=upstream_lost class=%s reason=%s", upstream_status_name(st), detail);
}

/* The user is who they say: the state (lock, load) comes from disk while the upstream
 * selects and sizes the folders, instead of after. Not before: a stranger must not be
 * able to lock a mailbox. */
static void up_authenticated(void *ctx)
{
    struct session *s = ctx;
    if (s->job == JOB_LOGIN && s->state_job == NULL)
        (void)session_state_login(s); /* a failure is answered with the snapshot */
}

static size_t up_body_room(void *ctx)
{
    return session_body_room(ctx);
}

/* These run inside the upstream's callbacks: start the client writer from here. */
static void up_body_begin(void *ctx, uint64_t size)
{
    session_body_begin(ctx, size);
    session_update_io(ctx);
}

static void up_body_data(void *ctx, const char *p, size_t n)
{
    session_body_data(ctx, p, n);
    session_update_io(ctx);
}

static void up_body_end(void *ctx)
{
    (void)ctx;
}

static void up_header(void *ctx, uint32_t uid, const char *p, size_t n)
{
    session_state_header(ctx, uid, p, n);
}

const struct upstream_handler session_upstream_handler = {
    .done = up_done,
    .failed = up_failed,
    .authenticated = up_authenticated,
    .body_room = up_body_room,
    .body_begin = up_body_begin,
    .body_data = up_body_data,
    .body_end = up_body_end,
    .header = up_header,
};
