/* The per-user state of a session: mailbox lock, stable UIDLs, exact sizes, saved off-loop. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "imap_writer.h"
#include "log.h"
#include "metrics.h"
#include "session_int.h"
#include "state_store.h"
#include "state_worker.h"
#include "uidl.h"

#define STATE_ERR_MAX 256
/* A busy mailbox is tried again this often, this many times (on the state thread). */
#define STATE_LOCK_RETRIES  10
#define STATE_LOCK_RETRY_NS 25000000L
/* Without LOGIN-DELAY, last_login is written at least this often (seconds). */
#define STATE_LAST_LOGIN_EVERY 3600
/* The longest UID set of new messages asked for in one header fetch. */
#define SESSION_STATE_SET_MAX 8000

static struct state_store *store;

void session_state_init(struct state_store *st)
{
    store = st;
}

/*
 * One piece of store work. It owns what the thread touches, so the session may
 * end while it runs: then session is NULL and done() only cleans up.
 */
struct state_job {
    struct session *session;
    char *key;
    size_t key_len;
    struct state_lock *lock;
    struct state_doc *doc;
    enum state_lock_result lock_result;
    int rc;
    char warn[STATE_ERR_MAX];
    char err[STATE_ERR_MAX];
    /* For the final update: sizes measured while streaming, and messages to hide, by
     * index into folders (the maildrop's folder names, copied). */
    struct job_msg *fixes;
    size_t nfixes;
    struct job_msg *hides;
    size_t nhides;
    char **folders;
    size_t nfolders;
};

struct job_msg {
    uint16_t folder;
    uint32_t uid;
    uint64_t size;
};

static void job_free(struct state_job *j)
{
    if (j->lock != NULL)
        state_store_unlock(&j->lock);
    state_doc_free(&j->doc);
    free(j->key);
    free(j->fixes);
    free(j->hides);
    for (size_t i = 0; i < j->nfolders; i++)
        free(j->folders[i]);
    free(j->folders);
    free(j);
}

static struct state_job *job_new(struct session *s)
{
    struct state_job *j = calloc(1, sizeof(*j));
    if (j == NULL)
        return NULL;
    j->key = malloc(s->login_len + 1);
    if (j->key == NULL) {
        free(j);
        return NULL;
    }
    memcpy(j->key, s->login, s->login_len + 1);
    j->key_len = s->login_len;
    j->session = s;
    return j;
}

/* ---- login: lock, load, assign UIDLs, save ---- */

static void lock_load_work(void *arg)
{
    struct state_job *j = arg;
    /* The previous session of this mailbox may be saving its last changes right now
     * (a client that reconnects at once): give it a moment before saying IN-USE. */
    for (int tries = 0;; tries++) {
        j->lock_result =
            state_store_lock(store, j->key, j->key_len, &j->lock, j->err, sizeof(j->err));
        if (j->lock_result != STATE_LOCK_BUSY || tries == STATE_LOCK_RETRIES)
            break;
        nanosleep(&(struct timespec){0, STATE_LOCK_RETRY_NS}, NULL);
    }
    if (j->lock_result != STATE_LOCK_OK)
        return;
    j->rc = state_store_load(store, j->key, j->key_len, &j->doc, j->warn, sizeof(j->warn), j->err,
                             sizeof(j->err));
}

static void save_work(void *arg)
{
    struct state_job *j = arg;
    j->rc = state_store_save(store, j->doc, j->err, sizeof(j->err));
}

static void save_done(void *arg)
{
    struct state_job *j = arg;
    if (j->rc < 0) {
        char q[LOG_VALUE_MAX];
        log_line(LOG_ERROR, "event=state_save_failed user=%s reason=%s",
                 log_value(q, sizeof(q), j->key, j->key_len), j->err);
    }
    /* The lock stays with the session (j->lock is NULL here). */
    job_free(j);
}

