/* A worker process: accepts on the shared listening sockets and runs sessions. */
#include "worker.h"

#include <signal.h>
#include <stdlib.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "listener.h"
#include "log.h"
#include "reaper.h"
#include "session.h"
#include "session_int.h"
#include "state_store.h"
#include "state_worker.h"
#include "wipe.h"

/* How often a draining worker looks whether its last session has ended. */
#define WORKER_DRAIN_POLL 0.1
/* What a worker keeps of freed memory between big logins: see keep_freed_heap(). */
#define WORKER_MMAP_THRESHOLD (32 * 1024 * 1024)
#define WORKER_TRIM_THRESHOLD (64 * 1024 * 1024)

static struct listener **listeners;
static size_t nlisteners;
static ev_signal sigterm_w, sigint_w;
static ev_timer drain_w, deadline_w;
static const struct config *worker_cfg;

static void stop_listening(void)
{
    for (size_t i = 0; i < nlisteners; i++)
        listener_free(&listeners[i]);
}

static void drain_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)w;
    (void)revents;
    if (session_count() == 0)
        ev_break(loop, EVBREAK_ALL);
}

static void deadline_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)w;
    (void)revents;
    log_line(LOG_INFO, "event=shutdown_timeout sessions=%u", session_count());
    session_close_all("shutdown");
    ev_break(loop, EVBREAK_ALL);
}

static void stop_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
    (void)revents;
    if (ev_is_active(&drain_w))
        return; /* already draining */
    log_line(LOG_INFO, "event=worker_stopping signal=%d sessions=%u timeout=%u", w->signum,
             session_count(), worker_cfg->shutdown_timeout);
    stop_listening();
    ev_timer_init(&drain_w, drain_cb, 0, WORKER_DRAIN_POLL);
    ev_timer_start(loop, &drain_w);
    ev_timer_init(&deadline_w, deadline_cb, (ev_tstamp)worker_cfg->shutdown_timeout, 0);
    ev_timer_start(loop, &deadline_w);
}

/*
 * A big mailbox's login builds tens of megabytes of short-lived arrays (the snapshot,
 * the state document, the UIDLs). glibc would return them to the kernel at free and
 * fault them in again at the next such login: measured, that was a third of the time
 * from PASS to STAT on 100,000 messages. Blocks up to 32 MiB come from the heap, and up
 * to 64 MiB of freed heap stays with the worker for the next one.
 */
static void keep_freed_heap(void)
{
#ifdef __GLIBC__
    (void)mallopt(M_MMAP_THRESHOLD, WORKER_MMAP_THRESHOLD);
    (void)mallopt(M_TRIM_THRESHOLD, WORKER_TRIM_THRESHOLD);
#endif
}

int worker_run(struct ev_loop *loop, const struct config *cfg, const int *listen_fds)
{
    worker_cfg = cfg;
    /* SIGHUP is the master's: a worker keeps its config until it is replaced. */
    signal(SIGHUP, SIG_IGN);
    signal(SIGPIPE, SIG_IGN);
    reaper_init(loop);
    wipe_init(loop);
    char err[256];
    struct state_store *store = state_store_open(cfg->state_dir, err, sizeof(err));
    if (store == NULL)
        log_line(LOG_ERROR, "event=state_store_unavailable dir=%s reason=\"%s\"", cfg->state_dir,
                 err);
    if (state_worker_start(loop) < 0) {
        log_line(LOG_ERROR, "event=state_worker_failed");
        state_store_close(&store);
    }
    /* Without a store, logins answer [SYS/TEMP]: serving without the mailbox lock and
     * the recorded UIDLs could make clients download everything again. */
    session_state_init(store);
    listeners = calloc(cfg->nlisteners ? cfg->nlisteners : 1, sizeof(*listeners));
    if (listeners == NULL)
        return 1;
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        listeners[i] = listener_attach(loop, cfg, &cfg->listeners[i], listen_fds[i]);
        if (listeners[i] == NULL)
            return 1;
        nlisteners++;
    }
    ev_signal_init(&sigterm_w, stop_cb, SIGTERM);
    ev_signal_init(&sigint_w, stop_cb, SIGINT);
    ev_signal_start(loop, &sigterm_w);
    ev_signal_start(loop, &sigint_w);
    /* The master blocked these across fork; now they have handlers (a TERM that came
     * meanwhile is delivered here, so a fresh worker still stops cleanly). */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigprocmask(SIG_UNBLOCK, &set, NULL);

    keep_freed_heap();
    ev_run(loop, 0);

    stop_listening();
    session_close_all("shutdown");
    reaper_run();
    /* Every queued state write lands before the process ends. */
    state_worker_stop();
    session_state_init(NULL);
    state_store_close(&store);
    free(listeners);
    return 0;
}
