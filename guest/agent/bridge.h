#ifndef SMOL_BRIDGE_H
#define SMOL_BRIDGE_H
int bridge_main(const char *sock, char **argv);
#endif
