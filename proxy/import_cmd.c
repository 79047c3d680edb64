/* The "popgate import-uidls" command: old POP3 servers' UIDL lists merged into user states. */
#include "import_cmd.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "legacy_import.h"
#include "route.h"
#include "state.h"
#include "state_store.h"

/* File name suffixes a --dir list may carry; the user name is what precedes them. */
static const char *const list_suffixes[] = {".uidl", ".json", ".txt", NULL};

/* One list to import: a file and the POP3 user it belongs to. */
struct import_job {
    char *path;  /* owned */
    char *user;  /* owned; the POP3 user name as a client types it */
    bool failed; /* set before the import when the job cannot run */
    struct route_result route;
};

static void usage(FILE *f)
{
    fprintf(
        f, "usage: popgate import-uidls -c FILE --user USER LISTFILE\n"
           "       popgate import-uidls -c FILE --dir DIR\n"
           "\n"
           "Imports the UIDL list of an old POP3 server into popgate's state, so that POP3\n"
           "clients keep seeing the old UIDLs and do not download every message again.\n"
           "The mailbox is never touched (no password is needed): the entries wait in the\n"
           "user's state document in state.dir and are matched to the IMAP messages at the\n"
           "user's next POP3 login, by order and size, then by Message-ID.\n"
           "\n"
           "  -c FILE            popgate's configuration (its state.dir and routes are used)\n"
           "  --user USER LIST   import LIST for USER, the name POP3 clients log in with;\n"
           "                     the state key is USER's routed login (the route's login\n"
           "                     template or user_map line applies, as at a POP3 login)\n"
           "  --dir DIR          import every regular file in DIR (names starting with '.'\n"
           "                     are skipped), each one user's list; the user is the file\n"
           "                     name without a \".uidl\", \".json\" or \".txt\" suffix\n"
           "  -h, --help         print this help\n"
           "\n"
           "A list is, in the old server's order, either text lines\n"
           "    N UIDL SIZE [MESSAGE-ID]\n"
           "(its UIDL answer with each LIST size appended; '#' comments and blank lines are\n"
           "ignored), or JSON {\"user\": \"bob\", \"messages\": [{\"uidl\": \"...\", \"size\": N,\n"
           "\"message_id\": \"<...>\"}, ...]}; a JSON \"user\" must name the user imported.\n"
           "\n"
           "Importing again replaces the entries still waiting; entries a login already\n"
           "matched are kept, so running twice changes nothing the second time. A mailbox\n"
           "in use by a POP3 session is refused; run the import again once it has ended.\n"
           "Run as root with a \"user\" in the configuration, it switches to that user first.\n"
           "Prints one line per user; exits 0 when every list was imported, 1 when one\n"
           "failed, 2 on a usage error.\n");
}

static char *dup_str(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p != NULL)
        memcpy(p, s, n);
    return p;
}

