/* The IMAP client side of a session: connect, log in, snapshot, fetch, delete, log out. */
#include "upstream.h"
#include "upstream_int.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "base64.h"
#include "buffer.h"
#include "conn.h"
#include "imap_parser.h"
#include "imap_writer.h"
#include "log.h"
#include "watch.h"
#include "wipe.h"

static void process_input(struct upstream *u);

const char *upstream_status_name(enum upstream_status st)
{
    switch (st) {
    case UPSTREAM_OK:
        return "ok";
    case UPSTREAM_NO:
        return "no";
    case UPSTREAM_AUTH:
        return "auth";
    case UPSTREAM_CONNECT:
        return "connect";
    case UPSTREAM_TIMEOUT:
        return "timeout";
    case UPSTREAM_PROTOCOL:
        return "protocol";
    case UPSTREAM_CLOSED:
        return "closed";
    case UPSTREAM_INTERNAL:
        return "internal";
    }
    return "unknown";
}

void upstream_wipe_free(char **p, size_t len)
{
    if (*p != NULL) {
        explicit_bzero(*p, len); /* a plain memset before free may be optimised away */
        free(*p);
        *p = NULL;
    }
}

void upstream_forget_credentials(struct upstream *u)
{
    upstream_wipe_free(&u->user, u->user_len);
    upstream_wipe_free(&u->pass, u->pass_len);
    upstream_wipe_free(&u->pending, u->pending_len);
    u->pending_len = 0;
}

void upstream_set_detail(struct upstream *u, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(u->detail, sizeof(u->detail), fmt, ap);
    va_end(ap);
}

/* Connected, and no operation or keepalive NOOP running. */
static bool is_idle(const struct upstream *u)
{
    return !u->closed && !u->busy && !u->noop;
}

/* Idle from now: the NOOP timer runs (unless another operation started meanwhile). */
static void arm_keepalive(struct upstream *u)
{
    if (u->keepalive_secs == 0 || !is_idle(u))
        return;
    ev_timer_stop(u->loop, &u->keepalive);
    ev_timer_set(&u->keepalive, (ev_tstamp)u->keepalive_secs, 0.);
    ev_timer_start(u->loop, &u->keepalive);
}

static void keepalive_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct upstream *u = w->data;
    if (!is_idle(u))
        return;
    u->noop = true;
    u->stage = ST_NOOP;
    if (upstream_send_simple(u, "NOOP", NULL) < 0) {
        upstream_fail(u, UPSTREAM_INTERNAL, "cannot send NOOP");
        return;
    }
    upstream_update_io(u);
}

/*
 * Ends the running operation (or reports a failure between operations). A
 * failure closes the connection first, so nothing runs after the callback.
 */
void upstream_finish(struct upstream *u, enum upstream_status st)
{
    if (u->closed)
        return;
    bool fatal = st != UPSTREAM_OK && st != UPSTREAM_NO;
    if (fatal)
        upstream_close(u);
    else
        u->stage = ST_IDLE;
    ev_timer_stop(u->loop, &u->timer);
    bool was_busy = u->busy;
    u->busy = false;
    if (was_busy)
        u->h->done(u->ctx, st, u->detail);
    else if (fatal)
        u->h->failed(u->ctx, st, u->detail);
    arm_keepalive(u);
}

void upstream_fail(struct upstream *u, enum upstream_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(u->detail, sizeof(u->detail), fmt, ap);
    va_end(ap);
    upstream_finish(u, st);
}

void upstream_arm_timer(struct upstream *u, uint32_t seconds)
{
    ev_timer_stop(u->loop, &u->timer);
    ev_timer_set(&u->timer, (ev_tstamp)seconds, (ev_tstamp)seconds);
    ev_timer_start(u->loop, &u->timer);
}

static void timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct upstream *u = w->data;
    if (u->stage == ST_CONNECTING) {
        /* A black-holed address: try the next one before giving up. */
        char addr[64];
        conn_format_addr(&u->cfg->addrs[u->addr_index], addr, sizeof(addr));
        upstream_set_detail(u, "connect to %s timed out", addr);
        ev_io_stop(u->loop, &u->io);
        u->io_events = 0;
        conn_close(&u->conn);
        u->addr_index++;
        if (u->addr_index < u->cfg->naddrs) {
            upstream_try_connect(u);
            return;
        }
        upstream_finish(u, UPSTREAM_TIMEOUT);
        return;
    }
    static const char *const stage_names[ST_COUNT] = {
        [ST_IDLE] = "idle",
        [ST_CONNECTING] = "connect",
        [ST_TLS] = "tls handshake",
        [ST_GREETING] = "greeting",
        [ST_STARTTLS] = "starttls",
        [ST_ID] = "id",
        [ST_CAPABILITY] = "capability",
        [ST_AUTH] = "login",
        [ST_POSTCAPS] = "capability",
        [ST_SELECT] = "select",
        [ST_SIZES] = "sizes",
        [ST_RESELECT] = "select",
        [ST_FETCH] = "fetch",
        [ST_HEADERS] = "headers",
        [ST_STORE] = "update",
        [ST_EXPUNGE] = "expunge",
        [ST_LOGOUT] = "logout",
        [ST_NOOP] = "keepalive noop",
        [ST_CLOSED] = "closed",
    };
    const char *name = u->stage < ST_COUNT && stage_names[u->stage] ? stage_names[u->stage] : "?";
    upstream_fail(u, UPSTREAM_TIMEOUT, "no answer from upstream during %s", name);
}

