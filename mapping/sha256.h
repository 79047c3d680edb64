/* SHA-256 (FIPS 180-4), small and self-contained: mapping/ links no OpenSSL. */
#ifndef POPGATE_SHA256_H
#define POPGATE_SHA256_H

#include <stddef.h>
#include <stdint.h>

#define SHA256_DIGEST_LEN 32
#define SHA256_BLOCK_LEN  64

/* Embedded by callers (on the stack); the fields are private to sha256.c. */
struct sha256 {
    uint32_t h[8];
    uint64_t total; /* bytes hashed so far */
    uint8_t block[SHA256_BLOCK_LEN];
    size_t block_len;
};

void sha256_init(struct sha256 *ctx);
void sha256_update(struct sha256 *ctx, const void *data, size_t len);
/* Writes the digest into out; ctx must be initialized again before reuse. */
void sha256_final(struct sha256 *ctx, uint8_t out[SHA256_DIGEST_LEN]);

/* One call: the digest of data[0..len). */
void sha256_digest(const void *data, size_t len, uint8_t out[SHA256_DIGEST_LEN]);

#endif
