#define _GNU_SOURCE
#include <sched.h>
#include <sys/socket.h>

#include "stk_net.h"

int stk_setns_net(int nsfd) {
    return setns(nsfd, CLONE_NEWNET);
}

int stk_accept_cloexec(int fd) {
    return accept4(fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
}
