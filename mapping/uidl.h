/* UIDL generation: the unique-id string POP3 shows for a message. */
#ifndef POPGATE_UIDL_H
#define POPGATE_UIDL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* RFC 1939: a unique-id is 1 to 70 characters in 0x21..0x7E. */
#define UIDL_MAX 70

/*
 * The default UIDL: UID then UIDVALIDITY, each as 8 lower-case hex digits,
 * exactly what Dovecot's POP3 server shows by default ("%08Xu%08Xv"):
 * uid 1, uidvalidity 0x5f5ede35 -> "000000015f5ede35". out needs UIDL_MAX + 1
 * bytes. Returns the length.
 */
size_t uidl_default(char *out, uint32_t uid, uint32_t uidvalidity);

/* True when s[0..len) is a valid unique-id: 1..UIDL_MAX bytes of 0x21..0x7E. */
bool uidl_is_valid(const char *s, size_t len);

/*
 * mapping.uidl_format templates: Dovecot 2.3's pop3_uidl_format syntax for the
 * variables a proxy knows, so an operator moving from Dovecot copies the value.
 *
 *   template := *( literal / "%%" / var )
 *   var      := "%" [ "0" ] [ width ] *modifier ( "u" / "v" / "g" )
 *
 *   %u  the message's IMAP UID, decimal
 *   %v  the folder's UIDVALIDITY, decimal
 *   %g  the server's stable id as the upstream sends it (RFC 8474 EMAILID,
 *       Dovecot X-GUID, Gmail X-GM-MSGID)
 *   %%  a literal "%"
 *
 * Modifiers apply left to right, as in Dovecot:
 *   X   the value (a decimal number) in lower-case hex: Dovecot's "X" prints
 *       "%llx", so Dovecot's default "%08Xu%08Xv" is lower case, and it is ours
 *   x   popgate's spelling of the same (lower-case hex)
 *   U   upper case: "%08XUu" is 8 upper-case hex digits of the UID
 *   L   lower case
 * Width: "0" then digits pads on the left with zeros to that many characters
 * and never truncates ("%08Xu"); digits without "0" keep only the first that
 * many characters ("%8g"), as Dovecot does.
 *
 * Where popgate differs from Dovecot, it refuses at config time what Dovecot
 * would silently turn into something else: unknown variables, a "%" at the
 * end, "%5%", offsets ("%1.5u") and negative widths, Dovecot's other modifiers
 * (E R H N M D T), widths over 70, literal characters outside 0x21..0x7E, a
 * template without %u or %g (every message would get the same id), and one
 * whose shortest output is over 70 characters. At format time, X on a value
 * that is not a decimal number, and %g when the server has no id, make the
 * result invalid (Dovecot would print "0" and ""), so the caller falls back.
 */
#define UIDL_TEMPLATE_DEFAULT "%08Xu%08Xv"

/*
 * Config-time check. Returns 0, or -1 with *error_r (static text saying what
 * is wrong and what is allowed).
 */
int uidl_template_check(const char *tmpl, const char **error_r);

/* True when tmpl uses %g: the session must then fetch the server's id. */
bool uidl_template_uses_guid(const char *tmpl);

/*
 * Expands tmpl into out (UIDL_MAX + 1 bytes, NUL-terminated). guid may be
 * NULL. Returns the length, or 0 (out = "") when the template is invalid or the
 * result is not a valid unique-id: empty, over 70 characters, a byte outside
 * 0x21..0x7E (a guid with spaces), X on a non-number, %g without a guid.
 */
size_t uidl_template_format(const char *tmpl, uint32_t uid, uint32_t uidvalidity, const char *guid,
                            char *out);

/* 64-bit FNV-1a, the hash popgate uses for Message-IDs and UIDL lists: feed
 * UIDL_FNV_OFFSET first, then chain. */
#define UIDL_FNV_OFFSET 0xcbf29ce484222325ULL
uint64_t uidl_fnv1a(uint64_t h, const void *data, size_t len);

/*
 * The hash of a Message-ID header value (already unfolded), with surrounding
 * SP, HTAB, CR and LF trimmed and case kept: FNV-1a of the bytes. Returns 0
 * ("unknown") for an empty value and never 0 otherwise. Used for the state's
 * msgid_hash and for imported legacy lists alike.
 */
uint64_t uidl_msgid_hash(const char *msgid, size_t len);

/*
 * Finds the header field name (case-insensitive, e.g. "Message-ID") in the header
 * bytes hdr[0..len) and writes its value into out (cap bytes, NUL-terminated):
 * continuation lines unfolded, runs of blanks as one space, ends trimmed, cut at
 * cap. Returns the value's length, 0 when absent (or empty).
 */
#define UIDL_HEADER_VALUE_MAX 1000

size_t uidl_header_field(const char *hdr, size_t len, const char *name, char *out, size_t cap);

#endif
