/* Threat class 6, network: host loopback listeners, abstract and path Unix
 * sockets of the host, raw sockets. */
#define _GNU_SOURCE
#include "probe_util.h"
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* connect with a 2 s bound; returns 0 or -1 with errno. */
static int connect_bounded(int fd, const struct sockaddr *addr, socklen_t len) {
    fcntl(fd, F_SETFL, O_NONBLOCK);
    if (connect(fd, addr, len) == 0) return 0;
    if (errno != EINPROGRESS && errno != EAGAIN) return -1;
    struct pollfd p = {fd, POLLOUT, 0};
    int n = poll(&p, 1, 2000);
    if (n == 0) { errno = ETIMEDOUT; return -1; }
    if (n < 0) return -1;
    int err = 0;
    socklen_t el = sizeof err;
    getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el);
    if (err) { errno = err; return -1; }
    return 0;
}

static int connect_verdict(const char *name, const char *what, int rc, int err) {
    if (rc == 0) return stk_report(STK_PROBE_SUCCEEDED, name, "connected to %s", what);
    return stk_report(STK_PROBE_BLOCKED, name, "connect %s: errno %d (%s)", what, err, stk_errno_name(err));
}

/* host-loopback PORT */
STK_PROBE(probe_host_loopback) {
    long port = stk_arg_long(argc, argv, 0, 1, 65535);
    if (port < 0) return stk_report(STK_PROBE_USAGE, "host-loopback", "usage: host-loopback PORT");
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return stk_report(STK_PROBE_BLOCKED, "host-loopback", "socket: errno %d (%s)", errno, stk_errno_name(errno));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int rc = connect_bounded(fd, (struct sockaddr *)&a, sizeof a);
    int err = errno;
    close(fd);
    char what[64];
    snprintf(what, sizeof what, "127.0.0.1:%ld", port);
    return connect_verdict("host-loopback", what, rc, err);
}

static int connect_unix(const char *name, const char *path, int abstract) {
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    size_t len = strlen(path);
    if (len + 1 > sizeof a.sun_path) return stk_report(STK_PROBE_USAGE, name, "name too long");
    memcpy(a.sun_path + (abstract ? 1 : 0), path, len);
    socklen_t alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + (abstract ? 1 : 0));
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return stk_report(STK_PROBE_BLOCKED, name, "socket: errno %d (%s)", errno, stk_errno_name(errno));
    int rc = connect_bounded(fd, (struct sockaddr *)&a, alen);
    int err = errno;
    close(fd);
    char what[128];
    snprintf(what, sizeof what, "%s%s", abstract ? "@" : "", path);
    return connect_verdict(name, what, rc, err);
}

/* abstract-unix NAME: connects to @NAME. */
STK_PROBE(probe_abstract_unix) {
    if (argc < 1) return stk_report(STK_PROBE_USAGE, "abstract-unix", "usage: abstract-unix NAME");
    return connect_unix("abstract-unix", argv[0], 1);
}

/* unix-path PATH */
STK_PROBE(probe_unix_path) {
    if (argc < 1) return stk_report(STK_PROBE_USAGE, "unix-path", "usage: unix-path PATH");
    return connect_unix("unix-path", argv[0], 0);
}

STK_PROBE(probe_raw_socket) {
    (void)argc; (void)argv;
    long fd = socket(AF_INET, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_ICMP);
    int err = errno;
    if (fd >= 0) close((int)fd);
    return stk_verdict_call("raw-socket", "socket(AF_INET, SOCK_RAW, ICMP)", fd, err, (const int[]){EPROTONOSUPPORT, 0});
}
