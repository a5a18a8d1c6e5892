/*
 * The child path. Everything between clone3 and execve below is
 * async-signal-safe: raw syscalls, stack buffers, no allocation, _exit.
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
#include <net/if.h>
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

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif
#ifndef P_PIDFD
#define P_PIDFD 3
#endif

/* How long the worker may take from clone to execve. */
#define STK_EXEC_TIMEOUT_MS 15000

struct stk_failure {
    int stage;
    int error;
    int detail;
};

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

static int stk_write_all(int fd, const void *data, size_t len) {
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

static int stk_run_op(const char *root, int rootfd, const struct stk_mount_op *op) {
    char target[4096];
    if (op->target == NULL || stk_join(target, sizeof target, root, op->target) < 0) {
        errno = ENAMETOOLONG;
        return -1;
    }
    if (stk_check_target(rootfd, op->target, 1) < 0) return -1;
    if (op->kind != STK_OP_SYMLINK && op->kind != STK_OP_FILE && op->kind != STK_OP_SETATTR) {
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
            int fd = open(target, O_CREAT | O_WRONLY | O_CLOEXEC | O_NOFOLLOW, 0444);
            if (fd < 0 && errno != EEXIST) return -1;
            if (fd >= 0) close(fd);
        } else if (mkdir(target, 0755) < 0 && errno != EEXIST) {
            return -1;
        }
        if (op->fd >= 0)  /* a detached tree the parent cloned and sealed */
            return (int)syscall(SYS_move_mount, op->fd, "", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH);
        if (mount(source, target, NULL, MS_BIND | MS_REC, NULL) < 0) return -1;
        return stk_mount_setattr(target, AT_RECURSIVE, op->attr);
    }
    case STK_OP_TMPFS:
        if (mkdir(target, 0755) < 0 && errno != EEXIST) return -1;
        if (mount("tmpfs", target, "tmpfs", op->flags, op->data) < 0) return -1;
        return stk_chown_if(target, op->uid, op->gid);
    case STK_OP_OVERLAY:
        if (mkdir(target, 0755) < 0 && errno != EEXIST) return -1;
        return mount("overlay", target, "overlay", op->flags, op->data);
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

static int stk_loopback_up(void) {
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

/* As Docker does: in the worker's own network namespace every port may be bound (a server
   on port 80 needs no capability there). Written while init still sees a /proc whose
   net sysctls are its namespace's (they follow the opener's netns), before any mount makes
   /proc/sys read-only. A kernel without the knob (before 4.11) is left as it is. */
static int stk_unprivileged_ports(void) {
    int fd = open("/proc/sys/net/ipv4/ip_unprivileged_port_start", O_WRONLY | O_CLOEXEC);
    if (fd < 0) return errno == ENOENT ? 0 : -1;
    ssize_t n;
    do n = write(fd, "0", 1); while (n < 0 && errno == EINTR);
    int saved = errno;
    close(fd);
    errno = saved;
    return n == 1 ? 0 : -1;
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

ssize_t stk_send_fds(int sock, const void *data, size_t len, const int *fds, int nfds) {
    if (nfds < 0 || nfds > STK_MAX_PASSED_FDS) {
        errno = EINVAL;
        return -1;
    }
    struct iovec iov = {(void *)data, len};
    union {
        char buf[CMSG_SPACE(sizeof(int) * STK_MAX_PASSED_FDS)];
        struct cmsghdr align;
    } control;
    memset(&control, 0, sizeof control);
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (nfds > 0) {
        msg.msg_control = control.buf;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
        struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
        cmsg->cmsg_level = SOL_SOCKET;
        cmsg->cmsg_type = SCM_RIGHTS;
        cmsg->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
        memcpy(CMSG_DATA(cmsg), fds, sizeof(int) * (size_t)nfds);
    }
    ssize_t n;
    do n = sendmsg(sock, &msg, MSG_NOSIGNAL); while (n < 0 && errno == EINTR);
    return n;
}

ssize_t stk_receive_fds(int sock, void *data, size_t len, int *fds, int *nfds, int max) {
    struct iovec iov = {data, len};
    union {
        char buf[CMSG_SPACE(sizeof(int) * STK_MAX_PASSED_FDS)];
        struct cmsghdr align;
    } control;
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.buf;
    msg.msg_controllen = sizeof control.buf;
    ssize_t n;
    do n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC); while (n < 0 && errno == EINTR);
    *nfds = 0;
    if (n < 0) return -1;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        int count = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        for (int i = 0; i < count; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(c) + sizeof(int) * (size_t)i, sizeof fd);
            if (*nfds < max) fds[(*nfds)++] = fd;
            else close(fd);
        }
    }
    if (msg.msg_flags & (MSG_CTRUNC | MSG_TRUNC)) {
        for (int i = 0; i < *nfds; i++) close(fds[i]);
        *nfds = 0;
        errno = EPROTO;
        return -1;
    }
    return n;
}

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
__attribute__((noreturn)) static void stk_child(const struct stk_plan *plan, int errfd, int syncfd, int notify_sock, int statusfd,
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

    /* Wait until the parent has written the id maps and placed us in the cgroup. */
    char go = 0;
    ssize_t got;
    do got = read(syncfd, &go, 1); while (got < 0 && errno == EINTR);
    if (got != 1) _exit(127);

    /* Become root of the new user namespace so files we create have a mapped owner.
       Raw syscalls: glibc's setresuid() signals every thread it knows of, and
       this copy of a multithreaded process has only one, so it would hang. */
    if (syscall(SYS_setresgid, 0, 0, 0) < 0 || syscall(SYS_setresuid, 0, 0, 0) < 0) stk_fail(errfd, STK_STAGE_IDENTITY);
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

    if (plan->loopback_up && stk_unprivileged_ports() < 0) stk_fail(errfd, STK_STAGE_NETWORK);
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
        if (stk_run_op(plan->root, rootfd, &plan->ops[i]) < 0) {
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

    if (plan->loopback_up && stk_loopback_up() < 0) stk_fail(errfd, STK_STAGE_NETWORK);
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

/* ---------- parent side ---------- */

static int stk_write_file(const char *path, const char *content) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    int rc = stk_write_all(fd, content, strlen(content));
    int saved = errno;
    close(fd);
    errno = saved;
    return rc;
}

static int stk_write_maps(pid_t pid, const struct stk_plan *plan) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/setgroups", (int)pid);
    if (stk_write_file(path, "deny") < 0) return -1;
    snprintf(path, sizeof path, "/proc/%d/uid_map", (int)pid);
    if (stk_write_file(path, plan->uid_map) < 0) return -1;
    snprintf(path, sizeof path, "/proc/%d/gid_map", (int)pid);
    return stk_write_file(path, plan->gid_map);
}

