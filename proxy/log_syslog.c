/* The syslog sink of the logger, apart because <syslog.h> names clash with log.h's levels. */
#include "log_syslog.h"

#include <syslog.h>

void log_syslog_open(void)
{
    openlog("popgate", LOG_PID | LOG_NDELAY, LOG_MAIL);
}

void log_syslog_write(int level, const char *line)
{
    static const int prio[] = {LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG};
    syslog(prio[level & 3], "%s", line);
}
