#define _GNU_SOURCE
#include "stk_sys.h"
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <signal.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <unistd.h>

int stk_epoll_create(void) { return epoll_create1(EPOLL_CLOEXEC); }

int stk_epoll_add(int epfd, int fd, uint64_t token) {
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = EPOLLIN | EPOLLRDHUP;
    ev.data.u64 = token;
    return epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
}

int stk_epoll_remove(int epfd, int fd) { return epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL); }

int stk_epoll_wait(int epfd, uint64_t *tokens, uint32_t *events, int capacity, int timeout_ms) {
    struct epoll_event evs[64];
    if (capacity > 64) capacity = 64;
    int n = epoll_wait(epfd, evs, capacity, timeout_ms);
    for (int i = 0; i < n; i++) {
        tokens[i] = evs[i].data.u64;
        events[i] = evs[i].events;
    }
    return n;
}

int stk_timerfd_every(uint64_t nanoseconds) {
    int fd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
    if (fd < 0) return -1;
    struct itimerspec spec;
    memset(&spec, 0, sizeof spec);
    if (nanoseconds == 0) nanoseconds = 1;
    spec.it_value.tv_sec = (time_t)(nanoseconds / 1000000000ull);
    spec.it_value.tv_nsec = (long)(nanoseconds % 1000000000ull);
    spec.it_interval = spec.it_value;
    if (timerfd_settime(fd, 0, &spec, NULL) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

int stk_timerfd_after(uint64_t nanoseconds) {
    int fd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
    if (fd < 0) return -1;
    struct itimerspec spec;
    memset(&spec, 0, sizeof spec);
    spec.it_value.tv_sec = (time_t)(nanoseconds / 1000000000ull);
    spec.it_value.tv_nsec = (long)(nanoseconds % 1000000000ull);
    if (spec.it_value.tv_sec == 0 && spec.it_value.tv_nsec == 0) spec.it_value.tv_nsec = 1;
    if (timerfd_settime(fd, 0, &spec, NULL) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

int stk_pidfd_send_signal(int pidfd, int sig) {
    return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0);
}

int stk_waitid_pidfd(int pidfd, int options, int *code, int *status, pid_t *pid, struct rusage *usage) {
    siginfo_t info;
    memset(&info, 0, sizeof info);
    long rc;
    do rc = syscall(SYS_waitid, P_PIDFD, pidfd, &info, WEXITED | options, usage); while (rc < 0 && errno == EINTR);
    if (rc < 0) return -1;
    *code = info.si_code;
    *status = info.si_status;
    *pid = info.si_pid;
    return 0;
}

int stk_cap_last_cap(void) {
    int fd = open("/proc/sys/kernel/cap_last_cap", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    char buf[16];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return -1;
    int value = 0;
    for (ssize_t i = 0; i < n && buf[i] >= '0' && buf[i] <= '9'; i++) value = value * 10 + (buf[i] - '0');
    return value;
}

static volatile int stk_interrupt_fd = -1;

static void stk_interrupt_handler(int sig) {
    int saved = errno;
    unsigned char byte = (unsigned char)sig;
    if (write(stk_interrupt_fd, &byte, 1) < 0) { /* a full pipe: enough interrupts are queued */ }
    errno = saved;
}

int stk_interrupts_install(int write_fd) {
    stk_interrupt_fd = write_fd;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = stk_interrupt_handler;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGINT, &sa, NULL) != 0 || sigaction(SIGTERM, &sa, NULL) != 0) return -errno;
    /* On the process's main thread only: a caller that started us from a thread with these signals
       blocked (a runtime's worker thread) left them blocked in the main thread's mask, where they
       would stay pending for ever while it runs a command itself (`run --host`). Threads it starts
       later inherit the unblocked mask. Any other thread (a dispatch worker, which blocks them on
       purpose) is left as it is: the main thread then waits in sigsuspend, where they are taken. */
    if (getpid() != (pid_t)syscall(SYS_gettid)) return 0;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    int rc = pthread_sigmask(SIG_UNBLOCK, &set, NULL);
    if (rc != 0) return -rc;
    return 0;
}
