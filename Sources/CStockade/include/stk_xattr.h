#ifndef STK_XATTR_H
#define STK_XATTR_H
/*
 * Descriptor-based extended-attribute reads and the O_PATH flag, for scanning
 * overlayfs upper directories (opaque markers are xattrs) and removing hostile
 * trees. Swift's Glibc module does not import <sys/xattr.h>, and O_PATH is
 * defined only under _GNU_SOURCE, which the Swift importer does not set.
 */
#include <stddef.h>
#include <sys/types.h>

#pragma clang assume_nonnull begin

/* O_PATH, as in <fcntl.h> with _GNU_SOURCE. Why C: hidden from Swift's Glibc import. */
extern const int STK_O_PATH;

/*
 * flistxattr(2): the NUL-separated attribute names of `fd` into `list`.
 * Returns the length, or -1 with errno set. Why C: <sys/xattr.h> is not imported.
 */
ssize_t stk_flistxattr(int fd, char *_Nullable list, size_t size);

/*
 * fgetxattr(2): the value of attribute `name` of `fd` into `value`.
 * Returns the length, or -1 with errno set (ENODATA when absent). Why C: as above.
 */
ssize_t stk_fgetxattr(int fd, const char *name, void *_Nullable value, size_t size);

/*
 * fsetxattr(2) with no flags: sets `name` of `fd` to `size` bytes of `value`
 * (the image cache marks opaque directories with trusted.overlay.opaque).
 * Returns 0, or -1 with errno set. Why C: as above.
 */
int stk_fsetxattr(int fd, const char *name, const void *value, size_t size);

#pragma clang assume_nonnull end
#endif
