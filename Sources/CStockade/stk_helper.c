/*
 * The spawn helper (see stk_helper.h): the plan's wire format, the client
 * the supervisor's spawner threads use, and the helper's serving loop.
 */
#define _GNU_SOURCE
#include "stk_helper.h"
#include "stk_internal.h"
#include "stk_net.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

STK_BUILD_STAMP(helper)

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

#define STK_HELPER_FD 3
#define STK_WIRE_MAGIC 0x53544b31u /* "STK1" */
#define STK_WIRE_NULL 0xffffffffu

__attribute__((noreturn)) static void stk_helper_main(int sock, pid_t parent, void *scrub, size_t scrub_len, int netns_ahead);

/* ---------- encoding (supervisor side) ---------- */

struct stk_out {
    uint8_t *data;
    size_t len, cap;
    int failed;
    int fds[STK_WIRE_MAX_FDS];
    int nfds;
};

static void out_put(struct stk_out *o, const void *p, size_t n) {
    if (o->failed) return;
    if (o->len + n > o->cap) {
        size_t cap = o->cap ? o->cap : 4096;
        while (cap < o->len + n) cap *= 2;
        uint8_t *grown = realloc(o->data, cap);
        if (grown == NULL) {
            o->failed = ENOMEM;
            return;
        }
        o->data = grown;
        o->cap = cap;
    }
    memcpy(o->data + o->len, p, n);
    o->len += n;
}

static void out_u32(struct stk_out *o, uint32_t v) { out_put(o, &v, sizeof v); }
static void out_u64(struct stk_out *o, uint64_t v) { out_put(o, &v, sizeof v); }

/* Bytes with a length, NUL-terminated on the wire so a decoded pointer is a C string. */
static void out_bytes(struct stk_out *o, const void *p, size_t n) {
    if (p == NULL) {
        out_u32(o, STK_WIRE_NULL);
        return;
    }
    if (n >= STK_WIRE_NULL) {
        o->failed = E2BIG;
        return;
    }
    out_u32(o, (uint32_t)n);
    out_put(o, p, n);
    out_put(o, "", 1);
}

static void out_str(struct stk_out *o, const char *s) { out_bytes(o, s, s ? strlen(s) : 0); }

/* A descriptor travels as its index in the SCM_RIGHTS array; -1 stays -1. */
static void out_fd(struct stk_out *o, int fd) {
    if (fd < 0) {
        out_u32(o, STK_WIRE_NULL);
        return;
    }
    if (o->nfds == STK_WIRE_MAX_FDS) {
        o->failed = EMFILE;
        return;
    }
    o->fds[o->nfds] = fd;
    out_u32(o, (uint32_t)o->nfds++);
}

static size_t stk_count_strings(char *const *v) {
    size_t n = 0;
    while (v[n] != NULL) n++;
    return n;
}

static void stk_encode(struct stk_out *o, const struct stk_plan *plan) {
    out_u32(o, STK_WIRE_MAGIC);
    out_u32(o, (uint32_t)plan->exec_candidate_count);
    for (size_t i = 0; i < plan->exec_candidate_count; i++) out_str(o, plan->exec_candidates[i]);
    size_t argc = stk_count_strings(plan->argv);
    out_u32(o, (uint32_t)argc);
    for (size_t i = 0; i < argc; i++) out_str(o, plan->argv[i]);
    size_t envc = stk_count_strings(plan->envp);
    out_u32(o, (uint32_t)envc);
    for (size_t i = 0; i < envc; i++) out_str(o, plan->envp[i]);
    out_str(o, plan->root);
    out_str(o, plan->root_data);
    out_fd(o, plan->root_fd);
    out_u32(o, (uint32_t)plan->root_readonly);
    out_str(o, plan->workdir);
    out_str(o, plan->hostname);
    out_str(o, plan->uid_map);
    out_str(o, plan->gid_map);
    out_u32(o, plan->uid);
    out_u32(o, plan->gid);
    out_u32(o, (uint32_t)plan->last_cap);
    out_fd(o, plan->stdin_fd);
    out_fd(o, plan->stdout_fd);
    out_fd(o, plan->stderr_fd);
    out_bytes(o, plan->filter, plan->filter ? (size_t)plan->filter_len * sizeof(struct sock_filter) : 0);
    out_u32(o, plan->filter_len);
    out_u32(o, (uint32_t)plan->notify);
    out_u32(o, (uint32_t)plan->loopback_up);
    out_u32(o, (uint32_t)plan->listen_port);
    out_fd(o, plan->cgroup_dir_fd);
    out_u32(o, plan->ns_owner_uid);
    out_u32(o, (uint32_t)plan->op_count);
    for (size_t i = 0; i < plan->op_count; i++) {
        const struct stk_mount_op *op = &plan->ops[i];
        out_u32(o, (uint32_t)op->kind);
        out_u32(o, op->bind_flags);
        /* A file's content is `length` bytes; every other source is a string. */
        if (op->kind == STK_OP_FILE) out_bytes(o, op->source, op->length);
        else out_str(o, op->source);
        out_str(o, op->target);
        out_str(o, op->data);
        out_u64(o, op->flags);
        out_u64(o, op->attr);
        out_u64(o, op->length);
        out_u32(o, op->mode);
        out_fd(o, op->fd);
        out_u64(o, (uint64_t)op->uid);
        out_u64(o, (uint64_t)op->gid);
    }
    out_u32(o, (uint32_t)plan->fresh_op_count);
    out_u32(o, (uint32_t)plan->rlimit_count);
    for (size_t i = 0; i < plan->rlimit_count; i++) {
        out_u32(o, (uint32_t)plan->rlimits[i].resource);
        out_u64(o, plan->rlimits[i].limit.rlim_cur);
        out_u64(o, plan->rlimits[i].limit.rlim_max);
    }
    out_u32(o, (uint32_t)plan->cgroup_procs_count);
    for (size_t i = 0; i < plan->cgroup_procs_count; i++) out_fd(o, plan->cgroup_procs_fds[i]);
}

