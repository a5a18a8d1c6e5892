/* Threat class 7, descriptors and terminals: inherited descriptors, a
 * working directory or descriptor outside the root, TIOCSTI injection. */
#define _GNU_SOURCE
#include "probe_util.h"
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

/* Any descriptor besides 0, 1, 2 (and the one listing them) fails the control. */
STK_PROBE(probe_fds) {
    (void)argc; (void)argv;
    DIR *d = opendir("/proc/self/fd");
    if (!d) return stk_report(STK_PROBE_ERROR, "fds", "cannot list /proc/self/fd: errno %d (%s)", errno, stk_errno_name(errno));
    int self = dirfd(d), extra = 0;
    char list[400] = "";
    struct dirent *e;
    while ((e = readdir(d))) {
        char *end;
        long fd = strtol(e->d_name, &end, 10);
        if (*end || e->d_name[0] == 0 || fd == self || fd <= 2) continue;
        char link[64], target[128] = "?";
        snprintf(link, sizeof link, "/proc/self/fd/%ld", fd);
        ssize_t n = readlink(link, target, sizeof target - 1);
        if (n >= 0) target[n] = 0;
        size_t used = strlen(list);
        snprintf(list + used, sizeof list - used, "%s%ld->%s", extra ? " " : "", fd, target);
        extra++;
    }
    closedir(d);
    if (extra) return stk_report(STK_PROBE_SUCCEEDED, "fds", "%d extra descriptors open: %s", extra, list);
    return stk_report(STK_PROBE_BLOCKED, "fds", "only 0, 1, 2 open");
}

/* TIOCSTI on a pty of our own (it injects into ourselves only). Where no pty
 * can be made (no /dev/ptmx in the sandbox), the request goes to stdin and the
 * errno tells: EPERM is the filter, ENOTTY is the tty layer (the filter let it
 * through). The same again with the request's high 32 bits set, which the
 * kernel truncates away. */
static long tiocsti(int fd, uint64_t request) {
    char c = '#';
    return syscall(SYS_ioctl, fd, (unsigned long)request, &c);
}

STK_PROBE(probe_tiocsti) {
    (void)argc; (void)argv;
    const uint64_t plain = TIOCSTI, high = 0x100000000ULL | TIOCSTI;
    int master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
    int fd = 0;
    const char *where = "stdin";
    if (master >= 0 && grantpt(master) == 0 && unlockpt(master) == 0) {
        const char *name = ptsname(master);
        int slave = name ? open(name, O_RDWR | O_NOCTTY | O_CLOEXEC) : -1;
        if (slave >= 0) { fd = slave; where = "own pty"; }
    }
    long rc1 = tiocsti(fd, plain);
    int e1 = errno;
    long rc2 = tiocsti(fd, high);
    int e2 = errno;
    if (fd > 2) close(fd);
    if (master >= 0) close(master);
    if (rc1 == 0 || rc2 == 0)
        return stk_report(STK_PROBE_SUCCEEDED, "tiocsti", "injected into %s (plain: %s, high bits: %s)", where,
                          rc1 == 0 ? "ok" : stk_errno_name(e1), rc2 == 0 ? "ok" : stk_errno_name(e2));
    if (e1 == EPERM && e2 == EPERM)
        return stk_report(STK_PROBE_BLOCKED, "tiocsti", "TIOCSTI on %s: errno %d (EPERM), with high bits too", where, e1);
    if (fd <= 2 && (e1 == ENOTTY || e2 == ENOTTY))
        return stk_report(STK_PROBE_SUCCEEDED, "tiocsti", "TIOCSTI reached the tty layer on %s (plain: %s, high bits: %s)", where,
                          stk_errno_name(e1), stk_errno_name(e2));
    return stk_report(STK_PROBE_ERROR, "tiocsti", "TIOCSTI on %s: plain %s, high bits %s: cannot tell", where, stk_errno_name(e1), stk_errno_name(e2));
}

