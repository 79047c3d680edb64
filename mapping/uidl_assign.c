/* UIDL assignment owns the choice of each message's unique-id at login, and keeping it stable.
 *
 * Everything is computed in scratch arrays first; the state document changes
 * only at the end, in steps that cannot fail, so an error leaves it untouched.
 * Lookups are sorts, binary searches and one open-addressing string set: no
 * step compares every message with every other, so 100,000 messages take
 * milliseconds.
 *
 * Matching imported legacy UIDLs (the old POP3 server's list, in its order)
 * to messages that have no UIDL yet runs in four passes, each on what the
 * previous ones left:
 *  1. order and size: walk the messages in maildrop order with a cursor in the
 *     legacy list; a message takes the first unmatched legacy entry at or after
 *     the cursor with the same size, and the cursor moves past it. Skipped
 *     legacy entries are messages deleted before the migration; messages that
 *     find nothing are new.
 *  2. Message-ID: among the rest, equal (size, Message-ID hash); the k-th
 *     legacy entry with a key goes with the k-th message with it. This sorts
 *     out reordered messages and equal sizes.
 *  3. order and size again on the rest, the cursor back at the start: a block
 *     of messages that was moved as a whole keeps its inner order.
 *  4. size alone where one legacy entry and one message are left with it.
 * A pair whose Message-ID hashes are both known and differ never matches.
 * Size-only matches are the risk of a list without Message-IDs: a new message
 * of the same size as a message deleted before the migration takes its UIDL,
 * and a client that had the old one skips it. Import lists with Message-IDs.
 */
#include "uidl_assign.h"

#include <stdlib.h>
#include <string.h>

#define NONE SIZE_MAX

enum source {
    SRC_NONE,
    SRC_KEPT,
    SRC_REASSOCIATED,
    SRC_LEGACY,
    SRC_XUIDL,
    SRC_TEMPLATE,
};

/* One message of the snapshot. */
struct item {
    const struct uidl_assign_msg *msg;
    size_t fidx;                 /* index into the folders argument */
    size_t out;                  /* index into uidls_r */
    const struct state_msg *old; /* its entry in the state (same or re-associated UID) */
    const char *base;            /* the UIDL it should keep, before uniqueness */
    enum source src;
    bool collided; /* a kept UIDL another kept message already has */
};

/* Sort keys: plain structs, so qsort needs no context. */
struct key {
    uint64_t a, b, c;
    size_t idx;
};

static int key_cmp(const void *x, const void *y)
{
    const struct key *p = x, *q = y;

    if (p->a != q->a)
        return p->a < q->a ? -1 : 1;
    if (p->b != q->b)
        return p->b < q->b ? -1 : 1;
    if (p->c != q->c)
        return p->c < q->c ? -1 : 1;
    return p->idx < q->idx ? -1 : p->idx > q->idx;
}

static int item_uid_cmp(const void *x, const void *y)
{
    const struct item *p = x, *q = y;

    return p->msg->uid < q->msg->uid ? -1 : p->msg->uid > q->msg->uid;
}

static bool msgid_compatible(uint64_t a, uint64_t b)
{
    return a == 0 || b == 0 || a == b;
}

static uint64_t str_hash(const char *s)
{
    return uidl_fnv1a(UIDL_FNV_OFFSET, s, strlen(s));
}

/* An open-addressing set of strings owned elsewhere, sized once: it never grows. */
struct strset {
    const char **keys;
    uint64_t *hashes;
    uint32_t *aux; /* per-key counter (the suffix map), or NULL */
    size_t mask;
};

static int strset_init(struct strset *s, size_t expect, bool with_aux)
{
    size_t cap = 16;

    while (cap < expect * 2 + 16) {
        if (cap > SIZE_MAX / 4 / sizeof(*s->keys))
            return -1;
        cap *= 2;
    }
    s->mask = cap - 1;
    s->keys = calloc(cap, sizeof(*s->keys));
    s->hashes = calloc(cap, sizeof(*s->hashes));
    s->aux = with_aux ? calloc(cap, sizeof(*s->aux)) : NULL;
    if (s->keys == NULL || s->hashes == NULL || (with_aux && s->aux == NULL))
        return -1;
    return 0;
}

static void strset_free(struct strset *s)
{
    free(s->keys);
    free(s->hashes);
    free(s->aux);
    memset(s, 0, sizeof(*s));
}

