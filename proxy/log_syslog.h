/* The syslog sink of the logger, apart because <syslog.h> names clash with log.h's levels. */
#ifndef POPGATE_LOG_SYSLOG_H
#define POPGATE_LOG_SYSLOG_H

void log_syslog_open(void);

/* level: 0 error, 1 warn, 2 info, 3 debug (enum log_level's order). */
void log_syslog_write(int level, const char *line);

#endif
