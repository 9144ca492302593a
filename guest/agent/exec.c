/* Starting commands: argv or shell, environment, working directory, user, optional terminal. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pty.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include "server_int.h"

struct user {
	uid_t uid;
	gid_t gid;
	char home[256];
	char name[64];
};

/* Look a name or number up in a passwd-style file (7 fields: passwd; 4: group). Fills fields[] from the matching
 * line (kept in line[]). Returns 0 when found. */
static int lookup_file(const char *file, const char *who, int nfields, char *line, size_t linesz, char **fields) {
	FILE *f = fopen(file, "re");
	int numeric = who[0] && strspn(who, "0123456789") == strlen(who);
	while (f && fgets(line, (int)linesz, f)) {
		char *rest = line, *tok;
		int i = 0;
		line[strcspn(line, "\n")] = 0;
		while (i < nfields && (tok = strsep(&rest, ":"))) fields[i++] = tok; /* keeps empty fields, unlike strtok */
		if (i < nfields - 1 || i < 3 || !fields[2][0]) continue; /* an empty id field is not id 0 */
		int match = numeric ? (strtoul(fields[2], NULL, 10) == strtoul(who, NULL, 10)) : !strcmp(fields[0], who);
		if (!match) continue;
		fclose(f);
		return 0;
	}
	if (f) fclose(f);
	return -1;
}

/* Look a user up by name or number, optionally with a group: "name", "uid", "name:group", "uid:gid" (the forms of an
 * OCI image's User). No NSS in a static binary: /etc/passwd and /etc/group are read directly. Returns 0 when found. */
static int lookup_user(const char *spec, struct user *u) {
	char who[128], line[4096], *fields[7] = {0};
	const char *colon = strchr(spec, ':');
	size_t wl = colon ? (size_t)(colon - spec) : strlen(spec);
	if (wl == 0 || wl >= sizeof who) return -1;
	memcpy(who, spec, wl);
	who[wl] = 0;
	int numeric = strspn(who, "0123456789") == wl;
	if (lookup_file("/etc/passwd", who, 7, line, sizeof line, fields) == 0 && fields[5]) {
		u->uid = (uid_t)strtoul(fields[2], NULL, 10);
		u->gid = (gid_t)strtoul(fields[3], NULL, 10);
		snprintf(u->home, sizeof u->home, "%s", fields[5]);
		snprintf(u->name, sizeof u->name, "%s", fields[0]);
	} else if (numeric) { /* a uid with no passwd entry is still a valid identity (group 0, as runc gives it) */
		u->uid = (uid_t)strtoul(who, NULL, 10);
		u->gid = 0;
		snprintf(u->home, sizeof u->home, "/");
		snprintf(u->name, sizeof u->name, "%.63s", who);
	} else {
		return -1;
	}
	if (colon) {
		const char *g = colon + 1;
		if (!*g) return -1;
		if (strspn(g, "0123456789") == strlen(g)) {
			u->gid = (gid_t)strtoul(g, NULL, 10);
		} else {
			char *gf[4] = {0};
			if (lookup_file("/etc/group", g, 4, line, sizeof line, gf) < 0) return -1;
			u->gid = (gid_t)strtoul(gf[2], NULL, 10);
		}
	}
	return 0;
}

static int env_replace(char **env, int n, char *entry) {
	size_t kl = strcspn(entry, "=");
	for (int j = 0; j < n; j++)
		if (!strncmp(env[j], entry, kl) && env[j][kl] == '=') {
			env[j] = entry;
			return n;
		}
	env[n] = entry;
	return n + 1;
}