/* The slot of key, or the empty slot where it would go. */
static size_t strset_slot(const struct strset *s, const char *key, uint64_t h)
{
    size_t i = (size_t)h & s->mask;

    while (s->keys[i] != NULL && (s->hashes[i] != h || strcmp(s->keys[i], key) != 0))
        i = (i + 1) & s->mask;
    return i;
}

static bool strset_has(const struct strset *s, const char *key)
{
    return s->keys[strset_slot(s, key, str_hash(key))] != NULL;
}

/* Adds key (stored by pointer) unless present; returns its slot. */
static size_t strset_add(struct strset *s, const char *key)
{
    uint64_t h = str_hash(key);
    size_t i = strset_slot(s, key, h);

    if (s->keys[i] == NULL) {
        s->keys[i] = key;
        s->hashes[i] = h;
    }
    return i;
}

struct ctx {
    struct state_doc *doc;
    const struct uidl_assign_folder *folders;
    size_t nfolders;
    const char *tmpl;
    bool reuse_xuidl;
    char (*uidls)[UIDL_MAX + 1];

    struct item *items; /* maildrop order */
    size_t nitems;
    size_t *fstart;    /* items of folder fi: [fstart[fi], fstart[fi + 1]) */
    bool *present;     /* per doc->msgs: taken by a message of the snapshot */
    bool *replaced;    /* per doc->folders: UIDVALIDITY changed, entries replaced */
    bool *legacy_used; /* per doc->legacy: matched in this run */

    struct strset taken;  /* UIDLs shown or recorded; aux 1: an absent entry's, unclaimed */
    bool uses_guid;       /* the template has %g */
    struct strset suffix; /* base -> next suffix number; keys malloc'd */
    struct uidl_assign_stats stats;
};

static void ctx_free(struct ctx *c)
{
    if (c->suffix.keys != NULL) {
        for (size_t i = 0; i <= c->suffix.mask; i++)
            free((char *)c->suffix.keys[i]);
    }
    strset_free(&c->suffix);
    strset_free(&c->taken);
    free(c->items);
    free(c->fstart);
    free(c->present);
    free(c->replaced);
    free(c->legacy_used);
}

/* Sets up items in maildrop order and checks the arguments. */
static int build_items(struct ctx *c, const char **error_r)
{
    bool *seen;
    size_t n = 0;

    for (size_t fi = 0; fi < c->nfolders; fi++) {
        if (c->folders[fi].folder >= c->doc->nfolders) {
            *error_r = "folder index out of range";
            return -1;
        }
        if (c->folders[fi].nmsgs > SIZE_MAX / sizeof(struct item) - n) {
            *error_r = "out of memory";
            return -1;
        }
        n += c->folders[fi].nmsgs;
    }
    seen = calloc(c->doc->nfolders + 1, sizeof(*seen));
    c->items = calloc(n + 1, sizeof(*c->items));
    c->fstart = calloc(c->nfolders + 1, sizeof(*c->fstart));
    if (seen == NULL || c->items == NULL || c->fstart == NULL) {
        free(seen);
        *error_r = "out of memory";
        return -1;
    }
    c->nitems = n;
    n = 0;
    for (size_t fi = 0; fi < c->nfolders; fi++) {
        const struct uidl_assign_folder *f = &c->folders[fi];

        if (seen[f->folder]) {
            free(seen);
            *error_r = "a folder is given twice";
            return -1;
        }
        seen[f->folder] = true;
        c->fstart[fi] = n;
        for (size_t i = 0; i < f->nmsgs; i++) {
            struct item *it = &c->items[n + i];

            it->msg = &f->msgs[i];
            it->fidx = fi;
            it->out = n + i;
        }
        /* Servers report in UID order: sort only when they did not. */
        for (size_t i = 1; i < f->nmsgs; i++) {
            if (f->msgs[i - 1].uid > f->msgs[i].uid) {
                qsort(c->items + n, f->nmsgs, sizeof(*c->items), item_uid_cmp);
                break;
            }
        }
        for (size_t i = 0; i < f->nmsgs; i++) {
            if (c->items[n + i].msg->uid == 0) {
                free(seen);
                *error_r = "UID 0 in the snapshot";
                return -1;
            }
            if (c->items[n + i].msg->size > INT64_MAX) {
                /* the state document could not be saved */
                free(seen);
                *error_r = "a size over 2^63 - 1 in the snapshot";
                return -1;
            }
            if (i > 0 && c->items[n + i].msg->uid == c->items[n + i - 1].msg->uid) {
                free(seen);
                *error_r = "a UID is twice in one folder of the snapshot";
                return -1;
            }
        }
        n += f->nmsgs;
    }
    c->fstart[c->nfolders] = n;
    free(seen);
    return 0;
}

