/*
 * The child path: init of the worker's pid namespace and the worker, from
 * clone3 to execve. Everything here runs in a fork of a process with many
 * threads, so it is async-signal-safe: raw syscalls, stack buffers, no
 * allocation, no stdio, _exit. The compiler holds this file to that: the
 * allocator, stdio and the environment are poisoned below, so a call to one of
 * them does not build. The parent side is stk_spawn.c; descriptor passing is
 * stk_fdpass.c.
 */
#define _GNU_SOURCE
#include "stk_spawn.h"
#include "stk_net.h"
#include "stk_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/mount.h>
#include <linux/openat2.h>
#include <linux/sched.h>
#include <linux/seccomp.h>
#include <linux/securebits.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

STK_BUILD_STAMP(child)

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif
#ifndef P_PIDFD
#define P_PIDFD 3
#endif


/* Nothing below may allocate, format through stdio or read the environment. */
#pragma GCC poison malloc calloc realloc free strdup strndup printf fprintf sprintf snprintf vsnprintf vfprintf puts fputs fopen getenv setenv exit atexit opendir readdir syslog

/* Which mount step failed, reported with STK_STAGE_MOUNTS. */
static int stk_failed_op = -1;

/* ---------- async-signal-safe helpers used by the child ---------- */

static size_t stk_strlen(const char *s) {
    size_t n = 0;
    while (s[n]) n++;
    return n;
}

/* Joins root and an absolute in-root path into buf; 0, or -1 when too long. */
static int stk_join(char *buf, size_t cap, const char *root, const char *path) {
    size_t a = stk_strlen(root), b = stk_strlen(path);
    if (a + b + 1 > cap) return -1;
    memcpy(buf, root, a);
    memcpy(buf + a, path, b + 1);
    return 0;
}

