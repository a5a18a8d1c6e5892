#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sched.h>
#include <string.h>
#include <sys/ioctl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include "stk_net.h"
#include "stk_internal.h"

STK_BUILD_STAMP(net)

int stk_setns_net(int nsfd) {
    return setns(nsfd, CLONE_NEWNET);
}

int stk_listen_in_netns(pid_t pid, uint16_t port) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/ns/net", (int)pid);
    int target = open(path, O_RDONLY | O_CLOEXEC);
    if (target < 0) return -1;
    int home = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (home < 0 || setns(target, CLONE_NEWNET) < 0) {
        int saved = errno;
        close(target);
        if (home >= 0) close(home);
        errno = saved;
        return -1;
    }
    close(target);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int saved = errno;
    /* Staying in the worker's namespace would make every later socket of this thread the worker's. */
    if (setns(home, CLONE_NEWNET) < 0) abort();
    close(home);
    if (fd < 0) {
        errno = saved;
        return -1;
    }
    int one = 1;
    (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    /* The address may not exist yet (lo down): bind to it anyway. */
    (void)setsockopt(fd, IPPROTO_IP, IP_FREEBIND, &one, sizeof one);
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr = {htonl(INADDR_LOOPBACK)}};
    if (bind(fd, (struct sockaddr *)&address, sizeof address) < 0 || listen(fd, 128) < 0) {
        saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    return fd;
}

int stk_accept_cloexec(int fd) {
    return accept4(fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
}

int stk_netns_make(int home) {
    if (unshare(CLONE_NEWNET) < 0) return -1;
    int fd = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    int saved = errno;
    /* Staying in the new namespace would make every later socket of this thread its own. */
    if (setns(home, CLONE_NEWNET) < 0) abort();
    errno = saved;
    return fd;
}

int stk_netns_loopback(void) {
    int fd = open("/proc/sys/net/ipv4/ip_unprivileged_port_start", O_WRONLY | O_CLOEXEC);
    if (fd < 0 && errno != ENOENT) return -1;
    if (fd >= 0) {
        ssize_t n;
        do n = write(fd, "0", 1); while (n < 0 && errno == EINTR);
        int saved = errno;
        close(fd);
        errno = saved;
        if (n != 1) return -1;
    }
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) return -1;
    struct ifreq req;
    memset(&req, 0, sizeof req);
    memcpy(req.ifr_name, "lo", 3);
    int rc = ioctl(s, SIOCGIFFLAGS, &req);
    if (rc == 0) {
        req.ifr_flags |= IFF_UP | IFF_RUNNING;
        rc = ioctl(s, SIOCSIFFLAGS, &req);
    }
    int saved = errno;
    close(s);
    errno = saved;
    return rc;
}
