/* The PROXY protocol header parser owns v1/v2 detection, strict field checks and header length. */
#include "proxy_protocol.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <string.h>
#include <sys/socket.h>

/* "PROXY " starts every v1 line; the single space is part of the signature. */
#define V1_SIG     "PROXY "
#define V1_SIG_LEN (sizeof(V1_SIG) - 1)
/* The v2 signature holds a NUL, so it is compared with memcmp, never as a string. */
#define V2_SIG_LEN 12
/* Signature, version/command, family/transport, 2-byte address length. */
#define V2_FIXED_LEN     16
#define V2_VERSION       0x2
#define V2_CMD_LOCAL     0x0
#define V2_CMD_PROXY     0x1
#define V2_FAM_UNSPEC    0x00
#define V2_FAM_TCP4      0x11
#define V2_FAM_TCP6      0x21
#define V2_ADDR_LEN_TCP4 (2 * 4 + 2 * 2)
#define V2_ADDR_LEN_TCP6 (2 * 16 + 2 * 2)
/* The longest text inet_pton can accept for a family, NUL excluded. */
#define V1_ADDR4_MAX (INET_ADDRSTRLEN - 1)
#define V1_ADDR6_MAX (INET6_ADDRSTRLEN - 1)
#define PORT_MAX     65535u

static const unsigned char v2_sig[V2_SIG_LEN] = {0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d,
                                                 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a};

/*
 * Every check below looks only at bytes up to the one it judges, in order, and
 * stops at the first bad byte. So the verdict on a buffer is the verdict on its
 * shortest prefix that decides it: a header split anywhere gives MORE until the
 * deciding byte arrives, then the same DONE or the same error as the whole input.
 */
enum step {
    STEP_OK,
    STEP_SHORT, /* the bytes so far are a valid start; the next one is missing */
    STEP_BAD,
};

static const struct {
    const char *word; /* with the space that must follow it, except UNKNOWN's */
    int family;
} v1_protos[] = {
    {"TCP4 ", AF_INET},
    {"TCP6 ", AF_INET6},
    {"UNKNOWN", 0},
};

/* Matches the protocol word at *pos; the words differ before any one ends, so at
 * most one can match. */
static enum step v1_proto(const char *buf, size_t avail, size_t *pos, int *family_r)
{
    size_t n = avail - *pos;
    bool partial = false;

    for (size_t i = 0; i < sizeof(v1_protos) / sizeof(v1_protos[0]); i++) {
        size_t wl = strlen(v1_protos[i].word);
        size_t m = n < wl ? n : wl;

        if (memcmp(buf + *pos, v1_protos[i].word, m) != 0)
            continue;
        if (m < wl) {
            partial = true;
            continue;
        }
        *pos += wl;
        *family_r = v1_protos[i].family;
        return STEP_OK;
    }
    return partial ? STEP_SHORT : STEP_BAD;
}

static bool is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

