/* The maildrop owns one session's POP3 view of the mailbox: numbers, folders, UIDs, sizes and DELE
 * marks. */
#include "maildrop.h"

#include <stdlib.h>
#include <string.h>

/* First allocation; doubling from here reaches 100,000 messages in a dozen steps. */
#define MAILDROP_INITIAL_ALLOC 64
/* POP3 message numbers are uint32_t and 0 is not one. */
#define MAILDROP_MAX_MESSAGES UINT32_MAX

struct maildrop_folder {
    char *name;
    uint32_t uidvalidity;
    uint32_t first, count; /* once sealed: its messages are msgs[first .. first + count) */
};

/* Where a message's server id is in the guid arena. */
struct guid_ref {
    uint32_t uid;
    uint16_t folder;
    uint32_t off;
};

struct maildrop {
    /* Server ids, only when asked for: refs sorted by (folder, uid) at seal. */
    struct guid_ref *guids;
    size_t nguids, guids_alloc;
    char *guid_arena;
    size_t arena_len, arena_alloc;
    struct maildrop_folder *folders;
    size_t nfolders;
    bool sealed;
    /* Every add so far had a higher UID than the one before: seal need not sort. */
    bool ascending;
    struct maildrop_msg *msgs;
    size_t count, alloc;
    /* Kept current on every change so that STAT is O(1) on huge mailboxes. */
    uint32_t live_count, deleted_count;
    uint64_t live_octets, total_octets;
};

/* Sort key for seal: the add order breaks ties, so the last report of a UID wins
 * even though qsort is not stable. */
struct sort_key {
    uint16_t folder;
    uint32_t uid;
    uint32_t seq;
};

struct maildrop *maildrop_new(void)
{
    struct maildrop *m = calloc(1, sizeof(*m));

    if (m == NULL)
        return NULL;
    m->ascending = true;
    return m;
}

void maildrop_free(struct maildrop **mp)
{
    struct maildrop *m = *mp;

    if (m == NULL)
        return;
    for (size_t i = 0; i < m->nfolders; i++)
        free(m->folders[i].name);
    free(m->folders);
    free(m->guids);
    free(m->guid_arena);
    free(m->msgs);
    free(m);
    *mp = NULL;
}

int maildrop_add_folder(struct maildrop *m, const char *name, uint32_t uidvalidity)
{
    if (m->sealed || m->nfolders >= MAILDROP_FOLDERS_MAX)
        return -1;
    struct maildrop_folder *folders = realloc(m->folders, (m->nfolders + 1) * sizeof(*folders));
    if (folders == NULL)
        return -1;
    m->folders = folders;
    char *copy = strdup(name);
    if (copy == NULL)
        return -1;
    m->folders[m->nfolders] = (struct maildrop_folder){.name = copy, .uidvalidity = uidvalidity};
    return (int)m->nfolders++;
}

int maildrop_add(struct maildrop *m, uint32_t uid, uint64_t size)
{
    if (m->sealed || uid == 0 || m->nfolders == 0 || m->count >= MAILDROP_MAX_MESSAGES)
        return -1;
    if (m->count == m->alloc) {
        size_t alloc = m->alloc == 0 ? MAILDROP_INITIAL_ALLOC : m->alloc * 2;
        if (alloc > MAILDROP_MAX_MESSAGES)
            alloc = MAILDROP_MAX_MESSAGES;
        if (alloc > SIZE_MAX / sizeof(*m->msgs))
            return -1;
        struct maildrop_msg *msgs = realloc(m->msgs, alloc * sizeof(*msgs));
        if (msgs == NULL)
            return -1;
        m->msgs = msgs;
        m->alloc = alloc;
    }
    /* Folders only grow, so only a UID at or below the last one of its folder needs a sort. */
    uint16_t folder = (uint16_t)(m->nfolders - 1);
    if (m->count > 0 && m->msgs[m->count - 1].folder == folder && uid <= m->msgs[m->count - 1].uid)
        m->ascending = false;
    m->msgs[m->count] = (struct maildrop_msg){.size = size, .uid = uid, .folder = folder};
    m->count++;
    return 0;
}

/* Grows *p (elements of size elem, *alloc of them) to hold need; -1 when out of memory. */
static int grow(void *p, size_t *alloc, size_t need, size_t elem)
{
    if (need <= *alloc)
        return 0;
    size_t n = *alloc ? *alloc : MAILDROP_INITIAL_ALLOC;
    while (n < need)
        n *= 2;
    if (n > SIZE_MAX / elem)
        return -1;
    void *q = realloc(*(void **)p, n * elem);
    if (q == NULL)
        return -1;
    *(void **)p = q;
    *alloc = n;
    return 0;
}

