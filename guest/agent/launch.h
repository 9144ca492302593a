#ifndef SMOL_LAUNCH_H
#define SMOL_LAUNCH_H
int launch_main(int argc, char **argv);
/* Close every fd >= 3 except the ones listed (which are made inheritable). */
void close_fds_except(const int *keep, int nkeep);
int qmpfd_main(int argc, char **argv);
#endif
