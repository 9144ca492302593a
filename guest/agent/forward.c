/* smolvm-agent forward: a host TCP port forwarded to a TCP port in the guest, like kubectl port-forward.
 *   forward --agent SOCK --listen HOST:PORT --port GUESTPORT [--guest-host ADDR] [--runas UID:GID] [--pid-file F]
 * One connection to the VM's agent socket (the proxy), opened at start while we may still reach it (it is root's, in
 * a root-only folder), then privileges are dropped. Every accepted client is one TCPCONNECT stream on that connection
 * (id base | n, n = 1..0xffffff), relayed both ways with the protocol's flow control: at most STDIN_WINDOW bytes of
 * the client's data in flight to the agent, at most FWD_OUTWIN bytes of the guest's data not yet written to the
 * client. Nothing blocks: the agent connection has a bounded output queue, and while it is over UP_OUT_HIGH no client
 * is read. Everything read from the agent side is checked: a stream whose frames break the protocol is reset (only
 * that client), a connection whose framing breaks is fatal (every client is reset and the forwarder exits 1). */
#define _GNU_SOURCE
#include "forward.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "launch.h"
#include "proto.h"

/* At most this many clients relayed at once (more wait in the listen backlog) */
#define MAX_CONNS 192
#define FWD_OUTWIN (1u << 20)
#define UP_IN_LIMIT (2 * (SMOL_HDR + SMOL_MAX_PAYLOAD))
#define UP_OUT_HIGH (4u << 20) /* stop reading clients (and accepting) while this much waits to go to the agent */
#define UP_OUT_HARD (8u << 20) /* stop reading the agent too (only a peer ignoring the windows gets here) */
#define GREET_MS 5000	       /* reach the agent socket and get its WELCOME within this */
#define START_MS 15000	       /* get STARTED within this (the agent's connect gives up at 5 s) */
#define LINGER_MS 10000	       /* after our FIN: wait this long for the client's before closing */
#define ID_MASK 0xffffffu
#define TOMBS 1024 /* ids given up on (SIGNAL sent) whose last frame has not come back yet: not reused meanwhile */

enum cstate { CS_STARTING, CS_OPEN, CS_LINGER };

struct conn {
	int tcp; /* -1: the slot is free */
	enum cstate st;
	uint32_t stream, outwin;
	struct bq tcp_out;
	uint64_t inflight; /* client bytes sent as STDIN and not yet acknowledged by the agent */
	uint64_t credit;   /* guest bytes written to the client and not yet acknowledged to the agent */
	int client_eof, exited, exit_code, fresh;
	long long deadline;
};

static struct conn conns[MAX_CONNS];
static int nconns;
static struct {
	const char *agent, *guest_host, *pidfile;
	uint32_t port;
} o;
static int up = -1;		 /* the one agent connection */
static uint32_t base;		 /* our slot's stream id base (0 on an agent's own socket) */
static uint32_t next_id = 1;	 /* low 24 bits of the next stream id to try */
static struct bq up_in, up_out;
static uint32_t tombs[TOMBS]; /* 0: empty */
static unsigned tomb_next;

