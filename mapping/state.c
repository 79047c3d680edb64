/* The state document owns one user's POP3 memory (shown UIDLs, hidden messages, real sizes,
 * imported legacy UIDLs) and its JSON form. */
#include "state.h"

#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* folder indexes are uint16_t. */
#define STATE_FOLDERS_MAX 65536
/* msgid_hash on the wire: 16 lower-case hex digits. */
#define MSGID_HEX_LEN 16
/* JSON integers must load back through jansson's json_int_t (long long). */
#define STATE_NUMBER_MAX ((uint64_t)INT64_MAX)
/* Smallest msgs allocation made by upsert; from there it doubles. */
#define MSGS_MIN_ALLOC 16
/* Room for one error: a key path, a short reason and a few numbers. */
#define PARSE_ERROR_MAX 256
/* "messages[123456].real_size" and the like. */
#define ENTRY_PATH_MAX 64
/* Unknown keys are quoted in errors, cut to this many bytes. */
#define KEY_QUOTE_MAX 40

/* The store loads documents on a worker thread while the loop may parse too. */
static _Thread_local char parse_error[PARSE_ERROR_MAX];

static const char *set_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static const char *set_error(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(parse_error, sizeof(parse_error), fmt, ap);
    va_end(ap);
    return parse_error;
}

/* The key as printable ASCII, cut short: error text never carries raw input bytes. */
static const char *quote_key(const char *key, size_t len, char out[KEY_QUOTE_MAX + 4])
{
    size_t i;

    for (i = 0; i < len && i < KEY_QUOTE_MAX; i++) {
        unsigned char c = (unsigned char)key[i];
        out[i] = c >= 0x20 && c < 0x7f && c != '"' ? (char)c : '?';
    }
    if (i < len) {
        memcpy(out + i, "...", 3);
        i += 3;
    }
    out[i] = '\0';
    return out;
}

/*
 * UTF-8 exactly as jansson accepts it (no overlong forms, no surrogates, nothing
 * above U+10FFFF), so that every string we write loads back. NUL is refused too:
 * jansson rejects "\u0000" unless asked not to.
 */
static bool is_utf8(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;

    while (i < len) {
        unsigned char c = p[i];
        uint32_t cp;
        size_t n;

        if (c == 0)
            return false;
        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xc2 && c <= 0xdf) {
            n = 2;
            cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            n = 3;
            cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            n = 4;
            cp = c & 0x07;
        } else {
            return false;
        }
        if (len - i < n)
            return false;
        for (size_t k = 1; k < n; k++) {
            if ((p[i + k] & 0xc0) != 0x80)
                return false;
            cp = cp << 6 | (p[i + k] & 0x3f);
        }
        if ((n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) || cp > 0x10ffff ||
            (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += n;
    }
    return true;
}

/* RFC 1939 unique-id: 1..70 characters of 0x21..0x7E. */
static bool is_uidl(const char *s, size_t len)
{
    if (len < 1 || len > UIDL_MAX)
        return false;
    for (size_t i = 0; i < len; i++)
        if (s[i] < 0x21 || s[i] > 0x7e)
            return false;
    return true;
}

/* Length of a NUL-terminated string in a fixed array, or cap when unterminated. */
static size_t bounded_len(const char *s, size_t cap)
{
    const char *nul = memchr(s, '\0', cap);

    return nul != NULL ? (size_t)(nul - s) : cap;
}

static uint64_t msg_key(uint16_t folder, uint32_t uid)
{
    return (uint64_t)folder << 32 | uid;
}

static int cmp_msg(const void *a, const void *b)
{
    uint64_t ka =
        msg_key(((const struct state_msg *)a)->folder, ((const struct state_msg *)a)->uid);
    uint64_t kb =
        msg_key(((const struct state_msg *)b)->folder, ((const struct state_msg *)b)->uid);

    return ka < kb ? -1 : ka > kb;
}

static int cmp_folder_name(const void *a, const void *b)
{
    return strcmp((*(const struct state_folder *const *)a)->name,
                  (*(const struct state_folder *const *)b)->name);
}

/* Returns 1 when two folders share a name, 0 when not, -1 when out of memory. */
static int has_duplicate_folder(const struct state_folder *folders, size_t n)
{
    const struct state_folder **sorted;
    int dup = 0;

    if (n < 2)
        return 0;
    sorted = malloc(n * sizeof(*sorted));
    if (sorted == NULL)
        return -1;
    for (size_t i = 0; i < n; i++)
        sorted[i] = &folders[i];
    qsort(sorted, n, sizeof(*sorted), cmp_folder_name);
    for (size_t i = 1; i < n && !dup; i++)
        dup = strcmp(sorted[i - 1]->name, sorted[i]->name) == 0;
    free(sorted);
    return dup;
}

/* Index of the first message whose key is >= key. */
static size_t lower_bound(const struct state_doc *doc, uint64_t key)
{
    size_t lo = 0, hi = doc->nmsgs;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;

        if (msg_key(doc->msgs[mid].folder, doc->msgs[mid].uid) < key)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

struct state_doc *state_doc_new(const char *user, size_t user_len)
{
    struct state_doc *doc;

    if (user_len == 0 || !is_utf8(user, user_len)) {
        errno = EINVAL;
        return NULL;
    }
    doc = calloc(1, sizeof(*doc));
    if (doc == NULL)
        return NULL;
    doc->version = STATE_VERSION;
    doc->user = malloc(user_len + 1);
    if (doc->user == NULL) {
        free(doc);
        errno = ENOMEM;
        return NULL;
    }
    memcpy(doc->user, user, user_len);
    doc->user[user_len] = '\0';
    return doc;
}

void state_doc_free(struct state_doc **docp)
{
    struct state_doc *doc = *docp;

    if (doc == NULL)
        return;
    free(doc->user);
    free(doc->folders);
    free(doc->msgs);
    free(doc->legacy);
    free(doc);
    *docp = NULL;
}

/* A copy of n elements of size each, or NULL (also for n == 0). */
static void *memdup_n(const void *src, size_t n, size_t size, bool *failed)
{
    if (n == 0 || src == NULL)
        return NULL;
    void *p = malloc(n * size);
    if (p == NULL)
        *failed = true;
    else
        memcpy(p, src, n * size);
    return p;
}

struct state_doc *state_doc_dup(const struct state_doc *doc)
{
    struct state_doc *d = malloc(sizeof(*d));
    if (d == NULL)
        return NULL;
    bool failed = false;
    *d = *doc;
    d->user = doc->user != NULL ? strdup(doc->user) : NULL;
    failed = doc->user != NULL && d->user == NULL;
    d->folders = memdup_n(doc->folders, doc->nfolders, sizeof(*doc->folders), &failed);
    d->msgs = memdup_n(doc->msgs, doc->nmsgs, sizeof(*doc->msgs), &failed);
    d->msgs_alloc = d->msgs != NULL ? doc->nmsgs : 0;
    d->legacy = memdup_n(doc->legacy, doc->nlegacy, sizeof(*doc->legacy), &failed);
    if (failed) {
        state_doc_free(&d);
        return NULL;
    }
    return d;
}

/* ---- parsing ---- */

/* A JSON integer in [min, max], or an error naming path. */
static const char *get_int(const json_t *v, long long min, long long max, long long *out,
                           const char *path)
{
    long long n;

    if (!json_is_integer(v))
        return set_error("%s: not an integer", path);
    n = json_integer_value(v);
    if (n < min || n > max)
        return set_error("%s: %lld out of range %lld..%lld", path, n, min, max);
    *out = n;
    return NULL;
}

static bool parse_msgid(const char *s, size_t len, uint64_t *out)
{
    uint64_t v = 0;

    if (len != MSGID_HEX_LEN)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];

        if (c >= '0' && c <= '9')
            v = v << 4 | (uint64_t)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v = v << 4 | (uint64_t)(c - 'a' + 10);
        else
            return false;
    }
    *out = v;
    return true;
}

