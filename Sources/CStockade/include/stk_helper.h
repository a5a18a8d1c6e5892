#ifndef STK_HELPER_H
#define STK_HELPER_H
/*
 * The spawn helper: a process that does the clones, so the supervisor never
 * forks per run.
 *
 * A clone copies the caller's memory map and page tables and write-protects
 * the caller's pages: a busy, multithreaded supervisor then takes
 * copy-on-write faults and TLB shoot-downs on every thread, per run. A helper
 * is the `stockade-spawn` program executed from a spawner thread
 * (stk_helper_exec), so an init, a copy of it, holds nothing of the
 * supervisor's and is cheap to copy and to tear down; without that binary,
 * helpers are forked from a spawner thread before the supervisor loads anything
 * (stk_helper_start). Either way a helper runs only C: one thread, no Swift.
 * A helper clones with CLONE_PARENT, so each worker's init is
 * still the supervisor's child (the supervisor reaps it and holds its pidfd)
 * but a copy of the helper. A plan travels as one memfd plus its descriptors
 * (SCM_RIGHTS); the answer as the result plus the pidfd, listener and status
 * descriptors.
 */
#include <sys/types.h>
#include "stk_spawn.h"

#pragma clang assume_nonnull begin

/*
 * Forks a helper from the calling thread (it must live as long as the
 * workers: their parent-death signal follows the thread that started the
 * helper). `scrub` is the supervisor's argv area, zeroed in the helper so no
 * init shows it. `netns_ahead`: how many workers' network namespaces the
 * helper keeps made ahead (0 to 4; 0 makes each at its spawn), or
 * STK_NETNS_AHEAD_ONCE: one made as the helper starts, not replaced once used
 * (a process that runs one worker). Returns the socket to the helper and sets
 * *pid, or -1 with errno.
 */
#define STK_NETNS_AHEAD_ONCE 100
int stk_helper_start(void *_Nullable scrub, size_t scrub_len, int netns_ahead, pid_t *_Nonnull pid);

/*
 * Starts a helper by executing the `stockade-spawn` binary open at `helper_fd` (the caller has
 * checked who owns it), instead of forking the caller: the helper, and so every init, then holds
 * nothing of the supervisor's memory, and an init's address space is a small C program's, cheap to
 * copy at the clone and to tear down at its exit. Same contract as stk_helper_start otherwise.
 */
int stk_helper_exec(int helper_fd, int netns_ahead, pid_t *_Nonnull pid);

/* This build's token, 16 hex digits and a NUL: the same in every binary linked from one build's
   objects of the spawn and child path (stk_internal.h, STK_BUILD_STAMP). `stockade` checks the
   `stockade-spawn` it starts by it, and `stockade-server` the `stockade` that executed it. */
void stk_build_token(char out[_Nonnull 17]);

/* main() of the `stockade-spawn` binary: argv is {name, supervisor pid, netns_ahead, build token},
   the socket is descriptor 3. Refuses (status 2) when not started that way, and (status 3, 'B' on
   the socket) when the token is not its own build's; says 'H' and does not return otherwise.
   stk_helper_exec fails with ESTALE for the second, ECHILD when the helper died unheard and
   ETIMEDOUT when it said nothing within 10 s. */
int stk_helper_exec_main(int argc, char *_Nonnull *_Nonnull argv);

/*
 * Spawns `plan` through the helper on `sock`; fills `result` like stk_spawn.
 * A failed setup's child is reaped here. Returns 0 when the helper answered,
 * or -1 with errno when it is gone (result->stage STK_STAGE_HELPER, detail 1
 * if it had already made the child, which is then killed and reaped here,
 * else 0): the caller then stops using it.
 */
int stk_spawn_remote(int sock, const struct stk_plan *plan, struct stk_spawn_result *result);

/* Encodes `plan` as stk_spawn_remote would and decodes it as the helper does, in memory (descriptors
   keep their numbers). Returns 0 and the decoded op and fresh-op counts, or -1 when the helper would
   refuse the message. For tests of the wire format. */
int stk_wire_check(const struct stk_plan *plan, size_t *_Nonnull op_count, size_t *_Nonnull fresh_op_count);

#pragma clang assume_nonnull end
#endif
