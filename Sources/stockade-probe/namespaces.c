/* Threat class 1, namespaces: host processes, nested user namespaces,
 * setns, mounts, hostname, /proc/sys writes, chroot and pivot_root. */
#define _GNU_SOURCE
#include "probe_util.h"
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static int parent_of(int pid) {
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return -1;
    buf[n] = 0;
    char *close_paren = strrchr(buf, ')');  /* comm may hold spaces and parens */
    int ppid = -1;
    char state;
    if (!close_paren || sscanf(close_paren + 1, " %c %d", &state, &ppid) != 2) return -1;
    return ppid;
}

/* Sees a process that is neither this probe nor one of its ancestors. */
STK_PROBE(probe_host_pids) {
    (void)argc; (void)argv;
    int chain[64], depth = 0;
    for (int p = getpid(); p > 0 && depth < 64; p = parent_of(p)) chain[depth++] = p;
    DIR *d = opendir("/proc");
    if (!d) return stk_report(STK_PROBE_ERROR, "host-pids", "cannot open /proc: errno %d (%s)", errno, stk_errno_name(errno));
    int total = 0, foreign = 0, example = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        char *end;
        long pid = strtol(e->d_name, &end, 10);
        if (*end || pid <= 0) continue;
        total++;
        int mine = 0;
        for (int i = 0; i < depth; i++) mine |= chain[i] == pid;
        if (!mine) { foreign++; if (!example) example = (int)pid; }
    }
    closedir(d);
    if (foreign)
        return stk_report(STK_PROBE_SUCCEEDED, "host-pids", "%d processes visible, %d not this probe's (e.g. pid %d)", total, foreign, example);
    return stk_report(STK_PROBE_BLOCKED, "host-pids", "%d processes visible, all this probe or its ancestors", total);
}

STK_PROBE(probe_userns) {
    (void)argc; (void)argv;
    long rc = unshare(CLONE_NEWUSER);
    return stk_verdict_call("userns", "unshare(CLONE_NEWUSER)", rc, errno, (const int[]){EINVAL, 0});
}

/* fork-like raw clone: no CLONE_VM, so the child runs on a copy of this stack. */
STK_PROBE(probe_clone_newuser) {
    (void)argc; (void)argv;
    long pid = syscall(SYS_clone, (unsigned long)(CLONE_NEWUSER | SIGCHLD), 0UL, NULL, NULL, 0UL);
    if (pid == 0) syscall(SYS_exit_group, 0);
    int err = errno;
    if (pid > 0) waitpid((int)pid, NULL, 0);
    return stk_verdict_call("clone-newuser", "clone(CLONE_NEWUSER)", pid, err, (const int[]){EINVAL, 0});
}

STK_PROBE(probe_clone3_newuser) {
    (void)argc; (void)argv;
    struct { uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls; } args;
    memset(&args, 0, sizeof args);
    args.flags = CLONE_NEWUSER;
    args.exit_signal = SIGCHLD;
    long pid = syscall(435 /* clone3 */, &args, sizeof args);
    if (pid == 0) syscall(SYS_exit_group, 0);
    int err = errno;
    if (pid > 0) waitpid((int)pid, NULL, 0);
    /* ENOSYS is the filter's answer to every clone3 (glibc falls back to clone). */
    if (pid < 0 && err == ENOSYS)
        return stk_report(STK_PROBE_BLOCKED, "clone3-newuser", "clone3(CLONE_NEWUSER): errno %d (ENOSYS)", err);
    return stk_verdict_call("clone3-newuser", "clone3(CLONE_NEWUSER)", pid, err, (const int[]){EINVAL, 0});
}

STK_PROBE(probe_setns) {
    (void)argc; (void)argv;
    const char *path = "/proc/1/ns/net";
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) { path = "/proc/self/ns/net"; fd = open(path, O_RDONLY | O_CLOEXEC); }
    if (fd < 0) return stk_report(STK_PROBE_ERROR, "setns", "cannot open a net namespace: errno %d (%s)", errno, stk_errno_name(errno));
    long rc = setns(fd, CLONE_NEWNET);
    int err = errno;
    close(fd);
    char what[64];
    snprintf(what, sizeof what, "setns(%s)", path);
    return stk_verdict_call("setns", what, rc, err, (const int[]){EINVAL, 0});
}

