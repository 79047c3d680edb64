/* Tests of the maildrop snapshot: ordering, duplicates, lookups, DELE/RSET, STAT and deleted UIDs.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>

#include "maildrop.h"

/* Big enough to show that STAT and lookups do not scan. */
#define MANY 100000

/* A maildrop whose one folder is INBOX. */
static struct maildrop *inbox(uint32_t uidvalidity)
{
    struct maildrop *m = maildrop_new();
    ck_assert_ptr_nonnull(m);
    ck_assert_int_eq(maildrop_add_folder(m, "INBOX", uidvalidity), 0);
    return m;
}

START_TEST(test_folders)
{
    struct maildrop *m = maildrop_new();
    const struct maildrop_msg *msg = NULL;
    uint32_t first = 0, uids[8];

    /* No folder yet: nothing can be added. */
    ck_assert_int_eq(maildrop_add(m, 1, 10), -1);
    ck_assert_int_eq(maildrop_add_folder(m, "INBOX", 7), 0);
    ck_assert_int_eq(maildrop_add(m, 9, 90), 0);
    ck_assert_int_eq(maildrop_add(m, 3, 30), 0);
    ck_assert_int_eq(maildrop_add_folder(m, "Empty", 8), 1);
    ck_assert_int_eq(maildrop_add_folder(m, "Spam", 9), 2);
    /* UIDs repeat across folders: they are different messages. */
    ck_assert_int_eq(maildrop_add(m, 3, 300), 0);
    ck_assert_int_eq(maildrop_add(m, 1, 100), 0);
    maildrop_seal(m);
    ck_assert_int_eq(maildrop_add_folder(m, "Late", 1), -1);
    ck_assert_uint_eq(maildrop_folder_count(m), 3);
    ck_assert_str_eq(maildrop_folder_name(m, 2), "Spam");
    ck_assert_uint_eq(maildrop_folder_uidvalidity(m, 1), 8);
    ck_assert_uint_eq(maildrop_count(m), 4);
    static const struct {
        uint16_t folder;
        uint32_t uid;
        uint64_t size;
    } want[] = {{0, 3, 30}, {0, 9, 90}, {2, 1, 100}, {2, 3, 300}};
    for (uint32_t n = 1; n <= 4; n++) {
        ck_assert_int_eq(maildrop_get(m, n, &msg), MAILDROP_OK);
        ck_assert_uint_eq(msg->folder, want[n - 1].folder);
        ck_assert_uint_eq(msg->uid, want[n - 1].uid);
        ck_assert_uint_eq(msg->size, want[n - 1].size);
    }
    ck_assert_uint_eq(maildrop_folder_range(m, 0, &first), 2);
    ck_assert_uint_eq(first, 1);
    ck_assert_uint_eq(maildrop_folder_range(m, 1, &first), 0);
    ck_assert_uint_eq(maildrop_folder_range(m, 2, &first), 2);
    ck_assert_uint_eq(first, 3);
    /* Deleted UIDs come per folder. */
    ck_assert_int_eq(maildrop_delete(m, 2), MAILDROP_OK);
    ck_assert_int_eq(maildrop_delete(m, 4), MAILDROP_OK);
    ck_assert_uint_eq(maildrop_deleted_count(m), 2);
    ck_assert_uint_eq(maildrop_deleted_uids(m, 0, uids, 8), 1);
    ck_assert_uint_eq(uids[0], 9);
    ck_assert_uint_eq(maildrop_deleted_uids(m, 1, uids, 8), 0);
    ck_assert_uint_eq(maildrop_deleted_uids(m, 2, uids, 8), 1);
    ck_assert_uint_eq(uids[0], 3);
    ck_assert_uint_eq(maildrop_deleted_uids(m, 3, uids, 8), 0);
    maildrop_free(&m);
}
END_TEST

