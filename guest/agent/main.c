/* smolvm-agent: one static binary, several roles.
 *   (PID 1)                    guest init + exec server over virtio-serial / vsock
 *   serve --stdio | --listen P  exec server on the host, for protocol tests
 *   proxy --upstream U [--vsock-port N] --listen L [--pidfile F] [--log F] [--daemon]   host-side multiplexer in
 *                               front of a VM (U: QEMU's chardev socket, or with --vsock-port Firecracker's vsock one)
 *   run --socket S -- ARGV...   one command through a VM's agent socket, bridging stdio (e.g. ssh ProxyCommand)
 *   forward --agent S --listen HOST:PORT --port P   a host TCP port relayed to a port in the guest
 *   launch ..., qmp ...         start a VMM; send QMP commands with descriptors */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bridge.h"
#include "forward.h"
#include "init.h"
#include "launch.h"
#include "proto.h"
#include "proxy.h"
#include "server.h"

extern char **environ;

static const char *arg(int argc, char **argv, const char *name) {
	for (int i = 1; i < argc - 1; i++)
		if (!strcmp(argv[i], name)) return argv[i + 1];
	return NULL;
}

static int flag(int argc, char **argv, const char *name) {
	for (int i = 1; i < argc; i++)
		if (!strcmp(argv[i], name)) return 1;
	return 0;
}

int main(int argc, char **argv) {
	if (getpid() == 1) return init_main();
	const char *mode = argc > 1 ? argv[1] : "";
	if (!strcmp(mode, "serve")) {
		struct server_opts o = {0};
		o.stdio = flag(argc, argv, "--stdio");
		o.listen_unix = arg(argc, argv, "--listen");
		o.base_env = environ;
		if (!o.stdio && !o.listen_unix) goto usage;
		return server_run(&o);
	}
	if (!strcmp(mode, "proxy")) {
		struct proxy_opts o = {0};
		o.upstream = arg(argc, argv, "--upstream");
		o.listen_path = arg(argc, argv, "--listen");
		if (!o.upstream || !o.listen_path) goto usage;
		o.pidfile = arg(argc, argv, "--pidfile");
		o.logfile = arg(argc, argv, "--log");
		o.daemonize = flag(argc, argv, "--daemon");
		o.release_all = flag(argc, argv, "--release-all");
		const char *vp = arg(argc, argv, "--vsock-port");
		if (vp) {
			char *end;
			errno = 0;
			unsigned long long port = strtoull(vp, &end, 10);
			if (!*vp || *end || *vp == '-' || errno || port > 0xffffffffull) goto usage;
			o.vsock = 1;
			o.vsock_port = (unsigned long)port;
		}
		const char *ct = arg(argc, argv, "--connect-timeout");
		o.connect_timeout_ms = ct ? strtol(ct, NULL, 10) : 60000;
		if (o.connect_timeout_ms <= 0) goto usage;
		o.console_sock = arg(argc, argv, "--console");
		o.console_fifo = arg(argc, argv, "--console-fifo");
		if (o.console_sock && o.console_fifo) goto usage;
		o.console_log = arg(argc, argv, "--console-log");
		const char *cs = arg(argc, argv, "--clock-sync");
		o.clock_sync_ms = cs ? strtol(cs, NULL, 10) : 30000;
		const char *max = arg(argc, argv, "--console-max");
		o.console_max = max ? (size_t)strtoull(max, NULL, 10) : 0;
		o.events = arg(argc, argv, "--events");
		o.exit_file = arg(argc, argv, "--exit-file");
		const char *runas = arg(argc, argv, "--runas");
		if (runas) {
			unsigned long u, g;
			if (sscanf(runas, "%lu:%lu", &u, &g) != 2) goto usage;
			o.runas = 1;
			o.uid = (uid_t)u;
			o.gid = (gid_t)g;
		}
		return proxy_main(&o);
	}
	if (!strcmp(mode, "launch")) return launch_main(argc, argv);
	if (!strcmp(mode, "qmp")) return qmpfd_main(argc, argv);
	if (!strcmp(mode, "forward")) return forward_main(argc, argv);
	if (!strcmp(mode, "run")) {
		const char *sock = arg(argc, argv, "--socket");
		int i = 2;
		while (i < argc && strcmp(argv[i], "--")) i++;
		if (!sock || i + 1 >= argc) goto usage;
		return bridge_main(sock, argv + i + 1);
	}
	if (!strcmp(mode, "--version")) {
		printf("smolvm-agent protocol %d\n", SMOL_PROTO_VERSION);
		return 0;
	}
usage:
	fprintf(stderr, "usage: smolvm-agent serve --stdio | serve --listen PATH\n"
			"       smolvm-agent proxy --upstream SOCK --listen SOCK [--pidfile F] [--log F] [--daemon] [--release-all]\n"
			"                          [--vsock-port N [--connect-timeout MS (default 60000)]]\n"
			"                          [(--console SOCK | --console-fifo FIFO) --console-log F [--console-max BYTES]]\n"
			"                          [--events QMP] [--exit-file F]\n"
			"                          [--clock-sync MS (default 30000; 0: never)]\n"
			"                          [--runas UID:GID]\n"
			"       smolvm-agent launch --log F (--qmp SOCK | --ready-connect SOCK) [--chdir DIR] [--stdout-fifo PATH]\n"
			"                           [--pidfile F] [--keep-fd N]... [--tap NAME:FD]... [--cgroup DIR]... [--isolate]\n"
			"                           -- PROGRAM...   (launch with no options lists them all)\n"
			"       smolvm-agent qmp --socket SOCK [fd=N:]JSON...\n"
			"       smolvm-agent run --socket SOCK -- ARGV...\n"
			"       smolvm-agent forward --agent SOCK --listen HOST:PORT --port GUESTPORT [--guest-host ADDR]\n"
			"                            [--runas UID:GID] [--pid-file F]\n");
	return 2;
}
