/* Host-side multiplexer: one upstream channel to the guest agent (QEMU's virtio-serial chardev socket accepts a
 * single client), many local clients on a 0600 Unix socket. Each client gets a slot; its stream ids must carry the
 * slot in their top 8 bits, which is how replies are routed back. A client that goes away has its streams released.
 *
 * Under Firecracker (--vsock-port N) the upstream is a vsock stream: Firecracker's Unix socket for host-initiated
 * connections, where each connection asks for a guest port (`CONNECT N\n`, answered `OK <host port>\n`). Unlike
 * QEMU's chardev, which exists from the VMM's start and buffers until the guest opens its port, that connection can
 * only be made once the guest agent listens, late in the guest's boot. So the proxy listens (and daemonizes) first,
 * and connects from its main loop, retrying, while clients' frames wait in up_out (see vsock_attempt()). */
#define _GNU_SOURCE
#include "proxy.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "launch.h"
#include "proto.h"

#define SLOTS 256
#define CLIENT_HIGH (4u << 20)       /* above this, stop reading the guest until the client catches up */
#define CLIENT_OUT_LIMIT (16u << 20) /* hard cap (never reached while backpressure works) */
#define STALL_MS 30000               /* a client above CLIENT_HIGH that drains nothing this long is dropped */
#define UP_OUT_LIMIT (4u << 20)      /* stop reading clients while this much waits for the guest */
#define IN_LIMIT (2 * (SMOL_HDR + SMOL_MAX_PAYLOAD))

struct client {
	int fd; /* -1 when free */
	struct bq in, out;
	long long stalled_since; /* ms; 0 when below CLIENT_HIGH */
};

static long long now_ms(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static struct client cl[SLOTS];
static int up = -1; /* -1 until connected (vsock mode only: otherwise it is connected before the loop) */
static struct bq up_in, up_out;
static unsigned next_slot = 1;

static int connect_unix(const char *path) {
	struct sockaddr_un a = {.sun_family = AF_UNIX};
	if (strlen(path) >= sizeof a.sun_path) return -1;
	strcpy(a.sun_path, path);
	for (int i = 0; i < 500; i++) {
		int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0) return fd;
		close(fd);
		usleep(10000);
	}
	return -1;
}

static void queue_frame(struct bq *q, uint8_t type, uint32_t stream, const void *pl, size_t n, size_t limit) {
	uint8_t hdr[SMOL_HDR];
	frame_header(hdr, type, stream, n);
	if (bq_push(q, hdr, SMOL_HDR, limit) == 0) bq_push(q, pl, n, limit + n);
}

static void drop_client(int s) {
	close(cl[s].fd);
	cl[s].fd = -1;
	cl[s].stalled_since = 0;
	bq_free(&cl[s].in);
	bq_free(&cl[s].out);
	uint8_t r[8];
	put_be32(r, (uint32_t)s << 24);
	put_be32(r + 4, ((uint32_t)s << 24) | 0xffffffu);
	queue_frame(&up_out, T_RELEASE, (uint32_t)s << 24, r, 8, (size_t)-1 / 2);
}

static void accept_client(int lfd) {
	int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
	if (fd < 0) return;
	for (unsigned i = 0; i < SLOTS - 1; i++) {
		unsigned s = next_slot;
		next_slot = next_slot % (SLOTS - 1) + 1; /* round robin over 1..255: late frames miss new owners */
		if (cl[s].fd >= 0) continue;
		cl[s].fd = fd;
		uint8_t w[18];
		w[0] = 1; /* base */
		put_be32(w + 1, 4);
		put_be32(w + 5, (uint32_t)s << 24);
		w[9] = 2; /* version */
		put_be32(w + 10, 4);
		put_be32(w + 14, SMOL_PROTO_VERSION);
		queue_frame(&cl[s].out, T_WELCOME, 0, w, sizeof w, CLIENT_OUT_LIMIT);
		return;
	}
	close(fd); /* full */
}

