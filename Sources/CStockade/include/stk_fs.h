#ifndef STK_FS_H
#define STK_FS_H
/*
 * Filesystem syscall shims that glibc 2.36 does not wrap. They are C because
 * `syscall(2)` is variadic and cannot be called from Swift.
 */
#include <stdint.h>
#include <sys/types.h>

#pragma clang assume_nonnull begin

/* RESOLVE_* flags for stk_openat2, as in <linux/openat2.h>. */
#define STK_RESOLVE_NO_XDEV       0x01
#define STK_RESOLVE_NO_MAGICLINKS 0x02
#define STK_RESOLVE_NO_SYMLINKS   0x04
#define STK_RESOLVE_BENEATH       0x08
#define STK_RESOLVE_IN_ROOT       0x10

/*
 * openat2(2): open `path` relative to `dirfd` with `resolve` restrictions.
 * Returns the new fd, or -1 with errno set. Why C: no glibc wrapper.
 */
int stk_openat2(int dirfd, const char *path, uint64_t flags, uint64_t mode, uint64_t resolve);

/*
 * syncfs(2): commits the filesystem that holds `fd`. Why C: glibc declares it only with _GNU_SOURCE.
 */
int stk_syncfs(int fd);

/*
 * renameat2(2) with flags (RENAME_NOREPLACE = 1, RENAME_EXCHANGE = 2).
 * Returns 0, or -1 with errno set. Why C: glibc declares it only with _GNU_SOURCE.
 */
int stk_renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, unsigned int flags);

/* pipe2(fds, O_CLOEXEC | extra). Why C: Swift's Glibc does not import pipe2. */
int stk_pipe_cloexec(int *_Nonnull fds, int extra_flags);

#pragma clang assume_nonnull end
#endif