/* The child's environment: base, then run-time env (vm.env), then the user's identity, then the request's. */
static char **build_env(char **extra, int nextra, char **ident, int nident) {
	char **dyn = env_dynamic();
	int nbase = 0, ndyn = 0;
	while (opts->base_env && opts->base_env[nbase]) nbase++;
	while (dyn && dyn[ndyn]) ndyn++;
	char **env = calloc((size_t)(nbase + ndyn + nident + nextra + 1), sizeof(char *));
	if (!env) return NULL;
	int n = 0;
	for (int i = 0; i < nbase; i++) n = env_replace(env, n, opts->base_env[i]);
	for (int i = 0; i < ndyn; i++) n = env_replace(env, n, dyn[i]);
	for (int i = 0; i < nident; i++) n = env_replace(env, n, ident[i]);
	for (int i = 0; i < nextra; i++) n = env_replace(env, n, extra[i]);
	env[n] = NULL;
	return env;
}

/* The program to execute, searched in the command's own PATH (execvpe would search the agent's), as execvp does: a
 * name with a slash is used as it is; otherwise the first executable regular file on PATH. Returns a malloc'd path,
 * or NULL with *err set: EACCES when a file of that name exists on PATH but cannot be executed (exit 126), else
 * ENOENT (exit 127). A name without a slash is never looked up in the working directory. */
static char *resolve_program(const char *name, char **env, int *err) {
	*err = 0;
	if (strchr(name, '/')) return strdup(name);
	*err = ENOENT;
	if (!*name) return NULL;
	const char *path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
	for (char **e = env; e && *e; e++)
		if (!strncmp(*e, "PATH=", 5)) path = *e + 5;
	while (*path) {
		size_t len = strcspn(path, ":");
		char *full = NULL;
		if (asprintf(&full, "%.*s/%s", (int)len, len ? path : ".", name) > 0) {
			struct stat st;
			if (stat(full, &st) == 0) {
				if (S_ISREG(st.st_mode) && access(full, X_OK) == 0) return full;
				*err = EACCES; /* there, but not an executable file: keep looking, remember why */
			}
			free(full);
		}
		path += len + (path[len] == ':');
	}
	return NULL;
}

struct child_spec {
	int in, out, err; /* for a terminal: all the slave */
	int pty;
	const char *cwd;
	const char *program; /* resolved in the command's PATH; NULL: lookup_err says why not */
	int lookup_err;
	char **argv, **env;
	const struct user *user; /* NULL: stay root */
};

/* The vfork child: only system calls until it execs or _exits, and its own stack frame, so the parent's locals stay
 * intact. */
static __attribute__((noinline, noreturn)) void exec_child(const struct child_spec *c) {
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL); /* the agent blocks SIGCHLD */
	signal(SIGPIPE, SIG_DFL);	       /* and ignores SIGPIPE; nothing else is changed */
	setsid();
	if (c->pty) ioctl(c->in, TIOCSCTTY, 0);
	dup2(c->in >= 0 ? c->in : open("/dev/null", O_RDONLY), 0);
	dup2(c->out, 1);
	dup2(c->err, 2);
	/* every fd of the agent is close-on-exec; this is a safety net (one call where available) */
	if (syscall(SYS_close_range, 3, ~0u, 0) < 0)
		for (int fd = 3; fd < 1024; fd++) close(fd);
	if (c->user && (setgroups(0, NULL) < 0 || setgid(c->user->gid) < 0 || setuid(c->user->uid) < 0)) {
		dprintf(2, "smolvm: cannot become user %s: %s\n", c->user->name, strerror(errno));
		_exit(126);
	}
	if (c->cwd && chdir(c->cwd) < 0) {
		dprintf(2, "smolvm: cwd %s: %s\n", c->cwd, strerror(errno));
		_exit(126);
	}
	int e = c->lookup_err;
	if (c->program) {
		execve(c->program, c->argv, c->env);
		e = errno;
	}
	dprintf(2, "smolvm: exec %s: %s\n", c->argv[0], strerror(e));
	_exit(e == ENOENT ? 127 : 126);
}

/* vfork: no page-table copy and no copy-on-write faults, which software emulation makes expensive. Kept in its own
 * function so no caller's locals live across the vfork. */
