/* Tests of the file state store: hostile user names, load/save, corrupt documents, the
 * mailbox lock across processes, and documents that survive kill -9 during saves. */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "sha256.h"
#include "state_store.h"

#define CRASH_ROUNDS   200
#define CRASH_MAX_WAIT 2000 /* microseconds before the kill, at least */

static char root[64];  /* a fresh temporary folder per test */
static char dir[128];  /* the store's folder inside it */
static char err[512];  /* error text of the call under test */
static char warn[512]; /* warning text of the call under test */

/* rm -r of a test folder (plain recursion: nftw needs XSI). */
static void remove_tree(const char *path)
{
    struct dirent *de;
    struct stat sb;
    DIR *d;

    if (lstat(path, &sb) != 0)
        return;
    if (S_ISDIR(sb.st_mode) && (d = opendir(path)) != NULL) {
        while ((de = readdir(d)) != NULL) {
            char sub[1024];

            if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
                continue;
            snprintf(sub, sizeof(sub), "%s/%s", path, de->d_name);
            remove_tree(sub);
        }
        closedir(d);
    }
    remove(path);
}

static void setup(void)
{
    strcpy(root, "/tmp/popgate-state-test-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(root));
    snprintf(dir, sizeof(dir), "%s/state", root);
    err[0] = warn[0] = '\0';
}

static void teardown(void)
{
    remove_tree(root);
}

static struct state_store *open_store(void)
{
    struct state_store *st = state_store_open(dir, err, sizeof(err));

    if (st == NULL)
        ck_abort_msg("state_store_open: %s", err);
    return st;
}

static void write_file(const char *name, const char *text)
{
    char path[512];
    FILE *f;

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(fputs(text, f) >= 0, 1);
    ck_assert_int_eq(fclose(f), 0);
}

/* The entries of the store's folder whose names start with prefix. */
static int count_files(const char *prefix)
{
    struct dirent *de;
    DIR *d = opendir(dir);
    int n = 0;

    ck_assert_ptr_nonnull(d);
    while ((de = readdir(d)) != NULL)
        if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0 &&
            strncmp(de->d_name, prefix, strlen(prefix)) == 0)
            n++;
    closedir(d);
    return n;
}

static bool exists(const char *name)
{
    char path[512];
    struct stat sb;

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    return lstat(path, &sb) == 0;
}

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static struct state_doc *load(struct state_store *st, const char *user)
{
    struct state_doc *doc = NULL;

    if (state_store_load(st, user, strlen(user), &doc, warn, sizeof(warn), err, sizeof(err)) != 0)
        ck_abort_msg("load %s: %s", user, err);
    ck_assert_ptr_nonnull(doc);
    return doc;
}

static void hex(const uint8_t *d, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        sprintf(out + 2 * i, "%02x", d[i]);
}

