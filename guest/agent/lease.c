/* The lifetime of a VM, enforced by its VMM's supervisor (launch.c), which outlives whoever started the VM.
 *
 * The lease file (written by the host library, atomically: a new file renamed over the old) is one line:
 *     DEADLINE ACTION OWNER_PID OWNER_START
 * DEADLINE: when the VM's lifetime ends, in ms since the epoch (0: no lifetime); ACTION: "delete" or "pause";
 * OWNER_PID and OWNER_START (field 22 of /proc/PID/stat, the process's start time): the process the VM was made
 * for (0 0: none, the VM is kept). The supervisor runs the expire hook (argv, plus "timeout" or "owner" as its last
 * argument) when the deadline passes or the owner is gone. The hook (the smolvm CLI) re-reads the lease, and deletes
 * or pauses the VM cleanly (its network, ports and record go too). If the hook fails, the supervisor ends the VMM
 * itself, so a VM never outlives its lease.
 *
 * Waiting costs nothing: one poll() on pidfds (the VMM, the owner, the hook) and an inotify watch on the lease's
 * folder, with the deadline as its timeout. Kernels without pidfd_open (before 5.3) are polled once a second. */
#define _GNU_SOURCE
#include "lease.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

struct lease {
	long long deadline;
	int pause;
	long owner;
	unsigned long long owner_start;
};

static long long wall_ms(void) {
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int pidfd_of(pid_t pid) { return (int)syscall(SYS_pidfd_open, pid, 0); }

/* Field 22 of /proc/PID/stat (start time in clock ticks since boot), or 0 if the process is gone or has ended (a
 * zombie: where PID 1 does not reap, a killed owner stays one). */
static unsigned long long start_time(long pid) {
	char path[64], buf[1024];
	snprintf(path, sizeof path, "/proc/%ld/stat", pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) return 0;
	ssize_t n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0) return 0;
	buf[n] = 0;
	char *p = strrchr(buf, ')'); /* the command name may hold spaces and parentheses */
	if (!p) return 0;
	p++;
	if (p[0] == ' ' && (p[1] == 'Z' || p[1] == 'X')) return 0;
	for (int field = 3; field < 22 && p; field++) p = strchr(p + 1, ' ');
	return p ? strtoull(p + 1, NULL, 10) : 0;
}

/* 1 read, 0 no lease (or an unreadable one: treated as none, the VM is then only ended explicitly). */
static int read_lease(const char *path, struct lease *l) {
	memset(l, 0, sizeof *l);
	char buf[256], action[16];
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0) return 0;
	ssize_t n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0) return 0;
	buf[n] = 0;
	if (sscanf(buf, "%lld %15s %ld %llu", &l->deadline, action, &l->owner, &l->owner_start) != 4 || l->deadline < 0 ||
	    l->owner < 0) {
		memset(l, 0, sizeof *l);
		return 0;
	}
	l->pause = !strcmp(action, "pause");
	return 1;
}

static pid_t run_hook(char **hook, int nhook, const char *reason, int logfd) {
	pid_t p = fork();
	if (p != 0) return p;
	char *argv[nhook + 2];
	for (int k = 0; k < nhook; k++) argv[k] = hook[k];
	argv[nhook] = (char *)reason;
	argv[nhook + 1] = NULL;
	int nul = open("/dev/null", O_RDWR);
	if (nul >= 0) dup2(nul, 0);
	if (logfd >= 0) {
		dup2(logfd, 1);
		dup2(logfd, 2);
	}
	execvp(argv[0], argv);
	dprintf(2, "launch: cannot run the expire hook %s: %s\n", argv[0], strerror(errno));
	_exit(127);
}

