/* Tests of UIDL assignment: stability, UIDVALIDITY changes, legacy matching, X-UIDL, uniqueness. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "uidl_assign.h"

/* The documents are built here by hand so these tests need nothing of state.c
 * but test_state_roundtrip, which checks the result against it. */
static struct state_doc *doc_new(void)
{
    struct state_doc *doc = calloc(1, sizeof(*doc));

    ck_assert_ptr_nonnull(doc);
    doc->version = STATE_VERSION;
    return doc;
}

static uint16_t doc_folder(struct state_doc *doc, const char *name)
{
    doc->folders = realloc(doc->folders, (doc->nfolders + 1) * sizeof(*doc->folders));
    ck_assert_ptr_nonnull(doc->folders);
    memset(&doc->folders[doc->nfolders], 0, sizeof(*doc->folders));
    snprintf(doc->folders[doc->nfolders].name, sizeof(doc->folders[0].name), "%s", name);
    return (uint16_t)doc->nfolders++;
}

static void doc_legacy(struct state_doc *doc, const char *uidl, uint64_t size, uint64_t msgid)
{
    doc->legacy = realloc(doc->legacy, (doc->nlegacy + 1) * sizeof(*doc->legacy));
    ck_assert_ptr_nonnull(doc->legacy);
    memset(&doc->legacy[doc->nlegacy], 0, sizeof(*doc->legacy));
    snprintf(doc->legacy[doc->nlegacy].uidl, sizeof(doc->legacy[0].uidl), "%s", uidl);
    doc->legacy[doc->nlegacy].size = size;
    doc->legacy[doc->nlegacy].msgid_hash = msgid;
    doc->nlegacy++;
}

static struct state_msg *doc_find(struct state_doc *doc, uint16_t folder, uint32_t uid)
{
    for (size_t i = 0; i < doc->nmsgs; i++) {
        if (doc->msgs[i].folder == folder && doc->msgs[i].uid == uid)
            return &doc->msgs[i];
    }
    return NULL;
}

static void doc_free(struct state_doc **doc)
{
    free((*doc)->user);
    free((*doc)->folders);
    free((*doc)->msgs);
    free((*doc)->legacy);
    free(*doc);
    *doc = NULL;
}

/* The state stays sorted by (folder, uid) without duplicates. */
static void check_sorted(const struct state_doc *doc)
{
    for (size_t i = 1; i < doc->nmsgs; i++) {
        const struct state_msg *a = &doc->msgs[i - 1], *b = &doc->msgs[i];
        ck_assert(a->folder < b->folder || (a->folder == b->folder && a->uid < b->uid));
    }
}

static void check_unique(char (*uidls)[UIDL_MAX + 1], size_t n)
{
    for (size_t i = 0; i < n; i++) {
        ck_assert(uidl_is_valid(uidls[i], strlen(uidls[i])));
        for (size_t j = i + 1; j < n && n < 2000; j++)
            ck_assert_str_ne(uidls[i], uidls[j]);
    }
}

/* One folder, default template unless tmpl is set. */
static void run1(struct state_doc *doc, uint16_t folder, uint32_t uv,
                 const struct uidl_assign_msg *msgs, size_t n, const char *tmpl, bool xuidl,
                 char (*uidls)[UIDL_MAX + 1], bool *hidden, struct uidl_assign_stats *st)
{
    struct uidl_assign_folder f = {folder, uv, msgs, n};
    struct uidl_assign_config cfg = {tmpl, xuidl};
    const char *error = NULL;

    ck_assert_msg(uidl_assign(doc, &f, 1, &cfg, uidls, hidden, st, &error) == 0, "%s", error);
    check_sorted(doc);
    check_unique(uidls, n);
}

static const char *dflt(uint32_t uid, uint32_t uv)
{
    static char buf[4][UIDL_MAX + 1];
    static int k;

    k = (k + 1) % 4;
    uidl_default(buf[k], uid, uv);
    return buf[k];
}

START_TEST(test_fresh_and_stable)
{
    struct state_doc *doc = doc_new();
    uint16_t inbox = doc_folder(doc, "INBOX");
    struct uidl_assign_msg m[] = {
        {.uid = 7, .size = 100, .msgid_hash = 11},
        {.uid = 3, .size = 200, .msgid_hash = 12}, /* any order in */
        {.uid = 9, .size = 300},
    };
    char u[3][UIDL_MAX + 1], u2[4][UIDL_MAX + 1];
    struct uidl_assign_stats st;

    run1(doc, inbox, 0x5f5ede35, m, 3, NULL, false, u, NULL, &st);
    ck_assert_str_eq(u[0], "000000075f5ede35");
    ck_assert_str_eq(u[1], "000000035f5ede35");
    ck_assert_str_eq(u[2], "000000095f5ede35");
    ck_assert_uint_eq(st.generated, 3);
    ck_assert_uint_eq(doc->nmsgs, 3);
    ck_assert_uint_eq(doc->folders[inbox].uidvalidity, 0x5f5ede35);
    ck_assert_str_eq(doc_find(doc, inbox, 3)->uidl, "000000035f5ede35");
    ck_assert_uint_eq(doc_find(doc, inbox, 3)->size, 200);
    ck_assert_uint_eq(doc_find(doc, inbox, 7)->msgid_hash, 11);

    /* Next session: another template now, and a new message. Shown UIDLs stay. */
    struct uidl_assign_msg m2[] = {
        m[0],
        m[1],
        m[2],
        {.uid = 12, .size = 50},
    };
    run1(doc, inbox, 0x5f5ede35, m2, 4, "pg-%u", false, u2, NULL, &st);
    ck_assert_str_eq(u2[0], u[0]);
    ck_assert_str_eq(u2[1], u[1]);
    ck_assert_str_eq(u2[2], u[2]);
    ck_assert_str_eq(u2[3], "pg-12");
    ck_assert_uint_eq(st.kept, 3);
    ck_assert_uint_eq(st.generated, 1);

    /* And again: nothing changes, the hash neither. */
    char u3[4][UIDL_MAX + 1];
    run1(doc, inbox, 0x5f5ede35, m2, 4, "pg-%u", false, u3, NULL, &st);
    ck_assert_uint_eq(st.kept, 4);
    ck_assert_uint_eq(uidl_assign_list_hash(u2, NULL, 4), uidl_assign_list_hash(u3, NULL, 4));

    /* A message gone from the server keeps its entry until state_doc_prune(). */
    run1(doc, inbox, 0x5f5ede35, m2 + 1, 3, NULL, false, u3, NULL, &st);
    ck_assert_uint_eq(doc->nmsgs, 4);
    doc_free(&doc);
}
END_TEST

