/* The exec server: many commands at once over one or more framed channels. */
#define _GNU_SOURCE
#include "server.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/reboot.h>
#include <linux/random.h>
#include <sys/mount.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

#include "proto.h"
#include "server_int.h"

#define MAX_CHANS 64
/* stdin is flow-controlled per stream (WINDOW): a well-behaved host never has more than STDIN_WINDOW queued per
 * stream, so one command that does not read its stdin stalls nobody else. A host that overruns the window gets an
 * ERROR on that stream; reading all channels pauses only as a last safety net. */
#define STDIN_QUEUE_LIMIT (2 * STDIN_WINDOW + SMOL_MAX_PAYLOAD)
#define STDIN_TOTAL_LIMIT (256u << 20)
#define DRAIN_LIMIT (4u << 20)         /* bytes read from pipes after the process exits */

struct chan {
	int used;
	int rfd, wfd;
	int persistent; /* virtio port: survives the host going away */
	long long retry_at_ms;
	struct bq in;
};


static struct chan chans[MAX_CHANS];
struct proc procs[MAX_PROCS];
const struct server_opts *opts;
static size_t stdin_total;

long long now_ms(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void chan_send(int c, uint8_t type, uint32_t stream, const void *payload, size_t n) {
	if (c < 0 || !chans[c].used || chans[c].retry_at_ms) return;
	uint8_t hdr[SMOL_HDR];
	frame_header(hdr, type, stream, n);
	/* one write for small frames keeps frames whole on the wire */
	if (n <= 4096) {
		uint8_t buf[SMOL_HDR + 4096];
		memcpy(buf, hdr, SMOL_HDR);
		if (n) memcpy(buf + SMOL_HDR, payload, n);
		write_all(chans[c].wfd, buf, SMOL_HDR + n);
	} else {
		write_all(chans[c].wfd, hdr, SMOL_HDR);
		write_all(chans[c].wfd, payload, n);
	}
}

void send_error(int c, uint32_t stream, uint32_t code, const char *msg) {
	size_t ml = strlen(msg);
	uint8_t buf[5 + 4 + 5 + 256];
	if (ml > 256) ml = 256;
	size_t o = 0;
	buf[o++] = F_CODE;
	put_be32(buf + o, 4);
	o += 4;
	put_be32(buf + o, code);
	o += 4;
	buf[o++] = F_MSG;
	put_be32(buf + o, (uint32_t)ml);
	o += 4;
	memcpy(buf + o, msg, ml);
	o += ml;
	chan_send(c, T_ERROR, stream, buf, o);
}

struct proc *find_proc(int c, uint32_t stream) {
	for (int i = 0; i < MAX_PROCS; i++)
		if (procs[i].used && procs[i].chan == c && procs[i].stream == stream) return &procs[i];
	return NULL;
}

void send_errno(int c, uint32_t stream, int e, const char *what) {
	char msg[300];
	snprintf(msg, sizeof msg, "%s: %s", what, strerror(e));
	send_error(c, stream, (uint32_t)e, msg);
}

struct proc *new_proc(int c, uint32_t stream, enum stream_kind kind) {
	if (find_proc(c, stream)) {
		send_error(c, stream, EEXIST, "stream id already in use");
		return NULL;
	}
	for (int i = 0; i < MAX_PROCS; i++)
		if (!procs[i].used) {
			struct proc *p = &procs[i];
			memset(p, 0, sizeof *p);
			p->used = 1;
			p->kind = kind;
			p->chan = c;
			p->stream = stream;
			p->out = p->err = p->in = -1;
			return p;
		}
	send_error(c, stream, EAGAIN, "too many streams");
	return NULL;
}

void free_proc(struct proc *p) {
	free(p->tmp_path);
	free(p->final_path);
	free(p->cmd);
	bq_free(&p->ring_out);
	bq_free(&p->ring_err);
	p->tmp_path = p->final_path = p->cmd = NULL;
	p->used = 0;
}

char *dupstr(const uint8_t *v, size_t n) {
	char *s = malloc(n + 1);
	if (!s) return NULL;
	memcpy(s, v, n);
	s[n] = 0;
	return s;
}

void fb_bytes(struct fbuf *f, uint8_t tag, const void *v, size_t n) {
	if (f->overflow || f->n + 5 + n > sizeof f->b) {
		f->overflow = 1;
		return;
	}
	f->b[f->n] = tag;
	put_be32(f->b + f->n + 1, (uint32_t)n);
	memcpy(f->b + f->n + 5, v, n);
	f->n += 5 + n;
}
void fb_str(struct fbuf *f, uint8_t tag, const char *s) { fb_bytes(f, tag, s, strlen(s)); }
void fb_u32(struct fbuf *f, uint8_t tag, uint32_t v) {
	uint8_t b[4];
	put_be32(b, v);
	fb_bytes(f, tag, b, 4);
}
void fb_u64(struct fbuf *f, uint8_t tag, uint64_t v) {
	uint8_t b[8];
	put_be32(b, (uint32_t)(v >> 32));
	put_be32(b + 4, (uint32_t)v);
	fb_bytes(f, tag, b, 8);
}

#define MAX_OUT_WINDOW (64u << 20)

int out_open(const struct proc *p) { return !p->out_window || p->out_unacked < p->out_window; }

void set_out_window(struct proc *p, uint32_t win, struct fbuf *started) {
	if (win > MAX_OUT_WINDOW) win = MAX_OUT_WINDOW;
	if (win && win < SMOL_MAX_PAYLOAD) win = SMOL_MAX_PAYLOAD;
	p->out_window = win;
	p->out_unacked = 0;
	if (win && started) fb_u32(started, ST_OUTWIN, win);
}

static void close_fd(int *fd) {
	if (*fd >= 0) close(*fd);
	*fd = -1;
}

void stdin_discard(struct proc *p) {
	stdin_total -= p->inq.len;
	bq_free(&p->inq);
}

static void proc_close_stdin(struct proc *p) {
	stdin_discard(p);
	if (p->kind == K_TCP && p->in >= 0) shutdown(p->in, SHUT_WR); /* the peer reads EOF; its replies still come */
	close_fd(&p->in);
}

/* Keep the latest RING_BYTES of a detached command's output. */
static void ring_push(struct bq *q, const uint8_t *b, size_t n) {
	if (n >= RING_BYTES) {
		bq_consume(q, q->len);
		b += n - RING_BYTES;
		n = RING_BYTES;
	} else if (q->len + n > RING_BYTES) {
		bq_consume(q, q->len + n - RING_BYTES);
	}
	bq_push(q, b, n, RING_BYTES);
}

void send_exit(int c, uint32_t stream, int status) {
	uint8_t ex[8];
	int32_t code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
	int32_t sig = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
	put_be32(ex, (uint32_t)code);
	put_be32(ex + 4, (uint32_t)sig);
	chan_send(c, T_EXIT, stream, ex, 8);
}

static unsigned long long seq_counter;

/* Forward what a pipe has; returns 0 at EOF or error, 1 if more may come. */
static int pump(struct proc *p, int *fd, uint8_t type, size_t *budget) {
	uint8_t buf[SMOL_MAX_PAYLOAD];
	for (;;) {
		/* flow control: with the window closed the data stays in the pipe and the writer blocks. The drain after
		 * exit (budget) ignores the window: it is bounded by DRAIN_LIMIT */
		if (!budget && p->chan >= 0 && !out_open(p)) return 1;
		ssize_t r = read(*fd, buf, sizeof buf);
		if (r > 0) {
			if (p->chan >= 0 && p->out_window) p->out_unacked += (uint64_t)r;
			/* a background command keeps its latest output, replayed to whoever attaches next */
			if (p->keep) ring_push(type == T_STDERR ? &p->ring_err : &p->ring_out, buf, (size_t)r);
			if (p->chan >= 0) chan_send(p->chan, type, p->stream, buf, (size_t)r);
			if (!budget) return 1;
			if ((size_t)r >= *budget) return 1;
			*budget -= (size_t)r;
			continue;
		}
		if (r < 0 && errno == EINTR) continue;
		if (r < 0 && errno == EAGAIN) return 1;
		if (r < 0 && errno == EIO && p->pty) r = 0; /* terminal closed by the last holder of its slave */
		if (r < 0 && p->kind == K_READ) send_errno(p->chan, p->stream, errno, "read");
		if (p->kind == K_TCP) { /* the guest side closed (EXIT 0) or reset (EXIT 1) the connection */
			tcp_end(p, r == 0 ? 0 : 1, 0);
			return 0;
		}
		close_fd(fd);
		if (p->kind == K_READ) {
			if (r == 0) chan_send(p->chan, T_DONE, p->stream, NULL, 0);
			free_proc(p);
		}
		return 0;
	}
}

static void proc_finish(struct proc *p, int status) {
	size_t budget = DRAIN_LIMIT;
	if (p->out >= 0) pump(p, &p->out, T_STDOUT, &budget);
	if (p->err >= 0) pump(p, &p->err, T_STDERR, &budget);
	close_fd(&p->out);
	close_fd(&p->err);
	proc_close_stdin(p);
	if (p->chan < 0 && p->keep) { /* nobody attached: keep the status for a later CONNECT */
		p->exited = 1;
		p->status = status;
		p->seq = ++seq_counter;
		int kept = 0;
		struct proc *oldest = NULL;
		for (int i = 0; i < MAX_PROCS; i++) {
			struct proc *q = &procs[i];
			if (!q->used || !q->exited) continue;
			kept++;
			if (!oldest || q->seq < oldest->seq) oldest = q;
		}
		if (kept > MAX_FINISHED_KEPT && oldest) free_proc(oldest);
		return;
	}
	send_exit(p->chan, p->stream, status);
	free_proc(p);
}

static void reap(void) {
	for (;;) {
		int status;
		pid_t pid = waitpid(-1, &status, WNOHANG);
		if (pid <= 0) return;
		for (int i = 0; i < MAX_PROCS; i++)
			if (procs[i].used && procs[i].kind == K_EXEC && !procs[i].exited && procs[i].pid == pid) {
				proc_finish(&procs[i], status);
				break;
			}
	}
}

/* Kill and forget every process of channel c whose stream is within [lo, hi]. */
static void release(int c, uint32_t lo, uint32_t hi) {
	for (int i = 0; i < MAX_PROCS; i++) {
		struct proc *p = &procs[i];
		if (!p->used || p->chan != c || p->stream < lo || p->stream > hi) continue;
		if (p->kind == K_EXEC && p->keep) {
			p->chan = -1; /* keeps running; output goes to its ring until someone reattaches */
			p->out_window = 0;
		} else if (p->kind == K_EXEC) {
			kill(-p->pid, SIGKILL);
			p->chan = -1;
			proc_close_stdin(p);
		} else if (p->kind == K_WRITE) {
			write_abort(p); /* a half-written file never replaces the old one */
		} else if (p->kind == K_TCP) {
			tcp_drop(p);
		} else {
			close_fd(&p->out);
			free_proc(p);
		}
	}
}

void flush_stdin(struct proc *p) {
	if (p->connecting) return; /* kept until the TCP connection is up */
	while (p->in >= 0 && p->inq.len) {
		ssize_t w = write(p->in, p->inq.buf + p->inq.off, p->inq.len);
		if (w < 0 && errno == EINTR) continue;
		if (w < 0 && errno == EAGAIN) return;
		if (w <= 0) {
			if (p->kind == K_WRITE) { /* e.g. ENOSPC: report, keep the old file */
				send_errno(p->chan, p->stream, errno, p->final_path);
				write_abort(p);
				return;
			}
			proc_close_stdin(p); /* reader gone: drop what is queued */
			return;
		}
		stdin_total -= (size_t)w;
		p->written += (unsigned long long)w;
		p->unacked += (uint32_t)w;
		bq_consume(&p->inq, (size_t)w);
	}
	/* report consumption in batches, and whenever the queue runs dry */
	if (p->unacked && (p->unacked >= STDIN_WINDOW / 4 || !p->inq.len)) {
		uint8_t b[4];
		put_be32(b, p->unacked);
		chan_send(p->chan, T_WINDOW, p->stream, b, 4);
		p->unacked = 0;
	}
	if (p->in >= 0 && p->stdin_eof && !p->inq.len) {
		if (p->kind == K_WRITE) write_finish(p);
		else proc_close_stdin(p);
	}
}

/* Kill every process, make the disk consistent, tell the host (which may now kill the VMM at no risk), power off. */
static void shutdown_now(int c, uint32_t stream) {
	if (opts->is_init) {
		kill(-1, SIGKILL);
		sync();
		mount(NULL, "/", NULL, MS_REMOUNT | MS_RDONLY, NULL);
		sync();
	}
	chan_send(c, T_SHUTDOWN, stream, NULL, 0);
	if (!opts->is_init) exit(0);
	reboot(RB_POWER_OFF);
	for (;;) pause();
}

/* A restored VM wakes up with the snapshot's clock and random state: take the host's time and fresh entropy, and
 * reseed the kernel's generator, and make user-space generators that watch for forks reseed from it, so clones of
 * one snapshot never produce the same random bytes. */
static void do_sync(int c, uint32_t stream, const uint8_t *pl, size_t n) {
	size_t off = 0;
	uint8_t tag;
	const uint8_t *v;
	size_t vl;
	int err = 0;
	while (opts->is_init && field_next(pl, n, &off, &tag, &v, &vl) == 1) { /* never touch a host's clock */
		if (tag == S_TIME && vl == 8) {
			uint64_t ns = ((uint64_t)get_be32(v) << 32) | get_be32(v + 4);
			struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000ull), .tv_nsec = (long)(ns % 1000000000ull)};
			if (clock_settime(CLOCK_REALTIME, &ts) < 0) err = errno;
		} else if (tag == S_FLUSH) {
			sync();
		} else if (tag == S_HOSTNAME && vl > 0 && vl < 64) {
			if (sethostname((const char *)v, vl) < 0) err = errno;
		} else if (tag == S_ENTROPY && vl > 0 && vl <= 512) {
			struct {
				int entropy_count;
				int buf_size;
				uint8_t buf[512];
			} rp;
			rp.entropy_count = (int)vl * 8;
			rp.buf_size = (int)vl;
			memcpy(rp.buf, v, vl);
			int fd = open("/dev/urandom", O_RDWR | O_CLOEXEC);
			if (fd < 0 || ioctl(fd, RNDADDENTROPY, &rp) < 0) err = errno;
			if (fd >= 0) {
				ioctl(fd, RNDRESEEDCRNG);
				close(fd);
			}
			wipe_onfork_pages(); /* user-space generators reseed from the kernel's, just reseeded */
		}
	}
	if (err) send_errno(c, stream, err, "sync");
	else chan_send(c, T_DONE, stream, NULL, 0);
}