/* Reads a whole regular file into a malloc'd buffer (the caller's). */
static int read_list(const char *path, char **buf_r, size_t *len_r, char *err, size_t cap)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        snprintf(err, cap, "cannot open: %s", strerror(errno));
        return -1;
    }
    struct stat sb;
    if (fstat(fd, &sb) < 0) {
        snprintf(err, cap, "cannot stat: %s", strerror(errno));
        close(fd);
        return -1;
    }
    if (!S_ISREG(sb.st_mode)) {
        snprintf(err, cap, "not a regular file");
        close(fd);
        return -1;
    }
    if (sb.st_size > (off_t)IMPORT_CMD_FILE_MAX) {
        snprintf(err, cap, "file too large: %lld bytes (at most %u)", (long long)sb.st_size,
                 IMPORT_CMD_FILE_MAX);
        close(fd);
        return -1;
    }
    /* The size may change while reading: read up to the cap, plus one byte to notice. */
    size_t alloc = (size_t)sb.st_size + 1, len = 0;
    char *buf = malloc(alloc);
    if (buf == NULL) {
        snprintf(err, cap, "out of memory");
        close(fd);
        return -1;
    }
    for (;;) {
        if (len == alloc) {
            if (alloc > IMPORT_CMD_FILE_MAX) {
                snprintf(err, cap, "file too large (at most %u bytes)", IMPORT_CMD_FILE_MAX);
                goto fail;
            }
            size_t grown =
                alloc * 2 < IMPORT_CMD_FILE_MAX + 1u ? alloc * 2 : IMPORT_CMD_FILE_MAX + 1u;
            char *p = realloc(buf, grown);
            if (p == NULL) {
                snprintf(err, cap, "out of memory");
                goto fail;
            }
            buf = p;
            alloc = grown;
        }
        ssize_t n = read(fd, buf + len, alloc - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            snprintf(err, cap, "cannot read: %s", strerror(errno));
            goto fail;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    close(fd);
    *buf_r = buf;
    *len_r = len;
    return 0;
fail:
    free(buf);
    close(fd);
    return -1;
}

static int cmp_str_ptr(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The UIDLs of n legacy entries (with matched == want, or all when all is set), sorted
 * for bsearch; malloc'd, the caller's. NULL only when out of memory. */
static const char **sorted_uidls(const struct state_legacy *e, size_t n, bool all, bool want,
                                 size_t *count_r)
{
    const char **v = malloc((n + 1) * sizeof(*v));
    if (v == NULL)
        return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (all || e[i].matched == want)
            v[k++] = e[i].uidl;
    qsort(v, k, sizeof(*v), cmp_str_ptr);
    *count_r = k;
    return v;
}

static bool has_uidl(const char **v, size_t n, const char *uidl)
{
    return n > 0 && bsearch(&uidl, v, n, sizeof(*v), cmp_str_ptr) != NULL;
}

/* Entries of list absent from the document before (new), and unmatched entries of the
 * document that list no longer has (dropped by the merge). */
static int count_changes(const struct state_doc *doc, const struct legacy_import *list,
                         size_t *new_r, size_t *dropped_r)
{
    size_t nold, nlist;
    const char **old = sorted_uidls(doc->legacy, doc->nlegacy, true, false, &nold);
    const char **in = sorted_uidls(list->entries, list->nentries, true, false, &nlist);
    if (old == NULL || in == NULL) {
        free(old);
        free(in);
        return -1;
    }
    *new_r = 0;
    for (size_t i = 0; i < list->nentries; i++)
        *new_r += !has_uidl(old, nold, list->entries[i].uidl);
    *dropped_r = 0;
    for (size_t i = 0; i < doc->nlegacy; i++)
        *dropped_r += !doc->legacy[i].matched && !has_uidl(in, nlist, doc->legacy[i].uidl);
    free(old);
    free(in);
    return 0;
}

/* A user other than the one imported, named inside a JSON list, is a mix-up of files. */
static bool list_user_fits(const struct import_job *job, const struct legacy_import *list)
{
    return list->user == NULL || strcasecmp(list->user, job->user) == 0 ||
           strcasecmp(list->user, job->route.login) == 0;
}

/* Imports one job's list; prints its report line or its errors. */
static int import_one(struct state_store *store, const struct import_job *job)
{
    const char *path = job->path, *user = job->user, *login = job->route.login;
    size_t login_len = job->route.login_len;
    char err[512], warn[512];
    char *buf = NULL;
    size_t len = 0;
    if (read_list(path, &buf, &len, err, sizeof(err)) < 0) {
        fprintf(stderr, "%s: error: %s\n", path, err);
        return -1;
    }
    struct legacy_import *list = NULL;
    const char *perr = NULL;
    size_t line = 0;
    int rc = legacy_import_parse(buf, len, LEGACY_IMPORT_AUTO, &list, &perr, &line);
    free(buf);
    if (rc < 0) {
        if (line > 0)
            fprintf(stderr, "%s:%zu: error: %s\n", path, line, perr);
        else
            fprintf(stderr, "%s: error: %s\n", path, perr);
        return -1;
    }
    if (!list_user_fits(job, list)) {
        fprintf(stderr, "%s: error: the list is for user \"%s\", not \"%s\"\n", path, list->user,
                user);
        legacy_import_free(&list);
        return -1;
    }

    struct state_lock *lock = NULL;
    switch (state_store_lock(store, login, login_len, &lock, err, sizeof(err))) {
    case STATE_LOCK_OK:
        break;
    case STATE_LOCK_BUSY:
        fprintf(stderr,
                "%s: error: user \"%s\": the mailbox is in use by a POP3 session; nothing "
                "imported, run the import again once the session has ended\n",
                path, user);
        legacy_import_free(&list);
        return -1;
    case STATE_LOCK_ERROR:
    default:
        fprintf(stderr, "%s: error: user \"%s\": cannot lock the state: %s\n", path, user, err);
        legacy_import_free(&list);
        return -1;
    }

    struct state_doc *doc = NULL;
    char *before = NULL, *after = NULL;
    size_t before_len = 0, after_len = 0, nnew = 0, ndropped = 0;
    struct legacy_import_merge_stats stats = {0};
    const char *merr = NULL;
    rc = -1;
    warn[0] = '\0';
    if (state_store_load(store, login, login_len, &doc, warn, sizeof(warn), err, sizeof(err)) < 0) {
        fprintf(stderr, "%s: error: user \"%s\": cannot load the state: %s\n", path, user, err);
        goto out;
    }
    if (warn[0] != '\0')
        fprintf(stderr, "%s: warning: user \"%s\": %s\n", path, user, warn);
    before = state_doc_serialize(doc, &before_len);
    if (before == NULL || count_changes(doc, list, &nnew, &ndropped) < 0) {
        fprintf(stderr, "%s: error: user \"%s\": %s\n", path, user,
                before == NULL && errno == EINVAL ? "the state document is invalid"
                                                  : "out of memory");
        goto out;
    }
    if (legacy_import_merge(doc, list, &stats, &merr) < 0) {
        fprintf(stderr, "%s: error: user \"%s\": %s\n", path, user, merr);
        goto out;
    }
    after = state_doc_serialize(doc, &after_len);
    if (after == NULL) {
        fprintf(stderr, "%s: error: user \"%s\": %s\n", path, user,
                errno == EINVAL ? "the merged state document is invalid" : "out of memory");
        goto out;
    }
    /* Nothing new: leave the document alone (no save, not even a new file). */
    bool changed = before_len != after_len || memcmp(before, after, before_len) != 0;
    if (changed && state_store_save(store, doc, err, sizeof(err)) < 0) {
        fprintf(stderr, "%s: error: user \"%s\": cannot save the state: %s\n", path, user, err);
        goto out;
    }
    printf("%s", user);
    if (strcmp(user, login) != 0)
        printf(" (login %s)", login);
    printf(": %s: %zu entries imported (%zu new, %zu already matched kept, %zu waiting for "
           "the next login",
           path, stats.entries, nnew, stats.kept_matched, stats.pending);
    if (ndropped > 0)
        printf(", %zu earlier unmatched entries dropped", ndropped);
    printf(")%s\n", changed ? "; state saved" : "; nothing new, state unchanged");
    rc = 0;
out:
    free(before);
    free(after);
    state_doc_free(&doc);
    state_store_unlock(&lock);
    legacy_import_free(&list);
    return rc;
}

/* The user a --dir file name stands for: the name less one known suffix. */
static char *user_of_file_name(const char *name)
{
    char *user = dup_str(name);
    if (user == NULL)
        return NULL;
    size_t n = strlen(user);
    for (size_t i = 0; list_suffixes[i] != NULL; i++) {
        size_t sn = strlen(list_suffixes[i]);
        if (n > sn && strcmp(user + n - sn, list_suffixes[i]) == 0) {
            user[n - sn] = '\0';
            break;
        }
    }
    return user;
}

static int cmp_job(const void *a, const void *b)
{
    return strcmp(((const struct import_job *)a)->path, ((const struct import_job *)b)->path);
}

/* Lists DIR's regular files (hidden ones skipped) as jobs, sorted by name. */
static int scan_dir(const char *dir, struct import_job **jobs_r, size_t *n_r)
{
    DIR *d = opendir(dir);
    if (d == NULL) {
        fprintf(stderr, "%s: error: cannot open the folder: %s\n", dir, strerror(errno));
        return -1;
    }
    struct import_job *jobs = NULL;
    size_t n = 0, alloc = 0;
    struct dirent *de;
    errno = 0;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        struct stat sb;
        if (fstatat(dirfd(d), de->d_name, &sb, 0) < 0 || !S_ISREG(sb.st_mode)) {
            errno = 0;
            continue;
        }
        if (n == alloc) {
            size_t grown = alloc == 0 ? 16 : alloc * 2;
            struct import_job *p = realloc(jobs, grown * sizeof(*jobs));
            if (p == NULL)
                goto oom;
            jobs = p;
            alloc = grown;
        }
        struct import_job *j = &jobs[n];
        memset(j, 0, sizeof(*j));
        size_t plen = strlen(dir) + 1 + strlen(de->d_name) + 1;
        j->path = malloc(plen);
        j->user = user_of_file_name(de->d_name);
        if (j->path == NULL || j->user == NULL) {
            free(j->path);
            free(j->user);
            goto oom;
        }
        snprintf(j->path, plen, "%s/%s", dir, de->d_name);
        n++;
        errno = 0;
    }
    if (errno != 0) {
        fprintf(stderr, "%s: error: cannot read the folder: %s\n", dir, strerror(errno));
        goto fail;
    }
    closedir(d);
    if (n > 1)
        qsort(jobs, n, sizeof(*jobs), cmp_job);
    *jobs_r = jobs;
    *n_r = n;
    return 0;
oom:
    fprintf(stderr, "popgate: import-uidls: out of memory\n");
fail:
    for (size_t i = 0; i < n; i++) {
        free(jobs[i].path);
        free(jobs[i].user);
    }
    free(jobs);
    closedir(d);
    return -1;
}

/* State files must stay readable by the workers, which run as the configured user. */
static int drop_privileges(const struct config *cfg)
{
    if (cfg->run_user == NULL || geteuid() != 0)
        return 0;
    if (setgroups(1, &cfg->gid) < 0 || setgid(cfg->gid) < 0 || setuid(cfg->uid) < 0) {
        fprintf(stderr, "popgate: import-uidls: cannot switch to user %s: %s\n", cfg->run_user,
                strerror(errno));
        return -1;
    }
    return 0;
}

/* Routes each job's user; two lists for one state would overwrite each other: both fail. */
static void route_jobs(const struct config *cfg, struct import_job *jobs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (jobs[i].user[0] == '\0' ||
            route_resolve(cfg, jobs[i].user, strlen(jobs[i].user), &jobs[i].route) < 0) {
            fprintf(stderr,
                    "%s: error: user \"%s\": no route gives a login for this user (as a POP3 "
                    "login would be refused)\n",
                    jobs[i].path, jobs[i].user);
            jobs[i].failed = true;
        }
    }
    /* Compare every routed pair: with three lists for one login, all three fail. */
    bool *routed = calloc(n ? n : 1, sizeof(*routed));
    for (size_t i = 0; i < n; i++)
        routed[i] = routed != NULL && !jobs[i].failed;
    for (size_t i = 0; routed != NULL && i < n; i++) {
        for (size_t k = i + 1; k < n && routed[i]; k++) {
            if (!routed[k] || strcmp(jobs[i].route.login, jobs[k].route.login) != 0)
                continue;
            fprintf(stderr, "%s: error: user \"%s\": %s is a list for the same login \"%s\"\n",
                    jobs[i].path, jobs[i].user, jobs[k].path, jobs[i].route.login);
            fprintf(stderr, "%s: error: user \"%s\": %s is a list for the same login \"%s\"\n",
                    jobs[k].path, jobs[k].user, jobs[i].path, jobs[i].route.login);
            jobs[k].failed = true;
            jobs[i].failed = true;
        }
    }
    free(routed);
}