static int stk_join_cgroups(pid_t pid, const struct stk_plan *plan) {
    char text[16];
    int len = snprintf(text, sizeof text, "%d", (int)pid);
    for (size_t i = 0; i < plan->cgroup_procs_count; i++)
        if (pwrite(plan->cgroup_procs_fds[i], text, (size_t)len, 0) != len) return -1;
    return 0;
}

static int stk_receive_fd(int sock) {
    char byte;
    int fd = -1, count = 0;
    ssize_t n = stk_receive_fds(sock, &byte, 1, &fd, &count, 1);
    return n > 0 && count == 1 ? fd : -1;
}

void stk_result_init(struct stk_spawn_result *result) {
    result->pid = -1;
    result->pidfd = -1;
    result->notify_fd = -1;
    result->status_fd = -1;
    result->stage = STK_STAGE_NONE;
    result->error = 0;
    result->detail = -1;
    result->listen_fd = -1;
}

static void stk_close(int *fd) {
    if (*fd >= 0) close(*fd);
    *fd = -1;
}

int stk_spawn(const struct stk_plan *plan, struct stk_spawn_result *result, int parent_pidfd,
              stk_started_fn started, void *context) {
    stk_result_init(result);

    int errpipe[2] = {-1, -1}, syncpipe[2] = {-1, -1}, sock[2] = {-1, -1}, statuspipe[2] = {-1, -1};
    if (pipe2(errpipe, O_CLOEXEC) < 0 || pipe2(syncpipe, O_CLOEXEC) < 0 || socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, statuspipe) < 0 ||
        fcntl(statuspipe[0], F_SETFL, O_NONBLOCK) < 0 ||
        (plan->notify && socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sock) < 0)) {
        result->stage = STK_STAGE_PIPE;
        result->error = errno;
        stk_close(&errpipe[0]); stk_close(&errpipe[1]);
        stk_close(&syncpipe[0]); stk_close(&syncpipe[1]);
        stk_close(&sock[0]); stk_close(&sock[1]);
        stk_close(&statuspipe[0]); stk_close(&statuspipe[1]);
        return -1;
    }

    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);

    int pidfd = -1;
    struct clone_args args;
    memset(&args, 0, sizeof args);
    args.flags = CLONE_PIDFD | CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWUTS | CLONE_NEWIPC;
    args.pidfd = (uint64_t)(uintptr_t)&pidfd;
    /* The child's parent is the caller's parent (the supervisor), which reaps
       it; the kernel takes the exit signal from the caller's (exit_signal stays 0). */
    args.flags |= CLONE_PARENT;
    if (plan->cgroup_dir_fd >= 0) {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = (uint64_t)plan->cgroup_dir_fd;
    }
    /* The new user namespace is owned by, and its per-user counters (inotify
       instances, user namespaces, ...) are charged to, the creator's euid:
       create it as the unprivileged owner uid, not as root, so a worker cannot
       exhaust root's limits on the host. Only this thread's credentials change
       (raw syscall), and only around the clone. */
    int switched = 0;
    if (plan->ns_owner_uid != 0) {
        if (syscall(SYS_setresuid, -1, plan->ns_owner_uid, -1) < 0) {
            result->error = errno;
            goto fail_before_clone;
        }
        switched = 1;
        /* CLONE_INTO_CGROUP (cgroup v2) checks the right to write the run cgroup's and
           its ancestors' cgroup.procs with the file-system uid: keep that root's (the
           real uid is still 0, so this needs no capability) while the effective uid,
           which owns the new user namespace, is the run's own. */
        if (plan->cgroup_dir_fd >= 0) {
            (void)syscall(SYS_setfsuid, 0);
            if ((int)syscall(SYS_setfsuid, -1) != 0) {
                result->error = EPERM;
                if (syscall(SYS_setresuid, -1, 0, -1) < 0) abort();
                goto fail_before_clone;
            }
        }
    }
    long pid = syscall(SYS_clone3, &args, sizeof args);
    if (pid == 0) {
        close(errpipe[0]);
        close(syncpipe[1]);
        if (sock[0] >= 0) close(sock[0]);
        close(statuspipe[0]);
        stk_child(plan, errpipe[1], syncpipe[0], sock[1], statuspipe[1], parent_pidfd);
    }
    int clone_errno = errno;
    /* Back to root for the id maps and the cgroup; if that fails this thread
       must not spawn again with the wrong credentials. */
    if (switched && syscall(SYS_setresuid, -1, 0, -1) < 0) abort();
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    stk_close(&errpipe[1]);
    stk_close(&syncpipe[0]);
    stk_close(&sock[1]);
    stk_close(&statuspipe[1]);

    int rc = -1;
    if (pid < 0) {
        result->stage = STK_STAGE_CLONE;
        result->error = clone_errno;
        goto out;
    }
    result->pid = (pid_t)pid;
    result->pidfd = pidfd;
    if (started != NULL) started(context, (pid_t)pid, pidfd);

    if (stk_write_maps((pid_t)pid, plan) < 0) {
        result->stage = STK_STAGE_USERNS_MAP;
        result->error = errno;
        goto fail_child;
    }
    if (stk_join_cgroups((pid_t)pid, plan) < 0) {
        result->stage = STK_STAGE_CGROUP;
        result->error = errno;
        goto fail_child;
    }
    if (plan->listen_port > 0 && (result->listen_fd = stk_listen_in_netns((pid_t)pid, (uint16_t)plan->listen_port)) < 0) {
        result->stage = STK_STAGE_NETWORK;
        result->error = errno;
        goto fail_child;
    }
    if (stk_write_all(syncpipe[1], "g", 1) < 0) {
        result->stage = STK_STAGE_SYNC;
        result->error = errno;
        goto fail_child;
    }
    if (plan->notify) result->notify_fd = stk_receive_fd(sock[0]);

    /* Between the filter and execve the worker still makes a few calls
       (close, prlimit64, rt_sigprocmask, execve itself). A profile may deny
       one; its notification then waits for a listener that only starts once
       we return. Nothing is answered here (a concurrent spawn can hold this
       error pipe open past the exec, so "not yet exec'd" cannot be told
       apart from "exec'd"): a worker that has not reached execve in time
       fails the setup instead of hanging. */
    {
        struct pollfd wait_exec = {errpipe[0], POLLIN, 0};
        int ready;
        do ready = poll(&wait_exec, 1, STK_EXEC_TIMEOUT_MS); while (ready < 0 && errno == EINTR);
        if (ready == 0) {
            result->stage = STK_STAGE_SYNC;
            result->error = ETIMEDOUT;
            goto fail_child;
        }
    }

    struct stk_failure failure;
    ssize_t n;
    do n = read(errpipe[0], &failure, sizeof failure); while (n < 0 && errno == EINTR);
    if (n == 0 && (!plan->notify || result->notify_fd >= 0)) {
        rc = 0;
        result->status_fd = statuspipe[0];
        statuspipe[0] = -1;
        goto out;
    }
    if (n == (ssize_t)sizeof failure) {
        result->stage = failure.stage;
        result->error = failure.error;
        result->detail = failure.detail;
    } else {
        result->stage = plan->notify && result->notify_fd < 0 ? STK_STAGE_SECCOMP : STK_STAGE_SYNC;
        result->error = n < 0 ? errno : EPROTO;
    }

