/* The user map: a file of per-user routes for large populations, looked up in O(1). */
#ifndef POPGATE_USER_MAP_H
#define POPGATE_USER_MAP_H

#include <stddef.h>

#include "config.h"

struct user_map;

/* One user's line. Pointers stay valid while the map lives. */
struct user_map_entry {
    const struct config_upstream *upstream;
    const char *login; /* NULL when the line has no login column */
    size_t login_len;
};

/*
 * Reads path: one user per line, "USER UPSTREAM [LOGIN]" separated by runs of spaces
 * or tabs; leading blanks, a CR before the LF and empty lines are fine, and a line whose
 * first non-blank byte is "#" is a comment. Users compare case-insensitively (ASCII); a
 * user listed twice is an error. UPSTREAM must be one of cfg's upstreams (cfg->upstreams
 * must be final: entries point into it). USER and LOGIN are at most ROUTE_LOGIN_MAX
 * bytes; control bytes are refused. The file is read in one go into one buffer that
 * holds every string, and indexed by one open-addressing table: one million lines load
 * in well under 2 s and 300 MB.
 *
 * Returns the map (caller owns; user_map_free) or NULL after any error. Each error is
 * handed to err_cb (may be NULL) as one printable line without "\n", with count the
 * number of errors it stands for: "PATH:LINE: what" (count 1) for the first
 * USER_MAP_ERRORS_SHOWN, then one "PATH: N more errors" (count N). A file that cannot be
 * read is one "CFG: user_map: cannot read \"PATH\": reason" (CFG is cfg->path; the
 * line then starts at "user_map:" when cfg->path is NULL).
 */
#define USER_MAP_ERRORS_SHOWN 20

struct user_map *user_map_load(const char *path, const struct config *cfg,
                               void (*err_cb)(void *ctx, const char *line, unsigned count),
                               void *ctx);

/* Frees the map and sets *m to NULL. NULL and *m == NULL are fine. */
void user_map_free(struct user_map **m);

/* Looks user (user_len bytes) up, case-insensitively; NULL when absent or m is NULL.
 * The entry points into m. O(1). */
const struct user_map_entry *user_map_find(const struct user_map *m, const char *user,
                                           size_t user_len);

/* The number of users in m (0 for NULL). */
size_t user_map_count(const struct user_map *m);

#endif
