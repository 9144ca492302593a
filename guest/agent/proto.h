/* SmolVM guest protocol: framing shared by the agent, the proxy and (in TypeScript) the host.
 * See docs/PROTOCOL.md. Every frame:
 *   u32 length (big-endian; bytes that follow: 1 + 4 + payload)
 *   u8  type
 *   u32 stream id (big-endian)
 *   payload (at most SMOL_MAX_PAYLOAD bytes)
 */
#ifndef SMOL_PROTO_H
#define SMOL_PROTO_H

#include <stddef.h>
#include <stdint.h>

#define SMOL_PROTO_VERSION 4
#define SMOL_HDR 9
#define SMOL_MAX_PAYLOAD 65536

/* host -> agent */
#define T_PING 0x01
#define T_EXEC 0x10
#define T_STDIN 0x12
#define T_SIGNAL 0x13
#define T_RELEASE 0x20
#define T_SHUTDOWN 0x30 /* the agent answers with the same type once disks are synced */
#define T_SYNC 0x31 /* after a restore: fields S_TIME (u64 ns since the epoch), S_ENTROPY (bytes). DONE */
#define S_TIME 1
#define S_ENTROPY 2
#define S_HOSTNAME 3
#define S_FLUSH 4 /* any value: write every file system's dirty data to disk (sync) */
#define T_NETCFG 0x32 /* configure the guest's first ethernet interface. DONE (ignored outside a guest) */
#define NC_ADDR 1    /* "a.b.c.d/prefix" */
#define NC_GATEWAY 2 /* "a.b.c.d": default route */
#define NC_MAC 3     /* "aa:bb:cc:dd:ee:ff" */
#define NC_DNS 4     /* "a.b.c.d", repeated (at most 3): /etc/resolv.conf */
#define NC_MTU 5     /* u32 */
#define NC_DOWN 6    /* any value: take the interface down, remove its addresses */
#define NC_NEIGH 7   /* "a.b.c.d aa:bb:cc:dd:ee:ff", repeated (at most 4): a permanent neighbour entry */
#define T_RESIZE 0x17   /* u16 cols, u16 rows: terminal size of a PTY command */
#define T_ENV_SET 0x40
#define T_ENV_UNSET 0x41
#define T_ENV_LIST 0x42
#define T_FREAD 0x50
#define T_FWRITE 0x51
#define T_FSTAT 0x52
#define T_FLIST 0x53
#define T_FMKDIR 0x54
#define T_FREMOVE 0x55
#define T_FRENAME 0x56
#define T_PS 0x60      /* list commands; answered by data frames of P_ field groups, then DONE */
#define T_CONNECT 0x61 /* fields: P_PID. Attach this stream to a running (or finished, unreported) command */
#define T_TCPCONNECT 0x62 /* a TCP stream to a port in the guest: STARTED, STDIN -> socket, socket -> STDOUT, EXIT */
#define T_PKILL 0x63 /* fields: P_PID, P_SIGNAL. Signal a running command (its process group) by pid. DONE */
#define TC_PORT 1   /* u32, 1-65535 */
#define TC_HOST 2   /* IPv4 literal; default 127.0.0.1 */
#define TC_OUTWIN 3 /* u32 output window, as F_OUTWIN */
/* agent -> host */
#define T_PONG 0x02
#define T_HELLO 0x03
#define T_WELCOME 0x04 /* proxy -> client */
#define T_STARTED 0x11
#define T_STDOUT 0x14
#define T_STDERR 0x15
#define T_EXIT 0x16
#define T_DONE 0x18 /* a non-exec operation finished; payload: fields */
#define T_WINDOW 0x19 /* u32. agent -> host: stdin bytes of the stream consumed (the host may send that much more).
		       * host -> agent, on a stream with an output window: output bytes the host consumed */
#define STDIN_WINDOW (1u << 20) /* unacknowledged stdin bytes a host may have in flight per stream */
#define T_ERROR 0x1f

