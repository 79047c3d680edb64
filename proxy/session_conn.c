/* The session's connection set-up: the PROXY header, implicit TLS and STLS, and who may
 * send a password in clear. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "conn_limit.h"
#include "log.h"
#include "proxy_protocol.h"
#include "session_int.h"

void session_conn_handshake(struct session *s)
{
    enum conn_status st = conn_handshake(&s->client);
    if (st == CONN_AGAIN)
        return;
    if (st != CONN_DONE) {
        char q[LOG_VALUE_MAX];
        session_log(s, "event=tls_failed reason=%s", log_str(q, sizeof(q), s->client.error));
        session_close(s, "tls_failed");
        return;
    }
    char desc[96];
    conn_tls_describe(&s->client, desc, sizeof(desc));
    session_log(s, "event=tls tls=%s", desc);
    session_touch(s);
    if (s->job == JOB_STLS) {
        s->job = JOB_NONE;
        return;
    }
    /* Implicit TLS: the greeting goes out once the channel is secure. */
    session_reply(s, true, NULL, "popgate ready");
}

/* STLS was answered and the answer is on the wire: switch the connection to TLS. */
void session_conn_start_stls(struct session *s)
{
    /* Whatever the client sent behind STLS was plaintext: never run it (RFC 2595 3.1). */
    buffer_clear(&s->in);
    pop3_parser_reset(s->parser);
    if (conn_tls_accept(&s->client, s->listener->tls_ctx) < 0) {
        char q[LOG_VALUE_MAX];
        session_log(s, "event=tls_failed reason=%s", log_str(q, sizeof(q), s->client.error));
        session_close(s, "tls_failed");
        return;
    }
    s->secure = true;
    session_conn_handshake(s);
}

/* The connection is ready for POP3: implicit TLS first, else the greeting. */
void session_conn_begin(struct session *s)
{
    if (s->listener->tls == CONFIG_TLS_IMPLICIT) {
        if (conn_tls_accept(&s->client, s->listener->tls_ctx) < 0) {
            char q[LOG_VALUE_MAX];
            session_log(s, "event=tls_failed reason=%s", log_str(q, sizeof(q), s->client.error));
            session_close(s, "tls_failed");
            return;
        }
        s->secure = true;
        return;
    }
    session_reply(s, true, NULL, "popgate ready");
}

/* Applies a PROXY header: from now on the session is the real client's. */
static void take_proxy_info(struct session *s, const struct proxy_protocol_info *info)
{
    if (info->family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)&s->client_addr;
        memset(&s->client_addr, 0, sizeof(s->client_addr));
        in->sin_family = AF_INET;
        memcpy(&in->sin_addr, info->src_addr, 4);
        in->sin_port = htons(info->src_port);
    } else if (info->family == AF_INET6) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&s->client_addr;
        memset(&s->client_addr, 0, sizeof(s->client_addr));
        in6->sin6_family = AF_INET6;
        memcpy(&in6->sin6_addr, info->src_addr, 16);
        in6->sin6_port = htons(info->src_port);
    } else {
        return; /* LOCAL / UNKNOWN: the proxy's own connection (health checks) */
    }
    char proxy[64];
    snprintf(proxy, sizeof(proxy), "%s", s->peer);
    conn_format_addr(&s->client_addr, s->peer, sizeof(s->peer));
    s->is_loopback = session_conn_is_loopback(&s->client_addr);
    session_log(s, "event=proxy_header version=%d proxy=%s", info->version, proxy);
}

/*
 * The PROXY header named the real client: counts the session under its address
 * (the listener counted it in the total only). Returns false when the per-address
 * limit turned it away: a plain listener answers [SYS/TEMP] first, an implicit-TLS
 * one closes before the handshake.
 */
static bool admit_real_client(struct session *s, const struct proxy_protocol_info *info)
{
    /* LOCAL / UNKNOWN headers (the balancer's health checks) name no client. */
    if (info->family != AF_INET && info->family != AF_INET6)
        return true;
    uint64_t key = conn_limit_key(&s->client_addr);
    enum conn_limit_verdict v = conn_limit_admit_address(&s->cfg->limits, key);
    if (v == CONN_LIMIT_OK) {
        s->conn_limit_key = key;
        return true;
    }
    session_log(s, "event=connection_refused reason=\"%s\" limit=%u", conn_limit_reason(v),
                conn_limit_bound(&s->cfg->limits, v));
    metrics_connection_refused(conn_limit_metrics_reason(v));
    if (s->listener->tls == CONFIG_TLS_IMPLICIT) {
        session_close(s, "connection_limit");
        return false;
    }
    session_reply(s, false, "SYS/TEMP", CONN_LIMIT_REFUSED_TEXT);
    s->flush_close = true;
    s->result = "connection_limit";
    return false;
}

/*
 * Reads the PROXY header with MSG_PEEK and then takes exactly its bytes, so what
 * follows (a TLS ClientHello for implicit TLS) stays in the socket for its reader.
 */
void session_conn_read_proxy(struct session *s)
{
    char buf[PROXY_PROTOCOL_V2_MAX];
    ssize_t n = recv(s->client.fd, buf, sizeof(buf), MSG_PEEK);
    if (n == 0) {
        session_close(s, "client_closed");
        return;
    }
    if (n < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            session_close(s, "client_error");
        return;
    }
    struct proxy_protocol_info info;
    size_t consumed = 0;
    const char *error = NULL;
    enum proxy_protocol_status st = proxy_protocol_parse(buf, (size_t)n, &consumed, &info, &error);
    if (st == PROXY_PROTOCOL_MORE) {
        /* The rest is on its way; peeking again at once would spin the loop. */
        ev_timer_set(&s->proxy_retry, SESSION_PROXY_RETRY, 0);
        ev_timer_start(s->loop, &s->proxy_retry);
        return;
    }
    if (st == PROXY_PROTOCOL_ERROR) {
        char q[LOG_VALUE_MAX];
        session_log(s, "event=proxy_refused reason=%s", log_str(q, sizeof(q), error));
        session_close(s, "proxy_refused");
        return;
    }
    if (recv(s->client.fd, buf, consumed, 0) != (ssize_t)consumed) {
        session_close(s, "client_error");
        return;
    }
    s->await_proxy = false;
    take_proxy_info(s, &info);
    if (!admit_real_client(s, &info))
        return;
    session_conn_begin(s);
}

void session_conn_proxy_retry_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct session *s = w->data;
    session_conn_read_proxy(s);
    session_update_io(s);
}

bool session_conn_is_loopback(const struct sockaddr_storage *peer)
{
    if (peer->ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)peer;
        return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
    }
    if (peer->ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)peer;
        if (IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr))
            return true;
        return IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr) && in6->sin6_addr.s6_addr[12] == 127;
    }
    return false;
}

bool session_plaintext_ok(const struct session *s)
{
    if (s->secure)
        return true;
    switch (s->listener->plaintext_auth) {
    case CONFIG_PLAINTEXT_ALLOW:
        return true;
    case CONFIG_PLAINTEXT_DENY:
        return false;
    case CONFIG_PLAINTEXT_LOOPBACK:
        break;
    }
    return s->is_loopback;
}
