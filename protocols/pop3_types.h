/* Types shared by the POP3 parser, writer and their callers. */
#ifndef POPGATE_POP3_TYPES_H
#define POPGATE_POP3_TYPES_H

#include <stddef.h>

/* A run of bytes inside a buffer owned by someone else; not NUL-terminated. */
struct pop3_slice {
    const char *p;
    size_t len;
};

#endif
