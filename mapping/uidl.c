/* UIDL generation owns the mapping from (UID, UIDVALIDITY) to the unique-id a POP3 client stores.
 */
#include "uidl.h"

/* Each of UID and UIDVALIDITY is a uint32_t: eight hex digits. */
#define UIDL_HEX_DIGITS 8

static size_t put_hex32(char *out, uint32_t v)
{
    static const char digits[] = "0123456789abcdef";

    for (int i = UIDL_HEX_DIGITS - 1; i >= 0; i--) {
        out[i] = digits[v & 0xf];
        v >>= 4;
    }
    return UIDL_HEX_DIGITS;
}

size_t uidl_default(char *out, uint32_t uid, uint32_t uidvalidity)
{
    size_t len = 0;

    /* Dovecot's default format: a client moved from Dovecot's POP3 server to us
     * sees the same unique-ids and does not download everything again. */
    len += put_hex32(out + len, uid);
    len += put_hex32(out + len, uidvalidity);
    out[len] = '\0';
    return len;
}
