/* smolvm-agent: one static binary, three roles.
 *   (PID 1)                    guest init + exec server over virtio-serial / vsock
 *   serve --stdio | --listen P  exec server on the host, for protocol tests
 *   proxy --upstream U --listen L [--pidfile F] [--log F] [--daemon]   host-side multiplexer in front of a VM
 *   run --socket S -- ARGV...   one command through a VM's agent socket, bridging stdio (e.g. ssh ProxyCommand) */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "bridge.h"
#include "init.h"
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
		const char *u = arg(argc, argv, "--upstream"), *l = arg(argc, argv, "--listen");
		if (!u || !l) goto usage;
		return proxy_main(u, l, arg(argc, argv, "--pidfile"), arg(argc, argv, "--log"), flag(argc, argv, "--daemon"),
				  flag(argc, argv, "--release-all"));
	}
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
			"       smolvm-agent run --socket SOCK -- ARGV...\n");
	return 2;
}