static int unreachable_cwd(char *out, size_t size) {
    long n = syscall(SYS_getcwd, out, size);
    if (n < 0) { snprintf(out, size, "getcwd: %s", stk_errno_name(errno)); return 0; }
    return out[0] != '/';  /* "(unreachable)/..." */
}

/* An inherited working directory or descriptor outside the root fails the
 * control; so does being able to make one (chroot while the working directory
 * stays outside, in a child). */
STK_PROBE(probe_cwd_outside) {
    (void)argc; (void)argv;
    char cwd[512];
    if (unreachable_cwd(cwd, sizeof cwd)) return stk_report(STK_PROBE_SUCCEEDED, "cwd-outside", "working directory outside the root: %s", cwd);
    DIR *d = opendir("/proc/self/fd");
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            char link[300], target[256];
            snprintf(link, sizeof link, "/proc/self/fd/%s", e->d_name);
            ssize_t n = readlink(link, target, sizeof target - 1);
            if (n <= 0) continue;
            target[n] = 0;
            if (strncmp(target, "(unreachable)", 13) == 0) {
                closedir(d);
                return stk_report(STK_PROBE_SUCCEEDED, "cwd-outside", "descriptor %s points outside the root: %s", e->d_name, target);
            }
        }
        closedir(d);
    }
    /* CVE-2024-21626: a working directory taken through a descriptor's /proc
     * link (runc's `cwd: /proc/self/fd/7`), or through init's cwd and root. */
    int here = open(".", O_PATH | O_DIRECTORY | O_CLOEXEC);
    char link[64];
    for (int fd = -2; fd < 64; fd++) {
        if (fd >= 0 && (fd == here || fcntl(fd, F_GETFD) < 0)) continue;
        if (fd == -2) snprintf(link, sizeof link, "/proc/1/cwd");
        else if (fd == -1) snprintf(link, sizeof link, "/proc/1/root");
        else snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
        if (chdir(link) != 0) continue;
        int outside = unreachable_cwd(cwd, sizeof cwd);
        if (here >= 0) (void)!fchdir(here);
        if (outside) {
            if (here >= 0) close(here);
            return stk_report(STK_PROBE_SUCCEEDED, "cwd-outside", "chdir %s: working directory outside the root: %s", link, cwd);
        }
    }
    if (here >= 0) close(here);
    char dir[256];
    if (stk_temp_dir(dir, sizeof dir) != 0)
        return stk_report(STK_PROBE_ERROR, "cwd-outside", "cannot make a temporary directory: errno %d (%s)", errno, stk_errno_name(errno));
    int fds[2];
    if (pipe(fds) != 0) { rmdir(dir); return stk_report(STK_PROBE_ERROR, "cwd-outside", "pipe: errno %d", errno); }
    int pid = fork();
    if (pid == 0) {
        char msg[512];
        if (chroot(dir) != 0) snprintf(msg, sizeof msg, "-chroot: errno %d (%s)", errno, stk_errno_name(errno));
        else if (unreachable_cwd(cwd, sizeof cwd)) snprintf(msg, sizeof msg, "+after chroot the working directory is outside the root: %s", cwd);
        else snprintf(msg, sizeof msg, "?chroot worked but the working directory is inside");
        (void)!write(fds[1], msg, strlen(msg));
        _exit(0);
    }
    close(fds[1]);
    char msg[512] = "";
    ssize_t n = pid > 0 ? read(fds[0], msg, sizeof msg - 1) : -1;
    close(fds[0]);
    if (pid > 0) waitpid(pid, NULL, 0);
    rmdir(dir);
    if (n <= 0) return stk_report(STK_PROBE_ERROR, "cwd-outside", "the child did not report");
    msg[n] = 0;
    int code = msg[0] == '+' ? STK_PROBE_SUCCEEDED : msg[0] == '-' ? STK_PROBE_BLOCKED : STK_PROBE_ERROR;
    return stk_report(code, "cwd-outside", "cwd %s inside the root; %s", cwd, msg + 1);
}