int stk_write_all(int fd, const void *data, size_t len) {
    const char *p = data;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int stk_mount_setattr(const char *path, unsigned int flags, uint64_t attr_set) {
    struct mount_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.attr_set = attr_set;
    return (int)syscall(SYS_mount_setattr, AT_FDCWD, path, flags, &attr, sizeof attr);
}

__attribute__((noreturn)) static void stk_fail(int errfd, int stage) {
    struct stk_failure f = {stage, errno, stk_failed_op};
    (void)stk_write_all(errfd, &f, sizeof f);
    _exit(127);
}

static int stk_chown_if(const char *path, int64_t uid, int64_t gid) {
    if (uid < 0) return 0;
    return lchown(path, (uid_t)uid, (gid_t)gid);
}

/*
 * Fails with ELOOP unless `path` (absolute inside the new root) resolves
 * beneath the root without any symlink or `..`: a mount target must never be
 * steered by a link a worker left in a read-write volume during an earlier
 * run. With `parent_only`, the last component is not checked (it may not
 * exist yet).
 */
static int stk_check_target(int rootfd, const char *path, int parent_only) {
    char rel[4096];
    size_t n = 0;
    while (*path == '/') path++;
    for (const char *c = path; *c && n + 1 < sizeof rel; c++) rel[n++] = *c;
    rel[n] = 0;
    if (parent_only) {
        while (n > 0 && rel[n - 1] != '/') n--;
        while (n > 0 && rel[n - 1] == '/') n--;
        rel[n] = 0;
    }
    if (n == 0) return 0;
    struct open_how how;
    memset(&how, 0, sizeof how);
    how.flags = O_PATH | O_CLOEXEC;
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
    int fd = (int)syscall(SYS_openat2, rootfd, rel, &how, sizeof how);
    if (fd < 0) return -1;
    close(fd);
    return 0;
}

static int stk_run_op(const char *root, int rootfd, const struct stk_mount_op *op, int fresh) {
    char target[4096];
    if (op->target == NULL || stk_join(target, sizeof target, root, op->target) < 0) {
        errno = ENAMETOOLONG;
        return -1;
    }
    if (!fresh && stk_check_target(rootfd, op->target, 1) < 0) return -1;
    if (!fresh && op->kind != STK_OP_SYMLINK && op->kind != STK_OP_FILE && op->kind != STK_OP_SETATTR) {
        /* The mount point itself, once it exists, must not be a link either. */
        if (stk_check_target(rootfd, op->target, 0) < 0 && errno != ENOENT) return -1;
    }
    switch (op->kind) {
    case STK_OP_MKDIR:
        if (mkdir(target, op->mode) < 0 && errno != EEXIST) return -1;
        return stk_chown_if(target, op->uid, op->gid);
    case STK_OP_BIND: {
        const char *source = op->source;
        if (source == NULL && op->fd < 0) { errno = EINVAL; return -1; }
        if (op->bind_flags & STK_BIND_FILE) {
            /* Read-only: a file mount point that exists already (a root skeleton's, sealed
               read-only) is opened without asking for write access. Without blocking, and only a
               regular file: a FIFO a worker left at the target in a writable volume must neither
               hang the init nor be mounted on. */
            int fd = open(target, O_CREAT | O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOFOLLOW, 0444);
            if (fd < 0) return -1;
            struct stat st;
            int regular = fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
            close(fd);
            if (!regular) { errno = EINVAL; return -1; }
        } else if (mkdir(target, 0755) < 0 && errno != EEXIST) {
            return -1;
        }
        /* Always a detached tree the parent cloned and sealed (stk_clone_tree): a worker's
           namespace never binds a host path itself. */
        if (op->fd < 0) { errno = EINVAL; return -1; }
        return (int)syscall(SYS_move_mount, op->fd, "", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH);
    }
    case STK_OP_TMPFS:
        if (mkdir(target, 0755) < 0 && errno != EEXIST) return -1;
        if (mount("tmpfs", target, "tmpfs", op->flags, op->data) < 0) return -1;
        return stk_chown_if(target, op->uid, op->gid);
    case STK_OP_PROC:
        if (mkdir(target, 0555) < 0 && errno != EEXIST) return -1;
        return mount("proc", target, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    case STK_OP_SYMLINK:
        if (op->source == NULL) { errno = EINVAL; return -1; }
        return symlink(op->source, target);
    case STK_OP_FILE: {
        int fd = open(target, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC | O_NOFOLLOW, op->mode);
        if (fd < 0) return -1;
        int rc = op->length > 0 && op->source ? stk_write_all(fd, op->source, op->length) : 0;
        int saved = errno;
        close(fd);
        errno = saved;
        if (rc < 0) return -1;
        return stk_chown_if(target, op->uid, op->gid);
    }
    case STK_OP_MOVE_FD:
        if (mkdir(target, 0755) < 0 && errno != EEXIST) return -1;
        return (int)syscall(SYS_move_mount, op->fd, "", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH);
    case STK_OP_SETATTR:
        return stk_mount_setattr(target, 0, op->attr);
    /* The worker cannot lift these: it runs without capabilities in every set
       (umount2 needs CAP_SYS_ADMIN in this namespace's owner), the filter
       refuses mount and umount2, and a nested user namespace gets them locked
       together with the proc they cover (umount fails, and the kernel refuses
       a fresh proc over a proc with covered entries). */
    case STK_OP_MASK:
    case STK_OP_READONLY_IN_PLACE: {
        struct stat st;
        if (lstat(target, &st) < 0) return errno == ENOENT ? 0 : -1;
        if (op->kind == STK_OP_MASK && S_ISDIR(st.st_mode))
            return mount("tmpfs", target, "tmpfs", op->flags, op->data);
        const char *source = op->kind == STK_OP_MASK ? op->source : target;
        if (source == NULL) { errno = EINVAL; return -1; }
        if (mount(source, target, NULL, MS_BIND, NULL) < 0) return -1;
        return stk_mount_setattr(target, 0, op->attr);
    }
    default:
        errno = EINVAL;
        return -1;
    }
}

static int stk_drop_capabilities(int last_cap) {
    /* Lock the root fix-ups off so that execve as uid 0 grants nothing. */
    if (prctl(PR_SET_SECUREBITS, SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_NO_SETUID_FIXUP_LOCKED |
                                     SECBIT_KEEP_CAPS_LOCKED | SECBIT_NO_CAP_AMBIENT_RAISE |
                                     SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED, 0, 0, 0) < 0)
        return -1;
    for (int cap = 0; cap <= last_cap; cap++)
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && errno != EINVAL) return -1;
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0) return -1;
    return 0;
}

