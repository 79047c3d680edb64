/* Logging: one key=value line per event, to stderr, written whole. */
#include "log.h"
#include "log_syslog.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static enum log_level min_level = LOG_INFO;
static bool to_syslog;

static const char *const level_names[] = {"error", "warn", "info", "debug"};

void log_set_level(enum log_level level)
{
    min_level = level;
}

void log_use_syslog(void)
{
    log_syslog_open();
    to_syslog = true;
}

void log_line(enum log_level level, const char *fmt, ...)
{
    if (level > min_level)
        return;
    char line[2048];
    if (to_syslog) {
        int n = snprintf(line, sizeof(line), "level=%s ", level_names[level]);
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
        va_end(ap);
        log_syslog_write((int)level, line);
        return;
    }
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    int n = snprintf(line, sizeof(line), "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     (long)(tv.tv_usec / 1000), level_names[level]);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof(line) - 2)
        len = sizeof(line) - 2;
    line[len++] = '\n';
    /* One write per line keeps lines whole when several workers share stderr. */
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w;
}

static bool is_bare_char(unsigned char c)
{
    return c > 0x20 && c < 0x7f && c != '"' && c != '\\' && c != '=';
}

const char *log_value(char *out, size_t cap, const char *s, size_t len)
{
    if (cap < 8) {
        if (cap > 0)
            out[0] = '\0';
        return out;
    }
    bool bare = len > 0;
    for (size_t i = 0; i < len && bare; i++)
        bare = is_bare_char((unsigned char)s[i]);
    size_t o = 0;
    if (bare && len < cap) {
        memcpy(out, s, len);
        out[len] = '\0';
        return out;
    }
    const size_t room = cap - 5; /* closing quote, "...", NUL */
    if (!bare)
        out[o++] = '"';
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[5];
        size_t elen;
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            elen = 2;
        } else if (c < 0x20 || c >= 0x7f) {
            snprintf(esc, sizeof(esc), "\\x%02x", c);
            elen = 4;
        } else {
            esc[0] = (char)c;
            elen = 1;
        }
        if (o + elen > room) {
            memcpy(out + o, "...", 3);
            o += 3;
            break;
        }
        memcpy(out + o, esc, elen);
        o += elen;
    }
    if (!bare)
        out[o++] = '"';
    out[o] = '\0';
    return out;
}

const char *log_str(char *out, size_t cap, const char *s)
{
    return log_value(out, cap, s, strlen(s));
}
