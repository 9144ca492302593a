/* PID 1 of the initramfs: load virtio modules, mount the ext4 root, switch to it, serve the host. */
#define _GNU_SOURCE
#include "init.h"

#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/mman.h>
#if defined(__x86_64__) || defined(__i386__)
#include <sys/io.h>
#endif
#include <unistd.h>

#include "proto.h"
#include "server.h"

static char cmdline[4096];

/* Value of key=value on the kernel command line, or NULL. */
static const char *param(const char *key) {
	static char val[256];
	size_t kl = strlen(key);
	for (char *p = cmdline; p && *p;) {
		while (*p == ' ') p++;
		if (!strncmp(p, key, kl) && p[kl] == '=') {
			const char *v = p + kl + 1;
			size_t n = strcspn(v, " \n");
			if (n >= sizeof val) n = sizeof val - 1;
			memcpy(val, v, n);
			val[n] = 0;
			return val;
		}
		p = strchr(p, ' ');
	}
	return NULL;
}

static void must_mount(const char *src, const char *dst, const char *type, unsigned long flags, const char *data) {
	mkdir(dst, 0755);
	if (mount(src, dst, type, flags, data) < 0 && errno != EBUSY)
		logmsg("mount %s on %s: %s", type ? type : src, dst, strerror(errno));
}

static void load_modules(void) {
	FILE *f = fopen("/etc/smolvm/modules", "r");
	char line[256];
	if (!f) return;
	while (fgets(line, sizeof line, f)) {
		line[strcspn(line, "\n")] = 0;
		if (!line[0]) continue;
		char path[300];
		snprintf(path, sizeof path, "/lib/modules/%s", line);
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			logmsg("module %s: %s", line, strerror(errno));
			continue;
		}
		if (syscall(SYS_finit_module, fd, "", 0) < 0 && errno != EEXIST)
			logmsg("load %s: %s", line, strerror(errno));
		close(fd);
	}
	fclose(f);
}

static void power_off(void) {
	sync();
	reboot(RB_AUTOBOOT); /* QEMU runs with -no-reboot, so this ends the VM */
	for (;;) pause();
}

static void loopback_up(void) {
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	struct ifreq ifr = {0};
	strcpy(ifr.ifr_name, "lo");
	if (s >= 0 && ioctl(s, SIOCGIFFLAGS, &ifr) == 0) {
		ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
		ioctl(s, SIOCSIFFLAGS, &ifr);
	}
	if (s >= 0) close(s);
}

static int switch_root(const char *dev, const char *fstype) {
	for (int i = 0; i < 500; i++) { /* the disk appears once virtio_blk has probed */
		struct stat st;
		if (stat(dev, &st) == 0) break;
		usleep(10000);
	}
	mkdir("/newroot", 0755);
	if (mount(dev, "/newroot", fstype, 0, NULL) < 0) {
		logmsg("mount root %s (%s): %s", dev, fstype, strerror(errno));
		return -1;
	}
	const char *moves[] = {"/dev", "/proc", "/sys"};
	for (int i = 0; i < 3; i++) {
		char dst[64];
		snprintf(dst, sizeof dst, "/newroot%s", moves[i]);
		mkdir(dst, 0755);
		if (mount(moves[i], dst, NULL, MS_MOVE, NULL) < 0) logmsg("move %s: %s", moves[i], strerror(errno));
	}
	if (chdir("/newroot") < 0 || mount(".", "/", NULL, MS_MOVE, NULL) < 0 || chroot(".") < 0 || chdir("/") < 0) {
		logmsg("switch root: %s", strerror(errno));
		return -1;
	}
	return 0;
}

/* Firecracker's --boot-timer: the guest writes 123 to the boot timer device, at the MMIO address SmolVM passes
 * (`smolvm.boot_timer=0x...`: it depends on Firecracker's version), when it is up; Firecracker then logs the time
 * from its start to here ("Guest-boot-time"). Only when asked: nothing else is at that address. */
