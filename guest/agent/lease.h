#ifndef SMOL_LEASE_H
#define SMOL_LEASE_H
#include <sys/types.h>
/* Wait until the VMM `vmm` (our child) ends, its wait status in *status, enforcing the lease at `lease_path` (may be
 * NULL: just wait) with the expire hook `hook` (nhook words; output to logfd). See lease.c. */
void lease_wait(pid_t vmm, int *status, const char *lease_path, char **hook, int nhook, int logfd);
#endif
