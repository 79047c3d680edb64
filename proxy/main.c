/* popgate's entry point: options, config, listeners, signals and the event loop. */
#include <ev.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "listener.h"
#include "log.h"
#include "reaper.h"
#include "session.h"

static struct listener **listeners;
static size_t nlisteners;

static void usage(FILE *f)
{
    fprintf(f, "usage: popgate -c FILE [-t]\n"
               "  -c FILE  configuration file (JSON)\n"
               "  -t       check the configuration and exit\n"
               "  -V       print the version\n");
}

static void stop_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
    (void)revents;
    log_line(LOG_INFO, "event=shutdown signal=%d sessions=%u", w->signum, session_count());
    for (size_t i = 0; i < nlisteners; i++)
        listener_free(&listeners[i]);
    session_close_all("shutdown");
    ev_break(loop, EVBREAK_ALL);
}

int main(int argc, char **argv)
{
    const char *path = NULL;
    bool test_only = false;
    int opt;
    while ((opt = getopt(argc, argv, "c:thV")) != -1) {
        switch (opt) {
        case 'c':
            path = optarg;
            break;
        case 't':
            test_only = true;
            break;
        case 'V':
            printf("popgate %s\n", POPGATE_VERSION);
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (path == NULL || optind != argc) {
        usage(stderr);
        return 2;
    }

    char *errors = NULL;
    struct config *cfg = config_load(path, &errors);
    if (cfg == NULL) {
        fputs(errors != NULL ? errors : "popgate: cannot load the configuration\n", stderr);
        free(errors);
        return 1;
    }
    for (size_t i = 0; i < cfg->nupstreams; i++) {
        const struct config_upstream *u = &cfg->upstreams[i];
        if (u->tls != CONFIG_TLS_NONE && !u->verify)
            log_line(LOG_WARN,
                     "event=tls_verify_off upstream=%s reason=\"certificates of %s are not "
                     "verified: anyone on the path can read passwords\"",
                     u->name, u->host);
    }
    if (test_only) {
        printf("configuration OK\n");
        config_free(&cfg);
        return 0;
    }

    signal(SIGPIPE, SIG_IGN);
    struct ev_loop *loop = ev_default_loop(EVFLAG_AUTO);
    reaper_init(loop);

    listeners = calloc(cfg->nlisteners, sizeof(*listeners));
    if (listeners == NULL)
        return 1;
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        const char *error = NULL;
        listeners[i] = listener_open(loop, cfg, &cfg->listeners[i], &error);
        if (listeners[i] == NULL) {
            char q[LOG_VALUE_MAX];
            log_line(LOG_ERROR, "event=listen_failed address=%s reason=%s",
                     cfg->listeners[i].address_text, log_str(q, sizeof(q), error));
            return 1;
        }
        nlisteners++;
        log_line(LOG_INFO, "event=listening address=%s", cfg->listeners[i].address_text);
    }

    ev_signal sigterm, sigint;
    ev_signal_init(&sigterm, stop_cb, SIGTERM);
    ev_signal_init(&sigint, stop_cb, SIGINT);
    ev_signal_start(loop, &sigterm);
    ev_signal_start(loop, &sigint);
    log_line(LOG_INFO, "event=started version=%s config=%s", POPGATE_VERSION, path);

    ev_run(loop, 0);

    reaper_run();
    free(listeners);
    config_free(&cfg);
    ev_loop_destroy(loop);
    log_line(LOG_INFO, "event=stopped");
    return 0;
}