/* Queues a complete command; for synchronizing literals only its first segment goes now. */
int upstream_send_cmd(struct upstream *u, struct imap_cmd *c)
{
    const char *error;
    if (imap_cmd_end(c, &error) < 0) {
        upstream_set_detail(u, "cannot encode command: %s", error);
        return -1;
    }
    size_t first = c->nsync > 0 ? c->sync[0] : c->len;
    if (buffer_append(&u->out, c->buf, first) < 0) {
        upstream_set_detail(u, "command does not fit the output buffer");
        return -1;
    }
    if (c->nsync > 0) {
        u->pending = malloc(c->len);
        if (u->pending == NULL) {
            upstream_set_detail(u, "out of memory");
            return -1;
        }
        memcpy(u->pending, c->buf, c->len);
        u->pending_len = c->len;
        memcpy(u->pending_sync, c->sync, sizeof(c->sync));
        u->pending_nsync = c->nsync;
        u->pending_next = 0;
    }
    upstream_arm_timer(u, u->limits->command_timeout);
    return 0;
}

void upstream_next_tag(struct upstream *u)
{
    snprintf(u->tag, sizeof(u->tag), "a%u", ++u->tag_seq);
}

/* Sends "<tag> <text>" built from trusted parts (no client bytes). */
int upstream_send_simple(struct upstream *u, const char *name, const char *args)
{
    struct imap_cmd *c = malloc(sizeof(*c));
    if (c == NULL) {
        upstream_set_detail(u, "out of memory");
        return -1;
    }
    upstream_next_tag(u);
    imap_cmd_begin(c, u->tag, name, u->literal_plus);
    if (args != NULL)
        imap_cmd_raw(c, args);
    int rc = upstream_send_cmd(u, c);
    free(c);
    return rc;
}

/* ---- tagged completions ---- */

/* The IMAP command of each upstream_step_kind. */
static const char *const step_names[] = {"UID STORE", "UID EXPUNGE", "UID COPY", "UID MOVE"};

static void start_next_delete(struct upstream *u);
static void free_steps(struct upstream *u);

/* The SELECT of a login folder ended: fetch its sizes, or go on to the next folder. */
static void login_selected(struct upstream *u, bool ok)
{
    const struct resp *r = &u->r;
    const char *name = u->folder_names[u->login_folder];
    if (!ok) {
        u->selected = -1; /* a failed SELECT leaves nothing selected (RFC 3501 6.3.1) */
        if (u->login_folder == 0) {
            upstream_fail(u, UPSTREAM_CONNECT, "SELECT %s refused: %s", name, r->text);
            return;
        }
        upstream_login_select(u); /* left out; the session logs which */
        return;
    }
    if (!u->have_uidvalidity) {
        upstream_fail(u, UPSTREAM_PROTOCOL, "SELECT %s gave no UIDVALIDITY", name);
        return;
    }
    struct upstream_folder *f = realloc(u->mdf, (u->nmdf + 1) * sizeof(*f));
    if (f != NULL)
        u->mdf = f;
    if (u->md == NULL)
        u->md = maildrop_new();
    if (f == NULL || u->md == NULL || maildrop_add_folder(u->md, name, u->uidvalidity) < 0) {
        upstream_fail(u, UPSTREAM_INTERNAL, "out of memory");
        return;
    }
    u->mdf[u->nmdf] = (struct upstream_folder){.name = name, .uidvalidity = u->uidvalidity};
    u->selected = (int)u->nmdf++;
    if (u->exists == 0) {
        upstream_login_select(u);
        return;
    }
    upstream_login_sizes(u);
}

/* The SELECT before an operation ended: run it, unless the folder is not the one of the
 * snapshot any more. */
static void reselected(struct upstream *u, bool ok)
{
    const struct upstream_folder *f = &u->mdf[u->want_folder];
    if (!ok || !u->have_uidvalidity || u->uidvalidity != f->uidvalidity) {
        u->selected = -1;
        if (!ok)
            upstream_set_detail(u, "SELECT %s refused: %s", f->name, u->r.text);
        else
            upstream_set_detail(u, "UIDVALIDITY of %s changed from %u to %u since login", f->name,
                                f->uidvalidity, u->have_uidvalidity ? u->uidvalidity : 0);
        upstream_finish(u, UPSTREAM_NO);
        return;
    }
    u->selected = (int)u->want_folder;
    u->stage = u->op_stage;
    if (u->op_stage == ST_STORE) {
        start_next_delete(u);
        return;
    }
    int rc = upstream_send_simple(u, u->op_name, u->op_args);
    free(u->op_args);
    u->op_args = NULL;
    if (rc < 0)
        upstream_finish(u, UPSTREAM_INTERNAL);
}

static void start_op(struct upstream *u, size_t folder, enum stage stage, const char *name,
                     const char *args);
static void run_command(struct upstream *u, enum stage stage, const char *name, const char *args);

/* The keepalive NOOP ended (its answer does not matter): run what waited for it. */
static void noop_done(struct upstream *u)
{
    u->noop = false;
    u->stage = ST_IDLE;
    ev_timer_stop(u->loop, &u->timer);
    int deferred = u->deferred;
    u->deferred = DEFER_NONE;
    if (deferred == DEFER_NONE) {
        arm_keepalive(u);
        return;
    }
    char *args = u->op_args;
    u->op_args = NULL;
    if (deferred == DEFER_OP)
        start_op(u, u->want_folder, u->op_stage, u->op_name, args);
    else
        run_command(u, u->op_stage, u->op_name, args);
    free(args);
}

