/*
 * Helpers shared by the probes: one-line reports, errno names, temp dirs.
 * Every probe prints exactly one line (two at most), ASCII only, and returns
 * one of the exit codes of probes.h.
 */
#ifndef STK_PROBE_UTIL_H
#define STK_PROBE_UTIL_H
#include "probes.h"
#include <stddef.h>

/* Prints "NAME: MESSAGE" on stdout (formatted, ASCII), flushes, returns `code`. */
int stk_report(int code, const char *name, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* "EPERM", "ENOENT", ... or "E?" for an unknown value. */
const char *stk_errno_name(int err);
/* The usual verdict for a call that should be refused: rc >= 0 means it worked
 * (77); EPERM/EACCES/ENOSYS-as-documented mean refused (0); `unknown` errnos
 * (a list ending in 0) mean the probe could not tell (2); any other errno
 * means the call reached the kernel's implementation, which a filter should
 * have prevented (77). */
int stk_verdict_call(const char *name, const char *what, long rc, int err, const int *cannot_tell);
/* mkdtemp under $TMPDIR, /tmp, then the working directory; writes the path
 * into `out` (size `size`). Returns 0 or -1 with errno set. */
int stk_temp_dir(char *out, size_t size);
/* Parses a decimal argument in [min, max]; returns -1 when absent or invalid. */
long stk_arg_long(int argc, char **argv, int index, long min, long max);
/* Whether `path` may be opened for writing, by the kernel's own permission
 * walk (magic links' ptrace check, read-only mounts, modes) without opening
 * it: no write access is ever taken, so a positive control run unsandboxed
 * changes nothing and wakes no watcher. 0, or the errno (EROFS, EACCES, ...). */
int stk_writable(const char *path);
/* Whether CAP_SYS_ADMIN is in the effective set. A probe makes a namespace of
 * its own (to stay harmless unsandboxed) only when it has it: without it the
 * unshare could only fail, and under a kill-on-violation profile it would end
 * the probe before the attempt that is its control's evidence. */
int stk_has_sys_admin(void);
/* Forks a child that sleeps until killed (dies with its parent). Returns its pid or -1. */
int stk_sleeping_child(void);
/* SIGKILLs and reaps `pid`. */
void stk_kill_child(int pid);

typedef int (*stk_probe_fn)(int argc, char **argv);
#define STK_PROBE(fn) int fn(int argc, char **argv)

/* namespaces (threat class 1) */
STK_PROBE(probe_host_pids); STK_PROBE(probe_userns); STK_PROBE(probe_clone_newuser);
STK_PROBE(probe_clone3_newuser); STK_PROBE(probe_setns); STK_PROBE(probe_mount_tmpfs);
STK_PROBE(probe_mount_proc); STK_PROBE(probe_mount_sysfs); STK_PROBE(probe_sethostname);
STK_PROBE(probe_proc_sys_write); STK_PROBE(probe_proc_masked); STK_PROBE(probe_proc_write); STK_PROBE(probe_chroot); STK_PROBE(probe_pivot_root);
STK_PROBE(probe_cgroup_release_agent); STK_PROBE(probe_helper_write);
/* seccomp (2) */
STK_PROBE(probe_add_key); STK_PROBE(probe_keyctl); STK_PROBE(probe_keyctl_int80); STK_PROBE(probe_x32_getpid);
STK_PROBE(probe_io_uring_setup); STK_PROBE(probe_io_setup); STK_PROBE(probe_userfaultfd); STK_PROBE(probe_perf_event_open);
STK_PROBE(probe_bpf); STK_PROBE(probe_ptrace); STK_PROBE(probe_process_vm_readv);
STK_PROBE(probe_open_by_handle_at); STK_PROBE(probe_init_module); STK_PROBE(probe_clock_settime);
STK_PROBE(probe_personality); STK_PROBE(probe_socket_vsock); STK_PROBE(probe_socket_packet);
STK_PROBE(probe_socket_alg); STK_PROBE(probe_netlink_audit);
/* capabilities (3) */
STK_PROBE(probe_caps); STK_PROBE(probe_no_new_privs); STK_PROBE(probe_seccomp_mode); STK_PROBE(probe_setuid0);
STK_PROBE(probe_capset); STK_PROBE(probe_uidmap); STK_PROBE(probe_mknod_dev); STK_PROBE(probe_ptrace_init);
/* resources (4) */
STK_PROBE(probe_fork_bomb); STK_PROBE(probe_mem_bomb); STK_PROBE(probe_tmpfs_fill); STK_PROBE(probe_fd_bomb);
STK_PROBE(probe_rt_priority); STK_PROBE(probe_core_dump); STK_PROBE(probe_daemon); STK_PROBE(probe_spin);
/* filesystem (5) */
STK_PROBE(probe_write_host_view);
/* network (6) */
STK_PROBE(probe_host_loopback); STK_PROBE(probe_abstract_unix); STK_PROBE(probe_unix_path);
STK_PROBE(probe_raw_socket);
/* egress (14) */
STK_PROBE(probe_egress_connect);
/* descriptors and terminals (7) */
STK_PROBE(probe_fds); STK_PROBE(probe_tiocsti); STK_PROBE(probe_cwd_outside);
/* supervisor robustness (8) */
STK_PROBE(probe_spoof_sigsys); STK_PROBE(probe_spoof_oom); STK_PROBE(probe_exe_overwrite);
#endif