/* The state is loaded (and, when needed, the Message-IDs fetched): build the snapshot. */
static void finish_login_state(struct session *s, struct state_job *j)
{
    s->state_job = NULL;
    s->state_job_owned = false;
    const char *error = NULL;
    bool changed = false;
    int rc = session_snapshot_apply(s, j->doc, &changed, &error);
    session_state_free_headers(s);
    if (rc < 0) {
        session_log(s, "event=login_failed reason=\"state: %s\"", error);
        job_free(j);
        session_login_refused(s, "SYS/TEMP", "Temporary failure, try again later");
        return;
    }
    /* The lock now belongs to the session; the document goes to disk and is freed. */
    s->lock = j->lock;
    j->lock = NULL;
    time_t now = time(NULL);
    if (j->doc->first_login == 0)
        j->doc->first_login = now;
    /* A device polling an unchanged mailbox costs no write (two fsyncs): last_login is
     * exact where LOGIN-DELAY needs it, else written with the next change or hourly. */
    if (s->mapping->login_delay > 0 || now - j->doc->last_login >= STATE_LAST_LOGIN_EVERY)
        changed = true;
    j->doc->last_login = now;
    j->session = NULL;
    s->state_save_queued = changed && state_worker_submit(save_work, save_done, j) == 0;
    if (!s->state_save_queued)
        job_free(j);
    session_login_ready(s);
}

/* A folder's index in the document, or -1 (without adding it). */
static int find_folder(const struct state_doc *doc, const char *name)
{
    for (size_t i = 0; i < doc->nfolders; i++)
        if (strcmp(doc->folders[i].name, name) == 0)
            return (int)i;
    return -1;
}

/*
 * Every message's Message-ID hash is recorded the first time popgate sees it, so
 * that after a UIDVALIDITY change (a rebuilt or restored mailbox) the old UIDLs can
 * be found again. Fills s->msgid_hashes of maildrop folder f from the state and
 * writes the UIDs still unknown into an IMAP set in out; returns how many there are
 * (all of them after a UIDVALIDITY change: the old UIDs mean nothing then).
 */
static uint32_t unknown_msgids(struct session *s, const struct state_doc *doc, size_t f, char *out,
                               size_t cap)
{
    uint32_t first = 0;
    const uint32_t n = maildrop_folder_range(s->md, f, &first);
    int sf = find_folder(doc, maildrop_folder_name(s->md, f));
    bool same = sf >= 0 && doc->folders[sf].uidvalidity == maildrop_folder_uidvalidity(s->md, f);
    uint32_t *missing = malloc((n ? n : 1) * sizeof(*missing));
    uint32_t k = 0;
    for (uint32_t i = first; i < first + n; i++) {
        const struct maildrop_msg *m = NULL;
        (void)maildrop_get(s->md, i, &m);
        const struct state_msg *sm =
            same ? state_doc_find((struct state_doc *)doc, (uint16_t)sf, m->uid) : NULL;
        if (sm != NULL && sm->msgid_hash != 0)
            s->msgid_hashes[i - 1] = sm->msgid_hash;
        else if (missing != NULL)
            missing[k++] = m->uid;
        else
            k++;
    }
    size_t used = 0;
    if (missing == NULL || k == 0 || imap_writer_uid_set(out, cap, missing, k, &used) == 0 ||
        used < k)
        snprintf(out, cap, "1:*"); /* scattered: ask for all, the known ones are harmless */
    free(missing);
    if (k > 0 && sf >= 0 && !same && doc->folders[sf].uidvalidity != 0) {
        char q[LOG_VALUE_MAX];
        session_log(s, "event=state_reassociate folder=%s old_uidvalidity=%u uidvalidity=%u",
                    log_str(q, sizeof(q), maildrop_folder_name(s->md, f)),
                    doc->folders[sf].uidvalidity, maildrop_folder_uidvalidity(s->md, f));
    }
    return k;
}

/* Asks for the Message-IDs (and X-UIDLs) still unknown in the next folder from
 * s->header_folder on; false when no folder has any. */
static bool next_header_fetch(struct session *s, const struct state_doc *doc)
{
    if (s->msgid_hashes == NULL)
        return false;
    char set[SESSION_STATE_SET_MAX];
    for (; s->header_folder < maildrop_folder_count(s->md); s->header_folder++) {
        if (unknown_msgids(s, doc, s->header_folder, set, sizeof(set)) == 0)
            continue;
        upstream_fetch_headers(s->up, s->header_folder, set,
                               s->xuidls != NULL ? "MESSAGE-ID X-UIDL" : "MESSAGE-ID");
        return true;
    }
    return false;
}

