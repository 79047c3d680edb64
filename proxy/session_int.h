/* The session struct and the calls its phase files (auth, commands, retr, quit) share. */
#ifndef POPGATE_SESSION_INT_H
#define POPGATE_SESSION_INT_H

#include <ev.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "buffer.h"
#include "config.h"
#include "conn.h"
#include "maildrop.h"
#include "metrics.h"
#include "pop3_dotstuff.h"
#include "pop3_parser.h"
#include "route.h"
#include "upstream.h"

/* Client input held at once: a few pipelined commands wait here. */
#define SESSION_IN_MAX 4096
/* A command is only started with this much output room (a status line or CAPA). */
#define SESSION_REPLY_ROOM 1024
/* First partial TEXT fetch for TOP; it doubles up to the maximum. */
#define SESSION_TOP_CHUNK_MIN 16384
#define SESSION_TOP_CHUNK_MAX (1024 * 1024)
#define SESSION_USER_MAX      256
/* A PROXY header that came in parts: look again after this many seconds. */
#define SESSION_PROXY_RETRY 0.02

enum session_state {
    SESSION_AUTHORIZATION,
    SESSION_TRANSACTION,
    SESSION_UPDATE,
    SESSION_CLOSING,
};

/* What a running multi-step command is doing. */
enum session_job {
    JOB_NONE,
    JOB_LOGIN,
    JOB_LISTING, /* LIST or UIDL without argument, written as room allows */
    JOB_RETR,
    JOB_TOP_HEADER,
    JOB_TOP_BODY,
    JOB_QUIT_SEEN,
    JOB_QUIT_DELETE,
    JOB_QUIT_LOGOUT,
    JOB_STLS,       /* STLS answered: the handshake starts once the answer is written */
    JOB_AUTH_DELAY, /* a failed login waits for its answer (limits.auth_failure_delay) */
};

/* Where an AUTH exchange stands (RFC 5034). */
enum session_sasl {
    SASL_NONE,
    SASL_PLAIN,      /* waiting for the PLAIN response */
    SASL_LOGIN_USER, /* waiting for the LOGIN user name */
    SASL_LOGIN_PASS, /* waiting for the LOGIN password */
    SASL_OAUTH,      /* waiting for the XOAUTH2 / OAUTHBEARER response */
};

struct session {
    struct ev_loop *loop;
    const struct config *cfg;
    char id[12];
    char peer[64];                       /* client address:port as logged (PROXY-aware) */
    struct sockaddr_storage client_addr; /* the real client (from PROXY when trusted) */
    ev_timer proxy_retry;                /* PROXY header incomplete: peek again later */
    bool await_proxy;                    /* the PROXY header has not arrived yet */
    uint64_t conn_limit_key;             /* the address conn_limit counts it under; 0: none */

    ev_tstamp started;

    const struct config_listener *listener;
    struct conn client;
    ev_io io;
    int io_events;
    bool secure;      /* TLS is on (implicit, or after STLS) */
    bool is_loopback; /* the client connects from a loopback address */
    ev_timer idle;
    ev_timer auth_delay; /* JOB_AUTH_DELAY: answers auth_delay_code/text when it fires */
    const char *auth_delay_code, *auth_delay_text;
    struct buffer in, out;
    struct pop3_parser *parser;

    enum session_state state;
    enum session_job job;
    bool client_eof;  /* the client half-closed: finish what it sent, then close */
    bool flush_close; /* close once the output is written */
    bool reaped;
    bool in_commands; /* process_commands is on the stack */
    unsigned bad_commands;
    unsigned auth_failures;
    const char *result; /* for the session summary line */

    char *user;
    size_t user_len;
    enum session_sasl sasl;
    const char *sasl_mech;                      /* "XOAUTH2" or "OAUTHBEARER" for SASL_OAUTH */
    const struct config_upstream *upstream_cfg; /* the routed upstream, once routed */
    char login[ROUTE_LOGIN_MAX + 1];            /* the name sent upstream */
    size_t login_len;
    ev_tstamp login_started;
    struct upstream *up;
    struct maildrop *md;

    /* Listing. */
    bool listing_uidl;
    uint32_t listing_next;

    /* RETR / TOP. */
    uint32_t xfer_n, xfer_uid;
    uint16_t xfer_folder;
    bool xfer_started;
    struct pop3_dotstuff ds;
    uint64_t top_lines, top_offset, top_chunk, top_got;

    /* Per-user state (session_state.c). */
    struct state_job *state_job; /* the login's lock+load job, while it runs */
    bool state_job_owned;        /* state_job is back from the thread, held by us */
    bool state_save_queued;      /* the login's save went to the state thread */
    bool fetching_headers;       /* the login waits for every Message-ID */
    char **xuidls;               /* X-UIDL header values by message number - 1 (reuse_xuidl) */
    size_t nxuidls;
    uint64_t *msgid_hashes;               /* by message number - 1, while fetching */
    struct state_lock *lock;              /* this mailbox's lock, held for the session */
    char *uidl_arena;                     /* UIDLs of the snapshot, NUL-separated */
    uint32_t *uidl_offsets;               /* by message number - 1 */
    const struct config_mapping *mapping; /* the route's settings, once routed */
    uint32_t *retr_msgs;                  /* numbers of RETR'd messages, for on_retr "seen" */
    size_t nretr_msgs;
    uint32_t *hides; /* numbers of messages the state must hide from now on (on_delete
                      * flag/hide) */
    size_t nhides;
    struct session_size_fix *fixes; /* sizes that differed from RFC822.SIZE */
    size_t nfixes;
    size_t header_folder; /* the maildrop folder whose Message-IDs are being fetched */

