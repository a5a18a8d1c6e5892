/* Threat class 4, resources: bombs and spinners, each bounded by its
 * argument, and helpers for the resource tests (daemon, spin). "Succeeded"
 * (77) means the whole amount was obtained: no limit stopped it. */
#define _GNU_SOURCE
#include "probe_util.h"
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* fork-bomb N: forks up to N sleeping children, then kills them all. */
STK_PROBE(probe_fork_bomb) {
    long n = stk_arg_long(argc, argv, 0, 1, 4096);
    if (n < 0) return stk_report(STK_PROBE_USAGE, "fork-bomb", "usage: fork-bomb N (1..4096)");
    int *pids = calloc((size_t)n, sizeof *pids);
    if (!pids) return stk_report(STK_PROBE_ERROR, "fork-bomb", "out of memory");
    long made = 0;
    int err = 0;
    for (; made < n; made++) {
        int pid = stk_sleeping_child();
        if (pid < 0) { err = errno; break; }
        pids[made] = pid;
    }
    for (long i = 0; i < made; i++) kill(pids[i], SIGKILL);
    for (long i = 0; i < made; i++) waitpid(pids[i], NULL, 0);
    free(pids);
    if (made == n) return stk_report(STK_PROBE_SUCCEEDED, "fork-bomb", "forked all %ld children", n);
    return stk_report(STK_PROBE_BLOCKED, "fork-bomb", "forked %ld of %ld, then errno %d (%s)", made, n, err, stk_errno_name(err));
}

/* Where mem-bomb keeps its blocks: a volatile chain the optimiser must
 * assume is read, so no allocation or store can be removed (a plain
 * malloc + memset of memory never read again is dead code at -O2, and a
 * release build then "allocated" every MiB without touching one page). */
static void *volatile mem_bomb_chain;

/* mem-bomb MB: allocates and touches MB MiB, one MiB at a time. */
STK_PROBE(probe_mem_bomb) {
    long mb = stk_arg_long(argc, argv, 0, 1, 65536);
    if (mb < 0) return stk_report(STK_PROBE_USAGE, "mem-bomb", "usage: mem-bomb MB");
    const size_t block = 1 << 20, page = 4096;
    long got = 0;
    for (; got < mb; got++) {
        char *p = malloc(block);
        if (!p) break;
        /* Every page written through a volatile pointer: each store must happen. */
        volatile char *v = p;
        for (size_t i = 0; i < block; i += page) v[i] = (char)(0x5a ^ i);
        *(void **)p = mem_bomb_chain;
        mem_bomb_chain = p;
    }
    if (got == mb) return stk_report(STK_PROBE_SUCCEEDED, "mem-bomb", "allocated and touched %ld MiB", mb);
    return stk_report(STK_PROBE_BLOCKED, "mem-bomb", "allocation failed after %ld of %ld MiB", got, mb);
}

/* tmpfs-fill MB [DIR]: writes MB MiB to a file in DIR (default /tmp), then removes it. */
STK_PROBE(probe_tmpfs_fill) {
    long mb = stk_arg_long(argc, argv, 0, 1, 65536);
    if (mb < 0) return stk_report(STK_PROBE_USAGE, "tmpfs-fill", "usage: tmpfs-fill MB [DIR]");
    const char *dir = argc > 1 ? argv[1] : "/tmp";
    char path[512];
    snprintf(path, sizeof path, "%s/stockade-probe-fill-XXXXXX", dir);
    signal(SIGXFSZ, SIG_IGN);
    int fd = mkostemp(path, O_CLOEXEC);
    if (fd < 0) return stk_report(STK_PROBE_ERROR, "tmpfs-fill", "cannot create a file in %s: errno %d (%s)", dir, errno, stk_errno_name(errno));
    unlink(path);  /* the blocks stay allocated until close */
    static char block[1 << 16];
    memset(block, 0x5a, sizeof block);
    long long want = (long long)mb << 20, written = 0;
    int err = 0;
    while (written < want) {
        ssize_t w = write(fd, block, sizeof block);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) { err = w < 0 ? errno : ENOSPC; break; }
        written += w;
    }
    close(fd);
    if (written >= want) return stk_report(STK_PROBE_SUCCEEDED, "tmpfs-fill", "wrote %ld MiB to %s", mb, dir);
    return stk_report(STK_PROBE_BLOCKED, "tmpfs-fill", "wrote %lld of %ld MiB to %s, then errno %d (%s)", written >> 20, mb, dir, err, stk_errno_name(err));
}