static void handle_frame(int c, uint8_t type, uint32_t stream, const uint8_t *pl, size_t n) {
	struct proc *p;
	switch (type) {
	case T_PING:
		chan_send(c, T_PONG, stream, pl, n);
		break;
	case T_EXEC:
		do_exec(c, stream, pl, n);
		break;
	case T_STDIN:
		p = find_proc(c, stream);
		if (!p || p->in < 0) break; /* late input for a finished command */
		if (n == 0) {
			p->stdin_eof = 1;
		} else if (bq_push(&p->inq, pl, n, STDIN_QUEUE_LIMIT) < 0) {
			/* the host ignored the window: this stream's stdin is closed, nobody else is affected */
			send_error(c, stream, ENOBUFS, "stdin window exceeded; stdin closed");
			if (p->kind == K_WRITE) write_abort(p);
			else proc_close_stdin(p);
			break;
		} else {
			stdin_total += n;
		}
		flush_stdin(p);
		break;
	case T_RESIZE:
		p = find_proc(c, stream);
		if (p && p->pty) do_resize(p, pl, n);
		break;
	case T_SYNC:
		do_sync(c, stream, pl, n);
		break;
	case T_NETCFG:
		do_netcfg(c, stream, pl, n);
		break;
	case T_TCPCONNECT:
		do_tcpconnect(c, stream, pl, n);
		break;
	case T_PS:
		do_ps(c, stream);
		break;
	case T_CONNECT:
		do_connect(c, stream, pl, n);
		break;
	case T_PKILL:
		do_pkill(c, stream, pl, n);
		break;
	case T_ENV_SET:
		env_set(c, stream, pl, n);
		break;
	case T_ENV_UNSET:
		env_unset(c, stream, pl, n);
		break;
	case T_ENV_LIST:
		env_list(c, stream);
		break;
	case T_FREAD:
	case T_FWRITE:
	case T_FSTAT:
	case T_FLIST:
	case T_FMKDIR:
	case T_FREMOVE:
	case T_FRENAME:
		file_op(c, type, stream, pl, n);
		break;
	case T_WINDOW:
		p = find_proc(c, stream);
		if (p && p->out_window && n == 4) {
			uint32_t got = get_be32(pl);
			p->out_unacked = got >= p->out_unacked ? 0 : p->out_unacked - got;
		}
		break;
	case T_SIGNAL:
		p = find_proc(c, stream);
		if (p && p->kind == K_EXEC && !p->exited && n >= 4) {
			uint32_t sig = get_be32(pl);
			if (sig >= 1 && sig < NSIG) kill(-p->pid, (int)sig);
		} else if (p && p->kind == K_READ) { /* the host gave up on a file read (e.g. over its size limit) */
			close_fd(&p->out);
			send_error(c, stream, ECANCELED, "read cancelled by the host");
			free_proc(p);
		} else if (p && p->kind == K_WRITE) {
			send_error(c, stream, ECANCELED, "write cancelled by the host");
			write_abort(p);
		} else if (p && p->kind == K_TCP) { /* the host closes the connection */
			tcp_signal(p, n >= 4 && get_be32(pl) < 256 ? (int)get_be32(pl) : 0);
		}
		break;
	case T_RELEASE:
		if (n >= 8) release(c, get_be32(pl), get_be32(pl + 4));
		break;
	case T_SHUTDOWN:
		shutdown_now(c, stream);
		break;
	default:
		send_error(c, stream, ENOSYS, "unknown frame type");
	}
}