fail_child:
    stk_close(&result->notify_fd);
    stk_close(&result->listen_fd);
    /* Not ours to reap: kill it and hand the pidfd back so the supervisor does. */
    (void)syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, NULL, 0);
out:
    stk_close(&statuspipe[0]);
    stk_close(&errpipe[0]);
    stk_close(&syncpipe[1]);
    stk_close(&sock[0]);
    return rc;

fail_before_clone:
    /* Nothing was cloned: back to the caller's signal mask, every end closed. */
    result->stage = STK_STAGE_CLONE;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    stk_close(&errpipe[0]); stk_close(&errpipe[1]);
    stk_close(&syncpipe[0]); stk_close(&syncpipe[1]);
    stk_close(&sock[0]); stk_close(&sock[1]);
    stk_close(&statuspipe[0]); stk_close(&statuspipe[1]);
    return -1;
}

int stk_tmpfs_detached(uint64_t size_bytes, uint64_t inodes, uint32_t uid, uint32_t gid, uint32_t mode) {
    int fs = (int)syscall(SYS_fsopen, "tmpfs", FSOPEN_CLOEXEC);
    if (fs < 0) return -1;
    char value[32];
    int rc = 0;
    snprintf(value, sizeof value, "%llu", (unsigned long long)size_bytes);
    rc |= (int)syscall(SYS_fsconfig, fs, FSCONFIG_SET_STRING, "size", value, 0);
    snprintf(value, sizeof value, "%llu", (unsigned long long)inodes);
    rc |= (int)syscall(SYS_fsconfig, fs, FSCONFIG_SET_STRING, "nr_inodes", value, 0);
    snprintf(value, sizeof value, "%u", uid);
    rc |= (int)syscall(SYS_fsconfig, fs, FSCONFIG_SET_STRING, "uid", value, 0);
    snprintf(value, sizeof value, "%u", gid);
    rc |= (int)syscall(SYS_fsconfig, fs, FSCONFIG_SET_STRING, "gid", value, 0);
    snprintf(value, sizeof value, "%o", mode);
    rc |= (int)syscall(SYS_fsconfig, fs, FSCONFIG_SET_STRING, "mode", value, 0);
    if (rc != 0 || syscall(SYS_fsconfig, fs, FSCONFIG_CMD_CREATE, NULL, NULL, 0) < 0) {
        int saved = errno;
        close(fs);
        errno = saved;
        return -1;
    }
    int mnt = (int)syscall(SYS_fsmount, fs, FSMOUNT_CLOEXEC,
                           MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC);
    int saved = errno;
    close(fs);
    errno = saved;
    return mnt;
}

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

