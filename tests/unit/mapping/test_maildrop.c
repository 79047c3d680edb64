/* Tests of the maildrop snapshot: ordering, duplicates, lookups, DELE/RSET, STAT and deleted UIDs.
 */
#include <check.h>
#include <stdlib.h>

#include "maildrop.h"

/* Big enough to show that STAT and lookups do not scan. */
#define MANY 100000

START_TEST(test_unordered_adds)
{
    struct maildrop *m = maildrop_new(0x5f5ede35);
    const struct maildrop_msg *msg = NULL;

    ck_assert_ptr_nonnull(m);
    ck_assert_int_eq(maildrop_add(m, 5, 50), 0);
    ck_assert_int_eq(maildrop_add(m, 2, 20), 0);
    ck_assert_int_eq(maildrop_add(m, 9, 90), 0);
    /* Nothing is visible before the seal. */
    ck_assert_uint_eq(maildrop_count(m), 0);
    ck_assert_int_eq(maildrop_get(m, 1, &msg), MAILDROP_NO_SUCH);
    maildrop_seal(m);
    ck_assert_uint_eq(maildrop_uidvalidity(m), 0x5f5ede35);
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
    struct maildrop *m = maildrop_new(1);
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
    m = maildrop_new(1);
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
    struct maildrop *m = maildrop_new(7);
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
    ck_assert_uint_eq(maildrop_deleted_uids(m, uids, 1), 0);
    maildrop_reset(m);
    maildrop_free(&m);
}
END_TEST

START_TEST(test_lookup_delete_reset)
{
    struct maildrop *m = maildrop_new(1);
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

    ck_assert_uint_eq(maildrop_deleted_uids(m, uids, 4), 2);
    ck_assert_uint_eq(uids[0], 10);
    ck_assert_uint_eq(uids[1], 30);
    ck_assert_uint_eq(maildrop_deleted_uids(m, uids, 1), 1);
    ck_assert_uint_eq(uids[0], 10);
    ck_assert_uint_eq(maildrop_deleted_uids(m, uids, 0), 0);

    maildrop_reset(m);
    ck_assert_uint_eq(maildrop_deleted_count(m), 0);
    maildrop_stat(m, &count, &octets);
    ck_assert_uint_eq(count, 4);
    ck_assert_uint_eq(octets, 1000 + 2000 + 3000 + 4000);
    ck_assert_int_eq(maildrop_get(m, 3, &msg), MAILDROP_OK);
    ck_assert_uint_eq(msg->uid, 30);
    ck_assert(!msg->deleted);
    ck_assert_int_eq(maildrop_delete(m, 4), MAILDROP_OK);
    ck_assert_uint_eq(maildrop_deleted_uids(m, uids, 4), 1);
    ck_assert_uint_eq(uids[0], 40);
    maildrop_free(&m);
}
END_TEST

START_TEST(test_many_messages)
{
    struct maildrop *m = maildrop_new(1);
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
    ck_assert_uint_eq(maildrop_deleted_uids(m, uids, maildrop_deleted_count(m)), MANY / 2);
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
