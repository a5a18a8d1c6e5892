/* Threat class 8, supervisor robustness: status spoofing. These probes do
 * not follow the 0/77 convention: the supervisor's classification of how they
 * end is what is checked (a self-inflicted SIGSYS is `signaled`, not
 * `seccomp`; exit 137 is `exited`, not `oom`). And the runtime's own binary,
 * which must be out of the worker's reach (exe-overwrite, 0/77 as usual). */
#define _GNU_SOURCE
#include "probe_util.h"
#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Dies of a real, kernel-sent SIGSYS: its own seccomp filter traps getppid.
 * (A raised SIGSYS would be ignored when the probe is its pid namespace's
 * init; a forced, synchronous one is not.) */
STK_PROBE(probe_spoof_sigsys) {
    (void)argc; (void)argv;
    stk_report(0, "spoof-sigsys", "trapping getppid in its own seccomp filter (SIGSYS)");
    signal(SIGSYS, SIG_DFL);
    struct sock_filter code[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_getppid, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_TRAP),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {sizeof code / sizeof code[0], code};
    prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) != 0)
        return stk_report(STK_PROBE_ERROR, "spoof-sigsys", "cannot install its own filter");
    syscall(SYS_getppid);
    return stk_report(STK_PROBE_ERROR, "spoof-sigsys", "still alive after SIGSYS");
}

STK_PROBE(probe_spoof_oom) {
    (void)argc; (void)argv;
    stk_report(0, "spoof-oom", "exiting with 137 (what a SIGKILLed shell reports)");
    return 137;
}

/* CVE-2019-5736: the runtime's binary reached through /proc/self/exe or
 * /proc/1/exe for writing (runc's attacker reopened it O_WRONLY once runc had
 * exited). Only asked (stk_writable: the magic link's ptrace check, the
 * mount, the mode), never opened: unsandboxed, /proc/1 is the host's init,
 * whose binary must not even see an open for writing. A running binary's
 * ETXTBSY is no defence: it lasts only until the binary exits. */
STK_PROBE(probe_exe_overwrite) {
    if (argc < 1) return stk_report(STK_PROBE_USAGE, "exe-overwrite", "usage: exe-overwrite PATH...");
    char seen[512] = "";
    int reachable = 0, present = 0;
    for (int i = 0; i < argc; i++) {
        int err = stk_writable(argv[i]);
        const char *state = err == 0 || err == ETXTBSY ? "writable" : stk_errno_name(err);
        if (err == 0 || err == ETXTBSY) reachable++;
        if (err != ENOENT) present++;
        size_t len = strlen(seen);
        snprintf(seen + len, sizeof seen - len, "%s%s=%s", len ? " " : "", argv[i], state);
    }
    if (present == 0) return stk_report(STK_PROBE_ERROR, "exe-overwrite", "none present: %s", seen);
    return stk_report(reachable ? STK_PROBE_SUCCEEDED : STK_PROBE_BLOCKED, "exe-overwrite", "%s", seen);
}