/* fd-bomb [N]: raises the soft limit to the hard one, opens /dev/null until N (default 1000) or EMFILE. */
STK_PROBE(probe_fd_bomb) {
    long n = argc > 0 ? stk_arg_long(argc, argv, 0, 1, 1 << 20) : 1000;
    if (n < 0) return stk_report(STK_PROBE_USAGE, "fd-bomb", "usage: fd-bomb [N]");
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) { rl.rlim_cur = rl.rlim_max; setrlimit(RLIMIT_NOFILE, &rl); }
    long opened = 0;
    int err = 0;
    for (; opened < n; opened++) {
        if (open("/dev/null", O_RDONLY | O_CLOEXEC) < 0) { err = errno; break; }
    }
    if (opened == n) return stk_report(STK_PROBE_SUCCEEDED, "fd-bomb", "opened %ld descriptors", n);
    return stk_report(STK_PROBE_BLOCKED, "fd-bomb", "opened %ld of %ld, then errno %d (%s)", opened, n, err, stk_errno_name(err));
}

STK_PROBE(probe_rt_priority) {
    (void)argc; (void)argv;
    struct sched_param p = {.sched_priority = 1};
    long rc = sched_setscheduler(0, SCHED_FIFO, &p);
    int err = errno;
    if (rc == 0) { p.sched_priority = 0; sched_setscheduler(0, SCHED_OTHER, &p); }
    return stk_verdict_call("rt-priority", "sched_setscheduler(SCHED_FIFO)", rc, err, NULL);
}

/* A core dump is possible when the soft limit is, or can be raised, above 0. */
STK_PROBE(probe_core_dump) {
    (void)argc; (void)argv;
    struct rlimit rl;
    if (getrlimit(RLIMIT_CORE, &rl) != 0) return stk_report(STK_PROBE_ERROR, "core-dump", "getrlimit: errno %d", errno);
    if (rl.rlim_cur > 0) return stk_report(STK_PROBE_SUCCEEDED, "core-dump", "RLIMIT_CORE soft limit %llu", (unsigned long long)rl.rlim_cur);
    if (rl.rlim_max > 0) return stk_report(STK_PROBE_SUCCEEDED, "core-dump", "RLIMIT_CORE 0 but can be raised to %llu", (unsigned long long)rl.rlim_max);
    return stk_report(STK_PROBE_BLOCKED, "core-dump", "RLIMIT_CORE 0/0");
}

/* daemon [SECONDS]: double fork, setsid, ignore SIGTERM, sleep SECONDS (default 5); the probe returns at once. */
STK_PROBE(probe_daemon) {
    long seconds = argc > 0 ? stk_arg_long(argc, argv, 0, 1, 3600) : 5;
    if (seconds < 0) return stk_report(STK_PROBE_USAGE, "daemon", "usage: daemon [SECONDS]");
    int fds[2];
    if (pipe(fds) != 0) return stk_report(STK_PROBE_ERROR, "daemon", "pipe: errno %d", errno);
    int pid = fork();
    if (pid == 0) {
        setsid();
        if (fork() != 0) _exit(0);
        signal(SIGTERM, SIG_IGN);
        signal(SIGHUP, SIG_IGN);
        int me = getpid();
        (void)!write(fds[1], &me, sizeof me);
        close(fds[1]);
        close(fds[0]);
        int devnull = open("/dev/null", O_RDWR);
        if (devnull >= 0) { dup2(devnull, 0); dup2(devnull, 1); dup2(devnull, 2); }
        struct timespec t = {seconds, 0};
        while (nanosleep(&t, &t) != 0 && errno == EINTR) {}
        _exit(0);
    }
    close(fds[1]);
    int grandchild = 0;
    ssize_t n = read(fds[0], &grandchild, sizeof grandchild);
    close(fds[0]);
    if (pid > 0) waitpid(pid, NULL, 0);
    if (n != (ssize_t)sizeof grandchild) return stk_report(STK_PROBE_ERROR, "daemon", "the daemon did not start");
    return stk_report(STK_PROBE_SUCCEEDED, "daemon", "pid %d detached for %ld s, ignoring SIGTERM", grandchild, seconds);
}

/* spin SECONDS: burns CPU for SECONDS of wall time. */
STK_PROBE(probe_spin) {
    long seconds = stk_arg_long(argc, argv, 0, 1, 3600);
    if (seconds < 0) return stk_report(STK_PROBE_USAGE, "spin", "usage: spin SECONDS");
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    volatile unsigned long x = 0;
    do {
        for (int i = 0; i < 1000000; i++) x += (unsigned long)i;
        clock_gettime(CLOCK_MONOTONIC, &now);
    } while (now.tv_sec - start.tv_sec < seconds);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return stk_report(STK_PROBE_SUCCEEDED, "spin", "spun %ld s, %ld ms of CPU", seconds, (long)(ru.ru_utime.tv_sec * 1000 + ru.ru_utime.tv_usec / 1000));
}
