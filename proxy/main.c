/* popgate's entry point: options, the configuration check, then the master process. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "import_cmd.h"
#include "master.h"
#include "log.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: popgate -c FILE [-t]\n"
               "       popgate import-uidls -c FILE (--user USER LISTFILE | --dir DIR)\n"
               "  -c FILE  configuration file (JSON)\n"
               "  -t       check the configuration and exit\n"
               "  -V       print the version\n");
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "import-uidls") == 0)
        return import_cmd_main(argc - 1, argv + 1);

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
        if (errors == NULL) {
            fputs("popgate: cannot load the configuration: out of memory\n", stderr);
            return 1;
        }
        /* The last line counts the errors; say what follows from them. */
        size_t len = strlen(errors);
        if (len > 0 && errors[len - 1] == '\n')
            errors[--len] = '\0';
        fprintf(stderr, "%s%s\n", errors, test_only ? "" : "; not starting");
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

    if (cfg->log == CONFIG_LOG_SYSLOG)
        log_use_syslog();
    return master_run(path, cfg);
}