/* ---------- decoding (helper side) ---------- */

struct stk_in {
    const uint8_t *data;
    size_t len, pos;
    int failed;
    const int *fds;
    int nfds;
};

static const void *in_take(struct stk_in *in, size_t n) {
    if (in->failed || n > in->len - in->pos) {
        in->failed = 1;
        return NULL;
    }
    const void *p = in->data + in->pos;
    in->pos += n;
    return p;
}

static uint32_t in_u32(struct stk_in *in) {
    uint32_t v = 0;
    const void *p = in_take(in, sizeof v);
    if (p) memcpy(&v, p, sizeof v);
    return v;
}

static uint64_t in_u64(struct stk_in *in) {
    uint64_t v = 0;
    const void *p = in_take(in, sizeof v);
    if (p) memcpy(&v, p, sizeof v);
    return v;
}

static const char *in_bytes(struct stk_in *in, size_t *length) {
    uint32_t n = in_u32(in);
    if (in->failed || n == STK_WIRE_NULL) {
        if (length) *length = 0;
        return NULL;
    }
    const char *p = in_take(in, (size_t)n + 1);
    if (p == NULL || p[n] != '\0') {
        in->failed = 1;
        return NULL;
    }
    if (length) *length = n;
    return p;
}

static const char *in_str(struct stk_in *in) {
    const char *s = in_bytes(in, NULL);
    return s ? s : "";
}

static int in_fd(struct stk_in *in) {
    uint32_t i = in_u32(in);
    if (i == STK_WIRE_NULL) return -1;
    if ((int64_t)i >= in->nfds) {
        in->failed = 1;
        return -1;
    }
    return in->fds[i];
}

/* Every array of a decoded plan, freed together. */
struct stk_decoded {
    const char **candidates;
    char **argv;
    char **envp;
    struct stk_mount_op *ops;
    struct stk_rlimit *rlimits;
    int *procs;
};

static void stk_decoded_free(struct stk_decoded *d) {
    free(d->candidates);
    free(d->argv);
    free(d->envp);
    free(d->ops);
    free(d->rlimits);
    free(d->procs);
}

/* A count that at least that many 4-byte fields could follow (bounds allocations by the message size). */
static size_t in_count(struct stk_in *in) {
    uint32_t n = in_u32(in);
    if ((size_t)n > (in->len - in->pos) / 4) {
        in->failed = 1;
        return 0;
    }
    return n;
}

static char **in_string_vector(struct stk_in *in, size_t n) {
    char **v = calloc(n + 1, sizeof *v);
    if (v == NULL) {
        in->failed = 1;
        return NULL;
    }
    for (size_t i = 0; i < n; i++) v[i] = (char *)in_str(in);
    return v;
}

