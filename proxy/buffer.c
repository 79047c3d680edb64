/* Byte buffers with a hard cap, whose storage exists only while they hold data. */
#include "buffer.h"

#include <stdlib.h>
#include <string.h>

void buffer_init(struct buffer *b, size_t cap, bool secret)
{
    b->secret = secret;
    b->data = NULL;
    b->start = b->end = 0;
    b->cap = cap;
}

void buffer_free(struct buffer *b)
{
    buffer_clear(b);
}

void buffer_clear(struct buffer *b)
{
    if (b->data != NULL) {
        /* Client input may have held a PASS line; do not leave it in the heap. */
        if (b->secret)
            explicit_bzero(b->data, b->cap);
        free(b->data);
    }
    b->data = NULL;
    b->start = b->end = 0;
}

void buffer_consume(struct buffer *b, size_t n)
{
    if (n >= buffer_len(b)) {
        b->start = b->end = 0;
        return;
    }
    b->start += n;
}

void buffer_shrink(struct buffer *b)
{
    if (buffer_len(b) == 0)
        buffer_clear(b);
}

static void compact(struct buffer *b)
{
    size_t len = buffer_len(b);
    if (b->start > 0 && len > 0)
        memmove(b->data, b->data + b->start, len);
    b->start = 0;
    b->end = len;
}

char *buffer_space_min(struct buffer *b, size_t min, size_t *avail_r)
{
    if (buffer_room(b) < min)
        return NULL;
    char *p = buffer_space(b, avail_r);
    if (p != NULL && *avail_r < min) {
        compact(b);
        p = b->data + b->end;
        *avail_r = b->cap - b->end;
    }
    return p;
}

char *buffer_space(struct buffer *b, size_t *avail_r)
{
    if (b->data == NULL) {
        b->data = malloc(b->cap);
        if (b->data == NULL)
            return NULL;
        b->start = b->end = 0;
    }
    if (b->end == b->cap && b->start > 0)
        compact(b);
    if (b->end == b->cap)
        return NULL;
    *avail_r = b->cap - b->end;
    return b->data + b->end;
}

void buffer_commit(struct buffer *b, size_t n)
{
    b->end += n;
}

int buffer_append(struct buffer *b, const void *p, size_t n)
{
    if (n > buffer_room(b))
        return -1;
    if (n == 0)
        return 0;
    size_t avail;
    char *dst = buffer_space(b, &avail);
    if (dst == NULL)
        return -1;
    if (avail < n) {
        /* Room exists under the cap but not contiguously. */
        compact(b);
        dst = b->data + b->end;
    }
    memcpy(dst, p, n);
    b->end += n;
    return 0;
}
