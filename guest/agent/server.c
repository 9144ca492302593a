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
#include <sys/reboot.h>
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

#define MAX_CHANS 64
#define MAX_PROCS 1024
#define STDIN_QUEUE_LIMIT (4u << 20)   /* per process */
#define STDIN_TOTAL_LIMIT (16u << 20)  /* stop reading channels above this */
#define DRAIN_LIMIT (4u << 20)         /* bytes read from pipes after the process exits */

struct chan {
	int used;
	int rfd, wfd;
	int persistent; /* virtio port: survives the host going away */
	long long retry_at_ms;
	struct bq in;
};

struct proc {
	int used;
	int chan; /* -1 once released: output is dropped */
	uint32_t stream;
	pid_t pid;
	int out, err, in;
	int stdin_eof; /* close stdin once the queue drains */
	struct bq inq;
};

static struct chan chans[MAX_CHANS];
static struct proc procs[MAX_PROCS];
static const struct server_opts *opts;
static size_t stdin_total;

static long long now_ms(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void chan_send(int c, uint8_t type, uint32_t stream, const void *payload, size_t n) {
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

static void send_error(int c, uint32_t stream, uint32_t code, const char *msg) {
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

static struct proc *find_proc(int c, uint32_t stream) {
	for (int i = 0; i < MAX_PROCS; i++)
		if (procs[i].used && procs[i].chan == c && procs[i].stream == stream) return &procs[i];
	return NULL;
}

static void close_fd(int *fd) {
	if (*fd >= 0) close(*fd);
	*fd = -1;
}

static void proc_close_stdin(struct proc *p) {
	stdin_total -= p->inq.len;
	bq_free(&p->inq);
	close_fd(&p->in);
}

/* Forward what a pipe has; returns 0 at EOF or error, 1 if more may come. */
static int pump(struct proc *p, int *fd, uint8_t type, size_t *budget) {
	uint8_t buf[SMOL_MAX_PAYLOAD];
	for (;;) {
		ssize_t r = read(*fd, buf, sizeof buf);
		if (r > 0) {
			chan_send(p->chan, type, p->stream, buf, (size_t)r);
			if (!budget) return 1;
			if ((size_t)r >= *budget) return 1;
			*budget -= (size_t)r;
			continue;
		}
		if (r < 0 && errno == EINTR) continue;
		if (r < 0 && errno == EAGAIN) return 1;
		close_fd(fd);
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
	uint8_t ex[8];
	int32_t code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
	int32_t sig = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
	put_be32(ex, (uint32_t)code);
	put_be32(ex + 4, (uint32_t)sig);
	chan_send(p->chan, T_EXIT, p->stream, ex, 8);
	p->used = 0;
}

static void reap(void) {
	for (;;) {
		int status;
		pid_t pid = waitpid(-1, &status, WNOHANG);
		if (pid <= 0) return;
		for (int i = 0; i < MAX_PROCS; i++)
			if (procs[i].used && procs[i].pid == pid) {
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
		kill(-p->pid, SIGKILL);
		p->chan = -1;
		proc_close_stdin(p);
	}
}

static char *dupstr(const uint8_t *v, size_t n) {
	char *s = malloc(n + 1);
	if (!s) return NULL;
	memcpy(s, v, n);
	s[n] = 0;
	return s;
}

/* Build the child's environment: base, then overrides (same key replaces). */
static char **build_env(char **extra, int nextra) {
	int nbase = 0;
	while (opts->base_env && opts->base_env[nbase]) nbase++;
	char **env = calloc((size_t)(nbase + nextra + 1), sizeof(char *));
	if (!env) return NULL;
	int n = 0;
	for (int i = 0; i < nbase; i++) env[n++] = opts->base_env[i];
	for (int i = 0; i < nextra; i++) {
		char *eq = strchr(extra[i], '=');
		size_t kl = eq ? (size_t)(eq - extra[i]) : strlen(extra[i]);
		int replaced = 0;
		for (int j = 0; j < n; j++)
			if (!strncmp(env[j], extra[i], kl) && env[j][kl] == '=') {
				env[j] = extra[i];
				replaced = 1;
				break;
			}
		if (!replaced) env[n++] = extra[i];
	}
	env[n] = NULL;
	return env;
}

/* The vfork child: only system calls until it execs or _exits, and its own stack frame, so the parent's locals stay
 * intact. */
static __attribute__((noinline, noreturn)) void exec_child(int in, int out, int err, const char *cwd, char **argv,
							  char **env) {
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL); /* the agent blocks SIGCHLD */
	signal(SIGPIPE, SIG_DFL);	       /* and ignores SIGPIPE; nothing else is changed */
	setsid();
	dup2(in >= 0 ? in : open("/dev/null", O_RDONLY), 0);
	dup2(out, 1);
	dup2(err, 2);
	/* every fd of the agent is close-on-exec; this is a safety net (one call where available) */
	if (syscall(SYS_close_range, 3, ~0u, 0) < 0)
		for (int fd = 3; fd < 1024; fd++) close(fd);
	if (cwd && chdir(cwd) < 0) {
		dprintf(2, "smolvm: cwd %s: %s\n", cwd, strerror(errno));
		_exit(126);
	}
	execvpe(argv[0], argv, env);
	int e = errno;
	dprintf(2, "smolvm: exec %s: %s\n", argv[0], strerror(e));
	_exit(e == ENOENT ? 127 : 126);
}

/* vfork: no page-table copy and no copy-on-write faults, which software emulation makes expensive. Kept in its own
 * function so no caller's locals live across the vfork. */
static __attribute__((noinline)) pid_t spawn_child(int in, int out, int err, const char *cwd, char **argv, char **env) {
	pid_t pid = vfork();
	if (pid == 0) exec_child(in, out, err, cwd, argv, env);
	return pid;
}

static void do_exec(int c, uint32_t stream, const uint8_t *pl, size_t n) {
	if (find_proc(c, stream)) {
		send_error(c, stream, EEXIST, "stream id already in use");
		return;
	}
	struct proc *p = NULL;
	for (int i = 0; i < MAX_PROCS; i++)
		if (!procs[i].used) {
			p = &procs[i];
			break;
		}
	if (!p) {
		send_error(c, stream, EAGAIN, "too many processes");
		return;
	}
	int nargs = 0, nenv = 0, want_stdin = 0;
	size_t off = 0;
	uint8_t tag;
	const uint8_t *v;
	size_t vl;
	int r;
	while ((r = field_next(pl, n, &off, &tag, &v, &vl)) == 1) {
		if (tag == F_ARG) nargs++;
		if (tag == F_ENV) nenv++;
	}
	if (r < 0) {
		send_error(c, stream, EINVAL, "malformed exec request");
		return;
	}
	char **argv = calloc((size_t)nargs + 4, sizeof(char *));
	char **extra = calloc((size_t)nenv + 1, sizeof(char *));
	char *shell = NULL, *cwd = NULL;
	int ai = 0, ei = 0;
	off = 0;
	while (field_next(pl, n, &off, &tag, &v, &vl) == 1) {
		if (memchr(v, 0, vl) && tag != F_STDIN) {
			send_error(c, stream, EINVAL, "NUL byte in exec request");
			goto out;
		}
		if (tag == F_ARG) argv[ai++] = dupstr(v, vl);
		else if (tag == F_ENV) extra[ei++] = dupstr(v, vl);
		else if (tag == F_SHELL) { free(shell); shell = dupstr(v, vl); }
		else if (tag == F_CWD) { free(cwd); cwd = dupstr(v, vl); }
		else if (tag == F_STDIN) want_stdin = vl > 0 && v[0];
	}
	if (shell) {
		for (int i = 0; i < ai; i++) free(argv[i]);
		ai = 0;
		argv[ai++] = strdup("/bin/sh");
		argv[ai++] = strdup("-c");
		argv[ai++] = shell;
		shell = NULL;
	}
	if (ai == 0) {
		send_error(c, stream, EINVAL, "exec request has no command");
		goto out;
	}
	int pin[2] = {-1, -1}, pout[2], perr[2];
	if ((want_stdin && pipe2(pin, O_CLOEXEC)) || pipe2(pout, O_CLOEXEC) || pipe2(perr, O_CLOEXEC)) {
		send_error(c, stream, (uint32_t)errno, strerror(errno));
		goto out;
	}
	char **env = build_env(extra, ei);
	pid_t pid = spawn_child(want_stdin ? pin[0] : -1, pout[1], perr[1], cwd, argv, env);
	free(env);
	close(pout[1]);
	close(perr[1]);
	if (pin[0] >= 0) close(pin[0]);
	if (pid < 0) {
		int e = errno;
		close(pout[0]);
		close(perr[0]);
		if (pin[1] >= 0) close(pin[1]);
		send_error(c, stream, (uint32_t)e, strerror(e));
		goto out;
	}
	memset(p, 0, sizeof *p);
	p->used = 1;
	p->chan = c;
	p->stream = stream;
	p->pid = pid;
	p->out = pout[0];
	p->err = perr[0];
	p->in = pin[1];
	set_nonblock(p->out, 1);
	set_nonblock(p->err, 1);
	if (p->in >= 0) set_nonblock(p->in, 1);
	uint8_t pb[9];
	pb[0] = 1; /* F_PID */
	put_be32(pb + 1, 4);
	put_be32(pb + 5, (uint32_t)pid);
	chan_send(c, T_STARTED, stream, pb, 9);
out:
	for (int i = 0; i < ai; i++) free(argv[i]);
	free(argv);
	for (int i = 0; i < ei; i++) free(extra[i]);
	free(extra);
	free(shell);
	free(cwd);
}

static void flush_stdin(struct proc *p) {
	while (p->in >= 0 && p->inq.len) {
		ssize_t w = write(p->in, p->inq.buf + p->inq.off, p->inq.len);
		if (w < 0 && errno == EINTR) continue;
		if (w < 0 && errno == EAGAIN) return;
		if (w <= 0) { /* reader gone: drop what is queued */
			proc_close_stdin(p);
			return;
		}
		stdin_total -= (size_t)w;
		bq_consume(&p->inq, (size_t)w);
	}
	if (p->in >= 0 && p->stdin_eof && !p->inq.len) proc_close_stdin(p);
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
			send_error(c, stream, ENOBUFS, "stdin queue full");
			break;
		} else {
			stdin_total += n;
		}
		flush_stdin(p);
		break;
	case T_SIGNAL:
		p = find_proc(c, stream);
		if (p && n >= 4) {
			uint32_t sig = get_be32(pl);
			if (sig >= 1 && sig < NSIG) kill(-p->pid, (int)sig);
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
		/* what each poll slot is: kind 0 signal, 1 listener, 2 chan, 3 stdout, 4 stderr, 5 stdin */
		int kind[3 + MAX_CHANS + 3 * MAX_PROCS], idx[3 + MAX_CHANS + 3 * MAX_PROCS];
		int n = 0, timeout = -1;
		long long now = now_ms();
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
			if (p->out >= 0) pf[n] = (struct pollfd){p->out, POLLIN, 0}, kind[n] = 3, idx[n++] = i;
			if (p->err >= 0) pf[n] = (struct pollfd){p->err, POLLIN, 0}, kind[n] = 4, idx[n++] = i;
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
			}
		}
		reap();
	}
}
