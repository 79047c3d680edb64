/* The stack wipe after a login: no copy of a password outlives the callback that used it. */
#include "wipe.h"

#include <string.h>

/* Deeper than any call chain of a login (the IMAP command buffer is on the heap). */
#define WIPE_STACK_BYTES (32 * 1024)

__attribute__((noinline)) void wipe_stack(void)
{
    char pad[WIPE_STACK_BYTES];
    explicit_bzero(pad, sizeof(pad));
    /* Keeps the array and its clearing from being optimised away. */
    __asm__ volatile("" : : "r"(pad) : "memory");
}