/* EXEC fields: u8 tag, u32 length (big-endian), value */
#define F_ARG 1
#define F_SHELL 2
#define F_ENV 3
#define F_CWD 4
#define F_STDIN 5
#define F_USER 6 /* user name or numeric uid */
#define F_PTY 7  /* u16 cols, u16 rows: run on a new terminal */
#define F_KEEP 8 /* 1 byte: keep running when the client goes away (output kept in a ring until reattached) */
#define F_OUTWIN 9 /* u32: output window: the agent sends at most this many output bytes the host has not
		    * acknowledged with WINDOW, then stops reading the command's output (it blocks, nothing is lost) */
/* STARTED fields (exec, connect, file read) */
#define ST_PID 1
#define ST_OUTWIN 2 /* u32: the output window in force (absent: the agent does no output flow control) */
#define ST_SIZE 3   /* FREAD: u64 size of a regular file (0 for others) */
#define ST_TYPE 4   /* FREAD: one byte, the type of what was opened (f d l c b p s ?) */
/* process list fields */
#define P_PID 1
#define P_CMD 2
#define P_RUNNING 3 /* 1 byte */
#define P_EXIT 4    /* i32 exit code, i32 signal */
#define P_ATTACHED 5 /* 1 byte */
#define P_KEEP 6     /* 1 byte */
#define P_OUTWIN 7   /* CONNECT: u32 output window, as F_OUTWIN */
#define P_SIGNAL 8   /* PKILL: u32 signal number */
/* file operation fields */
#define F_PATH 1
#define F_PATH2 2 /* rename target */
#define F_MODE 3  /* u32 */
#define F_FLAGS 4 /* u32: FL_PARENTS, FL_RECURSIVE */
#define F_DEPTH 5 /* u32 */
#define F_FOUTWIN 6 /* FREAD: u32 output window, as F_OUTWIN */
#define FL_PARENTS 1
#define FL_RECURSIVE 2
#define FL_REGULAR 4 /* FREAD: refuse anything but a regular file (after following links) with EINVAL */
/* stat / list entry fields */
#define E_PATH 1
#define E_TYPE 2 /* one byte: f d l c b p s ? */
#define E_SIZE 3 /* u64 */
#define E_MODE 4 /* u32 permission bits */
#define E_MTIME 5 /* u64 ms */
#define E_LINK 6
/* ERROR fields */
#define F_CODE 1
#define F_MSG 2

/* A growable byte queue with a hard cap. */
struct bq {
	uint8_t *buf;
	size_t off, len, cap;
};

int bq_push(struct bq *q, const void *p, size_t n, size_t limit);
void bq_consume(struct bq *q, size_t n);
void bq_free(struct bq *q);

static inline uint32_t get_be32(const uint8_t *p) {
	return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline void put_be32(uint8_t *p, uint32_t v) {
	p[0] = v >> 24;
	p[1] = v >> 16;
	p[2] = v >> 8;
	p[3] = v;
}

/* Encode a frame header into hdr; returns SMOL_HDR. */
size_t frame_header(uint8_t *hdr, uint8_t type, uint32_t stream, size_t payload_len);

/* Parse one frame from buf[0..len). Returns:
 *   >0 the frame's total size (header + payload) when a whole frame is there,
 *    0 when more bytes are needed,
 *   -1 when the bytes cannot be a frame (length out of range). */
long frame_parse(const uint8_t *buf, size_t len, uint8_t *type, uint32_t *stream, const uint8_t **payload,
		 size_t *payload_len);

/* Iterate fields of a payload: returns 1 and fills tag/val/vlen, 0 at end, -1 on a malformed field. */
int field_next(const uint8_t *p, size_t len, size_t *off, uint8_t *tag, const uint8_t **val, size_t *vlen);

int write_all(int fd, const void *p, size_t n);
void set_nonblock(int fd, int on);
void logmsg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
