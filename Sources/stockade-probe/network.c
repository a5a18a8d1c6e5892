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
#include <stdlib.h>
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

/* Threat class 14, egress: one CONNECT through the proxy named by HTTP_PROXY
 * (http://ADDR:PORT, as the supervisor sets it), answered "HTTP/1.1 CODE ...".
 * Returns the status code, 0 when no answer could be read, -1 with errno when
 * the proxy could not be reached. */
static int proxy_connect(const char *proxy, const char *host, long port) {
    unsigned a, b, c, d, pport;
    if (sscanf(proxy, "http://%u.%u.%u.%u:%u", &a, &b, &c, &d, &pport) != 5 || a > 255 || b > 255 || c > 255 || d > 255 ||
        pport == 0 || pport > 65535) {
        errno = EINVAL;
        return -1;
    }
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)pport)};
    sa.sin_addr.s_addr = htonl((a << 24) | (b << 16) | (c << 8) | d);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    if (connect_bounded(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    fcntl(fd, F_SETFL, 0);
    char request[600];
    int n = snprintf(request, sizeof request, "CONNECT %s:%ld HTTP/1.1\r\nHost: %s:%ld\r\n\r\n", host, port, host, port);
    if (n <= 0 || (size_t)n >= sizeof request || write(fd, request, (size_t)n) != n) {
        close(fd);
        return 0;
    }
    char answer[64] = {0};
    size_t got = 0;
    struct pollfd p = {fd, POLLIN, 0};
    while (got < 12 && poll(&p, 1, 5000) == 1) {
        ssize_t r = read(fd, answer + got, sizeof answer - 1 - got);
        if (r <= 0) break;
        got += (size_t)r;
    }
    close(fd);
    int code = 0;
    if (got >= 12 && sscanf(answer, "HTTP/1.%*d %d", &code) != 1) code = 0;
    return code;
}

/* egress-connect NAME ADDR PORT [ADMITTED]: reach NAME:PORT. In a worker with a
 * proxy (HTTP_PROXY set), through it: first ADMITTED:PORT, which the run's rules
 * admit, must get through (the proxy works; else the probe cannot tell), then
 * NAME:PORT must be refused. Unsandboxed (no proxy), straight to ADDR:PORT, the
 * address NAME stands for: the positive control that the destination answers. */
STK_PROBE(probe_egress_connect) {
    long port = stk_arg_long(argc, argv, 2, 1, 65535);
    if (argc < 3 || port < 0) return stk_report(STK_PROBE_USAGE, "egress-connect", "usage: egress-connect NAME ADDR PORT [ADMITTED]");
    const char *name = argv[0], *addr = argv[1], *admitted = argc > 3 ? argv[3] : NULL;
    const char *proxy = getenv("HTTP_PROXY");
    if (proxy == NULL || *proxy == 0) {
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
        if (inet_pton(AF_INET, addr, &sa.sin_addr) != 1) return stk_report(STK_PROBE_USAGE, "egress-connect", "ADDR must be IPv4");
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) return stk_report(STK_PROBE_BLOCKED, "egress-connect", "socket: errno %d (%s)", errno, stk_errno_name(errno));
        int rc = connect_bounded(fd, (struct sockaddr *)&sa, sizeof sa);
        int err = errno;
        close(fd);
        char what[80];
        snprintf(what, sizeof what, "%s:%ld directly (no proxy)", addr, port);
        return connect_verdict("egress-connect", what, rc, err);
    }
    if (admitted != NULL) {
        int code = proxy_connect(proxy, admitted, port);
        if (code != 200) {
            return stk_report(STK_PROBE_ERROR, "egress-connect", "the proxy did not admit %s:%ld (answer %d, errno %s): cannot tell",
                              admitted, port, code, code < 0 ? stk_errno_name(errno) : "-");
        }
    }
    int code = proxy_connect(proxy, name, port);
    if (code == 200) return stk_report(STK_PROBE_SUCCEEDED, "egress-connect", "the proxy connected %s:%ld", name, port);
    if (code == 403) return stk_report(STK_PROBE_BLOCKED, "egress-connect", "the proxy refused %s:%ld (403)", name, port);
    return stk_report(STK_PROBE_ERROR, "egress-connect", "no verdict for %s:%ld (answer %d)", name, port, code);
}
