#define _GNU_SOURCE
#include "stk_mounts.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <linux/mount.h>
#include <linux/openat2.h>
#include <linux/sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include "stk_internal.h"

STK_BUILD_STAMP(mounts)

static int stk_write_text(const char *path, const char *text) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    size_t len = strlen(text);
    ssize_t n = write(fd, text, len);
    int saved = errno;
    close(fd);
    errno = saved;
    return n == (ssize_t)len ? 0 : -1;
}

/*
 * A user namespace that only carries an id map. The child that owns it is killed and reaped here,
 * after the namespace's descriptor is open. It must not wait for anything another process can hold:
 * runs are set up on several threads at once, and a child forked by one thread holds copies of
 * whatever the others had open at that moment (once, the child waited for its hold pipe's end, two
 * runs' children held each other's pipe open, and both runs hung for good). So it closes every
 * inherited descriptor and sleeps until the kill, or dies with the thread that made it.
 */
int stk_idmap_userns(const char *uid_map, const char *gid_map) {
    struct clone_args args;
    memset(&args, 0, sizeof args);
    args.flags = CLONE_NEWUSER;
    args.exit_signal = SIGCHLD;
    pid_t parent = getpid();
    long pid = syscall(SYS_clone3, &args, sizeof args);
    if (pid == 0) {
        /* Only async-signal-safe calls: this is a fork of a process with many threads. */
        (void)syscall(SYS_close_range, 0U, ~0U, 0U);
        if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0 || getppid() != parent) _exit(1);
        for (;;) pause();
    }
    if (pid < 0) return -1;
    char path[64];
    int fd = -1;
    snprintf(path, sizeof path, "/proc/%ld/setgroups", pid);
    if (stk_write_text(path, "deny") == 0) {
        snprintf(path, sizeof path, "/proc/%ld/uid_map", pid);
        if (stk_write_text(path, uid_map) == 0) {
            snprintf(path, sizeof path, "/proc/%ld/gid_map", pid);
            if (stk_write_text(path, gid_map) == 0) {
                snprintf(path, sizeof path, "/proc/%ld/ns/user", pid);
                fd = open(path, O_RDONLY | O_CLOEXEC);
            }
        }
    }
    int saved = errno;
    (void)kill((pid_t)pid, SIGKILL);
    while (waitpid((pid_t)pid, NULL, 0) < 0 && errno == EINTR) {}
    errno = saved;
    return fd;
}

static int stk_set(int fs, const char *key, const char *value) {
    return (int)syscall(SYS_fsconfig, fs, FSCONFIG_SET_STRING, key, value, 0);
}

/* `path` opened O_PATH without following any link on the way (RESOLVE_NO_SYMLINKS): for a path
   that was resolved (realpath) when it was checked, a link met now was put there since.
   `directory`: O_DIRECTORY too, which also mounts an automount point there (O_PATH alone does not). */
static int stk_open_unlinked(const char *path, int directory) {
    struct open_how how;
    memset(&how, 0, sizeof how);
    how.flags = O_PATH | O_CLOEXEC | (directory ? O_DIRECTORY : 0);
    how.resolve = RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
    return (int)syscall(SYS_openat2, AT_FDCWD, path, &how, sizeof how);
}

struct stk_layer_job {
    const char *lower, *anchor, *tmpfs_options;
    uint64_t device, inode;
    uint32_t uid, gid;
    int userns_fd;
    int overlay_fd, layer_fd, error;
    const char *stage;
};