/* The state's entries of folder: [*lo, *hi) of doc->msgs, sorted by (folder, uid). */
static void state_range(const struct state_doc *doc, uint16_t folder, size_t *lo, size_t *hi)
{
    size_t a = 0, b = doc->nmsgs;

    while (a < b) {
        size_t m = a + (b - a) / 2;
        if (doc->msgs[m].folder < folder)
            a = m + 1;
        else
            b = m;
    }
    *lo = a;
    b = doc->nmsgs;
    while (a < b) {
        size_t m = a + (b - a) / 2;
        if (doc->msgs[m].folder <= folder)
            a = m + 1;
        else
            b = m;
    }
    *hi = a;
}

static void attach_old(struct ctx *c, struct item *it, size_t k, enum source src)
{
    const struct state_msg *old = &c->doc->msgs[k];

    c->present[k] = true;
    it->old = old;
    if (old->uidl[0] != '\0') {
        it->base = old->uidl;
        it->src = src;
    }
}

/* Rules 1 and 2: what the state recorded for each message. */
static int match_state(struct ctx *c, const char **error_r)
{
    struct state_doc *doc = c->doc;

    for (size_t fi = 0; fi < c->nfolders; fi++) {
        const struct uidl_assign_folder *f = &c->folders[fi];
        struct item *items = c->items + c->fstart[fi];
        size_t n = f->nmsgs, lo, hi;

        state_range(doc, f->folder, &lo, &hi);
        if (doc->folders[f->folder].uidvalidity == f->uidvalidity) {
            /* Both sides in ascending UID order: one merge. */
            for (size_t i = 0, k = lo; i < n && k < hi;) {
                if (doc->msgs[k].uid < items[i].msg->uid) {
                    k++;
                } else if (doc->msgs[k].uid > items[i].msg->uid) {
                    i++;
                } else {
                    attach_old(c, &items[i++], k++, SRC_KEPT);
                }
            }
            continue;
        }

        /* The mailbox was rebuilt: the old UIDs mean nothing; (Message-ID, size) does. */
        c->replaced[f->folder] = true;
        struct key *ok = malloc((hi - lo + 1) * sizeof(*ok));
        struct key *nk = malloc((n + 1) * sizeof(*nk));
        size_t no = 0, nn = 0;

        if (ok == NULL || nk == NULL) {
            free(ok);
            free(nk);
            *error_r = "out of memory";
            return -1;
        }
        for (size_t k = lo; k < hi; k++) {
            if (doc->msgs[k].msgid_hash != 0)
                ok[no++] =
                    (struct key){doc->msgs[k].msgid_hash, doc->msgs[k].size, doc->msgs[k].uid, k};
        }
        for (size_t i = 0; i < n; i++) {
            if (items[i].msg->msgid_hash != 0)
                nk[nn++] = (struct key){items[i].msg->msgid_hash, items[i].msg->size,
                                        items[i].msg->uid, i};
        }
        qsort(ok, no, sizeof(*ok), key_cmp);
        qsort(nk, nn, sizeof(*nk), key_cmp);
        /* Equal keys pair up in UID order: the k-th old with the k-th new. */
        for (size_t a = 0, b = 0; a < no && b < nn;) {
            if (ok[a].a != nk[b].a || ok[a].b != nk[b].b) {
                if (ok[a].a < nk[b].a || (ok[a].a == nk[b].a && ok[a].b < nk[b].b))
                    a++;
                else
                    b++;
                continue;
            }
            attach_old(c, &items[nk[b].idx], ok[a].idx, SRC_REASSOCIATED);
            a++;
            b++;
        }
        free(ok);
        free(nk);
        for (size_t k = lo; k < hi; k++) {
            if (!c->present[k] && doc->msgs[k].uidl[0] != '\0')
                c->stats.dropped++;
        }
    }
    return 0;
}

/* ---- legacy matching ---- */