START_TEST(test_guids)
{
    struct maildrop *m = maildrop_new();
    ck_assert_int_eq(maildrop_set_guid(m, 1, "x"), -1); /* no folder yet */
    ck_assert_int_eq(maildrop_add_folder(m, "INBOX", 1), 0);
    /* Reported out of order, and for more messages than the initial allocation. */
    char id[32];
    for (uint32_t uid = 200; uid >= 1; uid--) {
        ck_assert_int_eq(maildrop_add(m, uid, uid), 0);
        if (uid % 3 != 0) {
            snprintf(id, sizeof(id), "guid-inbox-%u", uid);
            ck_assert_int_eq(maildrop_set_guid(m, uid, id), 0);
        }
    }
    ck_assert_int_eq(maildrop_add_folder(m, "Spam", 2), 1);
    ck_assert_int_eq(maildrop_add(m, 5, 1), 0);
    ck_assert_int_eq(maildrop_set_guid(m, 5, "guid-spam-5"), 0);
    ck_assert_ptr_null(maildrop_guid(m, 1)); /* not sealed */
    maildrop_seal(m);
    ck_assert_int_eq(maildrop_set_guid(m, 5, "late"), -1);
    for (uint32_t n = 1; n <= 200; n++) {
        const char *g = maildrop_guid(m, n);
        if (n % 3 == 0) {
            ck_assert_ptr_null(g);
            continue;
        }
        snprintf(id, sizeof(id), "guid-inbox-%u", n);
        ck_assert_ptr_nonnull(g);
        ck_assert_str_eq(g, id);
    }
    ck_assert_str_eq(maildrop_guid(m, 201), "guid-spam-5");
    ck_assert_ptr_null(maildrop_guid(m, 202));
    maildrop_free(&m);

    /* Without any: NULL everywhere. */
    m = inbox(1);
    ck_assert_int_eq(maildrop_add(m, 1, 1), 0);
    maildrop_seal(m);
    ck_assert_ptr_null(maildrop_guid(m, 1));
    maildrop_free(&m);
}
END_TEST

START_TEST(test_unordered_adds)
{
    struct maildrop *m = inbox(0x5f5ede35);
    const struct maildrop_msg *msg = NULL;

    ck_assert_ptr_nonnull(m);
    ck_assert_int_eq(maildrop_add(m, 5, 50), 0);
    ck_assert_int_eq(maildrop_add(m, 2, 20), 0);
    ck_assert_int_eq(maildrop_add(m, 9, 90), 0);
    /* Nothing is visible before the seal. */
    ck_assert_uint_eq(maildrop_count(m), 0);
    ck_assert_int_eq(maildrop_get(m, 1, &msg), MAILDROP_NO_SUCH);
    maildrop_seal(m);
    ck_assert_uint_eq(maildrop_folder_uidvalidity(m, 0), 0x5f5ede35);
    ck_assert_uint_eq(maildrop_count(m), 3);
    ck_assert_int_eq(maildrop_get(m, 1, &msg), MAILDROP_OK);
    ck_assert_uint_eq(msg->uid, 2);
    ck_assert_uint_eq(msg->size, 20);
    ck_assert(!msg->deleted);
    ck_assert_int_eq(maildrop_get(m, 2, &msg), MAILDROP_OK);
    ck_assert_uint_eq(msg->uid, 5);
    ck_assert_int_eq(maildrop_get(m, 3, &msg), MAILDROP_OK);
    ck_assert_uint_eq(msg->uid, 9);
    ck_assert_uint_eq(msg->size, 90);
    /* Sealed: no more adds; sealing again changes nothing. */
    ck_assert_int_eq(maildrop_add(m, 10, 1), -1);
    maildrop_seal(m);
    ck_assert_uint_eq(maildrop_count(m), 3);
    maildrop_free(&m);
    ck_assert_ptr_null(m);
    maildrop_free(&m);
}
END_TEST

