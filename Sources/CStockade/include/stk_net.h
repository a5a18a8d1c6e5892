#ifndef STK_NET_H
#define STK_NET_H
/*
 * Network shims for the port forwarder. They are C because glibc declares
 * setns(2) and accept4(2) only with _GNU_SOURCE, which Swift's Glibc module
 * is not built with.
 */

#include <stdint.h>
#include <sys/types.h>

#pragma clang assume_nonnull begin

/*
 * setns(nsfd, CLONE_NEWNET): moves the calling thread into the network
 * namespace `nsfd` refers to. Returns 0, or -1 with errno set.
 * Why C: glibc declares setns and CLONE_NEWNET only with _GNU_SOURCE.
 */
int stk_setns_net(int nsfd);

/*
 * accept4(fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK): the accepted socket
 * is close-on-exec from birth, so a concurrent spawn cannot inherit it.
 * Returns the new fd, or -1 with errno set. Why C: accept4 needs _GNU_SOURCE.
 */
int stk_accept_cloexec(int fd);

/*
 * A listening TCP socket on 127.0.0.1:port (IP_FREEBIND, non-blocking,
 * close-on-exec) made in the network namespace of `pid`: the calling thread
 * enters it for socket(2) only and returns (aborting if it cannot: it must
 * not stay there). Returns the fd, or -1 with errno set.
 * Why C: the spawn helper calls it between clone and release, where no Swift
 * runs; setns needs _GNU_SOURCE.
 */
int stk_listen_in_netns(pid_t pid, uint16_t port);

/*
 * A new network namespace, made by the calling thread (unshare) and left at
 * once (setns back to `home`, aborting if that fails: the thread must not
 * stay there). Returns a descriptor of it, or -1 with errno set. The spawn
 * helper makes each worker's namespace this way, ahead of the run that uses it.
 */
int stk_netns_make(int home);

/*
 * In the calling thread's network namespace: `lo` up, and every port
 * bindable without a capability (ip_unprivileged_port_start = 0, as Docker
 * does; a kernel without the knob, before 4.11, is left as it is). The
 * helper calls it inside a worker's namespace before the clone. Returns 0, or
 * -1 with errno set.
 */
int stk_netns_loopback(void);

/*
 * Whether the kernel routes a TCP connection to `addr`:`port` to this host:
 * the route that flow takes in the calling thread's network namespace
 * (RTM_GETROUTE with the destination, protocol TCP and the port, and again
 * from the source address a connection there is given, so policy rules on
 * the protocol, the destination port or the source address are taken as for
 * the connection) is of type `local` (delivered here: an interface's address, or
 * a range a `local` route makes answer as the host, AnyIP, with or without
 * `ip_nonlocal_bind`, IPv4 or IPv6). A rule on the source port cannot be
 * matched: that port is chosen at the connect. `addr` is 4 bytes (AF_INET)
 * or 16 (AF_INET6). Returns 1 (local), 0 (another route, a refusing one, or
 * none), or -1 with errno set when the kernel could not be asked.
 */
int stk_route_is_local(int family, const uint8_t *addr, uint16_t port);

#pragma clang assume_nonnull end
#endif
