/* The "popgate import-uidls" command: old POP3 servers' UIDL lists merged into user states. */
#ifndef POPGATE_IMPORT_CMD_H
#define POPGATE_IMPORT_CMD_H

/* Largest UIDL list file read, in bytes (about a million messages in the text format). */
#define IMPORT_CMD_FILE_MAX (64u << 20)

/*
 * Runs the command; argv[0] is "import-uidls". Prints one report line per user on
 * stdout and errors on stderr. Returns the exit status: 0 when every user's list was
 * imported, 1 when some failed, 2 on a usage error.
 */
int import_cmd_main(int argc, char **argv);

#endif