START_TEST(test_duplicates)
{
    struct maildrop *m = inbox(1);
    const struct maildrop_msg *msg;
    uint32_t count;
    uint64_t octets;

    ck_assert_int_eq(maildrop_add(m, 3, 30), 0);
    ck_assert_int_eq(maildrop_add(m, 1, 10), 0);
    ck_assert_int_eq(maildrop_add(m, 3, 33), 0);
    ck_assert_int_eq(maildrop_add(m, 2, 20), 0);
    ck_assert_int_eq(maildrop_add(m, 3, 34), 0);
    ck_assert_int_eq(maildrop_add(m, 1, 11), 0);
    maildrop_seal(m);
    ck_assert_uint_eq(maildrop_count(m), 3);
    ck_assert_int_eq(maildrop_get(m, 1, &msg), MAILDROP_OK);
    ck_assert_uint_eq(msg->uid, 1);
    ck_assert_uint_eq(msg->size, 11);
    ck_assert_int_eq(maildrop_get(m, 3, &msg), MAILDROP_OK);
    ck_assert_uint_eq(msg->uid, 3);
    ck_assert_uint_eq(msg->size, 34);
    maildrop_stat(m, &count, &octets);
    ck_assert_uint_eq(count, 3);
    ck_assert_uint_eq(octets, 11 + 20 + 34);
    maildrop_free(&m);

    /* In-order adds with a repeat of the last UID take the sorting path too. */
    m = inbox(1);
    ck_assert_int_eq(maildrop_add(m, 1, 1), 0);
    ck_assert_int_eq(maildrop_add(m, 2, 2), 0);
    ck_assert_int_eq(maildrop_add(m, 2, 5), 0);
    maildrop_seal(m);
    ck_assert_uint_eq(maildrop_count(m), 2);
    ck_assert_int_eq(maildrop_get(m, 2, &msg), MAILDROP_OK);
    ck_assert_uint_eq(msg->size, 5);
    maildrop_free(&m);
}
END_TEST

START_TEST(test_bad_adds_and_empty)
{
    struct maildrop *m = inbox(7);
    const struct maildrop_msg *msg;
    uint32_t count = 99, uids[1];
    uint64_t octets = 99;

    ck_assert_int_eq(maildrop_add(m, 0, 10), -1);
    maildrop_seal(m);
    ck_assert_uint_eq(maildrop_count(m), 0);
    maildrop_stat(m, &count, &octets);
    ck_assert_uint_eq(count, 0);
    ck_assert_uint_eq(octets, 0);
    ck_assert_int_eq(maildrop_get(m, 0, &msg), MAILDROP_NO_SUCH);
    ck_assert_int_eq(maildrop_get(m, 1, &msg), MAILDROP_NO_SUCH);
    ck_assert_int_eq(maildrop_delete(m, 1), MAILDROP_NO_SUCH);
    ck_assert_uint_eq(maildrop_deleted_count(m), 0);
    ck_assert_uint_eq(maildrop_deleted_uids(m, 0, uids, 1), 0);
    maildrop_reset(m);
    maildrop_free(&m);
}
END_TEST