int stk_notify_receive(int listener, struct stk_notification *out) {
    struct seccomp_notif notif;
    memset(&notif, 0, sizeof notif);
    if (ioctl(listener, SECCOMP_IOCTL_NOTIF_RECV, &notif) < 0) return -1;
    out->id = notif.id;
    out->pid = notif.pid;
    out->nr = notif.data.nr;
    out->arch = notif.data.arch;
    out->instruction_pointer = notif.data.instruction_pointer;
    for (int i = 0; i < 6; i++) out->args[i] = notif.data.args[i];
    return 0;
}

int stk_notify_respond(int listener, uint64_t id, int error) {
    struct seccomp_notif_resp resp;
    memset(&resp, 0, sizeof resp);
    resp.id = id;
    if (error > 0) {
        resp.error = -error;
    } else {
        resp.flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
    }
    return ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, &resp);
}

int stk_cap_last_cap(void) {
    int fd = open("/proc/sys/kernel/cap_last_cap", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return CAP_LAST_CAP;
    char buf[16];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return CAP_LAST_CAP;
    int value = 0;
    for (ssize_t i = 0; i < n && buf[i] >= '0' && buf[i] <= '9'; i++) value = value * 10 + (buf[i] - '0');
    return value;
}

int stk_tree_idmap(int tree_fd, int userns_fd) {
    struct mount_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.attr_set = MOUNT_ATTR_IDMAP;
    attr.userns_fd = (uint64_t)userns_fd;
    return (int)syscall(SYS_mount_setattr, tree_fd, "", AT_EMPTY_PATH | AT_RECURSIVE, &attr, sizeof attr);
}

int stk_clone_tree(const char *path, uint64_t attr_set) {
    int fd = (int)syscall(SYS_open_tree, AT_FDCWD, path, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE);
    if (fd < 0) return -1;
    struct mount_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.attr_set = attr_set;
    if (syscall(SYS_mount_setattr, fd, "", AT_EMPTY_PATH | AT_RECURSIVE, &attr, sizeof attr) < 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    return fd;
}
