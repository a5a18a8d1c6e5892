#define _GNU_SOURCE
#include "stk_xattr.h"
#include <fcntl.h>
#include <sys/xattr.h>

const int STK_O_PATH = O_PATH;

ssize_t stk_flistxattr(int fd, char *list, size_t size) {
    return flistxattr(fd, list, size);
}

ssize_t stk_fgetxattr(int fd, const char *name, void *value, size_t size) {
    return fgetxattr(fd, name, value, size);
}

int stk_fsetxattr(int fd, const char *name, const void *value, size_t size) {
    return fsetxattr(fd, name, value, size, 0);
}
