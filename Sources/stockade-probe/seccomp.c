/* Threat class 2, seccomp: calls the filter must refuse, each made harmless
 * (a resource that is released at once, or bad arguments: bubblewrap's
 * try-syscall trick, EFAULT/EBADF/ENOENT when allowed, EPERM when refused). */
#define _GNU_SOURCE
#include "probe_util.h"
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/perf_event.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/personality.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define KEY_SPEC_PROCESS_KEYRING (-2)
#define KEY_SPEC_SESSION_KEYRING (-3)
#define KEYCTL_GET_KEYRING_ID 0
#define KEYCTL_REVOKE 3
#define KEYCTL_UNLINK 9

/* Adds a key to the process keyring (gone when the process exits), then revokes and unlinks it. */
STK_PROBE(probe_add_key) {
    (void)argc; (void)argv;
    long id = syscall(SYS_add_key, "user", "stockade-probe", "x", 1UL, KEY_SPEC_PROCESS_KEYRING);
    int err = errno;
    if (id >= 0) {
        syscall(SYS_keyctl, KEYCTL_REVOKE, id);
        syscall(SYS_keyctl, KEYCTL_UNLINK, id, KEY_SPEC_PROCESS_KEYRING);
    }
    return stk_verdict_call("add-key", "add_key(user)", id, err, NULL);
}

STK_PROBE(probe_keyctl) {
    (void)argc; (void)argv;
    long id = syscall(SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0L);
    return stk_verdict_call("keyctl", "keyctl(GET_KEYRING_ID, session)", id, errno, NULL);
}

/* i386 keyctl(KEYCTL_GET_KEYRING_ID, session, 0) through `int $0x80` from this
 * 64-bit binary, in a child: a kernel without ia32 emulation faults it. The
 * filter must treat the foreign architecture as fatal (outcome `seccomp`). */
STK_PROBE(probe_keyctl_int80) {
    (void)argc; (void)argv;
    int fds[2];
    if (pipe(fds) != 0) return stk_report(STK_PROBE_ERROR, "keyctl-int80", "pipe: errno %d", errno);
    int pid = fork();
    if (pid == 0) {
        long ret;
        __asm__ volatile("int $0x80"
                         : "=a"(ret)
                         : "a"(288L /* i386 keyctl */), "b"((long)KEYCTL_GET_KEYRING_ID), "c"((long)KEY_SPEC_SESSION_KEYRING), "d"(0L)
                         : "memory", "r8", "r9", "r10", "r11");
        (void)!write(fds[1], &ret, sizeof ret);
        _exit(0);
    }
    close(fds[1]);
    long ret = 0;
    ssize_t n = pid > 0 ? read(fds[0], &ret, sizeof ret) : -1;
    int status = 0;
    if (pid > 0) waitpid(pid, &status, 0);
    close(fds[0]);
    if (n != (ssize_t)sizeof ret) {
        if (pid > 0 && WIFSIGNALED(status))
            return stk_report(STK_PROBE_ERROR, "keyctl-int80", "int $0x80 killed the child with signal %d: no ia32 emulation", WTERMSIG(status));
        return stk_report(STK_PROBE_ERROR, "keyctl-int80", "the child did not report");
    }
    /* The i386 return value is in eax: a negative errno as a 32-bit value. */
    int r = (int)ret;
    if (r == -ENOSYS) return stk_report(STK_PROBE_ERROR, "keyctl-int80", "int $0x80 keyctl: ENOSYS (no ia32 emulation)");
    return stk_verdict_call("keyctl-int80", "int $0x80 keyctl(GET_KEYRING_ID)", r < 0 ? -1 : r, r < 0 ? -r : 0, NULL);
}

/* getpid through the x32 ABI (syscall number | __X32_SYSCALL_BIT). */
STK_PROBE(probe_x32_getpid) {
    (void)argc; (void)argv;
    long rc = syscall(0x40000000L | 39L);
    int err = errno;
    if (rc < 0 && err == ENOSYS) return stk_report(STK_PROBE_ERROR, "x32-getpid", "x32 getpid: ENOSYS (x32 ABI disabled in this kernel): cannot tell");
    return stk_verdict_call("x32-getpid", "x32 getpid", rc, err, NULL);
}

