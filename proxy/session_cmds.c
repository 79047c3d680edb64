/* TRANSACTION commands answered from the snapshot: CAPA, STAT, LIST, UIDL, DELE, RSET. */
#include <stdio.h>
#include <string.h>

#include "pop3_writer.h"
#include "session_int.h"
#include "uidl.h"

void session_cmd_capa(struct session *s)
{
    /* RFC 2449: before login the value may differ per user ("USER"); after, it is this
     * user's. */
    const struct config_mapping *m = s->mapping != NULL ? s->mapping : &s->cfg->mapping;
    bool per_user = s->state == SESSION_AUTHORIZATION;
    char login_delay_buf[32], expire_buf[32];
    const char *login_delay = NULL, *expire = NULL;
    if (m->login_delay > 0) {
        snprintf(login_delay_buf, sizeof(login_delay_buf), "%u%s", m->login_delay,
                 per_user ? " USER" : "");
        login_delay = login_delay_buf;
    }
    if (m->expire != NULL) {
        snprintf(expire_buf, sizeof(expire_buf), "%s%s", m->expire, per_user ? " USER" : "");
        expire = expire_buf;
    }
    /* The same list before and after login: some clients ask only once. What
     * changes is only what TLS changes: STLS, and the login methods it unlocks. */
    const struct pop3_capa capa = {
        .top = true,
        .uidl = true,
        .user = session_plaintext_ok(s),
        .stls = s->listener->tls == CONFIG_TLS_STARTTLS && !s->secure &&
                s->state == SESSION_AUTHORIZATION,
        .sasl = session_sasl_mechs(s),
        .login_delay = login_delay,
        .expire = expire,
        .resp_codes = true,
        .auth_resp_code = true,
        .pipelining = true,
        .implementation = "popgate",
    };
    char buf[SESSION_REPLY_ROOM];
    size_t n = pop3_writer_capa(buf, sizeof(buf), &capa);
    session_append(s, buf, n);
}

void session_cmd_stat(struct session *s)
{
    uint32_t count;
    uint64_t octets;
    maildrop_stat(s->md, &count, &octets);
    session_replyf(s, true, NULL, "%u %llu", count, (unsigned long long)octets);
}

const struct maildrop_msg *session_message(struct session *s, uint32_t n)
{
    const struct maildrop_msg *msg = NULL;
    switch (maildrop_get(s->md, n, &msg)) {
    case MAILDROP_OK:
        return msg;
    case MAILDROP_DELETED:
        session_replyf(s, false, NULL, "Message %u already deleted", n);
        return NULL;
    case MAILDROP_NO_SUCH:
        break;
    }
    session_replyf(s, false, NULL, "No such message");
    return NULL;
}

static size_t listing_line(struct session *s, uint32_t n, const struct maildrop_msg *msg, char *out,
                           size_t cap)
{
    if (!s->listing_uidl)
        return pop3_writer_list_line(out, cap, n, msg->size);
    (void)msg;
    return pop3_writer_uidl_line(out, cap, n, session_state_uidl(s, n));
}

void session_cmd_list(struct session *s, const struct pop3_command *cmd, bool uidl)
{
    s->listing_uidl = uidl;
    if (cmd->argc == 1) {
        const struct maildrop_msg *msg = session_message(s, cmd->num[0]);
        if (msg == NULL)
            return;
        char line[128];
        memcpy(line, "+OK ", 4);
        size_t n = listing_line(s, cmd->num[0], msg, line + 4, sizeof(line) - 4);
        session_append(s, line, 4 + n);
        return;
    }
    uint32_t count;
    uint64_t octets;
    maildrop_stat(s->md, &count, &octets);
    if (uidl)
        session_reply(s, true, NULL, "Unique-ID listing follows");
    else
        session_replyf(s, true, NULL, "%u messages (%llu octets)", count,
                       (unsigned long long)octets);
    s->job = JOB_LISTING;
    s->listing_next = 1;
    session_continue_listing(s);
}

/* Writes listing lines while the output has room; 100,000 lines go out in slices. */
void session_continue_listing(struct session *s)
{
    const uint32_t total = maildrop_count(s->md);
    char line[128];
    while (s->listing_next <= total && buffer_room(&s->out) >= sizeof(line)) {
        uint32_t n = s->listing_next++;
        const struct maildrop_msg *msg = NULL;
        if (maildrop_get(s->md, n, &msg) != MAILDROP_OK)
            continue;
        size_t len = listing_line(s, n, msg, line, sizeof(line));
        session_append(s, line, len);
    }
    if (s->listing_next > total && buffer_room(&s->out) >= 3) {
        session_append(s, ".\r\n", 3);
        session_job_done(s);
    }
}

void session_cmd_dele(struct session *s, const struct pop3_command *cmd)
{
    if (session_message(s, cmd->num[0]) == NULL)
        return;
    maildrop_delete(s->md, cmd->num[0]);
    session_replyf(s, true, NULL, "Message %u deleted", cmd->num[0]);
}

void session_cmd_rset(struct session *s)
{
    maildrop_reset(s->md);
    uint32_t count;
    uint64_t octets;
    maildrop_stat(s->md, &count, &octets);
    session_replyf(s, true, NULL, "%u messages (%llu octets)", count, (unsigned long long)octets);
}
