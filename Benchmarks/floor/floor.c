/*
 * floor: the least a fully isolated run of /bin/true must do on this host, in a loop.
 *
 * Each iteration, timed from the first cgroup mkdir to the last rmdir:
 *   parent: create a cgroup v1 run cgroup under memory, pids, cpu and freezer and set
 *           memory (+memsw when present), pids and cpu limits;
 *           clone3 into new user, pid, mount, net, UTS and IPC namespaces (with a pidfd);
 *           write setgroups=deny and the id maps (0 -> 1000000000, 65536 ids: never host 0);
 *           place the child in the run cgroup; release it; wait for its exit on the pidfd;
 *           remove the run cgroup.
 *   child:  become root of its user namespace; unshare the cgroup namespace (rooted at the
 *           run cgroup); set the hostname; make / private; mount a tmpfs root; bind /usr /bin
 *           /lib /lib64 read-only; mount a fresh /proc; pivot_root and detach the old root;
 *           drop to uid/gid 1000 (all capabilities go); no_new_privs; install a small seccomp
 *           filter (allow all but a few syscalls, which get EPERM); execve /bin/true.
 *
 * No init process, no /dev, no stdio pipes, no audit: this is the floor a supervisor
 * can be compared against, not a sandbox to use.
 *
 * Usage: floor [-n N] [-w WARMUP] [-q] [-t] [-T]   prints one line per run ("run <i> <microseconds>"),
 * then "floor: n=... median_us=... p10_us=... p90_us=... mean_us=... runs_per_s=...";
 * -q omits the per-run lines, -t adds the mean time of each parent-side phase, -T joins the
 * cgroups through "tasks" instead of "cgroup.procs" (see BENCHMARKS.md: the first cgroup.procs
 * write after a quiet period waits for an RCU grace period on cgroup v1).
 * Must run as root on a cgroup v1 host.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/mount.h>
#include <linux/sched.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

static const char *const controllers[] = {"memory", "pids", "cpu", "freezer"};
enum { NCTRL = 4 };

static void die(const char *what) {
    fprintf(stderr, "floor: %s: %s\n", what, strerror(errno));
    exit(1);
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int write_file(const char *path, const char *text) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t len = (ssize_t)strlen(text);
    ssize_t n = write(fd, text, (size_t)len);
    int saved = errno;
    close(fd);
    errno = saved;
    return n == len ? 0 : -1;
}

/* ---------- child (async-signal-safe: raw syscalls, no allocation) ---------- */

static void child_fail(int errfd, int step) {
    int msg[2] = {step, errno};
    (void)!write(errfd, msg, sizeof msg);
    _exit(127);
}

static int bind_ro(const char *source, const char *target) {
    if (mkdir(target, 0755) < 0 && errno != EEXIST) return -1;
    if (mount(source, target, NULL, MS_BIND | MS_REC, NULL) < 0) return -1;
    struct mount_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.attr_set = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
    return (int)syscall(SYS_mount_setattr, AT_FDCWD, target, AT_RECURSIVE, &attr, sizeof attr);
}

/* Allow everything but a few syscalls (EPERM); kill on a foreign architecture. */
static struct sock_filter filter[] = {
    BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
    BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
    BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, 0x40000000, 8, 0), /* x32 */
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_keyctl, 7, 0),
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_add_key, 6, 0),
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_request_key, 5, 0),
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_ptrace, 4, 0),
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_bpf, 3, 0),
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_perf_event_open, 2, 0),
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_kexec_load, 1, 0),
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
};

static char *const child_argv[] = {"/bin/true", NULL};
static char *const child_envp[] = {"PATH=/usr/bin:/bin", NULL};

