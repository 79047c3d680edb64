/* QUIT from TRANSACTION: the UPDATE state, where DELE marks and RETRs become IMAP changes. */
#include <stdlib.h>

#include "session_int.h"

static void logout(struct session *s)
{
    s->job = JOB_QUIT_LOGOUT;
    upstream_logout(s->up);
}

static void update_failed(struct session *s, const char *why)
{
    session_log(s, "event=update_failed reason=\"%s\"", why);
    session_reply(s, false, "SYS/TEMP", "Deleted messages not removed, try again later");
    s->flush_close = true;
    s->result = "update_failed";
}

static int cmp_uid(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* on_retr "seen": \Seen on what was retrieved, one folder after the other from
 * s->quit_folder. False when no folder is left to do. */
static bool start_seen(struct session *s)
{
    if (!s->mapping->on_retr_seen || s->nretr_msgs == 0)
        return false;
    if (s->quit_folder == 0) /* message numbers in order are folders, then UIDs, in order */
        qsort(s->retr_msgs, s->nretr_msgs, sizeof(*s->retr_msgs), cmp_uid);
    uint32_t *uids = malloc(s->nretr_msgs * sizeof(*uids));
    if (uids == NULL)
        return false; /* only \Seen is not set */
    for (; s->quit_folder < maildrop_folder_count(s->md); s->quit_folder++) {
        size_t k = 0;
        for (size_t i = 0; i < s->nretr_msgs; i++) {
            const struct maildrop_msg *m = NULL;
            if (i > 0 && s->retr_msgs[i - 1] == s->retr_msgs[i])
                continue;
            if (maildrop_get(s->md, s->retr_msgs[i], &m) == MAILDROP_OK &&
                m->folder == s->quit_folder)
                uids[k++] = m->uid;
        }
        if (k == 0)
            continue;
        const struct upstream_step step = {UPSTREAM_STEP_STORE, "\\Seen"};
        s->job = JOB_QUIT_SEEN;
        upstream_batch(s->up, s->quit_folder, uids, k, &step, 1);
        free(uids);
        return true;
    }
    free(uids);
    return false;
}

/* The steps on_delete asks for; sets quit_partial when the server cannot do them whole. */
static size_t delete_steps(struct session *s, struct upstream_step *steps)
{
    const struct config_mapping *m = s->mapping;
    bool uidplus = upstream_has_uidplus(s->up);
    size_t n = 0;
    switch (m->on_delete) {
    case CONFIG_DELETE_HIDE:
        return 0;
    case CONFIG_DELETE_FLAG:
        steps[n++] = (struct upstream_step){UPSTREAM_STEP_STORE, m->on_delete_arg};
        return n;
    case CONFIG_DELETE_MOVE:
        if (upstream_has_move(s->up)) {
            steps[n++] = (struct upstream_step){UPSTREAM_STEP_MOVE, m->on_delete_arg};
            return n;
        }
        steps[n++] = (struct upstream_step){UPSTREAM_STEP_COPY, m->on_delete_arg};
        break;
    case CONFIG_DELETE_EXPUNGE:
        break;
    }
    steps[n++] = (struct upstream_step){UPSTREAM_STEP_STORE, "\\Deleted"};
    /* A plain EXPUNGE would also remove what other clients marked \Deleted. */
    if (uidplus)
        steps[n++] = (struct upstream_step){UPSTREAM_STEP_EXPUNGE, NULL};
    else
        s->quit_partial = true;
    return n;
}

/* How many of folder f's messages are marked deleted. */
static uint32_t folder_deleted(const struct session *s, size_t f)
{
    uint32_t first = 0, k = 0;
    uint32_t count = maildrop_folder_range(s->md, f, &first);
    for (uint32_t n = first; n < first + count; n++)
        k += maildrop_at(s->md, n)->deleted;
    return k;
}

/* Records folder f's deleted messages (every folder's when f is SIZE_MAX) as hidden. */
static void hide_deleted(struct session *s, size_t f)
{
    for (size_t i = 0; i < maildrop_folder_count(s->md); i++) {
        if (f != SIZE_MAX && i != f)
            continue;
        uint32_t first = 0;
        uint32_t count = maildrop_folder_range(s->md, i, &first);
        for (uint32_t n = first; n < first + count; n++)
            if (maildrop_at(s->md, n)->deleted)
                session_state_hide(s, n);
    }
}

/* on_delete, one folder after the other from s->quit_folder; then LOGOUT. */
static void start_delete(struct session *s)
{
    uint32_t total = maildrop_deleted_count(s->md);
    uint32_t *uids = malloc((total ? total : 1) * sizeof(*uids));
    if (uids == NULL) {
        update_failed(s, "out of memory");
        return;
    }
    struct upstream_step steps[3];
    size_t nsteps = delete_steps(s, steps);
    /* flag and hide keep the message upstream: the state hides it from later sessions;
     * so does a move the server could not finish (no UIDPLUS), or its copies would pile
     * up. For hide that is all; otherwise it waits for the server's OK. */
    if (s->mapping->on_delete != CONFIG_DELETE_EXPUNGE &&
        (s->mapping->on_delete != CONFIG_DELETE_MOVE || s->quit_partial))
        s->hide_on_success = true;
    if (nsteps == 0) {
        hide_deleted(s, SIZE_MAX);
        s->deleted_count = total;
        s->quit_folder = maildrop_folder_count(s->md);
    }
    for (; s->quit_folder < maildrop_folder_count(s->md); s->quit_folder++) {
        size_t got = maildrop_deleted_uids(s->md, s->quit_folder, uids, total);
        if (got == 0)
            continue;
        if (s->quit_partial)
            session_log(s,
                        "event=update_partial reason=\"upstream lacks UIDPLUS; messages flagged "
                        "\\\\Deleted but not expunged\" count=%zu",
                        got);
        s->job = JOB_QUIT_DELETE;
        upstream_batch(s->up, s->quit_folder, uids, got, steps, nsteps);
        free(uids);
        return;
    }
    free(uids);
    logout(s);
}

void session_cmd_quit(struct session *s)
{
    s->state = SESSION_UPDATE;
    s->quit_folder = 0;
    if (!start_seen(s)) {
        s->quit_folder = 0;
        start_delete(s);
    }
}

void session_quit_done(struct session *s, enum upstream_status st, const char *detail)
{
    if (s->job == JOB_QUIT_SEEN) {
        /* \Seen is a courtesy to IMAP clients: a failure does not stop the deletions. */
        if (st != UPSTREAM_OK)
            session_log(s, "event=seen_failed class=%s reason=%s", upstream_status_name(st),
                        detail);
        if (st == UPSTREAM_OK || st == UPSTREAM_NO) {
            s->quit_folder++;
            if (!start_seen(s)) {
                s->quit_folder = 0;
                start_delete(s);
            }
            return;
        }
    }
    if (s->job == JOB_QUIT_DELETE || s->job == JOB_QUIT_SEEN) {
        if (st != UPSTREAM_OK) {
            session_log(s, "event=update_failed class=%s reason=%s", upstream_status_name(st),
                        detail);
            session_drop_upstream(s);
            session_reply(s, false, "SYS/TEMP", "Some deleted messages not removed");
            s->flush_close = true;
            s->result = "update_failed";
            session_job_done(s);
            return;
        }
        if (s->job == JOB_QUIT_DELETE) {
            if (s->hide_on_success)
                hide_deleted(s, s->quit_folder);
            if (!s->quit_partial)
                s->deleted_count += folder_deleted(s, s->quit_folder);
        }
        s->quit_folder++;
        start_delete(s);
        return;
    }
    /* LOGOUT ended (a failure here changes nothing: the update is done). */
    session_drop_upstream(s);
    if (s->quit_partial) {
        session_reply(s, false, "SYS/PERM", "Some deleted messages not removed");
        s->result = "update_partial";
    } else {
        session_replyf(s, true, NULL, "popgate signing off (%u messages deleted)",
                       s->deleted_count);
        s->result = "quit";
    }
    s->flush_close = true;
    session_job_done(s);
}
