/* The upstream's internals, shared by its files: upstream.c (connection, responses,
 * commands after login) and upstream_login.c (greeting, capabilities, TLS, login). */
#ifndef POPGATE_UPSTREAM_INT_H
#define POPGATE_UPSTREAM_INT_H

#include <ev.h>
#include <stdbool.h>
#include <stdint.h>

#include "buffer.h"
#include "conn.h"
#include "imap_parser.h"
#include "imap_writer.h"
#include "upstream.h"

/* Server bytes read per call, at least; large reads keep the syscall count down on big
 * messages. A larger limits.output_buffer makes the reads as large. */
#define UPSTREAM_IN_MAX (64 * 1024)
/* Commands we queue: the largest is a login or one STORE/EXPUNGE set. */
#define UPSTREAM_OUT_MAX (IMAP_CMD_MAX + 64)
/* Longest UID set per STORE/EXPUNGE command; servers accept lines far longer. */
#define UPSTREAM_SET_MAX 4000
/* Steps one batch may chain (COPY, STORE, EXPUNGE). */
#define UPSTREAM_STEPS_MAX  4
#define UPSTREAM_DETAIL_MAX 256
#define UPSTREAM_TEXT_MAX   160
/* A server id longer than a UIDL can hold is of no use for %g. */
#define UPSTREAM_GUID_MAX 70
/* Header fields kept per message for upstream_fetch_headers (a Message-ID fits). */
#define UPSTREAM_HDR_MAX 1024

enum stage {
    ST_IDLE,
    ST_CONNECTING,
    ST_TLS, /* TLS handshake (implicit, or after STARTTLS) */
    ST_GREETING,
    ST_STARTTLS,
    ST_ID,
    ST_CAPABILITY,
    ST_AUTH,
    ST_POSTCAPS,
    ST_SELECT,
    ST_SIZES,
    ST_RESELECT, /* SELECT of another folder before the operation in op_stage */
    ST_FETCH,
    ST_HEADERS,
    ST_STORE,
    ST_EXPUNGE,
    ST_LOGOUT,
    ST_NOOP, /* keepalive between the session's commands */
    ST_CLOSED,
    ST_COUNT
};

struct upstream_folder {
    const char *name;
    uint32_t uidvalidity;
};

/* What the response being parsed is, learnt token by token. */
struct resp {
    enum imap_resp_kind kind;
    bool ours;     /* tagged with the tag of the running command */
    unsigned pos;  /* top-level tokens seen so far */
    bool numbered; /* "* <n> ..." */
    uint32_t num;  /* that n */
    char word[16]; /* OK, NO, BAD, BYE, PREAUTH, CAPABILITY, EXISTS, FETCH, ... */
    char code[32]; /* the response code's name, if any */
    char text[UPSTREAM_TEXT_MAX];
    /* FETCH items at depth 1: name, then value. */
    char item[32];
    bool want_value;
    unsigned skip_depth; /* >0: inside a list value being skipped */
    bool has_uid, has_size, has_guid;
    bool in_objectid; /* inside EMAILID's "(...)" */
    char guid[UPSTREAM_GUID_MAX + 1];
    uint32_t uid;
    uint64_t size;
    bool streaming;  /* this literal is the fetched section */
    bool collecting; /* this literal is a header section kept for upstream_fetch_headers */
    bool has_header; /* this FETCH carried the header section asked for */
};

struct upstream {
    struct ev_loop *loop;
    const struct config_upstream *cfg;
    const struct config_limits *limits;
    const struct upstream_handler *h;
    void *ctx;
    char session_id[16];

    struct conn conn;
    ev_io io;
    int io_events;
    bool starttls_go; /* STARTTLS was accepted: drop buffered input, start the handshake */
    ev_timer timer;
    size_t addr_index;

    struct buffer in, out;
    struct imap_parser *parser;
    struct resp r;
    enum stage stage;
    unsigned tag_seq;
    char tag[12];
    bool paused; /* the session has no room for section bytes */
    bool busy;   /* an operation runs; done() is owed */
    bool bye;
    bool closed;

