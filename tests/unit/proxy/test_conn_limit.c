/* Tests of conn_limit: counts shared by worker slots, address keys, retiring a dead worker's
 * share, and the hash table against a model. */
#include "conn_limit.h"

#include <arpa/inet.h>
#include <check.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

static struct sockaddr_storage v4(const char *text, uint16_t port)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in *in = (struct sockaddr_in *)&ss;
    in->sin_family = AF_INET;
    in->sin_port = htons(port);
    ck_assert_int_eq(inet_pton(AF_INET, text, &in->sin_addr), 1);
    return ss;
}

static struct sockaddr_storage v6(const char *text, uint16_t port)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons(port);
    ck_assert_int_eq(inet_pton(AF_INET6, text, &in6->sin6_addr), 1);
    return ss;
}

static uint64_t key4(const char *text)
{
    struct sockaddr_storage ss = v4(text, 110);
    return conn_limit_key(&ss);
}

static struct config_limits limits(uint32_t total, uint32_t per_ip)
{
    struct config_limits lim;
    memset(&lim, 0, sizeof(lim));
    lim.max_connections = total;
    lim.max_connections_per_ip = per_ip;
    return lim;
}

static struct conn_limit *make(unsigned nslots, uint32_t max_connections)
{
    const char *error = NULL;
    struct conn_limit *cl = conn_limit_new(nslots, max_connections, &error);
    ck_assert_msg(cl != NULL, "conn_limit_new: %s", error);
    return cl;
}

START_TEST(test_keys)
{
    struct conn_limit *cl = make(2, 100);
    conn_limit_attach(cl, 0);
    struct sockaddr_storage a = v4("192.0.2.7", 1000), a_other_port = v4("192.0.2.7", 2000);
    struct sockaddr_storage a_mapped = v6("::ffff:192.0.2.7", 3000);
    struct sockaddr_storage b = v4("192.0.2.8", 1000);
    struct sockaddr_storage c = v6("2001:db8::1", 1000), d = v6("2001:db8::2", 1000);
    uint64_t ka = conn_limit_key(&a);
    ck_assert_uint_ne(ka, 0);
    ck_assert_uint_eq(conn_limit_key(&a_other_port), ka);
    ck_assert_uint_eq(conn_limit_key(&a_mapped), ka);
    ck_assert_uint_ne(conn_limit_key(&b), ka);
    ck_assert_uint_ne(conn_limit_key(&c), ka);
    ck_assert_uint_ne(conn_limit_key(&c), conn_limit_key(&d));
    ck_assert_uint_ne(conn_limit_key(&c), 0);

    struct sockaddr_storage un;
    memset(&un, 0, sizeof(un));
    un.ss_family = AF_UNIX;
    ck_assert_uint_eq(conn_limit_key(&un), 0);

    /* Two starts have different secrets: nobody can precompute colliding addresses. */
    struct conn_limit *other = make(2, 100);
    conn_limit_attach(other, 0);
    ck_assert_uint_ne(conn_limit_key(&a), ka);
    conn_limit_free(&other);
    ck_assert_ptr_null(other);
    conn_limit_free(&cl);
}
END_TEST

START_TEST(test_unattached_admits_everything)
{
    struct conn_limit *cl = make(2, 100);
    conn_limit_attach(cl, 2); /* out of range: uncounted */
    struct config_limits lim = limits(1, 1);
    for (int i = 0; i < 5; i++)
        ck_assert_int_eq(conn_limit_admit(&lim, key4("192.0.2.1")), CONN_LIMIT_OK);
    ck_assert_uint_eq(conn_limit_total(), 0);
    conn_limit_release(key4("192.0.2.1"));
    conn_limit_attach(NULL, 0);
    ck_assert_int_eq(conn_limit_admit(&lim, 1), CONN_LIMIT_OK);
    conn_limit_free(&cl);
}
END_TEST

START_TEST(test_total_across_slots)
{
    struct conn_limit *cl = make(8, 100);
    struct config_limits lim = limits(5, 0);
    conn_limit_attach(cl, 0);
    uint64_t a = key4("192.0.2.1"), b = key4("192.0.2.2");
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(conn_limit_admit(&lim, a), CONN_LIMIT_OK);
    conn_limit_attach(cl, 5);
    ck_assert_int_eq(conn_limit_admit(&lim, b), CONN_LIMIT_OK);
    ck_assert_int_eq(conn_limit_admit(&lim, 0), CONN_LIMIT_OK); /* PROXY: total only */
    ck_assert_uint_eq(conn_limit_total(), 5);
    ck_assert_int_eq(conn_limit_admit(&lim, b), CONN_LIMIT_TOTAL);
    ck_assert_int_eq(conn_limit_admit(&lim, 0), CONN_LIMIT_TOTAL);
    /* A refusal counts nothing. */
    ck_assert_uint_eq(conn_limit_total(), 5);
    ck_assert_uint_eq(conn_limit_address_count(b), 1);
    conn_limit_release(0);
    ck_assert_uint_eq(conn_limit_total(), 4);
    ck_assert_int_eq(conn_limit_admit(&lim, b), CONN_LIMIT_OK);
    ck_assert_uint_eq(conn_limit_address_count(b), 2);
    ck_assert_uint_eq(conn_limit_address_count(a), 3);
    /* A reload may lower the limit below what is open: nothing new gets in. */
    struct config_limits lower = limits(2, 0);
    ck_assert_int_eq(conn_limit_admit(&lower, key4("192.0.2.9")), CONN_LIMIT_TOTAL);
    conn_limit_free(&cl);
}
END_TEST