__attribute__((noreturn)) static void child(int syncfd, int errfd) {
    char go;
    if (read(syncfd, &go, 1) != 1) _exit(127);
    if (setresgid(0, 0, 0) < 0 || setresuid(0, 0, 0) < 0) child_fail(errfd, 1);
    if (unshare(CLONE_NEWCGROUP) < 0) child_fail(errfd, 2);
    if (sethostname("floor", 5) < 0) child_fail(errfd, 3);
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0) child_fail(errfd, 4);
    if (mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755") < 0) child_fail(errfd, 5);
    if (bind_ro("/usr", "/tmp/usr") < 0) child_fail(errfd, 6);
    if (bind_ro("/bin", "/tmp/bin") < 0) child_fail(errfd, 7);
    if (bind_ro("/lib", "/tmp/lib") < 0) child_fail(errfd, 8);
    if (bind_ro("/lib64", "/tmp/lib64") < 0) child_fail(errfd, 9);
    if (mkdir("/tmp/proc", 0555) < 0) child_fail(errfd, 10);
    if (mount("proc", "/tmp/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0) child_fail(errfd, 11);
    if (chdir("/tmp") < 0 || syscall(SYS_pivot_root, ".", ".") < 0 || umount2(".", MNT_DETACH) < 0 || chdir("/") < 0)
        child_fail(errfd, 12);
    if (setresgid(1000, 1000, 1000) < 0 || setresuid(1000, 1000, 1000) < 0) child_fail(errfd, 13);
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) child_fail(errfd, 14);
    struct sock_fprog prog = {(unsigned short)(sizeof filter / sizeof filter[0]), filter};
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) < 0) child_fail(errfd, 15);
    execve("/bin/true", child_argv, child_envp);
    child_fail(errfd, 16);
    _exit(127);
}

/* ---------- parent ---------- */

static void cgroup_path(char *buf, size_t cap, int c, const char *name, const char *file) {
    snprintf(buf, cap, "/sys/fs/cgroup/%s/%s%s%s", controllers[c], name, file ? "/" : "", file ? file : "");
}

/* -T: join through each hierarchy's "tasks" file instead of "cgroup.procs" (the child has one thread). */
static const char *join_file = "cgroup.procs";

/* Phase totals for -t: cgroup create, clone to release, release to reaped, cgroup remove. */
static uint64_t phase_ns[4];

