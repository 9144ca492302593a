/* NETCFG: configure the guest's network interface from the host (after every boot and every restore: a clone gets
 * a new address and MAC). Idempotent, and quick when the interface is there: no sleep unless virtio_net is still
 * probing. Link flags, MAC and MTU by ioctl; addresses and the default route by rtnetlink (ioctls cannot list or
 * remove every IPv4 address, nor replace a route). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include "server_int.h"

#define MAX_DNS 3
#define MAX_NEIGH 4
#define MAX_OLD_ADDRS 64
#define IF_WAIT_MS 2000

struct netcfg {
	int down, has_addr, has_gw, has_mac, has_mtu, ndns, nneigh;
	struct in_addr addr, gw, dns[MAX_DNS], neigh[MAX_NEIGH];
	int prefix;
	uint8_t mac[6], neigh_mac[MAX_NEIGH][6];
	uint32_t mtu;
};

/* A short printable value (an address) as a C string; -1 when too long or not text. */
static int field_str(const uint8_t *v, size_t vl, char *out, size_t outsz) {
	if (vl == 0 || vl >= outsz || memchr(v, 0, vl)) return -1;
	memcpy(out, v, vl);
	out[vl] = 0;
	return 0;
}

static int parse_mac(const char *s, uint8_t mac[6]) {
	unsigned b[6];
	char tail;
	if (strlen(s) != 17 || sscanf(s, "%2x:%2x:%2x:%2x:%2x:%2x%c", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5], &tail) != 6)
		return -1;
	for (int i = 0; i < 6; i++) {
		if (s[i * 3 + 2] != (i < 5 ? ':' : 0)) return -1;
		mac[i] = (uint8_t)b[i];
	}
	if (mac[0] & 1) return -1; /* multicast: the kernel refuses it as a station address */
	return memcmp(mac, "\0\0\0\0\0\0", 6) ? 0 : -1;
}

/* Fills cfg; returns NULL or what was wrong. */
static const char *parse(const uint8_t *pl, size_t n, struct netcfg *cfg) {
	size_t off = 0;
	uint8_t tag;
	const uint8_t *v;
	size_t vl;
	int r;
	char s[64];
	memset(cfg, 0, sizeof *cfg);
	while ((r = field_next(pl, n, &off, &tag, &v, &vl)) == 1) {
		if (tag == NC_DOWN) {
			cfg->down = 1;
		} else if (tag == NC_ADDR) {
			char *slash;
			unsigned long pfx;
			char *end;
			if (field_str(v, vl, s, sizeof s) < 0 || !(slash = strchr(s, '/'))) return "bad address (a.b.c.d/prefix)";
			*slash = 0;
			pfx = strtoul(slash + 1, &end, 10);
			if (!slash[1] || *end || pfx > 32 || inet_pton(AF_INET, s, &cfg->addr) != 1)
				return "bad address (a.b.c.d/prefix)";
			cfg->prefix = (int)pfx;
			cfg->has_addr = 1;
		} else if (tag == NC_GATEWAY) {
			if (field_str(v, vl, s, sizeof s) < 0 || inet_pton(AF_INET, s, &cfg->gw) != 1) return "bad gateway";
			cfg->has_gw = 1;
		} else if (tag == NC_MAC) {
			if (field_str(v, vl, s, sizeof s) < 0 || parse_mac(s, cfg->mac) < 0) return "bad MAC address";
			cfg->has_mac = 1;
		} else if (tag == NC_DNS) {
			if (cfg->ndns >= MAX_DNS) return "more than 3 DNS servers";
			if (field_str(v, vl, s, sizeof s) < 0 || inet_pton(AF_INET, s, &cfg->dns[cfg->ndns]) != 1)
				return "bad DNS server";
			cfg->ndns++;
		} else if (tag == NC_NEIGH) {
			char *sp;
			if (cfg->nneigh >= MAX_NEIGH) return "more than 4 neighbours";
			if (field_str(v, vl, s, sizeof s) < 0 || !(sp = strchr(s, ' '))) return "bad neighbour (a.b.c.d MAC)";
			*sp = 0;
			if (inet_pton(AF_INET, s, &cfg->neigh[cfg->nneigh]) != 1 || parse_mac(sp + 1, cfg->neigh_mac[cfg->nneigh]) < 0)
				return "bad neighbour (a.b.c.d MAC)";
			cfg->nneigh++;
		} else if (tag == NC_MTU) {
			if (vl != 4) return "bad MTU";
			cfg->mtu = get_be32(v);
			if (cfg->mtu < 68 || cfg->mtu > 65535) return "MTU out of range (68-65535)";
			cfg->has_mtu = 1;
		}
	}
	if (r < 0) return "malformed request";
	if (!cfg->down && !cfg->has_addr) return "no address";
	return NULL;
}