/* Runs on a thread of its own, in a mount namespace of its own that dies with it. */
static void *stk_layer_thread(void *arg) {
    struct stk_layer_job *job = arg;
    char path[4096];
    int tree = -1, fs = -1;
    job->stage = "namespace";
    /* A private mount namespace for this thread alone (CLONE_NEWNS implies CLONE_FS):
       nothing mounted below is ever visible on the host, and nothing propagates back. */
    if (unshare(CLONE_NEWNS) < 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0) goto fail;

    job->stage = "tmpfs";
    if (mount("tmpfs", job->anchor, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, job->tmpfs_options) < 0) goto fail;
    job->layer_fd = open(job->anchor, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
    if (job->layer_fd < 0 || mkdirat(job->layer_fd, "data", 0755) < 0 || mkdirat(job->layer_fd, "work", 0700) < 0 ||
        mkdirat(job->layer_fd, "lower", 0755) < 0)
        goto fail;
    /* The overlay's root takes its owner from upper: the worker's. */
    if (fchownat(job->layer_fd, "data", job->uid, job->gid, AT_SYMLINK_NOFOLLOW) < 0) goto fail;

    job->stage = "open_tree";
    /* The workspace was resolved (realpath) and its owner read from this same object by the
       caller: no link is followed now, and the tree must be the file the owner came from. */
    int at = stk_open_unlinked(job->lower, 1);
    if (at < 0) goto fail;
    tree = (int)syscall(SYS_open_tree, at, "", AT_EMPTY_PATH | OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
    int saved_errno = errno;
    close(at);
    errno = saved_errno;
    if (tree < 0) goto fail;
    struct stat seen;
    if (fstat(tree, &seen) < 0) goto fail;
    if ((uint64_t)seen.st_dev != job->device || (uint64_t)seen.st_ino != job->inode) {
        job->stage = "changed";
        errno = ESTALE;
        goto fail;
    }
    struct mount_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.attr_set = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
    if (job->userns_fd >= 0) {
        attr.attr_set |= MOUNT_ATTR_IDMAP;
        attr.userns_fd = (uint64_t)job->userns_fd;
    }
    job->stage = "idmap";
    if (syscall(SYS_mount_setattr, tree, "", AT_EMPTY_PATH, &attr, sizeof attr) < 0) goto fail;
    /* Attached here, not passed as a detached mount: before Linux 6.15 overlayfs
       takes only layers mounted in the caller's own mount namespace. */
    job->stage = "move_mount";
    if (syscall(SYS_move_mount, tree, "", job->layer_fd, "lower", MOVE_MOUNT_F_EMPTY_PATH) < 0) goto fail;

    job->stage = "overlay";
    fs = (int)syscall(SYS_fsopen, "overlay", FSOPEN_CLOEXEC);
    if (fs < 0) goto fail;
    char lower[4200], upper[4200], work[4200];
    snprintf(path, sizeof path, "%s", job->anchor);
    snprintf(lower, sizeof lower, "%s/lower", path);
    snprintf(upper, sizeof upper, "%s/data", path);
    snprintf(work, sizeof work, "%s/work", path);
    /* No redirects, metacopy or index: the upper layer must be a plain tree
       of whole files, whiteouts and opaque markers for the scanner. */
    if (stk_set(fs, "lowerdir", lower) < 0 || stk_set(fs, "upperdir", upper) < 0 ||
        stk_set(fs, "workdir", work) < 0 || stk_set(fs, "redirect_dir", "off") < 0 ||
        stk_set(fs, "metacopy", "off") < 0 || stk_set(fs, "index", "off") < 0 ||
        syscall(SYS_fsconfig, fs, FSCONFIG_CMD_CREATE, NULL, NULL, 0) < 0)
        goto fail;
    job->overlay_fd = (int)syscall(SYS_fsmount, fs, FSMOUNT_CLOEXEC, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV);
    if (job->overlay_fd < 0) goto fail;
    close(fs);
    close(tree);
    return NULL;

fail:
    job->error = errno;
    if (fs >= 0) close(fs);
    if (tree >= 0) close(tree);
    if (job->layer_fd >= 0) close(job->layer_fd);
    job->layer_fd = -1;
    return NULL;
}

/* Runs `body(job)` on a thread of its own and waits for it: a thread that unshares its mount
   namespace takes that namespace with it when it ends. 0, or the pthread_create error. */
static int stk_on_own_thread(void *(*body)(void *), void *job) {
    pthread_t thread;
    int rc = pthread_create(&thread, NULL, body, job);
    if (rc == 0) pthread_join(thread, NULL);
    return rc;
}

int stk_workspace_overlay(const char *lower, uint64_t device, uint64_t inode, const char *anchor, const char *tmpfs_options,
                          uint32_t uid, uint32_t gid, int userns_fd, int *layer_fd, const char **stage) {
    struct stk_layer_job job = {lower, anchor, tmpfs_options, device, inode, uid, gid, userns_fd, -1, -1, 0, "thread"};
    int rc = stk_on_own_thread(stk_layer_thread, &job);
    if (rc != 0) {
        *stage = "thread";
        errno = rc;
        return -1;
    }
    *stage = job.stage;
    *layer_fd = job.layer_fd;
    if (job.overlay_fd < 0) errno = job.error;
    return job.overlay_fd;
}

struct stk_image_job {
    const char *anchor;
    int upper_fd;
    const char *const *layers;
    size_t layer_count;
    int userns_fd;
    int no_symlinks;
    int overlay_fd, error;
    const char *stage;
};

/* Runs on a thread of its own, in a mount namespace of its own that dies with it. */
static void *stk_image_thread(void *arg) {
    struct stk_image_job *job = arg;
    int fs = -1;
    job->stage = "namespace";
    if (unshare(CLONE_NEWNS) < 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0) goto fail;
    job->stage = "upper";
    if (syscall(SYS_move_mount, job->upper_fd, "", AT_FDCWD, job->anchor, MOVE_MOUNT_F_EMPTY_PATH) < 0) goto fail;
    /* CLONE_NEWNS gave this thread its own cwd: the layers' paths below are short and relative. */
    if (chdir(job->anchor) < 0) goto fail;
    char lowers[4096];
    size_t used = 0;
    lowers[0] = '\0';
    for (size_t i = job->layer_count; i-- > 0;) {  /* overlay lists the top layer first */
        char name[32];
        snprintf(name, sizeof name, "lower/%zu", i);
        job->stage = "open_tree";
        int tree;
        if (job->no_symlinks) {
            /* A --rootfs directory, resolved when it was checked: no link is followed to it now. */
            int at = stk_open_unlinked(job->layers[i], 1);
            if (at < 0) goto fail;
            tree = (int)syscall(SYS_open_tree, at, "", AT_EMPTY_PATH | OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
            int saved = errno;
            close(at);
            errno = saved;
        } else {
            tree = (int)syscall(SYS_open_tree, AT_FDCWD, job->layers[i], OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
        }
        if (tree < 0) goto fail;
        struct mount_attr attr;
        memset(&attr, 0, sizeof attr);
        attr.attr_set = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_IDMAP;
        attr.userns_fd = (uint64_t)job->userns_fd;
        job->stage = "idmap";
        if (syscall(SYS_mount_setattr, tree, "", AT_EMPTY_PATH, &attr, sizeof attr) < 0) {
            int saved = errno;
            close(tree);
            errno = saved;
            goto fail;
        }
        job->stage = "move_mount";
        long moved = syscall(SYS_move_mount, tree, "", AT_FDCWD, name, MOVE_MOUNT_F_EMPTY_PATH);
        int saved = errno;
        close(tree);
        errno = saved;
        if (moved < 0) goto fail;
        int n = snprintf(lowers + used, sizeof lowers - used, "%s%s", used ? ":" : "", name);
        if (n < 0 || (size_t)n >= sizeof lowers - used) { errno = E2BIG; goto fail; }
        used += (size_t)n;
    }
    job->stage = "overlay";
    fs = (int)syscall(SYS_fsopen, "overlay", FSOPEN_CLOEXEC);
    if (fs < 0) goto fail;
    if (stk_set(fs, "lowerdir", lowers) < 0 || stk_set(fs, "upperdir", "upper") < 0 || stk_set(fs, "workdir", "work") < 0 ||
        stk_set(fs, "redirect_dir", "off") < 0 || stk_set(fs, "metacopy", "off") < 0 || stk_set(fs, "index", "off") < 0 ||
        syscall(SYS_fsconfig, fs, FSCONFIG_CMD_CREATE, NULL, NULL, 0) < 0)
        goto fail;
    job->overlay_fd = (int)syscall(SYS_fsmount, fs, FSMOUNT_CLOEXEC, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV);
    if (job->overlay_fd < 0) goto fail;
    close(fs);
    return NULL;

fail:
    job->error = errno;
    if (fs >= 0) close(fs);
    return NULL;
}

int stk_image_root(const char *anchor, int upper_fd, const char *const *layers, size_t layer_count, int userns_fd,
                   int no_symlinks, const char **stage) {
    struct stk_image_job job = {anchor, upper_fd, layers, layer_count, userns_fd, no_symlinks, -1, 0, "thread"};
    int rc = stk_on_own_thread(stk_image_thread, &job);
    if (rc != 0) {
        *stage = "thread";
        errno = rc;
        return -1;
    }
    *stage = job.stage;
    if (job.overlay_fd < 0) errno = job.error;
    return job.overlay_fd;
}

int stk_tmpfs_detached(uint64_t size_bytes, uint64_t inodes, uint32_t uid, uint32_t gid, uint32_t mode) {
    int fs = (int)syscall(SYS_fsopen, "tmpfs", FSOPEN_CLOEXEC);
    if (fs < 0) return -1;
    char value[32];
    int rc = 0;
    snprintf(value, sizeof value, "%llu", (unsigned long long)size_bytes);
    rc |= (int)syscall(SYS_fsconfig, fs, FSCONFIG_SET_STRING, "size", value, 0);
    snprintf(value, sizeof value, "%llu", (unsigned long long)inodes);
    rc |= (int)syscall(SYS_fsconfig, fs, FSCONFIG_SET_STRING, "nr_inodes", value, 0);
    snprintf(value, sizeof value, "%u", uid);
    rc |= (int)syscall(SYS_fsconfig, fs, FSCONFIG_SET_STRING, "uid", value, 0);
    snprintf(value, sizeof value, "%u", gid);
    rc |= (int)syscall(SYS_fsconfig, fs, FSCONFIG_SET_STRING, "gid", value, 0);
    snprintf(value, sizeof value, "%o", mode);
    rc |= (int)syscall(SYS_fsconfig, fs, FSCONFIG_SET_STRING, "mode", value, 0);
    if (rc != 0 || syscall(SYS_fsconfig, fs, FSCONFIG_CMD_CREATE, NULL, NULL, 0) < 0) {
        int saved = errno;
        close(fs);
        errno = saved;
        return -1;
    }
    int mnt = (int)syscall(SYS_fsmount, fs, FSMOUNT_CLOEXEC,
                           MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC);
    int saved = errno;
    close(fs);
    errno = saved;
    return mnt;
}

int stk_superblock_seal(int mount_fd) {
    int fs = (int)syscall(SYS_fspick, mount_fd, "", FSPICK_EMPTY_PATH | FSPICK_CLOEXEC);
    if (fs < 0) return -1;
    int rc = (int)syscall(SYS_fsconfig, fs, FSCONFIG_SET_FLAG, "ro", NULL, 0);
    if (rc == 0) rc = (int)syscall(SYS_fsconfig, fs, FSCONFIG_CMD_RECONFIGURE, NULL, NULL, 0);
    int saved = errno;
    close(fs);
    errno = saved;
    if (rc < 0) return -1;
    struct mount_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.attr_set = MOUNT_ATTR_RDONLY;
    return (int)syscall(SYS_mount_setattr, mount_fd, "", AT_EMPTY_PATH, &attr, sizeof attr);
}

/* ---------- the root skeletons' keeper ---------- */

/* One thread in a private mount namespace of its own, for the life of the process. Before Linux
   6.15 open_tree(OPEN_TREE_CLONE) copies only a mount of the caller's own mount namespace, and a
   detached one is in none: so each skeleton is attached here, and every clone is made here. The
   namespace holds nothing of the host's but what the skeletons bind (the system directories, a few
   /etc files, device nodes): its root is a small tmpfs (mounted on /tmp, then pivot_root, the old
   root detached), so no other host filesystem is kept busy by it, and nothing of it
   propagates anywhere (private). Calls are served one at a time. */
enum { STK_KEEPER_ATTACH = 1, STK_KEEPER_MOUNT, STK_KEEPER_CLONE, STK_KEEPER_DETACH };

static struct {
    pthread_mutex_t call;     /* one caller at a time */
    pthread_mutex_t lock;
    pthread_cond_t wake;
    int state;                /* 0 not started, 1 serving, -1 failed (errno in start_error) */
    int start_error;
    int op, fd;
    unsigned slot;
    const char *relative;
    int pending, result, error;
} stk_keeper = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, -1, 0, NULL, 0, 0, 0};

static int stk_keeper_do(int op, int fd, unsigned slot, const char *relative) {
    char path[32];
    int n = snprintf(path, sizeof path, "/%u", slot);
    switch (op) {
    case STK_KEEPER_ATTACH: {
        if (mkdir(path, 0700) < 0 && errno != EEXIST) return -1;
        if (syscall(SYS_move_mount, fd, "", AT_FDCWD, path, MOVE_MOUNT_F_EMPTY_PATH) == 0) return 0;
        int saved = errno;
        rmdir(path);
        errno = saved;
        return -1;
    }
    case STK_KEEPER_MOUNT: {
        /* Beneath the skeleton's own directories only (no link, no ..): the sealed skeleton holds
           nothing else, but the target is resolved so anyway. */
        if (relative == NULL || n < 0) {
            errno = EINVAL;
            return -1;
        }
        int dir = open(path, O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (dir < 0) return -1;
        struct open_how how;
        memset(&how, 0, sizeof how);
        how.flags = O_PATH | O_CLOEXEC;
        how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV;
        int target = (int)syscall(SYS_openat2, dir, relative, &how, sizeof how);
        int saved = errno;
        close(dir);
        if (target < 0) {
            errno = saved;
            return -1;
        }
        int rc = (int)syscall(SYS_move_mount, fd, "", target, "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH);
        saved = errno;
        close(target);
        errno = saved;
        return rc;
    }
    case STK_KEEPER_CLONE:
        return (int)syscall(SYS_open_tree, fd, "", OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_EMPTY_PATH | AT_RECURSIVE);
    case STK_KEEPER_DETACH:
        if (umount2(path, MNT_DETACH) < 0) return -1;
        return rmdir(path);
    default:
        errno = EINVAL;
        return -1;
    }
}

/* The keeper's root: a small tmpfs mounted on the first of these directories the host has (any
   will do: the namespace is private, and the host's root is detached from it right after). */
static const char *const stk_keeper_anchors[] = {"/tmp", "/run", "/mnt", "/var/tmp", "/dev"};

static void *stk_keeper_thread(void *unused) {
    (void)unused;
    int error = 0;
    if (unshare(CLONE_NEWNS) < 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0) {
        error = errno;
    } else {
        const char *anchor = NULL;
        for (size_t i = 0; i < sizeof stk_keeper_anchors / sizeof *stk_keeper_anchors && anchor == NULL; i++) {
            if (mount("tmpfs", stk_keeper_anchors[i], "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=64k,nr_inodes=4096,mode=0700") == 0)
                anchor = stk_keeper_anchors[i];
            else
                error = errno;
        }
        if (anchor == NULL || chdir(anchor) < 0 || syscall(SYS_pivot_root, ".", ".") < 0 || umount2(".", MNT_DETACH) < 0 || chdir("/") < 0)
            error = errno ? errno : ENOENT;
        else
            error = 0;
    }
    pthread_mutex_lock(&stk_keeper.lock);
    /* A failed start is reported to the caller waiting for it and leaves the keeper unstarted, so
       that the next call tries again (the thread, and the namespace it made, end here). */
    stk_keeper.state = error ? -1 : 1;
    stk_keeper.start_error = error;
    pthread_cond_broadcast(&stk_keeper.wake);
    while (!error) {
        while (!stk_keeper.pending) pthread_cond_wait(&stk_keeper.wake, &stk_keeper.lock);
        int op = stk_keeper.op, fd = stk_keeper.fd;
        unsigned slot = stk_keeper.slot;
        const char *relative = stk_keeper.relative;
        pthread_mutex_unlock(&stk_keeper.lock);
        int result = stk_keeper_do(op, fd, slot, relative);
        int saved = errno;
        pthread_mutex_lock(&stk_keeper.lock);
        stk_keeper.result = result;
        stk_keeper.error = saved;
        stk_keeper.pending = 0;
        pthread_cond_broadcast(&stk_keeper.wake);
    }
    pthread_mutex_unlock(&stk_keeper.lock);
    return NULL;
}

static int stk_keeper_call(int op, int fd, unsigned slot, const char *relative) {
    pthread_mutex_lock(&stk_keeper.call);
    pthread_mutex_lock(&stk_keeper.lock);
    if (stk_keeper.state == 0) {
        pthread_t thread;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&attr, 64 * 1024);
        int rc = pthread_create(&thread, &attr, stk_keeper_thread, NULL);
        pthread_attr_destroy(&attr);
        if (rc != 0) {
            stk_keeper.state = -1;
            stk_keeper.start_error = rc;
        }
        while (stk_keeper.state == 0) pthread_cond_wait(&stk_keeper.wake, &stk_keeper.lock);
    }
    int result = -1, error = stk_keeper.start_error;
    if (stk_keeper.state == -1) stk_keeper.state = 0; /* not started: the next call tries again */
    if (stk_keeper.state == 1) {
        stk_keeper.op = op;
        stk_keeper.fd = fd;
        stk_keeper.slot = slot;
        stk_keeper.relative = relative;
        stk_keeper.pending = 1;
        pthread_cond_broadcast(&stk_keeper.wake);
        while (stk_keeper.pending) pthread_cond_wait(&stk_keeper.wake, &stk_keeper.lock);
        result = stk_keeper.result;
        error = stk_keeper.error;
    }
    pthread_mutex_unlock(&stk_keeper.lock);
    pthread_mutex_unlock(&stk_keeper.call);
    errno = error;
    return result;
}

int stk_keeper_attach(int mount_fd, unsigned slot) { return stk_keeper_call(STK_KEEPER_ATTACH, mount_fd, slot, NULL); }
int stk_keeper_mount(int tree_fd, unsigned slot, const char *relative) { return stk_keeper_call(STK_KEEPER_MOUNT, tree_fd, slot, relative); }
int stk_keeper_clone(int mount_fd) { return stk_keeper_call(STK_KEEPER_CLONE, mount_fd, 0, NULL); }
int stk_keeper_detach(unsigned slot) { return stk_keeper_call(STK_KEEPER_DETACH, -1, slot, NULL); }

int stk_mount_attr_clear(int mount_fd, uint64_t attr_clr) {
    struct mount_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.attr_clr = attr_clr;
    return (int)syscall(SYS_mount_setattr, mount_fd, "", AT_EMPTY_PATH, &attr, sizeof attr);
}

int stk_tree_idmap(int tree_fd, int userns_fd) {
    struct mount_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.attr_set = MOUNT_ATTR_IDMAP;
    attr.userns_fd = (uint64_t)userns_fd;
    return (int)syscall(SYS_mount_setattr, tree_fd, "", AT_EMPTY_PATH | AT_RECURSIVE, &attr, sizeof attr);
}

int stk_clone_tree(const char *path, uint64_t attr_set, int flags) {
    int fd;
    if (flags & STK_CLONE_NO_SYMLINKS) {
        int at = stk_open_unlinked(path, flags & STK_CLONE_DIRECTORY);
        if (at < 0) return -1;
        fd = (int)syscall(SYS_open_tree, at, "", AT_EMPTY_PATH | OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE);
        int saved = errno;
        close(at);
        errno = saved;
    } else {
        fd = (int)syscall(SYS_open_tree, AT_FDCWD, path, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE);
    }
    if (fd < 0) return -1;
    struct mount_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.attr_set = attr_set;
    /* A clone of a shared mount is a peer of it: a mount the worker's init later attaches beneath
       it (a nested volume) would propagate to the host's tree and stay there after the run. */
    attr.propagation = MS_PRIVATE;
    if (syscall(SYS_mount_setattr, fd, "", AT_EMPTY_PATH | AT_RECURSIVE, &attr, sizeof attr) < 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    return fd;
}