STK_PROBE(probe_io_uring_setup) {
    (void)argc; (void)argv;
    unsigned char params[120];  /* struct io_uring_params */
    memset(params, 0, sizeof params);
    long fd = syscall(425 /* io_uring_setup */, 1U, params);
    int err = errno;
    if (fd >= 0) close((int)fd);
    if (fd < 0 && err == ENOSYS) return stk_report(STK_PROBE_BLOCKED, "io-uring-setup", "io_uring_setup: errno %d (ENOSYS)", err);
    return stk_verdict_call("io-uring-setup", "io_uring_setup", fd, err, NULL);
}

/* A Linux AIO context of one event, destroyed at once. Every context comes
 * from the host-wide fs.aio-max-nr pool, which no cgroup bounds. */
STK_PROBE(probe_io_setup) {
    (void)argc; (void)argv;
    unsigned long context = 0;  /* aio_context_t */
    long rc = syscall(SYS_io_setup, 1U, &context);
    int err = errno;
    if (rc == 0) (void)syscall(SYS_io_destroy, context);
    if (rc < 0 && err == ENOSYS) return stk_report(STK_PROBE_BLOCKED, "io-setup", "io_setup: errno %d (ENOSYS)", err);
    return stk_verdict_call("io-setup", "io_setup", rc, err, NULL);
}

/* UFFD_USER_MODE_ONLY lets an unprivileged caller succeed, so only the filter can refuse it. */
STK_PROBE(probe_userfaultfd) {
    (void)argc; (void)argv;
    long fd = syscall(SYS_userfaultfd, O_CLOEXEC | 1 /* UFFD_USER_MODE_ONLY */);
    if (fd < 0 && errno == EINVAL) fd = syscall(SYS_userfaultfd, O_CLOEXEC);
    int err = errno;
    if (fd >= 0) close((int)fd);
    return stk_verdict_call("userfaultfd", "userfaultfd", fd, err, NULL);
}

/* A software counter on this process, user space only: allowed to anyone at perf_event_paranoid <= 2. */
STK_PROBE(probe_perf_event_open) {
    (void)argc; (void)argv;
    struct perf_event_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.size = sizeof attr;
    attr.type = PERF_TYPE_SOFTWARE;
    attr.config = PERF_COUNT_SW_TASK_CLOCK;
    attr.disabled = 1;
    attr.exclude_kernel = 1;
    attr.exclude_hv = 1;
    long fd = syscall(SYS_perf_event_open, &attr, 0, -1, -1, 0UL);
    int err = errno;
    if (fd >= 0) close((int)fd);
    return stk_verdict_call("perf-event-open", "perf_event_open(task clock, self)", fd, err, NULL);
}

/* A one-element array map, closed at once. */
STK_PROBE(probe_bpf) {
    (void)argc; (void)argv;
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.map_type = BPF_MAP_TYPE_ARRAY;
    attr.key_size = 4;
    attr.value_size = 4;
    attr.max_entries = 1;
    long fd = syscall(SYS_bpf, BPF_MAP_CREATE, &attr, sizeof attr);
    int err = errno;
    if (fd >= 0) close((int)fd);
    return stk_verdict_call("bpf", "bpf(BPF_MAP_CREATE array)", fd, err, NULL);
}

STK_PROBE(probe_ptrace) {
    (void)argc; (void)argv;
    int child = stk_sleeping_child();
    if (child < 0) return stk_report(STK_PROBE_ERROR, "ptrace", "fork: errno %d (%s)", errno, stk_errno_name(errno));
    long rc = ptrace(PTRACE_ATTACH, child, NULL, NULL);
    int err = errno;
    if (rc == 0) {
        waitpid(child, NULL, __WALL);
        ptrace(PTRACE_DETACH, child, NULL, NULL);
    }
    stk_kill_child(child);
    return stk_verdict_call("ptrace", "ptrace(PTRACE_ATTACH, own child)", rc, err, NULL);
}

static volatile uint64_t vm_secret = 0x5354434b50524f42ULL;