START_TEST(test_per_address_across_slots)
{
    struct conn_limit *cl = make(4, 100);
    struct config_limits lim = limits(100, 3);
    struct sockaddr_storage mapped = v6("::ffff:198.51.100.4", 9);
    conn_limit_attach(cl, 0);
    uint64_t a = key4("198.51.100.4"), b = key4("198.51.100.5");
    ck_assert_int_eq(conn_limit_admit(&lim, a), CONN_LIMIT_OK);
    ck_assert_int_eq(conn_limit_admit(&lim, a), CONN_LIMIT_OK);
    conn_limit_attach(cl, 3);
    ck_assert_int_eq(conn_limit_admit(&lim, a), CONN_LIMIT_OK);
    ck_assert_uint_eq(conn_limit_address_count(a), 3);
    ck_assert_int_eq(conn_limit_admit(&lim, a), CONN_LIMIT_PER_ADDRESS);
    ck_assert_int_eq(conn_limit_admit(&lim, conn_limit_key(&mapped)), CONN_LIMIT_PER_ADDRESS);
    ck_assert_uint_eq(conn_limit_total(), 3);
    ck_assert_int_eq(conn_limit_admit(&lim, b), CONN_LIMIT_OK);
    /* 0 is no limit. */
    struct config_limits unlimited = limits(100, 0);
    ck_assert_int_eq(conn_limit_admit(&unlimited, a), CONN_LIMIT_OK);
    ck_assert_uint_eq(conn_limit_address_count(a), 4);
    /* One released in either slot lets one in. */
    conn_limit_release(a);
    conn_limit_release(a);
    ck_assert_uint_eq(conn_limit_address_count(a), 2);
    ck_assert_int_eq(conn_limit_admit(&lim, a), CONN_LIMIT_OK);
    ck_assert_int_eq(conn_limit_admit(&lim, a), CONN_LIMIT_PER_ADDRESS);
    ck_assert_uint_eq(conn_limit_total(), 4);
    conn_limit_free(&cl);
}
END_TEST

START_TEST(test_address_after_proxy_header)
{
    struct conn_limit *cl = make(2, 100);
    struct config_limits lim = limits(10, 2);
    conn_limit_attach(cl, 1);
    uint64_t real = key4("203.0.113.7"), other = key4("203.0.113.8");
    /* Three connections from one balancer: the total counts them, no address does. */
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(conn_limit_admit(&lim, 0), CONN_LIMIT_OK);
    ck_assert_int_eq(conn_limit_admit_address(&lim, real), CONN_LIMIT_OK);
    ck_assert_int_eq(conn_limit_admit_address(&lim, real), CONN_LIMIT_OK);
    ck_assert_int_eq(conn_limit_admit_address(&lim, real), CONN_LIMIT_PER_ADDRESS);
    ck_assert_uint_eq(conn_limit_address_count(real), 2);
    ck_assert_int_eq(conn_limit_admit_address(&lim, 0), CONN_LIMIT_OK); /* LOCAL header */
    ck_assert_uint_eq(conn_limit_total(), 3);
    /* The refused one still holds its place in the total until it closes. */
    conn_limit_release(0);
    ck_assert_uint_eq(conn_limit_total(), 2);
    ck_assert_int_eq(conn_limit_admit(&lim, 0), CONN_LIMIT_OK);
    ck_assert_int_eq(conn_limit_admit_address(&lim, other), CONN_LIMIT_OK);
    conn_limit_release(real);
    conn_limit_release(real);
    conn_limit_release(other);
    ck_assert_uint_eq(conn_limit_total(), 0);
    ck_assert_uint_eq(conn_limit_address_count(real), 0);
    ck_assert_uint_eq(conn_limit_address_count(other), 0);
    conn_limit_free(&cl);
}
END_TEST

