/* Wiping what library code left of a secret in stack memory. */
#ifndef POPGATE_WIPE_H
#define POPGATE_WIPE_H

/*
 * Overwrites the stack below the caller's frame. Building and sending a login copies the
 * password through frames popgate does not own (printf's work buffers, libc's vector
 * code), and those copies stay until a deeper call reuses the memory. Called from an
 * event callback after a login was handled, so the whole depth of that work is covered.
 */
void wipe_stack(void);

#endif
