/* Logging: one key=value line per event, to stderr. */
#ifndef POPGATE_LOG_H
#define POPGATE_LOG_H

#include <stddef.h>

enum log_level {
    LOG_ERROR,
    LOG_WARN,
    LOG_INFO,
    LOG_DEBUG,
};

void log_set_level(enum log_level level);

/* From now on, lines go to syslog (facility mail, ident "popgate", with the pid)
 * instead of stderr. */
void log_use_syslog(void);

/* Writes "ts=... level=... <formatted text>\n" to stderr in one write(2). The
 * caller formats the key=value pairs; values from outside go through log_value. */
void log_line(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/*
 * Renders s[0..len) as a log value into out (cap bytes, NUL-terminated): bare
 * when it is only safe printable characters, else double-quoted with ", \ and
 * every non-printable byte escaped (\xNN), cut with "..." past cap. Returns out,
 * so it can sit inside a log_line() argument list.
 */
const char *log_value(char *out, size_t cap, const char *s, size_t len);

#define LOG_VALUE_MAX 160

/* log_value() of a NUL-terminated string. */
const char *log_str(char *out, size_t cap, const char *s);

#endif
