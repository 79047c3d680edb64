/* QUIT from TRANSACTION: the UPDATE state, where DELE marks become IMAP deletions. */
#include <stdlib.h>

#include "session_int.h"

static void logout(struct session *s)
{
    s->job = JOB_QUIT_LOGOUT;
    upstream_logout(s->up);
}

void session_cmd_quit(struct session *s)
{
    s->state = SESSION_UPDATE;
    uint32_t n = maildrop_deleted_count(s->md);
    if (n == 0) {
        logout(s);
        return;
    }
    uint32_t *uids = malloc(n * sizeof(*uids));
    if (uids == NULL) {
        session_log(s, "event=update_failed reason=\"out of memory\"");
        session_reply(s, false, "SYS/TEMP", "Deleted messages not removed, try again later");
        s->flush_close = true;
        s->result = "update_failed";
        return;
    }
    size_t got = maildrop_deleted_uids(s->md, uids, n);
    /* A plain EXPUNGE would also remove what other clients marked \Deleted. */
    s->quit_partial = !upstream_has_uidplus(s->up);
    if (s->quit_partial)
        session_log(s,
                    "event=update_partial reason=\"upstream lacks UIDPLUS; messages flagged "
                    "\\\\Deleted but not expunged\" count=%u",
                    n);
    s->job = JOB_QUIT_DELETE;
    upstream_delete(s->up, uids, got, !s->quit_partial);
    free(uids);
}

void session_quit_done(struct session *s, enum upstream_status st, const char *detail)
{
    if (s->job == JOB_QUIT_DELETE) {
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
        if (!s->quit_partial)
            s->deleted_count = maildrop_deleted_count(s->md);
        logout(s);
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