/* The login goes on once both the state and the snapshot are here. */
static void login_continue(struct session *s)
{
    struct state_job *j = s->state_job;
    s->state_job = NULL;
    s->state_job_owned = false;
    if (s->up == NULL) {
        /* The mail server went away while the state loaded. */
        session_log(s, "event=login_failed reason=\"upstream lost during login\"");
        job_free(j);
        session_login_refused(s, "SYS/TEMP",
                              "Mail server temporarily unavailable, try again "
                              "later");
        return;
    }
    if (j->lock_result == STATE_LOCK_BUSY) {
        session_log(s, "event=login_failed reason=\"mailbox in use by another POP3 session\"");
        job_free(j);
        session_login_refused(s, "IN-USE", "Mailbox is locked by another POP3 session");
        return;
    }
    if (j->lock_result != STATE_LOCK_OK || j->rc < 0) {
        char q[LOG_VALUE_MAX];
        session_log(s, "event=login_failed reason=%s", log_str(q, sizeof(q), j->err));
        job_free(j);
        session_login_refused(s, "SYS/TEMP", "Temporary failure, try again later");
        return;
    }
    if (j->warn[0] != '\0') {
        char q[LOG_VALUE_MAX];
        session_log(s, "event=state_corrupt detail=%s", log_str(q, sizeof(q), j->warn));
    }
    /* RFC 2449 LOGIN-DELAY: a device polling too often is told to wait. */
    uint32_t delay = s->mapping->login_delay;
    time_t now = time(NULL);
    if (delay > 0 && j->doc->last_login > 0 && now - j->doc->last_login < (time_t)delay) {
        session_log(s, "event=login_failed reason=\"login delay\" wait=%lld",
                    (long long)(j->doc->last_login + delay - now));
        job_free(j);
        session_login_refused(s, "LOGIN-DELAY", "Minimum time between logins not reached");
        return;
    }
    uint32_t n = maildrop_count(s->md);
    s->msgid_hashes = n > 0 ? calloc(n, sizeof(*s->msgid_hashes)) : NULL;
    if (s->msgid_hashes != NULL && s->mapping->reuse_xuidl) {
        s->xuidls = calloc(n, sizeof(*s->xuidls));
        s->nxuidls = s->xuidls != NULL ? n : 0;
    }
    s->header_folder = 0;
    if (next_header_fetch(s, j->doc)) {
        s->state_job = j; /* held by the session while the headers arrive */
        s->state_job_owned = true;
        s->fetching_headers = true;
        return;
    }
    finish_login_state(s, j);
}

static void login_state_done(void *arg)
{
    struct state_job *j = arg;
    struct session *s = j->session;
    if (s == NULL) {
        job_free(j); /* the session ended meanwhile: its lock goes with the job */
        return;
    }
    s->state_job = j; /* back from the thread, held by the session */
    s->state_job_owned = true;
    if (s->md == NULL)
        return; /* the snapshot is still on its way: session_state_snapshot_ready goes on */
    login_continue(s);
}

void session_state_snapshot_ready(struct session *s)
{
    if (s->state_job == NULL && session_state_login(s) < 0) {
        session_log(s, "event=login_failed reason=\"%s\"",
                    store == NULL ? "state store unavailable" : "cannot start the state job");
        session_login_refused(s, "SYS/TEMP", "Temporary failure, try again later");
        return;
    }
    if (s->state_job_owned)
        login_continue(s); /* else the job is still on the thread: its end goes on */
}

void session_state_abandon(struct session *s)
{
    if (s->state_job == NULL)
        return;
    if (s->state_job_owned) {
        job_free(s->state_job); /* back from the thread: unlock now */
    } else {
        /* The login job still runs on the thread: it cleans up after itself. */
        s->state_job->session = NULL;
    }
    s->state_job = NULL;
    s->state_job_owned = false;
}

