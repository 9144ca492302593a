#ifndef SMOL_LAUNCH_TAP_H
#define SMOL_LAUNCH_TAP_H
/* The tap devices of `smolvm-agent launch`: attached to (--tap) or created and set up (--new-tap). */
#include <net/if.h>
#include <netinet/in.h>
#include <stdint.h>

struct tap {
	char name[IFNAMSIZ];
	int fd, create, has_mac, has_addr, has_neigh, prefix;
	uint8_t mac[6], neigh_mac[6];
	struct in_addr addr, neigh;
};

/* "aa:bb:cc:dd:ee:ff", unicast: 0 or -1 */
int parse_mac6(const char *s, uint8_t mac[6]);
/* "A.B.C.D/PREFIX" into t->addr, t->prefix */
int parse_addr(const char *v, struct tap *t);
/* "A.B.C.D=MAC" into t->neigh, t->neigh_mac */
int parse_neigh(const char *v, struct tap *t);
/* "NAME:FD" */
int parse_tap(const char *v, struct tap *t);
/* Open (or create and set up) the device as descriptor t->fd; -1 with errno and *step on failure. */
int open_tap(const struct tap *t, const char **step);
#endif