static int stk_decode(struct stk_in *in, struct stk_plan *plan, struct stk_decoded *d) {
    memset(plan, 0, sizeof *plan);
    memset(d, 0, sizeof *d);
    if (in_u32(in) != STK_WIRE_MAGIC) return -1;
    size_t n = in_count(in);
    d->candidates = (const char **)in_string_vector(in, n);
    d->argv = in_string_vector(in, in_count(in));
    d->envp = in_string_vector(in, in_count(in));
    if (in->failed) return -1;
    plan->exec_candidates = d->candidates;
    plan->exec_candidate_count = n;
    plan->argv = d->argv;
    plan->envp = d->envp;
    plan->root = in_str(in);
    plan->root_data = in_str(in);
    plan->root_fd = in_fd(in);
    plan->root_readonly = (int)in_u32(in);
    plan->workdir = in_str(in);
    plan->hostname = in_str(in);
    plan->uid_map = in_str(in);
    plan->gid_map = in_str(in);
    plan->uid = in_u32(in);
    plan->gid = in_u32(in);
    plan->last_cap = (int)in_u32(in);
    plan->stdin_fd = in_fd(in);
    plan->stdout_fd = in_fd(in);
    plan->stderr_fd = in_fd(in);
    size_t filter_bytes = 0;
    plan->filter = (const struct sock_filter *)in_bytes(in, &filter_bytes);
    plan->filter_len = (unsigned short)in_u32(in);
    if (plan->filter != NULL && filter_bytes != (size_t)plan->filter_len * sizeof(struct sock_filter)) return -1;
    plan->notify = (int)in_u32(in);
    plan->loopback_up = (int)in_u32(in);
    plan->listen_port = (int)in_u32(in);
    plan->cgroup_dir_fd = in_fd(in);
    plan->ns_owner_uid = in_u32(in);
    size_t ops = in_count(in);
    d->ops = calloc(ops ? ops : 1, sizeof *d->ops);
    if (d->ops == NULL) return -1;
    for (size_t i = 0; i < ops && !in->failed; i++) {
        struct stk_mount_op *op = &d->ops[i];
        op->kind = (int)in_u32(in);
        op->bind_flags = in_u32(in);
        size_t source_length = 0;
        op->source = in_bytes(in, &source_length);
        op->target = in_bytes(in, NULL);
        op->data = in_bytes(in, NULL);
        op->flags = (unsigned long)in_u64(in);
        op->attr = in_u64(in);
        op->length = (size_t)in_u64(in);
        op->mode = in_u32(in);
        op->fd = in_fd(in);
        op->uid = (int64_t)in_u64(in);
        op->gid = (int64_t)in_u64(in);
        if (op->kind == STK_OP_FILE && op->source != NULL && op->length != source_length) in->failed = 1;
    }
    plan->ops = d->ops;
    plan->op_count = ops;
    plan->fresh_op_count = in_u32(in);
    if (plan->fresh_op_count > ops) return -1;
    size_t limits = in_count(in);
    d->rlimits = calloc(limits ? limits : 1, sizeof *d->rlimits);
    if (d->rlimits == NULL) return -1;
    for (size_t i = 0; i < limits && !in->failed; i++) {
        d->rlimits[i].resource = (int)in_u32(in);
        d->rlimits[i].limit.rlim_cur = in_u64(in);
        d->rlimits[i].limit.rlim_max = in_u64(in);
    }
    plan->rlimits = d->rlimits;
    plan->rlimit_count = limits;
    size_t procs = in_count(in);
    d->procs = calloc(procs ? procs : 1, sizeof *d->procs);
    if (d->procs == NULL) return -1;
    for (size_t i = 0; i < procs && !in->failed; i++) d->procs[i] = in_fd(in);
    plan->cgroup_procs_fds = d->procs;
    plan->cgroup_procs_count = procs;
    return in->failed || in->pos != in->len ? -1 : 0;
}

/* ---------- messages ---------- */

/* 'S' (started: the child exists, its pidfd attached) comes first when the
   clone succeeded; 'R' (the result, with the listener and status fds) ends a spawn. */
struct stk_wire_result {
    int32_t type;
    int32_t pid, stage, error, detail;
    int32_t has_pidfd, has_notify, has_status, has_listen;
};

/* ---------- client (supervisor side) ---------- */

int stk_helper_start(void *scrub, size_t scrub_len, int netns_ahead, pid_t *pid) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) return -1;
    pid_t parent = getpid();
    /* glibc's fork: it leaves malloc usable in the child, which the helper needs (the decoded plan). */
    pid_t child = fork();
    if (child < 0) {
        int err = errno;
        close(sv[0]);
        close(sv[1]);
        errno = err;
        return -1;
    }
    if (child == 0) stk_helper_main(sv[1], parent, scrub, scrub_len, netns_ahead);
    close(sv[1]);
    *pid = child;
    return sv[0];
}

/* This build's token (see STK_BUILD_STAMP): 16 hex digits of FNV-1a over the stamps. */
void stk_build_token(char out[_Nonnull 17]) {
    const char *stamps[] = {stk_stamp_child, stk_stamp_spawn, stk_stamp_helper, stk_stamp_fdpass, stk_stamp_mounts, stk_stamp_net};
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < sizeof stamps / sizeof stamps[0]; i++)
        for (const char *c = stamps[i]; *c; c++) h = (h ^ (uint8_t)*c) * 0x100000001b3ull;
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < 16; i++) out[i] = hex[(h >> (60 - 4 * i)) & 0xf];
    out[16] = 0;
}

