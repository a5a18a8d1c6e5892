/* Threat class 8, supervisor robustness: status spoofing. These probes do
 * not follow the 0/77 convention: the supervisor's classification of how they
 * end is what is checked (a self-inflicted SIGSYS is `signaled`, not
 * `seccomp`; exit 137 is `exited`, not `oom`). */
#define _GNU_SOURCE
#include "probe_util.h"
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <signal.h>
#include <stdio.h>
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