static bool int_in(const json_t *v, long long min, long long max, long long *out)
{
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max)
        return false;
    *out = json_integer_value(v);
    return true;
}

/* "<entry>.<key>" as a number in [min, max], or the error naming it. */
static const char *entry_int(const json_t *v, long long min, long long max, long long *out,
                             const char *entry, const char *key)
{
    char path[ENTRY_PATH_MAX];

    if (int_in(v, min, max, out))
        return NULL;
    snprintf(path, sizeof(path), "%s.%s", entry, key);
    return get_int(v, min, max, out, path);
}

static const char *parse_uidl_value(const json_t *v, char out[UIDL_MAX + 1], const char *entry)
{
    if (!json_is_string(v))
        return set_error("%s.uidl: not a string", entry);
    if (!is_uidl(json_string_value(v), json_string_length(v)))
        return set_error("%s.uidl: not 1..70 printable characters", entry);
    memcpy(out, json_string_value(v), json_string_length(v) + 1);
    return NULL;
}

static const char *parse_msgid_value(const json_t *v, uint64_t *out, const char *entry)
{
    if (!json_is_string(v))
        return set_error("%s.msgid: not a string", entry);
    if (!parse_msgid(json_string_value(v), json_string_length(v), out))
        return set_error("%s.msgid: not 16 lower-case hex digits", entry);
    return NULL;
}

static const char *parse_folders(const json_t *arr, struct state_doc *doc)
{
    size_t n;
    int dup;

    if (!json_is_array(arr))
        return set_error("folders: not an array");
    n = json_array_size(arr);
    if (n > STATE_FOLDERS_MAX)
        return set_error("folders: %zu folders, at most %d", n, STATE_FOLDERS_MAX);
    if (n == 0)
        return NULL;
    doc->folders = calloc(n, sizeof(*doc->folders));
    if (doc->folders == NULL)
        return set_error("out of memory");
    for (size_t i = 0; i < n; i++) {
        const json_t *obj = json_array_get(arr, i);
        struct state_folder *f = &doc->folders[i];
        bool has_name = false, has_uidvalidity = false;
        char entry[ENTRY_PATH_MAX], quoted[KEY_QUOTE_MAX + 4];
        const char *key, *e;
        json_t *v;

        snprintf(entry, sizeof(entry), "folders[%zu]", i);
        if (!json_is_object(obj))
            return set_error("%s: not an object", entry);
        json_object_foreach((json_t *)obj, key, v)
        {
            if (strcmp(key, "name") == 0) {
                size_t len = json_is_string(v) ? json_string_length(v) : 0;

                if (!json_is_string(v))
                    return set_error("%s.name: not a string", entry);
                if (len < 1 || len > STATE_FOLDER_MAX)
                    return set_error("%s.name: not 1..%d bytes", entry, STATE_FOLDER_MAX);
                memcpy(f->name, json_string_value(v), len + 1);
                has_name = true;
            } else if (strcmp(key, "uidvalidity") == 0) {
                long long n64;

                if ((e = entry_int(v, 0, UINT32_MAX, &n64, entry, key)) != NULL)
                    return e;
                f->uidvalidity = (uint32_t)n64;
                has_uidvalidity = true;
            } else {
                return set_error("%s.\"%s\": unknown key", entry,
                                 quote_key(key, strlen(key), quoted));
            }
        }
        if (!has_name)
            return set_error("%s.name: missing", entry);
        if (!has_uidvalidity)
            return set_error("%s.uidvalidity: missing", entry);
        doc->nfolders++;
    }
    dup = has_duplicate_folder(doc->folders, doc->nfolders);
    if (dup < 0)
        return set_error("out of memory");
    if (dup > 0)
        return set_error("folders: two folders have the same name");
    return NULL;
}

