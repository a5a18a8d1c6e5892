/* Threat class 1, namespaces: host processes, nested user namespaces,
 * setns, mounts, hostname, /proc/sys writes, chroot and pivot_root, and the
 * host helpers an escape writes (cgroup release_agent, core_pattern, ...). */
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
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
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

/* Whether each /proc path named is covered as Docker covers it: a file by a
 * bind of /dev/null (a character device 1:3 that reads empty), a directory
 * by an empty tmpfs. An absent path is skipped; any other is the host's. */
STK_PROBE(probe_proc_masked) {
    if (argc < 1) return stk_report(STK_PROBE_USAGE, "proc-masked", "usage: proc-masked PATH...");
    char seen[384] = "";
    int exposed = 0, present = 0;
    for (int i = 0; i < argc; i++) {
        const char *path = argv[i], *state;
        struct stat st;
        struct statfs fs;
        if (stat(path, &st) < 0) {
            state = errno == ENOENT ? "absent" : stk_errno_name(errno);
        } else if (S_ISDIR(st.st_mode)) {
            DIR *dir = opendir(path);
            int entries = 0;
            for (struct dirent *e; dir && (e = readdir(dir));)
                if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) entries++;
            if (dir) closedir(dir);
            int tmpfs = statfs(path, &fs) == 0 && fs.f_type == TMPFS_MAGIC;
            present++;
            if (tmpfs && entries == 0) state = "empty-tmpfs";
            else { state = "host-directory"; exposed++; }
        } else {
            char buf[256];
            ssize_t n = -1;
            int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
            if (fd >= 0) { n = read(fd, buf, sizeof buf); close(fd); }
            present++;
            if (S_ISCHR(st.st_mode) && major(st.st_rdev) == 1 && minor(st.st_rdev) == 3 && n <= 0) state = "dev-null";
            else { state = n > 0 ? "host-file-readable" : "host-file"; exposed++; }
        }
        size_t len = strlen(seen);
        snprintf(seen + len, sizeof seen - len, "%s%s=%s", len ? " " : "", path, state);
    }
    if (present == 0) return stk_report(STK_PROBE_ERROR, "proc-masked", "none present: %s", seen);
    return stk_report(exposed ? STK_PROBE_SUCCEEDED : STK_PROBE_BLOCKED, "proc-masked", "%s", seen);
}

/* Opens each path for writing with `flags` (nothing is ever written), or with
 * `flags` -1 only asks the kernel whether it could (stk_writable), and reports
 * each path's answer. Returns the probe's code: any path writable is success;
 * with `require_erofs`, every present path must be refused by a read-only
 * mount, not merely by the file's mode. */
static int open_for_writing(const char *name, int argc, char **argv, int flags, int require_erofs) {
    if (argc < 1) return stk_report(STK_PROBE_USAGE, name, "usage: %s PATH...", name);
    char seen[512] = "";
    int opened = 0, present = 0, readOnly = 0;
    for (int i = 0; i < argc; i++) {
        int fd, err;
        if (flags < 0) {
            err = stk_writable(argv[i]);
            fd = err ? -1 : INT32_MAX;  /* writable: nothing to close */
        } else {
            fd = open(argv[i], O_WRONLY | O_CLOEXEC | O_NONBLOCK | flags);
            err = errno;
        }
        const char *state = fd >= 0 ? (flags < 0 ? "writable" : "opened") : stk_errno_name(err);
        if (fd >= 0) { if (flags >= 0) close(fd); opened++; }
        if (fd >= 0 || err != ENOENT) present++;
        if (fd < 0 && err == EROFS) readOnly++;
        size_t len = strlen(seen);
        snprintf(seen + len, sizeof seen - len, "%s%s=%s", len ? " " : "", argv[i], state);
    }
    if (present == 0) return stk_report(STK_PROBE_ERROR, name, "none present: %s", seen);
    if (opened) return stk_report(STK_PROBE_SUCCEEDED, name, "%s", seen);
    /* Refused by the file's mode alone says nothing about the mount. */
    if (require_erofs && readOnly < present) return stk_report(STK_PROBE_ERROR, name, "%s: refused, not all by a read-only mount", seen);
    return stk_report(STK_PROBE_BLOCKED, name, "%s", seen);
}

