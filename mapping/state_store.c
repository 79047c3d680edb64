/* The file state store owns the state folder: safe file names, atomic saves, corrupt
 * documents moved aside, and the per-mailbox flock. */
#include "state_store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "sha256.h"

/* Escaped names up to this length are used as they are... */
#define NAME_SHORT_MAX 200
/* ...longer ones keep this much of their start, then "~" and the SHA-256 in hex. */
#define NAME_PREFIX_LEN 136
/* The longest suffix: ".corrupt-" + 20 digits + "-" + 2 digits (or ".tmp-<pid>-<n>"). */
#define SUFFIX_MAX 40
/* A larger document is refused rather than read (100,000 messages take about 10 MB). */
#define DOC_SIZE_MAX ((off_t)256 * 1024 * 1024)
/* A temporary file this old belongs to a save that died: nothing will rename it. */
#define TMP_MAX_AGE 3600
/* Attempts at a free "<name>.corrupt-<time>[-<n>]". */
#define CORRUPT_NAME_TRIES 100

/*
 * Parsed documents kept for the next load of the same file. A save always puts a new
 * file in place by rename, so a file whose inode, size and times are those of the
 * entry holds what the entry holds, whoever wrote it; anything else is read again.
 */
#define STATE_CACHE_ENTRIES 64
/* At about 112 bytes a message: some 29 MB per process at most; one document may take
 * half of it (a 100,000-message mailbox fits). */
#define STATE_CACHE_MSGS 262144

struct cache_entry {
    char name[STATE_STORE_NAME_MAX + SUFFIX_MAX]; /* "" = free */
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime, ctime;
    struct state_doc *doc;
    uint64_t used; /* for least-recently-used eviction */
};

struct state_store {
    int dirfd; /* every file is reached relative to it: no path is joined or followed */
    char *dir; /* for messages */
    pthread_mutex_t cache_lock; /* loads and saves may run on several threads */
    struct cache_entry cache[STATE_CACHE_ENTRIES];
    size_t cache_msgs;
    uint64_t cache_clock;
};

struct state_lock {
    int fd; /* holds the flock; closing it releases the lock */
};

/* Distinct temporary names for saves running at once in one process (threads). */
static atomic_ulong tmp_seq;