START_TEST(test_uidvalidity_change)
{
    struct state_doc *doc = doc_new();
    uint16_t inbox = doc_folder(doc, "INBOX");
    /* Two pairs share (Message-ID, size): a list mail delivered twice. */
    struct uidl_assign_msg old[] = {
        {.uid = 1, .size = 100, .msgid_hash = 501}, {.uid = 2, .size = 777, .msgid_hash = 502},
        {.uid = 3, .size = 777, .msgid_hash = 502}, {.uid = 4, .size = 300, .msgid_hash = 504},
        {.uid = 5, .size = 777, .msgid_hash = 502}, {.uid = 6, .size = 400}, /* no Message-ID */
        {.uid = 8, .size = 100, .msgid_hash = 508},
    };
    char u1[7][UIDL_MAX + 1];
    struct uidl_assign_stats st;

    /* X-UIDL-given and template UIDLs alike must survive. */
    struct uidl_assign_msg with_x[7];
    memcpy(with_x, old, sizeof(old));
    with_x[3].x_uidl = "legacy-x";
    run1(doc, inbox, 100, with_x, 7, NULL, true, u1, NULL, &st);
    ck_assert_str_eq(u1[3], "legacy-x");
    doc_find(doc, inbox, 4)->hidden = true;   /* deleted with on_delete=hide */
    doc_find(doc, inbox, 8)->real_size = 101; /* measured */

    /* Rebuilt mailbox: new UIDVALIDITY, new UIDs, same messages, one new. */
    struct uidl_assign_msg now[] = {
        {.uid = 10, .size = 100, .msgid_hash = 501}, {.uid = 11, .size = 777, .msgid_hash = 502},
        {.uid = 12, .size = 777, .msgid_hash = 502}, {.uid = 13, .size = 300, .msgid_hash = 504},
        {.uid = 14, .size = 777, .msgid_hash = 502}, {.uid = 15, .size = 400},
        {.uid = 16, .size = 100, .msgid_hash = 508}, {.uid = 17, .size = 900, .msgid_hash = 509},
    };
    char u2[8][UIDL_MAX + 1];
    bool hidden[8];

    run1(doc, inbox, 200, now, 8, NULL, false, u2, hidden, &st);
    ck_assert_str_eq(u2[0], u1[0]);
    ck_assert_str_eq(u2[1], u1[1]); /* the duplicates by order */
    ck_assert_str_eq(u2[2], u1[2]);
    ck_assert_str_eq(u2[4], u1[4]);
    ck_assert_str_eq(u2[3], "legacy-x");
    ck_assert_str_eq(u2[6], u1[6]);
    ck_assert_str_eq(u2[5], dflt(15, 200)); /* no Message-ID: new UIDL */
    ck_assert_str_eq(u2[7], dflt(17, 200));
    ck_assert_uint_eq(st.reassociated, 6);
    ck_assert_uint_eq(st.dropped, 1);
    ck_assert_uint_eq(st.generated, 2);
    ck_assert(hidden[3]);
    ck_assert(!hidden[0] && !hidden[7]);

    /* The folder's entries are the new UIDs only, with what was measured carried over. */
    ck_assert_uint_eq(doc->folders[inbox].uidvalidity, 200);
    ck_assert_uint_eq(doc->nmsgs, 8);
    for (uint32_t uid = 1; uid <= 8; uid++)
        ck_assert_ptr_null(doc_find(doc, inbox, uid));
    ck_assert(doc_find(doc, inbox, 13)->hidden);
    ck_assert_uint_eq(doc_find(doc, inbox, 16)->real_size, 101);
    ck_assert_str_eq(doc_find(doc, inbox, 12)->uidl, u1[2]);

    /* The session after: plain UID lookups again. */
    char u3[8][UIDL_MAX + 1];
    run1(doc, inbox, 200, now, 8, NULL, false, u3, NULL, &st);
    ck_assert_uint_eq(st.kept, 8);
    for (int i = 0; i < 8; i++)
        ck_assert_str_eq(u3[i], u2[i]);
    doc_free(&doc);
}
END_TEST

/* Fewer new copies than old ones of a key: the first ones by UID pair up. */
START_TEST(test_uidvalidity_change_fewer)
{
    struct state_doc *doc = doc_new();
    uint16_t f = doc_folder(doc, "INBOX");
    struct uidl_assign_msg old[] = {
        {.uid = 1, .size = 10, .msgid_hash = 5, .x_uidl = "A"},
        {.uid = 2, .size = 10, .msgid_hash = 5, .x_uidl = "B"},
        {.uid = 3, .size = 10, .msgid_hash = 5, .x_uidl = "C"},
    };
    struct uidl_assign_msg now[] = {
        {.uid = 50, .size = 10, .msgid_hash = 5},
        {.uid = 40, .size = 10, .msgid_hash = 5},
    };
    char u[3][UIDL_MAX + 1];
    struct uidl_assign_stats st;

    run1(doc, f, 1, old, 3, NULL, true, u, NULL, &st);
    run1(doc, f, 2, now, 2, NULL, true, u, NULL, &st);
    ck_assert_str_eq(u[1], "A"); /* uid 40 */
    ck_assert_str_eq(u[0], "B"); /* uid 50 */
    ck_assert_uint_eq(st.dropped, 1);
    doc_free(&doc);
}
END_TEST

