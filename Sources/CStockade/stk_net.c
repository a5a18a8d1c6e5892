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
#include <linux/netlink.h>
#include <linux/rtnetlink.h>

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

/* Appends attribute `type` with `len` bytes of `data` to the message in `m` (room checked by the caller). */
static void stk_rtattr(struct nlmsghdr *m, unsigned short type, const void *data, size_t len) {
    struct rtattr *a = (struct rtattr *)((char *)m + NLMSG_ALIGN(m->nlmsg_len));
    a->rta_type = type;
    a->rta_len = (unsigned short)RTA_LENGTH(len);
    memcpy(RTA_DATA(a), data, len);
    m->nlmsg_len = NLMSG_ALIGN(m->nlmsg_len) + RTA_ALIGN(a->rta_len);
}

/* One RTM_GETROUTE for a TCP flow to `dst`:`port` (from `src` when given): 1 local, 0 not, -1 unknown. */
static int stk_route_query(int family, const uint8_t *dst, size_t len, uint16_t port, const uint8_t *src) {
    union {
        struct nlmsghdr header;
        char bytes[NLMSG_SPACE(sizeof(struct rtmsg)) + 2 * RTA_SPACE(16) + RTA_SPACE(1) + RTA_SPACE(2)];
    } request;
    memset(&request, 0, sizeof request);
    request.header.nlmsg_len = NLMSG_LENGTH(sizeof(struct rtmsg));
    request.header.nlmsg_type = RTM_GETROUTE;
    request.header.nlmsg_flags = NLM_F_REQUEST;
    request.header.nlmsg_seq = 1;
    struct rtmsg *route = NLMSG_DATA(&request.header);
    route->rtm_family = (unsigned char)family;
    route->rtm_dst_len = (unsigned char)(len * 8);
    /* The flow the proxy's connection is: TCP to this address and port, so that a policy rule
       matching the protocol or the port (ipproto, dport) is taken as it is for the connection. */
    uint8_t protocol = IPPROTO_TCP;
    uint16_t port_be = htons(port);
    stk_rtattr(&request.header, RTA_DST, dst, len);
    if (src != NULL) {
        route->rtm_src_len = (unsigned char)(len * 8);
        stk_rtattr(&request.header, RTA_SRC, src, len);
    }
    stk_rtattr(&request.header, RTA_IP_PROTO, &protocol, sizeof protocol);
    stk_rtattr(&request.header, RTA_DPORT, &port_be, sizeof port_be);

    int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
    if (fd < 0) return -1;
    struct sockaddr_nl kernel = { .nl_family = AF_NETLINK };
    int result = -1;
    if (sendto(fd, &request, request.header.nlmsg_len, 0, (struct sockaddr *)&kernel, sizeof kernel) < 0) goto done;
    /* One answer to one request: a route (RTM_NEWROUTE) or an error. A route's attributes
       (its table's, metrics, cache info) fit well within this. */
    union {
        struct nlmsghdr header;
        uint8_t bytes[8192];
    } answer;
    for (;;) {
        ssize_t n = recv(fd, &answer, sizeof answer, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) goto done;
        struct nlmsghdr *h = &answer.header;
        if (!NLMSG_OK(h, (size_t)n) || h->nlmsg_seq != 1) {
            errno = EPROTO;
            goto done;
        }
        if (h->nlmsg_type == NLMSG_ERROR) {
            if (h->nlmsg_len < NLMSG_LENGTH(sizeof(struct nlmsgerr))) {
                errno = EPROTO;
                goto done;
            }
            const struct nlmsgerr *e = NLMSG_DATA(h);
            /* No route to it, or one that refuses (unreachable, prohibit, blackhole): not
               delivered here. */
            if (e->error == -ENETUNREACH || e->error == -EHOSTUNREACH || e->error == -EACCES || e->error == -EINVAL) {
                result = 0;
            } else {
                errno = e->error < 0 ? -e->error : EPROTO;
            }
            goto done;
        }
        if (h->nlmsg_type != RTM_NEWROUTE || h->nlmsg_len < NLMSG_LENGTH(sizeof(struct rtmsg))) {
            errno = EPROTO;
            goto done;
        }
        const struct rtmsg *r = NLMSG_DATA(h);
        result = r->rtm_type == RTN_LOCAL ? 1 : 0;
        goto done;
    }
done:;
    int saved = errno;
    close(fd);
    errno = saved;
    return result;
}

/* The source address the kernel gives a connection to `dst`:`port` (a UDP socket connected there:
   nothing is sent). 0, or -1 with errno set (no route for it: ENETUNREACH and the like). */
static int stk_chosen_source(int family, const uint8_t *dst, size_t len, uint16_t port, uint8_t *out) {
    union {
        struct sockaddr any;
        struct sockaddr_in v4;
        struct sockaddr_in6 v6;
    } to, from;
    memset(&to, 0, sizeof to);
    socklen_t size;
    if (family == AF_INET) {
        to.v4.sin_family = AF_INET;
        to.v4.sin_port = htons(port);
        memcpy(&to.v4.sin_addr, dst, len);
        size = sizeof to.v4;
    } else {
        to.v6.sin6_family = AF_INET6;
        to.v6.sin6_port = htons(port);
        memcpy(&to.v6.sin6_addr, dst, len);
        size = sizeof to.v6;
    }
    int fd = socket(family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    socklen_t got = sizeof from;
    int rc = connect(fd, &to.any, size) == 0 && getsockname(fd, &from.any, &got) == 0 ? 0 : -1;
    if (rc == 0) memcpy(out, family == AF_INET ? (const void *)&from.v4.sin_addr : (const void *)&from.v6.sin6_addr, len);
    int saved = errno;
    close(fd);
    errno = saved;
    return rc;
}

int stk_route_is_local(int family, const uint8_t *addr, uint16_t port) {
    size_t len = family == AF_INET ? 4 : family == AF_INET6 ? 16 : 0;
    if (len == 0) {
        errno = EAFNOSUPPORT;
        return -1;
    }
    int first = stk_route_query(family, addr, len, port, NULL);
    if (first == 1) return 1;
    /* Asked again from the source a connection there is given: a rule on the source address (`from`),
       or a route specific to it, can make the address local for the connection though not for a
       flow from no address. No source (no route at all) leaves the first answer. */
    uint8_t source[16];
    if (stk_chosen_source(family, addr, len, port, source) == 0 && stk_route_query(family, addr, len, port, source) == 1) return 1;
    return first;
}