static const char *parse_message(const json_t *obj, size_t i, const struct state_doc *doc,
                                 struct state_msg *m)
{
    bool has_f = false, has_uid = false, has_size = false;
    char entry[ENTRY_PATH_MAX], quoted[KEY_QUOTE_MAX + 4];
    const char *key;
    long long n;
    json_t *v;

    /* Built only when an error needs it: this loop runs 100,000 times per login. */
#define ENTRY() (snprintf(entry, sizeof(entry), "messages[%zu]", i), entry)
    if (!json_is_object(obj))
        return set_error("%s: not an object", ENTRY());
    json_object_foreach((json_t *)obj, key, v)
    {
        if (strcmp(key, "f") == 0) {
            if (!json_is_integer(v))
                return set_error("%s.f: not an integer", ENTRY());
            n = json_integer_value(v);
            if (n < 0 || (unsigned long long)n >= doc->nfolders)
                return set_error("%s.f: folder %lld out of range (%zu folders)", ENTRY(), n,
                                 doc->nfolders);
            m->folder = (uint16_t)n;
            has_f = true;
        } else if (strcmp(key, "uid") == 0) {
            if (!int_in(v, 1, UINT32_MAX, &n))
                return entry_int(v, 1, UINT32_MAX, &n, ENTRY(), key);
            m->uid = (uint32_t)n;
            has_uid = true;
        } else if (strcmp(key, "uidl") == 0) {
            if (!json_is_string(v) || !is_uidl(json_string_value(v), json_string_length(v)))
                return parse_uidl_value(v, m->uidl, ENTRY());
            memcpy(m->uidl, json_string_value(v), json_string_length(v) + 1);
        } else if (strcmp(key, "size") == 0) {
            if (!int_in(v, 0, INT64_MAX, &n))
                return entry_int(v, 0, INT64_MAX, &n, ENTRY(), key);
            m->size = (uint64_t)n;
            has_size = true;
        } else if (strcmp(key, "real_size") == 0) {
            if (!int_in(v, 0, INT64_MAX, &n))
                return entry_int(v, 0, INT64_MAX, &n, ENTRY(), key);
            m->real_size = (uint64_t)n;
        } else if (strcmp(key, "msgid") == 0) {
            if (!json_is_string(v) ||
                !parse_msgid(json_string_value(v), json_string_length(v), &m->msgid_hash))
                return parse_msgid_value(v, &m->msgid_hash, ENTRY());
        } else if (strcmp(key, "hidden") == 0) {
            if (!json_is_boolean(v))
                return set_error("%s.hidden: not true or false", ENTRY());
            m->hidden = json_is_true(v);
        } else {
            return set_error("%s.\"%s\": unknown key", ENTRY(),
                             quote_key(key, strlen(key), quoted));
        }
    }
    if (!has_f)
        return set_error("%s.f: missing", ENTRY());
    if (!has_uid)
        return set_error("%s.uid: missing", ENTRY());
    if (!has_size)
        return set_error("%s.size: missing", ENTRY());
#undef ENTRY
    return NULL;
}

/* Makes room for one more message: doubling, so that appending is O(1). */
static int grow_msgs(struct state_doc *doc)
{
    size_t alloc;
    struct state_msg *msgs;

    /* A caller that replaced msgs may have left msgs_alloc behind: nmsgs is certain. */
    if (doc->msgs_alloc < doc->nmsgs)
        doc->msgs_alloc = doc->nmsgs;
    if (doc->nmsgs < doc->msgs_alloc)
        return 0;
    alloc = doc->msgs_alloc < MSGS_MIN_ALLOC ? MSGS_MIN_ALLOC : doc->msgs_alloc * 2;
    if (alloc > SIZE_MAX / sizeof(*msgs))
        return -1;
    msgs = realloc(doc->msgs, alloc * sizeof(*msgs));
    if (msgs == NULL)
        return -1;
    doc->msgs = msgs;
    doc->msgs_alloc = alloc;
    return 0;
}

/* Appends messages[i]; *sorted turns false when it comes before the one ahead of it. */
static const char *add_message(const json_t *obj, size_t i, struct state_doc *doc, bool *sorted)
{
    struct state_msg *m;
    const char *e;

    if (grow_msgs(doc) != 0)
        return set_error("out of memory");
    m = &doc->msgs[doc->nmsgs];
    memset(m, 0, sizeof(*m));
    if ((e = parse_message(obj, i, doc, m)) != NULL)
        return e;
    if (doc->nmsgs > 0) {
        uint64_t prev = msg_key(m[-1].folder, m[-1].uid), cur = msg_key(m->folder, m->uid);

        if (cur == prev)
            return set_error("messages[%zu]: duplicate of messages[%zu] (f %u, uid %u)", i, i - 1,
                             (unsigned)m->folder, (unsigned)m->uid);
        if (cur < prev)
            *sorted = false;
    }
    doc->nmsgs++;
    return NULL;
}

static const char *finish_messages(struct state_doc *doc, bool sorted)
{
    /* A parsed document holds no spare room: code that replaces msgs without setting
     * msgs_alloc then leaves a value no larger than the truth. */
    if (doc->nmsgs > 0 && doc->nmsgs < doc->msgs_alloc) {
        struct state_msg *msgs = realloc(doc->msgs, doc->nmsgs * sizeof(*msgs));

        if (msgs != NULL) {
            doc->msgs = msgs;
            doc->msgs_alloc = doc->nmsgs;
        }
    }
    if (sorted)
        return NULL;
    /* Hand-edited or from another writer: take it, in our order. */
    qsort(doc->msgs, doc->nmsgs, sizeof(*doc->msgs), cmp_msg);
    for (size_t i = 1; i < doc->nmsgs; i++)
        if (cmp_msg(&doc->msgs[i - 1], &doc->msgs[i]) == 0)
            return set_error("messages: two entries for f %u, uid %u",
                             (unsigned)doc->msgs[i].folder, (unsigned)doc->msgs[i].uid);
    return NULL;
}