/* Move whole frames from a client to the upstream queue. */
static void client_read(int s) {
	uint8_t buf[65536];
	ssize_t r = read(cl[s].fd, buf, sizeof buf);
	if (r < 0 && (errno == EAGAIN || errno == EINTR)) return;
	if (r <= 0 || bq_push(&cl[s].in, buf, (size_t)r, IN_LIMIT) < 0) {
		drop_client(s);
		return;
	}
	for (;;) {
		uint8_t type;
		uint32_t stream;
		const uint8_t *pl;
		size_t n;
		long f = frame_parse(cl[s].in.buf + cl[s].in.off, cl[s].in.len, &type, &stream, &pl, &n);
		if (f == 0) return;
		if (f < 0 || stream >> 24 != (uint32_t)s || type == T_RELEASE) {
			logmsg("proxy: client %d broke the protocol; dropped", s);
			drop_client(s);
			return;
		}
		bq_push(&up_out, cl[s].in.buf + cl[s].in.off, (size_t)f, (size_t)-1 / 2);
		bq_consume(&cl[s].in, (size_t)f);
	}
}

/* Route whole frames from the guest to their clients. Returns -1 when the channel closed (the VM is gone), -2
 * when the guest broke the framing. */
static int upstream_route(void);
static int upstream_read(void) {
	uint8_t buf[65536];
	ssize_t r = read(up, buf, sizeof buf);
	if (r < 0 && (errno == EAGAIN || errno == EINTR)) return 0;
	if (r <= 0) return -1;
	if (bq_push(&up_in, buf, (size_t)r, IN_LIMIT) < 0) return -2;
	return upstream_route();
}

/* Route the whole frames in up_in; -2 when the guest broke the framing. */
static int upstream_route(void) {
	for (;;) {
		uint8_t type;
		uint32_t stream;
		const uint8_t *pl;
		size_t n;
		long f = frame_parse(up_in.buf + up_in.off, up_in.len, &type, &stream, &pl, &n);
		if (f == 0) return 0;
		if (f < 0) {
			logmsg("proxy: guest sent a malformed frame");
			return -2;
		}
		unsigned s = stream >> 24;
		if (s > 0 && cl[s].fd >= 0) {
			if (bq_push(&cl[s].out, up_in.buf + up_in.off, (size_t)f, CLIENT_OUT_LIMIT) < 0) {
				logmsg("proxy: client %u is not reading; dropped", s);
				drop_client((int)s);
			}
		}
		bq_consume(&up_in, (size_t)f);
	}
}

/* ---- Firecracker's vsock: one host-initiated connection to the guest agent's port. Firecracker answers a CONNECT
 * only once something in the guest accepts on that port; until then (the guest is booting) it closes the connection
 * without a word. So: try, and again every VSOCK_RETRY_MS, until connect_timeout_ms after the start. Each attempt
 * blocks the loop for at most VSOCK_ANSWER_MS (Firecracker answers at once, either way); clients are welcomed
 * meanwhile and their frames queue in up_out (bounded by UP_OUT_LIMIT like any backlog). The answer line comes
 * from Firecracker, not the guest, but the bytes after it are the guest's: kept, and parsed like any. ---- */
#define VSOCK_LINE_MAX 64   /* the answer line, newline included ("OK 4294967295\n" is 14 bytes) */
#define VSOCK_RETRY_MS 20
#define VSOCK_ANSWER_MS 200
static long long up_deadline, up_next_try;
static char vsock_why[128]; /* why the last attempt failed: said when the proxy gives up */
static int vsock_gone;      /* the last attempt found no listener at all: the VMM is gone */
/* The vsock socket as the proxy reaches it after dropping privileges: /proc/self/fd/N of an O_PATH descriptor
 * opened before (the run folder is SmolVM's alone; the socket itself is the VM identity's). Empty: by its path. */
static char up_via[32];
static int up_connected_once;

