/* Internals shared by the server's parts: the stream table and how to answer on a channel. */
#ifndef SMOL_SERVER_INT_H
#define SMOL_SERVER_INT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "proto.h"
#include "server.h"

#define MAX_PROCS 1024

enum stream_kind { K_EXEC, K_READ, K_WRITE, K_TCP };

/* One stream: a command, or a file being read or written. */
struct proc {
	int used;
	enum stream_kind kind;
	int chan; /* -1 once released: output is dropped */
	uint32_t stream;
	pid_t pid; /* K_EXEC only */
	int out, err, in; /* K_TCP: out is the socket, in a dup of it (closing stdin shuts down the write side) */
	int connecting; /* K_TCP: connect() in progress until connect_deadline (ms, CLOCK_MONOTONIC) */
	long long connect_deadline;
	int pty; /* K_EXEC with a terminal: out is the master, in a dup of it */
	int stdin_eof; /* close stdin once the queue drains */
	struct bq inq;
	char *tmp_path, *final_path; /* K_WRITE: written to tmp, renamed over final at the end */
	unsigned long long written;
	uint32_t unacked; /* stdin bytes consumed but not yet reported with WINDOW */
	uint32_t out_window; /* output flow control: 0 = none, else at most this many bytes unacknowledged */
	uint64_t out_unacked; /* output bytes sent and not yet acknowledged by the host's WINDOW */
	/* K_EXEC */
	char *cmd;		/* for the process list */
	int keep;		/* survive the client going away */
	int exited, status;	/* reaped while nobody was attached: reported on reattach */
	unsigned long long seq; /* age, to expire old finished entries */
	struct bq ring_out, ring_err; /* latest output of a background command, replayed on attach */
};

#define RING_BYTES (64 * 1024)
#define MAX_FINISHED_KEPT 64

extern struct proc procs[MAX_PROCS];
extern const struct server_opts *opts;

void chan_send(int c, uint8_t type, uint32_t stream, const void *payload, size_t n);
void send_error(int c, uint32_t stream, uint32_t code, const char *msg);
/* ERROR with "what: strerror(errno)" for errno e */
void send_errno(int c, uint32_t stream, int e, const char *what);
struct proc *find_proc(int c, uint32_t stream);
/* A free slot for a new stream, or NULL (an ERROR was sent). Also refuses a stream id in use. */
struct proc *new_proc(int c, uint32_t stream, enum stream_kind kind);
void free_proc(struct proc *p);
/* clone.c: zero every process's MADV_WIPEONFORK pages, as fork does for a child (after a restore). */
void wipe_onfork_pages(void);

/* Drop a stream's queued stdin, keeping the agent's total count right. */
void stdin_discard(struct proc *p);
/* Hand queued stdin to the stream's fd; acknowledge with WINDOW; close it once drained after an empty STDIN. */
void flush_stdin(struct proc *p);
long long now_ms(void);

/* Field list building for replies */
struct fbuf {
	uint8_t b[SMOL_MAX_PAYLOAD];
	size_t n;
	int overflow;
};
void fb_bytes(struct fbuf *f, uint8_t tag, const void *v, size_t n);
void fb_str(struct fbuf *f, uint8_t tag, const char *s);
void fb_u32(struct fbuf *f, uint8_t tag, uint32_t v);
void fb_u64(struct fbuf *f, uint8_t tag, uint64_t v);
char *dupstr(const uint8_t *v, size_t n);
/* Whether the stream may send more output now (no output window, or it is open). */
int out_open(const struct proc *p);
/* Give a stream the output window the host asked for (0: none), and say so in STARTED's fields. */
void set_out_window(struct proc *p, uint32_t win, struct fbuf *started);

/* exec.c */
void do_exec(int c, uint32_t stream, const uint8_t *pl, size_t n);
void do_resize(struct proc *p, const uint8_t *pl, size_t n);
void do_ps(int c, uint32_t stream);
void do_connect(int c, uint32_t stream, const uint8_t *pl, size_t n);
void do_pkill(int c, uint32_t stream, const uint8_t *pl, size_t n);
void send_exit(int c, uint32_t stream, int status);

/* envstore.c: variables set at run time, applied to every later command */
void env_set(int c, uint32_t stream, const uint8_t *pl, size_t n);
void env_unset(int c, uint32_t stream, const uint8_t *pl, size_t n);
void env_list(int c, uint32_t stream);
char **env_dynamic(void);

/* net.c */
void do_netcfg(int c, uint32_t stream, const uint8_t *pl, size_t n);

/* tcp.c: TCP streams to ports in the guest */
#define MAX_TCP 512
void do_tcpconnect(int c, uint32_t stream, const uint8_t *pl, size_t n);
void tcp_connected(struct proc *p); /* the socket of a connecting stream became writable */
int tcp_check_deadlines(long long now); /* fail connects past their deadline; ms to the next one, or -1 */
void tcp_end(struct proc *p, int32_t code, int32_t sig); /* EXIT, close, forget */
void tcp_drop(struct proc *p); /* close and forget, no frame */
void tcp_signal(struct proc *p, int sig);

/* files.c */
void file_op(int c, uint8_t type, uint32_t stream, const uint8_t *pl, size_t n);
void write_finish(struct proc *p);
void write_abort(struct proc *p);

#endif