static struct uidl_assign_msg msg(uint32_t uid, uint64_t size, uint64_t msgid)
{
    return (struct uidl_assign_msg){.uid = uid, .size = size, .msgid_hash = msgid};
}

START_TEST(test_legacy_order_and_size)
{
    struct state_doc *doc = doc_new();
    uint16_t f = doc_folder(doc, "INBOX");
    /* The old server's order; L4 was deleted before the migration. No Message-IDs. */
    doc_legacy(doc, "L1", 100, 0);
    doc_legacy(doc, "L2", 200, 0);
    doc_legacy(doc, "L3", 200, 0);
    doc_legacy(doc, "L4", 300, 0);
    doc_legacy(doc, "L5", 400, 0);
    struct uidl_assign_msg m[] = {msg(1, 100, 0), msg(2, 200, 0), msg(3, 200, 0), msg(4, 400, 0),
                                  msg(5, 500, 0)};
    char u[5][UIDL_MAX + 1];
    struct uidl_assign_stats st;

    run1(doc, f, 9, m, 5, NULL, false, u, NULL, &st);
    ck_assert_str_eq(u[0], "L1");
    ck_assert_str_eq(u[1], "L2");
    ck_assert_str_eq(u[2], "L3");
    ck_assert_str_eq(u[3], "L5");
    ck_assert_str_eq(u[4], dflt(5, 9));
    ck_assert_uint_eq(st.legacy, 4);
    ck_assert_uint_eq(st.legacy_pending, 1);
    ck_assert(doc->legacy[0].matched && doc->legacy[1].matched && doc->legacy[2].matched);
    ck_assert(!doc->legacy[3].matched && doc->legacy[4].matched);

    /* The next login keeps them through the state, not by matching again. */
    run1(doc, f, 9, m, 5, NULL, false, u, NULL, &st);
    ck_assert_uint_eq(st.kept, 5);
    ck_assert_uint_eq(st.legacy, 0);
    ck_assert_str_eq(u[3], "L5");
    ck_assert(!st.rewritten);
    /* All kept, but a Message-ID learnt and a size changed: the document must be saved. */
    m[0].msgid_hash = 77;
    m[4].size = 501;
    run1(doc, f, 9, m, 5, NULL, false, u, NULL, &st);
    ck_assert_uint_eq(st.kept, 5);
    ck_assert(st.rewritten);
    doc_free(&doc);
}
END_TEST

START_TEST(test_legacy_reordered)
{
    struct state_doc *doc = doc_new();
    uint16_t f = doc_folder(doc, "INBOX");
    char u[6][UIDL_MAX + 1];
    struct uidl_assign_stats st;

    /* With Message-IDs: fully reversed, with equal sizes. */
    doc_legacy(doc, "A", 100, 1);
    doc_legacy(doc, "B", 200, 2);
    doc_legacy(doc, "C", 200, 3);
    doc_legacy(doc, "D", 300, 4);
    struct uidl_assign_msg m[] = {msg(1, 300, 4), msg(2, 200, 3), msg(3, 200, 2), msg(4, 100, 1)};
    run1(doc, f, 9, m, 4, NULL, false, u, NULL, &st);
    ck_assert_str_eq(u[0], "D");
    ck_assert_str_eq(u[1], "C");
    ck_assert_str_eq(u[2], "B");
    ck_assert_str_eq(u[3], "A");
    ck_assert_uint_eq(st.legacy_pending, 0);
    doc_free(&doc);

    /* Without Message-IDs, distinct sizes: a swapped block and a lone one moved. */
    doc = doc_new();
    f = doc_folder(doc, "INBOX");
    doc_legacy(doc, "A", 1, 0);
    doc_legacy(doc, "B", 2, 0);
    doc_legacy(doc, "C", 3, 0);
    doc_legacy(doc, "D", 4, 0);
    doc_legacy(doc, "E", 5, 0);
    doc_legacy(doc, "F", 6, 0);
    struct uidl_assign_msg n[] = {msg(1, 4, 0), msg(2, 5, 0), msg(3, 6, 0),
                                  msg(4, 3, 0), msg(5, 1, 0), msg(6, 2, 0)};
    run1(doc, f, 9, n, 6, NULL, false, u, NULL, &st);
    ck_assert_str_eq(u[0], "D");
    ck_assert_str_eq(u[1], "E");
    ck_assert_str_eq(u[2], "F");
    ck_assert_str_eq(u[3], "C");
    ck_assert_str_eq(u[4], "A");
    ck_assert_str_eq(u[5], "B");
    ck_assert_uint_eq(st.legacy, 6);
    doc_free(&doc);
}
END_TEST

