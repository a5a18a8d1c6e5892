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
/* Adds fd for EPOLLIN | EPOLLRDHUP with `token` as the event's data: a
   token, not the fd, so an event for a closed fd is never delivered to
   whatever later reuses its number. */
int stk_epoll_add(int epfd, int fd, uint64_t token);
int stk_epoll_remove(int epfd, int fd);
/* Waits; fills tokens[i] and events[i]; returns the count or -1. */
int stk_epoll_wait(int epfd, uint64_t *_Nonnull tokens, uint32_t *_Nonnull events, int capacity, int timeout_ms);
/* A non-blocking, close-on-exec CLOCK_MONOTONIC timerfd that fires once after `nanoseconds`. */
int stk_timerfd_after(uint64_t nanoseconds);

#pragma clang assume_nonnull end
#endif