/* Appends legacy[i]; *alloc is the room at doc->legacy. */
static const char *add_legacy(const json_t *obj, size_t i, struct state_doc *doc, size_t *alloc)
{
    bool has_uidl = false, has_size = false;
    char entry[ENTRY_PATH_MAX], quoted[KEY_QUOTE_MAX + 4];
    struct state_legacy *l;
    const char *key, *e;
    long long n64;
    json_t *v;

    if (doc->nlegacy == *alloc) {
        size_t more = *alloc < MSGS_MIN_ALLOC ? MSGS_MIN_ALLOC : *alloc * 2;
        struct state_legacy *p =
            more > SIZE_MAX / sizeof(*p) ? NULL : realloc(doc->legacy, more * sizeof(*p));

        if (p == NULL)
            return set_error("out of memory");
        doc->legacy = p;
        *alloc = more;
    }
    l = &doc->legacy[doc->nlegacy];
    memset(l, 0, sizeof(*l));
    snprintf(entry, sizeof(entry), "legacy[%zu]", i);
    if (!json_is_object(obj))
        return set_error("%s: not an object", entry);
    json_object_foreach((json_t *)obj, key, v)
    {
        if (strcmp(key, "uidl") == 0) {
            if ((e = parse_uidl_value(v, l->uidl, entry)) != NULL)
                return e;
            has_uidl = true;
        } else if (strcmp(key, "size") == 0) {
            if ((e = entry_int(v, 0, INT64_MAX, &n64, entry, key)) != NULL)
                return e;
            l->size = (uint64_t)n64;
            has_size = true;
        } else if (strcmp(key, "msgid") == 0) {
            if ((e = parse_msgid_value(v, &l->msgid_hash, entry)) != NULL)
                return e;
        } else if (strcmp(key, "matched") == 0) {
            if (!json_is_boolean(v))
                return set_error("%s.matched: not true or false", entry);
            l->matched = json_is_true(v);
        } else {
            return set_error("%s.\"%s\": unknown key", entry, quote_key(key, strlen(key), quoted));
        }
    }
    if (!has_uidl)
        return set_error("%s.uidl: missing", entry);
    if (!has_size)
        return set_error("%s.size: missing", entry);
    doc->nlegacy++;
    return NULL;
}

/* The version first: a newer document is reported as such, not by its new keys. */
static const char *check_version(const json_t *v)
{
    if (v == NULL)
        return set_error("version: missing");
    if (!json_is_integer(v))
        return set_error("version: not an integer");
    if (json_integer_value(v) > STATE_VERSION)
        return set_error("version: %lld is newer than this popgate understands (%d)",
                         json_integer_value(v), STATE_VERSION);
    if (json_integer_value(v) < STATE_VERSION)
        return set_error("version: %lld is not a version (%d is)", json_integer_value(v),
                         STATE_VERSION);
    return NULL;
}

static const char *const top_keys[] = {"version", "user",     "first_login", "last_login",
                                       "folders", "messages", "legacy"};

static const char *check_key(const char *key, size_t len)
{
    char quoted[KEY_QUOTE_MAX + 4];

    if (len >= 2 && key[0] == 'x' && key[1] == '-')
        return NULL;
    for (size_t i = 0; i < sizeof(top_keys) / sizeof(top_keys[0]); i++)
        if (strlen(top_keys[i]) == len && memcmp(key, top_keys[i], len) == 0)
            return NULL;
    return set_error("\"%s\": unknown key (only \"x-...\" keys may be added)",
                     quote_key(key, len, quoted));
}

static const char *parse_user(const json_t *v, struct state_doc *doc)
{
    if (v == NULL)
        return set_error("user: missing");
    if (!json_is_string(v))
        return set_error("user: not a string");
    if (json_string_length(v) == 0)
        return set_error("user: empty");
    doc->user = strdup(json_string_value(v));
    if (doc->user == NULL)
        return set_error("out of memory");
    return NULL;
}

static const char *parse_login(const json_t *v, const char *name, int64_t *out)
{
    long long n = 0;
    const char *e;

    if (v == NULL)
        return NULL;
    if ((e = get_int(v, 0, INT64_MAX, &n, name)) != NULL)
        return e;
    *out = n;
    return NULL;
}

/* ---- the reference parse: one jansson tree of the whole document ---- */

static const char *parse_root(const json_t *root, struct state_doc *doc)
{
    const char *key, *e;
    json_t *v;

    if (!json_is_object(root))
        return set_error("not a JSON object");
    if ((e = check_version(json_object_get(root, "version"))) != NULL)
        return e;
    doc->version = STATE_VERSION;
    json_object_foreach((json_t *)root, key, v)
    {
        if ((e = check_key(key, strlen(key))) != NULL)
            return e;
    }
    if ((e = parse_user(json_object_get(root, "user"), doc)) != NULL ||
        (e = parse_login(json_object_get(root, "first_login"), "first_login", &doc->first_login)) !=
            NULL ||
        (e = parse_login(json_object_get(root, "last_login"), "last_login", &doc->last_login)) !=
            NULL)
        return e;
    if ((v = json_object_get(root, "folders")) != NULL && (e = parse_folders(v, doc)) != NULL)
        return e;
    if ((v = json_object_get(root, "messages")) != NULL) {
        bool sorted = true;

        if (!json_is_array(v))
            return set_error("messages: not an array");
        for (size_t i = 0; i < json_array_size(v); i++)
            if ((e = add_message(json_array_get(v, i), i, doc, &sorted)) != NULL)
                return e;
        if ((e = finish_messages(doc, sorted)) != NULL)
            return e;
    }
    if ((v = json_object_get(root, "legacy")) != NULL) {
        size_t alloc = 0;

        if (!json_is_array(v))
            return set_error("legacy: not an array");
        for (size_t i = 0; i < json_array_size(v); i++)
            if ((e = add_legacy(json_array_get(v, i), i, doc, &alloc)) != NULL)
                return e;
    }
    return NULL;
}

