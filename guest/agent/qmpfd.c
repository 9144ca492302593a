/* smolvm-agent qmp: send QMP commands, some with a file descriptor attached (SCM_RIGHTS).
 *   smolvm-agent qmp --socket SOCK [fd=N:]JSON...
 * Each JSON command is sent in turn on one connection, with fd N attached when it is written `fd=N:{...}`; each
 * reply is printed on its own line. Exit status 0 when every reply is a success, 1 when one is an error (the
 * remaining commands are not sent), 2 on usage or connection errors.
 * Why: a VMM that has dropped its privileges can no longer open files by path, so the host opens them (a migration
 * target or source, a new disk layer) and hands over the descriptor; Node cannot send descriptors over a socket. */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "launch.h"
#include "proto.h"

static char buf[1 << 20];
static size_t have;

/* Next line from the monitor into `out` (NUL-terminated, newline dropped); -1 on EOF, timeout or overflow. */
static int read_line(int fd, char **out) {
	static size_t consumed;
	if (consumed) {
		memmove(buf, buf + consumed, have - consumed);
		have -= consumed;
		consumed = 0;
	}
	for (;;) {
		char *nl = memchr(buf, '\n', have);
		if (nl) {
			*nl = 0;
			*out = buf;
			consumed = (size_t)(nl - buf) + 1;
			return 0;
		}
		if (have >= sizeof buf - 1) return -1;
		struct pollfd pf = {fd, POLLIN, 0};
		if (poll(&pf, 1, 60000) <= 0) return -1;
		ssize_t r = read(fd, buf + have, sizeof buf - 1 - have);
		if (r <= 0) return -1;
		have += (size_t)r;
	}
}

/* The reply to the command just sent (events are skipped). */
static int reply(int fd, char **line) {
	for (;;) {
		if (read_line(fd, line) < 0) return -1;
		if (!strncmp(*line, "{\"return\"", 9) || !strncmp(*line, "{\"error\"", 8)) return 0;
	}
}

static int send_cmd(int fd, const char *json, int pass_fd) {
	size_t n = strlen(json);
	char *msg = malloc(n + 2);
	if (!msg) return -1;
	memcpy(msg, json, n);
	msg[n] = '\n';
	struct iovec iov = {msg, n + 1};
	union {
		char b[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} u;
	struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
	if (pass_fd >= 0) {
		mh.msg_control = u.b;
		mh.msg_controllen = sizeof u.b;
		struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &pass_fd, sizeof(int));
	}
	ssize_t w = sendmsg(fd, &mh, MSG_NOSIGNAL);
	int r = w == (ssize_t)(n + 1) ? 0 : w < 0 ? -1 : write_all(fd, msg + w, n + 1 - (size_t)w);
	free(msg);
	return r;
}

int qmpfd_main(int argc, char **argv) {
	if (argc < 4 || strcmp(argv[2], "--socket")) {
		fprintf(stderr, "usage: smolvm-agent qmp --socket SOCK [fd=N:]JSON...\n");
		return 2;
	}
	struct sockaddr_un a = {.sun_family = AF_UNIX};
	if (strlen(argv[3]) >= sizeof a.sun_path) return 2;
	strcpy(a.sun_path, argv[3]);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
		fprintf(stderr, "qmp: cannot connect to %s: %s\n", argv[3], strerror(errno));
		return 2;
	}
	char *line;
	if (read_line(fd, &line) < 0 || !strstr(line, "\"QMP\"")) {
		fprintf(stderr, "qmp: no greeting from %s\n", argv[3]);
		return 2;
	}
	if (send_cmd(fd, "{\"execute\":\"qmp_capabilities\"}", -1) < 0 || reply(fd, &line) < 0 ||
	    strncmp(line, "{\"return\"", 9)) {
		fprintf(stderr, "qmp: capabilities negotiation failed\n");
		return 2;
	}
	for (int i = 4; i < argc; i++) {
		const char *json = argv[i];
		int pass = -1;
		if (!strncmp(json, "fd=", 3)) {
			char *end;
			pass = (int)strtol(json + 3, &end, 10);
			if (*end != ':') return 2;
			json = end + 1;
		}
		if (send_cmd(fd, json, pass) < 0 || reply(fd, &line) < 0) {
			fprintf(stderr, "qmp: the monitor closed or did not answer\n");
			return 2;
		}
		printf("%s\n", line);
		fflush(stdout);
		if (!strncmp(line, "{\"error\"", 8)) return 1;
	}
	close(fd);
	return 0;
}