START_TEST(test_legacy_ambiguous_sizes)
{
    struct state_doc *doc = doc_new();
    uint16_t f = doc_folder(doc, "INBOX");
    char u[5][UIDL_MAX + 1];
    struct uidl_assign_stats st;

    /* All the same size: Message-IDs decide, whatever the order. */
    doc_legacy(doc, "X", 500, 10);
    doc_legacy(doc, "Y", 500, 11);
    doc_legacy(doc, "Z", 500, 12);
    struct uidl_assign_msg m[] = {msg(1, 500, 12), msg(2, 500, 10), msg(3, 500, 11),
                                  msg(4, 500, 99) /* new, same size */};
    run1(doc, f, 9, m, 4, NULL, false, u, NULL, &st);
    ck_assert_str_eq(u[0], "Z");
    ck_assert_str_eq(u[1], "X");
    ck_assert_str_eq(u[2], "Y");
    ck_assert_str_eq(u[3], dflt(4, 9));
    doc_free(&doc);

    /* Same size, no Message-IDs: by order, skipping the deleted one only at the end. */
    doc = doc_new();
    f = doc_folder(doc, "INBOX");
    doc_legacy(doc, "P", 500, 0);
    doc_legacy(doc, "Q", 500, 0);
    doc_legacy(doc, "R", 700, 0);
    struct uidl_assign_msg n[] = {msg(1, 500, 0), msg(2, 500, 0), msg(3, 700, 0)};
    run1(doc, f, 9, n, 3, NULL, false, u, NULL, &st);
    ck_assert_str_eq(u[0], "P");
    ck_assert_str_eq(u[1], "Q");
    ck_assert_str_eq(u[2], "R");
    doc_free(&doc);

    /* A known, different Message-ID never matches, even with the same size and place. */
    doc = doc_new();
    f = doc_folder(doc, "INBOX");
    doc_legacy(doc, "OLD", 100, 1);
    struct uidl_assign_msg o[] = {msg(1, 100, 2)};
    run1(doc, f, 9, o, 1, NULL, false, u, NULL, &st);
    ck_assert_str_eq(u[0], dflt(1, 9));
    ck_assert_uint_eq(st.legacy_pending, 1);
    doc_free(&doc);

    /* Deleted one first (with a Message-ID): the walk's veto, then Message-ID. */
    doc = doc_new();
    f = doc_folder(doc, "INBOX");
    doc_legacy(doc, "GONE", 100, 1);
    doc_legacy(doc, "HERE", 100, 2);
    doc_legacy(doc, "NEXT", 150, 3);
    struct uidl_assign_msg p[] = {msg(1, 100, 2), msg(2, 150, 3)};
    run1(doc, f, 9, p, 2, NULL, false, u, NULL, &st);
    ck_assert_str_eq(u[0], "HERE");
    ck_assert_str_eq(u[1], "NEXT");
    doc_free(&doc);
}
END_TEST

/* Legacy matching spans the folders of the maildrop, in maildrop order. */
START_TEST(test_legacy_two_folders)
{
    struct state_doc *doc = doc_new();
    uint16_t a = doc_folder(doc, "INBOX");
    uint16_t b = doc_folder(doc, "Archive");
    doc_legacy(doc, "L1", 10, 0);
    doc_legacy(doc, "L2", 20, 0);
    doc_legacy(doc, "L3", 30, 0);
    struct uidl_assign_msg ma[] = {msg(1, 10, 0), msg(2, 30, 0)};
    struct uidl_assign_msg mb[] = {msg(1, 20, 0)};
    struct uidl_assign_folder f[] = {{a, 5, ma, 2}, {b, 6, mb, 1}};
    struct uidl_assign_config cfg = {NULL, false};
    char u[3][UIDL_MAX + 1];
    const char *error;

    ck_assert_int_eq(uidl_assign(doc, f, 2, &cfg, u, NULL, NULL, &error), 0);
    ck_assert_str_eq(u[0], "L1");
    ck_assert_str_eq(u[1], "L3");
    ck_assert_str_eq(u[2], "L2");
    ck_assert_str_eq(doc_find(doc, b, 1)->uidl, "L2");
    doc_free(&doc);
}
END_TEST

START_TEST(test_xuidl)
{
    struct state_doc *doc = doc_new();
    uint16_t f = doc_folder(doc, "INBOX");
    char long71[72];
    memset(long71, 'q', 71);
    long71[71] = '\0';
    struct uidl_assign_msg m[] = {
        {.uid = 1, .size = 1, .x_uidl = "  abc123\t\r\n"},
        {.uid = 2, .size = 1, .x_uidl = "a b"},
        {.uid = 3, .size = 1, .x_uidl = ""},
        {.uid = 4, .size = 1, .x_uidl = long71},
        {.uid = 5, .size = 1, .x_uidl = "caf\xc3\xa9"},
        {.uid = 6, .size = 1, .x_uidl = "  \t "},
        {.uid = 7, .size = 1},
    };
    char u[7][UIDL_MAX + 1];
    struct uidl_assign_stats st;

    run1(doc, f, 3, m, 7, NULL, true, u, NULL, &st);
    ck_assert_str_eq(u[0], "abc123");
    for (uint32_t i = 1; i < 7; i++)
        ck_assert_str_eq(u[i], dflt(i + 1, 3));
    ck_assert_uint_eq(st.xuidl, 1);
    doc_free(&doc);

    /* reuse_xuidl off: the header is not looked at. */
    doc = doc_new();
    f = doc_folder(doc, "INBOX");
    run1(doc, f, 3, m, 1, NULL, false, u, NULL, &st);
    ck_assert_str_eq(u[0], dflt(1, 3));
    doc_free(&doc);
}
END_TEST

START_TEST(test_uniqueness)
{
    struct state_doc *doc = doc_new();
    uint16_t f = doc_folder(doc, "INBOX");
    char long70[71];
    memset(long70, 'z', 70);
    long70[70] = '\0';
    struct uidl_assign_msg m[] = {
        {.uid = 1, .size = 1, .x_uidl = "dup"},   {.uid = 2, .size = 1, .x_uidl = "dup"},
        {.uid = 3, .size = 1, .x_uidl = "dup-2"}, {.uid = 4, .size = 1, .x_uidl = "dup"},
        {.uid = 5, .size = 1, .x_uidl = long70},  {.uid = 6, .size = 1, .x_uidl = long70},
    };
    char u[6][UIDL_MAX + 1];
    struct uidl_assign_stats st;

    run1(doc, f, 3, m, 6, NULL, true, u, NULL, &st);
    ck_assert_str_eq(u[0], "dup");
    ck_assert_str_eq(u[1], "dup-2");
    ck_assert_str_eq(u[2], "dup-2-2"); /* its own X-UIDL was taken by then */
    ck_assert_str_eq(u[3], "dup-3");
    ck_assert_str_eq(u[4], long70);
    ck_assert_uint_eq(strlen(u[5]), 70);
    ck_assert(memcmp(u[5], long70, 68) == 0 && strcmp(u[5] + 68, "-2") == 0);
    ck_assert_uint_eq(st.suffixed, 4);

    /* A new message never takes a UIDL the state knows, present or gone (uid 1's "dup"
     * and the rest are gone from the server now); shown ones stay. */
    struct uidl_assign_msg n[] = {
        {.uid = 2, .size = 1},
        {.uid = 7, .size = 1, .x_uidl = "dup"},
        {.uid = 8, .size = 1, .x_uidl = "dup-2"},
    };
    char v[3][UIDL_MAX + 1];
    run1(doc, f, 3, n, 3, NULL, true, v, NULL, &st);
    ck_assert_str_eq(v[0], "dup-2");
    ck_assert_str_eq(v[1], "dup-4");
    ck_assert_str_eq(v[2], "dup-2-3");
    doc_free(&doc);
}
END_TEST