static int read_small(const char *path, char *buf, size_t n) {
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) return -1;
	ssize_t r = read(fd, buf, n - 1);
	close(fd);
	if (r < 0) return -1;
	buf[r] = 0;
	return 0;
}

/* The first ethernet interface other than lo: a real device (virtio_net) before virtual ones a guest made, then
 * the lowest ifindex. */
static int find_iface(char name[IFNAMSIZ]) {
	DIR *d = opendir("/sys/class/net");
	struct dirent *e;
	long best = -1;
	int best_dev = 0;
	while (d && (e = readdir(d))) {
		if (e->d_name[0] == '.' || !strcmp(e->d_name, "lo") || strlen(e->d_name) >= IFNAMSIZ) continue;
		char path[300], buf[32];
		snprintf(path, sizeof path, "/sys/class/net/%s/type", e->d_name);
		if (read_small(path, buf, sizeof buf) < 0 || atoi(buf) != ARPHRD_ETHER) continue;
		snprintf(path, sizeof path, "/sys/class/net/%s/ifindex", e->d_name);
		if (read_small(path, buf, sizeof buf) < 0) continue;
		long idx = strtol(buf, NULL, 10);
		snprintf(path, sizeof path, "/sys/class/net/%s/device", e->d_name);
		struct stat st;
		int dev = stat(path, &st) == 0;
		if (best < 0 || dev > best_dev || (dev == best_dev && idx < best)) {
			best = idx;
			best_dev = dev;
			memset(name, 0, IFNAMSIZ);
			memcpy(name, e->d_name, strlen(e->d_name)); /* shorter than IFNAMSIZ: checked above */
		}
	}
	if (d) closedir(d);
	return best < 0 ? -1 : 0;
}

/* ---- rtnetlink ---- */
struct nlreq {
	struct nlmsghdr h;
	union {
		struct ifaddrmsg a;
		struct rtmsg r;
	} u;
	char attrs[64];
};

static void nl_attr(struct nlreq *q, unsigned short type, const void *data, unsigned short len) {
	struct rtattr *ra = (struct rtattr *)((char *)q + NLMSG_ALIGN(q->h.nlmsg_len));
	ra->rta_type = type;
	ra->rta_len = (unsigned short)RTA_LENGTH(len);
	memcpy(RTA_DATA(ra), data, len);
	q->h.nlmsg_len = NLMSG_ALIGN(q->h.nlmsg_len) + RTA_ALIGN(ra->rta_len);
}

static int nl_open(void) {
	int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
	if (fd < 0) return -1;
	struct timeval tv = {.tv_sec = 2};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv); /* the kernel always answers; just in case */
	return fd;
}

static unsigned nl_seq;

/* Send a request with NLM_F_ACK and wait for its answer: 0, or -1 with errno set. */
static int nl_do(int fd, struct nlreq *q) {
	q->h.nlmsg_flags |= NLM_F_REQUEST | NLM_F_ACK;
	q->h.nlmsg_seq = ++nl_seq;
	if (send(fd, q, q->h.nlmsg_len, 0) < 0) return -1;
	static char buf[8192];
	for (;;) {
		ssize_t r = recv(fd, buf, sizeof buf, 0);
		if (r < 0 && errno == EINTR) continue;
		if (r <= 0) return -1;
		for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (size_t)r); h = NLMSG_NEXT(h, r)) {
			if (h->nlmsg_seq != q->h.nlmsg_seq || h->nlmsg_type != NLMSG_ERROR) continue;
			if (h->nlmsg_len < NLMSG_LENGTH(sizeof(struct nlmsgerr))) break;
			int err = ((struct nlmsgerr *)NLMSG_DATA(h))->error;
			if (!err) return 0;
			errno = -err;
			return -1;
		}
	}
}