/* The helper's first word on its socket: 'H' when it serves, 'B' when it is from another build. */
#define STK_HELLO_OK 'H'
#define STK_HELLO_OTHER_BUILD 'B'
#define STK_HELLO_TIMEOUT_SECONDS 10

int stk_helper_exec(int helper_fd, int netns_ahead, pid_t *pid) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) return -1;
    /* Executed through its descriptor (opened and checked by the caller), at a number above the
       helper's socket's, so the dup2 to STK_HELPER_FD cannot replace it. Close-on-exec: the kernel
       opens /proc/self/fd/N before it closes those. */
    int exe = fcntl(helper_fd, F_DUPFD_CLOEXEC, STK_HELPER_FD + 8);
    char path[40], parent[24], ahead[24], token[17];
    stk_build_token(token);
    int err = 0;
    posix_spawn_file_actions_t actions;
    posix_spawnattr_t attr;
    int have_actions = 0, have_attr = 0;
    if (exe < 0) { err = errno; goto done; }
    snprintf(path, sizeof path, "/proc/self/fd/%d", exe);
    snprintf(parent, sizeof parent, "%d", (int)getpid());
    snprintf(ahead, sizeof ahead, "%d", netns_ahead);
    if ((err = posix_spawn_file_actions_init(&actions)) != 0) goto done;
    have_actions = 1;
    if ((err = posix_spawn_file_actions_adddup2(&actions, sv[1], STK_HELPER_FD)) != 0) goto done;
    if ((err = posix_spawnattr_init(&attr)) != 0) goto done;
    have_attr = 1;
    /* Default dispositions, and every signal held until the helper has chosen its own (it then
       ignores what is the supervisor's to handle, and unblocks). */
    sigset_t all;
    sigfillset(&all);
    /* A process group of its own: a signal to the supervisor's group (a terminal's Ctrl-C or Ctrl-Z,
       `kill -- -PGID`) does not reach the helpers, which die with the supervisor's thread instead. */
    if ((err = posix_spawnattr_setsigdefault(&attr, &all)) != 0 || (err = posix_spawnattr_setsigmask(&attr, &all)) != 0 ||
        (err = posix_spawnattr_setpgroup(&attr, 0)) != 0 ||
        (err = posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETPGROUP)) != 0)
        goto done;
    /* No environment: nothing of the supervisor's reaches the helper, and so no init. */
    char *const argv[] = {"stockade-spawn", parent, ahead, token, NULL};
    char *const envp[] = {NULL};
    err = posix_spawn(pid, path, &actions, &attr, argv, envp);
    if (err == 0) {
        /* Its first word: it serves, or it was built from other sources than this stockade. Waited
           for a bounded time: a program there that holds the socket and never answers fails the
           start (ETIMEDOUT) instead of hanging it. */
        struct timeval bound = {STK_HELLO_TIMEOUT_SECONDS, 0}, none = {0, 0};
        char hello = 0;
        ssize_t n = -1;
        if (setsockopt(sv[0], SOL_SOCKET, SO_RCVTIMEO, &bound, sizeof bound) == 0) {
            do n = recv(sv[0], &hello, 1, 0); while (n < 0 && errno == EINTR);
        }
        int recv_errno = errno == EAGAIN ? ETIMEDOUT : errno;
        if (n == 1 && setsockopt(sv[0], SOL_SOCKET, SO_RCVTIMEO, &none, sizeof none) < 0) n = -1, recv_errno = errno;
        if (n != 1 || hello != STK_HELLO_OK) {
            err = n == 1 && hello == STK_HELLO_OTHER_BUILD ? ESTALE : n < 0 ? recv_errno : ECHILD;
            (void)kill(*pid, SIGKILL);
            while (waitpid(*pid, NULL, 0) < 0 && errno == EINTR) {}
        }
    }
done:
    if (have_actions) posix_spawn_file_actions_destroy(&actions);
    if (have_attr) posix_spawnattr_destroy(&attr);
    if (exe >= 0) close(exe);
    close(sv[1]);
    if (err != 0) {
        close(sv[0]);
        errno = err;
        return -1;
    }
    return sv[0];
}

/* Parses a non-negative decimal int, the whole string; -1 when it is not one. */
static long stk_parse_count(const char *s) {
    if (s == NULL || *s == 0) return -1;
    long v = 0;
    for (const char *c = s; *c; c++) {
        if (*c < '0' || *c > '9' || v > 100000000) return -1;
        v = v * 10 + (*c - '0');
    }
    return v;
}