static void chan_lost(int c) {
	release(c, 0, 0xffffffffu);
	chans[c].in.len = chans[c].in.off = 0;
	if (chans[c].persistent) {
		chans[c].retry_at_ms = now_ms() + 50;
		return;
	}
	if (opts->stdio && c == 0) exit(0); /* serve --stdio: the one channel is gone */
	close(chans[c].rfd);
	if (chans[c].wfd != chans[c].rfd) close(chans[c].wfd);
	bq_free(&chans[c].in);
	chans[c].used = 0;
}

static void chan_hello(int c) {
	uint8_t pb[9];
	pb[0] = 1;
	put_be32(pb + 1, 4);
	put_be32(pb + 5, SMOL_PROTO_VERSION);
	chan_send(c, T_HELLO, 0, pb, 9);
}

static int chan_add(int rfd, int wfd, int persistent) {
	for (int c = 0; c < MAX_CHANS; c++)
		if (!chans[c].used) {
			memset(&chans[c], 0, sizeof chans[c]);
			chans[c].used = 1;
			chans[c].rfd = rfd;
			chans[c].wfd = wfd;
			chans[c].persistent = persistent;
			set_nonblock(rfd, 1);
			chan_hello(c);
			return c;
		}
	return -1;
}

static void chan_read(int c) {
	uint8_t buf[65536];
	ssize_t r = read(chans[c].rfd, buf, sizeof buf);
	if (r < 0 && (errno == EINTR || errno == EAGAIN)) return;
	if (r <= 0) {
		chan_lost(c);
		return;
	}
	if (bq_push(&chans[c].in, buf, (size_t)r, 4 * (SMOL_HDR + SMOL_MAX_PAYLOAD)) < 0) {
		logmsg("channel %d: input overflow", c);
		chan_lost(c);
		return;
	}
	for (;;) {
		uint8_t type;
		uint32_t stream;
		const uint8_t *pl;
		size_t pn;
		long f = frame_parse(chans[c].in.buf + chans[c].in.off, chans[c].in.len, &type, &stream, &pl, &pn);
		if (f == 0) break;
		if (f < 0) {
			logmsg("channel %d: bad frame, dropping channel", c);
			chan_lost(c);
			return;
		}
		handle_frame(c, type, stream, pl, pn);
		if (!chans[c].used || chans[c].retry_at_ms) return;
		bq_consume(&chans[c].in, (size_t)f);
	}
}

