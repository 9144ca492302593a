#ifndef SMOL_PROXY_H
#define SMOL_PROXY_H
int proxy_main(const char *upstream, const char *listen_path, const char *pidfile, const char *logfile,
	       int daemonize, int release_all);
#endif