START_TEST(test_lookup_delete_reset)
{
    struct maildrop *m = inbox(1);
    const struct maildrop_msg *msg;
    uint32_t count, uids[4];
    uint64_t octets;

    for (uint32_t uid = 10; uid <= 40; uid += 10)
        ck_assert_int_eq(maildrop_add(m, uid, uid * 100), 0);
    maildrop_seal(m);
    ck_assert_int_eq(maildrop_get(m, 0, &msg), MAILDROP_NO_SUCH);
    ck_assert_int_eq(maildrop_get(m, 5, &msg), MAILDROP_NO_SUCH);
    ck_assert_int_eq(maildrop_get(m, UINT32_MAX, &msg), MAILDROP_NO_SUCH);
    ck_assert_int_eq(maildrop_delete(m, 0), MAILDROP_NO_SUCH);
    ck_assert_int_eq(maildrop_delete(m, 5), MAILDROP_NO_SUCH);

    ck_assert_int_eq(maildrop_delete(m, 3), MAILDROP_OK);
    ck_assert_int_eq(maildrop_delete(m, 3), MAILDROP_DELETED);
    ck_assert_int_eq(maildrop_get(m, 3, &msg), MAILDROP_DELETED);
    ck_assert_int_eq(maildrop_delete(m, 1), MAILDROP_OK);
    ck_assert_uint_eq(maildrop_count(m), 4);
    ck_assert_uint_eq(maildrop_deleted_count(m), 2);
    maildrop_stat(m, &count, &octets);
    ck_assert_uint_eq(count, 2);
    ck_assert_uint_eq(octets, 2000 + 4000);

    ck_assert_uint_eq(maildrop_deleted_uids(m, 0, uids, 4), 2);
    ck_assert_uint_eq(uids[0], 10);
    ck_assert_uint_eq(uids[1], 30);
    ck_assert_uint_eq(maildrop_deleted_uids(m, 0, uids, 1), 1);
    ck_assert_uint_eq(uids[0], 10);
    ck_assert_uint_eq(maildrop_deleted_uids(m, 0, uids, 0), 0);

    maildrop_reset(m);
    ck_assert_uint_eq(maildrop_deleted_count(m), 0);
    maildrop_stat(m, &count, &octets);
    ck_assert_uint_eq(count, 4);
    ck_assert_uint_eq(octets, 1000 + 2000 + 3000 + 4000);
    ck_assert_int_eq(maildrop_get(m, 3, &msg), MAILDROP_OK);
    ck_assert_uint_eq(msg->uid, 30);
    ck_assert(!msg->deleted);
    ck_assert_int_eq(maildrop_delete(m, 4), MAILDROP_OK);
    ck_assert_uint_eq(maildrop_deleted_uids(m, 0, uids, 4), 1);
    ck_assert_uint_eq(uids[0], 40);
    maildrop_free(&m);
}
END_TEST

START_TEST(test_many_messages)
{
    struct maildrop *m = inbox(1);
    const struct maildrop_msg *msg;
    uint32_t count, *uids;
    uint64_t octets, sum = 0;

    /* Reverse order with a gap pattern: the seal has real sorting to do. */
    /* Plain counters in the loops: a check assertion per message costs more
     * than the code under test. */
    size_t bad = 0;
    for (uint32_t i = MANY; i >= 1; i--) {
        bad += maildrop_add(m, i * 3, i) != 0;
        sum += i;
    }
    maildrop_seal(m);
    ck_assert_uint_eq(maildrop_count(m), MANY);
    for (uint32_t n = 1; n <= MANY; n++)
        bad += maildrop_get(m, n, &msg) != MAILDROP_OK || msg->uid != n * 3 || msg->size != n;
    for (uint32_t n = 2; n <= MANY; n += 2)
        bad += maildrop_delete(m, n) != MAILDROP_OK;
    ck_assert_uint_eq(bad, 0);
    maildrop_stat(m, &count, &octets);
    ck_assert_uint_eq(count, MANY / 2);
    ck_assert_uint_eq(octets, sum - (uint64_t)(MANY / 2) * (MANY / 2 + 1));
    uids = malloc(maildrop_deleted_count(m) * sizeof(*uids));
    ck_assert_ptr_nonnull(uids);
    ck_assert_uint_eq(maildrop_deleted_uids(m, 0, uids, maildrop_deleted_count(m)), MANY / 2);
    for (size_t i = 0; i < MANY / 2; i++)
        bad += uids[i] != (i + 1) * 2 * 3;
    ck_assert_uint_eq(bad, 0);
    free(uids);
    maildrop_free(&m);
}
END_TEST

static Suite *maildrop_suite(void)
{
    Suite *s = suite_create("maildrop");
    TCase *tc = tcase_create("core");

    tcase_add_test(tc, test_folders);
    tcase_add_test(tc, test_guids);
    tcase_add_test(tc, test_unordered_adds);
    tcase_add_test(tc, test_duplicates);
    tcase_add_test(tc, test_bad_adds_and_empty);
    tcase_add_test(tc, test_lookup_delete_reset);
    tcase_add_test(tc, test_many_messages);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(maildrop_suite());
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
