/* UIDL generation: the unique-id string POP3 shows for a message. */
#ifndef POPGATE_UIDL_H
#define POPGATE_UIDL_H

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

#endif
