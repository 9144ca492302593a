#ifndef SMOL_INIT_H
#define SMOL_INIT_H
int init_main(void);
#endif