static int parse_tree(const char *json, size_t len, struct state_doc **doc_r, const char **error_r)
{
    struct state_doc *doc;
    json_error_t jerr;
    const char *e;
    json_t *root;

    /* Duplicate keys are refused: which of two "uid"s was meant is anyone's guess. */
    root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL) {
        /* jansson quotes the input near the error: keep the text one printable line. */
        for (char *p = jerr.text; *p != '\0'; p++)
            if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f)
                *p = '?';
        *error_r = set_error("%d:%d: invalid JSON: %s", jerr.line, jerr.column, jerr.text);
        return -1;
    }
    doc = calloc(1, sizeof(*doc));
    if (doc == NULL) {
        json_decref(root);
        *error_r = set_error("out of memory");
        return -1;
    }
    e = parse_root(root, doc);
    json_decref(root);
    if (e != NULL) {
        state_doc_free(&doc);
        *error_r = e;
        return -1;
    }
    *doc_r = doc;
    return 0;
}

/*
 * ---- the fast parse: the top level by hand, each value and each array entry by jansson ----
 *
 * A tree of 100,000 messages is some 90 MB of jansson nodes for a 9 MB document, and
 * faulting that memory in costs more than parsing. Here only the top-level object and
 * the "messages" and "legacy" arrays are walked by hand (structure only); every value
 * and every array entry is still parsed and checked by jansson, one at a time. Whatever
 * this walk does not expect (escaped or non-ASCII top-level keys, duplicate keys,
 * deep nesting, any JSON error) makes it give up, and the reference parse runs: it
 * gives the same document or the same error, which the fuzz target checks.
 */

/* Top-level keys this walk handles; more give up. */
#define FAST_KEYS_MAX 32
/* Nesting inside one value; deeper gives up (jansson's own limit is 2048). */
#define FAST_DEPTH_MAX 1000

enum fast_result { FAST_OK, FAST_ERROR, FAST_GIVE_UP };

struct fast_key {
    const char *name; /* not NUL-terminated */
    size_t name_len;
    size_t start, end; /* the value */
    json_t *value;     /* NULL for an array of "messages" or "legacy", walked entry by entry */
};

static bool is_json_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static size_t skip_space(const char *s, size_t len, size_t i)
{
    while (i < len && is_json_space(s[i]))
        i++;
    return i;
}

/* s[*i] is '"': moves past the closing quote. Escapes are skipped, not checked. */
static bool skip_string(const char *s, size_t len, size_t *i)
{
    size_t p = *i + 1;

    for (;;) {
        const char *q = p < len ? memchr(s + p, '"', len - p) : NULL;
        size_t backslashes = 0;

        if (q == NULL)
            return false;
        p = (size_t)(q - s);
        while (p - backslashes > *i + 1 && s[p - backslashes - 1] == '\\')
            backslashes++;
        p++;
        if (backslashes % 2 == 0) { /* not itself escaped */
            *i = p;
            return true;
        }
    }
}

/* Moves past the value at *i by its structure alone; jansson checks it later. */
static bool skip_value(const char *s, size_t len, size_t *i)
{
    size_t p = *i, depth = 0;

    if (p >= len)
        return false;
    if (s[p] == '"')
        return skip_string(s, len, i);
    if (s[p] != '[' && s[p] != '{') {
        while (p < len && !is_json_space(s[p]) && s[p] != ',' && s[p] != '}' && s[p] != ']')
            p++;
        if (p == *i)
            return false;
        *i = p;
        return true;
    }
    while (p < len) {
        char c = s[p];

        if (c == '"') {
            if (!skip_string(s, len, &p))
                return false;
            continue;
        }
        if (c == '[' || c == '{') {
            if (++depth > FAST_DEPTH_MAX)
                return false;
        } else if (c == ']' || c == '}') {
            if (--depth == 0) {
                *i = p + 1;
                return true;
            }
        }
        p++;
    }
    return false;
}

static json_t *load_span(const char *s, size_t start, size_t end)
{
    return json_loadb(s + start, end - start, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, NULL);
}

/* Walks the entries of the array s[start..end) (s[start] is '['). */
struct fast_array {
    const char *s;
    size_t pos, end;
    bool first;
};

/* 1 with the next entry in [*a, *b), 0 after the last, -1 when the structure is off. */
static int next_entry(struct fast_array *it, size_t *a, size_t *b)
{
    const char *s = it->s;
    size_t p = skip_space(s, it->end, it->pos);

    if (p < it->end && s[p] == ']')
        return p + 1 == it->end ? 0 : -1;
    if (!it->first) {
        if (p >= it->end || s[p] != ',')
            return -1;
        p = skip_space(s, it->end, p + 1);
    }
    *a = p;
    if (!skip_value(s, it->end, &p))
        return -1;
    *b = p;
    it->pos = p;
    it->first = false;
    return 1;
}

static struct fast_key *fast_find(struct fast_key *keys, size_t n, const char *name)
{
    size_t len = strlen(name);

    for (size_t i = 0; i < n; i++)
        if (keys[i].name_len == len && memcmp(keys[i].name, name, len) == 0)
            return &keys[i];
    return NULL;
}

