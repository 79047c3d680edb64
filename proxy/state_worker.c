/* Blocking state-store work (load, save with fsync) on a thread, off the event loop. */
#include "state_worker.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>

struct job {
    void (*work)(void *arg);
    void (*done)(void *arg);
    void *arg;
    struct job *next;
};

static struct ev_loop *job_loop;
static ev_async done_w;
static pthread_t thread;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t more = PTHREAD_COND_INITIALIZER;
static struct job *todo_head, *todo_tail; /* for the thread */
static struct job *done_head, *done_tail; /* for the loop */
static bool running, stopping;

static void push(struct job **head, struct job **tail, struct job *j)
{
    j->next = NULL;
    if (*tail != NULL)
        (*tail)->next = j;
    else
        *head = j;
    *tail = j;
}

static void *thread_main(void *unused)
{
    (void)unused;
    pthread_mutex_lock(&lock);
    for (;;) {
        while (todo_head == NULL && !stopping)
            pthread_cond_wait(&more, &lock);
        if (todo_head == NULL)
            break;
        struct job *j = todo_head;
        todo_head = j->next;
        if (todo_head == NULL)
            todo_tail = NULL;
        pthread_mutex_unlock(&lock);
        j->work(j->arg);
        pthread_mutex_lock(&lock);
        push(&done_head, &done_tail, j);
        ev_async_send(job_loop, &done_w);
    }
    pthread_mutex_unlock(&lock);
    return NULL;
}

static void run_done(void)
{
    pthread_mutex_lock(&lock);
    struct job *j = done_head;
    done_head = done_tail = NULL;
    pthread_mutex_unlock(&lock);
    while (j != NULL) {
        struct job *next = j->next;
        j->done(j->arg);
        free(j);
        j = next;
    }
}

static void done_cb(struct ev_loop *loop, ev_async *w, int revents)
{
    (void)loop;
    (void)w;
    (void)revents;
    run_done();
}

int state_worker_start(struct ev_loop *loop)
{
    if (running)
        return 0;
    job_loop = loop;
    ev_async_init(&done_w, done_cb);
    ev_async_start(loop, &done_w);
    /* The async watcher alone must not keep the loop alive. */
    ev_unref(loop);
    stopping = false;
    if (pthread_create(&thread, NULL, thread_main, NULL) != 0) {
        ev_ref(loop);
        ev_async_stop(loop, &done_w);
        return -1;
    }
    running = true;
    return 0;
}

int state_worker_submit(void (*work)(void *arg), void (*done)(void *arg), void *arg)
{
    if (!running)
        return -1;
    struct job *j = malloc(sizeof(*j));
    if (j == NULL)
        return -1;
    j->work = work;
    j->done = done;
    j->arg = arg;
    pthread_mutex_lock(&lock);
    push(&todo_head, &todo_tail, j);
    pthread_cond_signal(&more);
    pthread_mutex_unlock(&lock);
    return 0;
}

void state_worker_stop(void)
{
    if (!running)
        return;
    pthread_mutex_lock(&lock);
    stopping = true;
    pthread_cond_signal(&more);
    pthread_mutex_unlock(&lock);
    pthread_join(thread, NULL);
    run_done();
    ev_ref(job_loop);
    ev_async_stop(job_loop, &done_w);
    running = false;
}
