/* Byte buffers with a hard cap, whose storage exists only while they hold data. */
#ifndef POPGATE_BUFFER_H
#define POPGATE_BUFFER_H

#include <stdbool.h>
#include <stddef.h>

/*
 * Embeddable. Data lives in data[start..end). Storage is allocated on first
 * write and released by buffer_shrink() once drained, so an idle session costs
 * no buffer memory.
 */
struct buffer {
    char *data;
    size_t start, end;
    size_t cap;
    bool secret; /* wipe storage before freeing it (client input: PASS lines) */
};

void buffer_init(struct buffer *b, size_t cap, bool secret);
void buffer_free(struct buffer *b);

static inline size_t buffer_len(const struct buffer *b)
{
    return b->end - b->start;
}

static inline const char *buffer_data(const struct buffer *b)
{
    return b->data + b->start;
}

/* Free room left under the cap. */
static inline size_t buffer_room(const struct buffer *b)
{
    return b->cap - buffer_len(b);
}

/* Drops n bytes from the front. */
void buffer_consume(struct buffer *b, size_t n);

/* Releases the storage if the buffer is empty (call when a session goes idle). */
void buffer_shrink(struct buffer *b);

/*
 * Returns a pointer to at least one contiguous free byte (allocating or
 * compacting as needed) and sets *avail_r to the contiguous room; NULL when the
 * buffer is full or out of memory. Commit what was written with buffer_commit.
 */
char *buffer_space(struct buffer *b, size_t *avail_r);

/* Like buffer_space, but compacts so at least min contiguous bytes are free if
 * the cap allows; NULL when it does not. */
char *buffer_space_min(struct buffer *b, size_t min, size_t *avail_r);
void buffer_commit(struct buffer *b, size_t n);

/* Appends n bytes; -1 (nothing appended) when they do not fit under the cap. */
int buffer_append(struct buffer *b, const void *p, size_t n);

/* Empties the buffer and releases its storage (wiping it: it may hold secrets). */
void buffer_clear(struct buffer *b);

#endif