static const json_t *fast_value(struct fast_key *keys, size_t n, const char *name)
{
    struct fast_key *k = fast_find(keys, n, name);

    return k != NULL ? k->value : NULL;
}

/* Reads the top-level object into keys (value spans only). */
static bool fast_scan(const char *s, size_t len, struct fast_key *keys, size_t *nkeys_r)
{
    size_t i = skip_space(s, len, 0), n = 0;

    if (i >= len || s[i] != '{')
        return false;
    i = skip_space(s, len, i + 1);
    if (i < len && s[i] == '}') {
        i++;
    } else {
        for (;;) {
            size_t name;

            if (i >= len || s[i] != '"' || n == FAST_KEYS_MAX)
                return false;
            name = ++i;
            /* Plain printable ASCII names only: anything else is for jansson to read. */
            while (i < len && s[i] != '"') {
                if (s[i] < 0x20 || s[i] > 0x7e || s[i] == '\\')
                    return false;
                i++;
            }
            if (i >= len)
                return false;
            keys[n].name = s + name;
            keys[n].name_len = i - name;
            keys[n].value = NULL;
            i = skip_space(s, len, i + 1);
            if (i >= len || s[i] != ':')
                return false;
            i = skip_space(s, len, i + 1);
            keys[n].start = i;
            if (!skip_value(s, len, &i))
                return false;
            keys[n].end = i;
            for (size_t k = 0; k < n; k++)
                if (keys[k].name_len == keys[n].name_len &&
                    memcmp(keys[k].name, keys[n].name, keys[n].name_len) == 0)
                    return false; /* a duplicate: jansson says so */
            n++;
            i = skip_space(s, len, i);
            if (i < len && s[i] == ',') {
                i = skip_space(s, len, i + 1);
                continue;
            }
            if (i < len && s[i] == '}') {
                i++;
                break;
            }
            return false;
        }
    }
    *nkeys_r = n;
    return skip_space(s, len, i) == len;
}

static bool is_streamed(const struct fast_key *k, const char *s)
{
    return s[k->start] == '[' && ((k->name_len == 8 && memcmp(k->name, "messages", 8) == 0) ||
                                  (k->name_len == 6 && memcmp(k->name, "legacy", 6) == 0));
}

/*
 * The entries of a streamed array: every one is loaded (so that a JSON error anywhere
 * is found, as the reference parse would), but only checked while *e is NULL.
 */
static enum fast_result fast_entries(const char *s, const struct fast_key *k, bool messages,
                                     struct state_doc *doc, const char **e)
{
    struct fast_array it = {s, k->start + 1, k->end, true};
    size_t a, b, i = 0, legacy_alloc = 0;
    bool sorted = true;
    int r;

    while ((r = next_entry(&it, &a, &b)) == 1) {
        json_t *entry = load_span(s, a, b);

        if (entry == NULL)
            return FAST_GIVE_UP;
        if (*e == NULL)
            *e = messages ? add_message(entry, i, doc, &sorted)
                          : add_legacy(entry, i, doc, &legacy_alloc);
        json_decref(entry);
        i++;
    }
    if (r < 0)
        return FAST_GIVE_UP;
    if (messages && *e == NULL)
        *e = finish_messages(doc, sorted);
    return FAST_OK;
}

static enum fast_result parse_fast(const char *s, size_t len, struct state_doc **doc_r,
                                   const char **error_r)
{
    struct fast_key keys[FAST_KEYS_MAX];
    enum fast_result r = FAST_GIVE_UP;
    struct state_doc *doc = NULL;
    const char *e = NULL;
    const json_t *v;
    size_t n = 0;

    if (!fast_scan(s, len, keys, &n))
        return FAST_GIVE_UP;
    for (size_t i = 0; i < n; i++)
        if (!is_streamed(&keys[i], s) &&
            (keys[i].value = load_span(s, keys[i].start, keys[i].end)) == NULL)
            goto out;
    doc = calloc(1, sizeof(*doc));
    if (doc == NULL)
        goto out;

    /* The checks of parse_root, in its order; the first error is the answer. */
    e = check_version(fast_value(keys, n, "version"));
    if (e == NULL)
        doc->version = STATE_VERSION;
    for (size_t i = 0; i < n && e == NULL; i++)
        e = check_key(keys[i].name, keys[i].name_len);
    if (e == NULL)
        e = parse_user(fast_value(keys, n, "user"), doc);
    if (e == NULL)
        e = parse_login(fast_value(keys, n, "first_login"), "first_login", &doc->first_login);
    if (e == NULL)
        e = parse_login(fast_value(keys, n, "last_login"), "last_login", &doc->last_login);
    if (e == NULL && (v = fast_value(keys, n, "folders")) != NULL)
        e = parse_folders(v, doc);
    for (int pass = 0; pass < 2; pass++) {
        const char *name = pass == 0 ? "messages" : "legacy";
        struct fast_key *k = fast_find(keys, n, name);

        if (k == NULL)
            continue;
        if (k->value != NULL) { /* not an array */
            if (e == NULL)
                e = set_error("%s: not an array", name);
        } else if (fast_entries(s, k, pass == 0, doc, &e) != FAST_OK) {
            goto out;
        }
    }
    if (e != NULL) {
        *error_r = e;
        r = FAST_ERROR;
    } else {
        *doc_r = doc;
        doc = NULL;
        r = FAST_OK;
    }
out:
    for (size_t i = 0; i < n; i++)
        json_decref(keys[i].value);
    state_doc_free(&doc);
    return r;
}

int state_doc_parse(const char *json, size_t len, struct state_doc **doc_r, const char **error_r)
{
    *doc_r = NULL;
    switch (parse_fast(json, len, doc_r, error_r)) {
    case FAST_OK:
        return 0;
    case FAST_ERROR:
        return -1;
    default:
        return parse_tree(json, len, doc_r, error_r);
    }
}