int import_cmd_main(int argc, char **argv)
{
    const char *cfg_path = NULL, *user = NULL, *list_path = NULL, *dir = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(a, "-c") == 0 && i + 1 < argc && cfg_path == NULL) {
            cfg_path = argv[++i];
        } else if (strcmp(a, "--user") == 0 && i + 2 < argc && user == NULL) {
            user = argv[++i];
            list_path = argv[++i];
        } else if (strcmp(a, "--dir") == 0 && i + 1 < argc && dir == NULL) {
            dir = argv[++i];
        } else {
            fprintf(stderr, "popgate: import-uidls: unexpected argument \"%s\"\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (cfg_path == NULL || (user == NULL) == (dir == NULL)) {
        fprintf(stderr, "popgate: import-uidls: needs -c FILE and one of --user or --dir\n");
        usage(stderr);
        return 2;
    }

    char *errors = NULL;
    struct config *cfg = config_load(cfg_path, &errors);
    if (cfg == NULL) {
        if (errors == NULL) {
            fputs("popgate: cannot load the configuration: out of memory\n", stderr);
            return 1;
        }
        size_t len = strlen(errors);
        if (len > 0 && errors[len - 1] == '\n')
            errors[--len] = '\0';
        fprintf(stderr, "%s; nothing imported\n", errors);
        free(errors);
        return 1;
    }

    int status = 1;
    struct import_job *jobs = NULL;
    size_t njobs = 0;
    struct state_store *store = NULL;
    if (drop_privileges(cfg) < 0)
        goto out;
    if (user != NULL) {
        jobs = calloc(1, sizeof(*jobs));
        if (jobs == NULL || (jobs[0].path = dup_str(list_path)) == NULL ||
            (jobs[0].user = dup_str(user)) == NULL) {
            fputs("popgate: import-uidls: out of memory\n", stderr);
            goto out;
        }
        njobs = 1;
    } else if (scan_dir(dir, &jobs, &njobs) < 0) {
        goto out;
    }
    if (njobs == 0) {
        fprintf(stderr, "%s: warning: no list to import (no regular file)\n", dir);
        status = 0;
        goto out;
    }

    char err[512];
    store = state_store_open(cfg->state_dir, err, sizeof(err));
    if (store == NULL) {
        fprintf(stderr, "%s: state.dir: cannot open \"%s\": %s; nothing imported\n", cfg_path,
                cfg->state_dir, err);
        goto out;
    }
    route_jobs(cfg, jobs, njobs);
    size_t failed = 0;
    for (size_t i = 0; i < njobs; i++)
        failed += jobs[i].failed || import_one(store, &jobs[i]) < 0;
    fflush(stdout);
    if (failed > 0)
        fprintf(stderr, "popgate: import-uidls: %zu of %zu user%s failed\n", failed, njobs,
                njobs == 1 ? "" : "s");
    status = failed > 0 ? 1 : 0;
out:
    state_store_close(&store);
    for (size_t i = 0; i < njobs; i++) {
        free(jobs[i].path);
        free(jobs[i].user);
    }
    if (njobs == 0 && jobs != NULL) {
        free(jobs[0].path);
        free(jobs[0].user);
    }
    free(jobs);
    config_free(&cfg);
    return status;
}
