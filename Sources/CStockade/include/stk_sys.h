#ifndef STK_SYS_H
#define STK_SYS_H
/*
 * epoll and timerfd for the supervisor's event loop. Why C: Swift's Glibc
 * module does not import <sys/epoll.h> or <sys/timerfd.h>, and epoll_event is
 * a packed struct on x86_64.
 */
#include <stdint.h>
#include <sys/resource.h>
#include <sys/types.h>

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
/* A non-blocking timerfd that expires every `nanoseconds` from now on (CLOCK_MONOTONIC), or -1. */
int stk_timerfd_every(uint64_t nanoseconds);

/* pidfd_send_signal(2). Why C: no glibc wrapper. */
int stk_pidfd_send_signal(int pidfd, int sig);

/*
 * waitid(P_PIDFD, pidfd, WEXITED | options) with the rusage the raw syscall
 * returns. Returns 0 (info->si_pid 0 when WNOHANG and still running) or -1.
 * Why C: glibc's waitid drops the rusage argument.
 */
int stk_waitid_pidfd(int pidfd, int options, int *_Nonnull code, int *_Nonnull status, pid_t *_Nonnull pid, struct rusage *_Nonnull usage);

/* The highest capability number of the running kernel (/proc/sys/kernel/cap_last_cap), or -1 when
   it cannot be read. */
int stk_cap_last_cap(void);

/* SIGINT and SIGTERM caught (not ignored: a program exec'd later gets the default back), each one
   written as one byte, its number, into write_fd (non-blocking: a full pipe drops it, and the handler
   never blocks); SA_RESTART, so read, write and the like are restarted (poll, epoll_wait and
   nanosleep still return EINTR, which the kernel never restarts). In place the moment it
   returns: no window in which one is lost. Called on the main thread, both are unblocked there (a
   process started from a thread that blocked them inherits them blocked). 0, or -errno.
   Why C: a signal handler may only make async-signal-safe calls. */
int stk_interrupts_install(int write_fd);

#pragma clang assume_nonnull end
#endif
