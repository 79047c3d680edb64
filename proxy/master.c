/* The master process: binds listeners, runs and restarts workers, reloads, shuts down. */
#include "master.h"

#include <errno.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "admin.h"
#include "conn_limit.h"
#include "listener.h"
#include "log.h"
#include "auth_penalty.h"
#include "metrics.h"
#include "worker.h"

/* Worker processes alive at once, draining ones included (metrics slots). */
#define MASTER_MAX_WORKERS 128
/* A worker that dies younger than this is restarted only after this delay. */
#define MASTER_RESPAWN_DELAY 1.0
/* Grace after shutdown_timeout before draining workers are killed. */
#define MASTER_KILL_GRACE 5.0

struct worker_proc {
    pid_t pid;           /* 0: slot free */
    unsigned generation; /* the config generation it serves */
    bool stopping;       /* told to stop: do not restart */
    ev_tstamp started;
    ev_child child_w;
};

static struct ev_loop *loop;
static const char *config_path;
static struct config *current;
static int *current_fds; /* one per current->listeners entry */
static unsigned generation;
static struct admin *admin;
static struct conn_limit *conn_limit; /* shared with the workers; NULL: limits unavailable */
static struct worker_proc procs[MASTER_MAX_WORKERS];
static ev_signal sighup_w, sigterm_w, sigint_w;
static ev_timer respawn_w, kill_w;
static bool shutting_down;
static pid_t master_pid;

static unsigned live_workers(void)
{
    unsigned n = 0;
    for (unsigned i = 0; i < MASTER_MAX_WORKERS; i++)
        n += procs[i].pid != 0;
    return n;
}

static unsigned current_workers(void)
{
    unsigned n = 0;
    for (unsigned i = 0; i < MASTER_MAX_WORKERS; i++)
        n += procs[i].pid != 0 && !procs[i].stopping && procs[i].generation == generation;
    return n;
}

static int drop_privileges(const struct config *cfg)
{
    if (cfg->run_user == NULL)
        return 0;
    if (setgroups(1, &cfg->gid) < 0 || setgid(cfg->gid) < 0 || setuid(cfg->uid) < 0) {
        log_line(LOG_ERROR, "event=privilege_drop_failed user=%s reason=\"%s\"", cfg->run_user,
                 strerror(errno));
        return -1;
    }
    return 0;
}

/* In a new worker: forget every master watcher, then serve. Never returns. */
static void become_worker(unsigned slot)
{
    ev_loop_fork(loop);
    ev_signal_stop(loop, &sighup_w);
    ev_signal_stop(loop, &sigterm_w);
    ev_signal_stop(loop, &sigint_w);
    ev_timer_stop(loop, &respawn_w);
    ev_timer_stop(loop, &kill_w);
    for (unsigned i = 0; i < MASTER_MAX_WORKERS; i++)
        if (procs[i].pid != 0)
            ev_child_stop(loop, &procs[i].child_w);
    admin_free(&admin);
    if (drop_privileges(current) < 0)
        _exit(1);
    /* A worker must not outlive its master (it would hold the ports). After the
     * privilege drop: changing uid clears the death signal. */
    (void)prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != master_pid)
        _exit(0);
    metrics_attach(slot);
    conn_limit_attach(conn_limit, slot);
    int status = worker_run(loop, current, current_fds);
    _exit(status);
}

static void child_cb(struct ev_loop *l, ev_child *w, int revents);

static void spawn(unsigned slot)
{
    struct worker_proc *p = &procs[slot];
    /* Until the worker has its own handlers, a TERM or HUP must wait, not kill it:
     * blocked across fork, the worker unblocks them once it is set up. */
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGHUP);
    sigprocmask(SIG_BLOCK, &block, &old);
    pid_t pid = fork();
    if (pid == 0)
        become_worker(slot);
    sigprocmask(SIG_SETMASK, &old, NULL);
    if (pid < 0) {
        log_line(LOG_ERROR, "event=fork_failed reason=\"%s\"", strerror(errno));
        /* Try again shortly rather than run short of workers for good. */
        if (!ev_is_active(&respawn_w)) {
            ev_timer_set(&respawn_w, MASTER_RESPAWN_DELAY, 0);
            ev_timer_start(loop, &respawn_w);
        }
        return;
    }
    p->pid = pid;
    p->generation = generation;
    p->stopping = false;
    p->started = ev_now(loop);
    ev_child_init(&p->child_w, child_cb, pid, 0);
    p->child_w.data = p;
    ev_child_start(loop, &p->child_w);
    metrics_slot_in_use(slot, true);
    log_line(LOG_INFO, "event=worker_started pid=%d slot=%u generation=%u", (int)pid, slot,
             generation);
}

