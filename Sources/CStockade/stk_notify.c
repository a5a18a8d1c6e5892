/* Seccomp user notifications: receive one, answer it. */
#define _GNU_SOURCE
#include "stk_notify.h"

#include <linux/seccomp.h>
#include <string.h>
#include <sys/ioctl.h>

int stk_notify_receive(int listener, struct stk_notification *out) {
    struct seccomp_notif notif;
    memset(&notif, 0, sizeof notif);
    if (ioctl(listener, SECCOMP_IOCTL_NOTIF_RECV, &notif) < 0) return -1;
    out->id = notif.id;
    out->pid = notif.pid;
    out->nr = notif.data.nr;
    out->arch = notif.data.arch;
    out->instruction_pointer = notif.data.instruction_pointer;
    for (int i = 0; i < 6; i++) out->args[i] = notif.data.args[i];
    return 0;
}

int stk_notify_respond(int listener, uint64_t id, int error) {
    struct seccomp_notif_resp resp;
    memset(&resp, 0, sizeof resp);
    resp.id = id;
    if (error > 0) {
        resp.error = -error;
    } else {
        resp.flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
    }
    return ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, &resp);
}