/* Remove every IPv4 address of interface idx. */
static int flush_addrs(int fd, int idx) {
	struct {
		struct in_addr a;
		unsigned char plen;
	} old[MAX_OLD_ADDRS];
	int nold = 0;
	struct nlreq q = {0};
	q.h.nlmsg_len = NLMSG_LENGTH(sizeof(struct ifaddrmsg));
	q.h.nlmsg_type = RTM_GETADDR;
	q.h.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
	q.h.nlmsg_seq = ++nl_seq;
	q.u.a.ifa_family = AF_INET;
	if (send(fd, &q, q.h.nlmsg_len, 0) < 0) return -1;
	static char buf[32768];
	for (int done = 0; !done;) {
		ssize_t r = recv(fd, buf, sizeof buf, 0);
		if (r < 0 && errno == EINTR) continue;
		if (r <= 0) return -1;
		for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (size_t)r); h = NLMSG_NEXT(h, r)) {
			if (h->nlmsg_seq != q.h.nlmsg_seq) continue;
			if (h->nlmsg_type == NLMSG_DONE || h->nlmsg_type == NLMSG_ERROR) {
				done = 1;
				break;
			}
			if (h->nlmsg_type != RTM_NEWADDR || h->nlmsg_len < NLMSG_LENGTH(sizeof(struct ifaddrmsg))) continue;
			struct ifaddrmsg *ifa = NLMSG_DATA(h);
			if ((int)ifa->ifa_index != idx || ifa->ifa_family != AF_INET) continue;
			int len = (int)IFA_PAYLOAD(h);
			for (struct rtattr *ra = IFA_RTA(ifa); RTA_OK(ra, len); ra = RTA_NEXT(ra, len))
				if (ra->rta_type == IFA_LOCAL && RTA_PAYLOAD(ra) == 4 && nold < MAX_OLD_ADDRS) {
					memcpy(&old[nold].a, RTA_DATA(ra), 4);
					old[nold++].plen = ifa->ifa_prefixlen;
				}
		}
	}
	for (int i = 0; i < nold; i++) {
		struct nlreq d = {0};
		d.h.nlmsg_len = NLMSG_LENGTH(sizeof(struct ifaddrmsg));
		d.h.nlmsg_type = RTM_DELADDR;
		d.u.a.ifa_family = AF_INET;
		d.u.a.ifa_prefixlen = old[i].plen;
		d.u.a.ifa_index = (unsigned)idx;
		nl_attr(&d, IFA_LOCAL, &old[i].a, 4);
		/* deleting a primary address may take its secondaries with it */
		if (nl_do(fd, &d) < 0 && errno != EADDRNOTAVAIL) return -1;
	}
	return 0;
}

static int add_addr(int fd, int idx, struct in_addr a, int prefix) {
	struct nlreq q = {0};
	q.h.nlmsg_len = NLMSG_LENGTH(sizeof(struct ifaddrmsg));
	q.h.nlmsg_type = RTM_NEWADDR;
	q.h.nlmsg_flags = NLM_F_CREATE | NLM_F_REPLACE;
	q.u.a.ifa_family = AF_INET;
	q.u.a.ifa_prefixlen = (unsigned char)prefix;
	q.u.a.ifa_index = (unsigned)idx;
	nl_attr(&q, IFA_LOCAL, &a, 4);
	nl_attr(&q, IFA_ADDRESS, &a, 4);
	if (prefix < 31) {
		struct in_addr b = {a.s_addr | htonl(prefix ? 0xffffffffu >> prefix : 0xffffffffu)};
		nl_attr(&q, IFA_BROADCAST, &b, 4);
	}
	return nl_do(fd, &q);
}

