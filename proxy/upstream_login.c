/* The upstream's login phase: greeting, capabilities, STARTTLS or implicit TLS, ID, and
 * AUTHENTICATE or LOGIN, up to SELECT. */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "base64.h"
#include "upstream_int.h"

/* ---- capabilities ---- */

void upstream_login_cap_reset(struct upstream *u)
{
    u->caps_known = true;
    u->literal_plus = u->sasl_ir = u->auth_plain = u->logindisabled = u->uidplus = false;
    u->starttls = u->auth_xoauth2 = u->auth_oauthbearer = u->id = u->move = false;
}

void upstream_login_cap_add(struct upstream *u, const char *p, size_t len)
{
#define CAP_IS(s) (len == sizeof(s) - 1 && strncasecmp(p, s, len) == 0)
    if (CAP_IS("LITERAL+"))
        u->literal_plus = true;
    else if (CAP_IS("SASL-IR"))
        u->sasl_ir = true;
    else if (CAP_IS("AUTH=PLAIN"))
        u->auth_plain = true;
    else if (CAP_IS("LOGINDISABLED"))
        u->logindisabled = true;
    else if (CAP_IS("UIDPLUS"))
        u->uidplus = true;
    else if (CAP_IS("STARTTLS"))
        u->starttls = true;
    else if (CAP_IS("AUTH=XOAUTH2"))
        u->auth_xoauth2 = true;
    else if (CAP_IS("AUTH=OAUTHBEARER"))
        u->auth_oauthbearer = true;
    else if (CAP_IS("ID"))
        u->id = true;
    else if (CAP_IS("MOVE"))
        u->move = true;
    else if (CAP_IS("OBJECTID"))
        u->objectid = true;
    else if (CAP_IS("X-GM-EXT-1"))
        u->gm_ext = true;
#undef CAP_IS
}

void upstream_login_cap_parse(struct upstream *u, const char *p, size_t len)
{
    upstream_login_cap_reset(u);
    size_t i = 0;
    while (i < len) {
        while (i < len && p[i] == ' ')
            i++;
        size_t start = i;
        while (i < len && p[i] != ' ')
            i++;
        if (i > start)
            upstream_login_cap_add(u, p + start, i - start);
    }
}

/* ---- login stages ---- */

int upstream_send_select(struct upstream *u, const char *name)
{
    struct imap_cmd *c = malloc(sizeof(*c));
    if (c == NULL) {
        upstream_set_detail(u, "out of memory");
        return -1;
    }
    u->have_uidvalidity = false;
    u->exists = 0;
    upstream_next_tag(u);
    imap_cmd_begin(c, u->tag, "SELECT", u->literal_plus);
    imap_cmd_string(c, name, strlen(name));
    int rc = upstream_send_cmd(u, c);
    free(c);
    return rc;
}

void upstream_login_sizes(struct upstream *u)
{
    char args[64];
    if (u->guid_item != NULL)
        snprintf(args, sizeof(args), "1:* (UID RFC822.SIZE %s)", u->guid_item);
    else
        snprintf(args, sizeof(args), "1:* (UID RFC822.SIZE)");
    u->stage = ST_SIZES;
    if (upstream_send_simple(u, "UID FETCH", args) < 0)
        upstream_finish(u, UPSTREAM_INTERNAL);
}

void upstream_login_select(struct upstream *u)
{
    /* RFC 8474 EMAILID, Gmail's X-GM-MSGID, else Dovecot's X-GUID (announced by no
     * capability: a server without it refuses the fetch, which is then asked again
     * without it). */
    if (u->want_guid && u->stage != ST_SELECT && u->stage != ST_SIZES)
        u->guid_item = u->objectid ? "EMAILID" : u->gm_ext ? "X-GM-MSGID" : "X-GUID";
    /* The first call starts at folder 0; each later one moves on. */
    if (u->stage == ST_SELECT || u->stage == ST_SIZES)
        u->login_folder++;
    if (u->login_folder >= u->nfolder_names) {
        if (u->md == NULL) {
            upstream_fail(u, UPSTREAM_INTERNAL, "no folder selected");
            return;
        }
        maildrop_seal(u->md);
        upstream_finish(u, UPSTREAM_OK);
        return;
    }
    u->stage = ST_SELECT;
    if (upstream_send_select(u, u->folder_names[u->login_folder]) < 0)
        upstream_finish(u, UPSTREAM_INTERNAL);
}