static __attribute__((noinline)) pid_t spawn_child(const struct child_spec *c) {
	pid_t pid = vfork();
	if (pid == 0) exec_child(c);
	return pid;
}

void do_resize(struct proc *p, const uint8_t *pl, size_t n) {
	if (n < 4) return;
	struct winsize ws = {.ws_col = (unsigned short)((pl[0] << 8) | pl[1]), .ws_row = (unsigned short)((pl[2] << 8) | pl[3])};
	ioctl(p->out, TIOCSWINSZ, &ws);
}

void do_exec(int c, uint32_t stream, const uint8_t *pl, size_t n) {
	int nargs = 0, nenv = 0, want_stdin = 0, want_pty = 0, keep = 0;
	uint32_t outwin = 0;
	struct winsize ws = {.ws_row = 24, .ws_col = 80};
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
	char *shell = NULL, *cwd = NULL, *user = NULL;
	char *ident[4] = {0};
	int ai = 0, ei = 0, ni = 0;
	struct user u;
	off = 0;
	while (field_next(pl, n, &off, &tag, &v, &vl) == 1) {
		if (tag != F_STDIN && tag != F_PTY && tag != F_KEEP && tag != F_OUTWIN && memchr(v, 0, vl)) {
			send_error(c, stream, EINVAL, "NUL byte in exec request");
			goto out;
		}
		if (tag == F_ARG) argv[ai++] = dupstr(v, vl);
		else if (tag == F_ENV) extra[ei++] = dupstr(v, vl);
		else if (tag == F_SHELL) { free(shell); shell = dupstr(v, vl); }
		else if (tag == F_CWD) { free(cwd); cwd = dupstr(v, vl); }
		else if (tag == F_USER) { free(user); user = dupstr(v, vl); }
		else if (tag == F_STDIN) want_stdin = vl > 0 && v[0];
		else if (tag == F_KEEP) keep = vl > 0 ? v[0] : 0; /* 1 background, 2 background and detached at once */
		else if (tag == F_OUTWIN && vl == 4) outwin = get_be32(v);
		else if (tag == F_PTY && vl >= 4) {
			want_pty = 1;
			ws.ws_col = (unsigned short)((v[0] << 8) | v[1]);
			ws.ws_row = (unsigned short)((v[2] << 8) | v[3]);
		}
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
	if (user) {
		if (lookup_user(user, &u) < 0) {
			char msg[128];
			snprintf(msg, sizeof msg, "no such user: %.64s", user);
			send_error(c, stream, ENOENT, msg);
			goto out;
		}
		if (asprintf(&ident[ni], "HOME=%s", u.home) > 0) ni++;
		if (asprintf(&ident[ni], "USER=%s", u.name) > 0) ni++;
		if (asprintf(&ident[ni], "LOGNAME=%s", u.name) > 0) ni++;
	}
	if (want_pty && !getenv("TERM")) ident[ni++] = strdup("TERM=xterm-256color");
	struct proc *p = new_proc(c, stream, K_EXEC);
	if (!p) goto out;
	struct child_spec cs = {.in = -1, .cwd = cwd, .argv = argv, .user = user ? &u : NULL};
	int pin[2] = {-1, -1}, pout[2] = {-1, -1}, perr[2] = {-1, -1}, master = -1, slave = -1;
	if (want_pty) {
		if (openpty(&master, &slave, NULL, NULL, &ws) < 0) {
			send_errno(c, stream, errno, "openpty");
			free_proc(p);
			goto out;
		}
		fcntl(master, F_SETFD, FD_CLOEXEC);
		fcntl(slave, F_SETFD, FD_CLOEXEC);
		cs.in = cs.out = cs.err = slave;
		cs.pty = 1;
	} else {
		if ((want_stdin && pipe2(pin, O_CLOEXEC)) || pipe2(pout, O_CLOEXEC) || pipe2(perr, O_CLOEXEC)) {
			int e = errno;
			for (int *fd = &pin[0]; fd <= &pin[1]; fd++) if (*fd >= 0) close(*fd);
			for (int *fd = &pout[0]; fd <= &pout[1]; fd++) if (*fd >= 0) close(*fd);
			for (int *fd = &perr[0]; fd <= &perr[1]; fd++) if (*fd >= 0) close(*fd);
			send_errno(c, stream, e, "pipe");
			free_proc(p);
			goto out;
		}
		cs.in = pin[0];
		cs.out = pout[1];
		cs.err = perr[1];
	}
	char **env = build_env(extra, ei, ident, ni);
	cs.env = env;
	char *program = resolve_program(argv[0], env, &cs.lookup_err);
	cs.program = program;
	pid_t pid = spawn_child(&cs);
	int e = errno;
	free(env);
	free(program);
	if (want_pty) {
		close(slave);
		p->out = master;
		p->in = dup(master);
		fcntl(p->in, F_SETFD, FD_CLOEXEC);
		p->pty = 1;
	} else {
		close(pout[1]);
		close(perr[1]);
		if (pin[0] >= 0) close(pin[0]);
		p->out = pout[0];
		p->err = perr[0];
		p->in = pin[1];
	}
	if (pid < 0) {
		if (p->out >= 0) close(p->out);
		if (p->err >= 0) close(p->err);
		if (p->in >= 0) close(p->in);
		free_proc(p);
		send_errno(c, stream, e, "fork");
		goto out;
	}
	p->pid = pid;
	p->keep = keep != 0;
	char cmdbuf[256];
	size_t cl = 0;
	cmdbuf[0] = 0;
	for (int i = (argv[1] && !strcmp(argv[0], "/bin/sh") && !strcmp(argv[1], "-c") && argv[2]) ? 2 : 0; argv[i] && cl < sizeof cmdbuf - 1; i++)
		cl += (size_t)snprintf(cmdbuf + cl, sizeof cmdbuf - cl, "%s%s", cl ? " " : "", argv[i]);
	p->cmd = strdup(cmdbuf);
	set_nonblock(p->out, 1);
	if (p->err >= 0) set_nonblock(p->err, 1);
	if (p->in >= 0) set_nonblock(p->in, 1);
	struct fbuf fb = {0};
	fb_u32(&fb, ST_PID, (uint32_t)pid);
	set_out_window(p, outwin, &fb);
	chan_send(c, T_STARTED, stream, fb.b, fb.n);
	if (keep == 2) { /* detached: nobody follows it from here, even if it ends at once; CONNECT reattaches */
		p->chan = -1;
		p->out_window = 0;
	}
out:
	for (int i = 0; i < ai; i++) free(argv[i]);
	free(argv);
	for (int i = 0; i < ei; i++) free(extra[i]);
	free(extra);
	for (int i = 0; i < ni; i++) free(ident[i]);
	free(shell);
	free(cwd);
	free(user);
}

/* Every command the agent runs: pid, command line, running or finished (kept ones only), attached or not. */
void do_ps(int c, uint32_t stream) {
	struct fbuf *fb = calloc(1, sizeof *fb);
	if (!fb) return;
	for (int i = 0; i < MAX_PROCS; i++) {
		struct proc *p = &procs[i];
		if (!p->used || p->kind != K_EXEC) continue;
		struct fbuf one = {0};
		uint8_t running = !p->exited, attached = p->chan >= 0, keep = (uint8_t)p->keep;
		fb_u32(&one, P_PID, (uint32_t)p->pid);
		fb_str(&one, P_CMD, p->cmd ? p->cmd : "");
		fb_bytes(&one, P_RUNNING, &running, 1);
		fb_bytes(&one, P_ATTACHED, &attached, 1);
		fb_bytes(&one, P_KEEP, &keep, 1);
		if (p->exited) {
			uint8_t ex[8];
			put_be32(ex, (uint32_t)(WIFEXITED(p->status) ? WEXITSTATUS(p->status) : -1));
			put_be32(ex + 4, (uint32_t)(WIFSIGNALED(p->status) ? WTERMSIG(p->status) : 0));
			fb_bytes(&one, P_EXIT, ex, 8);
		}
		if (fb->n + one.n > sizeof fb->b) {
			chan_send(c, T_STDOUT, stream, fb->b, fb->n);
			fb->n = 0;
		}
		memcpy(fb->b + fb->n, one.b, one.n);
		fb->n += one.n;
	}
	if (fb->n) chan_send(c, T_STDOUT, stream, fb->b, fb->n);
	chan_send(c, T_DONE, stream, NULL, 0);
	free(fb);
}

/* Attach the caller's stream to a command: replay its kept output, then continue live (or report its exit). */
void do_connect(int c, uint32_t stream, const uint8_t *pl, size_t n) {
	size_t off = 0;
	uint8_t tag;
	const uint8_t *v;
	size_t vl;
	uint32_t pid = 0, outwin = 0;
	while (field_next(pl, n, &off, &tag, &v, &vl) == 1) {
		if (tag == P_PID && vl == 4) pid = get_be32(v);
		if (tag == P_OUTWIN && vl == 4) outwin = get_be32(v);
	}
	struct proc *p = NULL;
	/* a pid may be reused: a running command wins over a finished one with the same number */
	for (int i = 0; i < MAX_PROCS && pid; i++)
		if (procs[i].used && procs[i].kind == K_EXEC && procs[i].pid == (pid_t)pid && (!p || p->exited))
			p = &procs[i];
	if (!p) {
		send_error(c, stream, ESRCH, "no such process started by the agent");
		return;
	}
	if (find_proc(c, stream)) {
		send_error(c, stream, EEXIST, "stream id already in use");
		return;
	}
	if (p->chan >= 0) /* someone else was attached: they lose it */
		send_error(p->chan, p->stream, EBUSY, "another client attached to this process");
	p->chan = c;
	p->stream = stream;
	struct fbuf fb = {0};
	fb_u32(&fb, ST_PID, (uint32_t)p->pid);
	set_out_window(p, outwin, &fb);
	chan_send(c, T_STARTED, stream, fb.b, fb.n);
	if (p->ring_out.len) chan_send(c, T_STDOUT, stream, p->ring_out.buf + p->ring_out.off, p->ring_out.len);
	if (p->ring_err.len) chan_send(c, T_STDERR, stream, p->ring_err.buf + p->ring_err.off, p->ring_err.len);
	if (p->exited) {
		send_exit(c, stream, p->status);
		free_proc(p);
	}
}

/* Signal a running command (its whole process group, as SIGNAL on its stream does) by pid, attached or not. */
void do_pkill(int c, uint32_t stream, const uint8_t *pl, size_t n) {
	size_t off = 0;
	uint8_t tag;
	const uint8_t *v;
	size_t vl;
	uint32_t pid = 0, sig = 0;
	while (field_next(pl, n, &off, &tag, &v, &vl) == 1) {
		if (tag == P_PID && vl == 4) pid = get_be32(v);
		if (tag == P_SIGNAL && vl == 4) sig = get_be32(v);
	}
	if (sig < 1 || sig >= NSIG) {
		send_error(c, stream, EINVAL, "invalid signal number");
		return;
	}
	for (int i = 0; i < MAX_PROCS && pid; i++) {
		struct proc *p = &procs[i];
		if (!p->used || p->kind != K_EXEC || p->exited || p->pid != (pid_t)pid) continue;
		if (kill(-p->pid, (int)sig) < 0 && kill(p->pid, (int)sig) < 0) {
			send_errno(c, stream, errno, "kill");
			return;
		}
		chan_send(c, T_DONE, stream, NULL, 0);
		return;
	}
	send_error(c, stream, ESRCH, "no such running process started by the agent");
}
