#ifndef STK_NOTIFY_H
#define STK_NOTIFY_H
#include <stdint.h>

#pragma clang assume_nonnull begin

/* Seccomp user notifications. Why C: the ioctl numbers are function-like macros. */
struct stk_notification {
    uint64_t id;
    uint32_t pid;
    int32_t nr;
    uint32_t arch;
    uint64_t instruction_pointer;
    uint64_t args[6];
};
/* Receives one notification; returns 0, or -1 with errno (ENOENT: the target died). */
int stk_notify_receive(int listener, struct stk_notification *_Nonnull out);
/* Answers notification `id` with -error (error > 0), or lets it continue when error == 0. */
int stk_notify_respond(int listener, uint64_t id, int error);

#pragma clang assume_nonnull end
#endif