/* Builds the SASL message to send: PLAIN's from user and password, or the client's own
 * OAuth message, which popgate passes on unchanged. Returns NULL when out of memory. */
static char *sasl_message(struct upstream *u, size_t *len_r)
{
    if (u->sasl_mech != NULL) {
        char *raw = malloc(u->pass_len ? u->pass_len : 1);
        if (raw != NULL)
            memcpy(raw, u->pass, u->pass_len);
        *len_r = u->pass_len;
        return raw;
    }
    /* authzid NUL authcid NUL password (RFC 4616): base64 leaves no quoting questions. */
    size_t len = 1 + u->user_len + 1 + u->pass_len;
    char *raw = malloc(len);
    if (raw != NULL) {
        raw[0] = '\0';
        memcpy(raw + 1, u->user, u->user_len);
        raw[1 + u->user_len] = '\0';
        memcpy(raw + 2 + u->user_len, u->pass, u->pass_len);
    }
    *len_r = len;
    return raw;
}

/* AUTHENTICATE <mech>, with the response inline (SASL-IR) or after the server's "+". */
static int send_authenticate(struct upstream *u, struct imap_cmd *c, const char *mech)
{
    size_t raw_len = 0;
    char *raw = sasl_message(u, &raw_len);
    size_t b64_cap = BASE64_ENCODED_SIZE(raw_len);
    char *b64 = malloc(b64_cap + 2);
    long n = -1;
    if (raw != NULL && b64 != NULL)
        n = base64_encode(raw, raw_len, b64, b64_cap);
    int rc = -1;
    char name[32];
    snprintf(name, sizeof(name), "AUTHENTICATE %s", mech);
    if (n < 0) {
        upstream_set_detail(u, "out of memory");
    } else if ((size_t)n + 64 > IMAP_CMD_MAX) {
        upstream_set_detail(u, "login does not fit a command");
    } else if (u->sasl_ir) {
        imap_cmd_begin(c, u->tag, name, u->literal_plus);
        /* RFC 4959: an empty initial response is sent as "=". */
        imap_cmd_raw(c, n == 0 ? "=" : b64);
        rc = upstream_send_cmd(u, c);
    } else {
        imap_cmd_begin(c, u->tag, name, u->literal_plus);
        rc = upstream_send_cmd(u, c);
        if (rc == 0) {
            memcpy(b64 + n, "\r\n", 2);
            u->pending = b64;
            u->pending_len = (size_t)n + 2;
            u->pending_nsync = 0;
            u->pending_next = 0;
            b64 = NULL;
        }
    }
    if (raw != NULL)
        upstream_wipe_free(&raw, raw_len);
    if (b64 != NULL)
        upstream_wipe_free(&b64, b64_cap + 2);
    return rc;
}