/* Is `s` (n bytes, no newline) `OK <host port>`, a port of at most 32 bits? */
static int vsock_ok_line(const char *s, size_t n) {
	if (n < 4 || n > 3 + 10 || memcmp(s, "OK ", 3)) return 0;
	unsigned long long v = 0;
	for (size_t k = 3; k < n; k++) {
		if (s[k] < '0' || s[k] > '9') return 0;
		v = v * 10 + (unsigned)(s[k] - '0');
	}
	return v <= 0xffffffffull;
}

/* One attempt: the connected (non-blocking) socket, with the bytes past the answer line in up_in; or -1, vsock_why
 * saying why. */
static int vsock_attempt(const char *path, unsigned long port) {
	struct sockaddr_un a = {.sun_family = AF_UNIX};
	strcpy(a.sun_path, up_via[0] ? up_via : path); /* length checked at the start */
	vsock_gone = 0;
	/* non-blocking: a connect that would wait (a full backlog) is a failed attempt, not a stalled loop */
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
		vsock_gone = errno == ECONNREFUSED || errno == ENOENT;
		snprintf(vsock_why, sizeof vsock_why, "cannot connect to %s: %s", path, strerror(errno));
		if (fd >= 0) close(fd);
		return -1;
	}
	char req[32];
	int qn = snprintf(req, sizeof req, "CONNECT %lu\n", port);
	if (write(fd, req, (size_t)qn) != qn) { /* a fresh socket's buffer takes 20 bytes, or it is broken */
		snprintf(vsock_why, sizeof vsock_why, "cannot send CONNECT: %s", strerror(errno));
		close(fd);
		return -1;
	}
	char buf[4096]; /* more than the line may come in one read: the rest is the guest's */
	size_t got = 0;
	char *nl = NULL;
	long long deadline = now_ms() + VSOCK_ANSWER_MS;
	while (!nl) {
		int left = (int)(deadline - now_ms());
		struct pollfd pf = {fd, POLLIN, 0};
		if (left <= 0 || poll(&pf, 1, left) <= 0) {
			snprintf(vsock_why, sizeof vsock_why, "no answer within %d ms", VSOCK_ANSWER_MS);
			goto fail;
		}
		ssize_t r = read(fd, buf + got, sizeof buf - got);
		if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
		if (r <= 0) { /* the usual answer while the guest boots: nothing listens on the port yet */
			snprintf(vsock_why, sizeof vsock_why, "closed without an answer (nothing listens on port %lu yet)", port);
			goto fail;
		}
		got += (size_t)r;
		nl = memchr(buf, '\n', got < VSOCK_LINE_MAX ? got : VSOCK_LINE_MAX);
		if (!nl && got >= VSOCK_LINE_MAX) {
			snprintf(vsock_why, sizeof vsock_why, "no end of line in the first %d bytes", VSOCK_LINE_MAX);
			goto fail;
		}
	}
	size_t line = (size_t)(nl - buf) + 1;
	if (!vsock_ok_line(buf, line - 1)) {
		char shown[VSOCK_LINE_MAX + 1];
		for (size_t k = 0; k + 1 < line; k++) shown[k] = buf[k] >= 0x20 && buf[k] < 0x7f && buf[k] != '"' ? buf[k] : '?';
		shown[line - 1] = 0;
		snprintf(vsock_why, sizeof vsock_why, "answered \"%s\"", shown);
		goto fail;
	}
	if (got > line && bq_push(&up_in, buf + line, got - line, IN_LIMIT) < 0) { /* cannot happen: < IN_LIMIT */
		snprintf(vsock_why, sizeof vsock_why, "out of memory");
		goto fail;
	}
	return fd;
fail:
	close(fd);
	return -1;
}

/* The vsock connection broke while the VMM runs on: Firecracker resets every vsock connection when it takes a
 * snapshot (and a restored guest resets the ones it had), so this is how a snapshot of a running VM looks from here.
 * The guest has dropped the channel and what ran on it (as when a client goes away), so every client's streams are
 * dead: their connections are closed (the SDK reconnects and says so to calls in flight), and the proxy connects
 * anew. Returns 0, or -1 when the connection cannot be made again (the VMM is gone). */
