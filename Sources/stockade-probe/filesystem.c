/* Threat class 5, filesystem: writes to the read-only host view. */
#define _GNU_SOURCE
#include "probe_util.h"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* Creates (and removes at once) a uniquely named file in /usr, /etc, /bin, /dev and /. */
STK_PROBE(probe_write_host_view) {
    (void)argc; (void)argv;
    const char *dirs[] = {"/usr", "/etc", "/bin", "/dev", "/"};
    char wrote[128] = "", refused[256] = "";
    for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++) {
        char path[128];
        snprintf(path, sizeof path, "%s/.stockade-probe-%d", strcmp(dirs[i], "/") ? dirs[i] : "", (int)getpid());
        int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd >= 0) {
            close(fd);
            unlink(path);
            size_t n = strlen(wrote);
            snprintf(wrote + n, sizeof wrote - n, "%s%s", n ? " " : "", dirs[i]);
        } else {
            size_t n = strlen(refused);
            snprintf(refused + n, sizeof refused - n, "%s%s=%s", n ? " " : "", dirs[i], stk_errno_name(errno));
        }
    }
    if (*wrote) return stk_report(STK_PROBE_SUCCEEDED, "write-host-view", "created files in %s", wrote);
    return stk_report(STK_PROBE_BLOCKED, "write-host-view", "refused: %s", refused);
}