static int add_default_route(int fd, int idx, struct in_addr gw) {
	struct nlreq q = {0};
	q.h.nlmsg_len = NLMSG_LENGTH(sizeof(struct rtmsg));
	q.h.nlmsg_type = RTM_NEWROUTE;
	q.h.nlmsg_flags = NLM_F_CREATE | NLM_F_REPLACE;
	q.u.r.rtm_family = AF_INET;
	q.u.r.rtm_table = RT_TABLE_MAIN;
	q.u.r.rtm_protocol = RTPROT_BOOT;
	q.u.r.rtm_scope = RT_SCOPE_UNIVERSE;
	q.u.r.rtm_type = RTN_UNICAST;
	uint32_t oif = (uint32_t)idx;
	nl_attr(&q, RTA_GATEWAY, &gw, 4);
	nl_attr(&q, RTA_OIF, &oif, 4);
	return nl_do(fd, &q);
}

/* Forget the link-layer address of `a` on the interface (a restored clone may hold its parent's gateway). */
static void del_neigh(int s, const char *ifname, struct in_addr a) {
	struct arpreq r;
	memset(&r, 0, sizeof r);
	struct sockaddr_in *pa = (struct sockaddr_in *)&r.arp_pa;
	pa->sin_family = AF_INET;
	pa->sin_addr = a;
	snprintf(r.arp_dev, sizeof r.arp_dev, "%s", ifname);
	ioctl(s, SIOCDARP, &r); /* ENXIO (no entry) is the usual answer */
}

/* A permanent link-layer address for `a` (the gateway and resolver of a TAP: the host does not answer ARP for the
 * addresses every guest sees, it translates them). */
static int set_neigh(int s, const char *ifname, struct in_addr a, const uint8_t mac[6]) {
	struct arpreq r;
	memset(&r, 0, sizeof r);
	struct sockaddr_in *pa = (struct sockaddr_in *)&r.arp_pa;
	pa->sin_family = AF_INET;
	pa->sin_addr = a;
	r.arp_ha.sa_family = ARPHRD_ETHER;
	memcpy(r.arp_ha.sa_data, mac, 6);
	r.arp_flags = ATF_PERM | ATF_COM;
	snprintf(r.arp_dev, sizeof r.arp_dev, "%s", ifname);
	return ioctl(s, SIOCSARP, &r);
}

/* ---- files ---- */
static int write_resolv(const struct netcfg *cfg) {
	char text[512];
	size_t n = 0;
	for (int i = 0; i < cfg->ndns; i++) {
		char a[INET_ADDRSTRLEN];
		inet_ntop(AF_INET, &cfg->dns[i], a, sizeof a);
		n += (size_t)snprintf(text + n, sizeof text - n, "nameserver %s\n", a);
	}
	n += (size_t)snprintf(text + n, sizeof text - n, "options timeout:2 attempts:2\n");
	/* A regular file is rewritten in place: no truncation to zero and no rename over it, the two patterns after
	 * which ext4 (auto_da_alloc) forces the data to disk, which cost tens of ms on every restore. The file is
	 * tiny and written by one write(), so a reader sees the old or the new text except in a very short window. */
	struct stat st;
	if (lstat("/etc/resolv.conf", &st) == 0 && S_ISREG(st.st_mode)) {
		int fd = open("/etc/resolv.conf", O_WRONLY | O_NOFOLLOW | O_CLOEXEC);
		if (fd >= 0) {
			int ok = pwrite(fd, text, n, 0) == (ssize_t)n && ftruncate(fd, (off_t)n) == 0;
			int e = errno;
			close(fd);
			if (ok) return 0;
			errno = e;
			return -1;
		}
	}
	const char *tmp = "/etc/.resolv.conf.smolvm";
	unlink(tmp);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
	if (fd < 0) return -1;
	if (write_all(fd, text, n) < 0 || fchmod(fd, 0644) < 0 || close(fd) < 0) {
		int e = errno;
		unlink(tmp);
		errno = e;
		return -1;
	}
	/* rename replaces /etc/resolv.conf itself, a symlink too (not whatever it points to) */
	if (rename(tmp, "/etc/resolv.conf") < 0) {
		int e = errno;
		unlink(tmp);
		errno = e;
		return -1;
	}
	return 0;
}