/* Starts workers until the current generation has cfg->workers of them. */
static void spawn_missing(void)
{
    if (shutting_down)
        return;
    for (unsigned slot = 0; slot < MASTER_MAX_WORKERS && current_workers() < current->workers;
         slot++)
        if (procs[slot].pid == 0)
            spawn(slot);
}

static void respawn_cb(struct ev_loop *l, ev_timer *w, int revents)
{
    (void)l;
    (void)w;
    (void)revents;
    spawn_missing();
}

static void child_cb(struct ev_loop *l, ev_child *w, int revents)
{
    (void)revents;
    struct worker_proc *p = w->data;
    unsigned slot = (unsigned)(p - procs);
    ev_child_stop(l, w);
    int st = w->rstatus;
    bool expected = p->stopping || shutting_down;
    if (WIFSIGNALED(st))
        log_line(expected ? LOG_INFO : LOG_ERROR, "event=worker_exited pid=%d signal=%d",
                 (int)p->pid, WTERMSIG(st));
    else
        log_line(expected ? LOG_INFO : LOG_ERROR, "event=worker_exited pid=%d status=%d",
                 (int)p->pid, WEXITSTATUS(st));
    bool young = ev_now(l) - p->started < MASTER_RESPAWN_DELAY;
    p->pid = 0;
    metrics_retire(slot);
    metrics_slot_in_use(slot, false);
    /* Its connections died with it: without this a killed worker's share would count
     * against the limits for good. */
    conn_limit_retire(conn_limit, slot);
    if (shutting_down) {
        if (live_workers() == 0)
            ev_break(l, EVBREAK_ALL);
        return;
    }
    if (expected) {
        /* A drained worker frees a slot a short generation may be waiting for. */
        spawn_missing();
    } else {
        /* A crash loop must not become a fork bomb. */
        if (young) {
            if (!ev_is_active(&respawn_w)) {
                ev_timer_set(&respawn_w, MASTER_RESPAWN_DELAY, 0);
                ev_timer_start(l, &respawn_w);
            }
        } else {
            spawn_missing();
        }
    }
}

/* Binds cfg's listeners, reusing the sockets of addresses already open. Returns a new
 * fd array, or NULL (nothing changed) when a bind fails. */
static int *bind_listeners(const struct config *cfg, const struct config *old, int *old_fds)
{
    int *fds = calloc(cfg->nlisteners ? cfg->nlisteners : 1, sizeof(*fds));
    if (fds == NULL)
        return NULL;
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        fds[i] = -1;
        for (size_t j = 0; old != NULL && j < old->nlisteners; j++) {
            if (old_fds[j] >= 0 &&
                strcmp(old->listeners[j].address_text, cfg->listeners[i].address_text) == 0) {
                fds[i] = old_fds[j];
                old_fds[j] = -1;
            }
        }
        if (fds[i] >= 0)
            continue;
        const char *error = "unknown error";
        fds[i] = listener_bind(&cfg->listeners[i], &error);
        if (fds[i] < 0) {
            log_line(LOG_ERROR, "event=listen_failed address=%s reason=\"%s\"",
                     cfg->listeners[i].address_text, error);
            /* Give the reused sockets back, close the new ones. */
            for (size_t k = 0; k < i; k++) {
                bool reused = false;
                for (size_t j = 0; old != NULL && j < old->nlisteners; j++) {
                    if (old_fds[j] < 0 && strcmp(old->listeners[j].address_text,
                                                 cfg->listeners[k].address_text) == 0) {
                        old_fds[j] = fds[k];
                        reused = true;
                        break;
                    }
                }
                if (!reused)
                    close(fds[k]);
            }
            free(fds);
            return NULL;
        }
        log_line(LOG_INFO, "event=listening address=%s tls=%s%s", cfg->listeners[i].address_text,
                 cfg->listeners[i].tls == CONFIG_TLS_NONE       ? "none"
                 : cfg->listeners[i].tls == CONFIG_TLS_STARTTLS ? "starttls"
                                                                : "implicit",
                 cfg->listeners[i].proxy_protocol ? " proxy_protocol=yes" : "");
    }
    return fds;
}

