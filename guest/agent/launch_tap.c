/* The tap devices of `smolvm-agent launch` (see launch.c): one attached to as it is, or one created here and set up
 * with a few ioctls (MAC, address, sysctls, link up, a permanent neighbour entry). */
#define _GNU_SOURCE
#include "launch_tap.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <net/if_arp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

int parse_mac6(const char *s, uint8_t mac[6]) {
	unsigned b[6];
	char tail;
	if (strlen(s) != 17 || sscanf(s, "%2x:%2x:%2x:%2x:%2x:%2x%c", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5], &tail) != 6)
		return -1;
	for (int i = 0; i < 6; i++) mac[i] = (uint8_t)b[i];
	return mac[0] & 1 ? -1 : 0; /* a station address is unicast */
}

/* "A.B.C.D/PREFIX" (prefix 1-30: a TAP's gateway address with room for the guest) */
int parse_addr(const char *v, struct tap *t) {
	char a[32], *slash, *end;
	if (strlen(v) >= sizeof a) return -1;
	strcpy(a, v);
	if (!(slash = strchr(a, '/'))) return -1;
	*slash = 0;
	long p = strtol(slash + 1, &end, 10);
	if (!slash[1] || *end || p < 1 || p > 30 || inet_pton(AF_INET, a, &t->addr) != 1) return -1;
	t->prefix = (int)p;
	return 0;
}

/* "A.B.C.D=MAC" */
int parse_neigh(const char *v, struct tap *t) {
	char a[64], *eq;
	if (strlen(v) >= sizeof a) return -1;
	strcpy(a, v);
	if (!(eq = strchr(a, '='))) return -1;
	*eq = 0;
	return inet_pton(AF_INET, a, &t->neigh) == 1 && parse_mac6(eq + 1, t->neigh_mac) == 0 ? 0 : -1;
}

static void write_proc(const char *fmt, const char *name, const char *value) {
	char path[128];
	snprintf(path, sizeof path, fmt, name);
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0) return; /* absent (no IPv6 here): nothing to switch */
	if (write(fd, value, strlen(value)) < 0) { /* read-only /proc/sys: the firewall rules still hold */
	}
	close(fd);
}

/* Set up a tap device created here; returns 0, or -1 with errno set and *step naming what failed. */
static int setup_tap(const struct tap *t, const char **step) {
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0), ret = -1;
	if (s < 0) return -1;
	struct ifreq ifr;
	memset(&ifr, 0, sizeof ifr);
	memcpy(ifr.ifr_name, t->name, sizeof t->name);
	if (t->has_mac) {
		*step = "set MAC";
		ifr.ifr_hwaddr.sa_family = ARPHRD_ETHER;
		memcpy(ifr.ifr_hwaddr.sa_data, t->mac, 6);
		if (ioctl(s, SIOCSIFHWADDR, &ifr) < 0) goto out;
	}
	if (t->has_addr) {
		write_proc("/proc/sys/net/ipv6/conf/%s/disable_ipv6", t->name, "1"); /* before up: no link-local, no RS */
		write_proc("/proc/sys/net/ipv4/conf/%s/forwarding", t->name, "1");
		struct sockaddr_in *sin = (struct sockaddr_in *)&ifr.ifr_addr;
		*step = "set address";
		memset(&ifr.ifr_addr, 0, sizeof ifr.ifr_addr);
		sin->sin_family = AF_INET;
		sin->sin_addr = t->addr;
		if (ioctl(s, SIOCSIFADDR, &ifr) < 0) goto out;
		*step = "set netmask";
		sin->sin_addr.s_addr = htonl(0xffffffffu << (32 - t->prefix));
		if (ioctl(s, SIOCSIFNETMASK, &ifr) < 0) goto out;
		*step = "link up";
		if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0) goto out;
		ifr.ifr_flags |= IFF_UP;
		if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0) goto out;
	}
	if (t->has_neigh) {
		*step = "set neighbour";
		struct arpreq r;
		memset(&r, 0, sizeof r);
		struct sockaddr_in *pa = (struct sockaddr_in *)&r.arp_pa;
		pa->sin_family = AF_INET;
		pa->sin_addr = t->neigh;
		r.arp_ha.sa_family = ARPHRD_ETHER;
		memcpy(r.arp_ha.sa_data, t->neigh_mac, 6);
		r.arp_flags = ATF_PERM | ATF_COM;
		memcpy(r.arp_dev, t->name, sizeof t->name);
		if (ioctl(s, SIOCSARP, &r) < 0) goto out;
	}
	ret = 0;
out:;
	int e = errno;
	close(s);
	errno = e;
	return ret;
}

/* "NAME:FD" with a valid interface name and 3 <= FD < 1024 */
int parse_tap(const char *v, struct tap *t) {
	const char *colon = strrchr(v, ':');
	char *end;
	if (!colon || colon == v || (size_t)(colon - v) >= IFNAMSIZ || !colon[1]) return -1;
	long fd = strtol(colon + 1, &end, 10);
	if (*end || fd < 3 || fd >= 1024) return -1;
	memset(t->name, 0, sizeof t->name);
	memcpy(t->name, v, (size_t)(colon - v));
	if (strchr(t->name, '/')) return -1;
	t->fd = (int)fd;
	return 0;
}

/* Attach to the existing tap device t->name as descriptor t->fd, inherited by the VMM; or, with t->create, create it
 * (it must not exist) and set it up. */
int open_tap(const struct tap *t, const char **step) {
	*step = "open";
	int exists = if_nametoindex(t->name) != 0;
	if (exists != !t->create) { /* TUNSETIFF attaches to a device that exists and creates one that does not */
		errno = t->create ? EEXIST : ENODEV;
		return -1;
	}
	int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
	if (fd < 0) return -1;
	struct ifreq ifr;
	memset(&ifr, 0, sizeof ifr);
	/* no IFF_VNET_HDR: saved state records whether the NIC's peer had a vnet header, and only loads into a peer
	 * that has the same; passt's socket and an unconnected NIC have none, so neither does a TAP (see nicArgs) */
	ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
	memcpy(ifr.ifr_name, t->name, sizeof t->name);
	if (ioctl(fd, TUNSETIFF, &ifr) < 0 || (t->create && setup_tap(t, step) < 0)) {
		int e = errno;
		close(fd); /* a device created here goes with it */
		errno = e;
		return -1;
	}
	if (fd == t->fd) return fcntl(fd, F_SETFD, 0); /* no FD_CLOEXEC: the VMM inherits it */
	int r = dup2(fd, t->fd);			 /* dup2 leaves the new descriptor inheritable */
	int e = errno;
	close(fd);
	errno = e;
	return r < 0 ? -1 : 0;
}