void lease_wait(pid_t vmm, int *status, const char *lease_path, char **hook, int nhook, int logfd) {
	int vfd = pidfd_of(vmm);
	int ino = -1, wd = -1;
	const char *base = lease_path;
	if (lease_path) {
		ino = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
		char dir[4200];
		snprintf(dir, sizeof dir, "%s", lease_path);
		char *slash = strrchr(dir, '/');
		if (slash) {
			*slash = 0;
			base = strrchr(lease_path, '/') + 1; /* (not into dir: it ends with this block) */
		} else {
			strcpy(dir, ".");
		}
		if (ino >= 0) wd = inotify_add_watch(ino, dir, IN_MOVED_TO | IN_CLOSE_WRITE | IN_DELETE);
		if (wd < 0 && ino >= 0) {
			close(ino);
			ino = -1;
		}
	}
	struct lease l;
	memset(&l, 0, sizeof l);
	l.deadline = -1; /* differs from any lease read */
	int reread = 1, ofd = -1, fired = 0;
	pid_t hook_pid = -1;
	for (;;) {
		if (reread && lease_path) {
			reread = 0;
			struct lease nl;
			read_lease(lease_path, &nl);
			if (nl.deadline != l.deadline || nl.pause != l.pause || nl.owner != l.owner ||
			    nl.owner_start != l.owner_start) {
				fired = 0; /* a new lease (extended, paused, kept) is enforced afresh */
				if (ofd >= 0) close(ofd);
				ofd = -1;
				if (nl.owner > 0) {
					ofd = pidfd_of((pid_t)nl.owner);
					/* the pid may have been reused by another process since: compare start times */
					if (start_time(nl.owner) != nl.owner_start && ofd >= 0) {
						close(ofd);
						ofd = -2; /* gone */
					}
				}
			}
			l = nl;
		}
		int owner_gone = l.owner > 0 && (ofd == -2 || (ofd == -1 && start_time(l.owner) != l.owner_start));
		long long now = wall_ms();
		int expired = l.deadline > 0 && now >= l.deadline;
		if (!fired && hook_pid < 0 && (owner_gone || expired)) {
			fired = 1;
			const char *reason = owner_gone ? "owner" : "timeout";
			hook_pid = nhook > 0 ? run_hook(hook, nhook, reason, logfd) : -1;
			if (hook_pid < 0 && (owner_gone || !l.pause)) kill(vmm, SIGKILL);
		}
		struct pollfd pf[4];
		int np = 0, hfd = -1;
		if (vfd >= 0) pf[np++] = (struct pollfd){vfd, POLLIN, 0};
		if (ino >= 0) pf[np++] = (struct pollfd){ino, POLLIN, 0};
		if (ofd >= 0 && !fired) pf[np++] = (struct pollfd){ofd, POLLIN, 0};
		if (hook_pid > 0) {
			hfd = pidfd_of(hook_pid);
			if (hfd >= 0) pf[np++] = (struct pollfd){hfd, POLLIN, 0};
		}
		int timeout = -1;
		if (l.deadline > 0 && !fired) {
			long long left = l.deadline - now;
			timeout = left < 0 ? 0 : left > 3600000 ? 3600000 : (int)left;
		}
		/* without pidfds (old kernels), look again every second */
		if (vfd < 0 || (l.owner > 0 && ofd == -1 && !fired) || (hook_pid > 0 && hfd < 0))
			timeout = timeout < 0 || timeout > 1000 ? 1000 : timeout;
		int r = poll(pf, (nfds_t)np, timeout);
		if (hfd >= 0) close(hfd);
		if (r < 0 && errno != EINTR) {
			usleep(100000);
		}
		if (hook_pid > 0) {
			int hs;
			if (waitpid(hook_pid, &hs, WNOHANG) == hook_pid) {
				hook_pid = -1;
				/* the hook could not end the VM as the lease says: end it here (a pause that failed too) */
				if (!WIFEXITED(hs) || WEXITSTATUS(hs) != 0) kill(vmm, SIGKILL);
			}
		}
		pid_t w = waitpid(vmm, status, WNOHANG);
		if (w == vmm || (w < 0 && errno == ECHILD)) break;
		if (ino >= 0) {
			char ev[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
			ssize_t n;
			while ((n = read(ino, ev, sizeof ev)) > 0) {
				for (char *p = ev; p < ev + n;) {
					struct inotify_event *e = (struct inotify_event *)p;
					if (e->len && !strcmp(e->name, base)) reread = 1;
					p += sizeof *e + e->len;
				}
			}
		} else if (lease_path) {
			reread = 1;
		}
		if (ofd >= 0 && !fired) {
			struct pollfd o = {ofd, POLLIN, 0};
			if (poll(&o, 1, 0) > 0) { /* the owner ended */
				close(ofd);
				ofd = -2;
			}
		}
	}
	if (vfd >= 0) close(vfd);
	if (ofd >= 0) close(ofd);
	if (ino >= 0) close(ino);
}