    /* QUIT: the folder being updated, one after the other. */
    size_t quit_folder;
    bool quit_partial;    /* no UIDPLUS: \Deleted set but not expunged */
    bool hide_on_success; /* the update keeps the messages upstream: hide them in the state */

    /* Totals for the summary line. */
    uint32_t retr_count;
    uint64_t retr_bytes;
    uint32_t deleted_count;
    struct session *prev, *next;
};

struct session_size_fix {
    uint32_t n; /* message number */
    uint64_t size;
};
struct state_store;
struct state_job;

/* session.c */
void session_reply(struct session *s, bool ok, const char *code, const char *text);
void session_replyf(struct session *s, bool ok, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void session_append(struct session *s, const char *p, size_t len);
void session_job_done(struct session *s);
void session_close(struct session *s, const char *result);
void session_update_io(struct session *s);
void session_log(struct session *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
const char *session_user_value(struct session *s, char *buf, size_t cap);
/* The metrics label of an upstream failure class (st != UPSTREAM_OK). */
enum metrics_upstream_error session_metrics_class(enum upstream_status st);
/* True when this connection may carry a password (TLS, or the listener's policy). */
bool session_plaintext_ok(const struct session *s);

/* Re-arms the idle timer for the state the session is in. */
void session_touch(struct session *s);

/* session_conn.c */
void session_conn_begin(struct session *s);
void session_conn_handshake(struct session *s);
void session_conn_start_stls(struct session *s);
void session_conn_read_proxy(struct session *s);
void session_conn_proxy_retry_cb(struct ev_loop *loop, ev_timer *w, int revents);
bool session_conn_is_loopback(const struct sockaddr_storage *peer);

/* session_auth.c */
void session_cmd_user(struct session *s, const struct pop3_command *cmd);
void session_cmd_pass(struct session *s, const struct pop3_command *cmd);
void session_cmd_auth(struct session *s, const struct pop3_command *cmd);
void session_sasl_line(struct session *s, const struct pop3_command *cmd);
void session_cmd_stls(struct session *s);
/* The SASL mechanisms usable on this connection now ("PLAIN LOGIN ..."), or NULL. */
const char *session_sasl_mechs(const struct session *s);
/* Closes the upstream and leaves its free to the reaper (it may be inside its callback). */
void session_drop_upstream(struct session *s);
extern const struct upstream_handler session_upstream_handler;

/* session_cmds.c */
void session_cmd_capa(struct session *s);
void session_cmd_stat(struct session *s);
void session_cmd_list(struct session *s, const struct pop3_command *cmd, bool uidl);
void session_continue_listing(struct session *s);
void session_cmd_dele(struct session *s, const struct pop3_command *cmd);
void session_cmd_rset(struct session *s);
/* Looks message n up; on failure replies -ERR and returns NULL. */
const struct maildrop_msg *session_message(struct session *s, uint32_t n);

/* session_retr.c */
void session_cmd_retr(struct session *s, const struct pop3_command *cmd);
void session_cmd_top(struct session *s, const struct pop3_command *cmd);
void session_retr_done(struct session *s, enum upstream_status st, const char *detail);
size_t session_body_room(struct session *s);
void session_body_begin(struct session *s, uint64_t size);
void session_body_data(struct session *s, const char *p, size_t n);

/* session_auth.c: the end of a login, once the state is in. */
void session_login_ready(struct session *s);
void session_login_refused(struct session *s, const char *code, const char *text);

/* session_snapshot.c */
/* Gives each message of s->md its UIDL from doc (recording new ones there) and leaves out
 * the hidden ones: s->md, s->uidl_arena and s->uidl_offsets become the session's snapshot.
 * *changed_r: doc differs from what was loaded. -1 with *error_r on failure (s unchanged). */
struct state_doc;
int session_snapshot_apply(struct session *s, struct state_doc *doc, bool *changed_r,
                           const char **error_r);

/* session_state.c */
void session_state_init(struct state_store *st);
/* Starts lock + load off the loop (silent: -1 when it cannot start). The login goes on
 * when this job and the snapshot are both in (session_state_snapshot_ready). */
int session_state_login(struct session *s);
/* The upstream delivered the snapshot (s->md): the login goes on when the state is here too. */
void session_state_snapshot_ready(struct session *s);
/* A login that ends before its state was used: the job and its lock are let go. */
void session_state_abandon(struct session *s);
/* The UIDL of message n (1-based) of the snapshot. */
const char *session_state_uidl(const struct session *s, uint32_t n);
/* Message n's real size / message n hidden from later sessions, recorded at the end. */
void session_state_size_fix(struct session *s, uint32_t n, uint64_t size);
void session_state_hide(struct session *s, uint32_t n);
/* Frees the per-message header data gathered at login. */
void session_state_free_headers(struct session *s);
void session_state_header(struct session *s, uint32_t uid, const char *p, size_t n);
void session_state_headers_done(struct session *s, enum upstream_status st, const char *detail);
/* The session ends: save what changed, then release the mailbox lock. */
void session_state_end(struct session *s);

void session_auth_delay_cb(struct ev_loop *loop, ev_timer *w, int revents);

/* Answers -ERR reason, or closes the connection once limits.max_bad_commands is spent. */
void session_bad_command(struct session *s, const char *reason);

/* session_quit.c */
void session_cmd_quit(struct session *s);
void session_quit_done(struct session *s, enum upstream_status st, const char *detail);

#endif