/* The state folder must exist and belong to the workers' user before they drop to it. */
static void prepare_state_dir(const struct config *cfg)
{
    if (mkdir(cfg->state_dir, 0700) < 0 && errno != EEXIST) {
        log_line(LOG_ERROR, "event=state_dir_failed dir=%s reason=\"%s\"", cfg->state_dir,
                 strerror(errno));
        return;
    }
    if (cfg->run_user != NULL && geteuid() == 0 && chown(cfg->state_dir, cfg->uid, cfg->gid) < 0)
        log_line(LOG_WARN, "event=state_dir_chown_failed dir=%s reason=\"%s\"", cfg->state_dir,
                 strerror(errno));
}

static int open_admin(const struct config *cfg)
{
    if (cfg->admin == NULL)
        return 0;
    const char *error = "unknown error";
    admin = admin_open(loop, cfg->admin, &error);
    if (admin == NULL) {
        log_line(LOG_ERROR, "event=admin_listen_failed address=%s reason=\"%s\"",
                 cfg->admin->address_text, error);
        return -1;
    }
    log_line(LOG_INFO, "event=admin_listening address=%s", cfg->admin->address_text);
    return 0;
}

static void log_errors(const char *errors)
{
    const char *p = errors;
    while (p != NULL && *p != '\0') {
        const char *nl = strchr(p, '\n');
        size_t len = nl != NULL ? (size_t)(nl - p) : strlen(p);
        char q[512];
        log_line(LOG_ERROR, "event=config_error detail=%s", log_value(q, sizeof(q), p, len));
        p = nl != NULL ? nl + 1 : NULL;
    }
}

/* The address tables were sized at start; a reload cannot grow them. */
static void warn_conn_limit_capacity(const struct config *cfg)
{
    if (conn_limit != NULL && cfg->limits.max_connections > conn_limit_capacity(conn_limit))
        log_line(LOG_WARN,
                 "event=connection_limit_capacity max_connections=%u capacity=%u "
                 "reason=\"address tables were sized at start; restart popgate to count "
                 "more addresses per worker\"",
                 cfg->limits.max_connections, conn_limit_capacity(conn_limit));
}

static void reload(void)
{
    log_line(LOG_INFO, "event=reload_started config=%s", config_path);
    char *errors = NULL;
    struct config *cfg = config_load(config_path, &errors);
    if (cfg == NULL) {
        log_errors(errors);
        log_line(LOG_ERROR, "event=reload_failed reason=\"configuration has errors; keeping the "
                            "running one\"");
        free(errors);
        metrics_config_reload(false);
        return;
    }
    int *fds = bind_listeners(cfg, current, current_fds);
    if (fds == NULL) {
        log_line(LOG_ERROR, "event=reload_failed reason=\"cannot listen; keeping the running "
                            "configuration\"");
        config_free(&cfg);
        metrics_config_reload(false);
        return;
    }
    /* Addresses that are gone: the old workers hold their own copies until they stop. */
    for (size_t j = 0; j < current->nlisteners; j++)
        if (current_fds[j] >= 0)
            close(current_fds[j]);
    bool admin_changed =
        (cfg->admin == NULL) != (current->admin == NULL) ||
        (cfg->admin != NULL && strcmp(cfg->admin->address_text, current->admin->address_text) != 0);
    free(current_fds);
    config_free(&current);
    current = cfg;
    current_fds = fds;
    if (admin_changed) {
        admin_free(&admin);
        (void)open_admin(current);
    }
    /* Running sessions finish in the old workers, on the config they started with. */
    for (unsigned i = 0; i < MASTER_MAX_WORKERS; i++) {
        if (procs[i].pid != 0 && !procs[i].stopping) {
            procs[i].stopping = true;
            kill(procs[i].pid, SIGTERM);
        }
    }
    generation++;
    warn_conn_limit_capacity(current);
    prepare_state_dir(current);
    spawn_missing();
    metrics_config_reload(true);
    log_line(LOG_INFO, "event=reloaded config=%s workers=%u generation=%u", config_path,
             current->workers, generation);
}

