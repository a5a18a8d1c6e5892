#ifndef STK_SPAWN_H
#define STK_SPAWN_H
/*
 * The child path: clone3 into fresh namespaces, build the root, drop every
 * privilege, install seccomp, execve. It is C because between clone and exec
 * only async-signal-safe code may run: no malloc, no stdio, no Swift. Swift
 * builds a `stk_plan` with everything the child needs and hands it to a spawn
 * helper (stk_helper.h), which makes the clone.
 */
#include <stddef.h>
#include <stdint.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <linux/filter.h>

#pragma clang assume_nonnull begin

/* One step of building the worker's root, executed in order by the child. */
enum stk_mount_kind {
    STK_OP_MKDIR = 1,     /* mkdir target (mode), chown uid/gid when uid != -1 */
    STK_OP_BIND = 2,      /* attach fd (from stk_clone_tree, required) at target */
    STK_OP_TMPFS = 3,     /* tmpfs at target with data ("size=..,mode=.."), flags; chown */
    STK_OP_PROC = 4,      /* fresh proc at target */
    STK_OP_SYMLINK = 5,   /* symlink target -> source */
    STK_OP_FILE = 6,      /* regular file at target with `length` bytes of `source` (mode) */
    STK_OP_MOVE_FD = 7,   /* attach the detached mount `fd` at target (move_mount) */
    STK_OP_SETATTR = 8,   /* mount_setattr(target, attr) (not recursive), e.g. read-only after populating */
    STK_OP_MASK = 10,     /* if target exists: a directory gets a tmpfs (data, flags), anything else a bind of
                             source then mount_setattr(attr); an absent target is skipped */
    STK_OP_READONLY_IN_PLACE = 11, /* if target exists: bind it onto itself, then mount_setattr(attr) */
};

/* Bind flag: the source is a regular file, so the mount point is a file. */
#define STK_BIND_FILE 0x1u

struct stk_mount_op {
    int kind;
    uint32_t bind_flags;
    const char *_Nullable source;
    const char *_Nullable target;   /* absolute path inside the new root */
    const char *_Nullable data;
    unsigned long flags;            /* MS_* */
    uint64_t attr;                  /* MOUNT_ATTR_* */
    size_t length;
    uint32_t mode;
    int fd;
    int64_t uid;                    /* in-namespace owner, -1 to leave */
    int64_t gid;
};

struct stk_rlimit {
    int resource;
    struct rlimit limit;
};

/* Setup stages the child (or the parent's side of the spawn) can fail in. */
enum stk_stage {
    STK_STAGE_NONE = 0,
    STK_STAGE_PIPE, STK_STAGE_CLONE, STK_STAGE_USERNS_MAP, STK_STAGE_CGROUP, STK_STAGE_SYNC,
    STK_STAGE_IDENTITY, STK_STAGE_CGROUPNS, STK_STAGE_HOSTNAME,
    STK_STAGE_MOUNT_PRIVATE, STK_STAGE_ROOT, STK_STAGE_MOUNTS, STK_STAGE_PIVOT_ROOT,
    STK_STAGE_NETWORK, STK_STAGE_WORKDIR, STK_STAGE_RLIMITS, STK_STAGE_SETSID,
    STK_STAGE_CAPABILITIES, STK_STAGE_CREDENTIALS, STK_STAGE_NO_NEW_PRIVS, STK_STAGE_PARENT_DEATH,
    STK_STAGE_STDIO, STK_STAGE_FDS, STK_STAGE_SECCOMP, STK_STAGE_EXEC,
    STK_STAGE_HELPER,
};

struct stk_plan {
    /* execve: each candidate path is tried in order (PATH resolved by the parent). */
    const char *_Nonnull const *_Nonnull exec_candidates;
    size_t exec_candidate_count;
    char *_Nullable const *_Nonnull argv;
    char *_Nullable const *_Nonnull envp;

    /* Host directory the new root's tmpfs is mounted on, and its mount data. */
    const char *root;
    const char *root_data;
    /* A detached mount (an image's overlay) attached at `root` instead of the tmpfs; -1 for the tmpfs. */
    int root_fd;
    const struct stk_mount_op *_Nullable ops;
    size_t op_count;
    /* The leading ops whose targets lie only in what the child has just made (RootLayout.mountSteps):
       not checked for links. Every later op is (stk_check_target). 0 checks all. */
    size_t fresh_op_count;
    int root_readonly;
    const char *workdir;
    const char *hostname;

    /* Identity: maps written by the parent; the worker's ids inside. */
    const char *uid_map;
    const char *gid_map;
    uint32_t uid;
    uint32_t gid;
    int last_cap;

    /* The worker's stdio (child ends; each >= 3). */
    int stdin_fd, stdout_fd, stderr_fd;

    /* Seccomp: the compiled BPF program; with `notify`, the filter gets a
       user-notification listener, passed to the parent over a socketpair. */
    const struct sock_filter *_Nullable filter;
    unsigned short filter_len;
    int notify;

    const struct stk_rlimit *_Nullable rlimits;
    size_t rlimit_count;

    int loopback_up;
    /* Nonzero: before the child is released, a TCP listener on 127.0.0.1:listen_port
       is made in its network namespace (the egress proxy's), returned as
       result->listen_fd: it exists before any worker code runs. */
    int listen_port;

    /* cgroup v1: fds of the run cgroup's `tasks` files, opened by root, into which the child
       writes "0" (itself) first thing once released: a thread that moves itself does not take the
       kernel's global cgroup_threadgroup_rwsem for writing, so no RCU grace period (often 10 ms
       or more) is waited for on the run's path, as a write of its pid into cgroup.procs would.
       cgroup v2: a cgroup directory fd for CLONE_INTO_CGROUP (-1 if none). */
    const int *_Nullable cgroup_procs_fds;
    size_t cgroup_procs_count;
    int cgroup_dir_fd;

    /* Host uid that creates (and so owns, and is charged for) the worker's
       user namespace; 0 to create it as the caller. */
    uint32_t ns_owner_uid;
};

struct stk_spawn_result {
    pid_t pid;
    int pidfd;
    int notify_fd;   /* seccomp listener, -1 without notify */
    int status_fd;   /* supervisor end of init's status socket (non-blocking): init writes its report
                        (struct stk_init_report_wire) and waits for a byte or end of file before exiting */
    int stage;       /* enum stk_stage, STK_STAGE_NONE on success */
    int error;       /* errno of the failed stage */
    int detail;      /* with STK_STAGE_MOUNTS: the index of the failed step; else -1 */
    int listen_fd;   /* with plan->listen_port: the listener in the worker's network namespace; else -1 */
};

/* What the worker's init writes on status_fd when the main process exits. */
struct stk_init_report_wire {
    int32_t status;   /* wait status of the main process */
    int32_t orphans;  /* processes still alive in the namespace at that moment */
};

#pragma clang assume_nonnull end
#endif