/* Two folders with the same UIDVALIDITY and UIDs: the template collides across them. */
START_TEST(test_unique_across_folders)
{
    struct state_doc *doc = doc_new();
    uint16_t a = doc_folder(doc, "INBOX");
    uint16_t b = doc_folder(doc, "Other");
    struct uidl_assign_msg m[] = {msg(1, 1, 0), msg(2, 1, 0)};
    struct uidl_assign_folder f[] = {{b, 7, m, 2}, {a, 7, m, 2}};
    struct uidl_assign_config cfg = {"%u", false};
    char u[4][UIDL_MAX + 1];
    const char *error;

    ck_assert_int_eq(uidl_assign(doc, f, 2, &cfg, u, NULL, NULL, &error), 0);
    ck_assert_str_eq(u[0], "1");
    ck_assert_str_eq(u[1], "2");
    ck_assert_str_eq(u[2], "1-2");
    ck_assert_str_eq(u[3], "2-2");
    check_sorted(doc);
    ck_assert_str_eq(doc_find(doc, a, 1)->uidl, "1-2");

    /* Stable the next time, whatever the folder order. */
    struct uidl_assign_folder g[] = {{a, 7, m, 2}, {b, 7, m, 2}};
    ck_assert_int_eq(uidl_assign(doc, g, 2, &cfg, u, NULL, NULL, &error), 0);
    ck_assert_str_eq(u[0], "1-2");
    ck_assert_str_eq(u[2], "1");
    doc_free(&doc);
}
END_TEST

/* A legacy UIDL equal to one a client was shown for another message is suffixed. */
START_TEST(test_legacy_vs_kept)
{
    struct state_doc *doc = doc_new();
    uint16_t f = doc_folder(doc, "INBOX");
    struct uidl_assign_msg m[] = {msg(1, 10, 0)};
    char u[2][UIDL_MAX + 1];
    struct uidl_assign_stats st;

    run1(doc, f, 1, m, 1, "%u", false, u, NULL, &st);
    ck_assert_str_eq(u[0], "1");
    doc_legacy(doc, "1", 20, 0);
    struct uidl_assign_msg n[] = {msg(1, 10, 0), msg(2, 20, 0)};
    run1(doc, f, 1, n, 2, "%u", false, u, NULL, &st);
    ck_assert_str_eq(u[0], "1");
    ck_assert_str_eq(u[1], "1-2");
    doc_free(&doc);
}
END_TEST

START_TEST(test_guid_template)
{
    struct state_doc *doc = doc_new();
    uint16_t f = doc_folder(doc, "INBOX");
    struct uidl_assign_msg m[] = {
        {.uid = 1, .size = 1, .guid = "M1a2b"},
        {.uid = 2, .size = 1}, /* the server gave none: the default format */
        {.uid = 3, .size = 1, .guid = "with space"},
    };
    char u[3][UIDL_MAX + 1];
    struct uidl_assign_stats st;

    run1(doc, f, 4, m, 3, "%g", false, u, NULL, &st);
    ck_assert_str_eq(u[0], "M1a2b");
    ck_assert_str_eq(u[1], dflt(2, 4));
    ck_assert_str_eq(u[2], dflt(3, 4));
    doc_free(&doc);
}
END_TEST

/* %g survives a rebuilt mailbox even without Message-IDs: the server's id names the
 * message; an absent entry's UIDL is only reclaimed by the same id, never by another. */
START_TEST(test_guid_survives_uidvalidity_change)
{
    struct state_doc *doc = doc_new();
    uint16_t f = doc_folder(doc, "INBOX");
    struct uidl_assign_msg before[] = {
        {.uid = 1, .size = 10, .guid = "g-one"},
        {.uid = 2, .size = 20, .guid = "g-two"},
        {.uid = 3, .size = 30}, /* no id: the default format, not kept after a rebuild */
    };
    char u[4][UIDL_MAX + 1];
    struct uidl_assign_stats st;

    run1(doc, f, 7, before, 3, "%g", false, u, NULL, &st);
    ck_assert_str_eq(u[0], "g-one");
    ck_assert_str_eq(u[1], "g-two");
    char old3[UIDL_MAX + 1];
    memcpy(old3, u[2], sizeof(old3));

    struct uidl_assign_msg after[] = {
        {.uid = 1, .size = 20, .guid = "g-two"},
        {.uid = 2, .size = 10, .guid = "g-one"},
        {.uid = 3, .size = 30},
        {.uid = 4, .size = 40, .guid = "g-new"},
    };
    run1(doc, f, 8, after, 4, "%g", false, u, NULL, &st);
    ck_assert_str_eq(u[0], "g-two");
    ck_assert_str_eq(u[1], "g-one");
    ck_assert_str_ne(u[2], old3); /* uid 3 under a new UIDVALIDITY is another message */
    ck_assert_str_eq(u[3], "g-new");
    ck_assert_uint_eq(st.reassociated, 2);

    /* Run again: everything is recorded now. */
    run1(doc, f, 8, after, 4, "%g", false, u, NULL, &st);
    ck_assert_str_eq(u[0], "g-two");
    ck_assert_uint_eq(st.kept, 4);
    doc_free(&doc);
}
END_TEST