static int stk_clear_capability_sets(void) {
    struct __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof data);
    return (int)syscall(SYS_capset, &header, data);
}

/* ---------- descriptor passing (also the spawn helper's; see stk_internal.h) ---------- */

static int stk_send_fd(int sock, int fd) {
    char byte = 'n';
    return stk_send_fds(sock, &byte, 1, &fd, 1) == 1 ? 0 : -1;
}

/* Counts the processes in this pid namespace other than init, from /proc. */
static int stk_count_processes(void) {
    int dir = open("/proc", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir < 0) return -1;
    char buf[4096];
    int count = 0;
    for (;;) {
        long n = syscall(SYS_getdents64, dir, buf, sizeof buf);
        if (n <= 0) break;
        for (long off = 0; off < n;) {
            struct { uint64_t ino; int64_t off; unsigned short reclen; unsigned char type; char name[]; } *d = (void *)(buf + off);
            const char *name = d->name;
            int numeric = name[0] != 0;
            for (const char *c = name; *c; c++) if (*c < '0' || *c > '9') numeric = 0;
            if (numeric && !(name[0] == '1' && name[1] == 0)) count++;
            off += d->reclen;
        }
    }
    close(dir);
    return count;
}

/*
 * The worker's main process: final credentials, stdio, seccomp, execve.
 * Runs in the process init cloned, so it is pid 2 of the namespace and can
 * be signalled (a pid-1 worker ignores its own signals).
 */
__attribute__((noreturn)) static void stk_worker(const struct stk_plan *plan, int errfd, int notify_sock) {
    if (setsid() < 0) stk_fail(errfd, STK_STAGE_SETSID);
    if (syscall(SYS_setresgid, plan->gid, plan->gid, plan->gid) < 0 || syscall(SYS_setresuid, plan->uid, plan->uid, plan->uid) < 0)
        stk_fail(errfd, STK_STAGE_CREDENTIALS);
    if (stk_clear_capability_sets() < 0) stk_fail(errfd, STK_STAGE_CAPABILITIES);
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) stk_fail(errfd, STK_STAGE_NO_NEW_PRIVS);
    /* The credential change cleared the parent-death signal: set it again. */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0) stk_fail(errfd, STK_STAGE_PARENT_DEATH);
    if (getppid() != 1) _exit(127);

    if (dup2(plan->stdin_fd, 0) < 0 || dup2(plan->stdout_fd, 1) < 0 || dup2(plan->stderr_fd, 2) < 0)
        stk_fail(errfd, STK_STAGE_STDIO);
    if (syscall(SYS_close_range, 3U, ~0U, CLOSE_RANGE_CLOEXEC) < 0) stk_fail(errfd, STK_STAGE_FDS);

    if (plan->filter != NULL) {
        struct sock_fprog prog = {plan->filter_len, (struct sock_filter *)plan->filter};
        if (plan->notify) {
            int listener = (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog);
            if (listener < 0) stk_fail(errfd, STK_STAGE_SECCOMP);
            if (stk_send_fd(notify_sock, listener) < 0) stk_fail(errfd, STK_STAGE_SECCOMP);
            close(listener);
        } else if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) < 0) {
            stk_fail(errfd, STK_STAGE_SECCOMP);
        }
    }
    if (notify_sock >= 0) close(notify_sock);

    /* Last, because until the listener is handed over the worker still holds
       the supervisor's close-on-exec descriptors: a low RLIMIT_NOFILE set
       earlier would leave no room for the listener's fd. */
    for (size_t i = 0; i < plan->rlimit_count; i++)
        if (setrlimit((__rlimit_resource_t)plan->rlimits[i].resource, &plan->rlimits[i].limit) < 0)
            stk_fail(errfd, STK_STAGE_RLIMITS);

    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);

    int reported = ENOENT;
    for (size_t i = 0; i < plan->exec_candidate_count; i++) {
        execve(plan->exec_candidates[i], plan->argv, plan->envp);
        if (errno != ENOENT && errno != ENOTDIR) reported = errno;
    }
    errno = reported;
    stk_fail(errfd, STK_STAGE_EXEC);
}

#define STK_WORKER_STACK (256 * 1024)

struct stk_worker_args {
    const struct stk_plan *plan;
    int errfd, notify_sock, syncfd, statusfd;
};

