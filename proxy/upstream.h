/* The IMAP client side of a session: one connection to the user's upstream server. */
#ifndef POPGATE_UPSTREAM_H
#define POPGATE_UPSTREAM_H

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "config.h"
#include "maildrop.h"

/* The outcome classes of an upstream operation; each maps to one POP3 response code. */
enum upstream_status {
    UPSTREAM_OK,
    UPSTREAM_NO,       /* the server answered NO (e.g. the message was expunged) */
    UPSTREAM_AUTH,     /* the server refused the credentials */
    UPSTREAM_CONNECT,  /* cannot connect, refused at greeting, or [UNAVAILABLE] */
    UPSTREAM_TIMEOUT,  /* no answer in time */
    UPSTREAM_PROTOCOL, /* malformed or unexpected response, BAD, or no usable login */
    UPSTREAM_CLOSED,   /* the connection broke or the server said BYE */
    UPSTREAM_INTERNAL, /* out of memory, or a string IMAP cannot carry */
};

const char *upstream_status_name(enum upstream_status st);

/*
 * What the session hears. Callbacks run inside the upstream's I/O callbacks:
 * they must not free the upstream (use upstream_close; free through the reaper).
 */
struct upstream_handler {
    /* The operation started last finished. detail is for the log only. */
    void (*done)(void *ctx, enum upstream_status st, const char *detail);
    /* The connection failed while no operation was running. */
    void (*failed)(void *ctx, enum upstream_status st, const char *detail);
    /* The login was accepted; the folders are being selected and sized (done follows). */
    void (*authenticated)(void *ctx);
    /* Literal bytes of the fetched section the session can take now; 0 pauses
     * reading from the server until upstream_resume(). */
    size_t (*body_room)(void *ctx);
    void (*body_begin)(void *ctx, uint64_t size);
    void (*body_data)(void *ctx, const char *p, size_t n);
    void (*body_end)(void *ctx);
    /* upstream_fetch_headers: one message's header fields (cut at 1 KiB). */
    void (*header)(void *ctx, uint32_t uid, const char *p, size_t n);
};

struct upstream;

/* Returns a new, unconnected upstream owned by the caller, or NULL. cfg and
 * limits must outlive it. */
struct upstream *upstream_new(struct ev_loop *loop, const struct config_upstream *cfg,
                              const struct config_limits *limits, const char *session_id,
                              const struct upstream_handler *h, void *ctx);

/* Stops all I/O and closes the socket; no callback runs after this. Safe inside
 * a callback. */
void upstream_close(struct upstream *u);

/* Closes and frees. Not from inside one of its own callbacks. */
void upstream_free(struct upstream **u);

/* Same, with the signature reaper_add() takes. */
void upstream_free_cb(void *u);

/*
 * The folders the login snapshot merges, in order (mapping.folders); names
 * must outlive the upstream. Without this call: INBOX. Call before login.
 */
void upstream_set_folders(struct upstream *u, const char *const *names, size_t n);

/*
 * Whether the login snapshot records each message's stable server id
 * (maildrop_guid()): EMAILID (RFC 8474 OBJECTID), X-GM-MSGID (Gmail), else
 * X-GUID (Dovecot); a server with none of them gives none. Call before login.
 */
void upstream_want_guid(struct upstream *u, bool want);

/*
 * Connects, reads the greeting and capabilities, logs in as user with pass
 * (AUTHENTICATE PLAIN, with SASL-IR when offered, else LOGIN), SELECTs each
 * folder and fetches every message's UID and size. The first folder must
 * exist; a later one the server refuses to SELECT is left out of the maildrop
 * (compare maildrop_folder_name() with the list). done() reports the result;
 * on OK upstream_take_maildrop() has the sealed snapshot. The password is
 * copied, and wiped as soon as the login command is written.
 */
void upstream_login(struct upstream *u, const char *user, size_t user_len, const char *pass,
                    size_t pass_len);

/* Before login, tell the server the real client with IMAP ID (x-originating-ip and
 * -port, RFC 2971) when it announces ID. Call before upstream_login. */
void upstream_set_client(struct upstream *u, const struct sockaddr *client);

/*
 * Like upstream_login, but authenticates with the client's own SASL message for
 * mech ("XOAUTH2" or "OAUTHBEARER", a static string), passed on unchanged; the
 * server must announce AUTH=<mech>, else done(UPSTREAM_AUTH).
 */
void upstream_login_sasl(struct upstream *u, const char *mech, const char *msg, size_t len);

/* Gives the snapshot built by upstream_login() to the caller (once). */
struct maildrop *upstream_take_maildrop(struct upstream *u);

/* True when the server announced UIDPLUS (UID EXPUNGE). */
bool upstream_has_uidplus(const struct upstream *u);

/*
 * The operations below take the maildrop folder the UIDs belong to; when
 * another folder is selected they SELECT it first. A folder that cannot be
 * selected again, or whose UIDVALIDITY changed since login (its UIDs mean
 * other messages now), ends the operation with done(UPSTREAM_NO) and nothing
 * done in it.
 */

/*
 * UID FETCH uid (item), item being e.g. "BODY.PEEK[]", "BODY.PEEK[HEADER]",
 * "BODY.PEEK[TEXT]<0.65536>". The section's bytes go to body_begin/data/end;
 * done() follows the tagged reply. A reply without the section (the message
 * was expunged) is done(OK) with no body_begin.
 */
void upstream_fetch(struct upstream *u, size_t folder, uint32_t uid, const char *item);

/*
 * UID FETCH <uid_set> (UID BODY.PEEK[HEADER.FIELDS (<fields>)]): header() for
 * every message, then done(). uid_set ("5:9,12" or "1:*") and fields
 * ("MESSAGE-ID X-UIDL") are trusted text.
 */
void upstream_fetch_headers(struct upstream *u, size_t folder, const char *uid_set,
                            const char *fields);

/* One step of a batch over a set of UIDs. */
enum upstream_step_kind {
    UPSTREAM_STEP_STORE,   /* UID STORE <set> +FLAGS.SILENT (<arg>) */
    UPSTREAM_STEP_EXPUNGE, /* UID EXPUNGE <set> (UIDPLUS) */
    UPSTREAM_STEP_COPY,    /* UID COPY <set> <arg: mailbox> */
    UPSTREAM_STEP_MOVE,    /* UID MOVE <set> <arg: mailbox> (RFC 6851) */
};

struct upstream_step {
    enum upstream_step_kind kind;
    const char *arg; /* copied */
};

/*
 * Runs steps in order over uids[0..n) (sorted, distinct; copied), each in as
 * few commands as the UID sets allow; done() after the last, or at the first
 * NO (UPSTREAM_NO: later steps do not run).
 */
void upstream_batch(struct upstream *u, size_t folder, const uint32_t *uids, size_t n,
                    const struct upstream_step *steps, size_t nsteps);

/* True when the server announced MOVE. */
bool upstream_has_move(const struct upstream *u);

/*
 * From now on, send NOOP whenever the connection has been idle for seconds
 * (0: never), so the server's autologout (30 minutes, RFC 3501 5.4) does not end
 * a session whose client idles. Invisible to the handler: an operation started
 * meanwhile runs after the NOOP; a NOOP that fails or times out is failed().
 */
void upstream_set_keepalive(struct upstream *u, uint32_t seconds);

/* LOGOUT; done() when the server has answered (or closed). */
void upstream_logout(struct upstream *u);

/* The session has room again: continue a paused section. */
void upstream_resume(struct upstream *u);

#endif
