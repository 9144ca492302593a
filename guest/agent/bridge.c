/* `smolvm-agent run --socket SOCK -- argv...`: run one command in a VM through its agent socket, bridging this
 * process's stdin/stdout/stderr and exiting with the command's code. Small and quick to start, so it works as an
 * ssh ProxyCommand or in shell pipelines. */
#define _GNU_SOURCE
#include "bridge.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "proto.h"

static int read_frame(int fd, struct bq *in, uint8_t *type, uint32_t *stream, const uint8_t **pl, size_t *n, long *flen) {
	for (;;) {
		long f = frame_parse(in->buf ? in->buf + in->off : (const uint8_t *)"", in->len, type, stream, pl, n);
		if (f < 0) return -1;
		if (f > 0) {
			*flen = f;
			return 1;
		}
		uint8_t buf[65536];
		ssize_t r = read(fd, buf, sizeof buf);
		if (r < 0 && errno == EINTR) continue;
		if (r <= 0) return 0;
		if (bq_push(in, buf, (size_t)r, 4 * (SMOL_HDR + SMOL_MAX_PAYLOAD)) < 0) return -1;
	}
}

static int send_frame(int fd, uint8_t type, uint32_t stream, const void *pl, size_t n) {
	uint8_t hdr[SMOL_HDR];
	frame_header(hdr, type, stream, n);
	return write_all(fd, hdr, SMOL_HDR) < 0 || (n && write_all(fd, pl, n) < 0) ? -1 : 0;
}

int bridge_main(const char *sock, char **argv) {
	signal(SIGPIPE, SIG_IGN);
	struct sockaddr_un a = {.sun_family = AF_UNIX};
	if (strlen(sock) >= sizeof a.sun_path) return 125;
	strcpy(a.sun_path, sock);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
		fprintf(stderr, "smolvm-agent run: cannot connect to %s: %s\n", sock, strerror(errno));
		return 125;
	}
	struct bq in = {0};
	uint8_t type;
	uint32_t stream;
	const uint8_t *pl;
	size_t n;
	long flen;
	if (read_frame(fd, &in, &type, &stream, &pl, &n, &flen) != 1 || type != T_WELCOME || n < 9) return 125;
	uint32_t id = get_be32(pl + 5) | 1;
	bq_consume(&in, (size_t)flen);
	/* EXEC: argv fields + stdin flag */
	uint8_t req[SMOL_MAX_PAYLOAD];
	size_t o = 0;
	for (char **p = argv; *p; p++) {
		size_t l = strlen(*p);
		if (o + 5 + l > sizeof req - 6) return 125;
		req[o] = F_ARG;
		put_be32(req + o + 1, (uint32_t)l);
		memcpy(req + o + 5, *p, l);
		o += 5 + l;
	}
	req[o] = F_STDIN;
	put_be32(req + o + 1, 1);
	req[o + 5] = 1;
	o += 6;
	if (send_frame(fd, T_EXEC, id, req, o) < 0) return 125;
	int stdin_open = 1;
	uint64_t inflight = 0; /* stdin bytes sent and not yet acknowledged with WINDOW */
	for (;;) {
		int want_stdin = stdin_open && inflight < STDIN_WINDOW;
		struct pollfd pf[2] = {{fd, POLLIN, 0}, {0, want_stdin ? POLLIN : 0, 0}};
		if (in.len) pf[0].revents = POLLIN; /* frames already buffered */
		else if (poll(pf, 2, -1) < 0 && errno != EINTR) return 125;
		if (want_stdin && pf[1].revents) {
			static uint8_t buf[SMOL_MAX_PAYLOAD];
			ssize_t r = read(0, buf, sizeof buf);
			if (r > 0) {
				send_frame(fd, T_STDIN, id, buf, (size_t)r);
				inflight += (uint64_t)r;
			}
			else if (r == 0 || errno != EINTR) {
				send_frame(fd, T_STDIN, id, NULL, 0);
				stdin_open = 0;
			}
		}
		if (pf[0].revents || in.len) {
			int r = read_frame(fd, &in, &type, &stream, &pl, &n, &flen);
			if (r <= 0) return 125;
			if (stream == id) {
				if (type == T_WINDOW && n == 4) {
					uint32_t got = get_be32(pl);
					inflight = got > inflight ? 0 : inflight - got;
				} else if (type == T_STDOUT) write_all(1, pl, n);
				else if (type == T_STDERR) write_all(2, pl, n);
				else if (type == T_EXIT && n == 8) {
					int32_t code = (int32_t)get_be32(pl), sig = (int32_t)get_be32(pl + 4);
					return code >= 0 ? code : 128 + sig;
				} else if (type == T_ERROR) {
					fprintf(stderr, "smolvm-agent run: the agent refused the command\n");
					return 125;
				}
			}
			bq_consume(&in, (size_t)flen);
		}
	}
}