static long long now_ms(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Bounded by the callers: STDIN only while up_out is below UP_OUT_HIGH, other frames are a few bytes and come at
 * most once per client event or per frame the agent sent (and it is not read above UP_OUT_HARD). */
static void queue(uint8_t type, uint32_t stream, const void *pl, size_t n) {
	uint8_t hdr[SMOL_HDR];
	frame_header(hdr, type, stream, n);
	if (bq_push(&up_out, hdr, SMOL_HDR, (size_t)-1 / 2) == 0 && n) bq_push(&up_out, pl, n, (size_t)-1 / 2);
}

static int tomb_find(uint32_t id) {
	for (int i = 0; i < TOMBS; i++)
		if (tombs[i] == id) return i;
	return -1;
}

static int id_in_use(uint32_t id) {
	for (int i = 0; i < MAX_CONNS; i++)
		if (conns[i].tcp >= 0 && conns[i].stream == id) return 1;
	return tomb_find(id) >= 0;
}

/* The next free stream id: n = 1..0xffffff round robin (0 is never used), skipping ids still in flight. */
static uint32_t alloc_id(void) {
	for (;;) { /* at most MAX_CONNS + TOMBS ids are taken: this ends */
		uint32_t id = base | next_id;
		next_id = next_id >= ID_MASK ? 1 : next_id + 1;
		if (!id_in_use(id)) return id;
	}
}

/* Is the stream still alive on the agent's side (no EXIT, no ERROR before STARTED seen)? */
static int stream_live(const struct conn *c) {
	return c->st != CS_LINGER && !c->exited;
}

/* End a client. reset: it sees a reset, not a clean end (the stream broke). A stream still alive in the agent is
 * closed with SIGNAL (the agent answers EXIT or ERROR; its id is not reused until then). */
static void conn_free(struct conn *c, int reset) {
	if (reset) {
		struct linger l = {1, 0};
		setsockopt(c->tcp, SOL_SOCKET, SO_LINGER, &l, sizeof l);
	}
	if (stream_live(c) && up >= 0) {
		uint8_t sig[4];
		put_be32(sig, SIGKILL);
		queue(T_SIGNAL, c->stream, sig, 4);
		tombs[tomb_next] = c->stream; /* full: the oldest goes (16M ids before it could come round again) */
		tomb_next = (tomb_next + 1) % TOMBS;
	}
	close(c->tcp);
	bq_free(&c->tcp_out);
	memset(c, 0, sizeof *c);
	c->tcp = -1;
	nconns--;
}

static void free_all(void) {
	for (int i = 0; i < MAX_CONNS; i++)
		if (conns[i].tcp >= 0) conn_free(&conns[i], conns[i].st != CS_LINGER);
}

static void send_tcpconnect(struct conn *c) {
	uint8_t req[64];
	size_t n = 0, hl = o.guest_host ? strlen(o.guest_host) : 0;
	req[n] = TC_PORT;
	put_be32(req + n + 1, 4);
	put_be32(req + n + 5, o.port);
	n += 9;
	req[n] = TC_OUTWIN;
	put_be32(req + n + 1, 4);
	put_be32(req + n + 5, FWD_OUTWIN);
	n += 9;
	if (hl) { /* an IPv4 literal, checked at start */
		req[n] = TC_HOST;
		put_be32(req + n + 1, (uint32_t)hl);
		memcpy(req + n + 5, o.guest_host, hl);
		n += 5 + hl;
	}
	queue(T_TCPCONNECT, c->stream, req, n);
}

static void accept_one(int lfd) {
	int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
	if (fd < 0) return;
	struct conn *c = NULL;
	for (int i = 0; i < MAX_CONNS && !c; i++)
		if (conns[i].tcp < 0) c = &conns[i];
	if (!c) { /* not polled when full; just in case */
		close(fd);
		return;
	}
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	nconns++;
	c->stream = alloc_id();
	c->tcp = fd;
	c->st = CS_STARTING;
	c->deadline = now_ms() + START_MS;
	send_tcpconnect(c);
}

static uint32_t field_u32(const uint8_t *pl, size_t n, uint8_t want, uint32_t dflt) {
	size_t off = 0;
	uint8_t tag;
	const uint8_t *v;
	size_t vl;
	while (field_next(pl, n, &off, &tag, &v, &vl) == 1)
		if (tag == want && vl == 4) return get_be32(v);
	return dflt;
}

/* One frame of a stream of ours; -1: the stream broke (or the guest refused): reset its client. */
static int stream_frame(struct conn *c, uint8_t type, const uint8_t *pl, size_t n) {
	switch (type) {
	case T_STARTED:
		if (c->st != CS_STARTING) return -1;
		c->outwin = field_u32(pl, n, ST_OUTWIN, 0);
		if (!c->outwin || c->outwin > FWD_OUTWIN) return -1; /* we could not bound what it sends */
		c->st = CS_OPEN;
		return 0;
	case T_STDOUT:
		/* the agent stops at the window (plus one read of at most a frame): more is a broken peer */
		if (c->st != CS_OPEN || bq_push(&c->tcp_out, pl, n, c->outwin + SMOL_MAX_PAYLOAD) < 0) return -1;
		c->fresh = 1;
		return 0;
	case T_WINDOW:
		if (n == 4) c->inflight -= get_be32(pl) < c->inflight ? get_be32(pl) : c->inflight;
		return 0;
	case T_EXIT:
		if (c->st != CS_OPEN || n != 8) return -1;
		c->exited = 1;
		c->exit_code = (int32_t)get_be32(pl);
		return 0;
	case T_ERROR: /* before STARTED: the guest port refused (or no such port), and the stream is over */
		if (c->st == CS_STARTING) c->exited = 1;
		return -1; /* after: the stream broke */
	}
	return 0;
}

static void upstream_frame(uint8_t type, uint32_t stream, const uint8_t *pl, size_t n) {
	if (stream == 0) return; /* channel frames (a repeated greeting): nothing for us */
	for (int i = 0; i < MAX_CONNS; i++) {
		struct conn *c = &conns[i];
		if (c->tcp < 0 || c->stream != stream) continue;
		if (c->st == CS_LINGER || c->exited) return; /* after EXIT nothing more is expected; ignore */
		if (stream_frame(c, type, pl, n) < 0) conn_free(c, 1);
		return;
	}
	int t = tomb_find(stream); /* a stream given up on: its last frame frees the id */
	if (t >= 0 && (type == T_EXIT || type == T_ERROR)) tombs[t] = 0;
}

/* Read the agent connection: 0 fine, -1 it closed (the VM stopped, the proxy went away), -2 its framing broke. */
static int upstream_read(void) {
	uint8_t buf[65536];
	ssize_t r = read(up, buf, sizeof buf);
	if (r < 0 && (errno == EAGAIN || errno == EINTR)) return 0;
	if (r <= 0) return -1;
	if (bq_push(&up_in, buf, (size_t)r, UP_IN_LIMIT) < 0) return -2; /* cannot happen: frames are parsed below */
	for (;;) {
		uint8_t type;
		uint32_t stream;
		const uint8_t *pl;
		size_t n;
		long f = frame_parse(up_in.buf + up_in.off, up_in.len, &type, &stream, &pl, &n);
		if (f == 0) return 0;
		if (f < 0) return -2;
		upstream_frame(type, stream, pl, n);
		bq_consume(&up_in, (size_t)f);
	}
}

static int flush_q(int fd, struct bq *q, size_t *wrote) {
	while (q->len) {
		ssize_t w = write(fd, q->buf + q->off, q->len);
		if (w < 0 && errno == EINTR) continue;
		if (w < 0 && errno == EAGAIN) return 0;
		if (w <= 0) return -1;
		bq_consume(q, (size_t)w);
		if (wrote) *wrote += (size_t)w;
	}
	return 0;
}

/* The client's bytes, as STDIN frames within the window; its EOF as an empty STDIN. */
static int client_read(struct conn *c) {
	static uint8_t buf[SMOL_MAX_PAYLOAD];
	/* a read of 0 bytes would look like EOF; and others may have filled the queue this round */
	if (c->inflight >= STDIN_WINDOW || up_out.len >= UP_OUT_HIGH) return 0;
	size_t room = STDIN_WINDOW - (size_t)c->inflight;
	ssize_t r = read(c->tcp, buf, room < sizeof buf ? room : sizeof buf);
	if (r < 0 && (errno == EAGAIN || errno == EINTR)) return 0;
	if (r < 0) return -1; /* reset: the stream is closed with SIGNAL */
	queue(T_STDIN, c->stream, buf, (size_t)r);
	if (r == 0) c->client_eof = 1;
	c->inflight += (uint64_t)r;
	return 0;
}

static int client_write(struct conn *c) {
	size_t wrote = 0;
	int r = flush_q(c->tcp, &c->tcp_out, &wrote);
	c->credit += wrote;
	if (c->credit && !c->exited && (c->credit >= c->outwin / 4 || !c->tcp_out.len)) {
		uint8_t b[4];
		put_be32(b, (uint32_t)c->credit);
		queue(T_WINDOW, c->stream, b, 4);
		c->credit = 0;
	}
	return r;
}

/* After EXIT, once the guest's data is written: a clean end passes the EOF on, a broken one resets. */
static void maybe_finish(struct conn *c) {
	if (c->tcp < 0 || !c->exited || c->tcp_out.len || c->st != CS_OPEN) return;
	if (c->exit_code != 0) {
		conn_free(c, 1);
		return;
	}
	shutdown(c->tcp, SHUT_WR);
	if (c->client_eof) {
		conn_free(c, 0);
		return;
	}
	c->st = CS_LINGER; /* closing now, with the client's data unread, would reset what we just sent */
	c->deadline = now_ms() + LINGER_MS;
}

static int linger_read(struct conn *c) {
	uint8_t buf[16384];
	ssize_t r = read(c->tcp, buf, sizeof buf);
	if (r < 0 && (errno == EAGAIN || errno == EINTR)) return 0;
	return r > 0 ? 0 : -1;
}

/* Connect to the agent socket and read its greeting (the proxy's WELCOME: our slot's id base; an agent's own socket
 * greets with HELLO: base 0). Returns the connected, non-blocking fd, or -1 with why in err. */
static int upstream_open(char *err, size_t errlen) {
	struct sockaddr_un a = {.sun_family = AF_UNIX};
	strcpy(a.sun_path, o.agent); /* length checked at start */
	long long deadline = now_ms() + GREET_MS;
	int fd;
	for (;;) {
		fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (fd < 0) {
			snprintf(err, errlen, "%s", strerror(errno));
			return -1;
		}
		if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0 || errno == EINPROGRESS) break;
		int e = errno;
		close(fd);
		if (e != EAGAIN || now_ms() >= deadline) { /* EAGAIN: its backlog is full, try again shortly */
			snprintf(err, errlen, "%s", strerror(e));
			return -1;
		}
		usleep(10000);
	}
	for (;;) {
		int left = (int)(deadline - now_ms());
		struct pollfd pf = {fd, POLLIN, 0};
		int pr = left > 0 ? poll(&pf, 1, left) : 0;
		if (pr < 0 && errno == EINTR) continue;
		if (pr <= 0) {
			snprintf(err, errlen, "no greeting within %d s", GREET_MS / 1000);
			break;
		}
		uint8_t buf[4096];
		ssize_t r = read(fd, buf, sizeof buf);
		if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
		if (r <= 0) {
			snprintf(err, errlen, "%s", r < 0 ? strerror(errno) : "it closed the connection");
			break;
		}
		if (bq_push(&up_in, buf, (size_t)r, UP_IN_LIMIT) < 0) {
			snprintf(err, errlen, "malformed greeting");
			break;
		}
		for (;;) {
			uint8_t type;
			uint32_t stream;
			const uint8_t *pl;
			size_t n;
			long f = frame_parse(up_in.buf + up_in.off, up_in.len, &type, &stream, &pl, &n);
			if (f == 0) break;
			if (f < 0) {
				snprintf(err, errlen, "malformed greeting");
				goto fail;
			}
			int greeted = 0;
			if (type == T_WELCOME) { /* the proxy: our stream ids carry our slot */
				base = field_u32(pl, n, 1, 0);
				if (!base || (base & ID_MASK)) {
					snprintf(err, errlen, "bad stream id base in its WELCOME");
					goto fail;
				}
				greeted = 1;
			} else if (type == T_HELLO) { /* an agent itself (serve --listen): any id but 0 */
				base = 0;
				greeted = 1;
			}
			bq_consume(&up_in, (size_t)f);
			if (greeted) return fd;
		}
	}
fail:
	close(fd);
	bq_free(&up_in);
	return -1;
}