void upstream_login_auth(struct upstream *u)
{
    if (u->sasl_mech != NULL &&
        !(strcmp(u->sasl_mech, "XOAUTH2") == 0 ? u->auth_xoauth2 : u->auth_oauthbearer)) {
        upstream_fail(u, UPSTREAM_AUTH, "upstream does not offer AUTH=%s", u->sasl_mech);
        return;
    }
    if (u->sasl_mech == NULL && u->logindisabled && !u->auth_plain) {
        upstream_fail(u, UPSTREAM_PROTOCOL, "upstream announces LOGINDISABLED and no AUTH=PLAIN");
        return;
    }
    struct imap_cmd *c = malloc(sizeof(*c));
    if (c == NULL) {
        upstream_fail(u, UPSTREAM_INTERNAL, "out of memory");
        return;
    }
    upstream_next_tag(u);
    u->stage = ST_AUTH;
    int rc;
    if (u->sasl_mech != NULL) {
        rc = send_authenticate(u, c, u->sasl_mech);
    } else if (u->auth_plain) {
        rc = send_authenticate(u, c, "PLAIN");
    } else {
        imap_cmd_begin(c, u->tag, "LOGIN", u->literal_plus);
        imap_cmd_string(c, u->user, u->user_len);
        imap_cmd_string(c, u->pass, u->pass_len);
        rc = upstream_send_cmd(u, c);
    }
    explicit_bzero(c, sizeof(*c));
    free(c);
    if (rc < 0) {
        upstream_finish(u, UPSTREAM_INTERNAL);
        return;
    }
    /* Capabilities may change after login (RFC 3501 6.2.2): learn them again. */
    u->caps_known = false;
    /* The command (or its pending rest) now holds what is needed. */
    upstream_wipe_free(&u->user, u->user_len);
    upstream_wipe_free(&u->pass, u->pass_len);
}

/* A "+" arrived: send the next part of the running command. */
void upstream_login_continuation(struct upstream *u)
{
    if (u->pending == NULL) {
        if (u->stage == ST_AUTH) {
            /* A challenge after our response is an error report (XOAUTH2, RFC 7628):
             * answer as the mechanism wants, so the server ends with a tagged NO. */
            const char *reply = "*\r\n";
            if (u->sasl_mech != NULL)
                reply = strcmp(u->sasl_mech, "OAUTHBEARER") == 0 ? "AQ==\r\n" : "\r\n";
            (void)buffer_append(&u->out, reply, strlen(reply));
            return;
        }
        upstream_fail(u, UPSTREAM_PROTOCOL, "unexpected continuation request");
        return;
    }
    size_t from = u->pending_nsync > 0 ? u->pending_sync[u->pending_next] : 0;
    size_t to = u->pending_next + 1 < u->pending_nsync ? u->pending_sync[u->pending_next + 1]
                                                       : u->pending_len;
    if (buffer_append(&u->out, u->pending + from, to - from) < 0) {
        upstream_fail(u, UPSTREAM_INTERNAL, "continuation does not fit the output buffer");
        return;
    }
    u->pending_next++;
    if (u->pending_nsync == 0 || u->pending_next >= u->pending_nsync)
        upstream_wipe_free(&u->pending, u->pending_len);
}

enum upstream_status upstream_login_classify_no(const struct resp *r)
{
    /* RFC 5530: these codes say the server, not the password, is the problem. */
    static const char *const temporary[] = {"UNAVAILABLE", "SERVERBUG", "LIMIT", "INUSE",
                                            "CONTACTADMIN"};
    for (size_t i = 0; i < sizeof(temporary) / sizeof(temporary[0]); i++)
        if (strcasecmp(r->code, temporary[i]) == 0)
            return UPSTREAM_CONNECT;
    return UPSTREAM_AUTH;
}

/* Capabilities are known: go on with STARTTLS where configured, else log in. */
void upstream_login_after_caps(struct upstream *u)
{
    if (u->cfg->tls == CONFIG_TLS_STARTTLS && !conn_is_tls(&u->conn)) {
        /* Never fall back to plaintext: the password would cross the wire in clear. */
        if (!u->starttls) {
            upstream_fail(u, UPSTREAM_PROTOCOL, "upstream does not offer STARTTLS; not logging in");
            return;
        }
        u->stage = ST_STARTTLS;
        if (upstream_send_simple(u, "STARTTLS", NULL) < 0)
            upstream_finish(u, UPSTREAM_INTERNAL);
        return;
    }
    if (u->client_ip[0] != '\0' && u->id) {
        /* RFC 2971: the server's own brute-force protection sees the real client. */
        char args[160];
        snprintf(args, sizeof(args), "(\"x-originating-ip\" \"%s\" \"x-originating-port\" \"%u\")",
                 u->client_ip, u->client_port);
        u->stage = ST_ID;
        if (upstream_send_simple(u, "ID", args) < 0)
            upstream_finish(u, UPSTREAM_INTERNAL);
        return;
    }
    upstream_login_auth(u);
}