/* ---- serializing ---- */

struct out {
    char *p;
    size_t len, cap;
    bool failed;
};

static bool out_reserve(struct out *o, size_t more)
{
    char *p;
    size_t cap;

    if (o->failed)
        return false;
    if (o->cap - o->len > more)
        return true;
    cap = o->cap;
    while (cap - o->len <= more) {
        if (cap > SIZE_MAX / 2) {
            o->failed = true;
            return false;
        }
        cap = cap * 2;
    }
    p = realloc(o->p, cap);
    if (p == NULL) {
        o->failed = true;
        return false;
    }
    o->p = p;
    o->cap = cap;
    return true;
}

static void out_raw(struct out *o, const char *s, size_t len)
{
    if (!out_reserve(o, len))
        return;
    memcpy(o->p + o->len, s, len);
    o->len += len;
}

#define OUT_LIT(o, lit) out_raw((o), (lit), sizeof(lit) - 1)

static void out_u64(struct out *o, uint64_t v)
{
    char buf[20];
    size_t i = sizeof(buf);

    do {
        buf[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    out_raw(o, buf + i, sizeof(buf) - i);
}

static void out_hex64(struct out *o, uint64_t v)
{
    static const char digits[] = "0123456789abcdef";
    char buf[MSGID_HEX_LEN];

    for (int i = MSGID_HEX_LEN - 1; i >= 0; i--) {
        buf[i] = digits[v & 0xf];
        v >>= 4;
    }
    out_raw(o, buf, sizeof(buf));
}

/* A JSON string of valid UTF-8: only '"', '\' and control characters need escapes. */
static void out_string(struct out *o, const char *s, size_t len)
{
    static const char digits[] = "0123456789abcdef";

    /* The worst case, every byte as \u00XX, plus the quotes. */
    if (len > (SIZE_MAX - 2) / 6 || !out_reserve(o, len * 6 + 2))
        return;
    o->p[o->len++] = '"';
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];

        if (c == '"' || c == '\\') {
            o->p[o->len++] = '\\';
            o->p[o->len++] = (char)c;
        } else if (c < 0x20) {
            memcpy(o->p + o->len, "\\u00", 4);
            o->p[o->len + 4] = digits[c >> 4];
            o->p[o->len + 5] = digits[c & 0xf];
            o->len += 6;
        } else {
            o->p[o->len++] = (char)c;
        }
    }
    o->p[o->len++] = '"';
}

/* Every rule state_doc_parse checks, on the in-memory form. */
static bool is_valid_doc(const struct state_doc *doc)
{
    uint64_t prev = 0;

    if (doc->version != STATE_VERSION || doc->user == NULL || doc->user[0] == '\0' ||
        !is_utf8(doc->user, strlen(doc->user)) || doc->first_login < 0 || doc->last_login < 0 ||
        doc->nfolders > STATE_FOLDERS_MAX || (doc->nfolders > 0 && doc->folders == NULL) ||
        (doc->nmsgs > 0 && doc->msgs == NULL) || (doc->nlegacy > 0 && doc->legacy == NULL))
        return false;
    for (size_t i = 0; i < doc->nfolders; i++) {
        size_t len = bounded_len(doc->folders[i].name, sizeof(doc->folders[i].name));

        if (len < 1 || len > STATE_FOLDER_MAX || !is_utf8(doc->folders[i].name, len))
            return false;
    }
    if (has_duplicate_folder(doc->folders, doc->nfolders) != 0)
        return false;
    for (size_t i = 0; i < doc->nmsgs; i++) {
        const struct state_msg *m = &doc->msgs[i];
        uint64_t key = msg_key(m->folder, m->uid);
        size_t ulen = bounded_len(m->uidl, sizeof(m->uidl));

        if (m->folder >= doc->nfolders || m->uid == 0 || (i > 0 && key <= prev) ||
            ulen > UIDL_MAX || (ulen > 0 && !is_uidl(m->uidl, ulen)) ||
            m->size > STATE_NUMBER_MAX || m->real_size > STATE_NUMBER_MAX)
            return false;
        prev = key;
    }
    for (size_t i = 0; i < doc->nlegacy; i++) {
        const struct state_legacy *l = &doc->legacy[i];

        if (!is_uidl(l->uidl, bounded_len(l->uidl, sizeof(l->uidl))) || l->size > STATE_NUMBER_MAX)
            return false;
    }
    return true;
}