static int parse_listen(const char *s, struct sockaddr_storage *ss, socklen_t *sl) {
	const char *colon = strrchr(s, ':');
	char host[64];
	if (!colon || (size_t)(colon - s) >= sizeof host) return -1;
	memcpy(host, s, (size_t)(colon - s));
	host[colon - s] = 0;
	char *end;
	unsigned long port = strtoul(colon + 1, &end, 10);
	if (!colon[1] || *end || port > 65535) return -1;
	size_t hl = strlen(host);
	if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']') {
		memmove(host, host + 1, hl - 2);
		host[hl - 2] = 0;
	}
	memset(ss, 0, sizeof *ss);
	struct sockaddr_in *v4 = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)ss;
	if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
		v4->sin_family = AF_INET;
		v4->sin_port = htons((uint16_t)port);
		*sl = sizeof *v4;
	} else if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
		v6->sin6_family = AF_INET6;
		v6->sin6_port = htons((uint16_t)port);
		*sl = sizeof *v6;
	} else {
		return -1;
	}
	return 0;
}

static void write_pidfile(const char *path) {
	char tmp[4200];
	snprintf(tmp, sizeof tmp, "%s.tmp", path);
	FILE *f = fopen(tmp, "we");
	if (!f) return;
	fprintf(f, "%d\n", (int)getpid());
	if (fclose(f) == 0) rename(tmp, path);
}

