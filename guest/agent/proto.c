#include "proto.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int bq_push(struct bq *q, const void *p, size_t n, size_t limit) {
	if (q->len + n > limit) return -1;
	if (q->off + q->len + n > q->cap) {
		if (q->off) {
			memmove(q->buf, q->buf + q->off, q->len);
			q->off = 0;
		}
		if (q->len + n > q->cap) {
			size_t cap = q->cap ? q->cap : 4096;
			while (cap < q->len + n) cap *= 2;
			uint8_t *nb = realloc(q->buf, cap);
			if (!nb) return -1;
			q->buf = nb;
			q->cap = cap;
		}
	}
	memcpy(q->buf + q->off + q->len, p, n);
	q->len += n;
	return 0;
}

void bq_consume(struct bq *q, size_t n) {
	q->off += n;
	q->len -= n;
	if (q->len == 0) q->off = 0;
	/* give memory back after a burst */
	if (q->len == 0 && q->cap > (1u << 20)) {
		free(q->buf);
		q->buf = NULL;
		q->cap = 0;
	}
}

void bq_free(struct bq *q) {
	free(q->buf);
	q->buf = NULL;
	q->off = q->len = q->cap = 0;
}

size_t frame_header(uint8_t *hdr, uint8_t type, uint32_t stream, size_t payload_len) {
	put_be32(hdr, (uint32_t)(payload_len + 5));
	hdr[4] = type;
	put_be32(hdr + 5, stream);
	return SMOL_HDR;
}

long frame_parse(const uint8_t *buf, size_t len, uint8_t *type, uint32_t *stream, const uint8_t **payload,
		 size_t *payload_len) {
	if (len < 4) return 0;
	uint32_t l = get_be32(buf);
	if (l < 5 || l > 5 + SMOL_MAX_PAYLOAD) return -1;
	if (len < 4 + (size_t)l) return 0;
	*type = buf[4];
	*stream = get_be32(buf + 5);
	*payload = buf + SMOL_HDR;
	*payload_len = l - 5;
	return 4 + (long)l;
}

int field_next(const uint8_t *p, size_t len, size_t *off, uint8_t *tag, const uint8_t **val, size_t *vlen) {
	if (*off == len) return 0;
	if (len - *off < 5) return -1;
	uint32_t l = get_be32(p + *off + 1);
	if (l > len - *off - 5) return -1;
	*tag = p[*off];
	*val = p + *off + 5;
	*vlen = l;
	*off += 5 + l;
	return 1;
}

int write_all(int fd, const void *p, size_t n) {
	const uint8_t *b = p;
	while (n) {
		ssize_t w = write(fd, b, n);
		if (w < 0) {
			if (errno == EINTR) continue;
			if (errno == EAGAIN) {
				/* the fd is non-blocking for reads; wait until it takes more */
				fd_set wf;
				FD_ZERO(&wf);
				FD_SET(fd, &wf);
				select(fd + 1, NULL, &wf, NULL, NULL);
				continue;
			}
			return -1;
		}
		b += w;
		n -= (size_t)w;
	}
	return 0;
}

void set_nonblock(int fd, int on) {
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0) return;
	fcntl(fd, F_SETFL, on ? (fl | O_NONBLOCK) : (fl & ~O_NONBLOCK));
}

void logmsg(const char *fmt, ...) {
	char buf[512];
	struct timespec ts;
	clock_gettime(CLOCK_BOOTTIME, &ts);
	int h = snprintf(buf, sizeof buf, "[%ld.%03ld] ", (long)ts.tv_sec, ts.tv_nsec / 1000000);
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf + h, sizeof buf - 1 - h, fmt, ap);
	va_end(ap);
	if (n < 0) return;
	n += h;
	if (n > (int)sizeof buf - 2) n = sizeof buf - 2;
	buf[n++] = '\n';
	ssize_t ignored = write(2, "smolvm-agent: ", 14);
	ignored = write(2, buf, (size_t)n);
	(void)ignored;
}
