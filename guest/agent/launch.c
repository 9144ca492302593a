/* smolvm-agent launch: start a VMM the way SmolVM starts every process of a VM, and stay as its parent.
 *   - no file descriptor of the caller leaks in, except the ones named with --keep-fd (disk images, state files);
 *   - umask 077, a new session, stdin /dev/null, stdout and stderr to a log file (0600);
 *   - inside its cgroups from its first instruction (--cgroup DIR, repeatable: the pid is written to
 *     DIR/cgroup.procs before exec, so no thread ever runs outside them);
 *   - with --isolate, in network and IPC namespaces of its own (needs root);
 *   - with --tap NAME:FD, the existing (persistent) tap device NAME opened in the host's network namespace, before
 *     --isolate, and left open as descriptor FD for the VMM (QEMU: -netdev tap,fd=FD,vhost=off);
 *   - with --new-tap NAME:FD instead, a new tap device NAME created (it must not exist; needs CAP_NET_ADMIN) the same
 *     way; it is not persistent, so it goes when the VMM ends, however it ends. The options after it set it up
 *     before the VMM starts: --tap-mac MAC, --tap-addr A.B.C.D/PREFIX (then IPv6 off and IPv4 forwarding on for
 *     this interface, and the link up), --tap-neigh A.B.C.D=MAC (a permanent neighbour entry). One process, a few
 *     ioctls: what `ip` would do in several, off the start's critical path;
 *   - with --peer FD --peer-err FILE --peer-pidfile FILE --peer-exec N PROGRAM ARGS (N words), a socket pair: one end is the
 *     VMM's descriptor FD, the other goes to PROGRAM (passt: `--fd 3`) as its descriptor 3, started once the VMM
 *     is up, in a session of its own, at nice 19 (its start-up must not slow the VMM's; the caller renices it), its
 *     stderr to FILE. It outlives us; it sees end-of-file when the VMM ends;
 *   - with --chdir DIR, the VMM runs in DIR (Firecracker is given relative drive paths, so that the drive path a
 *     snapshot records resolves in each VM's own folder when another VM loads it);
 *   - with --stdout-fifo PATH, the VMM's stdout is a FIFO made at PATH (0600; its stderr still goes to the log):
 *     Firecracker writes the guest's serial console to its stdout, and the proxy reads it from there
 *     (--console-fifo). The FIFO is opened here O_RDWR | O_NONBLOCK: read-write so that opening it does not wait
 *     for a reader and the VMM can write before the proxy runs (the pipe buffer holds the first 64 KiB of boot
 *     messages); non-blocking so that a full FIFO (a proxy that is gone or slow) makes the VMM's writes fail,
 *     dropping console bytes, instead of stalling the vCPU that writes to the serial port. Only the VMM keeps it
 *     open, so the proxy sees end-of-file exactly when the VMM is gone;
 *   - returns once the VMM is up, printing its pid, or fails with the VMM's own message when it exits first. Up is,
 *     with --qmp SOCK, when its QMP monitor greets (it has finished initializing: the same moment -daemonize would
 *     return); with --ready-connect PATH, when a connect() to the Unix socket PATH succeeds (Firecracker's
 *     --api-sock: it listens there once it is ready to be configured). Exactly one of the two is given.
 * A small supervisor (a child of ours in its own session, so it outlives the caller as -daemonize would) is the
 * VMM's parent: when the VMM ends it reaps it at once (no zombie holds its cgroups), writes how it ended (exit code
 * or signal) to --status-file, and removes its cgroups. With --lease FILE --on-expire N HOOK..., it also holds the VM
 * to its lifetime and to its owner's (lease.c). We do not use QEMU's -daemonize: its fork is what `-sandbox
 * spawn=deny` forbids. */
#define _GNU_SOURCE
#include "launch.h"
#include "launch_tap.h"
#include "lease.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "proto.h"

#define MAX_KEEP 16
#define MAX_CGROUPS 8
#define MAX_TAPS 8