struct legacy_ctx {
    const struct state_legacy *leg;
    size_t nleg;
    bool *used;   /* c->legacy_used */
    size_t *cand; /* item indices without a UIDL, maildrop order */
    size_t ncand;
    size_t *pair; /* per candidate: legacy index or NONE */
};

static uint64_t cand_size(const struct ctx *c, const struct legacy_ctx *l, size_t ci)
{
    return c->items[l->cand[ci]].msg->size;
}

static uint64_t cand_msgid(const struct ctx *c, const struct legacy_ctx *l, size_t ci)
{
    return c->items[l->cand[ci]].msg->msgid_hash;
}

static bool legacy_open(const struct legacy_ctx *l, size_t j)
{
    return !l->leg[j].matched && !l->used[j];
}

static void legacy_pair(struct legacy_ctx *l, size_t ci, size_t j)
{
    l->pair[ci] = j;
    l->used[j] = true;
}

/* Scratch keys of what is still open: legacy entries (with_msgid: only those
 * with a Message-ID) in *lk, candidates in *ck when ck is not NULL. Each pass
 * allocates for what the earlier ones left, usually little. */
static int open_keys(const struct ctx *c, const struct legacy_ctx *l, bool with_msgid,
                     struct key **lk, size_t *nl, struct key **ck, size_t *nc)
{
    *nl = 0;
    for (size_t j = 0; j < l->nleg; j++)
        *nl += legacy_open(l, j) && (!with_msgid || l->leg[j].msgid_hash != 0);
    *lk = malloc((*nl + 1) * sizeof(**lk));
    if (*lk == NULL)
        return -1;
    *nl = 0;
    for (size_t j = 0; j < l->nleg; j++) {
        if (legacy_open(l, j) && (!with_msgid || l->leg[j].msgid_hash != 0))
            (*lk)[(*nl)++] =
                (struct key){l->leg[j].size, with_msgid ? l->leg[j].msgid_hash : 0, 0, j};
    }
    qsort(*lk, *nl, sizeof(**lk), key_cmp);
    if (ck == NULL)
        return 0;
    *nc = 0;
    for (size_t ci = 0; ci < l->ncand; ci++)
        *nc += l->pair[ci] == NONE && (!with_msgid || cand_msgid(c, l, ci) != 0);
    *ck = malloc((*nc + 1) * sizeof(**ck));
    if (*ck == NULL) {
        free(*lk);
        return -1;
    }
    *nc = 0;
    for (size_t ci = 0; ci < l->ncand; ci++) {
        if (l->pair[ci] == NONE && (!with_msgid || cand_msgid(c, l, ci) != 0))
            (*ck)[(*nc)++] =
                (struct key){cand_size(c, l, ci), with_msgid ? cand_msgid(c, l, ci) : 0, 0, ci};
    }
    qsort(*ck, *nc, sizeof(**ck), key_cmp);
    return 0;
}

/* Passes 1 and 3: the ordered walk. Open legacy entries of one size form a
 * group in lk, sorted by position; each group's cursor only moves forward, as
 * does the walk's position, so the pass is linear after the sort. */
static int legacy_walk(const struct ctx *c, struct legacy_ctx *l)
{
    struct key *lk;
    size_t ns, pos = 0, *gend, *gcur;

    if (open_keys(c, l, false, &lk, &ns, NULL, NULL) < 0)
        return -1;
    gend = malloc((ns + 1) * sizeof(*gend));
    gcur = malloc((ns + 1) * sizeof(*gcur));
    if (gend == NULL || gcur == NULL) {
        free(lk);
        free(gend);
        free(gcur);
        return -1;
    }
    for (size_t i = ns; i-- > 0;) {
        gend[i] = i + 1 < ns && lk[i + 1].a == lk[i].a ? gend[i + 1] : i + 1;
        gcur[i] = i;
    }
    for (size_t ci = 0; ci < l->ncand && ns > 0; ci++) {
        if (l->pair[ci] != NONE)
            continue;
        uint64_t size = cand_size(c, l, ci);
        size_t a = 0, b = ns;

        while (a < b) {
            size_t m = a + (b - a) / 2;
            if (lk[m].a < size)
                a = m + 1;
            else
                b = m;
        }
        if (a == ns || lk[a].a != size)
            continue;
        size_t k = gcur[a];
        while (k < gend[a] && (l->used[lk[k].idx] || lk[k].idx < pos))
            k++;
        gcur[a] = k;
        if (k == gend[a])
            continue;
        size_t j = lk[k].idx;
        if (!msgid_compatible(cand_msgid(c, l, ci), l->leg[j].msgid_hash))
            continue;
        legacy_pair(l, ci, j);
        pos = j + 1;
        gcur[a] = k + 1;
    }
    free(lk);
    free(gend);
    free(gcur);
    return 0;
}