int stk_helper_exec_main(int argc, char **argv) {
    long parent = argc == 4 ? stk_parse_count(argv[1]) : -1;
    long ahead = argc == 4 ? stk_parse_count(argv[2]) : -1;
    int type = 0;
    socklen_t type_len = sizeof type;
    if (parent <= 0 || ahead < 0 || getppid() != (pid_t)parent ||
        getsockopt(STK_HELPER_FD, SOL_SOCKET, SO_TYPE, &type, &type_len) < 0 || type != SOCK_SEQPACKET) {
        static const char usage[] = "stockade-spawn: the spawn helper of stockade, started by it; not a command to run by hand\n";
        (void)!write(2, usage, sizeof usage - 1);
        return 2;
    }
    /* Serve only a stockade of this very build: the plan's format and the child path are this
       build's. Said on the socket, where the supervisor waits for it. */
    char token[17];
    stk_build_token(token);
    char hello = strcmp(argv[3], token) == 0 ? STK_HELLO_OK : STK_HELLO_OTHER_BUILD;
    if (send(STK_HELPER_FD, &hello, 1, MSG_NOSIGNAL) != 1 || hello != STK_HELLO_OK) return 3;
    /* Every init is a copy of this process: its /proc/1/cmdline shows nothing. */
    for (int i = 0; i < argc; i++) memset(argv[i], 0, strlen(argv[i]));
    stk_helper_main(STK_HELPER_FD, (pid_t)parent, NULL, 0, (int)ahead);
}

/* SIGKILL through the pidfd (harmless when it is already dead), then reap it. */
static void stk_kill_and_reap(int pidfd) {
    siginfo_t info;
    (void)syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, NULL, 0);
    while (waitid((idtype_t)P_PIDFD, (id_t)pidfd, &info, WEXITED) < 0 && errno == EINTR) {}
}

int stk_wire_check(const struct stk_plan *plan, size_t *op_count, size_t *fresh_op_count) {
    struct stk_out *out = calloc(1, sizeof *out);
    if (out == NULL) return -1;
    stk_encode(out, plan);
    int rc = -1;
    if (!out->failed) {
        struct stk_in in = {.data = out->data, .len = out->len, .fds = out->fds, .nfds = out->nfds};
        struct stk_plan decoded;
        struct stk_decoded d;
        rc = stk_decode(&in, &decoded, &d);
        *op_count = decoded.op_count;
        *fresh_op_count = decoded.fresh_op_count;
        stk_decoded_free(&d);
    }
    free(out->data);
    free(out);
    return rc;
}

int stk_spawn_remote(int sock, const struct stk_plan *plan, struct stk_spawn_result *result) {
    stk_result_init(result);

    struct stk_out *out = calloc(1, sizeof *out);
    if (out == NULL) {
        result->stage = STK_STAGE_PIPE;
        result->error = ENOMEM;
        return 0;
    }
    stk_encode(out, plan);
    int memfd = -1;
    if (!out->failed) {
        memfd = memfd_create("stockade-plan", MFD_CLOEXEC);
        if (memfd < 0) out->failed = errno;
        else {
            size_t done = 0;
            while (done < out->len && !out->failed) {
                ssize_t w = write(memfd, out->data + done, out->len - done);
                if (w < 0 && errno == EINTR) continue;
                if (w <= 0) out->failed = w < 0 ? errno : EIO;
                else done += (size_t)w;
            }
        }
    }
    if (out->failed) {
        result->stage = STK_STAGE_PIPE;
        result->error = out->failed;
        if (memfd >= 0) close(memfd);
        free(out->data);
        free(out);
        return 0;
    }
    int fds[STK_WIRE_MAX_FDS + 1];
    fds[0] = memfd;
    memcpy(fds + 1, out->fds, sizeof(int) * (size_t)out->nfds);
    ssize_t sent = stk_send_fds(sock, "p", 1, fds, out->nfds + 1);
    int send_errno = errno;
    close(memfd);
    free(out->data);
    free(out);
    if (sent != 1) {
        result->stage = STK_STAGE_HELPER;
        result->detail = 0;
        result->error = sent < 0 ? send_errno : EPIPE;
        errno = result->error;
        return -1;
    }

    /* 'S' then 'R'; or only 'R' when the clone failed. Losing the helper after 'S'
       leaves a half-made child whose parent we are: kill and reap it here. */
    int started_pidfd = -1;
    for (;;) {
        struct stk_wire_result wire;
        int got[4];
        int ngot = 0;
        ssize_t n = stk_receive_fds(sock, &wire, sizeof wire, got, &ngot, 4);
        int expected = n == (ssize_t)sizeof wire
            ? (wire.has_pidfd != 0) + (wire.has_notify != 0) + (wire.has_status != 0) + (wire.has_listen != 0) : -1;
        if (n != (ssize_t)sizeof wire || ngot != expected || (wire.type != 'S' && wire.type != 'R') ||
            (wire.type == 'S' && (!wire.has_pidfd || started_pidfd >= 0))) {
            int err = n < 0 ? errno : n == 0 ? EPIPE : EPROTO;
            for (int i = 0; i < ngot; i++) close(got[i]);
            /* detail: 1 when a child had been made (now killed and reaped), 0 when none was. */
            result->detail = started_pidfd >= 0;
            if (started_pidfd >= 0) {
                stk_kill_and_reap(started_pidfd);
                close(started_pidfd);
            }
            result->pid = -1;
            result->stage = STK_STAGE_HELPER;
            result->error = err;
            errno = err;
            return -1;
        }
        int k = 0;
        if (wire.type == 'S') {
            started_pidfd = got[0];
            result->pid = wire.pid;
            continue;
        }
        if (wire.has_pidfd) result->pidfd = got[k++];
        if (wire.has_notify) result->notify_fd = got[k++];
        if (wire.has_status) result->status_fd = got[k++];
        if (wire.has_listen) result->listen_fd = got[k++];
        if (result->pidfd < 0) result->pidfd = started_pidfd;
        else if (started_pidfd >= 0) close(started_pidfd);
        result->pid = wire.pid;
        result->stage = wire.stage;
        result->error = wire.error;
        result->detail = wire.detail;
        break;
    }
    if (result->stage != STK_STAGE_NONE) {
        /* The helper killed the half-made child; it is ours to reap. */
        if (result->pidfd >= 0) {
            stk_kill_and_reap(result->pidfd);
            close(result->pidfd);
        }
        if (result->notify_fd >= 0) close(result->notify_fd);
        if (result->status_fd >= 0) close(result->status_fd);
        if (result->listen_fd >= 0) close(result->listen_fd);
        result->pidfd = result->notify_fd = result->status_fd = result->listen_fd = -1;
        result->pid = -1;
    }
    return 0;
}

