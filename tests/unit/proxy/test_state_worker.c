/* Tests of the state worker thread: jobs run off the loop, in order, and stop drains. */
#include <check.h>
#include <ev.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include "state_worker.h"

#define JOBS 200

static pthread_t main_thread;
static int ran[JOBS];
static int done_order[JOBS];
static int ndone;
static int off_loop;

static void work(void *arg)
{
    int i = (int)(long)arg;
    if (!pthread_equal(pthread_self(), main_thread))
        off_loop++;
    ran[i] = 1;
    if (i % 50 == 0)
        usleep(1000); /* a slow fsync */
}

static void done(void *arg)
{
    /* Completions run on the loop's thread. */
    ck_assert(pthread_equal(pthread_self(), main_thread));
    done_order[ndone++] = (int)(long)arg;
}

static void timeout_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)w;
    (void)revents;
    ev_break(loop, EVBREAK_ALL);
}

START_TEST(test_jobs_run_in_order_off_the_loop)
{
    main_thread = pthread_self();
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    ck_assert_int_eq(state_worker_start(loop), 0);
    for (long i = 0; i < JOBS; i++)
        ck_assert_int_eq(state_worker_submit(work, done, (void *)i), 0);
    ev_timer t;
    ev_timer_init(&t, timeout_cb, 0.01, 0.01);
    ev_timer_start(loop, &t);
    for (int spins = 0; spins < 1000 && ndone < JOBS; spins++)
        ev_run(loop, EVRUN_ONCE);
    ck_assert_int_eq(ndone, JOBS);
    ck_assert_int_eq(off_loop, JOBS);
    for (int i = 0; i < JOBS; i++) {
        ck_assert_int_eq(ran[i], 1);
        ck_assert_int_eq(done_order[i], i);
    }
    /* Stop drains what is still queued, completions included. */
    ndone = 0;
    for (long i = 0; i < 10; i++)
        ck_assert_int_eq(state_worker_submit(work, done, (void *)i), 0);
    state_worker_stop();
    ck_assert_int_eq(ndone, 10);
    ck_assert_int_eq(state_worker_submit(work, done, NULL), -1);
    ev_timer_stop(loop, &t);
    ev_loop_destroy(loop);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("state_worker");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_jobs_run_in_order_off_the_loop);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