/* Pass 2: equal (size, Message-ID), k-th with k-th. */
static int legacy_by_msgid(const struct ctx *c, struct legacy_ctx *l)
{
    struct key *lk, *ck;
    size_t nl, nc;

    if (open_keys(c, l, true, &lk, &nl, &ck, &nc) < 0)
        return -1;
    for (size_t a = 0, b = 0; a < nl && b < nc;) {
        const struct key *p = &lk[a], *q = &ck[b];

        if (p->a == q->a && p->b == q->b) {
            legacy_pair(l, q->idx, p->idx);
            a++;
            b++;
        } else if (p->a < q->a || (p->a == q->a && p->b < q->b)) {
            a++;
        } else {
            b++;
        }
    }
    free(lk);
    free(ck);
    return 0;
}

/* Pass 4: a size left exactly once on each side. */
static int legacy_unique_size(const struct ctx *c, struct legacy_ctx *l)
{
    struct key *lk, *ck;
    size_t nl, nc;

    if (open_keys(c, l, false, &lk, &nl, &ck, &nc) < 0)
        return -1;
    for (size_t a = 0, b = 0; a < nl && b < nc;) {
        uint64_t s = lk[a].a;
        size_t a2 = a, b2 = b;

        if (ck[b].a != s) {
            if (ck[b].a < s)
                b++;
            else
                a++;
            continue;
        }
        while (a2 < nl && lk[a2].a == s)
            a2++;
        while (b2 < nc && ck[b2].a == s)
            b2++;
        if (a2 - a == 1 && b2 - b == 1 &&
            msgid_compatible(l->leg[lk[a].idx].msgid_hash, cand_msgid(c, l, ck[b].idx)))
            legacy_pair(l, ck[b].idx, lk[a].idx);
        a = a2;
        b = b2;
    }
    free(lk);
    free(ck);
    return 0;
}

/* Rule 3: imported legacy UIDLs for messages that have none yet. */
static int match_legacy(struct ctx *c, const char **error_r)
{
    struct legacy_ctx l = {.leg = c->doc->legacy, .nleg = c->doc->nlegacy, .used = c->legacy_used};
    size_t pending = 0;
    int ret = -1;

    for (size_t j = 0; j < l.nleg; j++)
        pending += !l.leg[j].matched;
    if (pending == 0)
        return 0;
    l.cand = malloc((c->nitems + 1) * sizeof(*l.cand));
    l.pair = malloc((c->nitems + 1) * sizeof(*l.pair));
    if (l.cand == NULL || l.pair == NULL)
        goto out;
    for (size_t i = 0; i < c->nitems; i++) {
        if (c->items[i].base == NULL) {
            l.pair[l.ncand] = NONE;
            l.cand[l.ncand++] = i;
        }
    }
    if (l.ncand > 0 && (legacy_walk(c, &l) < 0 || legacy_by_msgid(c, &l) < 0 ||
                        legacy_walk(c, &l) < 0 || legacy_unique_size(c, &l) < 0))
        goto out;
    for (size_t ci = 0; ci < l.ncand; ci++) {
        if (l.pair[ci] != NONE) {
            c->items[l.cand[ci]].base = l.leg[l.pair[ci]].uidl;
            c->items[l.cand[ci]].src = SRC_LEGACY;
        }
    }
    ret = 0;
out:
    if (ret < 0)
        *error_r = "out of memory";
    free(l.cand);
    free(l.pair);
    return ret;
}

/* ---- uniqueness ---- */

/*
 * A UIDL made from the server's stable id names that message whatever its UID:
 * when an absent entry (a UIDVALIDITY change replaced its UID) had exactly this
 * UIDL, it is the same message, and it keeps it. Messages without a Message-ID
 * are kept this way too. True when base was claimed into out.
 */