static void one_run(int index) {
    char name[64], path[256];
    uint64_t t0 = now_ns();
    snprintf(name, sizeof name, "stockade-floor-%d-%d", (int)getpid(), index);

    for (int c = 0; c < NCTRL; c++) {
        cgroup_path(path, sizeof path, c, name, NULL);
        if (mkdir(path, 0755) < 0) die(path);
    }
    cgroup_path(path, sizeof path, 0, name, "memory.limit_in_bytes");
    if (write_file(path, "268435456") < 0) die(path);
    cgroup_path(path, sizeof path, 0, name, "memory.memsw.limit_in_bytes");
    if (access(path, F_OK) == 0 && write_file(path, "268435456") < 0) die(path);
    cgroup_path(path, sizeof path, 1, name, "pids.max");
    if (write_file(path, "64") < 0) die(path);
    cgroup_path(path, sizeof path, 2, name, "cpu.cfs_period_us");
    if (write_file(path, "100000") < 0) die(path);
    cgroup_path(path, sizeof path, 2, name, "cpu.cfs_quota_us");
    if (write_file(path, "100000") < 0) die(path);

    uint64_t t1 = now_ns();
    int syncpipe[2], errpipe[2];
    if (pipe2(syncpipe, O_CLOEXEC) < 0 || pipe2(errpipe, O_CLOEXEC) < 0) die("pipe2");

    int pidfd = -1;
    struct clone_args args;
    memset(&args, 0, sizeof args);
    args.flags = CLONE_PIDFD | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWUTS | CLONE_NEWIPC;
    args.pidfd = (uint64_t)(uintptr_t)&pidfd;
    args.exit_signal = SIGCHLD;
    long pid = syscall(SYS_clone3, &args, sizeof args);
    if (pid < 0) die("clone3");
    if (pid == 0) {
        close(syncpipe[1]);
        close(errpipe[0]);
        child(syncpipe[0], errpipe[1]);
    }
    close(syncpipe[0]);
    close(errpipe[1]);

    char text[64];
    snprintf(path, sizeof path, "/proc/%ld/setgroups", pid);
    if (write_file(path, "deny") < 0) die(path);
    snprintf(path, sizeof path, "/proc/%ld/uid_map", pid);
    if (write_file(path, "0 1000000000 65536\n") < 0) die(path);
    snprintf(path, sizeof path, "/proc/%ld/gid_map", pid);
    if (write_file(path, "0 1000000000 65536\n") < 0) die(path);
    snprintf(text, sizeof text, "%ld", pid);
    for (int c = 0; c < NCTRL; c++) {
        cgroup_path(path, sizeof path, c, name, join_file);
        if (write_file(path, text) < 0) die(path);
    }
    if (write(syncpipe[1], "g", 1) != 1) die("release the child");
    close(syncpipe[1]);
    uint64_t t2 = now_ns();

    int failure[2];
    ssize_t n = read(errpipe[0], failure, sizeof failure);
    close(errpipe[0]);
    siginfo_t info;
    memset(&info, 0, sizeof info);
    while (waitid((idtype_t)P_PIDFD, (id_t)pidfd, &info, WEXITED) < 0)
        if (errno != EINTR) die("waitid");
    close(pidfd);
    if (n == (ssize_t)sizeof failure) {
        errno = failure[1];
        fprintf(stderr, "floor: child step %d failed: %s\n", failure[0], strerror(errno));
        exit(1);
    }
    if (info.si_code != CLD_EXITED || info.si_status != 0) {
        fprintf(stderr, "floor: /bin/true did not exit 0 (code %d status %d)\n", info.si_code, info.si_status);
        exit(1);
    }

    uint64_t t3 = now_ns();
    for (int c = NCTRL - 1; c >= 0; c--) {
        cgroup_path(path, sizeof path, c, name, NULL);
        int tries = 0;
        while (rmdir(path) < 0) {
            if (errno != EBUSY || ++tries > 2000) die(path);
            usleep(100);
        }
    }
    uint64_t t4 = now_ns();
    if (index >= 0) {
        phase_ns[0] += t1 - t0;
        phase_ns[1] += t2 - t1;
        phase_ns[2] += t3 - t2;
        phase_ns[3] += t4 - t3;
    }
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static uint64_t percentile(const uint64_t *sorted, int n, double p) {
    /* nearest-rank on the sorted samples */
    int i = (int)(p / 100.0 * (n - 1) + 0.5);
    return sorted[i < 0 ? 0 : i >= n ? n - 1 : i];
}

int main(int argc, char **argv) {
    int n = 200, warmup = 20, quiet = 0, phases = 0, opt;
    while ((opt = getopt(argc, argv, "n:w:qtT")) != -1) {
        if (opt == 'n') n = atoi(optarg);
        else if (opt == 'w') warmup = atoi(optarg);
        else if (opt == 'q') quiet = 1;
        else if (opt == 't') phases = 1;
        else if (opt == 'T') join_file = "tasks";
        else {
            fprintf(stderr, "usage: floor [-n N] [-w WARMUP] [-q] [-t] [-T]\n");
            return 2;
        }
    }
    if (n < 1 || warmup < 0) {
        fprintf(stderr, "floor: -n must be >= 1 and -w >= 0\n");
        return 2;
    }
    uint64_t *samples = calloc((size_t)n, sizeof *samples);
    if (samples == NULL) die("calloc");
    for (int i = 0; i < warmup; i++) one_run(-1 - i);
    uint64_t total_start = now_ns();
    for (int i = 0; i < n; i++) {
        uint64_t t0 = now_ns();
        one_run(i);
        samples[i] = now_ns() - t0;
        if (!quiet) printf("run %d %.1f\n", i, (double)samples[i] / 1000.0);
    }
    uint64_t total = now_ns() - total_start;
    qsort(samples, (size_t)n, sizeof *samples, cmp_u64);
    double sum = 0;
    for (int i = 0; i < n; i++) sum += (double)samples[i];
    printf("floor: n=%d median_us=%.1f p10_us=%.1f p90_us=%.1f mean_us=%.1f runs_per_s=%.1f\n", n,
           (double)percentile(samples, n, 50) / 1000.0, (double)percentile(samples, n, 10) / 1000.0,
           (double)percentile(samples, n, 90) / 1000.0, sum / n / 1000.0, (double)n * 1e9 / (double)total);
    if (phases)
        printf("floor phases (mean us): cgroup-create=%.1f clone-to-release=%.1f release-to-reaped=%.1f cgroup-remove=%.1f\n",
               (double)phase_ns[0] / n / 1000.0, (double)phase_ns[1] / n / 1000.0, (double)phase_ns[2] / n / 1000.0,
               (double)phase_ns[3] / n / 1000.0);
    free(samples);
    return 0;
}
