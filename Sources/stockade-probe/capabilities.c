/* Threat class 3, capabilities: what is left in any set, and ways to regain. */
#define _GNU_SOURCE
#include "probe_util.h"
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

/* Copies the value of `key:` in /proc/self/status into `out`; 0 on success. */
static int status_field(const char *key, char *out, size_t size) {
    FILE *f = fopen("/proc/self/status", "re");
    if (!f) return -1;
    char line[256];
    size_t klen = strlen(key);
    int found = -1;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, key, klen) == 0 && line[klen] == ':') {
            char *v = line + klen + 1;
            while (*v == ' ' || *v == '\t') v++;
            v[strcspn(v, "\n")] = 0;
            snprintf(out, size, "%s", v);
            found = 0;
            break;
        }
    }
    fclose(f);
    return found;
}

STK_PROBE(probe_caps) {
    (void)argc; (void)argv;
    const char *sets[] = {"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"};
    char held[256] = "";
    for (size_t i = 0; i < 5; i++) {
        char v[64];
        if (status_field(sets[i], v, sizeof v) != 0)
            return stk_report(STK_PROBE_ERROR, "caps", "no %s in /proc/self/status", sets[i]);
        if (strtoull(v, NULL, 16) != 0) {
            size_t n = strlen(held);
            snprintf(held + n, sizeof held - n, "%s%s=%s", n ? " " : "", sets[i], v);
        }
    }
    if (*held) return stk_report(STK_PROBE_SUCCEEDED, "caps", "capabilities held: %s", held);
    return stk_report(STK_PROBE_BLOCKED, "caps", "every capability set is empty");
}

STK_PROBE(probe_no_new_privs) {
    (void)argc; (void)argv;
    char v[32];
    if (status_field("NoNewPrivs", v, sizeof v) != 0) return stk_report(STK_PROBE_ERROR, "no-new-privs", "no NoNewPrivs in /proc/self/status");
    if (strcmp(v, "1") == 0) return stk_report(STK_PROBE_BLOCKED, "no-new-privs", "NoNewPrivs 1");
    return stk_report(STK_PROBE_SUCCEEDED, "no-new-privs", "NoNewPrivs %s: setuid binaries can raise privileges", v);
}

STK_PROBE(probe_seccomp_mode) {
    (void)argc; (void)argv;
    char v[32];
    if (status_field("Seccomp", v, sizeof v) != 0) return stk_report(STK_PROBE_ERROR, "seccomp-mode", "no Seccomp in /proc/self/status");
    if (strcmp(v, "2") == 0) return stk_report(STK_PROBE_BLOCKED, "seccomp-mode", "Seccomp 2 (filter)");
    return stk_report(STK_PROBE_SUCCEEDED, "seccomp-mode", "Seccomp %s: no filter", v);
}

STK_PROBE(probe_setuid0) {
    (void)argc; (void)argv;
    long rc = setuid(0);
    int err = errno;
    if (rc < 0 && err == EINVAL) return stk_report(STK_PROBE_BLOCKED, "setuid0", "setuid(0): errno %d (EINVAL: uid 0 not mapped)", err);
    return stk_verdict_call("setuid0", "setuid(0)", rc, err, NULL);
}

/* Raises CAP_SYS_ADMIN in the effective and permitted sets (a no-op for a root that has it). */
STK_PROBE(probe_capset) {
    (void)argc; (void)argv;
    struct __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof data);
    if (syscall(SYS_capget, &header, data) != 0)
        return stk_report(STK_PROBE_ERROR, "capset", "capget: errno %d (%s)", errno, stk_errno_name(errno));
    data[CAP_TO_INDEX(CAP_SYS_ADMIN)].effective |= CAP_TO_MASK(CAP_SYS_ADMIN);
    data[CAP_TO_INDEX(CAP_SYS_ADMIN)].permitted |= CAP_TO_MASK(CAP_SYS_ADMIN);
    long rc = syscall(SYS_capset, &header, data);
    return stk_verdict_call("capset", "capset(+CAP_SYS_ADMIN)", rc, errno, NULL);
}

/* Tries to write a map (refused everywhere once a map exists), then reads
 * the map: a range whose outside ids cover host uid 0 fails the control. */