/* An operation asked for while the keepalive NOOP runs: kept until it ends. */
static bool defer(struct upstream *u, int kind, size_t folder, enum stage stage, const char *name,
                  const char *args)
{
    if (!u->noop)
        return false;
    u->busy = true;
    u->detail[0] = '\0';
    free(u->op_args);
    u->op_args = NULL;
    if (args != NULL && (u->op_args = strdup(args)) == NULL) {
        upstream_fail(u, UPSTREAM_INTERNAL, "out of memory");
        return true;
    }
    u->deferred = kind;
    u->want_folder = folder;
    u->op_stage = stage;
    u->op_name = name;
    return true;
}

static void on_tagged(struct upstream *u)
{
    struct resp *r = &u->r;
    bool ok = strcasecmp(r->word, "OK") == 0;
    bool no = strcasecmp(r->word, "NO") == 0;
    if (u->pending != NULL && u->stage != ST_AUTH)
        upstream_wipe_free(&u->pending, u->pending_len);
    if (u->stage == ST_SIZES && !ok && u->guid_item != NULL) {
        /* No such item here: UIDLs with %g fall back to the default format. */
        u->guid_item = NULL;
        upstream_login_sizes(u);
        return;
    }
    if (!ok && !no) {
        upstream_fail(u, UPSTREAM_PROTOCOL, "upstream answered %s to %s: %s", r->word, u->tag,
                      r->text);
        return;
    }
    switch (u->stage) {
    case ST_CAPABILITY:
        if (!ok) {
            upstream_fail(u, UPSTREAM_PROTOCOL, "CAPABILITY refused: %s", r->text);
            return;
        }
        upstream_login_after_caps(u);
        return;
    case ST_ID:
        /* A server that dislikes ID still lets us log in. */
        upstream_login_auth(u);
        return;
    case ST_STARTTLS:
        if (!ok) {
            upstream_fail(u, UPSTREAM_PROTOCOL, "STARTTLS refused: %s", r->text);
            return;
        }
        u->starttls_go = true;
        return;
    case ST_AUTH:
        upstream_wipe_free(&u->pending, u->pending_len);
        if (!ok) {
            enum upstream_status st = upstream_login_classify_no(r);
            upstream_fail(u, st, "login refused%s%s%s: %s", r->code[0] ? " [" : "", r->code,
                          r->code[0] ? "]" : "", r->text);
            return;
        }
        u->h->authenticated(u->ctx);
        if (u->closed)
            return;
        if (!u->caps_known) {
            u->stage = ST_POSTCAPS;
            if (upstream_send_simple(u, "CAPABILITY", NULL) < 0)
                upstream_finish(u, UPSTREAM_INTERNAL);
            return;
        }
        upstream_login_select(u);
        return;
    case ST_POSTCAPS:
        if (!ok) {
            upstream_fail(u, UPSTREAM_PROTOCOL, "CAPABILITY refused: %s", r->text);
            return;
        }
        upstream_login_select(u);
        return;
    case ST_SELECT:
        login_selected(u, ok);
        return;
    case ST_SIZES:
        if (!ok) {
            upstream_fail(u, UPSTREAM_PROTOCOL, "size fetch refused: %s", r->text);
            return;
        }
        upstream_login_select(u);
        return;
    case ST_RESELECT:
        reselected(u, ok);
        return;
    case ST_FETCH:
        /* RFC 5530: EXPUNGEISSUED means the data is gone, even with OK. */
        if (ok && strcasecmp(r->code, "EXPUNGEISSUED") == 0 && !u->body_seen)
            ok = false;
        if (!ok)
            upstream_set_detail(u, "fetch of uid %u refused: %s", u->fetch_uid, r->text);
        upstream_finish(u, ok ? UPSTREAM_OK : UPSTREAM_NO);
        return;
    case ST_HEADERS:
        if (!ok)
            upstream_set_detail(u, "header fetch refused: %s", r->text);
        upstream_finish(u, ok ? UPSTREAM_OK : UPSTREAM_NO);
        return;
    case ST_STORE:
        if (!ok) {
            upstream_set_detail(u, "%s refused: %s", step_names[u->steps[u->step].kind], r->text);
            upstream_finish(u, UPSTREAM_NO);
            return;
        }
        start_next_delete(u);
        return;
    case ST_LOGOUT:
        upstream_finish(u, UPSTREAM_OK);
        return;
    case ST_NOOP:
        noop_done(u);
        return;
    default:
        upstream_fail(u, UPSTREAM_PROTOCOL, "tagged reply %s in an unexpected state", u->tag);
        return;
    }
}

/* ---- untagged responses ---- */

