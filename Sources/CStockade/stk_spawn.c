/*
 * The parent side of a spawn: the pipes and the clone3 (whose child runs
 * stk_child.c), the id maps, the cgroups, the hand-over of the seccomp
 * listener, and the wait for execve. Runs in the spawn helper (stk_helper.c).
 */
#define _GNU_SOURCE
#include "stk_spawn.h"
#include "stk_net.h"
#include "stk_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/sched.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

STK_BUILD_STAMP(spawn)


/* ---------- parent side ---------- */

static int stk_write_file(const char *path, const char *content) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    int rc = stk_write_all(fd, content, strlen(content));
    int saved = errno;
    close(fd);
    errno = saved;
    return rc;
}

static int stk_write_maps(pid_t pid, const struct stk_plan *plan) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/setgroups", (int)pid);
    if (stk_write_file(path, "deny") < 0) return -1;
    snprintf(path, sizeof path, "/proc/%d/uid_map", (int)pid);
    if (stk_write_file(path, plan->uid_map) < 0) return -1;
    snprintf(path, sizeof path, "/proc/%d/gid_map", (int)pid);
    return stk_write_file(path, plan->gid_map);
}

static int stk_receive_fd(int sock) {
    char byte;
    int fd = -1, count = 0;
    ssize_t n = stk_receive_fds(sock, &byte, 1, &fd, &count, 1);
    return n > 0 && count == 1 ? fd : -1;
}

void stk_result_init(struct stk_spawn_result *result) {
    result->pid = -1;
    result->pidfd = -1;
    result->notify_fd = -1;
    result->status_fd = -1;
    result->stage = STK_STAGE_NONE;
    result->error = 0;
    result->detail = -1;
    result->listen_fd = -1;
}

static void stk_close(int *fd) {
    if (*fd >= 0) close(*fd);
    *fd = -1;
}