static int listen_unix(const char *path) {
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un a = {.sun_family = AF_UNIX};
	if (strlen(path) >= sizeof a.sun_path) return -1;
	strcpy(a.sun_path, path);
	unlink(path);
	mode_t old = umask(0177);
	int r = bind(fd, (struct sockaddr *)&a, sizeof a);
	umask(old);
	if (r < 0 || listen(fd, 64) < 0) return -1;
	return fd;
}

static int listen_vsock(int port) {
	int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) return -1;
	struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = (unsigned)port};
	if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, 16) < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

static int open_vport(const char *name) {
	for (int tries = 0; tries < 1000; tries++) {
		DIR *d = opendir("/sys/class/virtio-ports");
		struct dirent *e;
		while (d && (e = readdir(d))) {
			if (e->d_name[0] == '.') continue;
			char path[300], got[64] = {0};
			snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", e->d_name);
			int fd = open(path, O_RDONLY);
			if (fd < 0) continue;
			ssize_t r = read(fd, got, sizeof got - 1);
			close(fd);
			if (r > 0 && got[r - 1] == '\n') got[r - 1] = 0;
			if (strcmp(got, name)) continue;
			snprintf(path, sizeof path, "/dev/%s", e->d_name);
			int pfd = open(path, O_RDWR | O_CLOEXEC);
			if (pfd >= 0) {
				closedir(d);
				return pfd;
			}
		}
		if (d) closedir(d);
		usleep(10000);
	}
	return -1;
}