static void on_untagged_end(struct upstream *u)
{
    struct resp *r = &u->r;
    if (u->stage == ST_GREETING) {
        upstream_login_greeting(u);
        return;
    }
    if (strcasecmp(r->word, "BYE") == 0) {
        u->bye = true;
        upstream_set_detail(u, "upstream said BYE: %s", r->text);
        return;
    }
    if (r->numbered && strcasecmp(r->word, "EXISTS") == 0) {
        u->exists = r->num;
        return;
    }
    if (r->numbered && strcasecmp(r->word, "FETCH") == 0 && u->stage == ST_HEADERS && r->has_uid) {
        u->h->header(u->ctx, r->uid, u->hdr, u->hdr_len);
        return;
    }
    if (r->numbered && strcasecmp(r->word, "FETCH") == 0 && u->stage == ST_SIZES && r->has_uid &&
        r->has_size) {
        if (maildrop_add(u->md, r->uid, r->size) < 0 ||
            (r->has_guid && maildrop_set_guid(u->md, r->uid, r->guid) < 0))
            upstream_fail(u, UPSTREAM_INTERNAL, "out of memory for the snapshot");
        return;
    }
}

static void on_code(struct upstream *u, const struct imap_event *ev)
{
    struct resp *r = &u->r;
    size_t n = ev->str.len < sizeof(r->code) - 1 ? ev->str.len : sizeof(r->code) - 1;
    memcpy(r->code, ev->str.p, n);
    r->code[n] = '\0';
    if (strcasecmp(r->code, "CAPABILITY") == 0) {
        upstream_login_cap_parse(u, ev->args.p, ev->args.len);
    } else if (strcasecmp(r->code, "UIDVALIDITY") == 0) {
        char num[16];
        size_t len = ev->args.len < sizeof(num) - 1 ? ev->args.len : sizeof(num) - 1;
        memcpy(num, ev->args.p, len);
        num[len] = '\0';
        char *end;
        unsigned long v = strtoul(num, &end, 10);
        if (len > 0 && *end == '\0' && v > 0 && v <= UINT32_MAX) {
            u->uidvalidity = (uint32_t)v;
            u->have_uidvalidity = true;
        }
    }
}

static void copy_word(char *dst, size_t cap, const struct imap_slice *s)
{
    size_t n = s->len < cap - 1 ? s->len : cap - 1;
    memcpy(dst, s->p, n);
    dst[n] = '\0';
}

/* The server's id of a message: kept when a UIDL could carry it. */
static void guid_value(struct upstream *u, const struct imap_event *ev)
{
    struct resp *r = &u->r;
    if (ev->str.len == 0 || ev->str.len > UPSTREAM_GUID_MAX)
        return;
    memcpy(r->guid, ev->str.p, ev->str.len);
    r->guid[ev->str.len] = '\0';
    r->has_guid = true;
}

/* A value of a FETCH item at depth 1 (atom, string, NIL or a literal's start). */
static void fetch_value_atom(struct upstream *u, const struct imap_event *ev)
{
    struct resp *r = &u->r;
    if (strcasecmp(r->item, "UID") == 0 && ev->is_number && ev->num <= UINT32_MAX) {
        r->uid = (uint32_t)ev->num;
        r->has_uid = true;
    } else if (strcasecmp(r->item, "RFC822.SIZE") == 0 && ev->is_number) {
        r->size = ev->num;
        r->has_size = true;
    } else if (u->guid_item != NULL && strcasecmp(r->item, u->guid_item) == 0) {
        guid_value(u, ev);
    }
}

static void hdr_append(struct upstream *u, const char *p, size_t n)
{
    size_t room = sizeof(u->hdr) - u->hdr_len;
    if (n > room)
        n = room; /* a longer header is cut: the fields asked for come first anyway */
    memcpy(u->hdr + u->hdr_len, p, n);
    u->hdr_len += n;
}

static bool is_section_item(const char *item)
{
    return strncasecmp(item, "BODY[", 5) == 0 || strncasecmp(item, "BINARY[", 7) == 0 ||
           strcasecmp(item, "RFC822") == 0;
}

/* Whether this FETCH's section is the one the running command asked for. */
static bool section_wanted(struct upstream *u)
{
    struct resp *r = &u->r;
    return u->stage == ST_FETCH && r->numbered && is_section_item(r->item) &&
           (!r->has_uid || r->uid == u->fetch_uid);
}

static void section_string(struct upstream *u, const char *p, size_t len)
{
    if (!section_wanted(u))
        return;
    u->body_seen = true;
    u->h->body_begin(u->ctx, len);
    if (len > 0 && !u->closed)
        u->h->body_data(u->ctx, p, len);
    if (!u->closed)
        u->h->body_end(u->ctx);
}

