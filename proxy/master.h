/* The master process: binds listeners, runs and restarts workers, reloads, shuts down. */
#ifndef POPGATE_MASTER_H
#define POPGATE_MASTER_H

#include "config.h"

/*
 * Runs popgate in the foreground with cfg (loaded from path; the master owns it
 * from now on): binds every listener and the admin listener, forks
 * cfg->workers workers (each drops to cfg->run_user and serves sessions),
 * restarts a worker that dies, reloads on SIGHUP (a valid new config gets new
 * workers, the old ones finish their sessions; an invalid one is logged and
 * ignored), and on SIGTERM/SIGINT stops accepting and gives sessions
 * cfg->shutdown_timeout seconds. Returns the process exit status.
 */
int master_run(const char *path, struct config *cfg);

#endif