int server_run(const struct server_opts *o) {
	opts = o;
	signal(SIGPIPE, SIG_IGN);
	sigset_t mask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGCHLD);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	int sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
	int lfd_unix = -1, lfd_vsock = -1;
	if (o->stdio) chan_add(0, 1, 0);
	if (o->listen_unix && (lfd_unix = listen_unix(o->listen_unix)) < 0) {
		logmsg("cannot listen on %s: %s", o->listen_unix, strerror(errno));
		return 1;
	}
	if (o->vsock_port && (lfd_vsock = listen_vsock(o->vsock_port)) < 0)
		logmsg("vsock port %d unavailable: %s", o->vsock_port, strerror(errno));
	if (o->vport_name) {
		int fd = open_vport(o->vport_name);
		if (fd < 0) logmsg("virtio port %s not found", o->vport_name);
		else {
			logmsg("serving on virtio port %s", o->vport_name);
			chan_add(fd, fd, 1);
		}
	}
	for (;;) {
		struct pollfd pf[3 + MAX_CHANS + 3 * MAX_PROCS];
		/* what each poll slot is: kind 0 signal, 1 listener, 2 chan, 3 stdout, 4 stderr, 5 stdin, 6 connecting */
		int kind[3 + MAX_CHANS + 3 * MAX_PROCS], idx[3 + MAX_CHANS + 3 * MAX_PROCS];
		int n = 0;
		long long now = now_ms();
		int timeout = tcp_check_deadlines(now);
		pf[n] = (struct pollfd){sfd, POLLIN, 0}, kind[n] = 0, idx[n++] = 0;
		if (lfd_unix >= 0) pf[n] = (struct pollfd){lfd_unix, POLLIN, 0}, kind[n] = 1, idx[n++] = 0;
		if (lfd_vsock >= 0) pf[n] = (struct pollfd){lfd_vsock, POLLIN, 0}, kind[n] = 1, idx[n++] = 1;
		int reading = stdin_total < STDIN_TOTAL_LIMIT;
		for (int c = 0; c < MAX_CHANS; c++) {
			if (!chans[c].used) continue;
			if (chans[c].retry_at_ms) {
				if (now >= chans[c].retry_at_ms) {
					chans[c].retry_at_ms = 0;
					chan_hello(c);
				} else {
					int wait = (int)(chans[c].retry_at_ms - now);
					if (timeout < 0 || wait < timeout) timeout = wait;
					continue;
				}
			}
			if (reading) pf[n] = (struct pollfd){chans[c].rfd, POLLIN, 0}, kind[n] = 2, idx[n++] = c;
		}
		for (int i = 0; i < MAX_PROCS; i++) {
			struct proc *p = &procs[i];
			if (!p->used) continue;
			if (p->connecting) { /* a TCP connect in progress: writable once it is done */
				pf[n] = (struct pollfd){p->out, POLLOUT, 0}, kind[n] = 6, idx[n++] = i;
				continue;
			}
			int open = p->chan < 0 || out_open(p); /* a closed output window: leave the data in the pipe */
			if (p->out >= 0 && open) pf[n] = (struct pollfd){p->out, POLLIN, 0}, kind[n] = 3, idx[n++] = i;
			if (p->err >= 0 && open) pf[n] = (struct pollfd){p->err, POLLIN, 0}, kind[n] = 4, idx[n++] = i;
			if (p->in >= 0 && p->inq.len) pf[n] = (struct pollfd){p->in, POLLOUT, 0}, kind[n] = 5, idx[n++] = i;
		}
		int r = poll(pf, (nfds_t)n, timeout);
		if (r < 0) {
			if (errno == EINTR) continue;
			logmsg("poll: %s", strerror(errno));
			return 1;
		}
		for (int k = 0; k < n; k++) {
			if (!pf[k].revents) continue;
			int i = idx[k];
			struct proc *p = &procs[i];
			switch (kind[k]) {
			case 0: {
				struct signalfd_siginfo si;
				while (read(sfd, &si, sizeof si) == sizeof si) {
				}
				break;
			}
			case 1: {
				int cfd = accept4(pf[k].fd, NULL, NULL, SOCK_CLOEXEC);
				if (cfd >= 0 && chan_add(cfd, cfd, 0) < 0) close(cfd);
				break;
			}
			case 2:
				if (chans[i].used && !chans[i].retry_at_ms) chan_read(i);
				break;
			case 3:
				if (p->used && p->out == pf[k].fd) pump(p, &p->out, T_STDOUT, NULL);
				break;
			case 4:
				if (p->used && p->err == pf[k].fd) pump(p, &p->err, T_STDERR, NULL);
				break;
			case 5:
				if (p->used && p->in == pf[k].fd) {
					if (pf[k].revents & (POLLERR | POLLHUP)) proc_close_stdin(p);
					else flush_stdin(p);
				}
				break;
			case 6:
				if (p->used && p->connecting && p->out == pf[k].fd) tcp_connected(p);
				break;
			}
		}
		reap();
	}
}