int maildrop_set_guid(struct maildrop *m, uint32_t uid, const char *guid)
{
    size_t len = strlen(guid) + 1;
    if (m->sealed || m->nfolders == 0 || m->arena_len + len > UINT32_MAX ||
        grow(&m->guids, &m->guids_alloc, m->nguids + 1, sizeof(*m->guids)) < 0 ||
        grow(&m->guid_arena, &m->arena_alloc, m->arena_len + len, 1) < 0)
        return -1;
    memcpy(m->guid_arena + m->arena_len, guid, len);
    m->guids[m->nguids++] = (struct guid_ref){
        .uid = uid, .folder = (uint16_t)(m->nfolders - 1), .off = (uint32_t)m->arena_len};
    m->arena_len += len;
    return 0;
}

static int compare_guid_refs(const void *a, const void *b)
{
    const struct guid_ref *x = a, *y = b;
    if (x->folder != y->folder)
        return x->folder < y->folder ? -1 : 1;
    if (x->uid != y->uid)
        return x->uid < y->uid ? -1 : 1;
    return 0;
}

const char *maildrop_guid(const struct maildrop *m, uint32_t n)
{
    const struct maildrop_msg *msg = maildrop_at(m, n);
    if (msg == NULL || m->nguids == 0)
        return NULL;
    const struct guid_ref key = {.uid = msg->uid, .folder = msg->folder};
    const struct guid_ref *r =
        bsearch(&key, m->guids, m->nguids, sizeof(*m->guids), compare_guid_refs);
    return r != NULL ? m->guid_arena + r->off : NULL;
}

static int compare_keys(const void *a, const void *b)
{
    const struct sort_key *x = a, *y = b;

    if (x->folder != y->folder)
        return x->folder < y->folder ? -1 : 1;
    if (x->uid != y->uid)
        return x->uid < y->uid ? -1 : 1;
    if (x->seq != y->seq)
        return x->seq < y->seq ? -1 : 1;
    return 0;
}

/* Sorts by folder and UID and keeps the last size of each. Returns -1 when out of memory,
 * leaving the messages as they were. */
static int sort_and_dedup(struct maildrop *m)
{
    struct sort_key *keys = malloc(m->count * sizeof(*keys));
    struct maildrop_msg *msgs = malloc(m->count * sizeof(*msgs));
    size_t n = 0;

    if (keys == NULL || msgs == NULL) {
        free(keys);
        free(msgs);
        return -1;
    }
    for (size_t i = 0; i < m->count; i++) {
        keys[i].folder = m->msgs[i].folder;
        keys[i].uid = m->msgs[i].uid;
        keys[i].seq = (uint32_t)i;
    }
    qsort(keys, m->count, sizeof(*keys), compare_keys);
    for (size_t i = 0; i < m->count; i++) {
        /* Within a run of equal UIDs the last key is the last add. */
        if (i + 1 < m->count && keys[i + 1].uid == keys[i].uid &&
            keys[i + 1].folder == keys[i].folder)
            continue;
        msgs[n++] = m->msgs[keys[i].seq];
    }
    free(keys);
    free(m->msgs);
    m->msgs = msgs;
    m->count = n;
    m->alloc = m->count;
    return 0;
}

static int compare_msgs(const void *a, const void *b)
{
    const struct maildrop_msg *x = a, *y = b;

    if (x->folder != y->folder)
        return x->folder < y->folder ? -1 : 1;
    if (x->uid != y->uid)
        return x->uid < y->uid ? -1 : 1;
    return 0;
}

/* seal cannot fail, so without memory for the keys the messages are sorted where
 * they are. qsort is not stable, so which size a duplicate UID keeps is then
 * unspecified; a server reporting one UID twice is already broken. */
static void sort_in_place(struct maildrop *m)
{
    size_t n = 0;

    qsort(m->msgs, m->count, sizeof(*m->msgs), compare_msgs);
    for (size_t i = 0; i < m->count; i++) {
        if (i + 1 < m->count && m->msgs[i + 1].uid == m->msgs[i].uid &&
            m->msgs[i + 1].folder == m->msgs[i].folder)
            continue;
        m->msgs[n++] = m->msgs[i];
    }
    m->count = n;
}

