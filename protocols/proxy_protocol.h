/* The PROXY protocol (HAProxy, v1 text and v2 binary) header parser. */
#ifndef POPGATE_PROXY_PROTOCOL_H
#define POPGATE_PROXY_PROTOCOL_H

#include <stddef.h>
#include <stdint.h>

/* The longest v1 line, CRLF included (the spec's 107). */
#define PROXY_PROTOCOL_V1_MAX 107
/* The longest v2 header we accept: 16 fixed bytes and the address block with TLVs. */
#define PROXY_PROTOCOL_V2_MAX (16 + 1024)

enum proxy_protocol_status {
    PROXY_PROTOCOL_MORE,  /* need more bytes (nothing consumed; call again with more) */
    PROXY_PROTOCOL_DONE,  /* a header was parsed; *consumed_r bytes belong to it */
    PROXY_PROTOCOL_ERROR, /* not a valid header; *error_r says why */
};

/* What the header says. For LOCAL (v2) and UNKNOWN (v1) family is 0 and the address
 * fields are zero: use the socket's own addresses. Addresses are in network byte
 * order (4 bytes used for AF_INET), ports in host order. */
struct proxy_protocol_info {
    int version; /* 1 or 2 */
    int family;  /* AF_INET, AF_INET6, or 0 */
    unsigned char src_addr[16], dst_addr[16];
    uint16_t src_port, dst_port;
};

/*
 * Parses a header at the start of buf[0..len). Stateless: call again with the
 * whole buffered input when more arrives (headers are small). Detects v1
 * ("PROXY TCP4 ...\r\n", "PROXY TCP6 ...", "PROXY UNKNOWN ...") and v2 (the
 * 12-byte signature, version 2, command LOCAL or PROXY, AF_INET/AF_INET6 over
 * STREAM; TLVs are skipped). Anything else, including a v1 line over
 * PROXY_PROTOCOL_V1_MAX or without CRLF, bad addresses or ports, and UDP or
 * UNIX families, is an error.
 *
 * MORE means nothing wrong has been seen yet. Bytes are judged in order: one
 * that cannot stand where it is gives ERROR at once (a client speaking POP3
 * fails on its first byte), a v1 field as soon as the byte after it arrives.
 * So any prefix of an input gives MORE or the same result as the whole input.
 * v1 is strict: one space between fields, addresses that inet_pton accepts for
 * the named family, ports 0..65535 in decimal without sign or leading zero
 * (the spec forbids them). v2 takes family bytes 0x11, 0x21, and 0x00 (UNSPEC)
 * only with LOCAL; LOCAL skips its address block whatever its length.
 *
 * *consumed_r is the header's length on DONE (bytes after it are the client's,
 * not examined) and 0 otherwise; *info is written only on DONE. *error_r is a
 * static string on ERROR and NULL otherwise. No pointer may be NULL.
 */
enum proxy_protocol_status proxy_protocol_parse(const char *buf, size_t len, size_t *consumed_r,
                                                struct proxy_protocol_info *info,
                                                const char **error_r);

#endif
