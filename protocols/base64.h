/* Base64 (RFC 4648) encoding and strict decoding, for SASL exchanges. */
#ifndef POPGATE_BASE64_H
#define POPGATE_BASE64_H

#include <stddef.h>

/* Bytes needed to encode len bytes, NUL included. */
#define BASE64_ENCODED_SIZE(len) ((((len) + 2) / 3) * 4 + 1)

/* Encodes in[0..len) into out (cap bytes, NUL-terminated). Returns the length,
 * or -1 if out is too small. */
long base64_encode(const void *in, size_t len, char *out, size_t cap);

/* Decodes in[0..len) into out (cap bytes). Rejects characters outside the
 * alphabet, bad padding and a length not a multiple of 4. Returns the decoded
 * length or -1. */
long base64_decode(const char *in, size_t len, void *out, size_t cap);

#endif