static bool reclaim_by_guid(struct ctx *c, const char *base, char *out)
{
    size_t slot = strset_slot(&c->taken, base, str_hash(base));
    if (c->taken.keys[slot] == NULL || c->taken.aux[slot] != 1)
        return false;
    c->taken.aux[slot] = 0;
    memmove(out, base, strlen(base) + 1);
    return true;
}

/* Writes base, or base cut and "-N" when base is taken, into out and takes it. */
static int take(struct ctx *c, const char *base, char *out, const char **error_r)
{
    if (!strset_has(&c->taken, base)) {
        if (out != base)
            memmove(out, base, strlen(base) + 1);
        strset_add(&c->taken, out);
        return 0;
    }
    /* The number to try next is remembered per base, so a thousand messages
     * with one X-UIDL cost a thousand probes, not half a million. */
    if (c->suffix.keys == NULL && strset_init(&c->suffix, c->nitems, true) < 0) {
        *error_r = "out of memory";
        return -1;
    }
    uint64_t h = str_hash(base);
    size_t slot = strset_slot(&c->suffix, base, h);

    if (c->suffix.keys[slot] == NULL) {
        char *copy = strdup(base);

        if (copy == NULL) {
            *error_r = "out of memory";
            return -1;
        }
        c->suffix.keys[slot] = copy;
        c->suffix.hashes[slot] = h;
        c->suffix.aux[slot] = 2;
    }
    const char *kept = c->suffix.keys[slot];
    size_t base_len = strlen(kept);

    for (;;) {
        char sfx[16];
        size_t sfx_len = 0;
        uint32_t n = c->suffix.aux[slot]++;

        /* "-N" with N in decimal */
        char digits[10];
        size_t nd = 0;
        do {
            digits[nd++] = (char)('0' + n % 10);
            n /= 10;
        } while (n != 0);
        sfx[sfx_len++] = '-';
        while (nd > 0)
            sfx[sfx_len++] = digits[--nd];

        size_t cut = base_len < UIDL_MAX - sfx_len ? base_len : UIDL_MAX - sfx_len;
        memcpy(out, kept, cut);
        memcpy(out + cut, sfx, sfx_len);
        out[cut + sfx_len] = '\0';
        if (!strset_has(&c->taken, out))
            break;
    }
    strset_add(&c->taken, out);
    c->stats.suffixed++;
    return 0;
}

static bool is_header_space(char ch)
{
    return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n';
}

/* Rule 4: the X-UIDL header, trimmed, when it is a valid unique-id. */
static bool xuidl_base(const char *v, char *buf)
{
    size_t len;

    if (v == NULL)
        return false;
    while (is_header_space(*v))
        v++;
    len = strlen(v);
    while (len > 0 && is_header_space(v[len - 1]))
        len--;
    if (!uidl_is_valid(v, len))
        return false;
    memcpy(buf, v, len);
    buf[len] = '\0';
    return true;
}

static int assign_all(struct ctx *c, const char **error_r)
{
    struct state_doc *doc = c->doc;
    char buf[UIDL_MAX + 1];

    /* Recorded UIDLs first, in maildrop order: a client knows them. */
    for (size_t i = 0; i < c->nitems; i++) {
        struct item *it = &c->items[i];

        if (it->src != SRC_KEPT && it->src != SRC_REASSOCIATED)
            continue;
        if (strset_has(&c->taken, it->base)) {
            it->collided = true;
            continue;
        }
        memcpy(c->uidls[it->out], it->base, strlen(it->base) + 1);
        strset_add(&c->taken, c->uidls[it->out]);
    }
    /* UIDLs of messages gone from the server are not given out again (but see
     * reclaim_by_guid). */
    for (size_t k = 0; k < doc->nmsgs; k++) {
        if (!c->present[k] && doc->msgs[k].uidl[0] != '\0') {
            size_t slot = strset_add(&c->taken, doc->msgs[k].uidl);
            c->taken.aux[slot] = 1;
        }
    }
    for (size_t i = 0; i < c->nitems; i++) {
        struct item *it = &c->items[i];

        if (it->collided && take(c, it->base, c->uidls[it->out], error_r) < 0)
            return -1;
    }
    for (size_t i = 0; i < c->nitems; i++) {
        struct item *it = &c->items[i];

        if (it->src == SRC_LEGACY && take(c, it->base, c->uidls[it->out], error_r) < 0)
            return -1;
    }
    for (size_t i = 0; i < c->nitems; i++) {
        struct item *it = &c->items[i];

        if (it->src != SRC_NONE || !c->reuse_xuidl || !xuidl_base(it->msg->x_uidl, buf))
            continue;
        it->src = SRC_XUIDL;
        if (take(c, buf, c->uidls[it->out], error_r) < 0)
            return -1;
    }
    for (size_t i = 0; i < c->nitems; i++) {
        struct item *it = &c->items[i];
        uint32_t uv = c->folders[it->fidx].uidvalidity;

        if (it->src != SRC_NONE)
            continue;
        it->src = SRC_TEMPLATE;
        if (uidl_template_format(c->tmpl, it->msg->uid, uv, it->msg->guid, buf) == 0)
            uidl_default(buf, it->msg->uid, uv);
        else if (c->uses_guid && it->msg->guid != NULL &&
                 reclaim_by_guid(c, buf, c->uidls[it->out])) {
            it->src = SRC_REASSOCIATED;
            continue;
        }
        if (take(c, buf, c->uidls[it->out], error_r) < 0)
            return -1;
    }
    return 0;
}