/* The worker's side of init's clone: its own fd table, so closing init's
   pipes here leaves init's copies open. */
static int stk_worker_entry(void *arg) {
    const struct stk_worker_args *a = arg;
    close(a->syncfd);
    close(a->statusfd);
    stk_worker(a->plan, a->errfd, a->notify_sock);
}

/*
 * Init of the worker's pid namespace, then the worker. Init builds the root
 * and drops what it can, forks the worker, and stays behind as pid 1 under a
 * different uid (0 inside, no capabilities, not dumpable), so the worker can
 * neither signal nor trace it. It reaps, and when the main process exits it
 * reports the wait status and the survivors over `statusfd`, waits there
 * until the supervisor releases it, then exits: the kernel kills everything
 * left in the namespace.
 */
__attribute__((noreturn)) void stk_child(const struct stk_plan *plan, int errfd, int syncfd, int notify_sock, int statusfd,
                                                int parent_pidfd) {
    /* Its own name: `pkill stockade-spawn` must not hit running runs' inits. */
    (void)prctl(PR_SET_NAME, "stockade-init", 0, 0, 0);
    /* Default dispositions: handlers installed by the supervisor must not run here. */
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    for (int sig = 1; sig < NSIG; sig++)
        if (sig != SIGKILL && sig != SIGSTOP) (void)sigaction(sig, &dfl, NULL);

    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0) stk_fail(errfd, STK_STAGE_PARENT_DEATH);

    /* Wait until the parent has written the id maps. */
    char go = 0;
    ssize_t got;
    do got = read(syncfd, &go, 1); while (got < 0 && errno == EINTR);
    if (got != 1) _exit(127);

    /* Become root of the new user namespace so files we create have a mapped owner.
       Raw syscalls: glibc's setresuid() signals every thread it knows of, and
       this copy of a multithreaded process has only one, so it would hang. */
    if (syscall(SYS_setresgid, 0, 0, 0) < 0 || syscall(SYS_setresuid, 0, 0, 0) < 0) stk_fail(errfd, STK_STAGE_IDENTITY);
    /* Into the run cgroup (v1; on v2 the clone placed us there), before any worker code runs. After
       the identity change, so the write is allowed both where the kernel judges it by the file
       opener's credentials (root's) and, on kernels before that rule (CVE-2021-4197), by ours
       (effective uid equal to our own uid). */
    for (size_t i = 0; i < plan->cgroup_procs_count; i++)
        if (pwrite(plan->cgroup_procs_fds[i], "0", 1, 0) != 1) stk_fail(errfd, STK_STAGE_CGROUP);
    /* The identity change cleared the parent-death signal: set it again, then
       make sure the parent did not die before it was set. The parent holds the
       sync pipe's write end until the worker has exec'd, so a hang-up means it is gone. */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0) stk_fail(errfd, STK_STAGE_PARENT_DEATH);
    struct pollfd pfd = {syncfd, POLLIN, 0};
    if (poll(&pfd, 1, 0) != 0 && (pfd.revents & (POLLHUP | POLLERR))) _exit(127);
    /* Cloned by the spawn helper, our parent is the supervisor (CLONE_PARENT), and the
       sync pipe says only that the helper lives: ask the supervisor's pidfd too. */
    if (parent_pidfd >= 0) {
        struct pollfd parent = {parent_pidfd, POLLIN, 0};
        if (poll(&parent, 1, 0) != 0) _exit(127);
        close(parent_pidfd);
    }

    /* A fresh anonymous session keyring: the supervisor's keys stay out of reach
       even under a profile that allows keyctl. */
    if (syscall(SYS_keyctl, 1 /* KEYCTL_JOIN_SESSION_KEYRING */, 0L, 0L, 0L, 0L) < 0 && errno != ENOSYS)
        stk_fail(errfd, STK_STAGE_IDENTITY);
    if (unshare(CLONE_NEWCGROUP) < 0) stk_fail(errfd, STK_STAGE_CGROUPNS);
    if (sethostname(plan->hostname, stk_strlen(plan->hostname)) < 0) stk_fail(errfd, STK_STAGE_HOSTNAME);

    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0) stk_fail(errfd, STK_STAGE_MOUNT_PRIVATE);
    if (plan->root_fd >= 0) {
        if (syscall(SYS_move_mount, plan->root_fd, "", AT_FDCWD, plan->root, MOVE_MOUNT_F_EMPTY_PATH) < 0)
            stk_fail(errfd, STK_STAGE_ROOT);
    } else if (mount("tmpfs", plan->root, "tmpfs", MS_NOSUID | MS_NODEV, plan->root_data) < 0) {
        stk_fail(errfd, STK_STAGE_ROOT);
    }
    int rootfd = open(plan->root, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (rootfd < 0) stk_fail(errfd, STK_STAGE_ROOT);
    for (size_t i = 0; i < plan->op_count; i++) {
        if (stk_run_op(plan->root, rootfd, &plan->ops[i], i < plan->fresh_op_count) < 0) {
            stk_failed_op = (int)i;
            stk_fail(errfd, STK_STAGE_MOUNTS);
        }
    }
    close(rootfd);

    if (chdir(plan->root) < 0 || syscall(SYS_pivot_root, ".", ".") < 0 || umount2(".", MNT_DETACH) < 0 ||
        chdir("/") < 0)
        stk_fail(errfd, STK_STAGE_PIVOT_ROOT);
    if (plan->root_readonly && stk_mount_setattr("/", 0, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV) < 0)
        stk_fail(errfd, STK_STAGE_PIVOT_ROOT);

    if (chdir(plan->workdir) < 0) stk_fail(errfd, STK_STAGE_WORKDIR);

    if (setsid() < 0) stk_fail(errfd, STK_STAGE_SETSID);
    if (stk_drop_capabilities(plan->last_cap) < 0) stk_fail(errfd, STK_STAGE_CAPABILITIES);

    /* The worker shares init's memory until its execve (CLONE_VM | CLONE_VFORK,
       as posix_spawn does), on a stack of its own: init is suspended meanwhile,
       so nothing else touches that memory, and the supervisor's address space
       is not copied a second time. glibc's fork() would also run atfork
       handlers in a process glibc does not know it is in. Init holds the error
       pipe until the worker has exec'd (or failed), so its end of file still
       means "the worker has exec'd". */
    struct stk_worker_args wargs = {plan, errfd, notify_sock, syncfd, statusfd};
    void *stack = mmap(NULL, STK_WORKER_STACK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (stack == MAP_FAILED) stk_fail(errfd, STK_STAGE_CLONE);
    /* A guard page below the stack: an overflow faults instead of writing into init's memory. */
    if (mprotect(stack, 4096, PROT_NONE) < 0) stk_fail(errfd, STK_STAGE_CLONE);
    int worker = clone(stk_worker_entry, (char *)stack + STK_WORKER_STACK, CLONE_VM | CLONE_VFORK | SIGCHLD, &wargs);
    if (worker < 0) stk_fail(errfd, STK_STAGE_CLONE);
    (void)munmap(stack, STK_WORKER_STACK);

    /* Init keeps only the status pipe: the worker's stdio, the error pipe and
       the seccomp socket must close when the worker is done with them. */
    close(errfd);
    if (notify_sock >= 0) close(notify_sock);
    if (statusfd != 3 && dup2(statusfd, 3) < 0) _exit(127);
    (void)syscall(SYS_close_range, 4U, ~0U, 0U);
    close(0);
    close(1);
    close(2);
    if (stk_clear_capability_sets() < 0 || prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 ||
        prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0)
        _exit(127);

    struct stk_init_report_wire report = {0, 0};
    for (;;) {
        int status = 0;
        long pid = syscall(SYS_wait4, -1, &status, 0, NULL);
        if (pid == worker) {
            report.status = status;
            break;
        }
        if (pid < 0 && errno != EINTR) _exit(126);
    }
    while (syscall(SYS_wait4, -1, NULL, WNOHANG, NULL) > 0) {}
    report.orphans = stk_count_processes();
    (void)stk_write_all(3, &report, sizeof report);
    /* Hold the namespace until the supervisor releases it (a byte or end of
       file): processes left behind may have denied calls pending in the seccomp
       listener, and the kernel withdraws those when the namespace dies. The
       supervisor drains and records them first. If it dies, the parent-death
       signal ends this wait. */
    char release;
    while (read(3, &release, 1) < 0 && errno == EINTR) {}
    _exit(0);
}

