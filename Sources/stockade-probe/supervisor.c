/* Threat class 8, supervisor robustness: status spoofing. These probes do
 * not follow the 0/77 convention: the supervisor's classification of how they
 * end is what is checked (a self-raised SIGSYS is `signaled`, not `seccomp`;
 * exit 137 is `exited`, not `oom`). */
#define _GNU_SOURCE
#include "probe_util.h"
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

STK_PROBE(probe_spoof_sigsys) {
    (void)argc; (void)argv;
    stk_report(0, "spoof-sigsys", "raising SIGSYS on itself");
    signal(SIGSYS, SIG_DFL);
    raise(SIGSYS);
    return STK_PROBE_ERROR;
}

STK_PROBE(probe_spoof_oom) {
    (void)argc; (void)argv;
    stk_report(0, "spoof-oom", "exiting with 137 (what a SIGKILLed shell reports)");
    return 137;
}