/* O_TRUNC: on a read-only mount the kernel refuses with EROFS before any
 * permission check, so EROFS shows the mount, not merely the file's mode, holds. */
STK_PROBE(probe_proc_write) { return open_for_writing("proc-write", argc, argv, O_TRUNC, 1); }

/* The host's helpers that the kernel runs as root when a file is written:
 * core_pattern, modprobe, uevent_helper, binfmt_misc's register. Only asked
 * (stk_writable), never opened, so the positive control run unsandboxed as
 * root changes nothing on the host. Any refusal counts (EROFS from a
 * read-only /proc/sys, EACCES, an absent /sys). */
STK_PROBE(probe_helper_write) { return open_for_writing("helper-write", argc, argv, -1, 0); }

/* CVE-2022-0492: mount a cgroup v1 hierarchy and write its release_agent,
 * which the kernel runs as root on the host when a cgroup empties. First in a
 * private mount namespace where the probe can make one (unsandboxed as root:
 * the mount never reaches the host's table); a named hierarchy of its own (no
 * controller), so no host hierarchy is touched; release_agent is opened for
 * writing and closed unwritten. Then any release_agent already visible under
 * /sys/fs/cgroup, only asked (stk_writable): the host's are never opened. */
STK_PROBE(probe_cgroup_release_agent) {
    (void)argc; (void)argv;
    if (stk_has_sys_admin() && unshare(CLONE_NEWNS) == 0) (void)mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL);
    char dir[256];
    if (stk_temp_dir(dir, sizeof dir) != 0)
        return stk_report(STK_PROBE_ERROR, "cgroup-release-agent", "cannot make a temporary directory: errno %d (%s)", errno, stk_errno_name(errno));
    char options[64];
    snprintf(options, sizeof options, "none,name=stockade-probe-%d", (int)getpid());
    long rc = mount("cgroup", dir, "cgroup", MS_NOSUID | MS_NODEV | MS_NOEXEC, options);
    int mount_err = errno;
    int agent_err = 0, agent_opened = 0;
    if (rc == 0) {
        char path[300];
        snprintf(path, sizeof path, "%s/release_agent", dir);
        int fd = open(path, O_WRONLY | O_CLOEXEC | O_NONBLOCK);
        agent_err = errno;
        if (fd >= 0) { close(fd); agent_opened = 1; }
        umount2(dir, MNT_DETACH);
    }
    rmdir(dir);
    if (agent_opened)
        return stk_report(STK_PROBE_SUCCEEDED, "cgroup-release-agent", "mounted cgroup (%s) and opened its release_agent for writing", options);
    /* Any hierarchy the sandbox shows (none is expected). */
    DIR *d = opendir("/sys/fs/cgroup");
    for (struct dirent *e; d && (e = readdir(d));) {
        if (e->d_name[0] == '.') continue;
        char path[300];
        snprintf(path, sizeof path, "/sys/fs/cgroup/%s/release_agent", e->d_name);
        if (stk_writable(path) == 0) {
            closedir(d);
            return stk_report(STK_PROBE_SUCCEEDED, "cgroup-release-agent", "%s is writable", path);
        }
    }
    if (d) closedir(d);
    if (rc == 0)
        return stk_report(STK_PROBE_BLOCKED, "cgroup-release-agent", "mounted cgroup, but release_agent refused: errno %d (%s)", agent_err, stk_errno_name(agent_err));
    return stk_verdict_call("cgroup-release-agent", "mount -t cgroup (named v1 hierarchy)", -1, mount_err, (const int[]){ENODEV, 0});
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
