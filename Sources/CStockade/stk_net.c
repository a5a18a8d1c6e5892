#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include "stk_net.h"

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
    /* The worker's lo is brought up later, by its init: bind to the address before it exists. */
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
