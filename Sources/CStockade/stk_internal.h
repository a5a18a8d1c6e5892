#ifndef STK_INTERNAL_H
#define STK_INTERNAL_H
/* Shared by the C files of this target only (not part of the module Swift sees). */
#include <sys/types.h>
#include "stk_spawn.h"

/*
 * When this file was compiled: one stamp per source file of the spawn and child path, folded into
 * stk_build_token(). `stockade` and `stockade-spawn` link the same objects of one build, so their
 * tokens match; a `stockade-spawn` left from another build (an upgrade that replaced `stockade`
 * alone, a partial rebuild) carries other stamps and refuses to serve.
 */
#define STK_BUILD_STAMP(name) const char stk_stamp_##name[] = __DATE__ " " __TIME__;
extern const char stk_stamp_child[], stk_stamp_spawn[], stk_stamp_helper[], stk_stamp_fdpass[], stk_stamp_mounts[],
    stk_stamp_net[];

#pragma clang assume_nonnull begin

/* SCM_MAX_FD: the most descriptors one message can carry. */
#define STK_MAX_PASSED_FDS 253
/* A spawn plan's descriptors: one of the message's goes to the memfd. */
#define STK_WIRE_MAX_FDS 250

/* sendmsg of `len` bytes with `nfds` descriptors (SCM_RIGHTS), MSG_NOSIGNAL, retried on EINTR.
   Async-signal-safe: the worker uses it to hand over its seccomp listener. */
ssize_t stk_send_fds(int sock, const void *data, size_t len, const int *fds, int nfds);

/* Receives one message into `data`; returns its length (0: the peer closed) or -1. Up to `max`
   descriptors land in fds, their count in nfds (close-on-exec); extra ones are closed, and truncated control data
   closes them all and fails with EPROTO. */
ssize_t stk_receive_fds(int sock, void *data, size_t len, int *fds, int *nfds, int max);

/*
 * Spawns the worker described by `plan`; only the spawn helper calls it
 * (stk_helper.h). The clone has CLONE_PARENT: the child's parent is the
 * helper's parent, the supervisor, which reaps it. Returns 0 once the worker
 * has called execve (result->pid, pidfd, notify_fd, status_fd set), or -1 with
 * result->stage and result->error naming what failed; the child is then
 * killed, not reaped, and result->pid and result->pidfd stay set for the
 * supervisor to reap. `started` learns the child's pid and pidfd as soon as it
 * exists (before it is released), so the supervisor can kill and reap it even
 * if the helper dies before answering. `parent_pidfd` is a pidfd of the
 * supervisor: init checks it once its parent-death signal is armed again.
 */
typedef void (*stk_started_fn)(void *_Nullable context, pid_t pid, int pidfd);
int stk_spawn(const struct stk_plan *plan, struct stk_spawn_result *result, int parent_pidfd,
              stk_started_fn _Nullable started, void *_Nullable context);

/* A result that says nothing happened yet: no process, no descriptors, stage none. */
void stk_result_init(struct stk_spawn_result *result);


/* How long the worker may take from clone to execve. */
#define STK_EXEC_TIMEOUT_MS 15000

struct stk_failure {
    int stage;
    int error;
    int detail;
};

/* write(2) until all of `len` is written, retried on EINTR. Async-signal-safe. */
int stk_write_all(int fd, const void *data, size_t len);

/* The child of the spawn's clone3 (stk_child.c): becomes init of the worker's pid namespace,
   then forks the worker. Never returns. */
__attribute__((noreturn)) void stk_child(const struct stk_plan *plan, int errfd, int syncfd, int notify_sock, int statusfd,
                                         int parent_pidfd);

#pragma clang assume_nonnull end
#endif
