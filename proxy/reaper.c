/* Deferred frees: objects torn down inside callbacks are freed once the loop is idle. */
#include "reaper.h"

#include <stdlib.h>

struct reap {
    void (*fn)(void *ptr);
    void *ptr;
};

static struct reap *queue;
static size_t queue_len, queue_cap;
static ev_prepare prepare_w;

void reaper_run(void)
{
    /* A free may queue more frees (a session frees its upstream): loop until empty. */
    while (queue_len > 0) {
        struct reap r = queue[--queue_len];
        r.fn(r.ptr);
    }
}

static void prepare_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
    (void)loop;
    (void)w;
    (void)revents;
    reaper_run();
}

void reaper_init(struct ev_loop *loop)
{
    ev_prepare_init(&prepare_w, prepare_cb);
    ev_prepare_start(loop, &prepare_w);
    /* The reaper alone must not keep the loop running. */
    ev_unref(loop);
}

void reaper_add(void (*fn)(void *ptr), void *ptr)
{
    if (queue_len == queue_cap) {
        size_t cap = queue_cap ? queue_cap * 2 : 64;
        struct reap *q = realloc(queue, cap * sizeof(*q));
        if (q == NULL)
            abort();
        queue = q;
        queue_cap = cap;
    }
    queue[queue_len].fn = fn;
    queue[queue_len].ptr = ptr;
    queue_len++;
}