static void on_token(struct upstream *u, const struct imap_event *ev)
{
    struct resp *r = &u->r;
    unsigned depth = ev->depth;
    if (ev->type == IMAP_EV_LIST_BEGIN)
        depth = ev->depth - 1; /* where the list itself stands */
    if (ev->type == IMAP_EV_LIST_END)
        depth = ev->depth; /* after it */

    if (depth == 0) {
        if (ev->type == IMAP_EV_LIST_BEGIN || ev->type == IMAP_EV_LIST_END) {
            r->pos++;
            r->want_value = false;
            return;
        }
        if (r->pos == 0 && r->kind == IMAP_RESP_UNTAGGED && ev->type == IMAP_EV_ATOM &&
            ev->is_number && ev->num <= UINT32_MAX) {
            r->numbered = true;
            r->num = (uint32_t)ev->num;
        } else if ((r->pos == 0 && !r->numbered) || (r->pos == 1 && r->numbered)) {
            if (ev->type == IMAP_EV_ATOM)
                copy_word(r->word, sizeof(r->word), &ev->str);
        } else if (r->kind == IMAP_RESP_UNTAGGED && strcasecmp(r->word, "CAPABILITY") == 0 &&
                   ev->type == IMAP_EV_ATOM) {
            if (r->pos == 1)
                upstream_login_cap_reset(u);
            upstream_login_cap_add(u, ev->str.p, ev->str.len);
        }
        r->pos++;
        return;
    }

    /* Inside lists: only FETCH's item list at depth 1 matters. */
    if (!(r->numbered && strcasecmp(r->word, "FETCH") == 0))
        return;
    if (r->skip_depth > 0) {
        if (ev->type == IMAP_EV_LIST_END && ev->depth < r->skip_depth) {
            r->skip_depth = 0;
            r->want_value = false;
        }
        return;
    }
    /* EMAILID (M6d99ac3275bb4e): the id is one level down. */
    if (r->in_objectid) {
        if (depth == 2 && ev->type == IMAP_EV_ATOM)
            guid_value(u, ev);
        else if (depth == 1 && ev->type == IMAP_EV_LIST_END)
            r->in_objectid = r->want_value = false;
        return;
    }
    if (depth != 1)
        return;
    if (!r->want_value) {
        if (ev->type == IMAP_EV_ATOM) {
            copy_word(r->item, sizeof(r->item), &ev->str);
            r->want_value = true;
        }
        return;
    }
    switch (ev->type) {
    case IMAP_EV_ATOM:
        fetch_value_atom(u, ev);
        r->want_value = false;
        break;
    case IMAP_EV_STRING:
        if (u->stage == ST_SIZES && u->guid_item != NULL &&
            strcasecmp(r->item, u->guid_item) == 0) {
            guid_value(u, ev);
        } else if (u->stage == ST_HEADERS && is_section_item(r->item)) {
            hdr_append(u, ev->str.p, ev->str.len);
            r->has_header = true;
        } else
            section_string(u, ev->str.p, ev->str.len);
        r->want_value = false;
        break;
    case IMAP_EV_NIL:
        /* "BODY[] NIL": the message was expunged (Dovecot); no section, not an empty one. */
        r->want_value = false;
        break;
    case IMAP_EV_LIST_BEGIN:
        if (u->stage == ST_SIZES && u->guid_item != NULL && strcasecmp(r->item, "EMAILID") == 0)
            r->in_objectid = true;
        else
            r->skip_depth = ev->depth; /* FLAGS (...), BODYSTRUCTURE (...) */
        break;
    case IMAP_EV_LITERAL_BEGIN:
        r->collecting = u->stage == ST_HEADERS && is_section_item(r->item);
        r->has_header = r->has_header || r->collecting;
        r->streaming = section_wanted(u);
        if (r->streaming) {
            u->body_seen = true;
            u->h->body_begin(u->ctx, ev->num);
        }
        break;
    default:
        break;
    }
}

static void on_event(struct upstream *u, const struct imap_event *ev)
{
    struct resp *r = &u->r;
    switch (ev->type) {
    case IMAP_EV_BEGIN:
        memset(r, 0, sizeof(*r));
        u->hdr_len = 0;
        r->kind = ev->kind;
        r->ours = ev->kind == IMAP_RESP_TAGGED && ev->str.len == strlen(u->tag) &&
                  memcmp(ev->str.p, u->tag, ev->str.len) == 0;
        return;
    case IMAP_EV_CODE:
        on_code(u, ev);
        return;
    case IMAP_EV_TEXT:
        copy_word(r->text, sizeof(r->text), &ev->str);
        return;
    case IMAP_EV_LITERAL_DATA:
        if (r->streaming)
            u->h->body_data(u->ctx, ev->str.p, ev->str.len);
        else if (r->collecting)
            hdr_append(u, ev->str.p, ev->str.len);
        return;
    case IMAP_EV_LITERAL_END:
        r->collecting = false;
        if (r->streaming) {
            r->streaming = false;
            u->h->body_end(u->ctx);
        }
        r->want_value = false;
        if (r->skip_depth == 0 && ev->depth == 0)
            r->pos++;
        return;
    case IMAP_EV_END:
        if (r->kind == IMAP_RESP_CONTINUATION) {
            upstream_login_continuation(u);
        } else if (r->kind == IMAP_RESP_UNTAGGED) {
            on_untagged_end(u);
        } else if (r->ours) {
            on_tagged(u);
        } else {
            upstream_fail(u, UPSTREAM_PROTOCOL, "reply with an unknown tag");
        }
        return;
    default:
        on_token(u, ev);
        return;
    }
}

/* ---- I/O ---- */

static void process_input(struct upstream *u)
{
    while (!u->closed && buffer_len(&u->in) > 0) {
        size_t len = buffer_len(&u->in);
        size_t feed = len;
        if (u->r.streaming && imap_parser_in_literal(u->parser)) {
            size_t room = u->h->body_room(u->ctx);
            if (u->closed)
                return;
            if (room == 0) {
                /* The client is the slow side now: its own idle timer watches it. */
                u->paused = true;
                ev_timer_stop(u->loop, &u->timer);
                break;
            }
            if (feed > room)
                feed = room;
        }
        size_t consumed = 0;
        struct imap_event ev;
        const char *error = NULL;
        enum imap_ev t =
            imap_parser_feed(u->parser, buffer_data(&u->in), feed, &consumed, &ev, &error);
        if (t == IMAP_EV_ERROR) {
            upstream_fail(u, UPSTREAM_PROTOCOL, "bad response from upstream: %s", error);
            return;
        }
        /* LITERAL_DATA points into the buffer: use it before consuming. */
        if (t != IMAP_EV_MORE)
            on_event(u, &ev);
        if (u->closed)
            return;
        buffer_consume(&u->in, consumed);
        if (u->starttls_go) {
            u->starttls_go = false;
            /* Bytes behind the STARTTLS answer were sent in clear: an injection. */
            if (buffer_len(&u->in) > 0) {
                log_line(LOG_WARN, "session=%s upstream=%s event=starttls_injection bytes=%zu",
                         u->session_id, u->cfg->name, buffer_len(&u->in));
                buffer_consume(&u->in, buffer_len(&u->in));
            }
            upstream_login_begin_tls(u);
            return;
        }
        if (t == IMAP_EV_MORE)
            break;
    }
    if (!u->closed)
        u->paused = u->paused && buffer_len(&u->in) > 0;
}

