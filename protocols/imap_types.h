/* Types shared by the IMAP writer, parser and their callers. */
#ifndef POPGATE_IMAP_TYPES_H
#define POPGATE_IMAP_TYPES_H

#include <stddef.h>

/* A run of bytes inside a buffer owned by someone else; not NUL-terminated. */
struct imap_slice {
    const char *p;
    size_t len;
};

#endif
