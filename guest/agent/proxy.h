#ifndef SMOL_PROXY_H
#define SMOL_PROXY_H
#include <stddef.h>
#include <sys/types.h>

struct proxy_opts {
	const char *upstream, *listen_path, *pidfile, *logfile;
	int daemonize, release_all;
	/* the VM's serial console: read from this socket into a log capped at console_max bytes (newest half kept) */
	const char *console_sock, *console_log;
	size_t console_max;
	/* a QMP monitor to watch for shutdown and panic events; why the VM ended is written to exit_file */
	const char *events, *exit_file;
	/* set the guest's clock to the host's this often (ms; 0: never), see clock_tick() */
	long clock_sync_ms;
	/* after everything is open: drop to this uid/gid (when started as root) */
	int runas;
	uid_t uid;
	gid_t gid;
};

int proxy_main(const struct proxy_opts *o);
#endif