static void disable_ipv6(const char *ifname) {
	char path[128];
	snprintf(path, sizeof path, "/proc/sys/net/ipv6/conf/%s/disable_ipv6", ifname);
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0) return; /* no IPv6 in this kernel */
	write_all(fd, "1\n", 2);
	close(fd);
}

static int set_flags(int s, struct ifreq *ifr, int up) {
	if (ioctl(s, SIOCGIFFLAGS, ifr) < 0) return -1;
	if (up) ifr->ifr_flags |= IFF_UP;
	else ifr->ifr_flags &= ~IFF_UP;
	return ioctl(s, SIOCSIFFLAGS, ifr);
}

/* Apply cfg; returns 0, or -1 with errno set and *step naming what failed. */
static int apply(const struct netcfg *cfg, const char **step) {
	char ifname[IFNAMSIZ] = {0};
	*step = "find interface";
	for (int waited = 0; find_iface(ifname) < 0; waited += 10) { /* virtio_net may still be probing */
		if (waited >= IF_WAIT_MS) {
			errno = ENODEV;
			return -1;
		}
		usleep(10000);
	}
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0), nl = -1, ret = -1;
	if (s < 0) return -1;
	struct ifreq ifr = {0};
	memcpy(ifr.ifr_name, ifname, IFNAMSIZ);
	int idx = (int)if_nametoindex(ifname);
	if (!idx) goto out;
	*step = "read flags";
	if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0) goto out;
	/* An interface that is up (a restored clone: templates are captured with it up) is changed in place, which
	 * costs far less than taking it down and up again; its stale gateway entries are removed one by one below. */
	int live = (ifr.ifr_flags & IFF_UP) && !cfg->down;
	if (!live) {
		*step = "link down"; /* flushes its neighbour entries and routes */
		if (set_flags(s, &ifr, 0) < 0) goto out;
	}
	if (cfg->has_mac) {
		*step = "set MAC";
		ifr.ifr_hwaddr.sa_family = ARPHRD_ETHER;
		memcpy(ifr.ifr_hwaddr.sa_data, cfg->mac, 6);
		if (ioctl(s, SIOCSIFHWADDR, &ifr) < 0) goto out;
	}
	if (cfg->has_mtu) {
		*step = "set MTU";
		ifr.ifr_mtu = (int)cfg->mtu;
		if (ioctl(s, SIOCSIFMTU, &ifr) < 0) goto out;
	}
	*step = "remove addresses";
	if ((nl = nl_open()) < 0 || flush_addrs(nl, idx) < 0) goto out;
	if (cfg->down) {
		ret = 0;
		goto out;
	}
	*step = "set address";
	if (add_addr(nl, idx, cfg->addr, cfg->prefix) < 0) goto out;
	disable_ipv6(ifname);
	if (!live) {
		*step = "link up";
		if (set_flags(s, &ifr, 1) < 0) goto out;
	} else {
		if (cfg->has_gw) del_neigh(s, ifname, cfg->gw);
		for (int i = 0; i < cfg->ndns; i++) del_neigh(s, ifname, cfg->dns[i]);
	}
	*step = "set neighbour";
	for (int i = 0; i < cfg->nneigh; i++)
		if (set_neigh(s, ifname, cfg->neigh[i], cfg->neigh_mac[i]) < 0) goto out;
	if (cfg->has_gw) {
		*step = "add default route";
		if (add_default_route(nl, idx, cfg->gw) < 0) goto out;
	}
	*step = "write /etc/resolv.conf"; /* without servers too: none must mean none, not the last ones */
	if (write_resolv(cfg) < 0) goto out;
	ret = 0;
out:;
	int e = errno;
	close(s);
	if (nl >= 0) close(nl);
	errno = e;
	return ret;
}

void do_netcfg(int c, uint32_t stream, const uint8_t *pl, size_t n) {
	struct netcfg cfg;
	const char *bad = parse(pl, n, &cfg);
	if (bad) {
		send_error(c, stream, EINVAL, bad);
		return;
	}
	const char *step = "";
	if (opts->is_init && apply(&cfg, &step) < 0) { /* on a host (tests) nothing is touched */
		send_errno(c, stream, errno, step);
		return;
	}
	chan_send(c, T_DONE, stream, NULL, 0);
}