static long connect_timeout;
static int vsock_lost(void) {
	close(up);
	up = -1;
	bq_free(&up_in);
	bq_free(&up_out);
	for (int s = 1; s < SLOTS; s++) {
		if (cl[s].fd < 0) continue;
		close(cl[s].fd);
		cl[s].fd = -1;
		cl[s].stalled_since = 0;
		bq_free(&cl[s].in);
		bq_free(&cl[s].out);
	}
	up_deadline = now_ms() + connect_timeout;
	up_next_try = 0;
	logmsg("proxy: the vsock connection was reset (a snapshot?); connecting again");
	return 0;
}

/* ---- the guest's clock: a guest clock drifts (under TCG ~0.3 s a minute), so the proxy, which runs as long as the
 * VM does, sets it to the host's every clock_sync_ms, with the SYNC operation a restore uses (S_TIME), on stream ids
 * of slot 0, which no client has (the agent's answers to them are dropped). Sent only when nothing else waits for
 * the guest, so the time it carries is the time it leaves. ---- */
static long long next_clock_sync;
static uint32_t clock_stream;

static void clock_tick(long interval_ms) {
	if (interval_ms <= 0) return;
	long long now = now_ms();
	if (!next_clock_sync) next_clock_sync = now + interval_ms;
	if (now < next_clock_sync || up_out.len) return;
	next_clock_sync = now + interval_ms;
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	uint64_t ns = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
	uint8_t f[SMOL_HDR + 5 + 8];
	put_be32(f, 1 + 4 + 5 + 8);
	f[4] = T_SYNC;
	clock_stream = (clock_stream + 1) & 0xffffff; /* slot 0 */
	put_be32(f + 5, clock_stream ? clock_stream : (clock_stream = 1));
	f[9] = S_TIME;
	put_be32(f + 10, 8);
	put_be32(f + 14, (uint32_t)(ns >> 32));
	put_be32(f + 18, (uint32_t)ns);
	bq_push(&up_out, f, sizeof f, (size_t)-1 / 2);
}

static int flush(int fd, struct bq *q) {
	while (q->len) {
		ssize_t w = write(fd, q->buf + q->off, q->len);
		if (w < 0 && errno == EINTR) continue;
		if (w < 0 && errno == EAGAIN) return 0;
		if (w <= 0) return -1;
		bq_consume(q, (size_t)w);
	}
	return 0;
}

/* ---- the serial console: socket -> log file capped at console_max (when full, the newest half is kept) ---- */
static int con_fd = -1, conlog_fd = -1;
static off_t conlog_size;
static size_t con_max = 1u << 20;

static void console_trim(void) {
	size_t keep = con_max / 2;
	if ((off_t)keep > conlog_size) keep = (size_t)conlog_size;
	uint8_t *t = malloc(keep ? keep : 1);
	ssize_t r = t ? pread(conlog_fd, t, keep, conlog_size - (off_t)keep) : -1;
	if (ftruncate(conlog_fd, 0) < 0) logmsg("proxy: cannot trim the console log: %s", strerror(errno));
	conlog_size = 0;
	if (r > 0 && write_all(conlog_fd, t, (size_t)r) == 0) conlog_size = r; /* O_APPEND: lands at 0 */
	free(t);
}

/* A console FIFO (--console-fifo) reads 0, end-of-file, once no writer has it open, and then polls readable
 * (POLLHUP) forever: so on end-of-file it is closed and polled no more, as the socket is. That is correct because
 * the VMM, its only writer, opened it (launch --stdout-fifo) before the proxy started and keeps it until it ends:
 * end-of-file means the VMM is gone and its output is complete. Nor can it come too early: Linux reports a FIFO's
 * hang-up to a reader only once a writer has come and gone since that reader opened it, so a FIFO that no writer
 * has opened yet is simply quiet. */
static void console_read(void) {
	uint8_t b[65536];
	ssize_t r = read(con_fd, b, sizeof b);
	if (r < 0 && (errno == EAGAIN || errno == EINTR)) return;
	if (r <= 0) { /* the VMM is gone */
		close(con_fd);
		con_fd = -1;
		return;
	}
	if (conlog_fd < 0) return;
	if (conlog_size + r > (off_t)con_max) console_trim();
	if (write_all(conlog_fd, b, (size_t)r) == 0) conlog_size += r;
}