    /* Capabilities. */
    bool caps_known, literal_plus, sasl_ir, auth_plain, logindisabled, uidplus, starttls;
    bool auth_xoauth2, auth_oauthbearer, id, move, objectid, gm_ext;
    /* The FETCH item of the server's stable message id, asked with the sizes when the
     * UIDL template uses %g; NULL = not asked (or the server refused it). */
    bool want_guid;
    const char *guid_item;
    char client_ip[64]; /* for IMAP ID x-originating-ip; empty = do not send */
    unsigned client_port;

    /* Login. */
    char *user, *pass; /* pass holds the client's SASL message for OAuth mechanisms */
    size_t user_len, pass_len;
    const char *sasl_mech; /* NULL: PLAIN or LOGIN with user and password */
    char *pending;         /* the rest of a command waiting for "+" (synchronizing literals) */
    size_t pending_len;
    size_t pending_sync[IMAP_CMD_SYNC_MAX];
    unsigned pending_nsync, pending_next;

    /* Snapshot. */
    uint32_t uidvalidity, exists;
    bool have_uidvalidity;
    struct maildrop *md;

    /* Folders: the configured names (borrowed), the one SELECTed at login, then each
     * maildrop folder's name (borrowed) and UIDVALIDITY, and the one selected now. */
    const char *const *folder_names;
    size_t nfolder_names, login_folder;
    struct upstream_folder *mdf;
    size_t nmdf;
    int selected; /* maildrop folder index, -1 none */
    /* Keepalive: NOOP after this many idle seconds (0 = off). An operation asked for
     * while the NOOP runs waits for it (deferred: op_* below, with or without a folder). */
    uint32_t keepalive_secs;
    ev_timer keepalive;
    bool noop;
    enum { DEFER_NONE, DEFER_OP, DEFER_CMD } deferred;
    /* The operation waiting for the SELECT of want_folder (or for the NOOP). */
    size_t want_folder;
    enum stage op_stage;
    const char *op_name; /* static text */
    char *op_args;

    /* Fetch. */
    uint32_t fetch_uid;
    bool body_seen;

    /* Header fields of every message (upstream_fetch_headers). */
    char hdr[UPSTREAM_HDR_MAX];
    size_t hdr_len;

    /* Delete. */
    uint32_t *del_uids;
    size_t del_n, del_pos;
    struct upstream_step steps[UPSTREAM_STEPS_MAX]; /* args owned (strdup) */
    size_t nsteps, step;

    char detail[UPSTREAM_DETAIL_MAX];
};

/* upstream.c */
void upstream_wipe_free(char **p, size_t len);
void upstream_forget_credentials(struct upstream *u);
void upstream_set_detail(struct upstream *u, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Ends the running operation; a failure closes the connection first. */
void upstream_finish(struct upstream *u, enum upstream_status st);
void upstream_fail(struct upstream *u, enum upstream_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void upstream_arm_timer(struct upstream *u, uint32_t seconds);
/* Queues a command; for synchronizing literals only its first segment goes now. */
int upstream_send_cmd(struct upstream *u, struct imap_cmd *c);
void upstream_next_tag(struct upstream *u);
/* Sends "<tag> <name> <args>" built from trusted parts (no client bytes). */
int upstream_send_simple(struct upstream *u, const char *name, const char *args);
void upstream_update_io(struct upstream *u);
void upstream_try_connect(struct upstream *u);

/* upstream_login.c */
void upstream_login_cap_reset(struct upstream *u);
void upstream_login_cap_add(struct upstream *u, const char *p, size_t len);
void upstream_login_cap_parse(struct upstream *u, const char *p, size_t len);
/* SELECTs the next configured folder of the login snapshot (the first when none was). */
void upstream_login_select(struct upstream *u);
/* Fetches UID and size (and the stable id when wanted) of every message of the folder. */
void upstream_login_sizes(struct upstream *u);
/* Sends SELECT name (quoted or a literal, as its bytes need). */
int upstream_send_select(struct upstream *u, const char *name);
void upstream_login_auth(struct upstream *u);
void upstream_login_continuation(struct upstream *u);
/* Login NO: [AUTH] for credentials, [SYS/TEMP] for the RFC 5530 server codes. */
enum upstream_status upstream_login_classify_no(const struct resp *r);
void upstream_login_after_caps(struct upstream *u);
void upstream_login_begin_tls(struct upstream *u);
void upstream_login_tls_step(struct upstream *u);
void upstream_login_greeting(struct upstream *u);

#endif
