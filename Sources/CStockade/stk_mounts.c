#define _GNU_SOURCE
#include "stk_mounts.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/mount.h>
#include <linux/sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

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

int stk_idmap_userns(const char *uid_map, const char *gid_map) {
    int hold[2];
    if (pipe2(hold, O_CLOEXEC) < 0) return -1;
    struct clone_args args;
    memset(&args, 0, sizeof args);
    args.flags = CLONE_NEWUSER;
    args.exit_signal = SIGCHLD;
    long pid = syscall(SYS_clone3, &args, sizeof args);
    if (pid == 0) {
        /* Only waits for the parent to finish with our namespace. */
        char byte;
        close(hold[1]);
        while (read(hold[0], &byte, 1) < 0 && errno == EINTR) {}
        _exit(0);
    }
    int saved = errno;
    close(hold[0]);
    if (pid < 0) {
        close(hold[1]);
        errno = saved;
        return -1;
    }
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
    saved = errno;
    close(hold[1]);
    while (waitpid((pid_t)pid, NULL, 0) < 0 && errno == EINTR) {}
    errno = saved;
    return fd;
}

static int stk_set(int fs, const char *key, const char *value) {
    return (int)syscall(SYS_fsconfig, fs, FSCONFIG_SET_STRING, key, value, 0);
}

int stk_workspace_overlay(const char *lower, const char *upper, const char *work, int userns_fd, const char **stage) {
    *stage = "open_tree";
    int tree = (int)syscall(SYS_open_tree, AT_FDCWD, lower, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
    if (tree < 0) return -1;
    struct mount_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.attr_set = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
    if (userns_fd >= 0) {
        attr.attr_set |= MOUNT_ATTR_IDMAP;
        attr.userns_fd = (uint64_t)userns_fd;
    }
    *stage = "idmap";
    if (syscall(SYS_mount_setattr, tree, "", AT_EMPTY_PATH, &attr, sizeof attr) < 0) goto fail_tree;

    *stage = "overlay";
    int fs = (int)syscall(SYS_fsopen, "overlay", FSOPEN_CLOEXEC);
    if (fs < 0) goto fail_tree;
    char lowerdir[64];
    snprintf(lowerdir, sizeof lowerdir, "/proc/self/fd/%d", tree);
    /* No redirects, metacopy or index: the upper layer must be a plain tree
       of whole files, whiteouts and opaque markers for the scanner. */
    if (stk_set(fs, "lowerdir", lowerdir) < 0 || stk_set(fs, "upperdir", upper) < 0 ||
        stk_set(fs, "workdir", work) < 0 || stk_set(fs, "redirect_dir", "off") < 0 ||
        stk_set(fs, "metacopy", "off") < 0 || stk_set(fs, "index", "off") < 0 ||
        syscall(SYS_fsconfig, fs, FSCONFIG_CMD_CREATE, NULL, NULL, 0) < 0) {
        int saved = errno;
        close(fs);
        close(tree);
        errno = saved;
        return -1;
    }
    int mnt = (int)syscall(SYS_fsmount, fs, FSMOUNT_CLOEXEC, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV);
    int saved = errno;
    close(fs);
    close(tree);
    errno = saved;
    return mnt;

fail_tree:
    saved = errno;
    close(tree);
    errno = saved;
    return -1;
}
