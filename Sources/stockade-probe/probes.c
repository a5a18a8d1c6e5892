/* The probe table: name -> function. Each probe lives with its threat class
 * (namespaces.c, seccomp.c, capabilities.c, resources.c, filesystem.c,
 * network.c, descriptors.c). */
#define _GNU_SOURCE
#include "probe_util.h"
#include <string.h>
#include <unistd.h>

/* Prints the effective uid; a smoke probe that always succeeds. */
static int probe_whoami(int argc, char **argv) {
    (void)argc; (void)argv;
    printf("uid=%d gid=%d\n", (int)getuid(), (int)getgid());
    return STK_PROBE_SUCCEEDED;
}

static const struct { const char *name; stk_probe_fn fn; const char *args; } probes[] = {
    {"whoami", probe_whoami, ""},
    /* 1 namespaces */
    {"host-pids", probe_host_pids, ""},
    {"userns", probe_userns, ""},
    {"clone-newuser", probe_clone_newuser, ""},
    {"clone3-newuser", probe_clone3_newuser, ""},
    {"setns", probe_setns, ""},
    {"mount-tmpfs", probe_mount_tmpfs, ""},
    {"mount-proc", probe_mount_proc, ""},
    {"mount-sysfs", probe_mount_sysfs, ""},
    {"sethostname", probe_sethostname, ""},
    {"proc-sys-write", probe_proc_sys_write, ""},
    {"proc-masked", probe_proc_masked, "PATH..."},
    {"proc-write", probe_proc_write, "PATH..."},
    {"chroot", probe_chroot, ""},
    {"pivot-root", probe_pivot_root, ""},
    {"cgroup-release-agent", probe_cgroup_release_agent, ""},
    {"helper-write", probe_helper_write, "PATH..."},
    /* 2 seccomp */
    {"add-key", probe_add_key, ""},
    {"keyctl", probe_keyctl, ""},
    {"keyctl-int80", probe_keyctl_int80, ""},
    {"x32-getpid", probe_x32_getpid, ""},
    {"io-uring-setup", probe_io_uring_setup, ""},
    {"io-setup", probe_io_setup, ""},
    {"userfaultfd", probe_userfaultfd, ""},
    {"perf-event-open", probe_perf_event_open, ""},
    {"bpf", probe_bpf, ""},
    {"ptrace", probe_ptrace, ""},
    {"process-vm-readv", probe_process_vm_readv, ""},
    {"open-by-handle-at", probe_open_by_handle_at, ""},
    {"init-module", probe_init_module, ""},
    {"clock-settime", probe_clock_settime, ""},
    {"personality", probe_personality, ""},
    {"socket-vsock", probe_socket_vsock, ""},
    {"socket-packet", probe_socket_packet, ""},
    {"socket-alg", probe_socket_alg, ""},
    {"netlink-audit", probe_netlink_audit, ""},
    /* 3 capabilities */
    {"caps", probe_caps, ""},
    {"no-new-privs", probe_no_new_privs, ""},
    {"seccomp-mode", probe_seccomp_mode, ""},
    {"setuid0", probe_setuid0, ""},
    {"capset", probe_capset, ""},
    {"uidmap", probe_uidmap, ""},
    {"mknod-dev", probe_mknod_dev, ""},
    {"ptrace-init", probe_ptrace_init, ""},
    /* 4 resources */
    {"fork-bomb", probe_fork_bomb, "N"},
    {"mem-bomb", probe_mem_bomb, "MB"},
    {"tmpfs-fill", probe_tmpfs_fill, "MB [DIR]"},
    {"fd-bomb", probe_fd_bomb, "[N]"},
    {"rt-priority", probe_rt_priority, ""},
    {"core-dump", probe_core_dump, ""},
    {"daemon", probe_daemon, "[SECONDS]"},
    {"spin", probe_spin, "SECONDS"},
    /* 5 filesystem */
    {"write-host-view", probe_write_host_view, ""},
    /* 6 network */
    {"host-loopback", probe_host_loopback, "PORT"},
    {"abstract-unix", probe_abstract_unix, "NAME"},
    {"unix-path", probe_unix_path, "PATH"},
    {"raw-socket", probe_raw_socket, ""},
    /* 14 egress */
    {"egress-connect", probe_egress_connect, "NAME ADDR PORT [ADMITTED]"},
    /* 7 descriptors and terminals */
    {"fds", probe_fds, ""},
    {"tiocsti", probe_tiocsti, ""},
    {"cwd-outside", probe_cwd_outside, ""},
    /* 8 supervisor robustness */
    {"spoof-sigsys", probe_spoof_sigsys, ""},
    {"spoof-oom", probe_spoof_oom, ""},
    {"exe-overwrite", probe_exe_overwrite, "PATH..."},
};

int stk_probe_run(const char *name, int argc, char **argv) {
    for (size_t i = 0; i < sizeof probes / sizeof probes[0]; i++)
        if (strcmp(probes[i].name, name) == 0) return probes[i].fn(argc, argv);
    fprintf(stderr, "stockade-probe: unknown probe %s\n", name);
    return STK_PROBE_USAGE;
}

void stk_probe_list(FILE *out) {
    for (size_t i = 0; i < sizeof probes / sizeof probes[0]; i++)
        fprintf(out, "%s%s%s\n", probes[i].name, *probes[i].args ? " " : "", probes[i].args);
}