START_TEST(test_retire_frees_a_slot)
{
    struct conn_limit *cl = make(4, 100);
    struct config_limits lim = limits(100, 50);
    conn_limit_attach(cl, 0);
    uint64_t a = key4("192.0.2.1");
    ck_assert_int_eq(conn_limit_admit(&lim, a), CONN_LIMIT_OK);
    conn_limit_attach(cl, 2);
    char text[32];
    for (int i = 0; i < 40; i++) {
        snprintf(text, sizeof(text), "10.0.%d.%d", i / 7, i % 7);
        ck_assert_int_eq(conn_limit_admit(&lim, key4(text)), CONN_LIMIT_OK);
        ck_assert_int_eq(conn_limit_admit(&lim, a), CONN_LIMIT_OK);
    }
    ck_assert_uint_eq(conn_limit_total(), 81);
    ck_assert_uint_eq(conn_limit_address_count(a), 41);
    conn_limit_retire(cl, 2);
    ck_assert_uint_eq(conn_limit_total(), 1);
    ck_assert_uint_eq(conn_limit_address_count(a), 1);
    ck_assert_uint_eq(conn_limit_address_count(key4("10.0.0.0")), 0);
    /* A new worker in the slot starts from nothing. */
    ck_assert_int_eq(conn_limit_admit(&lim, key4("10.0.0.0")), CONN_LIMIT_OK);
    ck_assert_uint_eq(conn_limit_address_count(key4("10.0.0.0")), 1);
    conn_limit_retire(cl, 3); /* never used */
    conn_limit_retire(cl, 99);
    conn_limit_retire(NULL, 0);
    ck_assert_uint_eq(conn_limit_total(), 2);
    conn_limit_free(&cl);
}
END_TEST

START_TEST(test_table_full)
{
    /* 10 connections at start: the smallest table, 64 entries, 63 usable. */
    struct conn_limit *cl = make(2, 10);
    ck_assert_uint_eq(conn_limit_capacity(cl), 63);
    struct config_limits lim = limits(1000, 0); /* as if a reload raised it */
    conn_limit_attach(cl, 0);
    char text[32];
    for (int i = 0; i < 63; i++) {
        snprintf(text, sizeof(text), "192.0.2.%d", i);
        ck_assert_int_eq(conn_limit_admit(&lim, key4(text)), CONN_LIMIT_OK);
    }
    ck_assert_int_eq(conn_limit_admit(&lim, key4("192.0.2.200")), CONN_LIMIT_TABLE_FULL);
    ck_assert_int_eq(conn_limit_admit(&lim, key4("192.0.2.5")), CONN_LIMIT_OK); /* known */
    ck_assert_int_eq(conn_limit_admit(&lim, 0), CONN_LIMIT_OK);
    ck_assert_uint_eq(conn_limit_total(), 65);
    /* Another worker's table is its own. */
    conn_limit_attach(cl, 1);
    ck_assert_int_eq(conn_limit_admit(&lim, key4("192.0.2.200")), CONN_LIMIT_OK);
    conn_limit_attach(cl, 0);
    conn_limit_release(key4("192.0.2.9"));
    ck_assert_int_eq(conn_limit_admit(&lim, key4("192.0.2.201")), CONN_LIMIT_OK);
    ck_assert_uint_eq(conn_limit_address_count(key4("192.0.2.201")), 1);
    ck_assert_uint_eq(conn_limit_address_count(key4("192.0.2.9")), 0);
    conn_limit_free(&cl);
}
END_TEST

/* Random admissions and releases in two slots of a small (crowded) table, checked
 * against plain arrays after every step: deletion must never lose a chain. */
START_TEST(test_against_model)
{
    enum { NADDR = 90, NSLOTS = 2, STEPS = 20000 };
    struct conn_limit *cl = make(NSLOTS, 30); /* 64 entries per slot */
    struct config_limits lim = limits(1000000, 5);
    unsigned model[NSLOTS][NADDR];
    memset(model, 0, sizeof(model));
    uint64_t keys[NADDR];
    conn_limit_attach(cl, 0);
    char text[32];
    for (int i = 0; i < NADDR; i++) {
        snprintf(text, sizeof(text), "2001:db8::%x", i);
        struct sockaddr_storage ss = v6(text, 1);
        keys[i] = conn_limit_key(&ss);
    }
    unsigned seed = 12345;
    for (int step = 0; step < STEPS; step++) {
        seed = seed * 1103515245u + 12345u;
        unsigned r = seed >> 8;
        unsigned slot = r % NSLOTS, a = (r / NSLOTS) % NADDR;
        bool add = (r >> 20) % 5 < 3;
        conn_limit_attach(cl, slot);
        unsigned used = 0, sum = 0;
        for (int i = 0; i < NADDR; i++)
            used += model[slot][i] != 0;
        for (unsigned s = 0; s < NSLOTS; s++)
            sum += model[s][a];
        if (add) {
            enum conn_limit_verdict want = sum >= 5 ? CONN_LIMIT_PER_ADDRESS
                                           : model[slot][a] == 0 && used >= 63
                                               ? CONN_LIMIT_TABLE_FULL
                                               : CONN_LIMIT_OK;
            ck_assert_int_eq(conn_limit_admit(&lim, keys[a]), want);
            if (want == CONN_LIMIT_OK)
                model[slot][a]++;
        } else if (model[slot][a] > 0) {
            conn_limit_release(keys[a]);
            model[slot][a]--;
        }
        uint64_t total = 0;
        for (int i = 0; i < NADDR; i++) {
            unsigned want = 0;
            for (unsigned s = 0; s < NSLOTS; s++)
                want += model[s][i];
            total += want;
            ck_assert_uint_eq(conn_limit_address_count(keys[i]), want);
        }
        ck_assert_uint_eq(conn_limit_total(), total);
    }
    conn_limit_free(&cl);
}
END_TEST

