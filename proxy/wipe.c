/* The stack wipe after a login's loop turns: no copy of a password outlives the turn. */
#include "wipe.h"

#include <stdbool.h>
#include <string.h>

/* Deeper than any call chain of a login (the IMAP command buffer is on the heap). */
#define WIPE_STACK_BYTES (32 * 1024)

static ev_prepare prepare_w;
static bool wanted;

__attribute__((noinline)) void wipe_stack(void)
{
    char pad[WIPE_STACK_BYTES];
    explicit_bzero(pad, sizeof(pad));
    /* Keeps the array and its clearing from being optimised away. */
    __asm__ volatile("" : : "r"(pad) : "memory");
}

void wipe_stack_later(void)
{
    wanted = true;
}

static void prepare_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
    (void)loop;
    (void)w;
    (void)revents;
    if (!wanted)
        return;
    wanted = false;
    wipe_stack();
}

void wipe_init(struct ev_loop *loop)
{
    ev_prepare_init(&prepare_w, prepare_cb);
    ev_prepare_start(loop, &prepare_w);
    /* The wipe alone must not keep the loop running. */
    ev_unref(loop);
}
