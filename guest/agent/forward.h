#ifndef SMOL_FORWARD_H
#define SMOL_FORWARD_H
/* smolvm-agent forward: a host TCP port relayed to a TCP port in the guest through the VM's agent socket */
int forward_main(int argc, char **argv);
#endif