static void boot_timer(const char *at) {
	if (!at) return;
	unsigned long addr = strtoul(at, NULL, 0);
	long page = sysconf(_SC_PAGESIZE);
	int fd = open("/dev/mem", O_RDWR | O_SYNC | O_CLOEXEC);
	if (fd < 0 || page <= 0) {
		if (fd >= 0) close(fd);
		return;
	}
	volatile unsigned char *m = mmap(NULL, (size_t)page, PROT_WRITE, MAP_SHARED, fd, (off_t)(addr & ~(unsigned long)(page - 1)));
	if (m != MAP_FAILED) {
		m[addr & (unsigned long)(page - 1)] = 123;
		munmap((void *)m, (size_t)page);
	}
	close(fd);
}

/* Does the kernel use the i8254 PIT for its clock events (as its tick or broadcast device)? */
static int kernel_uses_pit(void) {
	const char *files[] = {"/sys/devices/system/clockevents/broadcast/current_device",
			       "/sys/devices/system/clockevents/clockevent0/current_device"};
	for (int i = 0; i < 2; i++) {
		char buf[64] = {0};
		int fd = open(files[i], O_RDONLY | O_CLOEXEC);
		if (fd < 0) continue;
		ssize_t n = read(fd, buf, sizeof buf - 1);
		close(fd);
		if (n > 0 && strstr(buf, "pit")) return 1;
	}
	return 0;
}

/* The firmware (SeaBIOS) leaves the PIT's channel 0 counting in square-wave mode at 18.2 Hz; a kernel that ticks with
 * its APIC timer never touches it (Linux stops it only since 6.11), so the VMM kept a timer firing every 27 ms for an
 * interrupt nobody listens to: a third of a QEMU's idle CPU (docs/DENSITY.md). Writing mode 0 (one-shot) to channel 0
 * stops it after its current count. Left alone when the kernel does use it, or when asked (smolvm.pit=keep). */
static void stop_unused_pit(void) {
#if defined(__x86_64__) || defined(__i386__)
	const char *pit = param("smolvm.pit");
	if ((pit && !strcmp(pit, "keep")) || kernel_uses_pit()) return;
	if (ioperm(0x40, 4, 1) < 0) return;
	outb(0x30, 0x43); /* channel 0, low then high byte, mode 0, binary */
	outb(0, 0x40);
	outb(0, 0x40);
	ioperm(0x40, 4, 0);
#endif
}

int init_main(void) {
	must_mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	int fd = open("/proc/cmdline", O_RDONLY);
	if (fd >= 0) {
		ssize_t n = read(fd, cmdline, sizeof cmdline - 1);
		cmdline[n > 0 ? n : 0] = 0;
		close(fd);
	}
	const char *probe = param("smolvm.probe");
	if (probe) { /* accelerator probe: prove the guest reached userspace, then leave */
		static const char ok[] = "\nSMOLVM_PROBE_OK\n";
		ssize_t ignored = write(1, ok, sizeof ok - 1);
		(void)ignored;
		power_off();
	}
	must_mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	must_mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
	stop_unused_pit();
	logmsg("loading modules");
	load_modules();
	logmsg("modules loaded");
	const char *root = param("smolvm.root");
	if (!root) root = "/dev/vda";
	char rootdev[256];
	snprintf(rootdev, sizeof rootdev, "%s", root);
	const char *fstype = param("smolvm.rootfstype");
	if (switch_root(rootdev, fstype ? fstype : "ext4") < 0) {
		logmsg("cannot mount the root filesystem; powering off");
		power_off();
	}
	logmsg("root mounted");
	must_mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "gid=5,mode=620,ptmxmode=666");
	must_mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
	must_mount("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755");
	const char *host = param("smolvm.hostname");
	if (!host) host = "smolvm";
	sethostname(host, strlen(host));
	loopback_up();
	static char *base_env[] = {"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root",
				   "USER=root", "LANG=C.UTF-8", NULL};
	const char *channel = param("smolvm.channel");
	struct server_opts o = {0};
	o.is_init = 1;
	o.base_env = base_env;
	if (!channel || !strcmp(channel, "vport")) o.vport_name = "agent";
	if (!channel || !strcmp(channel, "vsock")) o.vsock_port = 1024;
	logmsg("ready");
	boot_timer(param("smolvm.boot_timer"));
	server_run(&o);
	logmsg("server stopped; powering off");
	power_off();
	return 0;
}