START_TEST(test_errors_leave_doc)
{
    struct state_doc *doc = doc_new();
    uint16_t f = doc_folder(doc, "INBOX");
    struct uidl_assign_msg ok[] = {msg(1, 1, 0)};
    char u[4][UIDL_MAX + 1];
    struct uidl_assign_stats st;
    const char *error;

    run1(doc, f, 1, ok, 1, NULL, false, u, NULL, &st);
    struct state_msg *before = doc->msgs;

    struct uidl_assign_msg dup[] = {msg(3, 1, 0), msg(3, 2, 0)};
    struct uidl_assign_msg zero[] = {msg(0, 1, 0)};
    struct uidl_assign_folder bad_index = {5, 2, ok, 1};
    struct uidl_assign_folder twice[] = {{f, 2, ok, 1}, {f, 2, ok, 1}};
    struct uidl_assign_folder fdup = {f, 2, dup, 2};
    struct uidl_assign_folder fzero = {f, 2, zero, 1};
    struct uidl_assign_config cfg = {NULL, false}, bad_cfg = {"%q", false};

    ck_assert_int_eq(uidl_assign(doc, &bad_index, 1, &cfg, u, NULL, &st, &error), -1);
    ck_assert_str_eq(error, "folder index out of range");
    ck_assert_int_eq(uidl_assign(doc, twice, 2, &cfg, u, NULL, &st, &error), -1);
    ck_assert_str_eq(error, "a folder is given twice");
    ck_assert_int_eq(uidl_assign(doc, &fdup, 1, &cfg, u, NULL, &st, &error), -1);
    ck_assert_str_eq(error, "a UID is twice in one folder of the snapshot");
    ck_assert_int_eq(uidl_assign(doc, &fzero, 1, &cfg, u, NULL, &st, &error), -1);
    ck_assert_str_eq(error, "UID 0 in the snapshot");
    struct uidl_assign_msg huge[] = {msg(3, (uint64_t)INT64_MAX + 1, 0)};
    struct uidl_assign_folder fhuge = {f, 2, huge, 1};
    ck_assert_int_eq(uidl_assign(doc, &fhuge, 1, &cfg, u, NULL, &st, &error), -1);
    ck_assert_str_eq(error, "a size over 2^63 - 1 in the snapshot");
    ck_assert_int_eq(uidl_assign(doc, &twice[0], 1, &bad_cfg, u, NULL, &st, &error), -1);
    ck_assert_str_eq(error, "unknown variable (allowed: %u UID, %v UIDVALIDITY, %g server id, %%)");
    ck_assert_ptr_eq(doc->msgs, before);
    ck_assert_uint_eq(doc->nmsgs, 1);
    ck_assert_uint_eq(doc->folders[f].uidvalidity, 1);

    /* Empty: nothing to do, and no output array needed. */
    ck_assert_int_eq(uidl_assign(doc, NULL, 0, &cfg, NULL, NULL, &st, &error), 0);
    ck_assert_uint_eq(doc->nmsgs, 1);
    doc_free(&doc);
}
END_TEST

START_TEST(test_list_hash)
{
    char u[3][UIDL_MAX + 1] = {"a", "b", "c"};
    char w[3][UIDL_MAX + 1] = {"b", "a", "c"};
    bool skip[3] = {false, false, true};

    ck_assert_uint_eq(uidl_assign_list_hash(u, NULL, 0), UIDL_FNV_OFFSET);
    ck_assert_uint_eq(uidl_assign_list_hash(u, NULL, 2), uidl_fnv1a(UIDL_FNV_OFFSET, "a\nb\n", 4));
    ck_assert_uint_eq(uidl_assign_list_hash(u, skip, 3), uidl_assign_list_hash(u, NULL, 2));
    ck_assert_uint_ne(uidl_assign_list_hash(u, NULL, 3), uidl_assign_list_hash(w, NULL, 3));
    /* "ab" + "c" is not "a" + "bc" */
    char x[2][UIDL_MAX + 1] = {"ab", "c"}, y[2][UIDL_MAX + 1] = {"a", "bc"};
    ck_assert_uint_ne(uidl_assign_list_hash(x, NULL, 2), uidl_assign_list_hash(y, NULL, 2));
}
END_TEST

/* What uidl_assign leaves is a document state.c saves, loads back and grows. */
START_TEST(test_state_roundtrip)
{
    struct state_doc *doc = state_doc_new("bob", 3), *back = NULL;
    int inbox = state_doc_folder(doc, "INBOX");
    struct uidl_assign_msg m[] = {
        {.uid = 5, .size = 10, .msgid_hash = 0xfedcba9876543210ULL, .x_uidl = "dup"},
        {.uid = 6, .size = 20, .x_uidl = "dup"},
        {.uid = 7, .size = 30},
    };
    char u[3][UIDL_MAX + 1];
    struct uidl_assign_stats st;
    const char *error;
    char *json;
    size_t len;

    ck_assert_int_eq(inbox, 0);
    doc_legacy(doc, "OLD-1", 30, 0);
    doc_legacy(doc, "OLD-2", 99, 0);
    run1(doc, 0, 77, m, 3, NULL, true, u, NULL, &st);
    ck_assert_uint_ge(doc->msgs_alloc, doc->nmsgs);
    json = state_doc_serialize(doc, &len);
    ck_assert_ptr_nonnull(json);
    ck_assert_int_eq(state_doc_parse(json, len, &back, &error), 0);
    ck_assert_uint_eq(back->nmsgs, 3);
    for (size_t i = 0; i < 3; i++) {
        ck_assert_str_eq(back->msgs[i].uidl, doc->msgs[i].uidl);
        ck_assert_uint_eq(back->msgs[i].msgid_hash, doc->msgs[i].msgid_hash);
    }
    ck_assert_str_eq(back->msgs[2].uidl, "OLD-1");
    ck_assert(back->legacy[0].matched && !back->legacy[1].matched);
    ck_assert_uint_eq(back->folders[0].uidvalidity, 77);
    free(json);
    state_doc_free(&back);

    /* upsert grows the array uidl_assign put in */
    for (uint32_t uid = 100; uid < 200; uid++)
        ck_assert_ptr_nonnull(state_doc_upsert(doc, 0, uid));
    ck_assert_uint_eq(doc->nmsgs, 103);
    check_sorted(doc);
    state_doc_free(&doc);
}
END_TEST