/* ---- QMP events: remember the last shutdown / panic event, to say why the VM ended ---- */
static int ev_fd = -1, exit_fd = -1;
static struct bq ev_in;
static char last_event[160];

/* Copy the string value of "key" in a JSON line into out (only [A-Za-z0-9_.-], at most n-1 chars). */
static void json_str(const char *line, const char *key, char *out, size_t n) {
	char pat[64];
	snprintf(pat, sizeof pat, "\"%s\"", key);
	out[0] = 0;
	const char *p = strstr(line, pat);
	if (!p) return;
	p += strlen(pat);
	while (*p == ' ' || *p == ':') p++;
	if (*p++ != '"') return;
	size_t k = 0;
	while (*p && *p != '"' && k + 1 < n) {
		char ch = *p++;
		if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '_' || ch == '-' ||
		    ch == '.')
			out[k++] = ch;
	}
	out[k] = 0;
}

static void events_read(void) {
	uint8_t b[8192];
	ssize_t r = read(ev_fd, b, sizeof b);
	if (r < 0 && (errno == EAGAIN || errno == EINTR)) return;
	if (r <= 0) {
		close(ev_fd);
		ev_fd = -1;
		return;
	}
	if (bq_push(&ev_in, b, (size_t)r, 1u << 16) < 0) { /* an over-long line: drop it */
		bq_consume(&ev_in, ev_in.len);
		return;
	}
	for (;;) {
		uint8_t *nl = memchr(ev_in.buf + ev_in.off, '\n', ev_in.len);
		if (!nl) return;
		*nl = 0;
		const char *line = (const char *)ev_in.buf + ev_in.off;
		char ev[48], reason[48];
		json_str(line, "event", ev, sizeof ev);
		if (!strcmp(ev, "SHUTDOWN") || !strcmp(ev, "GUEST_PANICKED") || !strcmp(ev, "RESET")) {
			json_str(line, "reason", reason, sizeof reason);
			if (!reason[0]) json_str(line, "action", reason, sizeof reason);
			snprintf(last_event, sizeof last_event, "%s%s%s", ev, reason[0] ? " " : "", reason);
		}
		bq_consume(&ev_in, (size_t)(nl - (ev_in.buf + ev_in.off)) + 1);
	}
}