/* A worker process counts, is killed with SIGKILL, and the master's retire frees its share. */
START_TEST(test_killed_worker)
{
    struct conn_limit *cl = make(4, 100);
    struct config_limits lim = limits(100, 10);
    conn_limit_attach(cl, 0);
    uint64_t a = key4("192.0.2.77");
    ck_assert_int_eq(conn_limit_admit(&lim, a), CONN_LIMIT_OK);
    int ready[2];
    ck_assert_int_eq(pipe(ready), 0);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        conn_limit_attach(cl, 3);
        /* 1 in the parent + 9 here reach the limit of 10. */
        bool ok = true;
        for (int i = 0; i < 9; i++)
            ok = ok && conn_limit_admit(&lim, a) == CONN_LIMIT_OK;
        ok = ok && conn_limit_admit(&lim, a) == CONN_LIMIT_PER_ADDRESS;
        char c = ok ? 'y' : 'n';
        if (write(ready[1], &c, 1) != 1)
            _exit(1);
        for (;;)
            pause();
    }
    close(ready[1]);
    char c = 0;
    ck_assert_int_eq(read(ready[0], &c, 1), 1);
    close(ready[0]);
    ck_assert_int_eq(c, 'y');
    ck_assert_uint_eq(conn_limit_address_count(a), 10);
    ck_assert_uint_eq(conn_limit_total(), 10);
    ck_assert_int_eq(conn_limit_admit(&lim, a), CONN_LIMIT_PER_ADDRESS);
    kill(pid, SIGKILL);
    int status = 0;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert(WIFSIGNALED(status));
    /* Dead, but still counted until the master retires its slot. */
    ck_assert_uint_eq(conn_limit_address_count(a), 10);
    conn_limit_retire(cl, 3);
    ck_assert_uint_eq(conn_limit_address_count(a), 1);
    ck_assert_uint_eq(conn_limit_total(), 1);
    ck_assert_int_eq(conn_limit_admit(&lim, a), CONN_LIMIT_OK);
    conn_limit_free(&cl);
}
END_TEST

START_TEST(test_names)
{
    ck_assert_str_eq(conn_limit_reason(CONN_LIMIT_TOTAL), "connection limit");
    ck_assert_str_eq(conn_limit_reason(CONN_LIMIT_PER_ADDRESS), "per-address limit");
    ck_assert_str_eq(conn_limit_reason(CONN_LIMIT_TABLE_FULL), "address table full");
    ck_assert_int_eq(conn_limit_metrics_reason(CONN_LIMIT_TOTAL), METRICS_REFUSED_TOTAL);
    ck_assert_int_eq(conn_limit_metrics_reason(CONN_LIMIT_PER_ADDRESS),
                     METRICS_REFUSED_PER_ADDRESS);
    ck_assert_int_eq(conn_limit_metrics_reason(CONN_LIMIT_TABLE_FULL), METRICS_REFUSED_TABLE_FULL);
    const char *error = NULL;
    ck_assert_ptr_null(conn_limit_new(0, 10, &error));
    ck_assert_ptr_nonnull(error);
    struct conn_limit *none = NULL;
    conn_limit_free(&none);
}
END_TEST

static Suite *conn_limit_suite(void)
{
    Suite *s = suite_create("conn_limit");
    TCase *tc = tcase_create("conn_limit");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_keys);
    tcase_add_test(tc, test_unattached_admits_everything);
    tcase_add_test(tc, test_total_across_slots);
    tcase_add_test(tc, test_per_address_across_slots);
    tcase_add_test(tc, test_address_after_proxy_header);
    tcase_add_test(tc, test_retire_frees_a_slot);
    tcase_add_test(tc, test_table_full);
    tcase_add_test(tc, test_against_model);
    tcase_add_test(tc, test_killed_worker);
    tcase_add_test(tc, test_names);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(conn_limit_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