/* True when build_state would give doc->msgs back unchanged: every message kept its
 * recorded entry, with the same size and Message-ID hash, and no folder was replaced. */
static bool unchanged(const struct ctx *c)
{
    for (size_t fi = 0; fi < c->nfolders; fi++)
        if (c->replaced[c->folders[fi].folder])
            return false;
    for (size_t i = 0; i < c->nitems; i++) {
        const struct item *it = &c->items[i];
        if (it->src != SRC_KEPT || it->collided || it->old == NULL ||
            it->old->size != it->msg->size ||
            (it->msg->msgid_hash != 0 && it->old->msgid_hash != it->msg->msgid_hash) ||
            strcmp(it->old->uidl, c->uidls[it->out]) != 0)
            return false;
    }
    return true;
}

static void item_entry(const struct ctx *c, const struct item *it, struct state_msg *m)
{
    if (it->old != NULL)
        *m = *it->old;
    else
        memset(m, 0, sizeof(*m));
    m->folder = c->folders[it->fidx].folder;
    m->uid = it->msg->uid;
    memcpy(m->uidl, c->uidls[it->out], sizeof(m->uidl));
    if (m->size != it->msg->size)
        m->real_size = 0; /* measured for another size: measure again */
    m->size = it->msg->size;
    if (it->msg->msgid_hash != 0)
        m->msgid_hash = it->msg->msgid_hash;
}

/* The new doc->msgs: entries of absent messages as they were (except in
 * replaced folders), one entry per message of the snapshot. Both sides are
 * already in (folder, uid) order once the folders are taken by index, so one
 * merge keeps the document sorted. */
static struct state_msg *build_state(struct ctx *c, size_t *n_r, size_t *alloc_r)
{
    struct state_doc *doc = c->doc;
    struct state_msg *msgs;
    struct key *ford;
    size_t n = 0, k = 0, fo = 0, i;

    if (c->nitems > SIZE_MAX / sizeof(*msgs) - doc->nmsgs - 1)
        return NULL;
    *alloc_r = doc->nmsgs + c->nitems + 1;
    msgs = malloc(*alloc_r * sizeof(*msgs));
    ford = malloc((c->nfolders + 1) * sizeof(*ford));
    if (msgs == NULL || ford == NULL) {
        free(msgs);
        free(ford);
        return NULL;
    }
    for (size_t fi = 0; fi < c->nfolders; fi++)
        ford[fi] = (struct key){c->folders[fi].folder, 0, 0, fi};
    qsort(ford, c->nfolders, sizeof(*ford), key_cmp);

    i = fo < c->nfolders ? c->fstart[ford[fo].idx] : 0;
    for (;;) {
        /* the next snapshot item in (folder index, uid) order */
        while (fo < c->nfolders && i == c->fstart[ford[fo].idx + 1]) {
            if (++fo < c->nfolders)
                i = c->fstart[ford[fo].idx];
        }
        /* the next entry that stays as it is */
        while (k < doc->nmsgs && (c->present[k] || c->replaced[doc->msgs[k].folder]))
            k++;
        if (fo == c->nfolders && k == doc->nmsgs)
            break;
        if (fo < c->nfolders &&
            (k == doc->nmsgs || doc->msgs[k].folder > ford[fo].a ||
             (doc->msgs[k].folder == ford[fo].a && doc->msgs[k].uid > c->items[i].msg->uid)))
            item_entry(c, &c->items[i++], &msgs[n++]);
        else
            msgs[n++] = doc->msgs[k++];
    }
    free(ford);
    *n_r = n;
    return msgs;
}