int stk_spawn(const struct stk_plan *plan, struct stk_spawn_result *result, int parent_pidfd,
              stk_started_fn started, void *context) {
    stk_result_init(result);

    int errpipe[2] = {-1, -1}, syncpipe[2] = {-1, -1}, sock[2] = {-1, -1}, statuspipe[2] = {-1, -1};
    if (pipe2(errpipe, O_CLOEXEC) < 0 || pipe2(syncpipe, O_CLOEXEC) < 0 || socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, statuspipe) < 0 ||
        fcntl(statuspipe[0], F_SETFL, O_NONBLOCK) < 0 ||
        (plan->notify && socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sock) < 0)) {
        result->stage = STK_STAGE_PIPE;
        result->error = errno;
        stk_close(&errpipe[0]); stk_close(&errpipe[1]);
        stk_close(&syncpipe[0]); stk_close(&syncpipe[1]);
        stk_close(&sock[0]); stk_close(&sock[1]);
        stk_close(&statuspipe[0]); stk_close(&statuspipe[1]);
        return -1;
    }

    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);

    int pidfd = -1;
    struct clone_args args;
    memset(&args, 0, sizeof args);
    /* No CLONE_NEWNET: the helper has entered the worker's own network namespace, made for
       this run alone (stk_helper.c), and the child is born in it. */
    args.flags = CLONE_PIDFD | CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWUTS | CLONE_NEWIPC;
    args.pidfd = (uint64_t)(uintptr_t)&pidfd;
    /* The child's parent is the caller's parent (the supervisor), which reaps
       it; the kernel takes the exit signal from the caller's (exit_signal stays 0). */
    args.flags |= CLONE_PARENT;
    if (plan->cgroup_dir_fd >= 0) {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = (uint64_t)plan->cgroup_dir_fd;
    }
    /* The new user namespace is owned by, and its per-user counters (inotify
       instances, user namespaces, ...) are charged to, the creator's euid:
       create it as the unprivileged owner uid, not as root, so a worker cannot
       exhaust root's limits on the host. Only this thread's credentials change
       (raw syscall), and only around the clone. */
    int switched = 0;
    if (plan->ns_owner_uid != 0) {
        if (syscall(SYS_setresuid, -1, plan->ns_owner_uid, -1) < 0) {
            result->error = errno;
            goto fail_before_clone;
        }
        switched = 1;
        /* CLONE_INTO_CGROUP (cgroup v2) checks the right to write the run cgroup's and
           its ancestors' cgroup.procs with the file-system uid: keep that root's (the
           real uid is still 0, so this needs no capability) while the effective uid,
           which owns the new user namespace, is the run's own. */
        if (plan->cgroup_dir_fd >= 0) {
            (void)syscall(SYS_setfsuid, 0);
            if ((int)syscall(SYS_setfsuid, -1) != 0) {
                result->error = EPERM;
                if (syscall(SYS_setresuid, -1, 0, -1) < 0) abort();
                goto fail_before_clone;
            }
        }
    }
    long pid = syscall(SYS_clone3, &args, sizeof args);
    if (pid == 0) {
        close(errpipe[0]);
        close(syncpipe[1]);
        if (sock[0] >= 0) close(sock[0]);
        close(statuspipe[0]);
        stk_child(plan, errpipe[1], syncpipe[0], sock[1], statuspipe[1], parent_pidfd);
    }
    int clone_errno = errno;
    /* Back to root for the id maps and the cgroup; if that fails this thread
       must not spawn again with the wrong credentials. */
    if (switched && syscall(SYS_setresuid, -1, 0, -1) < 0) abort();
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    stk_close(&errpipe[1]);
    stk_close(&syncpipe[0]);
    stk_close(&sock[1]);
    stk_close(&statuspipe[1]);

    int rc = -1;
    if (pid < 0) {
        result->stage = STK_STAGE_CLONE;
        result->error = clone_errno;
        goto out;
    }
    result->pid = (pid_t)pid;
    result->pidfd = pidfd;
    if (started != NULL) started(context, (pid_t)pid, pidfd);

    if (stk_write_maps((pid_t)pid, plan) < 0) {
        result->stage = STK_STAGE_USERNS_MAP;
        result->error = errno;
        goto fail_child;
    }
    if (plan->listen_port > 0 && (result->listen_fd = stk_listen_in_netns((pid_t)pid, (uint16_t)plan->listen_port)) < 0) {
        result->stage = STK_STAGE_NETWORK;
        result->error = errno;
        goto fail_child;
    }
    if (stk_write_all(syncpipe[1], "g", 1) < 0) {
        result->stage = STK_STAGE_SYNC;
        result->error = errno;
        goto fail_child;
    }
    if (plan->notify) result->notify_fd = stk_receive_fd(sock[0]);

    /* Between the filter and execve the worker still makes a few calls
       (close, prlimit64, rt_sigprocmask, execve itself). A profile may deny
       one; its notification then waits for a listener that only starts once
       we return. Nothing is answered here (a concurrent spawn can hold this
       error pipe open past the exec, so "not yet exec'd" cannot be told
       apart from "exec'd"): a worker that has not reached execve in time
       fails the setup instead of hanging. */
    {
        struct pollfd wait_exec = {errpipe[0], POLLIN, 0};
        int ready;
        do ready = poll(&wait_exec, 1, STK_EXEC_TIMEOUT_MS); while (ready < 0 && errno == EINTR);
        if (ready == 0) {
            result->stage = STK_STAGE_SYNC;
            result->error = ETIMEDOUT;
            goto fail_child;
        }
    }

    struct stk_failure failure;
    ssize_t n;
    do n = read(errpipe[0], &failure, sizeof failure); while (n < 0 && errno == EINTR);
    if (n == 0 && (!plan->notify || result->notify_fd >= 0)) {
        rc = 0;
        result->status_fd = statuspipe[0];
        statuspipe[0] = -1;
        goto out;
    }
    if (n == (ssize_t)sizeof failure) {
        result->stage = failure.stage;
        result->error = failure.error;
        result->detail = failure.detail;
    } else {
        result->stage = plan->notify && result->notify_fd < 0 ? STK_STAGE_SECCOMP : STK_STAGE_SYNC;
        result->error = n < 0 ? errno : EPROTO;
    }

fail_child:
    stk_close(&result->notify_fd);
    stk_close(&result->listen_fd);
    /* Not ours to reap: kill it and hand the pidfd back so the supervisor does. */
    (void)syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, NULL, 0);
out:
    stk_close(&statuspipe[0]);
    stk_close(&errpipe[0]);
    stk_close(&syncpipe[1]);
    stk_close(&sock[0]);
    return rc;

fail_before_clone:
    /* Nothing was cloned: back to the caller's signal mask, every end closed. */
    result->stage = STK_STAGE_CLONE;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    stk_close(&errpipe[0]); stk_close(&errpipe[1]);
    stk_close(&syncpipe[0]); stk_close(&syncpipe[1]);
    stk_close(&sock[0]); stk_close(&sock[1]);
    stk_close(&statuspipe[0]); stk_close(&statuspipe[1]);
    return -1;
}