static long long now_ms(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int cmp_int(const void *a, const void *b) { return *(const int *)a - *(const int *)b; }

/* Close every fd >= 3 except `keep` (sorted). */
void close_fds_except(const int *keep, int nkeep) {
	int sorted[MAX_KEEP];
	int n = 0;
	for (int i = 0; i < nkeep && n < MAX_KEEP; i++)
		if (keep[i] >= 3) sorted[n++] = keep[i];
	qsort(sorted, (size_t)n, sizeof(int), cmp_int);
	unsigned lo = 3;
	for (int i = 0; i <= n; i++) {
		unsigned hi = i < n ? (unsigned)sorted[i] - 1 : ~0u;
		if (hi >= lo) {
			if (syscall(SYS_close_range, lo, hi, 0) < 0) { /* kernels before 5.9 */
				long max = sysconf(_SC_OPEN_MAX);
				for (long fd = lo; fd <= (long)hi && fd < (max > 0 ? max : 65536); fd++) close((int)fd);
			}
		}
		if (i < n) lo = (unsigned)sorted[i] + 1;
	}
	for (int i = 0; i < n; i++) { /* the child must inherit them */
		int fl = fcntl(sorted[i], F_GETFD);
		if (fl >= 0) fcntl(sorted[i], F_SETFD, fl & ~FD_CLOEXEC);
	}
}

static int write_file(const char *path, const char *text) {
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0) return -1;
	int r = write_all(fd, text, strlen(text));
	if (close(fd) < 0) r = -1;
	return r;
}

/* Does the Unix socket at `path` accept a connection? 1 yes, 0 not yet. The connection is closed at once: all
 * that is asked is that the VMM listens (Firecracker serves its API socket only once it is ready). */
static int accepts(const char *path) {
	struct sockaddr_un a = {.sun_family = AF_UNIX};
	if (strlen(path) >= sizeof a.sun_path) return 0;
	strcpy(a.sun_path, path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0); /* a full backlog: not yet, not a hang */
	if (fd < 0) return 0;
	int ok = connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
	close(fd);
	return ok;
}

/* Has the QMP monitor at `path` greeted us? 1 yes, 0 not yet. */
static int qmp_greets(const char *path, int wait_ms) {
	struct sockaddr_un a = {.sun_family = AF_UNIX};
	if (strlen(path) >= sizeof a.sun_path) return 0;
	strcpy(a.sun_path, path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) return 0;
	if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
		close(fd);
		return 0;
	}
	char buf[4096];
	size_t got = 0;
	long long deadline = now_ms() + wait_ms;
	int ok = 0;
	while (!ok && got < sizeof buf - 1) {
		int left = (int)(deadline - now_ms());
		struct pollfd pf = {fd, POLLIN, 0};
		if (left <= 0 || poll(&pf, 1, left) <= 0) break;
		ssize_t r = read(fd, buf + got, sizeof buf - 1 - got);
		if (r <= 0) break;
		got += (size_t)r;
		buf[got] = 0;
		ok = strstr(buf, "\"QMP\"") != NULL && memchr(buf, '\n', got) != NULL;
	}
	close(fd);
	return ok;
}

static void print_log_tail(const char *log) {
	int fd = open(log, O_RDONLY | O_CLOEXEC);
	if (fd < 0) return;
	struct stat st;
	if (fstat(fd, &st) == 0) {
		off_t start = st.st_size > 4096 ? st.st_size - 4096 : 0;
		char buf[4096];
		ssize_t r = pread(fd, buf, sizeof buf, start);
		if (r > 0) write_all(2, buf, (size_t)r);
	}
	close(fd);
}