/* ---------- the helper ---------- */

/* Tells the supervisor the child exists, with its pidfd, before it is released. */
static void stk_helper_started(void *context, pid_t pid, int pidfd) {
    int sock = *(int *)context;
    struct stk_wire_result wire = {'S', pid, STK_STAGE_NONE, 0, -1, 1, 0, 0, 0};
    if (stk_send_fds(sock, &wire, sizeof wire, &pidfd, 1) != (ssize_t)sizeof wire) {
        /* The supervisor is gone: so is the child's parent-death signal's reason to wait. */
        (void)syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, NULL, 0);
        _exit(0);
    }
}

/* The result; the pidfd only if 'S' did not carry it (no child, or none announced). */
static void stk_helper_answer(int sock, const struct stk_spawn_result *r, int announced) {
    int send_pidfd = r->pidfd >= 0 && !announced;
    struct stk_wire_result wire = {'R', r->pid, r->stage, r->error, r->detail, send_pidfd, r->notify_fd >= 0, r->status_fd >= 0,
                                   r->listen_fd >= 0};
    int fds[4];
    int n = 0;
    if (send_pidfd) fds[n++] = r->pidfd;
    if (r->notify_fd >= 0) fds[n++] = r->notify_fd;
    if (r->status_fd >= 0) fds[n++] = r->status_fd;
    if (r->listen_fd >= 0) fds[n++] = r->listen_fd;
    if (stk_send_fds(sock, &wire, sizeof wire, fds, n) != (ssize_t)sizeof wire) {
        /* The supervisor is gone: whatever was made dies with its parent-death signal. */
        if (r->pidfd >= 0) (void)syscall(SYS_pidfd_send_signal, r->pidfd, SIGKILL, NULL, 0);
        _exit(0);
    }
}

/*
 * Each worker's network namespace. The helper makes it (unshare, as host root), enters it, brings
 * `lo` up if the run asks for loopback, and clones the worker's init there; the init is never
 * given CLONE_NEWNET. Made for one run, handed to it once and closed here as soon as the clone is
 * done: nothing of one run's network state can reach another. With `netns_ahead` > 0 the helper
 * keeps that many made ahead, refilled after each spawn is answered, so making one (the largest
 * kernel step of a run) is off the run's path; its tear-down is the kernel's, after the run.
 *
 * The namespace is owned by the host's user namespace, not the worker's: root in the worker's
 * user namespace holds no capability over it (it cannot configure interfaces, routes or
 * netfilter, or change a net sysctl), and the helper sets up what the run needs first.
 */
#define STK_NETNS_MAX_AHEAD 4
static int stk_netns_home = -1;
static int stk_netns_ready[STK_NETNS_MAX_AHEAD];
static int stk_netns_count;
static int stk_netns_depth;
/* 0 with STK_NETNS_AHEAD_ONCE: the one made at the start is not replaced once used. */
static int stk_netns_refills = 1;

