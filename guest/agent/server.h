#ifndef SMOL_SERVER_H
#define SMOL_SERVER_H

/* How the server gets its channels. */
struct server_opts {
	int stdio;		/* serve one channel on fds 0/1 */
	const char *listen_unix; /* accept channels on this Unix socket */
	int vsock_port;		/* accept channels on AF_VSOCK, 0 = off */
	const char *vport_name; /* open the virtio-serial port with this name */
	int is_init;		/* PID 1: shutdown reboots the machine */
	char **base_env;	/* environment every command starts from */
};

int server_run(const struct server_opts *o);

#endif