static void errf(char *buf, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void errf(char *buf, size_t cap, const char *fmt, ...)
{
    va_list ap;

    if (buf == NULL || cap == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(buf, cap, fmt, ap);
    va_end(ap);
}

void state_store_file_name(const char *user, size_t len, char *out, size_t cap)
{
    static const char hex[] = "0123456789abcdef";
    char buf[NAME_SHORT_MAX + 3]; /* one escape may cross the limit */
    uint8_t digest[SHA256_DIGEST_LEN];
    size_t n = 0;

    if (cap == 0)
        return;
    if (cap < STATE_STORE_NAME_MAX + 1) {
        out[0] = '\0';
        return;
    }
    for (size_t i = 0; i < len && n <= NAME_SHORT_MAX; i++) {
        unsigned char c = (unsigned char)user[i];

        if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || (c == '.' && i > 0)) {
            buf[n++] = (char)c;
        } else {
            buf[n++] = '_';
            buf[n++] = hex[c >> 4];
            buf[n++] = hex[c & 0xf];
        }
    }
    if (len == 0)
        buf[n++] = '_'; /* "_" alone is never an escape: each escape has two digits */
    if (n <= NAME_SHORT_MAX) {
        memcpy(out, buf, n);
        out[n] = '\0';
        return;
    }

    sha256_digest(user, len, digest);
    memcpy(out, buf, NAME_PREFIX_LEN);
    n = NAME_PREFIX_LEN;
    out[n++] = '~'; /* outside the escaped alphabet: never equal to a short name */
    for (size_t i = 0; i < SHA256_DIGEST_LEN; i++) {
        out[n++] = hex[digest[i] >> 4];
        out[n++] = hex[digest[i] & 0xf];
    }
    out[n] = '\0';
}

/* "<name>.tmp-<digits>-<digits>": a temporary file of some save. */
static bool is_tmp_name(const char *name)
{
    const char *p = strrchr(name, '.');
    int parts = 0;

    if (p == NULL || p == name || strncmp(p + 1, "tmp-", 4) != 0)
        return false;
    p += 5;
    while (parts < 2) {
        const char *start = p;

        while (*p >= '0' && *p <= '9')
            p++;
        if (p == start)
            return false;
        parts++;
        if (parts == 1) {
            if (*p != '-')
                return false;
            p++;
        }
    }
    return *p == '\0';
}

/* Best effort: a failure here costs disk space, not correctness. */
static void remove_stale_tmp(int dirfd)
{
    time_t limit = time(NULL) - TMP_MAX_AGE;
    struct dirent *de;
    DIR *d;
    int fd;

    fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return;
    d = fdopendir(fd);
    if (d == NULL) {
        close(fd);
        return;
    }
    while ((de = readdir(d)) != NULL) {
        struct stat sb;

        if (!is_tmp_name(de->d_name))
            continue;
        if (fstatat(dirfd, de->d_name, &sb, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(sb.st_mode) &&
            sb.st_mtime < limit)
            unlinkat(dirfd, de->d_name, 0);
    }
    closedir(d);
}

struct state_store *state_store_open(const char *dir, char *err, size_t cap)
{
    struct state_store *st;

    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        errf(err, cap, "state dir %s: cannot create: %s", dir, strerror(errno));
        return NULL;
    }
    st = calloc(1, sizeof(*st));
    if (st == NULL || (st->dir = strdup(dir)) == NULL) {
        free(st);
        errf(err, cap, "state dir %s: out of memory", dir);
        return NULL;
    }
    st->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (st->dirfd < 0) {
        errf(err, cap, "state dir %s: %s", dir, strerror(errno));
        free(st->dir);
        free(st);
        return NULL;
    }
    remove_stale_tmp(st->dirfd);
    pthread_mutex_init(&st->cache_lock, NULL);
    return st;
}

void state_store_close(struct state_store **stp)
{
    struct state_store *st = *stp;

    if (st == NULL)
        return;
    for (size_t i = 0; i < STATE_CACHE_ENTRIES; i++)
        state_doc_free(&st->cache[i].doc);
    pthread_mutex_destroy(&st->cache_lock);
    close(st->dirfd);
    free(st->dir);
    free(st);
    *stp = NULL;
}

static bool same_file(const struct cache_entry *e, const struct stat *sb)
{
    return e->dev == sb->st_dev && e->ino == sb->st_ino && e->size == sb->st_size &&
           e->mtime.tv_sec == sb->st_mtim.tv_sec && e->mtime.tv_nsec == sb->st_mtim.tv_nsec &&
           e->ctime.tv_sec == sb->st_ctim.tv_sec && e->ctime.tv_nsec == sb->st_ctim.tv_nsec;
}

static void cache_drop_entry(struct state_store *st, struct cache_entry *e)
{
    if (e->doc != NULL)
        st->cache_msgs -= e->doc->nmsgs;
    state_doc_free(&e->doc);
    e->name[0] = '\0';
}

/* The cached document of file name as sb describes it, copied; NULL on a miss. A
 * stale entry of that name is dropped. */
static struct state_doc *cache_get(struct state_store *st, const char *name, const struct stat *sb)
{
    struct state_doc *copy = NULL;
    pthread_mutex_lock(&st->cache_lock);
    for (size_t i = 0; i < STATE_CACHE_ENTRIES; i++) {
        struct cache_entry *e = &st->cache[i];
        if (strcmp(e->name, name) != 0)
            continue;
        if (same_file(e, sb)) {
            copy = state_doc_dup(e->doc);
            e->used = ++st->cache_clock;
        } else {
            cache_drop_entry(st, e);
        }
        break;
    }
    pthread_mutex_unlock(&st->cache_lock);
    return copy;
}

/* Forgets file name (its document changed, or the file went aside). */
static void cache_drop(struct state_store *st, const char *name)
{
    pthread_mutex_lock(&st->cache_lock);
    for (size_t i = 0; i < STATE_CACHE_ENTRIES; i++)
        if (strcmp(st->cache[i].name, name) == 0)
            cache_drop_entry(st, &st->cache[i]);
    pthread_mutex_unlock(&st->cache_lock);
}

/* Keeps a copy of doc as the content of file name as sb describes it (best effort:
 * out of memory or a document too big simply leaves it uncached). */
static void cache_put(struct state_store *st, const char *name, const struct stat *sb,
                      const struct state_doc *doc)
{
    if (doc->nmsgs > STATE_CACHE_MSGS / 2 || strlen(name) >= sizeof(st->cache[0].name))
        return;
    struct state_doc *copy = state_doc_dup(doc);
    if (copy == NULL)
        return;
    pthread_mutex_lock(&st->cache_lock);
    struct cache_entry *slot = NULL;
    for (size_t i = 0; i < STATE_CACHE_ENTRIES; i++)
        if (strcmp(st->cache[i].name, name) == 0)
            cache_drop_entry(st, &st->cache[i]);
    /* Room: evict the least recently used until the new one fits. */
    for (;;) {
        struct cache_entry *oldest = NULL;
        slot = NULL;
        for (size_t i = 0; i < STATE_CACHE_ENTRIES; i++) {
            struct cache_entry *e = &st->cache[i];
            if (e->name[0] == '\0') {
                slot = slot != NULL ? slot : e;
                continue;
            }
            if (oldest == NULL || e->used < oldest->used)
                oldest = e;
        }
        if (slot != NULL && st->cache_msgs + copy->nmsgs <= STATE_CACHE_MSGS)
            break;
        if (oldest == NULL)
            break;
        cache_drop_entry(st, oldest);
    }
    if (slot != NULL && st->cache_msgs + copy->nmsgs <= STATE_CACHE_MSGS) {
        snprintf(slot->name, sizeof(slot->name), "%s", name);
        slot->dev = sb->st_dev;
        slot->ino = sb->st_ino;
        slot->size = sb->st_size;
        slot->mtime = sb->st_mtim;
        slot->ctime = sb->st_ctim;
        slot->doc = copy;
        slot->used = ++st->cache_clock;
        st->cache_msgs += copy->nmsgs;
        copy = NULL;
    }
    pthread_mutex_unlock(&st->cache_lock);
    state_doc_free(&copy);
}

/* Reads a whole regular file; *buf_r is malloc'd. */
static int read_file(struct state_store *st, int fd, const char *name, char **buf_r, size_t *len_r,
                     char *err, size_t cap)
{
    struct stat sb;
    size_t len = 0, alloc;
    char *buf;

    if (fstat(fd, &sb) != 0) {
        errf(err, cap, "%s/%s: %s", st->dir, name, strerror(errno));
        return -1;
    }
    if (!S_ISREG(sb.st_mode)) {
        errf(err, cap, "%s/%s: not a regular file", st->dir, name);
        return -1;
    }
    if (sb.st_size > DOC_SIZE_MAX) {
        errf(err, cap, "%s/%s: %lld bytes, more than a state document may have (%lld)", st->dir,
             name, (long long)sb.st_size, (long long)DOC_SIZE_MAX);
        return -1;
    }
    alloc = (size_t)sb.st_size + 1;
    buf = malloc(alloc);
    if (buf == NULL) {
        errf(err, cap, "%s/%s: out of memory", st->dir, name);
        return -1;
    }
    for (;;) {
        ssize_t r;

        if (len == alloc) {
            /* Documents are replaced by rename, never written in place, but be sure. */
            char *p = (off_t)alloc > DOC_SIZE_MAX ? NULL : realloc(buf, alloc * 2);

            if (p == NULL) {
                free(buf);
                errf(err, cap, "%s/%s: grew while being read", st->dir, name);
                return -1;
            }
            buf = p;
            alloc *= 2;
        }
        r = read(fd, buf + len, alloc - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            errf(err, cap, "%s/%s: read: %s", st->dir, name, strerror(errno));
            free(buf);
            return -1;
        }
        if (r == 0)
            break;
        len += (size_t)r;
    }
    *buf_r = buf;
    *len_r = len;
    return 0;
}

/* Whether a document that failed to parse says it is of a newer version. */
static bool is_newer_version(const char *buf, size_t len)
{
    json_t *root = json_loadb(buf, len, 0, NULL);
    json_t *v = json_object_get(root, "version");
    bool newer = json_is_integer(v) && json_integer_value(v) > STATE_VERSION;

    json_decref(root);
    return newer;
}

/* Renames name to "<base>.corrupt-<time>[-<n>]", never over an earlier one. */
static int move_aside(struct state_store *st, const char *base, const char *name, char *moved,
                      size_t mcap, char *err, size_t cap)
{
    long long now = (long long)time(NULL);
    int e = 0;

    for (int n = 0; n < CORRUPT_NAME_TRIES && e == 0; n++) {
        struct stat sb;

        if (n == 0)
            snprintf(moved, mcap, "%s.corrupt-%lld", base, now);
        else
            snprintf(moved, mcap, "%s.corrupt-%lld-%d", base, now, n);
        if (fstatat(st->dirfd, moved, &sb, AT_SYMLINK_NOFOLLOW) == 0)
            continue;
        if (errno != ENOENT) {
            e = errno;
        } else if (renameat(st->dirfd, name, st->dirfd, moved) != 0) {
            e = errno;
        } else {
            fsync(st->dirfd); /* the next save's folder fsync would cover it too */
            return 0;
        }
    }
    errf(err, cap, "%s/%s: cannot move the corrupt document aside: %s", st->dir, name,
         e != 0 ? strerror(e) : "no free name");
    return -1;
}

int state_store_load(struct state_store *st, const char *user, size_t len, struct state_doc **doc_r,
                     char *warn, size_t wcap, char *err, size_t ecap)
{
    char base[STATE_STORE_NAME_MAX + 1], name[STATE_STORE_NAME_MAX + SUFFIX_MAX];
    char moved[STATE_STORE_NAME_MAX + SUFFIX_MAX];
    struct state_doc *fresh, *doc = NULL;
    const char *why = NULL;
    char *buf = NULL;
    size_t blen = 0;
    int fd;

    *doc_r = NULL;
    if (warn != NULL && wcap > 0)
        warn[0] = '\0';
    if (memchr(user, '\0', len) != NULL) {
        errf(err, ecap, "user name holds a NUL byte");
        return -1;
    }
    /* Made first: it also checks that the name can be stored at all. */
    fresh = state_doc_new(user, len);
    if (fresh == NULL) {
        errf(err, ecap, "%s",
             errno != EINVAL ? "out of memory"
             : len == 0      ? "empty user name"
                             : "user name is not UTF-8");
        return -1;
    }
    state_store_file_name(user, len, base, sizeof(base));
    snprintf(name, sizeof(name), "%s.json", base);

    fd = openat(st->dirfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT) {
            *doc_r = fresh;
            return 0;
        }
        errf(err, ecap, "%s/%s: %s", st->dir, name,
             errno == ELOOP ? "a symbolic link (not followed)" : strerror(errno));
        state_doc_free(&fresh);
        return -1;
    }
    struct stat sb;
    bool have_sb = fstat(fd, &sb) == 0 && S_ISREG(sb.st_mode);
    if (have_sb && (doc = cache_get(st, name, &sb)) != NULL && strlen(doc->user) == len &&
        memcmp(doc->user, user, len) == 0) {
        close(fd);
        state_doc_free(&fresh);
        *doc_r = doc;
        return 0;
    }
    state_doc_free(&doc);
    if (read_file(st, fd, name, &buf, &blen, err, ecap) != 0) {
        close(fd);
        state_doc_free(&fresh);
        return -1;
    }
    close(fd);

    if (state_doc_parse(buf, blen, &doc, &why) == 0) {
        if (strlen(doc->user) == len && memcmp(doc->user, user, len) == 0) {
            free(buf);
            state_doc_free(&fresh);
            if (have_sb)
                cache_put(st, name, &sb, doc);
            *doc_r = doc;
            return 0;
        }
        why = "the document is another user's";
        state_doc_free(&doc);
    } else if (is_newer_version(buf, blen)) {
        errf(err, ecap, "%s/%s: %s", st->dir, name, why);
        free(buf);
        state_doc_free(&fresh);
        return -1;
    }
    free(buf);

    cache_drop(st, name);
    if (move_aside(st, base, name, moved, sizeof(moved), err, ecap) != 0) {
        state_doc_free(&fresh);
        return -1;
    }
    errf(warn, wcap, "%s/%s: %s; moved aside to %s, starting a new document", st->dir, name, why,
         moved);
    *doc_r = fresh;
    return 0;
}

