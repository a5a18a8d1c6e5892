#define _GNU_SOURCE
#include "probe_util.h"
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <sys/syscall.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

int stk_report(int code, const char *name, const char *fmt, ...) {
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    /* ASCII only: whatever a path or a kernel string holds. */
    for (char *p = line; *p; p++)
        if ((unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e) *p = '?';
    printf("%s: %s\n", name, line);
    fflush(stdout);
    return code;
}

const char *stk_errno_name(int err) {
    const char *n = strerrorname_np(err);
    return n ? n : "E?";
}

int stk_verdict_call(const char *name, const char *what, long rc, int err, const int *cannot_tell) {
    if (rc >= 0) return stk_report(STK_PROBE_SUCCEEDED, name, "%s succeeded (%ld)", what, rc);
    if (err == EPERM || err == EACCES)
        return stk_report(STK_PROBE_BLOCKED, name, "%s: errno %d (%s)", what, err, stk_errno_name(err));
    for (const int *c = cannot_tell; c && *c; c++)
        if (*c == err)
            return stk_report(STK_PROBE_ERROR, name, "%s: errno %d (%s): cannot tell", what, err, stk_errno_name(err));
    return stk_report(STK_PROBE_SUCCEEDED, name, "%s reached the kernel: errno %d (%s)", what, err, stk_errno_name(err));
}

int stk_temp_dir(char *out, size_t size) {
    const char *bases[] = {getenv("TMPDIR"), "/tmp", "."};
    for (size_t i = 0; i < sizeof bases / sizeof bases[0]; i++) {
        if (!bases[i] || !*bases[i]) continue;
        if ((size_t)snprintf(out, size, "%s/stockade-probe-XXXXXX", bases[i]) >= size) continue;
        if (mkdtemp(out)) return 0;
    }
    return -1;
}

long stk_arg_long(int argc, char **argv, int index, long min, long max) {
    if (index >= argc) return -1;
    char *end = NULL;
    errno = 0;
    long v = strtol(argv[index], &end, 10);
    if (errno || end == argv[index] || *end || v < min || v > max) return -1;
    return v;
}

int stk_sleeping_child(void) {
    int parent = getpid();
    int pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(0);
        for (;;) pause();
    }
    return pid;
}

void stk_kill_child(int pid) {
    if (pid <= 0) return;
    kill(pid, SIGKILL);
    while (waitpid(pid, NULL, __WALL) < 0 && errno == EINTR) {}
}

int stk_writable(const char *path) {
    return faccessat(AT_FDCWD, path, W_OK, AT_EACCESS) == 0 ? 0 : errno;
}

int stk_has_sys_admin(void) {
    struct __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof data);
    if (syscall(SYS_capget, &header, data) != 0) return 0;
    return (data[CAP_SYS_ADMIN / 32].effective >> (CAP_SYS_ADMIN % 32)) & 1;
}