static bool is_addr_char(int family, unsigned char c)
{
    if (is_digit(c) || c == '.')
        return true;
    if (family == AF_INET)
        return false;
    return c == ':' || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* An address ended by one space. The character set and length cap reject most
 * junk (and an address of the other family) at the first wrong byte; inet_pton
 * judges the whole text once its space arrives. */
static enum step v1_addr(const char *buf, size_t avail, size_t *pos, int family, unsigned char *out)
{
    size_t max = family == AF_INET ? V1_ADDR4_MAX : V1_ADDR6_MAX;
    char text[INET6_ADDRSTRLEN];
    size_t start = *pos;

    for (size_t i = start; i < avail; i++) {
        unsigned char c = (unsigned char)buf[i];

        if (c == ' ') {
            size_t n = i - start;

            if (n == 0)
                return STEP_BAD;
            memcpy(text, buf + start, n);
            text[n] = '\0';
            if (inet_pton(family, text, out) != 1)
                return STEP_BAD;
            *pos = i + 1;
            return STEP_OK;
        }
        if (i - start >= max || !is_addr_char(family, c))
            return STEP_BAD;
    }
    return STEP_SHORT;
}

/* A decimal port ended by `term`: digits only, no sign, no leading zero (the spec
 * forbids them to avoid octal confusion), at most 65535. */
static enum step v1_port(const char *buf, size_t avail, size_t *pos, char term, uint16_t *out)
{
    size_t start = *pos;
    uint32_t v = 0;

    for (size_t i = start; i < avail; i++) {
        unsigned char c = (unsigned char)buf[i];

        if (c == (unsigned char)term) {
            if (i == start)
                return STEP_BAD;
            *out = (uint16_t)v;
            *pos = i + 1;
            return STEP_OK;
        }
        if (!is_digit(c) || (i > start && buf[start] == '0'))
            return STEP_BAD;
        v = v * 10 + (uint32_t)(c - '0');
        if (v > PORT_MAX)
            return STEP_BAD;
    }
    return STEP_SHORT;
}

/* The LF of a CRLF whose CR was just consumed. */
static enum step v1_lf(const char *buf, size_t avail, size_t *pos)
{
    if (*pos >= avail)
        return STEP_SHORT;
    if (buf[*pos] != '\n')
        return STEP_BAD;
    (*pos)++;
    return STEP_OK;
}

/* UNKNOWN is followed by CRLF, or by a space and anything without CR or LF up to
 * the CRLF; the spec says to ignore that text. */
static enum step v1_unknown_rest(const char *buf, size_t avail, size_t *pos)
{
    for (size_t i = *pos; i < avail; i++) {
        unsigned char c = (unsigned char)buf[i];

        if (c == '\r') {
            *pos = i + 1;
            return v1_lf(buf, avail, pos);
        }
        if (c == '\n' || (i == *pos && c != ' '))
            return STEP_BAD;
    }
    return STEP_SHORT;
}

static enum proxy_protocol_status v1_parse(const char *buf, size_t len, size_t *consumed_r,
                                           struct proxy_protocol_info *info, const char **error_r)
{
    /* The line must end within the first V1_MAX bytes: look no further, and treat
     * running out of that window as the line being too long. */
    size_t avail = len < PROXY_PROTOCOL_V1_MAX ? len : PROXY_PROTOCOL_V1_MAX;
    size_t pos = V1_SIG_LEN;
    struct proxy_protocol_info out;
    const char *why;
    enum step st;

    memset(&out, 0, sizeof(out));
    out.version = 1;

    st = v1_proto(buf, avail, &pos, &out.family);
    why = "PROXY v1: unknown protocol (want TCP4, TCP6 or UNKNOWN)";
    if (st == STEP_OK && out.family == 0) {
        st = v1_unknown_rest(buf, avail, &pos);
        why = "PROXY v1: UNKNOWN must be followed by a space or CRLF, and end with CRLF";
    } else if (st == STEP_OK) {
        bool v4 = out.family == AF_INET;

        st = v1_addr(buf, avail, &pos, out.family, out.src_addr);
        why = v4 ? "PROXY v1: bad IPv4 source address" : "PROXY v1: bad IPv6 source address";
        if (st == STEP_OK) {
            st = v1_addr(buf, avail, &pos, out.family, out.dst_addr);
            why = v4 ? "PROXY v1: bad IPv4 destination address"
                     : "PROXY v1: bad IPv6 destination address";
        }
        if (st == STEP_OK) {
            st = v1_port(buf, avail, &pos, ' ', &out.src_port);
            why = "PROXY v1: bad source port";
        }
        if (st == STEP_OK) {
            st = v1_port(buf, avail, &pos, '\r', &out.dst_port);
            why = "PROXY v1: bad destination port or line end";
        }
        if (st == STEP_OK) {
            st = v1_lf(buf, avail, &pos);
            why = "PROXY v1: CR not followed by LF";
        }
    }

    if (st == STEP_OK) {
        *info = out;
        *consumed_r = pos;
        return PROXY_PROTOCOL_DONE;
    }
    if (st == STEP_SHORT) {
        if (len < PROXY_PROTOCOL_V1_MAX)
            return PROXY_PROTOCOL_MORE;
        why = "PROXY v1: no CRLF within 107 bytes";
    }
    *error_r = why;
    return PROXY_PROTOCOL_ERROR;
}

static enum proxy_protocol_status v2_parse(const unsigned char *buf, size_t len, size_t *consumed_r,
                                           struct proxy_protocol_info *info, const char **error_r)
{
    struct proxy_protocol_info out;
    unsigned cmd, fam;
    size_t addr_len, need = 0;

    if (len <= V2_SIG_LEN)
        return PROXY_PROTOCOL_MORE;
    if (buf[12] >> 4 != V2_VERSION) {
        *error_r = "PROXY v2: unsupported version";
        return PROXY_PROTOCOL_ERROR;
    }
    cmd = buf[12] & 0x0fu;
    if (cmd != V2_CMD_LOCAL && cmd != V2_CMD_PROXY) {
        *error_r = "PROXY v2: unknown command";
        return PROXY_PROTOCOL_ERROR;
    }

    if (len < 14)
        return PROXY_PROTOCOL_MORE;
    memset(&out, 0, sizeof(out));
    out.version = 2;
    fam = buf[13];
    if (fam == V2_FAM_TCP4) {
        out.family = AF_INET;
        need = V2_ADDR_LEN_TCP4;
    } else if (fam == V2_FAM_TCP6) {
        out.family = AF_INET6;
        need = V2_ADDR_LEN_TCP6;
    } else if (fam != V2_FAM_UNSPEC) {
        /* UDP, UNIX and unassigned values: a POP3 listener only proxies TCP. */
        *error_r = "PROXY v2: unsupported family/transport (want TCP over IPv4 or IPv6)";
        return PROXY_PROTOCOL_ERROR;
    } else if (cmd != V2_CMD_LOCAL) {
        *error_r = "PROXY v2: PROXY command with UNSPEC family";
        return PROXY_PROTOCOL_ERROR;
    }

    if (len < V2_FIXED_LEN)
        return PROXY_PROTOCOL_MORE;
    addr_len = (size_t)buf[14] << 8 | buf[15];
    if (addr_len > PROXY_PROTOCOL_V2_MAX - V2_FIXED_LEN) {
        *error_r = "PROXY v2: header too long";
        return PROXY_PROTOCOL_ERROR;
    }
    /* LOCAL ignores the family and its addresses, so any length will do there. */
    if (cmd == V2_CMD_PROXY && addr_len < need) {
        *error_r = "PROXY v2: address block too short for its family";
        return PROXY_PROTOCOL_ERROR;
    }
    if (len < V2_FIXED_LEN + addr_len)
        return PROXY_PROTOCOL_MORE;

    if (cmd == V2_CMD_LOCAL) {
        out.family = 0;
    } else {
        /* Both layouts are src addr, dst addr, src port, dst port; TLVs follow and
         * are skipped with the rest of the block. */
        const unsigned char *a = buf + V2_FIXED_LEN;
        size_t alen = out.family == AF_INET ? 4 : 16;

        memcpy(out.src_addr, a, alen);
        memcpy(out.dst_addr, a + alen, alen);
        out.src_port = (uint16_t)(a[2 * alen] << 8 | a[2 * alen + 1]);
        out.dst_port = (uint16_t)(a[2 * alen + 2] << 8 | a[2 * alen + 3]);
    }
    *info = out;
    *consumed_r = V2_FIXED_LEN + addr_len;
    return PROXY_PROTOCOL_DONE;
}

enum proxy_protocol_status proxy_protocol_parse(const char *buf, size_t len, size_t *consumed_r,
                                                struct proxy_protocol_info *info,
                                                const char **error_r)
{
    *consumed_r = 0;
    *error_r = NULL;
    if (len == 0)
        return PROXY_PROTOCOL_MORE;

    /* The first byte picks the version ('P' or CR); from there on, a byte that
     * cannot continue the signature refuses the connection at once, so a client
     * talking POP3 to a PROXY-protocol listener is not left waiting. */
    if (buf[0] == V1_SIG[0]) {
        size_t n = len < V1_SIG_LEN ? len : V1_SIG_LEN;

        if (memcmp(buf, V1_SIG, n) != 0) {
            *error_r = "not a PROXY protocol header";
            return PROXY_PROTOCOL_ERROR;
        }
        if (len < V1_SIG_LEN)
            return PROXY_PROTOCOL_MORE;
        return v1_parse(buf, len, consumed_r, info, error_r);
    }

    size_t n = len < V2_SIG_LEN ? len : V2_SIG_LEN;
    if (memcmp(buf, v2_sig, n) != 0) {
        *error_r = "not a PROXY protocol header";
        return PROXY_PROTOCOL_ERROR;
    }
    return v2_parse((const unsigned char *)buf, len, consumed_r, info, error_r);
}