STK_PROBE(probe_uidmap) {
    (void)argc; (void)argv;
    int wfd = open("/proc/self/uid_map", O_WRONLY | O_CLOEXEC);
    int werr = errno;
    long wrc = -1;
    if (wfd >= 0) { wrc = write(wfd, "0 0 1\n", 6); werr = errno; close(wfd); }
    FILE *f = fopen("/proc/self/uid_map", "re");
    if (!f) return stk_report(STK_PROBE_ERROR, "uidmap", "cannot read /proc/self/uid_map: errno %d (%s)", errno, stk_errno_name(errno));
    unsigned long inside, outside, count;
    int lines = 0, maps_root = 0;
    unsigned long root_inside = 0;
    while (fscanf(f, "%lu %lu %lu", &inside, &outside, &count) == 3) {
        lines++;
        if (outside == 0 && count > 0) { maps_root = 1; root_inside = inside; }
    }
    fclose(f);
    const char *write_note = wrc >= 0 ? "write accepted" : stk_errno_name(werr);
    if (maps_root)
        return stk_report(STK_PROBE_SUCCEEDED, "uidmap", "uid %lu maps to host uid 0 (%d ranges; write: %s)", root_inside, lines, write_note);
    if (lines == 0) return stk_report(STK_PROBE_ERROR, "uidmap", "empty uid_map");
    return stk_report(STK_PROBE_BLOCKED, "uidmap", "host uid 0 not mapped (%d ranges; write: %s)", lines, write_note);
}

/* mknod of /dev/null's device (char 1:3) in a temporary directory, removed at once. */
STK_PROBE(probe_mknod_dev) {
    (void)argc; (void)argv;
    char dir[256], path[300];
    if (stk_temp_dir(dir, sizeof dir) != 0)
        return stk_report(STK_PROBE_ERROR, "mknod-dev", "cannot make a temporary directory: errno %d (%s)", errno, stk_errno_name(errno));
    snprintf(path, sizeof path, "%s/null", dir);
    long rc = mknod(path, S_IFCHR | 0600, makedev(1, 3));
    int err = errno;
    unlink(path);
    rmdir(dir);
    return stk_verdict_call("mknod-dev", "mknod(char 1:3)", rc, err, NULL);
}

struct seize_result { long rc; int err; };

/* PTRACE_SEIZE of pid 1 from a child (which then exits: the kernel detaches
 * on the tracer's exit, and a seize never stops the tracee). */
static void seize_init(int out) {
    struct seize_result r;
    r.rc = ptrace(PTRACE_SEIZE, 1, NULL, NULL);
    r.err = errno;
    (void)!write(out, &r, sizeof r);
}

/* Traces the init of the probe's pid namespace, the process that holds the
 * namespace (in a sandbox, Stockade's init; runc's CVE-2016-9962 was the same
 * reach into the runtime). Where the probe can make a pid namespace of its own
 * (unsandboxed as root) it does, and traces that namespace's init, a child of
 * its own: the host's init is never touched. */
STK_PROBE(probe_ptrace_init) {
    (void)argc; (void)argv;
    int fds[2];
    if (pipe(fds) != 0) return stk_report(STK_PROBE_ERROR, "ptrace-init", "pipe: errno %d (%s)", errno, stk_errno_name(errno));
    const char *target = "pid 1 (the namespace's init)";
    int pid;
    if (stk_has_sys_admin() && unshare(CLONE_NEWPID) == 0) {
        target = "pid 1 of a pid namespace the probe made";
        pid = fork();
        if (pid == 0) {
            /* pid 1 of the new namespace: its child traces it. */
            int tracer = fork();
            if (tracer == 0) { seize_init(fds[1]); _exit(0); }
            if (tracer > 0) waitpid(tracer, NULL, 0);
            _exit(0);
        }
    } else {
        pid = fork();
        if (pid == 0) { seize_init(fds[1]); _exit(0); }
    }
    close(fds[1]);
    struct seize_result r = {-1, 0};
    ssize_t n = pid > 0 ? read(fds[0], &r, sizeof r) : -1;
    close(fds[0]);
    if (pid > 0) waitpid(pid, NULL, 0);
    if (n != (ssize_t)sizeof r) return stk_report(STK_PROBE_ERROR, "ptrace-init", "the tracer did not report");
    char what[96];
    snprintf(what, sizeof what, "ptrace(PTRACE_SEIZE, %s)", target);
    return stk_verdict_call("ptrace-init", what, r.rc, r.err, NULL);
}
