#ifndef STK_SYS_H
#define STK_SYS_H
/*
 * epoll and timerfd for the supervisor's event loop. Why C: Swift's Glibc
 * module does not import <sys/epoll.h> or <sys/timerfd.h>, and epoll_event is
 * a packed struct on x86_64.
 */
#include <stdint.h>

#pragma clang assume_nonnull begin

/* epoll_create1(EPOLL_CLOEXEC) */
int stk_epoll_create(void);
/* Adds fd for EPOLLIN | EPOLLRDHUP, the fd as the event's data. */
int stk_epoll_add(int epfd, int fd);
int stk_epoll_remove(int epfd, int fd);
/* Waits; fills fds[i] and events[i]; returns the count or -1. */
int stk_epoll_wait(int epfd, int *_Nonnull fds, uint32_t *_Nonnull events, int capacity, int timeout_ms);
/* A non-blocking, close-on-exec CLOCK_MONOTONIC timerfd that fires once after `nanoseconds`. */
int stk_timerfd_after(uint64_t nanoseconds);

#pragma clang assume_nonnull end
#endif
