/* What a restored VM does to its processes so that each clone of a snapshot is its own. */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "server_int.h"

/* A mapping larger than this is not a fork-detection page: left alone. */
#define WIPE_MAX (1ul << 20)

/*
 * Memory a process marked MADV_WIPEONFORK reads as zeros in a forked child: that is how user-space random
 * generators (BoringSSL's in Chromium, AWS-LC) notice a fork and reseed from the kernel. A VM restored from a
 * snapshot is a clone of every process in it, which no such page notices. Do to each process what fork does to a
 * child: zero those pages (through /proc/PID/mem), so the generators reseed from the kernel's, itself reseeded with
 * the host's entropy just before. Without this, two browsers restored from one template hand out the same tokens.
 */
void wipe_onfork_pages(void) {
	static const char zero[4096];
	DIR *d = opendir("/proc");
	if (!d) return;
	struct dirent *e;
	while ((e = readdir(d))) {
		char *end;
		long pid = strtol(e->d_name, &end, 10);
		if (*end || pid <= 1) continue;
		char path[64];
		snprintf(path, sizeof path, "/proc/%ld/smaps", pid);
		FILE *f = fopen(path, "re");
		if (!f) continue;
		int mem = -1;
		unsigned long start = 0, stop = 0;
		char line[512];
		int at_start = 1; /* the chunk fgets gave begins a line (a long path is read in pieces) */
		while (fgets(line, sizeof line, f)) {
			int starts = at_start;
			at_start = strchr(line, '\n') != NULL;
			if (!starts) continue;
			unsigned long a, b;
			char dash;
			if (sscanf(line, "%lx%c%lx ", &a, &dash, &b) == 3 && dash == '-') {
				start = a;
				stop = b;
				continue;
			}
			if (strncmp(line, "VmFlags:", 8) != 0 || !strstr(line + 8, " wf") || stop <= start ||
			    stop - start > WIPE_MAX)
				continue;
			if (mem < 0) {
				snprintf(path, sizeof path, "/proc/%ld/mem", pid);
				mem = open(path, O_WRONLY | O_CLOEXEC);
				if (mem < 0) break;
			}
			for (unsigned long p = start; p < stop; p += sizeof zero)
				if (pwrite(mem, zero, sizeof zero, (off_t)p) < 0) break;
		}
		if (mem >= 0) close(mem);
		fclose(f);
	}
	closedir(d);
}
