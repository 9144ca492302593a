/* File operations, done by the agent itself so they work on any guest image (no shell or coreutils needed). */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "server_int.h"

#define MAX_DEPTH 64

struct req {
	char *path, *path2;
	uint32_t mode, flags, depth, outwin;
	int has_mode;
};

static int parse(const uint8_t *pl, size_t n, struct req *r) {
	size_t off = 0;
	uint8_t tag;
	const uint8_t *v;
	size_t vl;
	int res;
	memset(r, 0, sizeof *r);
	r->depth = 1;
	while ((res = field_next(pl, n, &off, &tag, &v, &vl)) == 1) {
		if ((tag == F_PATH || tag == F_PATH2) && (vl == 0 || vl >= PATH_MAX || memchr(v, 0, vl))) return -1;
		if (tag == F_PATH) { free(r->path); r->path = dupstr(v, vl); }
		else if (tag == F_PATH2) { free(r->path2); r->path2 = dupstr(v, vl); }
		else if (vl == 4 && tag == F_MODE) { r->mode = get_be32(v) & 07777; r->has_mode = 1; }
		else if (vl == 4 && tag == F_FLAGS) r->flags = get_be32(v);
		else if (vl == 4 && tag == F_DEPTH) r->depth = get_be32(v);
		else if (vl == 4 && tag == F_FOUTWIN) r->outwin = get_be32(v);
	}
	return res < 0 || !r->path ? -1 : 0;
}

/* mkdir -p of a directory path */
static int mkdirs(const char *path, mode_t mode) {
	char buf[PATH_MAX];
	snprintf(buf, sizeof buf, "%s", path);
	for (char *p = buf + 1; *p; p++) {
		if (*p != '/') continue;
		*p = 0;
		if (mkdir(buf, mode) < 0 && errno != EEXIST) return -1;
		*p = '/';
	}
	if (mkdir(buf, mode) < 0 && errno != EEXIST) return -1;
	struct stat st;
	if (stat(buf, &st) < 0) return -1;
	if (!S_ISDIR(st.st_mode)) {
		errno = ENOTDIR;
		return -1;
	}
	return 0;
}

static int mkparents(const char *path) {
	char buf[PATH_MAX];
	snprintf(buf, sizeof buf, "%s", path);
	char *d = dirname(buf);
	return strcmp(d, "/") && strcmp(d, ".") ? mkdirs(d, 0755) : 0;
}

static char type_char(mode_t m) {
	return S_ISREG(m) ? 'f' : S_ISDIR(m) ? 'd' : S_ISLNK(m) ? 'l' : S_ISCHR(m) ? 'c' : S_ISBLK(m) ? 'b' : S_ISFIFO(m) ? 'p' : S_ISSOCK(m) ? 's' : '?';
}

/* Append one entry (a field group starting with E_PATH). */
static void put_entry(struct fbuf *fb, const char *name, const char *full, const struct stat *st) {
	char t = type_char(st->st_mode);
	fb_str(fb, E_PATH, name);
	fb_bytes(fb, E_TYPE, &t, 1);
	fb_u64(fb, E_SIZE, (uint64_t)st->st_size);
	fb_u32(fb, E_MODE, st->st_mode & 07777);
	fb_u64(fb, E_MTIME, (uint64_t)st->st_mtim.tv_sec * 1000 + (uint64_t)st->st_mtim.tv_nsec / 1000000);
	if (S_ISLNK(st->st_mode)) {
		char link[PATH_MAX];
		ssize_t l = readlink(full, link, sizeof link - 1);
		if (l >= 0) fb_bytes(fb, E_LINK, link, (size_t)l);
	}
}

struct lister {
	int c;
	uint32_t stream;
	struct fbuf fb;
};