/* ---- random sessions: the invariants hold whatever happens between them ---- */

static uint64_t rnd_state;

static uint32_t rnd(uint32_t n)
{
    rnd_state ^= rnd_state << 13;
    rnd_state ^= rnd_state >> 7;
    rnd_state ^= rnd_state << 17;
    return (uint32_t)(rnd_state % n);
}

#define RMAX 40

struct rmail {
    uint32_t uid;
    uint64_t size, msgid;
    char xuidl[8];
};

START_TEST(test_random_sessions)
{
    static const char *const tmpls[] = {NULL, "%u", "%v.%u", "x%2u"};

    rnd_state = 0x9e3779b97f4a7c15ULL;
    for (int iter = 0; iter < 400; iter++) {
        struct state_doc *doc = doc_new();
        struct rmail mail[2][RMAX];
        size_t nmail[2] = {0, 0};
        uint32_t uv[2] = {1 + rnd(3), 1 + rnd(3)}, next_uid[2] = {1, 1};
        const char *tmpl = tmpls[rnd(4)];
        bool xuidl = rnd(2);
        char prev[2][RMAX][UIDL_MAX + 1];
        uint32_t prev_uid[2][RMAX], prev_uv[2];
        size_t nprev[2] = {0, 0};

        doc_folder(doc, "INBOX");
        doc_folder(doc, "Other");
        for (uint32_t j = 0, n = rnd(RMAX); j < n; j++) {
            char name[16];
            snprintf(name, sizeof(name), "L%u", j);
            doc_legacy(doc, name, 1 + rnd(4), rnd(2) ? 0 : 1 + rnd(6));
        }
        for (int session = 0; session < 5; session++) {
            /* Between sessions: deletions, arrivals, sometimes a rebuilt folder. */
            for (int f = 0; f < 2; f++) {
                for (size_t i = 0; i < nmail[f];) {
                    if (rnd(5) == 0)
                        mail[f][i] = mail[f][--nmail[f]];
                    else
                        i++;
                }
                for (uint32_t k = rnd(6); k > 0 && nmail[f] < RMAX; k--) {
                    struct rmail *m = &mail[f][nmail[f]++];
                    m->uid = next_uid[f]++;
                    m->size = 1 + rnd(4);
                    m->msgid = rnd(3) ? 1 + rnd(6) : 0;
                    snprintf(m->xuidl, sizeof(m->xuidl), rnd(3) ? "X%u" : " x ", rnd(4));
                }
                if (rnd(6) == 0) {
                    uv[f] += 1 + rnd(2);
                    for (size_t i = 0; i < nmail[f]; i++)
                        mail[f][i].uid = next_uid[f]++;
                }
            }
            struct uidl_assign_msg in[2][RMAX];
            struct uidl_assign_folder fo[2];
            char u[2 * RMAX][UIDL_MAX + 1], again[2 * RMAX][UIDL_MAX + 1];
            struct uidl_assign_config cfg = {tmpl, xuidl};
            struct uidl_assign_stats st;
            const char *error;
            size_t total = 0;

            for (int f = 0; f < 2; f++) {
                for (size_t i = 0; i < nmail[f]; i++)
                    in[f][i] = (struct uidl_assign_msg){.uid = mail[f][i].uid,
                                                        .size = mail[f][i].size,
                                                        .msgid_hash = mail[f][i].msgid,
                                                        .x_uidl = mail[f][i].xuidl};
                fo[f] = (struct uidl_assign_folder){(uint16_t)f, uv[f], in[f], nmail[f]};
                total += nmail[f];
            }
            ck_assert_int_eq(uidl_assign(doc, fo, 2, &cfg, u, NULL, &st, &error), 0);
            check_sorted(doc);
            check_unique(u, total);

            size_t o = 0;
            for (int f = 0; f < 2; f++) {
                for (size_t i = 0; i < nmail[f]; i++, o++) {
                    /* recorded with its UIDL */
                    const struct state_msg *sm = doc_find(doc, (uint16_t)f, mail[f][i].uid);
                    ck_assert_ptr_nonnull(sm);
                    ck_assert_str_eq(sm->uidl, u[o]);
                    /* a message shown before under this UIDVALIDITY keeps its UIDL */
                    for (size_t k = 0; k < nprev[f] && prev_uv[f] == uv[f]; k++) {
                        if (prev_uid[f][k] == mail[f][i].uid)
                            ck_assert_str_eq(prev[f][k], u[o]);
                    }
                }
                nprev[f] = nmail[f];
                prev_uv[f] = uv[f];
                for (size_t i = 0; i < nmail[f]; i++) {
                    prev_uid[f][i] = mail[f][i].uid;
                    memcpy(prev[f][i], u[(f == 0 ? 0 : nmail[0]) + i], UIDL_MAX + 1);
                }
            }
            ck_assert_uint_eq(doc->folders[0].uidvalidity, uv[0]);
            ck_assert_uint_eq(doc->folders[1].uidvalidity, uv[1]);

            /* The same login again: all kept, same list. */
            ck_assert_int_eq(uidl_assign(doc, fo, 2, &cfg, again, NULL, &st, &error), 0);
            ck_assert_uint_eq(st.kept, total);
            ck_assert_uint_eq(uidl_assign_list_hash(u, NULL, total),
                              uidl_assign_list_hash(again, NULL, total));
        }
        doc_free(&doc);
    }
}
END_TEST

/* ---- 100,000 messages ---- */

#define BIG 100000

/* CPU time of this process (page faults included): other jobs on a shared CI
 * machine do not make the bound flaky. */
static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static bool big_timing(void)
{
    const char *e = getenv("POPGATE_BIG_TESTS");
    return e != NULL && strcmp(e, "1") == 0;
}

/* Times one call; the 0.2 s bound is asserted with POPGATE_BIG_TESTS=1 (meant for
 * an optimised build without sanitizers: ASan doubles the time), otherwise reported. */