STK_PROBE(probe_process_vm_readv) {
    (void)argc; (void)argv;
    int child = stk_sleeping_child();
    if (child < 0) return stk_report(STK_PROBE_ERROR, "process-vm-readv", "fork: errno %d (%s)", errno, stk_errno_name(errno));
    uint64_t got = 0;
    struct iovec local = {&got, sizeof got}, remote = {(void *)&vm_secret, sizeof got};
    long rc = process_vm_readv(child, &local, 1, &remote, 1, 0);
    int err = errno;
    stk_kill_child(child);
    if (rc == (long)sizeof got && got != vm_secret)
        return stk_report(STK_PROBE_ERROR, "process-vm-readv", "read the wrong bytes");
    return stk_verdict_call("process-vm-readv", "process_vm_readv(own child)", rc, err, NULL);
}

STK_PROBE(probe_open_by_handle_at) {
    (void)argc; (void)argv;
    struct { struct file_handle h; unsigned char bytes[128]; } fh;
    memset(&fh, 0, sizeof fh);
    fh.h.handle_bytes = 128;
    int mount_id = 0;
    int root = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    long rc;
    if (root >= 0 && name_to_handle_at(AT_FDCWD, "/", &fh.h, &mount_id, 0) == 0) {
        rc = open_by_handle_at(root, &fh.h, O_RDONLY | O_CLOEXEC);
    } else {
        /* No handle for this root: bad arguments instead (EBADF when the call is allowed). */
        rc = syscall(SYS_open_by_handle_at, -1, NULL, 0);
    }
    int err = errno;
    if (rc >= 0) close((int)rc);
    if (root >= 0) close(root);
    return stk_verdict_call("open-by-handle-at", "open_by_handle_at(/)", rc, err, NULL);
}

/* Bad arguments: ENOEXEC/EFAULT/EBADF mean the call was allowed; nothing loads. */
STK_PROBE(probe_init_module) {
    (void)argc; (void)argv;
    long rc = syscall(SYS_init_module, NULL, 0UL, "");
    int err = errno;
    if (rc < 0 && err == ENOSYS) {
        rc = syscall(SYS_finit_module, -1, "", 0);
        err = errno;
    }
    if (rc < 0 && err == ENOSYS) return stk_report(STK_PROBE_ERROR, "init-module", "init_module: ENOSYS (kernel without module support): cannot tell");
    return stk_verdict_call("init-module", "init_module(bad arguments)", rc, err, NULL);
}

/* A NULL time: EFAULT when the call is allowed; the clock never changes. */
STK_PROBE(probe_clock_settime) {
    (void)argc; (void)argv;
    long rc = syscall(SYS_clock_settime, CLOCK_REALTIME, NULL);
    return stk_verdict_call("clock-settime", "clock_settime(REALTIME, NULL)", rc, errno, NULL);
}

STK_PROBE(probe_personality) {
    (void)argc; (void)argv;
    int current = personality(0xffffffff);
    long rc = personality((unsigned long)(current | ADDR_NO_RANDOMIZE));
    int err = errno;
    if (rc >= 0) personality((unsigned long)current);
    return stk_verdict_call("personality", "personality(ADDR_NO_RANDOMIZE)", rc, err, NULL);
}

static int try_socket(const char *name, const char *what, int family, int type, int protocol) {
    long fd = socket(family, type | SOCK_CLOEXEC, protocol);
    int err = errno;
    if (fd >= 0) close((int)fd);
    return stk_verdict_call(name, what, fd, err, (const int[]){EAFNOSUPPORT, EPROTONOSUPPORT, ESOCKTNOSUPPORT, 0});
}

STK_PROBE(probe_socket_vsock) { (void)argc; (void)argv; return try_socket("socket-vsock", "socket(AF_VSOCK)", 40, SOCK_STREAM, 0); }
STK_PROBE(probe_socket_packet) { (void)argc; (void)argv; return try_socket("socket-packet", "socket(AF_PACKET, SOCK_RAW, 0)", 17, SOCK_RAW, 0); }
STK_PROBE(probe_socket_alg) { (void)argc; (void)argv; return try_socket("socket-alg", "socket(AF_ALG)", 38, SOCK_SEQPACKET, 0); }
STK_PROBE(probe_netlink_audit) { (void)argc; (void)argv; return try_socket("netlink-audit", "socket(AF_NETLINK, NETLINK_AUDIT)", AF_NETLINK, SOCK_RAW, 9); }
