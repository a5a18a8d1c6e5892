#ifndef STK_MOUNTS_H
#define STK_MOUNTS_H
/*
 * Mounts the supervisor prepares in the initial user namespace and hands to
 * the worker's init as detached mount fds (attached with move_mount). Why C:
 * glibc has no wrappers for open_tree, mount_setattr, fsopen, fsconfig and
 * fsmount, and creating a user namespace for an id map needs a child process
 * that must run only async-signal-safe code.
 */
#include <stdint.h>
#include <sys/types.h>

#pragma clang assume_nonnull begin

/*
 * A user namespace whose only mappings are `uid_map` and `gid_map` (text as
 * written to /proc/PID/uid_map), for idmapped mounts. Returns an O_CLOEXEC fd
 * of the namespace, or -1 with errno. The helper process is reaped before
 * returning.
 */
int stk_idmap_userns(const char *uid_map, const char *gid_map);

/*
 * The worker's copy-on-write workspace: an overlay whose lower layer is a
 * read-only, idmapped (through `userns_fd`, or not idmapped when -1) clone of
 * `lower`, and whose upper and work directories live on a tmpfs (mount data
 * `tmpfs_options`) with `data/` owned by uid:gid. All of it is made on a thread
 * of its own in a private mount namespace that dies with the thread, using
 * `anchor` (an existing directory) as its mount point there: nothing of the
 * layer is ever mounted on the host, so nothing can outlive the run even when
 * the supervisor is killed; the returned descriptors are all that hold it.
 * Returns the detached overlay mount fd and, in `*layer_fd`, an fd of the
 * tmpfs's root (its `data/` is the upper directory to collect), or -1 with
 * errno; `*stage` names the step that failed ("namespace", "tmpfs",
 * "open_tree", "idmap", "move_mount", "overlay").
 */
int stk_workspace_overlay(const char *lower, const char *anchor, const char *tmpfs_options, uint32_t uid, uint32_t gid,
                          int userns_fd, int *_Nonnull layer_fd, const char *_Nullable *_Nonnull stage);

/*
 * The worker's root from an image: an overlay whose lower layers are
 * read-only, nosuid, nodev clones of the cached layer directories `layers`
 * (bottom first), each idmapped through `userns_fd`, and whose upper and work
 * directories are `upper/` and `work/` of the detached tmpfs `upper_fd`
 * (which must also hold empty directories `lower/0` .. `lower/N-1`). Made, like
 * the workspace, on a thread of its own in a private mount namespace, with
 * `anchor` as the tmpfs's mount point there, because overlayfs before Linux
 * 6.15 refuses detached layers. Returns the detached overlay mount fd, or -1
 * with errno and `*stage` ("namespace", "upper", "open_tree", "idmap",
 * "move_mount", "overlay").
 */
int stk_image_root(const char *anchor, int upper_fd, const char *_Nonnull const *_Nonnull layers, size_t layer_count,
                   int userns_fd, const char *_Nullable *_Nonnull stage);

/*
 * A detached tmpfs (fsopen/fsmount) owned by host `uid`/`gid`, bounded by
 * `size_bytes` and `inodes`, nosuid, nodev, noexec. Returns the mount fd or -1
 * with errno. The fd keeps the filesystem alive after the worker's mount
 * namespace is gone, so the supervisor reads the result from it.
 * Why C: no glibc wrappers for fsopen/fsconfig/fsmount.
 */
int stk_tmpfs_detached(uint64_t size_bytes, uint64_t inodes, uint32_t uid, uint32_t gid, uint32_t mode);

/*
 * A detached recursive bind of `path` (open_tree OPEN_TREE_CLONE) with
 * MOUNT_ATTR_* `attr_set` applied to the whole tree. Made by the supervisor in
 * the initial user namespace, so the worker cannot clear those flags; the
 * child attaches it with move_mount. Returns the fd or -1 with errno.
 * Why C: no glibc wrappers for open_tree/mount_setattr.
 */
int stk_clone_tree(const char *path, uint64_t attr_set);

/*
 * Idmaps the detached tree `tree_fd` (from stk_clone_tree, not yet attached)
 * through the user namespace `userns_fd` (see stk_idmap_userns), recursively.
 * Returns 0 or -1 with errno (EINVAL: a filesystem in the tree cannot be
 * idmapped). Why C: no glibc wrapper for mount_setattr.
 */
int stk_tree_idmap(int tree_fd, int userns_fd);

#pragma clang assume_nonnull end
#endif