static void timed(const char *what, struct state_doc *doc, uint32_t uv,
                  const struct uidl_assign_msg *m, size_t n, bool xuidl, char (*u)[UIDL_MAX + 1],
                  struct uidl_assign_stats *st)
{
    struct uidl_assign_folder f = {0, uv, m, n};
    struct uidl_assign_config cfg = {NULL, xuidl};
    const char *error;
    double t0 = now_s(), dt;

    ck_assert_int_eq(uidl_assign(doc, &f, 1, &cfg, u, NULL, st, &error), 0);
    dt = now_s() - t0;
    fprintf(stderr, "uidl_assign %s, %d messages: %.3f s CPU\n", what, (int)n, dt);
    if (big_timing())
        ck_assert_msg(dt < 0.2, "%s took %.3f s", what, dt);
}

START_TEST(test_big)
{
    struct state_doc *doc = doc_new();
    struct uidl_assign_msg *m = calloc(BIG, sizeof(*m));
    char(*u)[UIDL_MAX + 1] = calloc(BIG, sizeof(*u));
    char(*v)[UIDL_MAX + 1] = calloc(BIG, sizeof(*v));
    struct uidl_assign_stats st;

    ck_assert(m != NULL && u != NULL && v != NULL);
    /* The caller's output arrays are the caller's cost: touch them before timing. */
    memset(u, 1, BIG * sizeof(*u));
    memset(v, 1, BIG * sizeof(*v));
    doc_folder(doc, "INBOX");
    /* Legacy list of the old server: sizes repeat every 500, no Message-IDs for half. */
    doc->legacy = calloc(BIG, sizeof(*doc->legacy));
    ck_assert_ptr_nonnull(doc->legacy);
    doc->nlegacy = BIG;
    for (size_t i = 0; i < BIG; i++) {
        snprintf(doc->legacy[i].uidl, sizeof(doc->legacy[i].uidl), "old%zu", i);
        doc->legacy[i].size = 1000 + i % 500;
        doc->legacy[i].msgid_hash = i % 2 ? 0 : 7000000 + i;
        m[i] = msg((uint32_t)(i + 1), 1000 + i % 500, 7000000 + i);
    }
    timed("legacy", doc, 1, m, BIG, false, u, &st);
    ck_assert_uint_eq(st.legacy, BIG);
    for (size_t i = 0; i < BIG; i += 997) {
        char name[32];
        snprintf(name, sizeof(name), "old%zu", i);
        ck_assert_str_eq(u[i], name);
    }

    timed("kept", doc, 1, m, BIG, false, v, &st);
    ck_assert_uint_eq(st.kept, BIG);

    /* Rebuilt mailbox, UIDs shifted, in reverse Message-ID order for good measure. */
    for (size_t i = 0; i < BIG; i++)
        m[i].uid = (uint32_t)(BIG * 2 - i);
    timed("uidvalidity change", doc, 2, m, BIG, false, v, &st);
    ck_assert_uint_eq(st.reassociated, BIG);
    for (size_t i = 0; i < BIG; i++)
        ck_assert(strcmp(u[i], v[i]) == 0);
    doc_free(&doc);

    /* Worst cases: one X-UIDL on every message, one size and no Message-ID everywhere. */
    doc = doc_new();
    doc_folder(doc, "INBOX");
    doc->legacy = calloc(BIG, sizeof(*doc->legacy));
    ck_assert_ptr_nonnull(doc->legacy);
    doc->nlegacy = BIG;
    for (size_t i = 0; i < BIG; i++) {
        m[i] = msg((uint32_t)(i + 1), 42, 0);
        m[i].x_uidl = "same";
        snprintf(doc->legacy[i].uidl, sizeof(doc->legacy[i].uidl), "leg%zu", i);
        doc->legacy[i].size = 43; /* never matching at first: another size */
    }
    timed("one X-UIDL", doc, 1, m, BIG, true, u, &st);
    ck_assert_uint_eq(st.suffixed, BIG - 1);
    ck_assert_str_eq(u[BIG - 1], "same-100000");
    for (size_t i = 0; i < BIG; i++)
        doc->legacy[i].size = 42;
    for (size_t i = 0; i < BIG; i++)
        m[i].uid = (uint32_t)(BIG + i + 1);
    timed("one size, no ids", doc, 1, m, BIG, true, u, &st);
    ck_assert_uint_eq(st.legacy, BIG);
    ck_assert_str_eq(u[5], "leg5");
    doc_free(&doc);
    free(m);
    free(u);
    free(v);
}
END_TEST

static Suite *uidl_assign_suite(void)
{
    Suite *s = suite_create("uidl_assign");
    TCase *tc = tcase_create("core");
    TCase *big = tcase_create("big");

    tcase_add_test(tc, test_fresh_and_stable);
    tcase_add_test(tc, test_uidvalidity_change);
    tcase_add_test(tc, test_uidvalidity_change_fewer);
    tcase_add_test(tc, test_legacy_order_and_size);
    tcase_add_test(tc, test_legacy_reordered);
    tcase_add_test(tc, test_legacy_ambiguous_sizes);
    tcase_add_test(tc, test_legacy_two_folders);
    tcase_add_test(tc, test_xuidl);
    tcase_add_test(tc, test_uniqueness);
    tcase_add_test(tc, test_unique_across_folders);
    tcase_add_test(tc, test_legacy_vs_kept);
    tcase_add_test(tc, test_guid_template);
    tcase_add_test(tc, test_guid_survives_uidvalidity_change);
    tcase_add_test(tc, test_errors_leave_doc);
    tcase_add_test(tc, test_list_hash);
    tcase_add_test(tc, test_random_sessions);
    tcase_add_test(tc, test_state_roundtrip);
    tcase_add_test(big, test_big);
    tcase_set_timeout(big, 60);
    tcase_set_timeout(tc, 60);
    suite_add_tcase(s, tc);
    suite_add_tcase(s, big);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(uidl_assign_suite());
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