static void do_read(struct upstream *u)
{
    size_t avail;
    char *space = buffer_space(&u->in, &avail);
    if (space == NULL)
        return; /* full: process_input first */
    size_t n = 0;
    enum conn_status st = conn_read(&u->conn, space, avail, &n);
    switch (st) {
    case CONN_DONE:
        buffer_commit(&u->in, n);
        if (u->busy)
            ev_timer_again(u->loop, &u->timer);
        process_input(u);
        /* Between commands the 64 KiB read buffer goes: idle sessions cost little. */
        if (is_idle(u) && buffer_len(&u->in) == 0)
            buffer_shrink(&u->in);
        return;
    case CONN_AGAIN:
        return;
    case CONN_EOF:
        if (u->stage == ST_LOGOUT) {
            upstream_finish(u, UPSTREAM_OK);
            return;
        }
        if (u->bye) {
            upstream_finish(u, UPSTREAM_CLOSED); /* the detail has the server's BYE text */
            return;
        }
        upstream_fail(u, UPSTREAM_CLOSED, "upstream closed the connection");
        return;
    case CONN_ERROR:
        upstream_fail(u, UPSTREAM_CLOSED, "upstream read failed: %s", strerror(errno));
        return;
    }
}

static void do_write(struct upstream *u)
{
    while (buffer_len(&u->out) > 0) {
        size_t n = 0;
        enum conn_status st = conn_write(&u->conn, buffer_data(&u->out), buffer_len(&u->out), &n);
        if (st == CONN_AGAIN)
            return;
        if (st != CONN_DONE) {
            upstream_fail(u, UPSTREAM_CLOSED, "upstream write failed: %s", strerror(errno));
            return;
        }
        buffer_consume(&u->out, n);
    }
    buffer_shrink(&u->out);
}