static int write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t w = write(fd, buf, len);

        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -1;
        buf += w;
        len -= (size_t)w;
    }
    return 0;
}

int state_store_save(struct state_store *st, const struct state_doc *doc, char *err, size_t cap)
{
    char base[STATE_STORE_NAME_MAX + 1], name[STATE_STORE_NAME_MAX + SUFFIX_MAX];
    char tmp[STATE_STORE_NAME_MAX + SUFFIX_MAX];
    const char *step;
    size_t len;
    char *json;
    int fd, saved_errno;

    if (doc->user == NULL) {
        errf(err, cap, "state document without a user");
        return -1;
    }
    state_store_file_name(doc->user, strlen(doc->user), base, sizeof(base));
    snprintf(name, sizeof(name), "%s.json", base);
    json = state_doc_serialize(doc, &len);
    if (json == NULL) {
        errf(err, cap, "%s/%s: not saved: %s", st->dir, name,
             errno == EINVAL ? "the document breaks the state rules and would not load back"
                             : "out of memory");
        return -1;
    }
    snprintf(tmp, sizeof(tmp), "%s.tmp-%ld-%lu", base, (long)getpid(),
             atomic_fetch_add(&tmp_seq, 1));

    fd = openat(st->dirfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
        errf(err, cap, "%s/%s: create: %s", st->dir, tmp, strerror(errno));
        free(json);
        return -1;
    }
    /* The umask may have taken bits away; the mode is exactly 0600 whatever it is. */
    if (fchmod(fd, 0600) != 0)
        step = "chmod";
    else if (write_all(fd, json, len) != 0)
        step = "write";
    else if (fsync(fd) != 0)
        step = "fsync";
    else
        step = NULL;
    saved_errno = errno;
    if (close(fd) != 0 && step == NULL) {
        step = "close";
        saved_errno = errno;
    }
    free(json);
    if (step == NULL && renameat(st->dirfd, tmp, st->dirfd, name) != 0) {
        step = "rename";
        saved_errno = errno;
    }
    if (step != NULL) {
        unlinkat(st->dirfd, tmp, 0);
        errf(err, cap, "%s/%s: %s: %s", st->dir, tmp, step, strerror(saved_errno));
        return -1;
    }
    /* The next load of this user finds what was just written without reading it. */
    struct stat sb;
    if (fstatat(st->dirfd, name, &sb, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(sb.st_mode))
        cache_put(st, name, &sb, doc);
    else
        cache_drop(st, name);
    /* Without it, a power cut may bring the old directory entry back. */
    if (fsync(st->dirfd) != 0) {
        errf(err, cap, "%s: fsync after renaming %s: %s", st->dir, name, strerror(errno));
        return -1;
    }
    return 0;
}

enum state_lock_result state_store_lock(struct state_store *st, const char *user, size_t len,
                                        struct state_lock **lock_r, char *err, size_t cap)
{
    char base[STATE_STORE_NAME_MAX + 1], name[STATE_STORE_NAME_MAX + SUFFIX_MAX];
    struct state_lock *lock;
    struct stat sb;
    int fd, r;

    *lock_r = NULL;
    state_store_file_name(user, len, base, sizeof(base));
    snprintf(name, sizeof(name), "%s.lock", base);
    /* O_NONBLOCK: a FIFO planted under this name must not hang the open. */
    fd = openat(st->dirfd, name, O_RDWR | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0600);
    if (fd < 0) {
        errf(err, cap, "%s/%s: %s", st->dir, name,
             errno == ELOOP ? "a symbolic link (not followed)" : strerror(errno));
        return STATE_LOCK_ERROR;
    }
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        errf(err, cap, "%s/%s: not a regular file", st->dir, name);
        close(fd);
        return STATE_LOCK_ERROR;
    }
    do
        r = flock(fd, LOCK_EX | LOCK_NB);
    while (r != 0 && errno == EINTR);
    if (r != 0) {
        int e = errno;

        close(fd);
        if (e == EWOULDBLOCK)
            return STATE_LOCK_BUSY;
        errf(err, cap, "%s/%s: flock: %s", st->dir, name, strerror(e));
        return STATE_LOCK_ERROR;
    }
    lock = malloc(sizeof(*lock));
    if (lock == NULL) {
        close(fd);
        errf(err, cap, "out of memory");
        return STATE_LOCK_ERROR;
    }
    lock->fd = fd;
    *lock_r = lock;
    return STATE_LOCK_OK;
}

void state_store_unlock(struct state_lock **lockp)
{
    struct state_lock *lock = *lockp;

    if (lock == NULL)
        return;
    close(lock->fd);
    free(lock);
    *lockp = NULL;
}