int uidl_assign(struct state_doc *doc, const struct uidl_assign_folder *folders, size_t nfolders,
                const struct uidl_assign_config *config, char (*uidls_r)[UIDL_MAX + 1],
                bool *hidden_r, struct uidl_assign_stats *stats_r, const char **error_r)
{
    struct ctx c = {
        .doc = doc,
        .folders = folders,
        .nfolders = nfolders,
        .tmpl = config->tmpl != NULL ? config->tmpl : UIDL_TEMPLATE_DEFAULT,
        .reuse_xuidl = config->reuse_xuidl,
        .uidls = uidls_r,
    };
    struct state_msg *msgs = NULL;
    size_t nmsgs = 0, msgs_alloc = 0;

    if (uidl_template_check(c.tmpl, error_r) < 0)
        return -1;
    if (build_items(&c, error_r) < 0)
        goto fail;
    c.present = calloc(doc->nmsgs + 1, sizeof(*c.present));
    c.replaced = calloc(doc->nfolders + 1, sizeof(*c.replaced));
    c.legacy_used = calloc(doc->nlegacy + 1, sizeof(*c.legacy_used));
    if (c.present == NULL || c.replaced == NULL || c.legacy_used == NULL) {
        *error_r = "out of memory";
        goto fail;
    }
    if (match_state(&c, error_r) < 0)
        goto fail;
    /* The set holds each message's UIDL and those of the absent entries. */
    size_t absent = 0;
    for (size_t k = 0; k < doc->nmsgs; k++)
        absent += !c.present[k];
    c.uses_guid = uidl_template_uses_guid(c.tmpl);
    if (strset_init(&c.taken, c.nitems + absent, true) < 0) {
        *error_r = "out of memory";
        goto fail;
    }
    if (match_legacy(&c, error_r) < 0 || assign_all(&c, error_r) < 0)
        goto fail;
    /* A login that finds every message as recorded leaves doc->msgs as it is: a big
     * mailbox then costs no new array (and no page faults) per login. */
    bool same = unchanged(&c);
    if (!same && (msgs = build_state(&c, &nmsgs, &msgs_alloc)) == NULL) {
        *error_r = "out of memory";
        goto fail;
    }

    /* Nothing below can fail. */
    for (size_t i = 0; i < c.nitems; i++) {
        const struct item *it = &c.items[i];

        if (hidden_r != NULL)
            hidden_r[it->out] = it->old != NULL && it->old->hidden;
        switch (it->src) {
        case SRC_KEPT:
            c.stats.kept++;
            break;
        case SRC_REASSOCIATED:
            c.stats.reassociated++;
            break;
        case SRC_LEGACY:
            c.stats.legacy++;
            break;
        case SRC_XUIDL:
            c.stats.xuidl++;
            break;
        default:
            c.stats.generated++;
            break;
        }
    }
    for (size_t j = 0; j < doc->nlegacy; j++) {
        if (c.legacy_used[j])
            doc->legacy[j].matched = true;
        if (!doc->legacy[j].matched)
            c.stats.legacy_pending++;
    }
    for (size_t fi = 0; fi < nfolders; fi++)
        doc->folders[folders[fi].folder].uidvalidity = folders[fi].uidvalidity;
    if (!same) {
        free(doc->msgs);
        doc->msgs = msgs;
        doc->nmsgs = nmsgs;
        doc->msgs_alloc = msgs_alloc;
    }
    c.stats.rewritten = !same;
    if (stats_r != NULL)
        *stats_r = c.stats;
    ctx_free(&c);
    return 0;

fail:
    ctx_free(&c);
    return -1;
}

uint64_t uidl_assign_list_hash(char (*uidls)[UIDL_MAX + 1], const bool *skip, size_t n)
{
    uint64_t h = UIDL_FNV_OFFSET;

    for (size_t i = 0; i < n; i++) {
        if (skip != NULL && skip[i])
            continue;
        h = uidl_fnv1a(h, uidls[i], strlen(uidls[i]));
        h = uidl_fnv1a(h, "\n", 1);
    }
    return h;
}