static int try_mount(const char *name, const char *source, const char *type, const char *data) {
    char dir[256];
    if (stk_temp_dir(dir, sizeof dir) != 0)
        return stk_report(STK_PROBE_ERROR, name, "cannot make a temporary directory: errno %d (%s)", errno, stk_errno_name(errno));
    long rc = mount(source, dir, type, MS_NOSUID | MS_NODEV | MS_NOEXEC, data);
    int err = errno;
    if (rc == 0) umount2(dir, MNT_DETACH);
    rmdir(dir);
    char what[64];
    snprintf(what, sizeof what, "mount -t %s", type);
    return stk_verdict_call(name, what, rc, err, (const int[]){ENODEV, 0});
}

STK_PROBE(probe_mount_tmpfs) { (void)argc; (void)argv; return try_mount("mount-tmpfs", "none", "tmpfs", "size=1m"); }
STK_PROBE(probe_mount_proc) { (void)argc; (void)argv; return try_mount("mount-proc", "proc", "proc", NULL); }
STK_PROBE(probe_mount_sysfs) { (void)argc; (void)argv; return try_mount("mount-sysfs", "sysfs", "sysfs", NULL); }

/* Sets the hostname to the one it already has. */
STK_PROBE(probe_sethostname) {
    (void)argc; (void)argv;
    char name[256] = {0};
    if (gethostname(name, sizeof name - 1) != 0)
        return stk_report(STK_PROBE_ERROR, "sethostname", "gethostname: errno %d (%s)", errno, stk_errno_name(errno));
    long rc = sethostname(name, strlen(name));
    return stk_verdict_call("sethostname", "sethostname(same name)", rc, errno, NULL);
}

/* Writes the current value of kernel.hostname back. */
STK_PROBE(probe_proc_sys_write) {
    (void)argc; (void)argv;
    const char *path = "/proc/sys/kernel/hostname";
    char value[256];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return stk_report(STK_PROBE_ERROR, "proc-sys-write", "cannot read %s: errno %d (%s)", path, errno, stk_errno_name(errno));
    ssize_t n = read(fd, value, sizeof value);
    close(fd);
    if (n <= 0) return stk_report(STK_PROBE_ERROR, "proc-sys-write", "cannot read %s", path);
    fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) {
        int err = errno;
        if (err == EROFS) return stk_report(STK_PROBE_BLOCKED, "proc-sys-write", "open %s for writing: errno %d (EROFS)", path, err);
        return stk_verdict_call("proc-sys-write", "open /proc/sys/kernel/hostname for writing", -1, err, NULL);
    }
    long rc = write(fd, value, (size_t)n);
    int err = errno;
    close(fd);
    if (rc < 0 && err == EROFS) return stk_report(STK_PROBE_BLOCKED, "proc-sys-write", "write: errno %d (EROFS)", err);
    return stk_verdict_call("proc-sys-write", "write /proc/sys/kernel/hostname (same value)", rc, err, NULL);
}

/* chroot into a fresh directory, in a child so the probe itself can remove it. */
STK_PROBE(probe_chroot) {
    (void)argc; (void)argv;
    char dir[256];
    if (stk_temp_dir(dir, sizeof dir) != 0)
        return stk_report(STK_PROBE_ERROR, "chroot", "cannot make a temporary directory: errno %d (%s)", errno, stk_errno_name(errno));
    int pid = fork();
    if (pid == 0) _exit(chroot(dir) == 0 ? 0 : (errno & 0x7f) + 1);
    int status = 0;
    if (pid > 0) waitpid(pid, &status, 0);
    rmdir(dir);
    if (pid < 0 || !WIFEXITED(status)) return stk_report(STK_PROBE_ERROR, "chroot", "the child did not report");
    int code = WEXITSTATUS(status);
    return stk_verdict_call("chroot", "chroot(tmpdir)", code == 0 ? 0 : -1, code - 1, NULL);
}

/* pivot_root with paths that do not exist: ENOENT when the call is allowed,
 * EPERM when refused; nothing can change. */
STK_PROBE(probe_pivot_root) {
    (void)argc; (void)argv;
    long rc = syscall(SYS_pivot_root, "/nonexistent-stockade-probe-new", "/nonexistent-stockade-probe-old");
    return stk_verdict_call("pivot-root", "pivot_root(bad paths)", rc, errno, NULL);
}