void session_state_header(struct session *s, uint32_t uid, const char *p, size_t n)
{
    if (s->msgid_hashes == NULL)
        return;
    /* A folder's messages are sorted by UID: find the message's number. */
    uint32_t first = 0;
    uint32_t count = maildrop_folder_range(s->md, s->header_folder, &first);
    uint32_t lo = first, hi = first + count - 1;
    while (count > 0 && lo <= hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        const struct maildrop_msg *m = NULL;
        (void)maildrop_get(s->md, mid, &m);
        if (m->uid == uid) {
            char msgid[UIDL_HEADER_VALUE_MAX];
            size_t len = uidl_header_field(p, n, "Message-ID", msgid, sizeof(msgid));
            s->msgid_hashes[mid - 1] = len > 0 ? uidl_msgid_hash(msgid, len) : 0;
            if (s->xuidls != NULL && uidl_header_field(p, n, "X-UIDL", msgid, sizeof(msgid)) > 0) {
                free(s->xuidls[mid - 1]);
                s->xuidls[mid - 1] = strdup(msgid);
            }
            return;
        }
        if (m->uid < uid)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
}

void session_state_headers_done(struct session *s, enum upstream_status st, const char *detail)
{
    s->fetching_headers = false;
    struct state_job *j = s->state_job;
    if (st != UPSTREAM_OK) {
        /* Without Message-IDs the old UIDLs cannot be found again: better to refuse this
         * login than to make the client download everything twice. */
        session_log(s, "event=login_failed class=%s reason=%s", upstream_status_name(st), detail);
        s->state_job = NULL;
        s->state_job_owned = false;
        session_state_free_headers(s);
        job_free(j);
        session_login_refused(s, "SYS/TEMP", "Temporary failure, try again later");
        return;
    }
    s->header_folder++;
    if (next_header_fetch(s, j->doc)) {
        s->fetching_headers = true;
        return;
    }
    finish_login_state(s, j);
}

int session_state_login(struct session *s)
{
    if (store == NULL)
        return -1;
    struct state_job *j = job_new(s);
    if (j == NULL)
        return -1;
    if (state_worker_submit(lock_load_work, login_state_done, j) < 0) {
        job_free(j);
        return -1;
    }
    s->state_job = j;
    return 0;
}

const char *session_state_uidl(const struct session *s, uint32_t n)
{
    return s->uidl_arena + s->uidl_offsets[n - 1];
}

/* ---- the end of a session: record what changed, then release the mailbox ---- */

static void update_work(void *arg)
{
    struct state_job *j = arg;
    if (j->nfixes == 0 && j->nhides == 0)
        return; /* only the unlock, which job_free does after this */
    j->rc = state_store_load(store, j->key, j->key_len, &j->doc, j->warn, sizeof(j->warn), j->err,
                             sizeof(j->err));
    if (j->rc < 0)
        return;
    int *sf = calloc(j->nfolders ? j->nfolders : 1, sizeof(*sf));
    if (sf == NULL) {
        j->rc = -1;
        snprintf(j->err, sizeof(j->err), "out of memory");
        return;
    }
    for (size_t f = 0; f < j->nfolders; f++) {
        if ((sf[f] = state_doc_folder(j->doc, j->folders[f])) < 0) {
            free(sf);
            j->rc = -1;
            snprintf(j->err, sizeof(j->err), "out of memory");
            return;
        }
    }
    for (size_t i = 0; i < j->nfixes; i++) {
        const struct job_msg *x = &j->fixes[i];
        struct state_msg *m = state_doc_find(j->doc, (uint16_t)sf[x->folder], x->uid);
        if (m != NULL)
            m->real_size = x->size;
    }
    for (size_t i = 0; i < j->nhides; i++) {
        const struct job_msg *x = &j->hides[i];
        struct state_msg *m = state_doc_find(j->doc, (uint16_t)sf[x->folder], x->uid);
        if (m != NULL)
            m->hidden = true;
    }
    free(sf);
    j->rc = state_store_save(store, j->doc, j->err, sizeof(j->err));
}

static void update_done(void *arg)
{
    struct state_job *j = arg;
    if (j->rc < 0) {
        char q[LOG_VALUE_MAX];
        log_line(LOG_ERROR, "event=state_save_failed user=%s reason=%s",
                 log_value(q, sizeof(q), j->key, j->key_len), j->err);
    }
    job_free(j); /* unlocks, after the save */
}

/* Copies message number n of the session's maildrop as (folder, uid) into x. */
static void job_msg_set(struct job_msg *x, const struct session *s, uint32_t n, uint64_t size)
{
    const struct maildrop_msg *m = maildrop_at(s->md, n);
    if (m == NULL)
        return; /* uid 0 matches nothing */
    x->folder = m->folder;
    x->uid = m->uid;
    x->size = size;
}

/* The session's size fixes and hides, by folder and UID, into the end job. */
static int job_take_changes(struct state_job *j, struct session *s)
{
    if (s->md == NULL || (s->nfixes == 0 && s->nhides == 0))
        return 0;
    size_t nf = maildrop_folder_count(s->md);
    j->folders = calloc(nf ? nf : 1, sizeof(*j->folders));
    j->fixes = calloc(s->nfixes ? s->nfixes : 1, sizeof(*j->fixes));
    j->hides = calloc(s->nhides ? s->nhides : 1, sizeof(*j->hides));
    if (j->folders == NULL || j->fixes == NULL || j->hides == NULL)
        return -1;
    for (size_t f = 0; f < nf; f++) {
        if ((j->folders[f] = strdup(maildrop_folder_name(s->md, f))) == NULL)
            return -1;
        j->nfolders++;
    }
    for (size_t i = 0; i < s->nfixes; i++)
        job_msg_set(&j->fixes[j->nfixes++], s, s->fixes[i].n, s->fixes[i].size);
    for (size_t i = 0; i < s->nhides; i++)
        job_msg_set(&j->hides[j->nhides++], s, s->hides[i], 0);
    s->nfixes = 0;
    s->nhides = 0;
    return 0;
}

void session_state_end(struct session *s)
{
    session_state_abandon(s);
    if (s->lock == NULL)
        return;
    if (!s->state_save_queued && s->nfixes == 0 && s->nhides == 0) {
        /* Nothing to record and no save of ours in the thread's queue: a close() frees
         * the mailbox, without a trip through the thread (a polling device's session). */
        state_store_unlock(&s->lock);
        return;
    }
    /* The unlock goes through the state thread: its queue is in order, so the login's
     * save lands before anyone else can take the lock. */
    struct state_job *j = job_new(s);
    if (j == NULL) {
        state_store_unlock(&s->lock);
        return;
    }
    j->lock = s->lock;
    s->lock = NULL;
    if (job_take_changes(j, s) < 0) {
        /* Out of memory: sizes and hides are lost (the messages show again, nothing more). */
        j->nfixes = 0;
        j->nhides = 0;
    }
    j->session = NULL;
    if (store == NULL || state_worker_submit(update_work, update_done, j) < 0)
        job_free(j);
}

void session_state_size_fix(struct session *s, uint32_t n, uint64_t size)
{
    struct session_size_fix *f = realloc(s->fixes, (s->nfixes + 1) * sizeof(*f));
    if (f == NULL)
        return; /* only a size hint is lost */
    s->fixes = f;
    s->fixes[s->nfixes].n = n;
    s->fixes[s->nfixes].size = size;
    s->nfixes++;
}

void session_state_hide(struct session *s, uint32_t n)
{
    uint32_t *h = realloc(s->hides, (s->nhides + 1) * sizeof(*h));
    if (h == NULL)
        return; /* the message shows again next time: nothing is lost */
    s->hides = h;
    s->hides[s->nhides++] = n;
}

void session_state_free_headers(struct session *s)
{
    free(s->msgid_hashes);
    s->msgid_hashes = NULL;
    if (s->xuidls != NULL) {
        for (size_t i = 0; i < s->nxuidls; i++)
            free(s->xuidls[i]);
        free(s->xuidls);
        s->xuidls = NULL;
        s->nxuidls = 0;
    }
}