static int usage(void) {
	fprintf(stderr, "usage: smolvm-agent forward --agent SOCK --listen HOST:PORT --port GUESTPORT [--guest-host ADDR]\n"
			"                            [--runas UID:GID] [--pid-file F]\n");
	return 2;
}

/* The end: every client closed, the pid file removed. Stderr is /dev/null by now; the message is for a debugger. */
static int finish(int status, const char *why) {
	free_all();
	if (o.pidfile) unlink(o.pidfile);
	if (why) fprintf(stderr, "forward: %s\n", why);
	return status;
}

int forward_main(int argc, char **argv) {
	const char *listen_s = NULL, *port_s = NULL, *runas = NULL;
	for (int i = 2; i < argc; i += 2) {
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!v) return usage();
		if (!strcmp(argv[i], "--agent")) o.agent = v;
		else if (!strcmp(argv[i], "--listen")) listen_s = v;
		else if (!strcmp(argv[i], "--port")) port_s = v;
		else if (!strcmp(argv[i], "--guest-host")) o.guest_host = v;
		else if (!strcmp(argv[i], "--runas")) runas = v;
		else if (!strcmp(argv[i], "--pid-file")) o.pidfile = v;
		else return usage();
	}
	struct sockaddr_storage ss;
	socklen_t sl;
	struct in_addr gh;
	char *end;
	unsigned long u = 0, g = 0;
	if (!o.agent || !listen_s || !port_s) return usage();
	if (strlen(o.agent) >= sizeof((struct sockaddr_un *)0)->sun_path) {
		fprintf(stderr, "forward: agent socket path too long: %s\n", o.agent);
		return 2;
	}
	if (parse_listen(listen_s, &ss, &sl) < 0) {
		fprintf(stderr, "forward: --listen wants IP:PORT or [IPV6]:PORT, got %s\n", listen_s);
		return 2;
	}
	o.port = (uint32_t)strtoul(port_s, &end, 10);
	if (!*port_s || *end || o.port < 1 || o.port > 65535) {
		fprintf(stderr, "forward: --port wants 1-65535, got %s\n", port_s);
		return 2;
	}
	if (o.guest_host && (strlen(o.guest_host) >= INET_ADDRSTRLEN || inet_pton(AF_INET, o.guest_host, &gh) != 1)) {
		fprintf(stderr, "forward: --guest-host wants an IPv4 address, got %s\n", o.guest_host);
		return 2;
	}
	if (runas && sscanf(runas, "%lu:%lu", &u, &g) != 2) return usage();
	close_fds_except(NULL, 0); /* nothing of the caller's stays open in a long-lived daemon */
	signal(SIGPIPE, SIG_IGN);
	for (int i = 0; i < MAX_CONNS; i++) conns[i].tcp = -1;
	int lfd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1;
	if (lfd >= 0) setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (lfd >= 0 && ss.ss_family == AF_INET6) setsockopt(lfd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
	if (lfd < 0 || bind(lfd, (struct sockaddr *)&ss, sl) < 0 || listen(lfd, 128) < 0) {
		fprintf(stderr, "forward: cannot listen on %s: %s\n", listen_s, strerror(errno));
		return 1;
	}
	sigset_t mask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	int sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC); /* from here a SIGTERM waits for the loop */
	/* the agent socket while we can still reach it: only root may, and we may be about to stop being root */
	char err[160];
	up = upstream_open(err, sizeof err);
	if (up < 0) {
		fprintf(stderr, "forward: cannot reach the VM's agent at %s: %s\n", o.agent, err);
		return 1;
	}
	/* the pid file while we may still write where it goes; then the identity we serve as, before saying ready */
	if (o.pidfile) write_pidfile(o.pidfile);
	if (runas && (setgroups(0, NULL) < 0 || setgid((gid_t)g) < 0 || setuid((uid_t)u) < 0 || getuid() != (uid_t)u ||
		      geteuid() != (uid_t)u || getgid() != (gid_t)g || getegid() != (gid_t)g)) {
		fprintf(stderr, "forward: cannot drop privileges to %lu:%lu: %s\n", u, g, strerror(errno));
		if (o.pidfile) unlink(o.pidfile);
		return 1;
	}
	sl = sizeof ss;
	getsockname(lfd, (struct sockaddr *)&ss, &sl);
	unsigned bound = ntohs(ss.ss_family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
						      : ((struct sockaddr_in6 *)&ss)->sin6_port);
	printf("%u\n", bound);
	if (fflush(stdout) != 0) return 1;
	int nul = open("/dev/null", O_RDWR);
	if (nul < 0) return 1;
	dup2(nul, 0), dup2(nul, 1), dup2(nul, 2);
	if (nul > 2) close(nul);
	setsid();
	if (runas) prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
	prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
	static struct pollfd pf[3 + MAX_CONNS];
	static int who[3 + MAX_CONNS]; /* -1 signal, -2 listener, -3 the agent connection, i client of conn i */
	for (;;) {
		int n = 0, timeout = -1;
		long long now = now_ms();
		pf[n] = (struct pollfd){sfd, POLLIN, 0}, who[n++] = -1;
		if (nconns < MAX_CONNS && up_out.len < UP_OUT_HIGH) pf[n] = (struct pollfd){lfd, POLLIN, 0}, who[n++] = -2;
		short uev = (short)((up_out.len < UP_OUT_HARD ? POLLIN : 0) | (up_out.len ? POLLOUT : 0));
		pf[n] = (struct pollfd){up, uev, 0}, who[n++] = -3;
		for (int i = 0; i < MAX_CONNS; i++) {
			struct conn *c = &conns[i];
			if (c->tcp < 0) continue;
			if (c->st != CS_OPEN && now >= c->deadline) { /* never started, or the client never closed */
				conn_free(c, c->st != CS_LINGER);
				continue;
			}
			if (c->st != CS_OPEN && (timeout < 0 || c->deadline - now < timeout)) timeout = (int)(c->deadline - now);
			short tev = 0;
			if (c->st == CS_OPEN && !c->client_eof && !c->exited && c->inflight < STDIN_WINDOW &&
			    up_out.len < UP_OUT_HIGH)
				tev |= POLLIN;
			if (c->st == CS_OPEN && c->tcp_out.len) tev |= POLLOUT;
			if (c->st == CS_LINGER) tev |= POLLIN;
			if (tev) pf[n] = (struct pollfd){c->tcp, tev, 0}, who[n++] = i;
		}
		if (poll(pf, (nfds_t)n, timeout) < 0) {
			if (errno == EINTR) continue;
			return finish(1, "poll failed");
		}
		for (int k = 0; k < n; k++) {
			short re = pf[k].revents;
			if (!re) continue;
			if (who[k] == -1) {
				struct signalfd_siginfo si;
				if (read(sfd, &si, sizeof si) != sizeof si) continue;
				return finish(0, NULL);
			}
			if (who[k] == -2) {
				for (int a = 0; a < 16 && nconns < MAX_CONNS && up_out.len < UP_OUT_HIGH; a++) accept_one(lfd);
				continue;
			}
			if (who[k] == -3) {
				int r = (re & (POLLIN | POLLHUP | POLLERR)) ? upstream_read() : 0;
				if (r == -2) return finish(1, "the agent connection broke the protocol (malformed frame)");
				if (r < 0) return finish(0, "the VM's agent closed the connection (VM stopped?)");
				continue;
			}
			struct conn *c = &conns[who[k]];
			if (c->tcp != pf[k].fd) continue; /* freed while handling the agent's frames */
			if (c->st == CS_LINGER) {
				if (linger_read(c) < 0) conn_free(c, 0);
				continue;
			}
			if ((re & POLLERR) || ((re & POLLHUP) && !(re & POLLIN))) { /* reset */
				conn_free(c, 1);
				continue;
			}
			if (((re & POLLIN) && client_read(c) < 0) || ((re & POLLOUT) && client_write(c) < 0)) {
				conn_free(c, 1);
				continue;
			}
		}
		for (int i = 0; i < MAX_CONNS; i++) { /* write what came from the agent at once; end what ended */
			struct conn *c = &conns[i];
			if (c->tcp < 0) continue;
			if (c->fresh) {
				c->fresh = 0;
				if (c->tcp_out.len && client_write(c) < 0) {
					conn_free(c, 1);
					continue;
				}
			}
			maybe_finish(c);
		}
		if (up_out.len && flush_q(up, &up_out, NULL) < 0)
			return finish(0, "the VM's agent closed the connection (VM stopped?)");
	}
}