void maildrop_seal(struct maildrop *m)
{
    if (m->sealed)
        return;
    m->sealed = true;
    if (m->nguids > 1)
        qsort(m->guids, m->nguids, sizeof(*m->guids), compare_guid_refs);
    if (!m->ascending && sort_and_dedup(m) < 0)
        sort_in_place(m);
    if (m->count < m->alloc && m->count > 0) {
        /* Growth left up to half the array unused; the snapshot lives all session. */
        struct maildrop_msg *msgs = realloc(m->msgs, m->count * sizeof(*msgs));
        if (msgs != NULL) {
            m->msgs = msgs;
            m->alloc = m->count;
        }
    }
    m->total_octets = 0;
    for (size_t i = 0; i < m->count; i++) {
        struct maildrop_folder *f = &m->folders[m->msgs[i].folder];
        if (f->count++ == 0)
            f->first = (uint32_t)i;
        m->total_octets += m->msgs[i].size;
    }
    m->live_count = (uint32_t)m->count;
    m->live_octets = m->total_octets;
    m->deleted_count = 0;
}

size_t maildrop_folder_count(const struct maildrop *m)
{
    return m->nfolders;
}

const char *maildrop_folder_name(const struct maildrop *m, size_t f)
{
    return m->folders[f].name;
}

uint32_t maildrop_folder_uidvalidity(const struct maildrop *m, size_t f)
{
    return m->folders[f].uidvalidity;
}

uint32_t maildrop_folder_range(const struct maildrop *m, size_t f, uint32_t *first_r)
{
    *first_r = m->folders[f].first + 1;
    return m->sealed ? m->folders[f].count : 0;
}

uint32_t maildrop_count(const struct maildrop *m)
{
    return m->sealed ? (uint32_t)m->count : 0;
}

void maildrop_stat(const struct maildrop *m, uint32_t *count_r, uint64_t *octets_r)
{
    *count_r = m->live_count;
    *octets_r = m->live_octets;
}

static struct maildrop_msg *msg_at(const struct maildrop *m, uint32_t n)
{
    if (!m->sealed || n == 0 || n > m->count)
        return NULL;
    return &m->msgs[n - 1];
}

enum maildrop_lookup maildrop_get(const struct maildrop *m, uint32_t n,
                                  const struct maildrop_msg **msg_r)
{
    const struct maildrop_msg *msg = msg_at(m, n);

    if (msg == NULL)
        return MAILDROP_NO_SUCH;
    if (msg->deleted)
        return MAILDROP_DELETED;
    *msg_r = msg;
    return MAILDROP_OK;
}

const struct maildrop_msg *maildrop_at(const struct maildrop *m, uint32_t n)
{
    return msg_at(m, n);
}

enum maildrop_lookup maildrop_delete(struct maildrop *m, uint32_t n)
{
    struct maildrop_msg *msg = msg_at(m, n);

    if (msg == NULL)
        return MAILDROP_NO_SUCH;
    if (msg->deleted)
        return MAILDROP_DELETED;
    msg->deleted = true;
    m->live_count--;
    m->live_octets -= msg->size;
    m->deleted_count++;
    return MAILDROP_OK;
}

void maildrop_set_gone(struct maildrop *m, uint32_t n)
{
    struct maildrop_msg *msg = msg_at(m, n);

    if (msg != NULL)
        msg->gone = true;
}

void maildrop_reset(struct maildrop *m)
{
    if (m->deleted_count == 0)
        return;
    for (size_t i = 0; i < m->count; i++)
        m->msgs[i].deleted = false;
    m->live_count = (uint32_t)m->count;
    m->live_octets = m->total_octets;
    m->deleted_count = 0;
}

uint32_t maildrop_deleted_count(const struct maildrop *m)
{
    return m->deleted_count;
}

size_t maildrop_deleted_uids(const struct maildrop *m, size_t f, uint32_t *uids, size_t cap)
{
    size_t n = 0;

    if (!m->sealed || f >= m->nfolders)
        return 0;
    /* A folder's messages are in UID order, so the result is ascending without sorting. */
    const struct maildrop_folder *fo = &m->folders[f];
    for (size_t i = fo->first; i < (size_t)fo->first + fo->count && n < cap; i++) {
        if (m->msgs[i].deleted)
            uids[n++] = m->msgs[i].uid;
    }
    return n;
}