static int stk_netns_take(void) {
    if (stk_netns_count > 0) return stk_netns_ready[--stk_netns_count];
    return stk_netns_make(stk_netns_home);
}

static void stk_netns_refill(void) {
    while (stk_netns_count < stk_netns_depth) {
        int fd = stk_netns_make(stk_netns_home);
        if (fd < 0) return; /* the next spawn makes its own and reports why it cannot */
        stk_netns_ready[stk_netns_count++] = fd;
    }
}

/* The spawn, with the helper inside the run's own network namespace from before the clone until
   the child is released (the egress listener is made there too); back home before answering. */
static void stk_spawn_in_netns(const struct stk_plan *plan, struct stk_spawn_result *result, int parent_pidfd, int *sock) {
    int netns = stk_netns_take();
    if (netns < 0 || setns(netns, CLONE_NEWNET) < 0) {
        result->stage = STK_STAGE_NETWORK;
        result->error = errno;
        if (netns >= 0) close(netns);
        return;
    }
    if (plan->loopback_up && stk_netns_loopback() < 0) {
        result->stage = STK_STAGE_NETWORK;
        result->error = errno;
    } else {
        (void)stk_spawn(plan, result, parent_pidfd, stk_helper_started, sock);
    }
    if (setns(stk_netns_home, CLONE_NEWNET) < 0) abort();
    close(netns);
}

__attribute__((noreturn)) static void stk_helper_serve(int sock, int parent_pidfd) {
    stk_netns_refill();
    for (;;) {
        char byte;
        int fds[STK_WIRE_MAX_FDS + 1];
        int nfds = 0;
        ssize_t n = stk_receive_fds(sock, &byte, 1, fds, &nfds, STK_WIRE_MAX_FDS + 1);
        if (n == 0) _exit(0);
        if (n < 0 && errno != EPROTO) _exit(1);

        struct stk_spawn_result result;
        stk_result_init(&result);
        struct stat st;
        void *map = MAP_FAILED;
        if (n != 1 || nfds < 1 || fstat(fds[0], &st) < 0 || st.st_size <= 0 ||
            (map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fds[0], 0)) == MAP_FAILED) {
            result.stage = STK_STAGE_HELPER;
            result.error = EPROTO;
        } else {
            struct stk_in in = {map, (size_t)st.st_size, 0, 0, fds + 1, nfds - 1};
            struct stk_plan plan;
            struct stk_decoded decoded;
            if (stk_decode(&in, &plan, &decoded) == 0) {
                stk_spawn_in_netns(&plan, &result, parent_pidfd, &sock);
            } else {
                result.stage = STK_STAGE_HELPER;
                result.error = EPROTO;
            }
            stk_decoded_free(&decoded);
            munmap(map, (size_t)st.st_size);
        }
        for (int i = 0; i < nfds; i++) close(fds[i]);
        stk_helper_answer(sock, &result, result.pidfd >= 0);
        if (result.pidfd >= 0) close(result.pidfd);
        if (result.notify_fd >= 0) close(result.notify_fd);
        if (result.status_fd >= 0) close(result.status_fd);
        if (result.listen_fd >= 0) close(result.listen_fd);
        if (stk_netns_refills) stk_netns_refill();
    }
}

/*
 * The helper's own mount namespace, holding only what a spawn needs before an init's pivot_root:
 * a small tmpfs root, sealed read-only, with the host's /proc bound with every mount beneath it
 * (id maps, namespaces; and whatever the host masks or seals in /proc stays so: the kernel lets an
 * init mount a fresh proc only where the proc it can see is as restricted as before), the host's
 * /dev/null bound (the source of /proc's file masks) and an empty /tmp (where an init builds the
 * worker's root). Every init's mount namespace is a copy of the helper's, so a clone copies these
 * few mounts instead of every mount of the host, and the init's pivot_root detaches them: on a host
 * with hundreds of mounts (a Kubernetes node) that copy and tear-down were a cost per run
 * proportional to the host. Where any step fails (a host whose root cannot be pivoted away from,
 * such as an initramfs), the helper goes back into the host's namespace and serves from there, as
 * before. The /tmp here is the plan's root directory (SandboxSpec.rootDirectory).
 */
