/* Base64 (RFC 4648 standard alphabet): encoding, and decoding of canonical input only. */
#include "base64.h"

#include <stdbool.h>
#include <stdint.h>

/* Bytes per encoded quantum and per decoded group. */
#define BASE64_QUANTUM 4
#define BASE64_GROUP   3

static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

long base64_encode(const void *in, size_t len, char *out, size_t cap)
{
    const unsigned char *src = in;
    size_t groups = len / BASE64_GROUP + (len % BASE64_GROUP != 0);
    size_t o = 0;

    /* Divides instead of using BASE64_ENCODED_SIZE, which a huge len would overflow. */
    if (cap == 0 || groups > (cap - 1) / BASE64_QUANTUM)
        return -1;
    for (size_t i = 0; i < len; i += BASE64_GROUP) {
        size_t left = len - i;
        uint32_t v = (uint32_t)src[i] << 16;
        if (left > 1)
            v |= (uint32_t)src[i + 1] << 8;
        if (left > 2)
            v |= src[i + 2];
        out[o++] = alphabet[(v >> 18) & 63];
        out[o++] = alphabet[(v >> 12) & 63];
        out[o++] = left > 1 ? alphabet[(v >> 6) & 63] : '=';
        out[o++] = left > 2 ? alphabet[v & 63] : '=';
    }
    out[o] = '\0';
    return (long)o;
}

static int sextet(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

long base64_decode(const char *in, size_t len, void *out, size_t cap)
{
    unsigned char *dst = out;
    size_t o = 0;

    if (len % BASE64_QUANTUM != 0)
        return -1;
    for (size_t i = 0; i < len; i += BASE64_QUANTUM) {
        bool last = i + BASE64_QUANTUM == len;
        /* "=" only at the end of the last quantum: "xx==" or "xxx=". */
        size_t pad = 0;
        if (last && in[i + 3] == '=')
            pad = in[i + 2] == '=' ? 2 : 1;
        uint32_t v = 0;
        for (size_t k = 0; k < BASE64_QUANTUM - pad; k++) {
            int s = sextet(in[i + k]);
            if (s < 0)
                return -1;
            v = v << 6 | (uint32_t)s;
        }
        v <<= 6 * pad;
        /* Canonical only (RFC 4648 3.5): the bits the padding drops must be zero. */
        if ((pad == 2 && (v & 0xffff) != 0) || (pad == 1 && (v & 0xff) != 0))
            return -1;
        size_t n = BASE64_GROUP - pad;
        if (n > cap - o)
            return -1;
        dst[o++] = (unsigned char)(v >> 16);
        if (n > 1)
            dst[o++] = (unsigned char)(v >> 8);
        if (n > 2)
            dst[o++] = (unsigned char)v;
    }
    return (long)o;
}