static void connected(struct upstream *u)
{
    int err = 0;
    socklen_t len = sizeof(err);
    if (getsockopt(u->conn.fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        err = errno;
    if (err != 0) {
        char addr[64];
        conn_format_addr(&u->cfg->addrs[u->addr_index], addr, sizeof(addr));
        upstream_set_detail(u, "connect to %s failed: %s", addr, strerror(err));
        ev_io_stop(u->loop, &u->io);
        u->io_events = 0;
        conn_close(&u->conn);
        u->addr_index++;
        upstream_try_connect(u);
        return;
    }
    upstream_arm_timer(u, u->limits->connect_timeout);
    if (u->cfg->tls == CONFIG_TLS_IMPLICIT) {
        upstream_login_begin_tls(u);
        return;
    }
    u->stage = ST_GREETING;
}

static void set_events(struct upstream *u, int events)
{
    watch_set(u->loop, &u->io, &u->io_events, u->conn.fd, events);
}

/* Derives what the watcher waits for from the stage and the buffers (one place for it). */
void upstream_update_io(struct upstream *u)
{
    if (u->closed)
        return;
    if (u->stage == ST_CONNECTING) {
        set_events(u, EV_WRITE);
        return;
    }
    if (u->conn.handshaking) {
        set_events(u, u->conn.hs_wait);
        return;
    }
    bool want_read = !u->paused && buffer_room(&u->in) > 0;
    bool want_write = buffer_len(&u->out) > 0;
    watch_conn(u->loop, &u->io, &u->io_events, &u->conn, want_read, want_write);
}

static void io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    struct upstream *u = w->data;
    /* The password is in play until the login is answered: see wipe_stack_later(). */
    if (u->pass != NULL || u->pending != NULL || u->stage == ST_AUTH)
        wipe_stack_later();
    if (u->stage == ST_CONNECTING) {
        connected(u);
    } else if (u->conn.handshaking) {
        upstream_login_tls_step(u);
    } else {
        if ((revents & u->conn.wr_wait) && buffer_len(&u->out) > 0 && !u->closed)
            do_write(u);
        if ((revents & u->conn.rd_wait) && !u->closed)
            do_read(u);
        /* Replies queued while reading go out now, without another loop turn. */
        if (!u->closed && !u->conn.handshaking && buffer_len(&u->out) > 0)
            do_write(u);
    }
    upstream_update_io(u);
}

void upstream_try_connect(struct upstream *u)
{
    for (; u->addr_index < u->cfg->naddrs; u->addr_index++) {
        const struct sockaddr_storage *sa = &u->cfg->addrs[u->addr_index];
        int fd = socket(sa->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            upstream_set_detail(u, "socket: %s", strerror(errno));
            continue;
        }
        conn_set_nodelay(fd);
        conn_init_plain(&u->conn, fd);
        u->io_events = -1; /* force set_events to point the watcher at the new fd */
        if (connect(fd, (const struct sockaddr *)sa, u->cfg->addr_lens[u->addr_index]) == 0 ||
            errno == EINPROGRESS) {
            u->stage = ST_CONNECTING;
            upstream_arm_timer(u, u->limits->connect_timeout);
            upstream_update_io(u);
            return;
        }
        char addr[64];
        conn_format_addr(sa, addr, sizeof(addr));
        upstream_set_detail(u, "connect to %s failed: %s", addr, strerror(errno));
        conn_close(&u->conn);
    }
    if (u->detail[0] == '\0')
        upstream_set_detail(u, "upstream %s has no address", u->cfg->name);
    upstream_finish(u, UPSTREAM_CONNECT);
}

/* ---- public API ---- */

struct upstream *upstream_new(struct ev_loop *loop, const struct config_upstream *cfg,
                              const struct config_limits *limits, const char *session_id,
                              const struct upstream_handler *h, void *ctx)
{
    struct upstream *u = calloc(1, sizeof(*u));
    if (u == NULL)
        return NULL;
    u->parser = imap_parser_new();
    if (u->parser == NULL) {
        free(u);
        return NULL;
    }
    u->loop = loop;
    u->cfg = cfg;
    u->limits = limits;
    u->h = h;
    u->ctx = ctx;
    snprintf(u->session_id, sizeof(u->session_id), "%s", session_id);
    conn_init_plain(&u->conn, -1);
    /* A message moves through as reads of this size into output of that one. */
    buffer_init(&u->in,
                limits->output_buffer > UPSTREAM_IN_MAX ? limits->output_buffer : UPSTREAM_IN_MAX,
                false);
    /* The output holds login commands: wipe it when it is released. */
    buffer_init(&u->out, UPSTREAM_OUT_MAX, true);
    ev_io_init(&u->io, io_cb, -1, 0);
    u->io.data = u;
    ev_init(&u->timer, timer_cb);
    u->timer.data = u;
    ev_init(&u->keepalive, keepalive_cb);
    u->keepalive.data = u;
    u->stage = ST_IDLE;
    u->selected = -1;
    static const char *const inbox[] = {"INBOX"};
    u->folder_names = inbox;
    u->nfolder_names = 1;
    return u;
}

void upstream_set_keepalive(struct upstream *u, uint32_t seconds)
{
    u->keepalive_secs = seconds;
    arm_keepalive(u);
}

void upstream_want_guid(struct upstream *u, bool want)
{
    u->want_guid = want;
}

void upstream_set_folders(struct upstream *u, const char *const *names, size_t n)
{
    if (n > 0) {
        u->folder_names = names;
        u->nfolder_names = n;
    }
}

void upstream_close(struct upstream *u)
{
    if (u->closed)
        return;
    ev_io_stop(u->loop, &u->io);
    ev_timer_stop(u->loop, &u->timer);
    ev_timer_stop(u->loop, &u->keepalive);
    conn_close(&u->conn);
    upstream_forget_credentials(u);
    u->closed = true;
    u->stage = ST_CLOSED;
}

void upstream_free(struct upstream **up)
{
    struct upstream *u = *up;
    if (u == NULL)
        return;
    upstream_close(u);
    buffer_free(&u->in);
    buffer_free(&u->out);
    imap_parser_free(&u->parser);
    maildrop_free(&u->md);
    free(u->mdf);
    free(u->op_args);
    free(u->del_uids);
    free_steps(u);
    free(u);
    *up = NULL;
}

void upstream_free_cb(void *p)
{
    struct upstream *u = p;
    upstream_free(&u);
}

void upstream_set_client(struct upstream *u, const struct sockaddr *client)
{
    if (client->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)client;
        inet_ntop(AF_INET, &in->sin_addr, u->client_ip, sizeof(u->client_ip));
        u->client_port = ntohs(in->sin_port);
    } else if (client->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)client;
        inet_ntop(AF_INET6, &in6->sin6_addr, u->client_ip, sizeof(u->client_ip));
        u->client_port = ntohs(in6->sin6_port);
    }
}

struct maildrop *upstream_take_maildrop(struct upstream *u)
{
    struct maildrop *md = u->md;
    u->md = NULL;
    return md;
}

bool upstream_has_uidplus(const struct upstream *u)
{
    return u->uidplus;
}

/* Starts an operation on a maildrop folder: at once when it is selected, else after
 * its SELECT. name == NULL: the batch in del_uids and steps. */
static void start_op(struct upstream *u, size_t folder, enum stage stage, const char *name,
                     const char *args)
{
    ev_timer_stop(u->loop, &u->keepalive);
    if (defer(u, DEFER_OP, folder, stage, name, args))
        return;
    u->busy = true;
    u->detail[0] = '\0';
    if (folder >= u->nmdf) {
        upstream_fail(u, UPSTREAM_INTERNAL, "no folder %zu in the snapshot", folder);
        return;
    }
    if ((int)folder != u->selected) {
        free(u->op_args);
        u->op_args = NULL;
        if (args != NULL && (u->op_args = strdup(args)) == NULL) {
            upstream_fail(u, UPSTREAM_INTERNAL, "out of memory");
            return;
        }
        u->op_name = name;
        u->op_stage = stage;
        u->want_folder = folder;
        u->stage = ST_RESELECT;
        if (upstream_send_select(u, u->mdf[folder].name) < 0)
            upstream_finish(u, UPSTREAM_INTERNAL);
    } else {
        u->stage = stage;
        int rc = name != NULL ? upstream_send_simple(u, name, args) : 0;
        if (name == NULL)
            start_next_delete(u);
        else if (rc < 0)
            upstream_finish(u, UPSTREAM_INTERNAL);
    }
    /* No parsing here: this may run inside process_input's own callback chain. */
    upstream_update_io(u);
}

