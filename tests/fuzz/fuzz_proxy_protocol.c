/* libFuzzer target for the PROXY protocol parser: every prefix agrees with the whole input.
 *
 *   clang -std=c11 -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE -g -O1 \
 *       -fsanitize=fuzzer,address,undefined -Iprotocols tests/fuzz/fuzz_proxy_protocol.c \
 *       protocols/proxy_protocol.c -o fuzz_proxy_protocol
 *   ./fuzz_proxy_protocol -max_len=1200 tests/fuzz/seeds/proxy_protocol
 *
 * The session parses the growing buffer after every read, so it relies on: each
 * prefix gives MORE or exactly the whole input's verdict; once decided, longer
 * prefixes keep the verdict; DONE first appears when the header's last byte does;
 * nothing past PROXY_PROTOCOL_V2_MAX bytes matters (the buffer for it is bounded);
 * and a parsed header, written out again, parses to the same facts.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "proxy_protocol.h"

struct result {
    enum proxy_protocol_status st;
    size_t consumed;
    const char *err;
    struct proxy_protocol_info info;
};

/* Parses a fresh copy of exactly len bytes, so any read past len shows under ASan. */
static struct result parse(const uint8_t *data, size_t len)
{
    struct result r;
    char *copy = malloc(len > 0 ? len : 1);

    if (copy == NULL)
        abort();
    memcpy(copy, data, len);
    memset(&r, 0, sizeof(r));
    r.st = proxy_protocol_parse(copy, len, &r.consumed, &r.info, &r.err);
    free(copy);

    switch (r.st) {
    case PROXY_PROTOCOL_MORE:
        if (r.consumed != 0 || r.err != NULL)
            abort();
        /* A buffer of PROXY_PROTOCOL_V2_MAX bytes always decides. */
        if (len >= PROXY_PROTOCOL_V2_MAX)
            abort();
        if (len >= PROXY_PROTOCOL_V1_MAX && len > 0 && data[0] == 'P')
            abort();
        break;
    case PROXY_PROTOCOL_ERROR:
        if (r.consumed != 0 || r.err == NULL || r.err[0] == '\0')
            abort();
        break;
    case PROXY_PROTOCOL_DONE:
        if (r.err != NULL || r.consumed == 0 || r.consumed > len)
            abort();
        if (r.info.version == 1 && r.consumed > PROXY_PROTOCOL_V1_MAX)
            abort();
        if (r.info.version == 2 && r.consumed > PROXY_PROTOCOL_V2_MAX)
            abort();
        if (r.info.version != 1 && r.info.version != 2)
            abort();
        if (r.info.family != 0 && r.info.family != AF_INET && r.info.family != AF_INET6)
            abort();
        break;
    default:
        abort();
    }
    return r;
}

static bool same(const struct result *a, const struct result *b)
{
    if (a->st != b->st || a->consumed != b->consumed)
        return false;
    if (a->st == PROXY_PROTOCOL_ERROR)
        return strcmp(a->err, b->err) == 0;
    if (a->st == PROXY_PROTOCOL_DONE)
        return memcmp(&a->info, &b->info, sizeof(a->info)) == 0;
    return true;
}

/* Writes info out again, as v1 text or v2 binary like the one parsed, and parses
 * that: the facts must survive. */
static void round_trip(const struct proxy_protocol_info *info)
{
    static const uint8_t sig[12] = {0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d,
                                    0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a};
    char out[PROXY_PROTOCOL_V1_MAX + 64];
    size_t len;

    if (info->family == 0)
        return;
    if (info->version == 1) {
        char s[INET6_ADDRSTRLEN], d[INET6_ADDRSTRLEN];
        int n;

        if (inet_ntop(info->family, info->src_addr, s, sizeof(s)) == NULL ||
            inet_ntop(info->family, info->dst_addr, d, sizeof(d)) == NULL)
            abort();
        n = snprintf(out, sizeof(out), "PROXY %s %s %s %u %u\r\n",
                     info->family == AF_INET ? "TCP4" : "TCP6", s, d, info->src_port,
                     info->dst_port);
        if (n < 0 || (size_t)n >= sizeof(out))
            abort();
        len = (size_t)n;
    } else {
        size_t alen = info->family == AF_INET ? 4 : 16;
        uint8_t *o = (uint8_t *)out;

        memcpy(o, sig, sizeof(sig));
        o[12] = 0x21;
        o[13] = info->family == AF_INET ? 0x11 : 0x21;
        o[14] = 0;
        o[15] = (uint8_t)(2 * alen + 4);
        memcpy(o + 16, info->src_addr, alen);
        memcpy(o + 16 + alen, info->dst_addr, alen);
        o[16 + 2 * alen] = (uint8_t)(info->src_port >> 8);
        o[17 + 2 * alen] = (uint8_t)(info->src_port & 0xff);
        o[18 + 2 * alen] = (uint8_t)(info->dst_port >> 8);
        o[19 + 2 * alen] = (uint8_t)(info->dst_port & 0xff);
        len = 20 + 2 * alen;
    }

    struct result r = parse((const uint8_t *)out, len);
    if (r.st != PROXY_PROTOCOL_DONE || r.consumed != len ||
        memcmp(&r.info, info, sizeof(*info)) != 0)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct result whole = parse(data, size);
    size_t n = size < PROXY_PROTOCOL_V2_MAX ? size : PROXY_PROTOCOL_V2_MAX;
    bool decided = false;

    /* Every prefix up to the largest header: MORE until one byte decides, then
     * the whole input's verdict for good. Past PROXY_PROTOCOL_V2_MAX bytes the
     * prefix is already decided, so the last check also covers the rest. */
    for (size_t k = 0; k <= n; k++) {
        struct result r = parse(data, k);

        if (r.st == PROXY_PROTOCOL_MORE) {
            if (decided)
                abort();
            continue;
        }
        if (!decided && r.st == PROXY_PROTOCOL_DONE && r.consumed != k)
            abort();
        decided = true;
        if (!same(&r, &whole))
            abort();
    }
    if (!decided && whole.st != PROXY_PROTOCOL_MORE)
        abort();
    if (whole.st == PROXY_PROTOCOL_DONE)
        round_trip(&whole.info);
    return 0;
}