/* Why the VM ended (written once, when the proxy ends): the host reads it to report a crash. */
static void write_exit(const char *why) {
	if (exit_fd < 0) return;
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	char b[512];
	int n = snprintf(b, sizeof b, "{\"reason\":\"%s\",\"event\":\"%s\",\"at\":%lld}\n", why, last_event,
			 (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000);
	if (ftruncate(exit_fd, 0) == 0 && n > 0) (void)!pwrite(exit_fd, b, (size_t)n, 0);
}

static int connect_events(const char *path) {
	int fd = connect_unix(path);
	if (fd < 0) return -1;
	const char *caps = "{\"execute\":\"qmp_capabilities\"}\n";
	if (write_all(fd, caps, strlen(caps)) < 0) {
		close(fd);
		return -1;
	}
	set_nonblock(fd, 1);
	return fd;
}

/* Written to a temporary name and renamed, so a reader never sees a half-written file. */
static void write_pidfile(const char *path, pid_t pid) {
	char tmp[4200];
	snprintf(tmp, sizeof tmp, "%s.tmp", path);
	FILE *f = fopen(tmp, "w");
	if (!f) return;
	fprintf(f, "%d\n", (int)pid);
	if (fclose(f) == 0) rename(tmp, path);
}

int proxy_main(const struct proxy_opts *o) {
	close_fds_except(NULL, 0); /* nothing of the caller's stays open in a long-lived daemon */
	signal(SIGPIPE, SIG_IGN);
	for (int i = 0; i < SLOTS; i++) cl[i].fd = -1;
	const char *listen_path = o->listen_path, *pidfile = o->pidfile;
	if (o->vsock) { /* connected from the loop, once the guest listens (see vsock_attempt()) */
		if (strlen(o->upstream) >= sizeof ((struct sockaddr_un *)0)->sun_path) {
			logmsg("proxy: socket path too long: %s", o->upstream);
			return 1;
		}
		connect_timeout = o->connect_timeout_ms > 0 ? o->connect_timeout_ms : 60000;
		up_deadline = now_ms() + connect_timeout;
		/* reachable again after dropping privileges (see up_via); absent yet (the VMM is starting): by its path */
		int via = open(o->upstream, O_PATH | O_CLOEXEC);
		if (via >= 0) snprintf(up_via, sizeof up_via, "/proc/self/fd/%d", via);
	} else {
		up = connect_unix(o->upstream);
		if (up < 0) {
			logmsg("proxy: cannot connect to %s: %s", o->upstream, strerror(errno));
			return 1;
		}
		set_nonblock(up, 1);
	}
	/* queued first, so it is the first frame the guest gets, in vsock mode too */
	if (o->release_all) { /* a restored guest: commands of the snapshot's clients are theirs no more */
		uint8_t r[8];
		put_be32(r, 1u << 24);
		put_be32(r + 4, 0xffffffffu);
		queue_frame(&up_out, T_RELEASE, 0, r, 8, (size_t)-1 / 2);
	}
	/* everything that needs a path is opened now, before privileges are dropped */
	if (o->console_sock) {
		con_fd = connect_unix(o->console_sock);
		if (con_fd < 0) logmsg("proxy: cannot connect to the console %s: %s", o->console_sock, strerror(errno));
		else set_nonblock(con_fd, 1);
	} else if (o->console_fifo) { /* non-blocking: opening a FIFO for reading would otherwise wait for a writer */
		con_fd = open(o->console_fifo, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOFOLLOW);
		struct stat st;
		if (con_fd >= 0 && (fstat(con_fd, &st) < 0 || !S_ISFIFO(st.st_mode))) {
			close(con_fd);
			con_fd = -1;
			errno = EINVAL;
		}
		if (con_fd < 0) logmsg("proxy: cannot open the console FIFO %s: %s", o->console_fifo, strerror(errno));
	}
	if (o->console_log) {
		conlog_fd = open(o->console_log, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
		struct stat st;
		if (conlog_fd >= 0 && fstat(conlog_fd, &st) == 0) conlog_size = st.st_size;
		if (o->console_max >= 4096) con_max = o->console_max;
	}
	if (o->events && (ev_fd = connect_events(o->events)) < 0)
		logmsg("proxy: cannot watch events on %s: %s", o->events, strerror(errno));
	if (o->exit_file) exit_fd = open(o->exit_file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
	struct sockaddr_un a = {.sun_family = AF_UNIX};
	if (strlen(listen_path) >= sizeof a.sun_path) {
		logmsg("proxy: socket path too long: %s", listen_path);
		return 1;
	}
	strcpy(a.sun_path, listen_path);
	unlink(listen_path);
	int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	mode_t old = umask(0177);
	if (bind(lfd, (struct sockaddr *)&a, sizeof a) < 0 || listen(lfd, 64) < 0) {
		logmsg("proxy: cannot listen on %s: %s", listen_path, strerror(errno));
		return 1;
	}
	umask(old);
	/* Dropping privileges (--runas) leaves the proxy unable to reach anything in SmolVM's own run folder, where the
	 * vsock socket is: then it connects first, while it still can (SmolVM starts it once the guest agent listens,
	 * so this is at once; a guest that never listens fails the start here, within the connect timeout). */
	while (o->vsock && o->runas && up < 0) {
		up = vsock_attempt(o->upstream, o->vsock_port);
		if (up >= 0) break;
		if (now_ms() >= up_deadline) {
			logmsg("proxy: no agent on vsock port %lu through %s within %ld ms: %s", o->vsock_port, o->upstream,
			       o->connect_timeout_ms, vsock_why);
			fprintf(stderr, "proxy: no agent on vsock port %lu: %s\n", o->vsock_port, vsock_why);
			return 1;
		}
		usleep(VSOCK_RETRY_MS * 1000);
	}
	int ready[2] = {-1, -1};
	if (o->daemonize) {
		if (pipe2(ready, O_CLOEXEC) < 0) return 1;
		pid_t pid = fork();
		if (pid < 0) return 1;
		if (pid > 0) { /* record the daemon's pid once it is listening with its final identity */
			close(ready[1]);
			struct pollfd pf = {ready[0], POLLIN, 0};
			char ok = 0;
			if (poll(&pf, 1, 10000) <= 0 || read(ready[0], &ok, 1) != 1 || ok != 1) {
				fprintf(stderr, "proxy: the daemon failed to start (see its log)\n");
				_exit(1);
			}
			if (pidfile) write_pidfile(pidfile, pid);
			_exit(0);
		}
		close(ready[0]);
		setsid();
		/* no fd of the caller may stay open, or it would wait for our output to end */
		int nul = open("/dev/null", O_RDWR);
		int log = o->logfile ? open(o->logfile, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600) : -1;
		dup2(nul, 0);
		dup2(nul, 1);
		dup2(log >= 0 ? log : nul, 2);
		if (nul > 2) close(nul);
		if (log > 2) close(log);
	}
	if (o->runas) { /* least privilege: the proxy parses what a hostile guest sends */
		if (setgroups(0, NULL) < 0 || setgid(o->gid) < 0 || setuid(o->uid) < 0 || getuid() != o->uid ||
		    geteuid() != o->uid) {
			logmsg("proxy: cannot drop privileges to %u:%u: %s", (unsigned)o->uid, (unsigned)o->gid, strerror(errno));
			return 1;
		}
		prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
	}
	prctl(PR_SET_DUMPABLE, 0, 0, 0, 0); /* nobody of the same uid may ptrace us */
	if (ready[1] >= 0) {
		char ok = 1;
		(void)!write(ready[1], &ok, 1);
		close(ready[1]);
	}
	if (pidfile && !o->daemonize) write_pidfile(pidfile, getpid());
	const char *why = "vmm-exited";
	for (;;) {
		/* vsock mode, not connected yet (no --runas: see above): time for an attempt? */
		if (up < 0 && now_ms() >= up_next_try) {
			up = vsock_attempt(o->upstream, o->vsock_port);
			if (up >= 0) {
				logmsg("proxy: connected to the guest's vsock port %lu", o->vsock_port);
				up_connected_once = 1;
				if (up_in.len && upstream_route() == -2) { /* what the guest sent right behind the answer */
					why = "guest-protocol";
					goto done;
				}
			} else if (up_connected_once && vsock_gone) { /* its socket is gone or refuses: so is the VMM */
				goto done;
			} else if (now_ms() >= up_deadline) {
				logmsg("proxy: no agent on vsock port %lu through %s within %ld ms: %s", o->vsock_port, o->upstream,
				       o->connect_timeout_ms, vsock_why);
				why = "agent-unreachable";
				goto done;
			} else {
				up_next_try = now_ms() + VSOCK_RETRY_MS;
			}
		}
		struct pollfd pf[4 + SLOTS];
		int slot[4 + SLOTS];
		int n = 0;
		int reading_clients = up_out.len < UP_OUT_LIMIT;
		/* backpressure: while a client is far behind, leave the guest's output in the channel */
		int reading_up = 1, timeout = -1;
		long long now = now_ms();
		for (int s = 1; s < SLOTS; s++) {
			if (cl[s].fd < 0) continue;
			if (cl[s].out.len <= CLIENT_HIGH) {
				cl[s].stalled_since = 0;
				continue;
			}
			if (!cl[s].stalled_since) cl[s].stalled_since = now;
			if (now - cl[s].stalled_since > STALL_MS) {
				logmsg("proxy: client %d drained nothing for %d s; dropped", s, STALL_MS / 1000);
				drop_client(s);
				continue;
			}
			reading_up = 0;
			timeout = 1000;
		}
		if (up >= 0) pf[n] = (struct pollfd){up, (reading_up ? POLLIN : 0) | (up_out.len ? POLLOUT : 0), 0}, slot[n++] = -1;
		pf[n] = (struct pollfd){lfd, POLLIN, 0}, slot[n++] = -2;
		if (con_fd >= 0) pf[n] = (struct pollfd){con_fd, POLLIN, 0}, slot[n++] = -3;
		if (ev_fd >= 0) pf[n] = (struct pollfd){ev_fd, POLLIN, 0}, slot[n++] = -4;
		for (int s = 1; s < SLOTS; s++) {
			if (cl[s].fd < 0) continue;
			short ev = (reading_clients ? POLLIN : 0) | (cl[s].out.len ? POLLOUT : 0);
			pf[n] = (struct pollfd){cl[s].fd, ev, 0}, slot[n++] = s;
		}
		if (o->clock_sync_ms > 0 && up >= 0) {
			long long left = next_clock_sync ? next_clock_sync - now : o->clock_sync_ms;
			if (left < 0) left = 0;
			if (timeout < 0 || left < timeout) timeout = (int)left;
		}
		if (up < 0) { /* the next attempt */
			long long left = up_next_try - now;
			if (left < 0) left = 0;
			if (timeout < 0 || left < timeout) timeout = (int)left;
		}
		if (poll(pf, (nfds_t)n, timeout) < 0) {
			if (errno == EINTR) continue;
			why = "proxy-error";
			goto done;
		}
		for (int k = 0; k < n; k++) {
			short re = pf[k].revents;
			if (!re) continue;
			int s = slot[k];
			if (s == -1) {
				int ur = (re & (POLLIN | POLLHUP | POLLERR)) ? upstream_read() : 0;
				if (ur == -2) why = "guest-protocol";
				if (ur == -1 && o->vsock && vsock_lost() == 0) continue;
				if (ur < 0) goto done;
				if ((re & POLLOUT) && flush(up, &up_out) < 0) {
					if (o->vsock && vsock_lost() == 0) continue;
					goto done;
				}
			} else if (s == -3) {
				console_read();
			} else if (s == -4) {
				events_read();
			} else if (s == -2) {
				accept_client(lfd);
			} else if (cl[s].fd == pf[k].fd) {
				if (re & (POLLIN | POLLHUP | POLLERR)) client_read(s);
				if (cl[s].fd >= 0 && (re & POLLOUT)) {
					size_t before = cl[s].out.len;
					if (flush(cl[s].fd, &cl[s].out) < 0) drop_client(s);
					else if (cl[s].out.len < before && cl[s].stalled_since) cl[s].stalled_since = now_ms();
				}
			}
		}
		if (up < 0) continue; /* nothing to send to yet; the clock is set once connected (a queued time goes stale) */
		clock_tick(o->clock_sync_ms);
		if (up_out.len && flush(up, &up_out) < 0) {
			if (o->vsock && vsock_lost() == 0) continue;
			goto done;
		}
	}
done:
	/* the VM is gone (or broke the protocol): say why, tell clients by closing, leave no socket behind */
	for (int k = 0; k < 50 && (con_fd >= 0 || ev_fd >= 0); k++) { /* the last console lines and shutdown event */
		struct pollfd pf[2] = {{con_fd, POLLIN, 0}, {ev_fd, POLLIN, 0}}; /* poll ignores fd -1 */
		if (poll(pf, 2, 100) <= 0) break;
		if (pf[0].revents && con_fd >= 0) console_read();
		if (pf[1].revents && ev_fd >= 0) events_read();
	}
	write_exit(why);
	for (int s = 1; s < SLOTS; s++)
		if (cl[s].fd >= 0) {
			flush(cl[s].fd, &cl[s].out);
			close(cl[s].fd);
		}
	unlink(listen_path);
	if (pidfile) unlink(pidfile);
	return 0;
}
