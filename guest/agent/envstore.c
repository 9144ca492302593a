/* Environment set at run time (vm.env): held in the agent's memory, never written to the guest's disk, applied to
 * every later command. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "server_int.h"

#define ENV_MAX 1024
#define ENV_BYTES (256 * 1024)

static char *vars[ENV_MAX + 1];
static int nvars;
static size_t bytes;

char **env_dynamic(void) { return vars; }

static int find(const char *key, size_t kl) {
	for (int i = 0; i < nvars; i++)
		if (!strncmp(vars[i], key, kl) && vars[i][kl] == '=') return i;
	return -1;
}

static void remove_at(int i) {
	bytes -= strlen(vars[i]);
	free(vars[i]);
	vars[i] = vars[--nvars];
	vars[nvars] = NULL;
}

void env_set(int c, uint32_t stream, const uint8_t *pl, size_t n) {
	size_t off = 0;
	uint8_t tag;
	const uint8_t *v;
	size_t vl;
	int r;
	while ((r = field_next(pl, n, &off, &tag, &v, &vl)) == 1) {
		const uint8_t *eq = memchr(v, '=', vl);
		if (tag != F_ENV || !eq || eq == v || memchr(v, 0, vl)) {
			send_error(c, stream, EINVAL, "expected KEY=VALUE");
			return;
		}
		int i = find((const char *)v, (size_t)(eq - v));
		if (i >= 0) remove_at(i);
		if (nvars >= ENV_MAX || bytes + vl > ENV_BYTES) {
			send_error(c, stream, ENOSPC, "too many environment variables");
			return;
		}
		vars[nvars++] = dupstr(v, vl);
		bytes += vl;
	}
	if (r < 0) send_error(c, stream, EINVAL, "malformed request");
	else chan_send(c, T_DONE, stream, NULL, 0);
}

void env_unset(int c, uint32_t stream, const uint8_t *pl, size_t n) {
	size_t off = 0;
	uint8_t tag;
	const uint8_t *v;
	size_t vl;
	while (field_next(pl, n, &off, &tag, &v, &vl) == 1) {
		if (vl == 0 || memchr(v, 0, vl) || memchr(v, '=', vl)) {
			send_error(c, stream, EINVAL, "invalid variable name");
			return;
		}
		int i = find((const char *)v, vl);
		if (i >= 0) remove_at(i);
	}
	chan_send(c, T_DONE, stream, NULL, 0);
}

void env_list(int c, uint32_t stream) {
	struct fbuf *fb = calloc(1, sizeof *fb);
	if (!fb) return;
	for (int i = 0; i < nvars; i++) {
		if (fb->n + 5 + strlen(vars[i]) > sizeof fb->b) { /* more than one frame holds: send in parts */
			chan_send(c, T_STDOUT, stream, fb->b, fb->n);
			fb->n = 0;
		}
		fb_str(fb, F_ENV, vars[i]);
	}
	if (fb->n) chan_send(c, T_STDOUT, stream, fb->b, fb->n);
	chan_send(c, T_DONE, stream, NULL, 0);
	free(fb);
}
