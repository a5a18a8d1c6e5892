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
 * `lower`, with `upper` and `work` as its upper and work directories, mounted
 * nosuid, nodev. Returns the detached mount fd, or -1 with errno; `*stage`
 * names the step that failed ("open_tree", "idmap", "overlay").
 */
int stk_workspace_overlay(const char *lower, const char *upper, const char *work, int userns_fd,
                          const char *_Nullable *_Nonnull stage);

#pragma clang assume_nonnull end
#endif