static void stk_helper_minimal_mounts(void) {
    int host = open("/proc/self/ns/mnt", O_RDONLY | O_CLOEXEC);
    if (host < 0) return;
    if (unshare(CLONE_NEWNS) < 0) {
        close(host);
        return;
    }
    static const char top[] = "/tmp";
    int fd = -1;
    int ok = mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) == 0 &&
             mount("tmpfs", top, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=64k,nr_inodes=16,mode=0755") == 0 &&
             mkdir("/tmp/proc", 0555) == 0 && mkdir("/tmp/dev", 0755) == 0 && mkdir("/tmp/tmp", 0755) == 0 &&
             (fd = open("/tmp/dev/null", O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC | O_NOFOLLOW, 0444)) >= 0;
    if (fd >= 0) close(fd);
    ok = ok && mount("/proc", "/tmp/proc", NULL, MS_BIND | MS_REC, NULL) == 0 &&
         mount("/dev/null", "/tmp/dev/null", NULL, MS_BIND, NULL) == 0 &&
         mount(NULL, top, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) == 0 &&
         chdir(top) == 0 && syscall(SYS_pivot_root, ".", ".") == 0 &&
         /* The host's tree is stacked on the new root: detach it. */
         umount2(".", MNT_DETACH) == 0 && chdir("/") == 0;
    if (!ok) {
        /* Back into the host's namespace (its root and working directory with it); the private
           copy, and whatever this made in it, goes with the last reference. */
        if (setns(host, CLONE_NEWNS) < 0 || chdir("/") < 0) _exit(1);
    }
    close(host);
}

/*
 * The helper's life after the fork: a copy of the supervisor with one thread,
 * which from here on runs only this file's C. It keeps nothing of the
 * supervisor's but its memory (the workers' inits are copies of it, and the
 * argv there is zeroed) and the socket.
 */
__attribute__((noreturn)) static void stk_helper_main(int sock, pid_t parent, void *scrub, size_t scrub_len, int netns_ahead) {
    /* Die with the thread that forked us; if that already happened, stop now. */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0 || getppid() != parent) _exit(1);
    /* Whatever the supervisor has open (other runs' pipes, the audit database) is not the helper's
       to hold: keep the socket alone, then give stdio /dev/null. */
    if (sock != STK_HELPER_FD && dup2(sock, STK_HELPER_FD) < 0) _exit(1);
    /* The one gate against the supervisor's descriptors reaching inits: serve nothing without it. */
    if (syscall(SYS_close_range, STK_HELPER_FD + 1, ~0U, 0U) < 0) _exit(1);
    (void)fcntl(STK_HELPER_FD, F_SETFD, FD_CLOEXEC);
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null < 0 || dup2(null, 0) < 0 || dup2(null, 1) < 0 || dup2(null, 2) < 0) _exit(1);
    close(null);
    /* Inits check the supervisor through this once their parent-death signal is set again. */
    int parent_pidfd = (int)syscall(SYS_pidfd_open, parent, 0);
    if (parent_pidfd < 0 || fcntl(parent_pidfd, F_SETFD, FD_CLOEXEC) < 0) _exit(1);
    stk_helper_minimal_mounts();
    /* The host's network namespace, to come back to after making or entering a worker's. */
    stk_netns_home = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (stk_netns_home < 0) _exit(1);
    if (netns_ahead == STK_NETNS_AHEAD_ONCE) {
        stk_netns_depth = 1;
        stk_netns_refills = 0;
    } else {
        stk_netns_depth = netns_ahead < 0 ? 0 : netns_ahead > STK_NETNS_MAX_AHEAD ? STK_NETNS_MAX_AHEAD : netns_ahead;
    }
    (void)prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    (void)prctl(PR_SET_NAME, "stockade-spawn", 0, 0, 0);
    /* Workers inherit the helper's supplementary groups and cannot drop them
       (setgroups is denied in their namespace): hold none, or serve nothing. */
    if (syscall(SYS_setgroups, 0, NULL) < 0) _exit(1);
    /* Every init is a copy of this process: zero what it holds of the supervisor's
       command line and environment (where `fromEnv` secrets come from). */
    if (scrub != NULL) memset(scrub, 0, scrub_len);
    for (char **e = environ; e != NULL && *e != NULL; e++) memset(*e, 0, strlen(*e));
    struct sigaction ignore;
    memset(&ignore, 0, sizeof ignore);
    ignore.sa_handler = SIG_IGN;
    (void)sigaction(SIGPIPE, &ignore, NULL);
    /* Ctrl-C and a SIGTERM to the process group are the supervisor's to handle (it cancels
       runs and reports them): a helper dies only with the supervisor (its parent-death signal). */
    (void)sigaction(SIGINT, &ignore, NULL);
    (void)sigaction(SIGTERM, &ignore, NULL);
    (void)sigaction(SIGHUP, &ignore, NULL);
    (void)sigaction(SIGQUIT, &ignore, NULL);
    sigset_t none;
    sigemptyset(&none);
    (void)sigprocmask(SIG_SETMASK, &none, NULL);
    stk_helper_serve(STK_HELPER_FD, parent_pidfd);
}