static void run_command(struct upstream *u, enum stage stage, const char *name, const char *args)
{
    ev_timer_stop(u->loop, &u->keepalive);
    if (defer(u, DEFER_CMD, 0, stage, name, args))
        return;
    u->busy = true;
    u->detail[0] = '\0';
    u->stage = stage;
    if (upstream_send_simple(u, name, args) < 0) {
        upstream_finish(u, UPSTREAM_INTERNAL);
        return;
    }
    upstream_update_io(u);
}

void upstream_fetch(struct upstream *u, size_t folder, uint32_t uid, const char *item)
{
    char args[96];
    snprintf(args, sizeof(args), "%u (%s)", uid, item);
    u->fetch_uid = uid;
    u->body_seen = false;
    start_op(u, folder, ST_FETCH, "UID FETCH", args);
}

void upstream_fetch_headers(struct upstream *u, size_t folder, const char *uid_set,
                            const char *fields)
{
    char args[IMAP_CMD_MAX - 64];
    snprintf(args, sizeof(args), "%s (UID BODY.PEEK[HEADER.FIELDS (%s)])", uid_set, fields);
    start_op(u, folder, ST_HEADERS, "UID FETCH", args);
}

static void start_next_delete(struct upstream *u)
{
    while (u->del_pos >= u->del_n) {
        if (++u->step >= u->nsteps) {
            upstream_finish(u, UPSTREAM_OK);
            return;
        }
        u->del_pos = 0;
    }
    char set[UPSTREAM_SET_MAX + 64];
    size_t used = 0;
    size_t len = imap_writer_uid_set(set, UPSTREAM_SET_MAX, u->del_uids + u->del_pos,
                                     u->del_n - u->del_pos, &used);
    if (len == 0 || used == 0) {
        upstream_fail(u, UPSTREAM_INTERNAL, "cannot write a UID set");
        return;
    }
    u->del_pos += used;
    const struct upstream_step *st = &u->steps[u->step];
    struct imap_cmd *c = malloc(sizeof(*c));
    if (c == NULL) {
        upstream_fail(u, UPSTREAM_INTERNAL, "out of memory");
        return;
    }
    upstream_next_tag(u);
    imap_cmd_begin(c, u->tag, step_names[st->kind], u->literal_plus);
    imap_cmd_raw(c, set);
    if (st->kind == UPSTREAM_STEP_STORE) {
        char flags[300];
        snprintf(flags, sizeof(flags), "+FLAGS.SILENT (%s)", st->arg);
        imap_cmd_raw(c, flags);
    } else if (st->kind == UPSTREAM_STEP_COPY || st->kind == UPSTREAM_STEP_MOVE) {
        /* A mailbox name from the config: quoted or a literal, as its bytes need. */
        imap_cmd_string(c, st->arg, strlen(st->arg));
    }
    int rc = upstream_send_cmd(u, c);
    free(c);
    if (rc < 0)
        upstream_finish(u, UPSTREAM_INTERNAL);
}

static void free_steps(struct upstream *u)
{
    for (size_t i = 0; i < u->nsteps; i++) {
        free((char *)u->steps[i].arg);
        u->steps[i].arg = NULL;
    }
    u->nsteps = 0;
}

void upstream_batch(struct upstream *u, size_t folder, const uint32_t *uids, size_t n,
                    const struct upstream_step *steps, size_t nsteps)
{
    u->busy = true;
    u->detail[0] = '\0';
    free(u->del_uids);
    free_steps(u);
    u->del_uids = malloc((n ? n : 1) * sizeof(*uids));
    if (u->del_uids == NULL || nsteps == 0 || nsteps > UPSTREAM_STEPS_MAX) {
        upstream_fail(u, UPSTREAM_INTERNAL, "cannot prepare the update");
        return;
    }
    memcpy(u->del_uids, uids, n * sizeof(*uids));
    for (size_t i = 0; i < nsteps; i++) {
        u->steps[i].kind = steps[i].kind;
        u->steps[i].arg = steps[i].arg != NULL ? strdup(steps[i].arg) : NULL;
        u->nsteps++;
        if (steps[i].arg != NULL && u->steps[i].arg == NULL) {
            upstream_fail(u, UPSTREAM_INTERNAL, "out of memory");
            return;
        }
    }
    u->del_n = n;
    u->del_pos = 0;
    u->step = 0;
    start_op(u, folder, ST_STORE, NULL, NULL);
}

bool upstream_has_move(const struct upstream *u)
{
    return u->move;
}

void upstream_logout(struct upstream *u)
{
    run_command(u, ST_LOGOUT, "LOGOUT", NULL);
}

void upstream_resume(struct upstream *u)
{
    if (u->closed || !u->paused)
        return;
    u->paused = false;
    if (u->busy)
        ev_timer_again(u->loop, &u->timer);
    process_input(u);
    upstream_update_io(u);
}
