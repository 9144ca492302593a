#ifndef SMOL_PROXY_H
#define SMOL_PROXY_H
#include <stddef.h>
#include <sys/types.h>

struct proxy_opts {
	const char *upstream, *listen_path, *pidfile, *logfile;
	int daemonize, release_all;
	/* Firecracker's vsock: upstream is its Unix socket for host-initiated connections; the proxy asks for this guest
	 * port (CONNECT/OK), retrying until the guest listens or connect_timeout_ms passes. vsock 0: upstream is a plain
	 * stream socket (QEMU's chardev), connected before the proxy listens */
	unsigned long vsock_port;
	int vsock;
	long connect_timeout_ms;
	/* the VM's serial console: read from this socket, or this FIFO (the VMM's stdout, see launch --stdout-fifo), into
	 * a log capped at console_max bytes (newest half kept) */
	const char *console_sock, *console_fifo, *console_log;
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
