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
 * "open_tree", "changed", "idmap", "move_mount", "overlay"). `lower` is opened
 * without following links (it was resolved when checked), and its clone must
 * be the file `device`/`inode` name, the one its owner was read from ("changed",
 * ESTALE, otherwise).
 */
int stk_workspace_overlay(const char *lower, uint64_t device, uint64_t inode, const char *anchor, const char *tmpfs_options,
                          uint32_t uid, uint32_t gid,
                          int userns_fd, int *_Nonnull layer_fd, const char *_Nullable *_Nonnull stage);

/*
 * The worker's root from an image: an overlay whose lower layers are
 * read-only, nosuid, nodev clones of the cached layer directories `layers`
 * (bottom first), each idmapped through `userns_fd`, and whose upper and work
 * directories are `upper/` and `work/` of the detached tmpfs `upper_fd`
 * (which must also hold empty directories `lower/0` .. `lower/N-1`). Made, like
 * the workspace, on a thread of its own in a private mount namespace, with
 * `anchor` as the tmpfs's mount point there, because overlayfs before Linux
 * 6.15 refuses detached layers. `no_symlinks`: the layers were resolved when
 * they were checked (a --rootfs directory), so no link is followed to them now
 * (ELOOP). Returns the detached overlay mount fd, or -1
 * with errno and `*stage` ("namespace", "upper", "open_tree", "idmap",
 * "move_mount", "overlay").
 */
int stk_image_root(const char *anchor, int upper_fd, const char *_Nonnull const *_Nonnull layers, size_t layer_count,
                   int userns_fd, int no_symlinks, const char *_Nullable *_Nonnull stage);

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
 * MOUNT_ATTR_* `attr_set` applied to the whole tree, and private (a clone of a
 * shared mount would be its peer: a mount attached beneath it would reach the
 * host). `flags`: STK_CLONE_NO_SYMLINKS: `path` was resolved when it was
 * checked, so no link is followed on the way now (ELOOP); with it,
 * STK_CLONE_DIRECTORY: `path` is a directory (opened O_DIRECTORY, which mounts
 * an automount point there as a path lookup would). Made by the supervisor in
 * the initial user namespace, so the worker cannot clear those flags; the
 * child attaches it with move_mount. Returns the fd or -1 with errno.
 * Why C: no glibc wrappers for open_tree/mount_setattr.
 */
#define STK_CLONE_NO_SYMLINKS 1
#define STK_CLONE_DIRECTORY 2
int stk_clone_tree(const char *path, uint64_t attr_set, int flags);

/*
 * Seals the detached tmpfs `mount_fd` (from stk_tmpfs_detached, every file of
 * it closed) read-only at the superblock (fspick and a reconfigure with "ro")
 * and at the mount. Only a process with CAP_SYS_ADMIN in the user namespace the
 * filesystem was made in (the supervisor's, the host's) can make it writable
 * again: no worker, whatever it holds in its own namespaces. Returns 0 or -1
 * with errno. Why C: no glibc wrappers for fspick, fsconfig and mount_setattr.
 */
int stk_superblock_seal(int mount_fd);

/*
 * The root skeletons' keeper: a thread of this process, started on first use,
 * in a private mount namespace of its own, where skeletons are attached and
 * cloned (before Linux 6.15 open_tree(OPEN_TREE_CLONE) copies only a mount of
 * the caller's own mount namespace, and a detached mount is in none).
 * stk_keeper_attach attaches the detached mount `mount_fd` there under the
 * number `slot` (afterwards `mount_fd` names the attached mount);
 * stk_keeper_mount attaches the detached tree `tree_fd` (stk_clone_tree) on
 * `relative` inside slot `slot`, resolved beneath it without links, `..` or
 * crossing a mount; stk_keeper_clone returns a detached recursive copy of the
 * skeleton `mount_fd` (the same filesystems under mounts of their own, for one
 * worker to attach), or -1 with errno;
 * stk_keeper_detach unmounts slot `slot` (lazily) and removes its directory.
 * A keeper that fails to start fails that call, and the next call tries again.
 * 0 or -1 with errno. Why C: no glibc wrappers for open_tree and move_mount,
 * and the thread's namespace must be set up before anything else runs on it.
 */
int stk_keeper_attach(int mount_fd, unsigned slot);
int stk_keeper_mount(int tree_fd, unsigned slot, const char *relative);
int stk_keeper_clone(int mount_fd);
int stk_keeper_detach(unsigned slot);

/*
 * Clears the mount attributes `attr_clr` (MOUNT_ATTR_*) of the mount `mount_fd`
 * alone, not of those beneath it: 0 or -1 with errno. The tests use it to show
 * that a clone of a sealed skeleton made writable at the mount is still
 * refused at the superblock.
 */
int stk_mount_attr_clear(int mount_fd, uint64_t attr_clr);

/*
 * Idmaps the detached tree `tree_fd` (from stk_clone_tree, not yet attached)
 * through the user namespace `userns_fd` (see stk_idmap_userns), recursively.
 * Returns 0 or -1 with errno (EINVAL: a filesystem in the tree cannot be
 * idmapped). Why C: no glibc wrapper for mount_setattr.
 */
int stk_tree_idmap(int tree_fd, int userns_fd);

#pragma clang assume_nonnull end
#endif