void upstream_login_begin_tls(struct upstream *u)
{
    const struct config_upstream *cfg = u->cfg;
    const char *verify_name = NULL;
    if (cfg->verify)
        verify_name = cfg->verify_name != NULL ? cfg->verify_name : cfg->host;
    /* SNI carries host names only (RFC 6066 3). */
    unsigned char addr[16];
    bool is_ip =
        inet_pton(AF_INET, cfg->host, addr) == 1 || inet_pton(AF_INET6, cfg->host, addr) == 1;
    if (conn_tls_connect(&u->conn, cfg->tls_ctx, is_ip ? NULL : cfg->host, verify_name) < 0) {
        upstream_fail(u, UPSTREAM_CONNECT, "%s", u->conn.error);
        return;
    }
    u->stage = ST_TLS;
    upstream_arm_timer(u, u->limits->connect_timeout);
}

void upstream_login_tls_step(struct upstream *u)
{
    enum conn_status st = conn_handshake(&u->conn);
    if (st == CONN_AGAIN)
        return;
    if (st != CONN_DONE) {
        upstream_fail(u, UPSTREAM_CONNECT, "TLS with upstream %s failed: %s", u->cfg->name,
                      u->conn.error);
        return;
    }
    if (u->cfg->tls == CONFIG_TLS_IMPLICIT) {
        u->stage = ST_GREETING;
        return;
    }
    /* After STARTTLS, what was said before TLS no longer counts (RFC 3501 6.2.1). */
    u->caps_known = false;
    u->stage = ST_CAPABILITY;
    if (upstream_send_simple(u, "CAPABILITY", NULL) < 0)
        upstream_finish(u, UPSTREAM_INTERNAL);
}

void upstream_login_greeting(struct upstream *u)
{
    struct resp *r = &u->r;
    if (strcasecmp(r->word, "OK") == 0) {
        if (u->caps_known) {
            upstream_login_after_caps(u);
            return;
        }
        u->stage = ST_CAPABILITY;
        if (upstream_send_simple(u, "CAPABILITY", NULL) < 0)
            upstream_finish(u, UPSTREAM_INTERNAL);
        return;
    }
    if (strcasecmp(r->word, "PREAUTH") == 0) {
        /* Logged in as someone before we said who: never serve that mailbox. */
        upstream_fail(u, UPSTREAM_PROTOCOL, "upstream greeted with PREAUTH; refusing");
        return;
    }
    if (strcasecmp(r->word, "BYE") == 0) {
        upstream_fail(u, UPSTREAM_CONNECT, "upstream refused the connection: %s", r->text);
        return;
    }
    upstream_fail(u, UPSTREAM_PROTOCOL, "bad greeting");
}

static char *dup_bytes(const char *p, size_t len)
{
    char *d = malloc(len + 1);
    if (d != NULL) {
        memcpy(d, p, len);
        d[len] = '\0';
    }
    return d;
}

void upstream_login(struct upstream *u, const char *user, size_t user_len, const char *pass,
                    size_t pass_len)
{
    u->busy = true;
    u->detail[0] = '\0';
    u->user = dup_bytes(user, user_len);
    u->pass = dup_bytes(pass, pass_len);
    u->user_len = user_len;
    u->pass_len = pass_len;
    if (u->user == NULL || u->pass == NULL) {
        upstream_fail(u, UPSTREAM_INTERNAL, "out of memory");
        return;
    }
    u->addr_index = 0;
    upstream_try_connect(u);
}

void upstream_login_sasl(struct upstream *u, const char *mech, const char *msg, size_t len)
{
    u->sasl_mech = mech;
    upstream_login(u, "", 0, msg, len);
}
