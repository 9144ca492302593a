/* TCPCONNECT: a TCP stream from the host to a port in the guest (port forwarding). It is a stream like a command's:
 * STDIN frames are written to the socket (same stdin window and WINDOW acknowledgements), what the socket gives is
 * sent as STDOUT (same output window), and EXIT ends it. The socket is the stream's `out`; its `in` is a dup of the
 * socket, so closing stdin (an empty STDIN) shuts down the write side only. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "server_int.h"

#define CONNECT_TIMEOUT_MS 5000

static int tcp_open;

static void connect_error(struct proc *p, int e, const char *what) {
	char msg[160];
	snprintf(msg, sizeof msg, "%s %s: %s", what, p->cmd ? p->cmd : "?", strerror(e));
	send_error(p->chan, p->stream, (uint32_t)e, msg);
	tcp_drop(p);
}

static void started(struct proc *p) {
	struct fbuf fb = {0};
	p->connecting = 0;
	set_out_window(p, p->out_window, &fb);
	chan_send(p->chan, T_STARTED, p->stream, fb.b, fb.n);
	flush_stdin(p); /* what the host sent early, or an early end of its input */
}

void do_tcpconnect(int c, uint32_t stream, const uint8_t *pl, size_t n) {
	size_t off = 0;
	uint8_t tag;
	const uint8_t *v;
	size_t vl;
	int r;
	uint32_t port = 0, outwin = 0;
	struct in_addr host = {htonl(INADDR_LOOPBACK)};
	while ((r = field_next(pl, n, &off, &tag, &v, &vl)) == 1) {
		if (tag == TC_PORT && vl == 4) port = get_be32(v);
		else if (tag == TC_OUTWIN && vl == 4) outwin = get_be32(v);
		else if (tag == TC_HOST) {
			char s[INET_ADDRSTRLEN];
			if (vl == 0 || vl >= sizeof s || memchr(v, 0, vl)) r = -1;
			else {
				memcpy(s, v, vl);
				s[vl] = 0;
				if (inet_pton(AF_INET, s, &host) != 1) r = -1;
			}
			if (r < 0) break;
		}
	}
	if (r < 0) {
		send_error(c, stream, EINVAL, "malformed TCP connect request (HOST must be an IPv4 address)");
		return;
	}
	if (port < 1 || port > 65535) {
		send_error(c, stream, EINVAL, "TCP connect: port must be 1-65535");
		return;
	}
	if (tcp_open >= MAX_TCP) {
		send_error(c, stream, EAGAIN, "too many TCP streams");
		return;
	}
	struct proc *p = new_proc(c, stream, K_TCP);
	if (!p) return;
	tcp_open++;
	char a[INET_ADDRSTRLEN], desc[32];
	inet_ntop(AF_INET, &host, a, sizeof a);
	snprintf(desc, sizeof desc, "%s:%u", a, (unsigned)port);
	p->cmd = strdup(desc);
	p->out_window = outwin; /* applied (clamped) in STARTED */
	p->out = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (p->out < 0) {
		connect_error(p, errno, "socket");
		return;
	}
	p->in = fcntl(p->out, F_DUPFD_CLOEXEC, 0);
	if (p->in < 0) {
		connect_error(p, errno, "socket");
		return;
	}
	int one = 1;
	setsockopt(p->out, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* a relay: the sender already batched */
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr = host};
	if (connect(p->out, (struct sockaddr *)&sa, sizeof sa) == 0) {
		started(p);
		return;
	}
	if (errno != EINPROGRESS && errno != EINTR) {
		connect_error(p, errno, "connect");
		return;
	}
	p->connecting = 1;
	p->connect_deadline = now_ms() + CONNECT_TIMEOUT_MS;
}

void tcp_connected(struct proc *p) {
	int e = 0;
	socklen_t el = sizeof e;
	if (getsockopt(p->out, SOL_SOCKET, SO_ERROR, &e, &el) < 0) e = errno;
	if (e == EINPROGRESS || e == EALREADY) return;
	if (e) connect_error(p, e, "connect");
	else started(p);
}

int tcp_check_deadlines(long long now) {
	long long next = -1;
	for (int i = 0; i < MAX_PROCS; i++) {
		struct proc *p = &procs[i];
		if (!p->used || p->kind != K_TCP || !p->connecting) continue;
		if (now >= p->connect_deadline) connect_error(p, ETIMEDOUT, "connect");
		else if (next < 0 || p->connect_deadline - now < next) next = p->connect_deadline - now;
	}
	return (int)next;
}

void tcp_drop(struct proc *p) {
	if (p->out >= 0) close(p->out);
	if (p->in >= 0) close(p->in);
	p->out = p->in = -1;
	stdin_discard(p);
	tcp_open--;
	free_proc(p);
}

void tcp_end(struct proc *p, int32_t code, int32_t sig) {
	uint8_t ex[8];
	put_be32(ex, (uint32_t)code);
	put_be32(ex + 4, (uint32_t)sig);
	chan_send(p->chan, T_EXIT, p->stream, ex, 8);
	tcp_drop(p);
}

/* SIGNAL: the host gave up on the stream. The socket is closed (a reset if data was left unread). */
void tcp_signal(struct proc *p, int sig) {
	if (p->connecting) {
		send_error(p->chan, p->stream, ECANCELED, "connect cancelled by the host");
		tcp_drop(p);
		return;
	}
	tcp_end(p, -1, sig);
}