static void list_dir(struct lister *L, const char *dir, const char *rel, uint32_t depth) {
	DIR *d = opendir(dir);
	struct dirent *e;
	while (d && (e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
		char full[PATH_MAX], name[PATH_MAX];
		struct stat st;
		if (snprintf(full, sizeof full, "%s/%s", dir, e->d_name) >= (int)sizeof full) continue;
		snprintf(name, sizeof name, "%s%s%s", rel, *rel ? "/" : "", e->d_name);
		if (lstat(full, &st) < 0) continue;
		struct fbuf one = {0};
		put_entry(&one, name, full, &st);
		if (L->fb.n + one.n > sizeof L->fb.b) {
			chan_send(L->c, T_STDOUT, L->stream, L->fb.b, L->fb.n);
			L->fb.n = 0;
		}
		memcpy(L->fb.b + L->fb.n, one.b, one.n);
		L->fb.n += one.n;
		if (S_ISDIR(st.st_mode) && depth > 1) list_dir(L, full, name, depth - 1);
	}
	if (d) closedir(d);
}

static int rm_entry(const char *p, const struct stat *st, int flag, struct FTW *ftw) {
	(void)st, (void)ftw;
	return (flag == FTW_DP ? rmdir(p) : unlink(p)) < 0 && errno != ENOENT ? -1 : 0;
}

static void op_read(int c, uint32_t stream, struct req *r) {
	int fd = open(r->path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0) {
		send_errno(c, stream, errno, r->path);
		if (fd >= 0) close(fd);
		return;
	}
	if (S_ISDIR(st.st_mode)) {
		close(fd);
		send_errno(c, stream, EISDIR, r->path);
		return;
	}
	if ((r->flags & FL_REGULAR) && !S_ISREG(st.st_mode)) { /* e.g. a link to /dev/zero: it never ends */
		close(fd);
		char msg[300];
		snprintf(msg, sizeof msg, "%.200s: not a regular file (a %s)", r->path,
			 S_ISCHR(st.st_mode) ? "character device" : S_ISBLK(st.st_mode) ? "block device" : S_ISFIFO(st.st_mode) ? "fifo" : S_ISSOCK(st.st_mode) ? "socket" : "special file");
		send_error(c, stream, EINVAL, msg);
		return;
	}
	struct proc *p = new_proc(c, stream, K_READ);
	if (!p) {
		close(fd);
		return;
	}
	p->out = fd;
	struct fbuf fb = {0};
	char t = type_char(st.st_mode);
	fb_u64(&fb, ST_SIZE, S_ISREG(st.st_mode) ? (uint64_t)st.st_size : 0);
	fb_bytes(&fb, ST_TYPE, &t, 1);
	set_out_window(p, r->outwin, &fb);
	chan_send(c, T_STARTED, stream, fb.b, fb.n);
	/* the event loop forwards the content and sends DONE at the end */
}

static void op_write(int c, uint32_t stream, struct req *r) {
	struct stat st;
	/* a symlink is written through: the temp file goes next to its target, which the rename replaces */
	char real[PATH_MAX];
	if (realpath(r->path, real)) {
		free(r->path);
		r->path = strdup(real);
	}
	int exists = stat(r->path, &st) == 0;
	if (exists && S_ISDIR(st.st_mode)) {
		send_errno(c, stream, EISDIR, r->path);
		return;
	}
	if ((r->flags & FL_PARENTS) && mkparents(r->path) < 0) {
		send_errno(c, stream, errno, r->path);
		return;
	}
	struct proc *p = new_proc(c, stream, K_WRITE);
	if (!p) return;
	p->final_path = strdup(r->path);
	int fd;
	/* O_NONBLOCK: a fifo without a reader fails (ENXIO) instead of blocking the agent, a full pipe or tty queues */
	if (exists && !S_ISREG(st.st_mode)) { /* a device, fifo, or /proc file: write in place */
		fd = open(r->path, O_WRONLY | O_TRUNC | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	} else { /* a temp file renamed over the target at the end: readers never see half a file */
		if (asprintf(&p->tmp_path, "%s.smolvm-XXXXXX", r->path) < 0) p->tmp_path = NULL;
		fd = p->tmp_path ? mkostemp(p->tmp_path, O_CLOEXEC) : -1;
		mode_t mode = r->has_mode ? r->mode : exists ? (st.st_mode & 07777) : 0644;
		if (fd >= 0 && exists) (void)!fchown(fd, st.st_uid, st.st_gid); /* keep the file's owner (best effort) */
		if (fd >= 0) fchmod(fd, mode);
		if (fd < 0 && exists) { /* no temp file possible here (e.g. /proc, /sys): write in place */
			free(p->tmp_path);
			p->tmp_path = NULL;
			fd = open(r->path, O_WRONLY | O_TRUNC | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
		}
	}
	if (fd < 0) {
		send_errno(c, stream, errno, r->path);
		free(p->tmp_path);
		p->tmp_path = NULL;
		free_proc(p);
		return;
	}
	p->in = fd;
	set_nonblock(fd, 1);
	chan_send(c, T_STARTED, stream, NULL, 0);
}

void write_finish(struct proc *p) {
	int fd = p->in;
	p->in = -1;
	int bad = close(fd) < 0;
	if (!bad && p->tmp_path && rename(p->tmp_path, p->final_path) < 0) bad = 1;
	if (bad) {
		send_errno(p->chan, p->stream, errno, p->final_path);
		write_abort(p);
		return;
	}
	struct fbuf fb = {0};
	fb_u64(&fb, E_SIZE, p->written);
	chan_send(p->chan, T_DONE, p->stream, fb.b, fb.n);
	free_proc(p);
}

void write_abort(struct proc *p) {
	if (p->in >= 0) close(p->in);
	p->in = -1;
	if (p->tmp_path) unlink(p->tmp_path);
	stdin_discard(p);
	free_proc(p);
}

void file_op(int c, uint8_t type, uint32_t stream, const uint8_t *pl, size_t n) {
	struct req r;
	if (parse(pl, n, &r) < 0) {
		send_error(c, stream, EINVAL, "malformed file request (a path is required, without NUL bytes)");
		goto out;
	}
	struct stat st;
	struct fbuf *fb;
	switch (type) {
	case T_FREAD:
		op_read(c, stream, &r);
		break;
	case T_FWRITE:
		op_write(c, stream, &r);
		break;
	case T_FSTAT:
		if (lstat(r.path, &st) < 0) {
			send_errno(c, stream, errno, r.path);
			break;
		}
		fb = calloc(1, sizeof *fb);
		put_entry(fb, r.path, r.path, &st);
		chan_send(c, T_DONE, stream, fb->b, fb->n);
		free(fb);
		break;
	case T_FLIST: {
		if (stat(r.path, &st) < 0 || !S_ISDIR(st.st_mode)) {
			send_errno(c, stream, errno ? errno : ENOTDIR, r.path);
			break;
		}
		struct lister *L = calloc(1, sizeof *L);
		L->c = c;
		L->stream = stream;
		list_dir(L, r.path, "", r.depth < 1 ? 1 : r.depth > MAX_DEPTH ? MAX_DEPTH : r.depth);
		if (L->fb.n) chan_send(c, T_STDOUT, stream, L->fb.b, L->fb.n);
		chan_send(c, T_DONE, stream, NULL, 0);
		free(L);
		break;
	}
	case T_FMKDIR:
		if (((r.flags & FL_PARENTS) ? mkdirs(r.path, r.has_mode ? r.mode : 0755)
					     : mkdir(r.path, r.has_mode ? r.mode : 0755)) < 0)
			send_errno(c, stream, errno, r.path);
		else
			chan_send(c, T_DONE, stream, NULL, 0);
		break;
	case T_FREMOVE:
		if (lstat(r.path, &st) < 0) send_errno(c, stream, errno, r.path);
		else if (S_ISDIR(st.st_mode) && (r.flags & FL_RECURSIVE) &&
			 nftw(r.path, rm_entry, 32, FTW_DEPTH | FTW_PHYS | FTW_MOUNT) < 0)
			send_errno(c, stream, errno, r.path);
		else if (S_ISDIR(st.st_mode) && !(r.flags & FL_RECURSIVE) && rmdir(r.path) < 0)
			send_errno(c, stream, errno, r.path);
		else if (!S_ISDIR(st.st_mode) && unlink(r.path) < 0)
			send_errno(c, stream, errno, r.path);
		else
			chan_send(c, T_DONE, stream, NULL, 0);
		break;
	case T_FRENAME:
		if (!r.path2) send_error(c, stream, EINVAL, "rename needs a target path");
		else if ((r.flags & FL_PARENTS) && mkparents(r.path2) < 0) send_errno(c, stream, errno, r.path2);
		else if (rename(r.path, r.path2) < 0) send_errno(c, stream, errno, r.path);
		else chan_send(c, T_DONE, stream, NULL, 0);
		break;
	}
out:
	free(r.path);
	free(r.path2);
}