static void kill_cb(struct ev_loop *l, ev_timer *w, int revents)
{
    (void)l;
    (void)w;
    (void)revents;
    for (unsigned i = 0; i < MASTER_MAX_WORKERS; i++) {
        if (procs[i].pid != 0) {
            log_line(LOG_WARN,
                     "event=worker_killed pid=%d reason=\"still running after "
                     "shutdown_timeout\"",
                     (int)procs[i].pid);
            kill(procs[i].pid, SIGKILL);
        }
    }
}

static void signal_cb(struct ev_loop *l, ev_signal *w, int revents)
{
    (void)revents;
    if (w->signum == SIGHUP) {
        if (!shutting_down)
            reload();
        return;
    }
    if (shutting_down)
        return;
    shutting_down = true;
    log_line(LOG_INFO, "event=shutdown signal=%d workers=%u timeout=%u", w->signum, live_workers(),
             current->shutdown_timeout);
    for (size_t j = 0; j < current->nlisteners; j++) {
        if (current_fds[j] >= 0)
            close(current_fds[j]);
        current_fds[j] = -1;
    }
    admin_free(&admin);
    ev_timer_stop(l, &respawn_w);
    for (unsigned i = 0; i < MASTER_MAX_WORKERS; i++)
        if (procs[i].pid != 0)
            kill(procs[i].pid, SIGTERM);
    if (live_workers() == 0) {
        ev_break(l, EVBREAK_ALL);
        return;
    }
    ev_timer_set(&kill_w, (ev_tstamp)current->shutdown_timeout + MASTER_KILL_GRACE, 0);
    ev_timer_start(l, &kill_w);
}

int master_run(const char *path, struct config *cfg)
{
    config_path = path;
    current = cfg;
    master_pid = getpid();
    loop = ev_default_loop(EVFLAG_AUTO);
    signal(SIGPIPE, SIG_IGN);
    if (metrics_init(MASTER_MAX_WORKERS) < 0)
        log_line(LOG_WARN, "event=metrics_unavailable reason=\"cannot map shared memory\"");
    const char *limit_error = "unknown error";
    conn_limit = conn_limit_new(MASTER_MAX_WORKERS, cfg->limits.max_connections, &limit_error);
    /* Without the tables every connection is admitted: say so loudly, but serve. */
    if (conn_limit == NULL)
        log_line(LOG_ERROR, "event=connection_limits_unavailable reason=\"%s\"", limit_error);
    if (auth_penalty_init() < 0)
        log_line(LOG_WARN, "event=auth_penalty_per_worker reason=\"cannot map shared memory\"");
    current_fds = bind_listeners(cfg, NULL, NULL);
    if (current_fds == NULL)
        return 1;
    if (open_admin(cfg) < 0)
        return 1;

    ev_signal_init(&sighup_w, signal_cb, SIGHUP);
    ev_signal_init(&sigterm_w, signal_cb, SIGTERM);
    ev_signal_init(&sigint_w, signal_cb, SIGINT);
    ev_signal_start(loop, &sighup_w);
    ev_signal_start(loop, &sigterm_w);
    ev_signal_start(loop, &sigint_w);
    ev_init(&respawn_w, respawn_cb);
    ev_init(&kill_w, kill_cb);

    log_line(LOG_INFO, "event=started version=%s config=%s workers=%u", POPGATE_VERSION, path,
             cfg->workers);
    prepare_state_dir(cfg);
    spawn_missing();
    ev_run(loop, 0);

    for (size_t j = 0; j < current->nlisteners; j++)
        if (current_fds[j] >= 0)
            close(current_fds[j]);
    free(current_fds);
    admin_free(&admin);
    conn_limit_free(&conn_limit);
    config_free(&current);
    log_line(LOG_INFO, "event=stopped");
    return 0;
}
