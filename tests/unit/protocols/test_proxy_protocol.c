/* Tests of the PROXY protocol parser: every vector whole, split at every byte, and byte by byte. */
#include <arpa/inet.h>
#include <check.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "proxy_protocol.h"

/* check's assertions record their location on every call; the prefix loops call
 * them hundreds of thousands of times, so hot paths use this. */
#define EXPECT(cond)                                                                               \
    do {                                                                                           \
        if (!(cond))                                                                               \
            ck_abort_msg("%s:%d: %s", __FILE__, __LINE__, #cond);                                  \
    } while (0)

#define DESCRIBE_MAX 256

/* A string literal and its length, NULs included (v2 headers hold them). */
#define B(s) s, sizeof(s) - 1

#define E_SIG      "!not a PROXY protocol header"
#define E_PROTO    "!PROXY v1: unknown protocol (want TCP4, TCP6 or UNKNOWN)"
#define E_UNKNOWN  "!PROXY v1: UNKNOWN must be followed by a space or CRLF, and end with CRLF"
#define E_SRC4     "!PROXY v1: bad IPv4 source address"
#define E_DST4     "!PROXY v1: bad IPv4 destination address"
#define E_SRC6     "!PROXY v1: bad IPv6 source address"
#define E_DST6     "!PROXY v1: bad IPv6 destination address"
#define E_SPORT    "!PROXY v1: bad source port"
#define E_DPORT    "!PROXY v1: bad destination port or line end"
#define E_LF       "!PROXY v1: CR not followed by LF"
#define E_LONG     "!PROXY v1: no CRLF within 107 bytes"
#define E_VERSION  "!PROXY v2: unsupported version"
#define E_CMD      "!PROXY v2: unknown command"
#define E_FAMILY   "!PROXY v2: unsupported family/transport (want TCP over IPv4 or IPv6)"
#define E_UNSPEC   "!PROXY v2: PROXY command with UNSPEC family"
#define E_TOO_LONG "!PROXY v2: header too long"
#define E_SHORT    "!PROXY v2: address block too short for its family"

/* Long v1 fields: F39 is the longest canonical IPv6 text, A45 the longest inet_pton
 * takes; A36 and A37 make a TCP6 line of exactly 107 or 108 bytes with A45. */
#define F39 "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
#define A45 "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"
#define A36 "fff:ffff:ffff:ffff:ffff:ffff:1.2.3.4"
#define A37 "ffff:ffff:ffff:ffff:ffff:ffff:1.2.3.4"
#define X10 "xxxxxxxxxx"

#define SIG "\r\n\r\n\0\r\nQUIT\n"
/* 192.0.2.7:51298 -> 198.51.100.1:110 */
#define V4_BLOCK "\xc0\x00\x02\x07\xc6\x33\x64\x01\xc8\x62\x00\x6e"
/* [2001:db8::1]:54138 -> [2001:db8::2]:995 */
#define V6_BLOCK                                                                                   \
    "\x20\x01\x0d\xb8\0\0\0\0\0\0\0\0\0\0\0\x01"                                                   \
    "\x20\x01\x0d\xb8\0\0\0\0\0\0\0\0\0\0\0\x02"                                                   \
    "\xd3\x7a\x03\xe3"
#define V4_GOOD "v2 TCP4 192.0.2.7:51298 198.51.100.1:110"
#define V6_GOOD "v2 TCP6 [2001:db8::1]:54138 [2001:db8::2]:995"
#define V1_TAIL " 5.6.7.8 1 2\r\n"

/*
 * One vector is a header part and a tail. The verdict (expect) must show exactly
 * when the last header byte arrives: for DONE, the header part is what the
 * header consumes and the tail is POP3 the client sent behind it; for an error,
 * the header part ends at the byte that decides it. A vector expecting MORE has
 * no tail and must stay MORE throughout.
 */
struct vec {
    const char *name;
    const char *hdr;
    size_t hdr_len;
    const char *tail;
    size_t tail_len;
    const char *expect;
};

struct result {
    enum proxy_protocol_status st;
    size_t consumed;
    char text[DESCRIBE_MAX];
};

static const char *addr_text(int family, const unsigned char *addr, char *buf, size_t cap)
{
    if (inet_ntop(family, addr, buf, (socklen_t)cap) == NULL)
        ck_abort_msg("inet_ntop failed");
    return buf;
}

static void describe(const struct proxy_protocol_info *info, char *out)
{
    char s[INET6_ADDRSTRLEN], d[INET6_ADDRSTRLEN];

    if (info->family == AF_INET)
        snprintf(out, DESCRIBE_MAX, "v%d TCP4 %s:%u %s:%u", info->version,
                 addr_text(AF_INET, info->src_addr, s, sizeof(s)), info->src_port,
                 addr_text(AF_INET, info->dst_addr, d, sizeof(d)), info->dst_port);
    else if (info->family == AF_INET6)
        snprintf(out, DESCRIBE_MAX, "v%d TCP6 [%s]:%u [%s]:%u", info->version,
                 addr_text(AF_INET6, info->src_addr, s, sizeof(s)), info->src_port,
                 addr_text(AF_INET6, info->dst_addr, d, sizeof(d)), info->dst_port);
    else
        snprintf(out, DESCRIBE_MAX, "v%d %s", info->version,
                 info->version == 1 ? "UNKNOWN" : "LOCAL");
}

/* Parses a fresh copy of in[0..len), so a read past len shows under ASan, and
 * checks what the contract promises about the outputs. */
static struct result parse(const char *in, size_t len)
{
    static const struct proxy_protocol_info zero;
    struct proxy_protocol_info info, sentinel;
    struct result r;
    const char *err = "sentinel";
    char *copy = malloc(len > 0 ? len : 1);

    EXPECT(copy != NULL);
    memcpy(copy, in, len);
    memset(&sentinel, 0xa5, sizeof(sentinel));
    info = sentinel;
    r.consumed = 12345;
    r.st = proxy_protocol_parse(copy, len, &r.consumed, &info, &err);
    free(copy);

    switch (r.st) {
    case PROXY_PROTOCOL_MORE:
        EXPECT(r.consumed == 0 && err == NULL);
        EXPECT(memcmp(&info, &sentinel, sizeof(info)) == 0);
        snprintf(r.text, sizeof(r.text), "MORE");
        break;
    case PROXY_PROTOCOL_ERROR:
        EXPECT(r.consumed == 0 && err != NULL && err[0] != '\0');
        EXPECT(memcmp(&info, &sentinel, sizeof(info)) == 0);
        snprintf(r.text, sizeof(r.text), "!%s", err);
        break;
    case PROXY_PROTOCOL_DONE:
        EXPECT(err == NULL);
        EXPECT(r.consumed > 0 && r.consumed <= len);
        EXPECT(info.version == 1 || info.version == 2);
        EXPECT(info.family == 0 || info.family == AF_INET || info.family == AF_INET6);
        if (info.version == 1)
            EXPECT(r.consumed <= PROXY_PROTOCOL_V1_MAX);
        else
            EXPECT(r.consumed <= PROXY_PROTOCOL_V2_MAX);
        if (info.family == 0) {
            EXPECT(memcmp(info.src_addr, zero.src_addr, sizeof(zero.src_addr)) == 0);
            EXPECT(memcmp(info.dst_addr, zero.dst_addr, sizeof(zero.dst_addr)) == 0);
            EXPECT(info.src_port == 0 && info.dst_port == 0);
        }
        describe(&info, r.text);
        break;
    default:
        ck_abort_msg("status %d", (int)r.st);
    }
    return r;
}

static void check_same(const char *name, const char *how, size_t k, const struct result *got,
                       const struct result *want)
{
    ck_assert_msg(got->st == want->st && got->consumed == want->consumed &&
                      strcmp(got->text, want->text) == 0,
                  "%s: %s %zu: got '%s' (used %zu), expected '%s' (used %zu)", name, how, k,
                  got->text, got->consumed, want->text, want->consumed);
}

static void run_vector(const struct vec *v)
{
    size_t len = v->hdr_len + v->tail_len;
    char *in = malloc(len > 0 ? len : 1);
    struct result whole, r;
    size_t first = 0;

    ck_assert_ptr_nonnull(in);
    memcpy(in, v->hdr, v->hdr_len);
    memcpy(in + v->hdr_len, v->tail, v->tail_len);
    bool want_more = strcmp(v->expect, "MORE") == 0;
    if (want_more)
        ck_assert_msg(v->tail_len == 0, "%s: a MORE vector has no tail", v->name);

    /* Whole. */
    whole = parse(in, len);
    ck_assert_msg(strcmp(whole.text, v->expect) == 0, "%s: whole: got '%s', expected '%s'", v->name,
                  whole.text, v->expect);
    if (whole.st == PROXY_PROTOCOL_DONE)
        ck_assert_msg(whole.consumed == v->hdr_len, "%s: consumed %zu, header is %zu", v->name,
                      whole.consumed, v->hdr_len);

    /* Byte by byte: a session parsing after each one-byte read sees MORE until the
     * deciding byte, then the whole input's verdict, and stops. */
    for (size_t k = 0; k <= len; k++) {
        r = parse(in, k);
        if (r.st == PROXY_PROTOCOL_MORE)
            continue;
        first = k;
        check_same(v->name, "byte by byte, at", k, &r, &whole);
        break;
    }
    if (want_more)
        ck_assert_msg(first == 0, "%s: verdict at %zu, expected MORE", v->name, first);
    else
        ck_assert_msg(first == v->hdr_len, "%s: verdict at byte %zu, expected at %zu", v->name,
                      first, v->hdr_len);

    /* Split at every position: the first read has k bytes, the second the rest. */
    for (size_t k = 1; k < len; k++) {
        r = parse(in, k);
        if (r.st == PROXY_PROTOCOL_MORE) {
            EXPECT(want_more || k < v->hdr_len);
            r = parse(in, len);
        } else {
            EXPECT(k >= v->hdr_len);
        }
        check_same(v->name, "split at", k, &r, &whole);
    }
    free(in);
}

static void run_table(const struct vec *t, size_t n)
{
    for (size_t i = 0; i < n; i++)
        run_vector(&t[i]);
}

#define RUN_TABLE(t) run_table((t), sizeof(t) / sizeof((t)[0]))

static const struct vec good_v1[] = {
    {"tcp4 + pop3", B("PROXY TCP4 192.168.0.1 192.168.0.11 56324 110\r\n"), B("USER bob\r\n"),
     "v1 TCP4 192.168.0.1:56324 192.168.0.11:110"},
    {"tcp4 longest", B("PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n"), B(""),
     "v1 TCP4 255.255.255.255:65535 255.255.255.255:65535"},
    {"tcp4 zeros", B("PROXY TCP4 0.0.0.0 0.0.0.0 0 0\r\n"), B("\r\n"),
     "v1 TCP4 0.0.0.0:0 0.0.0.0:0"},
    {"tcp6 + pop3", B("PROXY TCP6 2001:db8::1 2001:db8::2 51234 995\r\n"), B("CAPA\r\n"),
     "v1 TCP6 [2001:db8::1]:51234 [2001:db8::2]:995"},
    {"tcp6 upper case", B("PROXY TCP6 2001:DB8::A ::1 1 65535\r\n"), B("\0"),
     "v1 TCP6 [2001:db8::a]:1 [::1]:65535"},
    {"tcp6 mapped v4", B("PROXY TCP6 ::ffff:192.0.2.7 :: 40000 110\r\n"), B("STAT\r\n"),
     "v1 TCP6 [::ffff:192.0.2.7]:40000 [::]:110"},
    {"tcp6 canonical longest (104)", B("PROXY TCP6 " F39 " " F39 " 65535 65535\r\n"), B("QUIT\r\n"),
     "v1 TCP6 [" F39 "]:65535 [" F39 "]:65535"},
    {"tcp6 exactly 107", B("PROXY TCP6 " A45 " " A36 " 65535 65535\r\n"), B("x"),
     "v1 TCP6 [" F39 "]:65535 [fff:ffff:ffff:ffff:ffff:ffff:102:304]:65535"},
    {"unknown short", B("PROXY UNKNOWN\r\n"), B("USER bob\r\n"), "v1 UNKNOWN"},
    {"unknown space", B("PROXY UNKNOWN \r\n"), B("\r\n"), "v1 UNKNOWN"},
    {"unknown exactly 107", B("PROXY UNKNOWN " F39 " " F39 " 65535 65535\r\n"), B("+OK"),
     "v1 UNKNOWN"},
    {"unknown junk ignored", B("PROXY UNKNOWN  any\tthing \x01\xff\0 TCP4\r\n"), B("NOOP\r\n"),
     "v1 UNKNOWN"},
    {"second header is POP3's", B("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"),
     B("PROXY TCP4 9.9.9.9 9.9.9.9 9 9\r\n"), "v1 TCP4 1.2.3.4:1 5.6.7.8:2"},
};

static const struct vec good_v2[] = {
    {"tcp4 + pop3", B(SIG "\x21\x11\x00\x0c" V4_BLOCK), B("USER bob\r\n"), V4_GOOD},
    {"tcp6 + pop3", B(SIG "\x21\x21\x00\x24" V6_BLOCK), B("CAPA\r\n"), V6_GOOD},
    {"tcp4 + TLVs",
     B(SIG "\x21\x11\x00\x16" V4_BLOCK "\x04\x00\x04"
           "abcd"
           "\x05\x00\x00"),
     B("+"), V4_GOOD},
    {"tcp4 + junk TLV bytes", B(SIG "\x21\x11\x00\x0f" V4_BLOCK "\xff\xff\xff"), B("QUIT\r\n"),
     V4_GOOD},
    {"tcp4 in a v6-sized block", B(SIG "\x21\x11\x00\x24" V6_BLOCK), B(""),
     "v2 TCP4 32.1.13.184:0 0.0.0.0:0"},
    {"tcp6 + TLV",
     B(SIG "\x21\x21\x00\x28" V6_BLOCK "\x04\x00\x01"
           "z"),
     B("\r\n"), V6_GOOD},
    {"local unspec", B(SIG "\x20\x00\x00\x00"), B("USER a\r\n"), "v2 LOCAL"},
    {"local unspec + bytes",
     B(SIG "\x20\x00\x00\x03"
           "abc"),
     B("STAT\r\n"), "v2 LOCAL"},
    {"local tcp4 ignores addresses", B(SIG "\x20\x11\x00\x0c" V4_BLOCK), B("x"), "v2 LOCAL"},
    {"local tcp6 without block", B(SIG "\x20\x21\x00\x00"), B("CAPA\r\n"), "v2 LOCAL"},
};

static const struct vec bad_signature[] = {
    {"pop3 USER", B("U"), B("SER bob\r\n"), E_SIG},
    {"pop3 CAPA", B("C"), B("APA\r\n"), E_SIG},
    {"tls client hello", B("\x16"), B("\x03\x01\x02\x00\x01"), E_SIG},
    {"empty line", B("\n"), B(""), E_SIG},
    {"lower case v1", B("p"), B("roxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n"), E_SIG},
    {"PROXYT", B("PROXYT"), B("CP4 1.2.3.4 5.6.7.8 1 2\r\n"), E_SIG},
    {"PROY", B("PROY"), B(" TCP4"), E_SIG},
    {"two CRLF then CR", B("\r\n\r\n\r"), B("\n"), E_SIG},
    {"v2 signature without NUL", B("\r\n\r\n\x01"), B("\r\nQUIT\n\x21\x11"), E_SIG},
    {"v2 signature QX", B("\r\n\r\n\0\r\nQX"), B("IT\n"), E_SIG},
    {"v2 signature last byte", B("\r\n\r\n\0\r\nQUIT\r"), B("\x21\x11\x00\x0c" V4_BLOCK), E_SIG},
};

static const struct vec bad_v1[] = {
    {"double space", B("PROXY  "), B("TCP4 1.2.3.4" V1_TAIL), E_PROTO},
    {"TCP5", B("PROXY TCP5"), B(" 1.2.3.4" V1_TAIL), E_PROTO},
    {"lower case tcp4", B("PROXY t"), B("cp4 1.2.3.4" V1_TAIL), E_PROTO},
    {"UDP4", B("PROXY UD"), B("P4 1.2.3.4" V1_TAIL), E_PROTO},
    {"TCP4 then CR", B("PROXY TCP4\r"), B("\n"), E_PROTO},
    {"TCP4 then tab", B("PROXY TCP4\t"), B("1.2.3.4" V1_TAIL), E_PROTO},
    {"UNKNOWNX", B("PROXY UNKNOWNX"), B("\r\n"), E_UNKNOWN},
    {"UNKNOWN bare LF", B("PROXY UNKNOWN\n"), B(""), E_UNKNOWN},
    {"UNKNOWN LF in text", B("PROXY UNKNOWN foo\n"), B("bar\r\n"), E_UNKNOWN},
    {"UNKNOWN CR without LF", B("PROXY UNKNOWN\rX"), B("\n"), E_UNKNOWN},
    {"UNKNOWN CR CR", B("PROXY UNKNOWN 1 2\r\r"), B("\n"), E_UNKNOWN},
    {"unknown no CRLF in 107", B("PROXY UNKNOWN " X10 X10 X10 X10 X10 X10 X10 X10 X10 "xxx"),
     B("\r\n"), E_LONG},
    {"unknown 108 bytes", B("PROXY UNKNOWN " F39 " " F39 " 65535 655350\r"), B("\n"), E_LONG},
    {"tcp6 108 bytes", B("PROXY TCP6 " A45 " " A37 " 65535 65535\r"), B("\n"), E_LONG},
    /* Addresses. */
    {"empty source", B("PROXY TCP4  "), B("1.2.3.4" V1_TAIL), E_SRC4},
    {"octet 256", B("PROXY TCP4 256.1.1.1 "), B("5.6.7.8 1 2\r\n"), E_SRC4},
    {"three octets", B("PROXY TCP4 1.2.3 "), B("5.6.7.8 1 2\r\n"), E_SRC4},
    {"leading zero octet", B("PROXY TCP4 01.2.3.4 "), B("5.6.7.8 1 2\r\n"), E_SRC4},
    {"five octets", B("PROXY TCP4 1.2.3.4.5 "), B("5.6.7.8 1 2\r\n"), E_SRC4},
    {"v4 text over 15", B("PROXY TCP4 1.2.3.4.5.6.7.8."), B("9" V1_TAIL), E_SRC4},
    {"v6 address for TCP4", B("PROXY TCP4 :"), B(":1 ::1 1 2\r\n"), E_SRC4},
    {"hex in TCP4", B("PROXY TCP4 a"), B(".2.3.4" V1_TAIL), E_SRC4},
    {"tab after source", B("PROXY TCP4 1.2.3.4\t"), B("5.6.7.8 1 2\r\n"), E_SRC4},
    {"source then CRLF", B("PROXY TCP4 1.2.3.4\r"), B("\n"), E_SRC4},
    {"v4 address for TCP6", B("PROXY TCP6 1.2.3.4 "), B("::1 1 2\r\n"), E_SRC6},
    {"two ::", B("PROXY TCP6 1::2::3 "), B("::1 1 2\r\n"), E_SRC6},
    {"nine groups", B("PROXY TCP6 1:2:3:4:5:6:7:8:9 "), B("::1 1 2\r\n"), E_SRC6},
    {"hex g", B("PROXY TCP6 g"), B("::1 ::1 1 2\r\n"), E_SRC6},
    {"zone id", B("PROXY TCP6 fe80::1%"), B("eth0 ::1 1 2\r\n"), E_SRC6},
    {"v6 text over 45", B("PROXY TCP6 " A45 "0"), B(" ::1 1 2\r\n"), E_SRC6},
    {"bad destination", B("PROXY TCP4 1.2.3.4 1.2.3.256 "), B("1 2\r\n"), E_DST4},
    {"v6 destination for TCP4", B("PROXY TCP4 1.2.3.4 :"), B(":1 1 2\r\n"), E_DST4},
    {"v4 destination for TCP6", B("PROXY TCP6 ::1 1.2.3.4 "), B("1 2\r\n"), E_DST6},
    {"destination then CRLF", B("PROXY TCP6 ::1 ::2\r"), B("\n"), E_DST6},
    /* Ports. */
    {"source port +", B("PROXY TCP4 1.2.3.4 5.6.7.8 +"), B("80 110\r\n"), E_SPORT},
    {"source port -", B("PROXY TCP4 1.2.3.4 5.6.7.8 -"), B("1 110\r\n"), E_SPORT},
    {"source port 65536", B("PROXY TCP4 1.2.3.4 5.6.7.8 65536"), B(" 110\r\n"), E_SPORT},
    {"source port 655350", B("PROXY TCP4 1.2.3.4 5.6.7.8 655350"), B(" 110\r\n"), E_SPORT},
    {"source port 99999", B("PROXY TCP4 1.2.3.4 5.6.7.8 99999"), B(" 110\r\n"), E_SPORT},
    {"source port leading 0", B("PROXY TCP4 1.2.3.4 5.6.7.8 08"), B("0 110\r\n"), E_SPORT},
    {"source port 00", B("PROXY TCP4 1.2.3.4 5.6.7.8 00"), B(" 110\r\n"), E_SPORT},
    {"source port hex", B("PROXY TCP4 1.2.3.4 5.6.7.8 0x"), B("50 110\r\n"), E_SPORT},
    {"source port empty", B("PROXY TCP4 1.2.3.4 5.6.7.8  "), B("110\r\n"), E_SPORT},
    {"source port letters", B("PROXY TCP4 1.2.3.4 5.6.7.8 p"), B("op3 110\r\n"), E_SPORT},
    {"no destination port", B("PROXY TCP4 1.2.3.4 5.6.7.8 80\r"), B("\n"), E_SPORT},
    {"destination port 65536", B("PROXY TCP4 1.2.3.4 5.6.7.8 80 65536"), B("\r\n"), E_DPORT},
    {"destination port +", B("PROXY TCP4 1.2.3.4 5.6.7.8 80 +"), B("110\r\n"), E_DPORT},
    {"destination port leading 0", B("PROXY TCP4 1.2.3.4 5.6.7.8 80 01"), B("10\r\n"), E_DPORT},
    {"destination port empty", B("PROXY TCP4 1.2.3.4 5.6.7.8 80 \r"), B("\n"), E_DPORT},
    {"trailing space", B("PROXY TCP4 1.2.3.4 5.6.7.8 80 110 "), B("\r\n"), E_DPORT},
    {"missing CR", B("PROXY TCP4 1.2.3.4 5.6.7.8 80 110\n"), B("USER a\r\n"), E_DPORT},
    {"extra field", B("PROXY TCP6 ::1 ::2 80 110 "), B("1\r\n"), E_DPORT},
    {"CR CR LF", B("PROXY TCP4 1.2.3.4 5.6.7.8 80 110\r\r"), B("\n"), E_LF},
    {"CR then text", B("PROXY TCP4 1.2.3.4 5.6.7.8 80 110\rU"), B("SER a\r\n"), E_LF},
};

static const struct vec bad_v2[] = {
    {"version 1", B(SIG "\x11"), B("\x11\x00\x0c" V4_BLOCK), E_VERSION},
    {"version 0", B(SIG "\x01"), B("\x11\x00\x0c" V4_BLOCK), E_VERSION},
    {"version 3", B(SIG "\x31"), B("\x11\x00\x0c" V4_BLOCK), E_VERSION},
    {"version 15", B(SIG "\xf1"), B("\x11\x00\x0c" V4_BLOCK), E_VERSION},
    {"command 2", B(SIG "\x22"), B("\x11\x00\x0c" V4_BLOCK), E_CMD},
    {"command 15", B(SIG "\x2f"), B("\x11\x00\x0c" V4_BLOCK), E_CMD},
    {"UDP over IPv4", B(SIG "\x21\x12"), B("\x00\x0c" V4_BLOCK), E_FAMILY},
    {"UDP over IPv6", B(SIG "\x21\x22"), B("\x00\x24" V6_BLOCK), E_FAMILY},
    {"UNIX stream", B(SIG "\x21\x31"), B("\x00\x00"), E_FAMILY},
    {"UNIX dgram", B(SIG "\x21\x32"), B("\x00\x00"), E_FAMILY},
    {"IPv4 unspec transport", B(SIG "\x21\x10"), B("\x00\x0c" V4_BLOCK), E_FAMILY},
    {"unassigned transport", B(SIG "\x21\x13"), B("\x00\x0c" V4_BLOCK), E_FAMILY},
    {"unassigned family", B(SIG "\x21\x41"), B("\x00\x0c" V4_BLOCK), E_FAMILY},
    {"unspec family stream", B(SIG "\x21\x01"), B("\x00\x00"), E_FAMILY},
    {"LOCAL over UDP", B(SIG "\x20\x12"), B("\x00\x00"), E_FAMILY},
    {"PROXY with UNSPEC", B(SIG "\x21\x00"), B("\x00\x00"), E_UNSPEC},
    {"tcp4 block 11", B(SIG "\x21\x11\x00\x0b"), B(V4_BLOCK), E_SHORT},
    {"tcp4 block 0", B(SIG "\x21\x11\x00\x00"), B("USER a\r\n"), E_SHORT},
    {"tcp6 block 35", B(SIG "\x21\x21\x00\x23"), B(V6_BLOCK), E_SHORT},
    {"tcp6 with a v4 block", B(SIG "\x21\x21\x00\x0c"), B(V4_BLOCK), E_SHORT},
    {"length 1025", B(SIG "\x21\x11\x04\x01"), B(V4_BLOCK), E_TOO_LONG},
    {"length 65535 LOCAL", B(SIG "\x20\x00\xff\xff"), B(""), E_TOO_LONG},
};

static const struct vec incomplete[] = {
    {"nothing", B(""), B(""), "MORE"},
    {"P", B("P"), B(""), "MORE"},
    {"PROXY", B("PROXY"), B(""), "MORE"},
    {"PROXY space", B("PROXY "), B(""), "MORE"},
    {"PROXY UNKNO", B("PROXY UNKNO"), B(""), "MORE"},
    {"v1 up to CR", B("PROXY TCP4 1.2.3.4 5.6.7.8 80 110\r"), B(""), "MORE"},
    /* An address is judged when its space arrives; until then its characters fit. */
    {"v1 address not yet ended", B("PROXY TCP4 999.999.999.999"), B(""), "MORE"},
    {"unknown 106 bytes", B("PROXY UNKNOWN " X10 X10 X10 X10 X10 X10 X10 X10 X10 "xx"), B(""),
     "MORE"},
    {"CR", B("\r"), B(""), "MORE"},
    {"v2 signature", B(SIG), B(""), "MORE"},
    {"v2 fixed part", B(SIG "\x21\x11\x00\x0c"), B(""), "MORE"},
    {"v2 truncated address block", B(SIG "\x21\x11\x00\x0c\xc0\x00\x02"), B(""), "MORE"},
    {"v2 truncated TLVs", B(SIG "\x21\x21\x00\x30" V6_BLOCK "\x04\x00\x08"), B(""), "MORE"},
    {"v2 LOCAL truncated",
     B(SIG "\x20\x00\x00\x05"
           "ab"),
     B(""), "MORE"},
    {"v2 max length waiting", B(SIG "\x21\x11\x04\x00" V4_BLOCK), B(""), "MORE"},
};

START_TEST(test_good_v1)
{
    RUN_TABLE(good_v1);
}
END_TEST

START_TEST(test_good_v2)
{
    RUN_TABLE(good_v2);
}
END_TEST

START_TEST(test_bad_signature)
{
    RUN_TABLE(bad_signature);
}
END_TEST

START_TEST(test_bad_v1)
{
    RUN_TABLE(bad_v1);
}
END_TEST

START_TEST(test_bad_v2)
{
    RUN_TABLE(bad_v2);
}
END_TEST

START_TEST(test_incomplete)
{
    RUN_TABLE(incomplete);
}
END_TEST

/* A v2 header of exactly PROXY_PROTOCOL_V2_MAX bytes (address block and one long
 * NOOP TLV) is taken; one byte more in the length field is refused at byte 16. */
START_TEST(test_v2_max)
{
    static const char fixed[] = SIG "\x21\x11";
    static const char block[] = V4_BLOCK;
    size_t addr_len = PROXY_PROTOCOL_V2_MAX - 16;
    size_t tlv_len = addr_len - (sizeof(block) - 1) - 3;
    char *hdr = malloc(PROXY_PROTOCOL_V2_MAX);
    size_t o = 0;

    ck_assert_ptr_nonnull(hdr);
    memcpy(hdr, fixed, sizeof(fixed) - 1);
    o += sizeof(fixed) - 1;
    hdr[o++] = (char)(addr_len >> 8);
    hdr[o++] = (char)(addr_len & 0xff);
    memcpy(hdr + o, block, sizeof(block) - 1);
    o += sizeof(block) - 1;
    hdr[o++] = 0x04;
    hdr[o++] = (char)(tlv_len >> 8);
    hdr[o++] = (char)(tlv_len & 0xff);
    memset(hdr + o, 'n', tlv_len);
    o += tlv_len;
    ck_assert_uint_eq(o, PROXY_PROTOCOL_V2_MAX);

    struct vec ok = {"v2 max", hdr, o, B("USER bob\r\n"), V4_GOOD};
    run_vector(&ok);

    addr_len++;
    hdr[14] = (char)(addr_len >> 8);
    hdr[15] = (char)(addr_len & 0xff);
    struct vec over = {"v2 max + 1", hdr, 16, hdr + 16, o - 16, E_TOO_LONG};
    run_vector(&over);
    free(hdr);
}
END_TEST

/* Ports and addresses come out in the documented byte orders. */
START_TEST(test_info_fields)
{
    static const char v1[] = "PROXY TCP4 192.0.2.7 198.51.100.1 51298 110\r\n";
    static const char v2[] = SIG "\x21\x11\x00\x0c" V4_BLOCK;
    static const unsigned char src[4] = {192, 0, 2, 7}, dst[4] = {198, 51, 100, 1};
    const char *const ins[] = {v1, v2};
    const size_t lens[] = {sizeof(v1) - 1, sizeof(v2) - 1};

    for (size_t i = 0; i < 2; i++) {
        struct proxy_protocol_info info;
        const char *err;
        size_t used;

        ck_assert_int_eq(proxy_protocol_parse(ins[i], lens[i], &used, &info, &err),
                         PROXY_PROTOCOL_DONE);
        ck_assert_uint_eq(used, lens[i]);
        ck_assert_int_eq(info.version, (int)i + 1);
        ck_assert_int_eq(info.family, AF_INET);
        ck_assert_mem_eq(info.src_addr, src, 4);
        ck_assert_mem_eq(info.dst_addr, dst, 4);
        ck_assert_uint_eq(info.src_port, 51298);
        ck_assert_uint_eq(info.dst_port, 110);
    }
}
END_TEST

/*
 * The property the session relies on, on inputs near the good headers: every
 * prefix gives MORE or the whole input's verdict, MORE gives way to the verdict
 * at one byte and never comes back, and DONE first shows when the header's last
 * byte arrives.
 */
static void check_prefixes(const char *in, size_t len)
{
    struct result whole = parse(in, len);
    bool decided = false;

    for (size_t k = 0; k < len; k++) {
        struct result r = parse(in, k);

        if (r.st == PROXY_PROTOCOL_MORE) {
            EXPECT(!decided);
            continue;
        }
        if (!decided && r.st == PROXY_PROTOCOL_DONE)
            EXPECT(k == r.consumed);
        decided = true;
        EXPECT(r.st == whole.st && r.consumed == whole.consumed && strcmp(r.text, whole.text) == 0);
    }
}

static void mutate_table(const struct vec *t, size_t n)
{
    static const unsigned char bytes[] = {
        0x00, ' ', '\r', '\n', '0',  '1',  '9',  ':',  '.',  'a',  'f',
        'g',  'P', '+',  '-',  0x10, 0x11, 0x12, 0x20, 0x21, 0x22, 0xff,
    };
    char buf[128];

    for (size_t i = 0; i < n; i++) {
        size_t len = t[i].hdr_len + t[i].tail_len;

        ck_assert_uint_le(len, sizeof(buf));
        memcpy(buf, t[i].hdr, t[i].hdr_len);
        memcpy(buf + t[i].hdr_len, t[i].tail, t[i].tail_len);
        for (size_t pos = 0; pos < len; pos++) {
            char saved = buf[pos];

            for (size_t b = 0; b < sizeof(bytes); b++) {
                buf[pos] = (char)bytes[b];
                check_prefixes(buf, len);
                /* Also with the byte deleted, which shifts every later field. */
                memmove(buf + pos, buf + pos + 1, len - pos - 1);
                check_prefixes(buf, len - 1);
                memmove(buf + pos + 1, buf + pos, len - pos - 1);
            }
            buf[pos] = saved;
        }
    }
}

START_TEST(test_prefix_property_mutations)
{
    mutate_table(good_v1, sizeof(good_v1) / sizeof(good_v1[0]));
    mutate_table(good_v2, sizeof(good_v2) / sizeof(good_v2[0]));
}
END_TEST

static Suite *proxy_protocol_suite(void)
{
    Suite *s = suite_create("proxy_protocol");
    TCase *tc = tcase_create("core");

    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_good_v1);
    tcase_add_test(tc, test_good_v2);
    tcase_add_test(tc, test_bad_signature);
    tcase_add_test(tc, test_bad_v1);
    tcase_add_test(tc, test_bad_v2);
    tcase_add_test(tc, test_incomplete);
    tcase_add_test(tc, test_v2_max);
    tcase_add_test(tc, test_info_fields);
    tcase_add_test(tc, test_prefix_property_mutations);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(proxy_protocol_suite());
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