START_TEST(test_sha256)
{
    static const struct {
        const char *in;
        const char *digest;
    } vectors[] = {
        {"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
        {"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
        {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
         "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
        {"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnop"
         "qrlmnopqrsmnopqrstnopqrstu",
         "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1"},
    };
    uint8_t d[SHA256_DIGEST_LEN];
    char text[2 * SHA256_DIGEST_LEN + 1];
    struct sha256 ctx;
    char chunk[1000];

    for (size_t i = 0; i < sizeof(vectors) / sizeof(vectors[0]); i++) {
        sha256_digest(vectors[i].in, strlen(vectors[i].in), d);
        hex(d, sizeof(d), text);
        ck_assert_str_eq(text, vectors[i].digest);
        /* Byte by byte: the block buffering gives the same digest. */
        sha256_init(&ctx);
        for (size_t k = 0; vectors[i].in[k] != '\0'; k++)
            sha256_update(&ctx, vectors[i].in + k, 1);
        sha256_final(&ctx, d);
        hex(d, sizeof(d), text);
        ck_assert_str_eq(text, vectors[i].digest);
    }
    /* One million 'a', in uneven pieces. */
    memset(chunk, 'a', sizeof(chunk));
    sha256_init(&ctx);
    for (size_t done = 0, step = 1; done < 1000000; step = step % 997 + 1) {
        size_t n = 1000000 - done < step ? 1000000 - done : step;

        sha256_update(&ctx, chunk, n);
        done += n;
    }
    sha256_final(&ctx, d);
    hex(d, sizeof(d), text);
    ck_assert_str_eq(text, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}
END_TEST

/* User names built to collide, escape or confuse; lengths given, so NUL counts. */
struct name {
    const char *s;
    size_t len;
};

#define N(lit)                                                                                     \
    {                                                                                              \
        lit, sizeof(lit) - 1                                                                       \
    }

static const struct name crafted[] = {
    N("alice@example.net"),
    N("bob"),
    N("Bob"),
    N("BOB"),
    N("bOb"),
    N("../x"),
    N("..\\x"),
    N("a/b"),
    N("a_2fb"),
    N("a%2fb"),
    N("/etc/passwd"),
    N("."),
    N(".."),
    N("..."),
    N(".hidden"),
    N("_2ehidden"),
    N("_"),
    N(""),
    N("a\0b"),
    N("a\0"),
    N("\0a"),
    N("a"),
    N("ab"),
    N("\0"),
    N("\0\0"),
    N("j\xc3\xb6rg"),
    N("J\xc3\xb6rg"),
    N("j\xf6rg"),
    N("\xe4\xbe\x8b@\xe4\xbe\x8b.jp"),
    N("bob.lock"),
    N("bob.json"),
    N("bob.tmp-1-2"),
    N("bob.corrupt-123"),
    N("~"),
    N("a b"),
    N("a\nb"),
    N("-rf"),
};

static size_t all_names(struct name *out, char *long1, char *long2, char *long3, char *edge200,
                        char *edge201)
{
    size_t n = 0;

    for (size_t i = 0; i < sizeof(crafted) / sizeof(crafted[0]); i++)
        out[n++] = crafted[i];
    /* 10 KB names: the same start, different ends, and one with escapes. */
    memset(long1, 'a', 10240);
    memcpy(long2, long1, 10240);
    long2[10239] = 'b';
    memset(long3, '/', 10240);
    out[n++] = (struct name){long1, 10240};
    out[n++] = (struct name){long2, 10240};
    out[n++] = (struct name){long3, 10240};
    out[n++] = (struct name){long1, 10239};
    /* Right at the limit: 200 escaped bytes stay short, 201 go long. */
    memset(edge200, 'e', 200);
    out[n++] = (struct name){edge200, 200};
    memset(edge201, 'e', 201);
    out[n++] = (struct name){edge201, 201};
    out[n++] = (struct name){edge201, 199};
    return n;
}

static void check_safe_name(const char *fn)
{
    size_t len = strlen(fn);

    ck_assert_uint_ge(len, 1);
    ck_assert_uint_le(len, STATE_STORE_NAME_MAX);
    ck_assert(fn[0] != '.');
    ck_assert_ptr_null(strchr(fn, '/'));
    for (size_t i = 0; i < len; i++)
        ck_assert_msg((fn[i] >= 'a' && fn[i] <= 'z') || (fn[i] >= '0' && fn[i] <= '9') ||
                          strchr("._~-", fn[i]) != NULL,
                      "byte 0x%02x in %s", (unsigned char)fn[i], fn);
    /* The longest suffix still makes a legal file name (NAME_MAX 255). */
    ck_assert_uint_le(len + strlen(".corrupt-99999999999-99"), 255);
}

START_TEST(test_file_names)
{
    static char long1[10241], long2[10241], long3[10241], e200[201], e201[202];
    static char names[64][STATE_STORE_NAME_MAX + 1];
    struct name list[64];
    size_t n = all_names(list, long1, long2, long3, e200, e201);
    char fn[STATE_STORE_NAME_MAX + 1];

    ck_assert_uint_le(n, 64);
    for (size_t i = 0; i < n; i++) {
        memset(names[i], '#', sizeof(names[i]));
        state_store_file_name(list[i].s, list[i].len, names[i], sizeof(names[i]));
        check_safe_name(names[i]);
        for (size_t j = 0; j < i; j++)
            ck_assert_msg(strcmp(names[i], names[j]) != 0, "names %zu and %zu collide: %s", i, j,
                          names[i]);
    }

    /* The readable form, for the operator's ls. */
    struct {
        const char *user;
        size_t len;
        const char *file;
    } expect[] = {
        {"alice@example.net", 17, "alice_40example.net"},
        {"Bob", 3, "_42ob"},
        {"../x", 4, "_2e._2fx"},
        {"a/b", 3, "a_2fb"},
        {".", 1, "_2e"},
        {"..", 2, "_2e."},
        {".hidden", 7, "_2ehidden"},
        {"", 0, "_"},
        {"_", 1, "_5f"},
        {"a\0b", 3, "a_00b"},
        {"j\xc3\xb6rg", 5, "j_c3_b6rg"},
        {"bob.lock", 8, "bob.lock"},
    };
    for (size_t i = 0; i < sizeof(expect) / sizeof(expect[0]); i++) {
        state_store_file_name(expect[i].user, expect[i].len, fn, sizeof(fn));
        ck_assert_str_eq(fn, expect[i].file);
    }

    /* Long names: 136 bytes of the escaped name, "~", the SHA-256 of the whole name. */
    uint8_t d[SHA256_DIGEST_LEN];
    char want[STATE_STORE_NAME_MAX + 1];

    state_store_file_name(long1, 10240, fn, sizeof(fn));
    sha256_digest(long1, 10240, d);
    memset(want, 'a', 136);
    want[136] = '~';
    hex(d, sizeof(d), want + 137);
    ck_assert_str_eq(fn, want);
    ck_assert_uint_eq(strlen(fn), 201);
    state_store_file_name(e200, 200, fn, sizeof(fn));
    ck_assert_uint_eq(strlen(fn), 200);
    ck_assert_ptr_null(strchr(fn, '~'));
    /* 67 escapes are 201 bytes: long, and cut in the middle of an escape. */
    state_store_file_name(long3, 67, fn, sizeof(fn));
    ck_assert_uint_eq(strlen(fn), 201);
    ck_assert_int_eq(fn[136], '~');
    state_store_file_name(long3, 66, fn, sizeof(fn));
    ck_assert_uint_eq(strlen(fn), 198);

    /* A buffer that is too small gets an empty string, not a cut name. */
    char small[10] = "xxxxxxxxx";
    state_store_file_name("alice", 5, small, sizeof(small));
    ck_assert_str_eq(small, "");
}
END_TEST

/* Every crafted name gets its own files, and nothing lands outside the folder. */
START_TEST(test_names_stay_inside)
{
    static char long1[10241], long2[10241], long3[10241], e200[201], e201[202];
    struct name list[64];
    size_t n = all_names(list, long1, long2, long3, e200, e201), stored = 0;
    struct state_store *st = open_store();
    struct state_lock *locks[64];
    struct dirent *de;
    DIR *d;

    for (size_t i = 0; i < n; i++) {
        struct state_doc *doc = NULL;
        int r;

        ck_assert_int_eq(state_store_lock(st, list[i].s, list[i].len, &locks[i], err, sizeof(err)),
                         STATE_LOCK_OK);
        r = state_store_load(st, list[i].s, list[i].len, &doc, warn, sizeof(warn), err,
                             sizeof(err));
        if (list[i].len == 0 || memchr(list[i].s, '\0', list[i].len) != NULL ||
            strcmp(list[i].s, "j\xf6rg") == 0) {
            /* Not storable: empty, NUL, not UTF-8. The lock file alone is fine. */
            ck_assert_int_eq(r, -1);
            ck_assert_ptr_null(doc);
            continue;
        }
        ck_assert_msg(r == 0, "load: %s", err);
        ck_assert_str_eq(warn, "");
        doc->first_login = (int64_t)i + 1;
        ck_assert_msg(state_store_save(st, doc, err, sizeof(err)) == 0, "save: %s", err);
        state_doc_free(&doc);
        stored++;
    }
    /* Each user reads back its own document. */
    for (size_t i = 0; i < n; i++) {
        struct state_doc *doc = NULL;

        if (state_store_load(st, list[i].s, list[i].len, &doc, warn, sizeof(warn), err,
                             sizeof(err)) != 0)
            continue;
        ck_assert_str_eq(warn, "");
        ck_assert_int_eq(doc->first_login, (int64_t)i + 1);
        state_doc_free(&doc);
    }
    for (size_t i = 0; i < n; i++)
        state_store_unlock(&locks[i]);

    /* Only regular files in the folder: one lock per name, one document per stored one. */
    ck_assert_int_eq(count_files(""), (int)(n + stored));
    d = opendir(dir);
    while ((de = readdir(d)) != NULL) {
        struct stat sb;
        char path[512];

        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        ck_assert(de->d_name[0] != '.');
        snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
        ck_assert_int_eq(lstat(path, &sb), 0);
        ck_assert(S_ISREG(sb.st_mode));
    }
    closedir(d);
    /* And next to the folder, nothing new. */
    d = opendir(root);
    while ((de = readdir(d)) != NULL)
        ck_assert(strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0 ||
                  strcmp(de->d_name, "state") == 0);
    closedir(d);
    state_store_close(&st);
    ck_assert_ptr_null(st);
}
END_TEST

START_TEST(test_open)
{
    struct state_store *st = open_store();
    struct stat sb;
    char bad[256];

    ck_assert_int_eq(stat(dir, &sb), 0);
    ck_assert(S_ISDIR(sb.st_mode));
    ck_assert_int_eq(sb.st_mode & 0777, 0700);
    state_store_close(&st);
    state_store_close(&st);
    st = open_store(); /* it exists now */
    state_store_close(&st);

    snprintf(bad, sizeof(bad), "%s/missing/state", root);
    ck_assert_ptr_null(state_store_open(bad, err, sizeof(err)));
    ck_assert_ptr_nonnull(strstr(err, "cannot create"));
    snprintf(bad, sizeof(bad), "%s/file", root);
    write_file("../file", "x");
    ck_assert_ptr_null(state_store_open(bad, err, sizeof(err)));
    ck_assert_ptr_nonnull(strstr(err, bad));
}
END_TEST

START_TEST(test_load_missing)
{
    struct state_store *st = open_store();
    struct state_doc *doc = load(st, "nobody@example.net");

    ck_assert_str_eq(warn, "");
    ck_assert_str_eq(doc->user, "nobody@example.net");
    ck_assert_int_eq(doc->version, STATE_VERSION);
    ck_assert_uint_eq(doc->nmsgs + doc->nfolders + doc->nlegacy, 0);
    ck_assert_int_eq(count_files(""), 0); /* loading writes nothing */
    state_doc_free(&doc);
    state_store_close(&st);
}
END_TEST

START_TEST(test_save_load_round_trip)
{
    struct state_store *st = open_store();
    struct state_doc *doc = load(st, "alice@example.net"), *back;
    struct state_msg *m;
    struct stat sb;
    char path[512];

    ck_assert_int_eq(state_doc_folder(doc, "INBOX"), 0);
    doc->folders[0].uidvalidity = 1600000000;
    doc->first_login = 1732871234;
    doc->last_login = 1732871299;
    m = state_doc_upsert(doc, 0, 5);
    strcpy(m->uidl, "000000055f5ede35");
    m->size = 1234;
    m->hidden = true;
    ck_assert_msg(state_store_save(st, doc, err, sizeof(err)) == 0, "%s", err);
    ck_assert_int_eq(count_files(""), 1);

    snprintf(path, sizeof(path), "%s/alice_40example.net.json", dir);
    ck_assert_int_eq(stat(path, &sb), 0);
    ck_assert_int_eq(sb.st_mode & 0777, 0600);

    back = load(st, "alice@example.net");
    ck_assert_str_eq(warn, "");
    ck_assert_int_eq(back->last_login, 1732871299);
    ck_assert_uint_eq(back->nmsgs, 1);
    ck_assert_str_eq(back->msgs[0].uidl, "000000055f5ede35");
    ck_assert(back->msgs[0].hidden);
    state_doc_free(&back);

    /* Saving again replaces it; still one file, still 0600 even under a loose umask. */
    mode_t old = umask(0);
    doc->last_login++;
    ck_assert_int_eq(state_store_save(st, doc, err, sizeof(err)), 0);
    umask(0277);
    doc->last_login++;
    ck_assert_int_eq(state_store_save(st, doc, err, sizeof(err)), 0);
    umask(old);
    ck_assert_int_eq(stat(path, &sb), 0);
    ck_assert_int_eq(sb.st_mode & 0777, 0600);
    ck_assert_int_eq(count_files(""), 1);
    back = load(st, "alice@example.net");
    ck_assert_int_eq(back->last_login, 1732871301);
    state_doc_free(&back);

    /* A document that would not load back is not written. */
    strcpy(doc->msgs[0].uidl, "bad uidl");
    ck_assert_int_eq(state_store_save(st, doc, err, sizeof(err)), -1);
    ck_assert_ptr_nonnull(strstr(err, "would not load back"));
    ck_assert_int_eq(count_files(""), 1);
    back = load(st, "alice@example.net");
    ck_assert_str_eq(back->msgs[0].uidl, "000000055f5ede35");
    state_doc_free(&back);
    state_doc_free(&doc);
    state_store_close(&st);
}
END_TEST

/* Writes text as name's file by a temporary file and rename, as another process would. */
static void replace_file(const char *name, const char *text)
{
    char path[512], tmp[520];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    snprintf(tmp, sizeof(tmp), "%s.other", path);
    FILE *f = fopen(tmp, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
    ck_assert_int_eq(rename(tmp, path), 0);
}

/* Loads of an unchanged file come from the store's cache: always a copy of what the file
 * holds, never what a caller did to an earlier copy, and never stale after another
 * process (or a second store) replaced the file. */
START_TEST(test_cache_follows_the_file)
{
    struct state_store *st = open_store(), *other = open_store();
    struct state_doc *doc = load(st, "carol"), *a, *b;
    ck_assert_int_eq(state_doc_folder(doc, "INBOX"), 0);
    struct state_msg *m = state_doc_upsert(doc, 0, 7);
    strcpy(m->uidl, "seven");
    ck_assert_int_eq(state_store_save(st, doc, err, sizeof(err)), 0);

    a = load(st, "carol");
    ck_assert_str_eq(a->msgs[0].uidl, "seven");
    strcpy(a->msgs[0].uidl, "changed");
    a->last_login = 99;
    b = load(st, "carol");
    ck_assert_str_eq(b->msgs[0].uidl, "seven");
    ck_assert_int_eq(b->last_login, 0);
    ck_assert_ptr_ne(a->msgs, b->msgs);
    state_doc_free(&a);
    state_doc_free(&b);

    /* Another store (another worker) saves: the first sees the new document. */
    a = load(other, "carol");
    strcpy(a->msgs[0].uidl, "eight");
    ck_assert_int_eq(state_store_save(other, a, err, sizeof(err)), 0);
    state_doc_free(&a);
    b = load(st, "carol");
    ck_assert_str_eq(b->msgs[0].uidl, "eight");
    state_doc_free(&b);

    /* A file of the same size written by someone else is read again too. */
    replace_file("carol.json", "{\"version\": 1, \"user\": \"carol\", \"folders\": "
                               "[{\"name\": \"INBOX\", \"uidvalidity\": 0}], \"messages\": "
                               "[{\"f\": 0, \"uid\": 7, \"uidl\": \"nine!\", \"size\": 0}]}");
    b = load(st, "carol");
    ck_assert_str_eq(b->msgs[0].uidl, "nine!");
    state_doc_free(&b);

    /* A corrupt replacement is moved aside, not served from the cache. */
    replace_file("carol.json", "{ not json");
    b = load(st, "carol");
    ck_assert_uint_eq(b->nmsgs, 0);
    ck_assert_str_ne(warn, "");
    state_doc_free(&b);

    state_doc_free(&doc);
    state_store_close(&other);
    state_store_close(&st);
}
END_TEST

START_TEST(test_corrupt_moved_aside)
{
    struct state_store *st = open_store();
    struct state_doc *doc;
    char path[512], text[64];
    FILE *f;

    write_file("carol.json", "{\"version\":1,\"user\":\"carol\",\"messages\":[{\"f\":");
    doc = load(st, "carol");
    ck_assert_ptr_nonnull(strstr(warn, "carol.json: 1:"));
    ck_assert_ptr_nonnull(strstr(warn, "invalid JSON"));
    ck_assert_ptr_nonnull(strstr(warn, "moved aside to carol.corrupt-"));
    ck_assert_ptr_nonnull(strstr(warn, "starting a new document"));
    ck_assert_str_eq(doc->user, "carol");
    ck_assert_uint_eq(doc->nmsgs, 0);
    state_doc_free(&doc);
    ck_assert(!exists("carol.json"));
    ck_assert_int_eq(count_files("carol.corrupt-"), 1);

    /* The bytes are kept for a post-mortem. */
    const char *moved = strstr(warn, "carol.corrupt-");
    snprintf(path, sizeof(path), "%s/%.*s", dir, (int)strcspn(moved, ","), moved);
    f = fopen(path, "r");
    ck_assert_ptr_nonnull(f);
    ck_assert_ptr_nonnull(fgets(text, sizeof(text), f));
    fclose(f);
    ck_assert_ptr_nonnull(strstr(text, "\"user\":\"carol\""));

    /* A second corrupt document in the same second does not replace the first. */
    write_file("carol.json", "\x01garbage");
    doc = load(st, "carol");
    ck_assert_ptr_nonnull(strstr(warn, "moved aside"));
    state_doc_free(&doc);
    ck_assert_int_eq(count_files("carol.corrupt-"), 2);

    /* Valid JSON that breaks the rules is corrupt too. */
    write_file("carol.json", "{\"version\":1,\"user\":\"carol\",\"messages\":[{\"f\":0}]}");
    doc = load(st, "carol");
    ck_assert_ptr_nonnull(strstr(warn, "messages[0].f: folder 0 out of range"));
    state_doc_free(&doc);
    write_file("carol.json", "");
    doc = load(st, "carol");
    ck_assert_ptr_nonnull(strstr(warn, "moved aside"));
    state_doc_free(&doc);
    ck_assert_int_eq(count_files("carol.corrupt-"), 4);

    /* The session goes on: the new document saves and loads. */
    ck_assert_int_eq(state_store_save(st, doc = load(st, "carol"), err, sizeof(err)), 0);
    state_doc_free(&doc);
    doc = load(st, "carol");
    ck_assert_str_eq(warn, "");
    state_doc_free(&doc);
    state_store_close(&st);
}
END_TEST

START_TEST(test_user_mismatch)
{
    struct state_store *st = open_store();
    struct state_doc *doc;

    /* Dave's name maps to dave.json; a document there that says "mallory" is not his. */
    write_file("dave.json", "{\"version\":1,\"user\":\"mallory\",\"first_login\":5}");
    doc = load(st, "dave");
    ck_assert_ptr_nonnull(strstr(warn, "dave.json: the document is another user's"));
    ck_assert_str_eq(doc->user, "dave");
    ck_assert_int_eq(doc->first_login, 0);
    state_doc_free(&doc);
    ck_assert_int_eq(count_files("dave.corrupt-"), 1);

    /* Case matters: "Dave" has a document of its own. */
    write_file("dave.json", "{\"version\":1,\"user\":\"Dave\"}");
    doc = load(st, "dave");
    ck_assert_ptr_nonnull(strstr(warn, "another user's"));
    state_doc_free(&doc);
    state_store_close(&st);
}
END_TEST

START_TEST(test_newer_version_kept)
{
    static const char v2[] = "{\"version\":2,\"user\":\"erin\",\"whatever\":{}}";
    struct state_store *st = open_store();
    struct state_doc *doc = NULL;

    write_file("erin.json", v2);
    ck_assert_int_eq(state_store_load(st, "erin", 4, &doc, warn, sizeof(warn), err, sizeof(err)),
                     -1);
    ck_assert_ptr_null(doc);
    ck_assert_ptr_nonnull(strstr(err, "erin.json: version: 2 is newer than this popgate"));
    ck_assert(exists("erin.json"));
    ck_assert_int_eq(count_files("erin.corrupt-"), 0);
    state_store_close(&st);
}
END_TEST

START_TEST(test_bad_user_names)
{
    struct state_store *st = open_store();
    struct state_doc *doc = NULL;

    ck_assert_int_eq(state_store_load(st, "a\0b", 3, &doc, warn, sizeof(warn), err, sizeof(err)),
                     -1);
    ck_assert_ptr_nonnull(strstr(err, "NUL"));
    ck_assert_int_eq(state_store_load(st, "\xff", 1, &doc, warn, sizeof(warn), err, sizeof(err)),
                     -1);
    ck_assert_ptr_nonnull(strstr(err, "UTF-8"));
    ck_assert_ptr_null(doc);
    state_store_close(&st);
}
END_TEST

START_TEST(test_symlinks_not_followed)
{
    struct state_store *st = open_store();
    struct state_doc *doc = NULL;
    struct state_lock *lock = NULL;
    char target[512], link_path[512], text[64];
    FILE *f;

    snprintf(target, sizeof(target), "%s/target", root);
    f = fopen(target, "w");
    fputs("precious", f);
    fclose(f);
    snprintf(link_path, sizeof(link_path), "%s/frank.json", dir);
    ck_assert_int_eq(symlink(target, link_path), 0);
    snprintf(link_path, sizeof(link_path), "%s/frank.lock", dir);
    ck_assert_int_eq(symlink(target, link_path), 0);

    ck_assert_int_eq(state_store_load(st, "frank", 5, &doc, warn, sizeof(warn), err, sizeof(err)),
                     -1);
    ck_assert_ptr_nonnull(strstr(err, "symbolic link"));
    ck_assert_int_eq(state_store_lock(st, "frank", 5, &lock, err, sizeof(err)), STATE_LOCK_ERROR);
    ck_assert_ptr_null(lock);
    ck_assert_ptr_nonnull(strstr(err, "symbolic link"));

    /* A save replaces the link itself; the file it pointed at is untouched. */
    doc = state_doc_new("frank", 5);
    ck_assert_int_eq(state_store_save(st, doc, err, sizeof(err)), 0);
    state_doc_free(&doc);
    f = fopen(target, "r");
    ck_assert_ptr_nonnull(fgets(text, sizeof(text), f));
    fclose(f);
    ck_assert_str_eq(text, "precious");
    doc = load(st, "frank");
    state_doc_free(&doc);

    /* Not a regular file: refused, not read. */
    snprintf(link_path, sizeof(link_path), "%s/gina.json", dir);
    ck_assert_int_eq(mkfifo(link_path, 0600), 0);
    ck_assert_int_eq(state_store_load(st, "gina", 4, &doc, warn, sizeof(warn), err, sizeof(err)),
                     -1);
    ck_assert_ptr_nonnull(strstr(err, "not a regular file"));
    snprintf(link_path, sizeof(link_path), "%s/gina.lock", dir);
    ck_assert_int_eq(mkfifo(link_path, 0600), 0);
    ck_assert_int_eq(state_store_lock(st, "gina", 4, &lock, err, sizeof(err)), STATE_LOCK_ERROR);
    state_store_close(&st);
}
END_TEST

START_TEST(test_save_failure_cleans_up)
{
    struct state_store *st = open_store();
    struct state_doc *doc = state_doc_new("hank", 4);
    char path[512];

    /* A non-empty folder where the document goes: the rename fails. */
    snprintf(path, sizeof(path), "%s/hank.json", dir);
    ck_assert_int_eq(mkdir(path, 0700), 0);
    write_file("hank.json/x", "x");
    ck_assert_int_eq(state_store_save(st, doc, err, sizeof(err)), -1);
    ck_assert_ptr_nonnull(strstr(err, "rename"));
    ck_assert_int_eq(count_files("hank.tmp-"), 0);
    state_doc_free(&doc);
    state_store_close(&st);
}
END_TEST

START_TEST(test_stale_tmp_files)
{
    struct state_store *st = open_store();
    struct timespec old[2] = {{time(NULL) - 7200, 0}, {time(NULL) - 7200, 0}};
    static const char *const names[] = {"ivy.tmp-1-2", "ivy.tmp-3-4", "ivy.json",
                                        "ivy.tmp-x-1", "ivy.tmp-1-",  "ivy.tmp-1-2.json"};
    struct state_doc *doc;
    char path[512];

    state_store_close(&st);
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        write_file(names[i], "{\"version\":1,\"user\":\"ivy\",\"first_login\":7}");
        snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
        if (i != 1) /* ivy.tmp-3-4 is fresh: a save may be writing it right now */
            ck_assert_int_eq(utimensat(AT_FDCWD, path, old, 0), 0);
    }
    st = open_store();
    ck_assert(!exists("ivy.tmp-1-2"));
    ck_assert(exists("ivy.tmp-3-4"));
    ck_assert(exists("ivy.json"));
    ck_assert(exists("ivy.tmp-x-1"));
    ck_assert(exists("ivy.tmp-1-"));
    ck_assert(exists("ivy.tmp-1-2.json"));

    /* Load reads the document, never a temporary file. */
    unlink(strcat(strcpy(path, dir), "/ivy.json"));
    doc = load(st, "ivy");
    ck_assert_str_eq(warn, "");
    ck_assert_int_eq(doc->first_login, 0);
    state_doc_free(&doc);
    state_store_close(&st);
}
END_TEST

START_TEST(test_lock_same_process)
{
    struct state_store *st = open_store();
    struct state_lock *a = NULL, *b = NULL, *c = NULL, *d = NULL;

    ck_assert_int_eq(state_store_lock(st, "jack", 4, &a, err, sizeof(err)), STATE_LOCK_OK);
    ck_assert_ptr_nonnull(a);
    ck_assert_int_eq(state_store_lock(st, "jack", 4, &b, err, sizeof(err)), STATE_LOCK_BUSY);
    ck_assert_ptr_null(b);
    /* Other mailboxes, case variants included, are free. */
    ck_assert_int_eq(state_store_lock(st, "Jack", 4, &c, err, sizeof(err)), STATE_LOCK_OK);
    ck_assert_int_eq(state_store_lock(st, "jack2", 5, &d, err, sizeof(err)), STATE_LOCK_OK);
    state_store_unlock(&a);
    ck_assert_ptr_null(a);
    state_store_unlock(&a);
    ck_assert_int_eq(state_store_lock(st, "jack", 4, &b, err, sizeof(err)), STATE_LOCK_OK);
    /* A second store on the same folder (another worker) sees the lock too. */
    struct state_store *st2 = open_store();
    ck_assert_int_eq(state_store_lock(st2, "jack", 4, &a, err, sizeof(err)), STATE_LOCK_BUSY);
    state_store_unlock(&b);
    ck_assert_int_eq(state_store_lock(st2, "jack", 4, &a, err, sizeof(err)), STATE_LOCK_OK);
    state_store_unlock(&a);
    state_store_unlock(&c);
    state_store_unlock(&d);
    state_store_close(&st2);
    state_store_close(&st);
}
END_TEST

START_TEST(test_lock_released_when_holder_dies)
{
    struct state_store *st = open_store();
    struct state_lock *lock = NULL;
    int ready[2], status;
    char c;
    pid_t pid;

    ck_assert_int_eq(pipe(ready), 0);
    pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        struct state_lock *held = NULL;

        close(ready[0]);
        if (state_store_lock(st, "kate", 4, &held, err, sizeof(err)) != STATE_LOCK_OK)
            _exit(1);
        (void)!write(ready[1], "L", 1);
        for (;;)
            pause();
    }
    close(ready[1]);
    ck_assert_int_eq(read(ready[0], &c, 1), 1);
    close(ready[0]);
    ck_assert_int_eq(state_store_lock(st, "kate", 4, &lock, err, sizeof(err)), STATE_LOCK_BUSY);
    kill(pid, SIGKILL);
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    ck_assert_int_eq(state_store_lock(st, "kate", 4, &lock, err, sizeof(err)), STATE_LOCK_OK);
    state_store_unlock(&lock);
    state_store_close(&st);
}
END_TEST

/* The child: one more message per save, forever, until killed. Reports each save. */
static void crash_child(struct state_store *st, const char *user, int report)
{
    struct state_doc *doc = NULL;

    if (state_store_load(st, user, strlen(user), &doc, warn, sizeof(warn), err, sizeof(err)) != 0 ||
        warn[0] != '\0')
        _exit(3);
    if (state_doc_folder(doc, "INBOX") != 0)
        _exit(4);
    for (;;) {
        uint32_t uid = doc->nmsgs == 0 ? 1 : doc->msgs[doc->nmsgs - 1].uid + 1;
        struct state_msg *m = state_doc_upsert(doc, 0, uid);

        if (m == NULL)
            _exit(5);
        uidl_default(m->uidl, uid, 42);
        m->size = uid * 100;
        doc->last_login = uid;
        if (state_store_save(st, doc, err, sizeof(err)) != 0)
            _exit(6);
        (void)!write(report, "s", 1);
    }
}

/* How long a child takes to its first save, and per save after that. */
static void measure_child(struct state_store *st, long *first_us, long *save_us)
{
    int report[2], status;
    double t0, t1, t2;
    char c;
    pid_t pid;

    ck_assert_int_eq(pipe(report), 0);
    t0 = now_s();
    pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        close(report[0]);
        crash_child(st, "calibrate", report[1]);
    }
    close(report[1]);
    ck_assert_int_eq(read(report[0], &c, 1), 1);
    t1 = now_s();
    for (int i = 0; i < 5; i++)
        ck_assert_int_eq(read(report[0], &c, 1), 1);
    t2 = now_s();
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    close(report[0]);
    *first_us = (long)((t1 - t0) * 1e6);
    *save_us = (long)((t2 - t1) * 1e6 / 5);
}

/* The document on disk, read as it is: NULL when absent. Any other failure fails the test. */
static struct state_doc *read_crash_doc(void)
{
    struct state_doc *doc = NULL;
    const char *error = NULL;
    char path[512], *buf;
    struct stat sb;
    ssize_t n;
    int fd;

    snprintf(path, sizeof(path), "%s/crash.json", dir);
    fd = open(path, O_RDONLY);
    if (fd < 0) {
        ck_assert_int_eq(errno, ENOENT);
        return NULL;
    }
    ck_assert_int_eq(fstat(fd, &sb), 0);
    buf = malloc((size_t)sb.st_size + 1);
    ck_assert_ptr_nonnull(buf);
    n = read(fd, buf, (size_t)sb.st_size + 1);
    close(fd);
    ck_assert_int_eq(n, sb.st_size);
    if (state_doc_parse(buf, (size_t)n, &doc, &error) != 0)
        ck_abort_msg("torn document after kill -9: %s", error);
    free(buf);
    return doc;
}

START_TEST(test_kill_during_saves)
{
    struct state_store *st = open_store();
    size_t saves = 0, last_n = 0, tmp_left;
    int report[2];
    struct state_doc *doc;

    /*
     * Kills must land before, during and after renames. A child needs a while to
     * start and to finish its first save (fsync), longer than CRASH_MAX_WAIT on a
     * slow disk: then the window is widened to that time plus three more saves.
     */
    long first_us, save_us, window_us;
    unsigned seed = (unsigned)time(NULL);

    measure_child(st, &first_us, &save_us);
    window_us = first_us + 3 * save_us;
    if (window_us < CRASH_MAX_WAIT)
        window_us = CRASH_MAX_WAIT;

    srand(seed);
    ck_assert_int_eq(pipe(report), 0);
    ck_assert_int_eq(fcntl(report[0], F_SETFL, O_NONBLOCK), 0);
    ck_assert_int_eq(fcntl(report[1], F_SETFL, O_NONBLOCK), 0);
    for (int round = 0; round < CRASH_ROUNDS; round++) {
        int status;
        char buf[4096];
        ssize_t r;
        pid_t pid = fork();

        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
            close(report[0]);
            crash_child(st, "crash", report[1]);
        }
        usleep((useconds_t)(rand() % (window_us + 1)));
        kill(pid, SIGKILL);
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        ck_assert_msg(WIFSIGNALED(status), "child exited with %d", WEXITSTATUS(status));
        while ((r = read(report[0], buf, sizeof(buf))) > 0)
            saves += (size_t)r;

        doc = read_crash_doc();
        if (doc == NULL) {
            ck_assert_msg(saves == 0 && last_n == 0, "document gone after %zu saves", saves);
            continue;
        }
        /* Old or new, never torn: messages 1..n, each as the child wrote it. */
        ck_assert_str_eq(doc->user, "crash");
        ck_assert_uint_ge(doc->nmsgs, last_n);
        ck_assert_uint_ge(doc->nmsgs, 1);
        for (size_t i = 0; i < doc->nmsgs; i++) {
            ck_assert_uint_eq(doc->msgs[i].uid, i + 1);
            ck_assert_uint_eq(doc->msgs[i].size, (i + 1) * 100);
        }
        ck_assert_int_eq(doc->last_login, (int64_t)doc->nmsgs);
        last_n = doc->nmsgs;
        state_doc_free(&doc);
    }
    close(report[0]);
    close(report[1]);
    tmp_left = (size_t)count_files("crash.tmp-");
    printf("state store kill -9: %d rounds (seed %u; a child's first save after %ld us, then "
           "one per %ld us; kill within 0..%ld us): %zu saves reported, %zu messages on disk, "
           "%zu temporary files left\n",
           CRASH_ROUNDS, seed, first_us, save_us, window_us, saves, last_n, tmp_left);
    ck_assert_uint_gt(saves, 0);
    ck_assert_uint_ge(last_n, saves); /* the child may die between rename and report */

    /* The store loads it without a warning, whatever temporary files lie around. */
    doc = load(st, "crash");
    ck_assert_str_eq(warn, "");
    ck_assert_uint_eq(doc->nmsgs, last_n);
    state_doc_free(&doc);
    state_store_close(&st);
}
END_TEST

static Suite *state_store_suite(void)
{
    Suite *s = suite_create("state_store");
    TCase *names = tcase_create("names");
    TCase *files = tcase_create("files");
    TCase *locks = tcase_create("locks");
    TCase *crash = tcase_create("crash");

    tcase_add_test(names, test_sha256);
    tcase_add_test(names, test_file_names);
    suite_add_tcase(s, names);

    tcase_add_checked_fixture(files, setup, teardown);
    tcase_add_test(files, test_names_stay_inside);
    tcase_add_test(files, test_open);
    tcase_add_test(files, test_load_missing);
    tcase_add_test(files, test_cache_follows_the_file);
    tcase_add_test(files, test_save_load_round_trip);
    tcase_add_test(files, test_corrupt_moved_aside);
    tcase_add_test(files, test_user_mismatch);
    tcase_add_test(files, test_newer_version_kept);
    tcase_add_test(files, test_bad_user_names);
    tcase_add_test(files, test_symlinks_not_followed);
    tcase_add_test(files, test_save_failure_cleans_up);
    tcase_add_test(files, test_stale_tmp_files);
    tcase_set_timeout(files, 30);
    suite_add_tcase(s, files);

    tcase_add_checked_fixture(locks, setup, teardown);
    tcase_add_test(locks, test_lock_same_process);
    tcase_add_test(locks, test_lock_released_when_holder_dies);
    suite_add_tcase(s, locks);

    tcase_add_checked_fixture(crash, setup, teardown);
    tcase_add_test(crash, test_kill_during_saves);
    tcase_set_timeout(crash, 120);
    suite_add_tcase(s, crash);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(state_store_suite());
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