char *state_doc_serialize(const struct state_doc *doc, size_t *len_r)
{
    struct out o = {0};

    if (!is_valid_doc(doc)) {
        errno = EINVAL;
        return NULL;
    }
    /* About 100 bytes per message: one allocation for the usual document. */
    o.cap = 256 + strlen(doc->user) * 6 + doc->nfolders * (STATE_FOLDER_MAX * 6 + 32) +
            (doc->nmsgs + doc->nlegacy) * 112;
    o.p = malloc(o.cap);
    if (o.p == NULL) {
        errno = ENOMEM;
        return NULL;
    }

    OUT_LIT(&o, "{\"version\":");
    out_u64(&o, (uint64_t)doc->version);
    OUT_LIT(&o, ",\"user\":");
    out_string(&o, doc->user, strlen(doc->user));
    OUT_LIT(&o, ",\"first_login\":");
    out_u64(&o, (uint64_t)doc->first_login);
    OUT_LIT(&o, ",\"last_login\":");
    out_u64(&o, (uint64_t)doc->last_login);

    OUT_LIT(&o, ",\"folders\":[");
    for (size_t i = 0; i < doc->nfolders; i++) {
        const struct state_folder *f = &doc->folders[i];

        if (i > 0)
            OUT_LIT(&o, ",");
        OUT_LIT(&o, "{\"name\":");
        out_string(&o, f->name, strlen(f->name));
        OUT_LIT(&o, ",\"uidvalidity\":");
        out_u64(&o, f->uidvalidity);
        OUT_LIT(&o, "}");
    }

    OUT_LIT(&o, "],\"messages\":[");
    for (size_t i = 0; i < doc->nmsgs; i++) {
        const struct state_msg *m = &doc->msgs[i];

        if (i > 0)
            OUT_LIT(&o, ",");
        OUT_LIT(&o, "{\"f\":");
        out_u64(&o, m->folder);
        OUT_LIT(&o, ",\"uid\":");
        out_u64(&o, m->uid);
        if (m->uidl[0] != '\0') {
            OUT_LIT(&o, ",\"uidl\":");
            out_string(&o, m->uidl, strlen(m->uidl));
        }
        OUT_LIT(&o, ",\"size\":");
        out_u64(&o, m->size);
        if (m->real_size != 0) {
            OUT_LIT(&o, ",\"real_size\":");
            out_u64(&o, m->real_size);
        }
        if (m->msgid_hash != 0) {
            OUT_LIT(&o, ",\"msgid\":\"");
            out_hex64(&o, m->msgid_hash);
            OUT_LIT(&o, "\"");
        }
        if (m->hidden)
            OUT_LIT(&o, ",\"hidden\":true");
        OUT_LIT(&o, "}");
    }

    OUT_LIT(&o, "],\"legacy\":[");
    for (size_t i = 0; i < doc->nlegacy; i++) {
        const struct state_legacy *l = &doc->legacy[i];

        if (i > 0)
            OUT_LIT(&o, ",");
        OUT_LIT(&o, "{\"uidl\":");
        out_string(&o, l->uidl, strlen(l->uidl));
        OUT_LIT(&o, ",\"size\":");
        out_u64(&o, l->size);
        if (l->msgid_hash != 0) {
            OUT_LIT(&o, ",\"msgid\":\"");
            out_hex64(&o, l->msgid_hash);
            OUT_LIT(&o, "\"");
        }
        if (l->matched)
            OUT_LIT(&o, ",\"matched\":true");
        OUT_LIT(&o, "}");
    }
    OUT_LIT(&o, "]}\n");

    if (!out_reserve(&o, 1)) {
        free(o.p);
        errno = ENOMEM;
        return NULL;
    }
    o.p[o.len] = '\0';
    if (len_r != NULL)
        *len_r = o.len;
    return o.p;
}

/* ---- editing ---- */

int state_doc_folder(struct state_doc *doc, const char *name)
{
    size_t len = bounded_len(name, STATE_FOLDER_MAX + 1);
    struct state_folder *folders;

    if (len < 1 || len > STATE_FOLDER_MAX || !is_utf8(name, len))
        return -1;
    for (size_t i = 0; i < doc->nfolders; i++)
        if (strcmp(doc->folders[i].name, name) == 0)
            return (int)i;
    if (doc->nfolders >= STATE_FOLDERS_MAX)
        return -1;
    folders = realloc(doc->folders, (doc->nfolders + 1) * sizeof(*folders));
    if (folders == NULL)
        return -1;
    doc->folders = folders;
    memset(&folders[doc->nfolders], 0, sizeof(*folders));
    memcpy(folders[doc->nfolders].name, name, len + 1);
    return (int)doc->nfolders++;
}

struct state_msg *state_doc_find(struct state_doc *doc, uint16_t folder, uint32_t uid)
{
    uint64_t key = msg_key(folder, uid);
    size_t i = lower_bound(doc, key);

    if (i < doc->nmsgs && msg_key(doc->msgs[i].folder, doc->msgs[i].uid) == key)
        return &doc->msgs[i];
    return NULL;
}

struct state_msg *state_doc_upsert(struct state_doc *doc, uint16_t folder, uint32_t uid)
{
    uint64_t key = msg_key(folder, uid);
    struct state_msg *m;
    size_t i;

    if (folder >= doc->nfolders || uid == 0)
        return NULL;
    /* Logins add in ascending order: check the end before searching. */
    if (doc->nmsgs == 0 ||
        msg_key(doc->msgs[doc->nmsgs - 1].folder, doc->msgs[doc->nmsgs - 1].uid) < key)
        i = doc->nmsgs;
    else
        i = lower_bound(doc, key);
    if (i < doc->nmsgs && msg_key(doc->msgs[i].folder, doc->msgs[i].uid) == key)
        return &doc->msgs[i];

    if (grow_msgs(doc) != 0)
        return NULL;
    m = &doc->msgs[i];
    memmove(m + 1, m, (doc->nmsgs - i) * sizeof(*m));
    memset(m, 0, sizeof(*m));
    m->folder = folder;
    m->uid = uid;
    doc->nmsgs++;
    return m;
}

void state_doc_prune(struct state_doc *doc, uint16_t folder, const uint32_t *uids, size_t n)
{
    size_t lo = lower_bound(doc, msg_key(folder, 0));
    size_t hi = lower_bound(doc, (uint64_t)(folder + 1) << 32);
    size_t w = lo, j = 0;

    for (size_t i = lo; i < hi; i++) {
        uint32_t uid = doc->msgs[i].uid;

        while (j < n && uids[j] < uid)
            j++;
        if (j < n && uids[j] == uid) {
            if (w != i)
                doc->msgs[w] = doc->msgs[i];
            w++;
        }
    }
    if (w == hi)
        return;
    memmove(&doc->msgs[w], &doc->msgs[hi], (doc->nmsgs - hi) * sizeof(doc->msgs[0]));
    doc->nmsgs -= hi - w;
}