static void write_status(const char *path, int status) {
	if (!path) return;
	char tmp[4200], b[128];
	snprintf(tmp, sizeof tmp, "%s.tmp", path);
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	int n = snprintf(b, sizeof b, "{\"code\":%d,\"signal\":%d,\"at\":%lld}\n",
			 WIFEXITED(status) ? WEXITSTATUS(status) : -1, WIFSIGNALED(status) ? WTERMSIG(status) : 0,
			 (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0) return;
	if (write_all(fd, b, (size_t)n) == 0 && close(fd) == 0) rename(tmp, path);
	else close(fd);
}

/* Start the peer on descriptor `end` (as its 3), as described above; returns its pid or -1. */
static pid_t start_peer(int end, const char *errfile, char **peer) {
	pid_t p = fork();
	if (p != 0) return p;
	setsid();
	signal(SIGHUP, SIG_IGN);
	if (setpriority(PRIO_PROCESS, 0, 19) < 0) { /* only slower to start otherwise */
	}
	if (end != 3 && dup2(end, 3) < 0) _exit(127); /* first: what is opened below must not land on 3 */
	int nul = open("/dev/null", O_RDWR);
	int err = errfile ? open(errfile, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW, 0600) : -1;
	if (nul < 0) _exit(127);
	dup2(nul, 0);
	dup2(nul, 1);
	dup2(err >= 0 ? err : nul, 2);
	int k3[1] = {3};
	close_fds_except(k3, 1); /* (also clears close-on-exec of 3: dup2 did) */
	execvp(peer[0], peer);
	dprintf(2, "launch: cannot run %s: %s\n", peer[0], strerror(errno));
	_exit(127);
}

int launch_main(int argc, char **argv) {
	const char *log = NULL, *pidfile = NULL, *qmp = NULL, *status_file = NULL, *cgroups[MAX_CGROUPS];
	const char *ready_connect = NULL, *chdir_to = NULL, *stdout_fifo = NULL;
	int keep[MAX_KEEP], nkeep = 0, ncg = 0, timeout_ms = 30000, isolate = 0, i, ntap = 0, peer_fd = -1, peer_end = -1;
	const char *peer_err = NULL, *peer_pidfile = NULL, *lease = NULL;
	char **peer = NULL, **hook = NULL;
	int nhook = 0;
	struct tap taps[MAX_TAPS];
	for (i = 2; i < argc && strcmp(argv[i], "--"); i++) {
		if (!strcmp(argv[i], "--isolate")) { /* flag: no value */
			isolate = 1;
			continue;
		}
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!v) goto usage;
		if (!strcmp(argv[i], "--log")) log = v;
		else if (!strcmp(argv[i], "--pidfile")) pidfile = v;
		else if (!strcmp(argv[i], "--qmp")) qmp = v;
		else if (!strcmp(argv[i], "--ready-connect")) ready_connect = v;
		else if (!strcmp(argv[i], "--chdir")) chdir_to = v;
		else if (!strcmp(argv[i], "--stdout-fifo")) stdout_fifo = v;
		else if (!strcmp(argv[i], "--status-file")) status_file = v;
		else if (!strcmp(argv[i], "--timeout")) timeout_ms = atoi(v);
		else if (!strcmp(argv[i], "--keep-fd") && nkeep < MAX_KEEP) keep[nkeep++] = atoi(v);
		else if (!strcmp(argv[i], "--cgroup") && ncg < MAX_CGROUPS) cgroups[ncg++] = v;
		else if (!strcmp(argv[i], "--peer")) {
			peer_fd = atoi(v);
			if (peer_fd < 3 || peer_fd >= 1024) goto usage;
		} else if (!strcmp(argv[i], "--peer-err")) peer_err = v;
		else if (!strcmp(argv[i], "--lease")) lease = v;
		else if (!strcmp(argv[i], "--on-expire")) {
			nhook = atoi(v);
			if (nhook < 1 || nhook > 64 || i + 1 + nhook >= argc) goto usage;
			hook = argv + i + 2;
			for (int k = 0; k < nhook; k++)
				if (!strcmp(hook[k], "--")) goto usage;
			i += nhook;
		}
		else if (!strcmp(argv[i], "--peer-pidfile")) peer_pidfile = v;
		else if (!strcmp(argv[i], "--peer-exec")) {
			int n = atoi(v);
			if (n < 1 || i + 1 + n >= argc) goto usage;
			peer = calloc((size_t)n + 1, sizeof *peer);
			if (!peer) return 125;
			for (int k = 0; k < n; k++) {
				if (!strcmp(argv[i + 2 + k], "--")) goto usage; /* the count is wrong */
				peer[k] = argv[i + 2 + k];
			}
			i += n;
		}
		else if (!strcmp(argv[i], "--tap-mac") || !strcmp(argv[i], "--tap-addr") || !strcmp(argv[i], "--tap-neigh")) {
			struct tap *t = ntap ? &taps[ntap - 1] : NULL;
			int bad = !t || !t->create;
			if (!bad && argv[i][6] == 'm') bad = parse_mac6(v, t->mac) < 0 || !(t->has_mac = 1);
			else if (!bad && argv[i][6] == 'a') bad = parse_addr(v, t) < 0 || !(t->has_addr = 1);
			else if (!bad) bad = parse_neigh(v, t) < 0 || !(t->has_neigh = 1);
			if (bad) {
				fprintf(stderr, "launch: %s %s: bad value, or not after a --new-tap\n", argv[i], v);
				return 2;
			}
		}
		else if ((!strcmp(argv[i], "--tap") || !strcmp(argv[i], "--new-tap")) && ntap < MAX_TAPS) {
			memset(&taps[ntap], 0, sizeof taps[ntap]);
			if (parse_tap(v, &taps[ntap]) < 0) {
				fprintf(stderr, "launch: %s wants NAME:FD (FD 3-1023), got %s\n", argv[i], v);
				return 2;
			}
			taps[ntap].create = argv[i][2] == 'n';
			for (int k = 0; k < nkeep; k++) /* a descriptor number may carry one thing only */
				if (keep[k] == taps[ntap].fd) goto usage;
			for (int k = 0; k < ntap; k++)
				if (taps[k].fd == taps[ntap].fd) goto usage;
			ntap++;
		}
		else goto usage;
		i++;
	}
	if (i + 1 >= argc || !log || !qmp == !ready_connect || (peer_fd >= 0) != (peer != NULL)) goto usage;
	for (int k = 0; k < nkeep; k++)
		if (keep[k] == peer_fd) goto usage;
	for (int k = 0; k < ntap; k++)
		if (taps[k].fd == peer_fd) goto usage;
	char **prog = argv + i + 1;
	umask(077);
	for (int k = 0; k < ntap; k++) /* a --keep-fd given after the --tap with its number */
		for (int j = 0; j < nkeep; j++)
			if (keep[j] == taps[k].fd) goto usage;
	close_fds_except(keep, nkeep);
	/* tap devices are opened here, in the caller's network namespace, before the VMM gets one of its own */
	for (int k = 0; k < ntap; k++) {
		const char *step = "";
		if (open_tap(&taps[k], &step) < 0) {
			fprintf(stderr, "launch: tap %s: %s: %s\n", taps[k].name, step, strerror(errno));
			return 125;
		}
	}
	if (peer) { /* the VMM's end at peer_fd (inherited), the peer's end kept here until the VMM is up */
		int sv[2];
		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
			perror("launch: socketpair");
			return 125;
		}
		if (sv[0] == peer_fd) {
			fcntl(sv[0], F_SETFD, 0);
		} else if (sv[1] == peer_fd) { /* move the peer's end out of the way first */
			int moved = fcntl(sv[1], F_DUPFD_CLOEXEC, 3);
			if (moved < 0) return 125;
			sv[1] = moved;
			if (dup2(sv[0], peer_fd) < 0) return 125;
			close(sv[0]);
		} else {
			if (dup2(sv[0], peer_fd) < 0) return 125;
			close(sv[0]);
		}
		peer_end = sv[1];
	}
	if (status_file) unlink(status_file);
	int logfd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	int nul = open("/dev/null", O_RDWR | O_CLOEXEC);
	int ready[2];
	if (logfd < 0 || nul < 0 || pipe2(ready, O_CLOEXEC) < 0) {
		fprintf(stderr, "launch: cannot open %s: %s\n", log, strerror(errno));
		return 125;
	}
	/* opened after every descriptor with a set number is in place, so it cannot take one of theirs; a stale FIFO
	 * (or anything else) at the path goes first: the run directory is private to this VM */
	int fifo = -1;
	if (stdout_fifo) {
		if ((unlink(stdout_fifo) < 0 && errno != ENOENT) || mkfifo(stdout_fifo, 0600) < 0 ||
		    (fifo = open(stdout_fifo, O_RDWR | O_NONBLOCK | O_CLOEXEC)) < 0) {
			fprintf(stderr, "launch: cannot make the FIFO %s: %s\n", stdout_fifo, strerror(errno));
			return 125;
		}
	}
	pid_t sup = fork();
	if (sup < 0) {
		perror("launch: fork");
		return 125;
	}
	if (sup == 0) { /* the supervisor */
		close(ready[0]);
		setsid();
		signal(SIGHUP, SIG_IGN);
		pid_t vmm = fork();
		if (vmm == 0) {
			char me[32];
			snprintf(me, sizeof me, "%d\n", (int)getpid());
			for (int k = 0; k < ncg; k++) {
				char path[4200];
				snprintf(path, sizeof path, "%s/cgroup.procs", cgroups[k]);
				if (write_file(path, me) < 0) {
					dprintf(logfd, "launch: cannot join cgroup %s: %s\n", cgroups[k], strerror(errno));
					_exit(125);
				}
			}
			/* a network and IPC namespace of its own: an escaped VMM reaches no network, no host service on
			 * loopback, no SysV IPC; its disk, RAM and sockets are already open */
			if (isolate && unshare(CLONE_NEWNET | CLONE_NEWIPC) < 0) {
				dprintf(logfd, "launch: cannot isolate the VMM (unshare): %s\n", strerror(errno));
				_exit(125);
			}
			if (chdir_to && chdir(chdir_to) < 0) {
				dprintf(logfd, "launch: cannot change the VMM's directory to %s: %s\n", chdir_to, strerror(errno));
				_exit(125);
			}
			dup2(nul, 0);
			dup2(fifo >= 0 ? fifo : logfd, 1); /* (dup2 clears close-on-exec on the copy; the original closes) */
			dup2(logfd, 2);
			execvp(prog[0], prog);
			dprintf(2, "launch: cannot run %s: %s\n", prog[0], strerror(errno));
			_exit(127);
		}
		for (int k = 0; k < nkeep; k++) close(keep[k]); /* the VMM has them now */
		for (int k = 0; k < ntap; k++) close(taps[k].fd);
		if (fifo >= 0) close(fifo); /* the VMM's alone: its end-of-file is the VMM's end */
		if (peer) { /* neither end: the peer must see end-of-file when the VMM ends */
			close(peer_fd);
			close(peer_end);
		}
		dup2(nul, 0);
		dup2(nul, 1);
		dup2(nul, 2);
		if (!hook) close(logfd); /* else the expire hook writes there */
		char msg[64];
		int status = 0, n;
		if (vmm < 0) {
			n = snprintf(msg, sizeof msg, "fail fork\n");
			write_all(ready[1], msg, (size_t)n);
			_exit(1);
		}
		if (pidfile) {
			char tmp[4200], me[32];
			snprintf(tmp, sizeof tmp, "%s.tmp", pidfile);
			snprintf(me, sizeof me, "%d\n", (int)vmm);
			int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
			if (fd < 0 || write_all(fd, me, strlen(me)) < 0 || close(fd) < 0 || rename(tmp, pidfile) < 0) {
				kill(vmm, SIGKILL);
				n = snprintf(msg, sizeof msg, "fail pidfile\n");
				write_all(ready[1], msg, (size_t)n);
				_exit(1);
			}
		}
		int reported = 0;
		long long deadline = now_ms() + timeout_ms;
		for (;;) { /* until the VMM is up (tell the caller) or gone */
			pid_t w = waitpid(vmm, &status, WNOHANG);
			if (w == vmm) break;
			if (w < 0 && errno != EINTR) break;
			if (qmp ? qmp_greets(qmp, 200) : accepts(ready_connect)) {
				n = snprintf(msg, sizeof msg, "ok %d\n", (int)vmm);
				write_all(ready[1], msg, (size_t)n);
				close(ready[1]);
				reported = 1;
				/* then until it ends, holding it to its lease */
				lease_wait(vmm, &status, lease, hook, nhook, hook ? logfd : -1);
				break;
			} else if (now_ms() > deadline) {
				kill(vmm, SIGKILL);
			} else {
				usleep(3000);
			}
		}
		if (!reported) {
			n = snprintf(msg, sizeof msg, "exit %d %d\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1,
				     WIFSIGNALED(status) ? WTERMSIG(status) : 0);
			write_all(ready[1], msg, (size_t)n);
		}
		write_status(status_file, status);
		for (int k = 0; k < ncg; k++) rmdir(cgroups[k]);
		_exit(0);
	}
	close(ready[1]);
	close(nul);
	close(logfd);
	if (fifo >= 0) close(fifo);
	for (int k = 0; k < nkeep; k++) close(keep[k]);
	for (int k = 0; k < ntap; k++) close(taps[k].fd);
	if (peer) close(peer_fd);
	char msg[64] = {0};
	size_t got = 0;
	while (got < sizeof msg - 1) {
		struct pollfd pf = {ready[0], POLLIN, 0};
		if (poll(&pf, 1, timeout_ms + 5000) <= 0) break;
		ssize_t r = read(ready[0], msg + got, sizeof msg - 1 - got);
		if (r <= 0) break;
		got += (size_t)r;
		if (memchr(msg, '\n', got)) break;
	}
	int pid = 0, code = 0, sig = 0;
	if (sscanf(msg, "ok %d", &pid) == 1) {
		if (peer) {
			pid_t pp = start_peer(peer_end, peer_err, peer);
			close(peer_end);
			if (pp < 0) { /* the VMM runs without a network: say so, the caller decides */
				fprintf(stderr, "launch: cannot start %s: %s\n", peer[0], strerror(errno));
				printf("%d\n", pid);
				return 3;
			}
			if (peer_pidfile) {
				char tmp[4200], line[32];
				snprintf(tmp, sizeof tmp, "%s.tmp", peer_pidfile);
				snprintf(line, sizeof line, "%d\n", (int)pp);
				int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
				if (fd < 0 || write_all(fd, line, strlen(line)) < 0 || close(fd) < 0 || rename(tmp, peer_pidfile) < 0)
					fprintf(stderr, "launch: cannot write %s: %s\n", peer_pidfile, strerror(errno));
			}
			printf("%d\npeer %d\n", pid, (int)pp);
			return 0;
		}
		printf("%d\n", pid);
		return 0;
	}
	print_log_tail(log);
	if (sscanf(msg, "exit %d %d", &code, &sig) == 2) {
		if (sig) fprintf(stderr, "\n(the VMM was killed by signal %d)\n", sig);
		return code > 0 ? code : 1;
	}
	if (!got) {
		kill(sup, SIGKILL);
		fprintf(stderr, "launch: the VMM did not become ready within %d ms\n", timeout_ms);
	} else {
		fprintf(stderr, "launch: %s", msg);
	}
	return 1;
usage:
	fprintf(stderr, "usage: smolvm-agent launch --log FILE (--qmp SOCK | --ready-connect SOCK) [--chdir DIR] [--stdout-fifo PATH] "
			"[--pidfile F] [--status-file F] [--timeout MS] [--lease F --on-expire N HOOK...] "
			"[--keep-fd N]... [--tap NAME:FD | --new-tap NAME:FD [--tap-mac MAC] [--tap-addr A/P] [--tap-neigh A=MAC]]... "
			"[--peer FD [--peer-err FILE] [--peer-pidfile FILE] --peer-exec N PEER ARGS...] [--cgroup DIR]... [--isolate] -- PROGRAM ARGS...\n");
	return 2;
}
