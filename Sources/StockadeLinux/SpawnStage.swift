import CStockade
import Glibc
import StockadePolicy

/// Names and remedies for the stages of `stk_spawn`.
enum SpawnStage {
    static func name(_ stage: Int32) -> SetupStage {
        switch UInt32(stage) {
        case STK_STAGE_PIPE.rawValue: .pipe
        case STK_STAGE_CLONE.rawValue: .clone
        case STK_STAGE_USERNS_MAP.rawValue: .usernsMap
        case STK_STAGE_CGROUP.rawValue: .cgroupJoin
        case STK_STAGE_SYNC.rawValue: .sync
        case STK_STAGE_IDENTITY.rawValue: .identity
        case STK_STAGE_CGROUPNS.rawValue: .cgroupNamespace
        case STK_STAGE_HOSTNAME.rawValue: .hostname
        case STK_STAGE_MOUNT_PRIVATE.rawValue: .mountPrivate
        case STK_STAGE_ROOT.rawValue: .root
        case STK_STAGE_MOUNTS.rawValue: .mounts
        case STK_STAGE_PIVOT_ROOT.rawValue: .pivotRoot
        case STK_STAGE_NETWORK.rawValue: .network
        case STK_STAGE_WORKDIR.rawValue: .workdir
        case STK_STAGE_RLIMITS.rawValue: .rlimits
        case STK_STAGE_SETSID.rawValue: .setsid
        case STK_STAGE_CAPABILITIES.rawValue: .capabilities
        case STK_STAGE_CREDENTIALS.rawValue: .credentials
        case STK_STAGE_NO_NEW_PRIVS.rawValue: .noNewPrivs
        case STK_STAGE_PARENT_DEATH.rawValue: .parentDeathSignal
        case STK_STAGE_STDIO.rawValue: .stdio
        case STK_STAGE_FDS.rawValue: .closeFds
        case STK_STAGE_SECCOMP.rawValue: .seccomp
        case STK_STAGE_EXEC.rawValue: .exec
        case STK_STAGE_HELPER.rawValue: .spawnHelper
        default: .unknown
        }
    }

    static func error(stage: Int32, errno code: Int32, detail: Int32, spec: SandboxSpec) -> LinuxError {
        let name = name(stage)
        let reason = String(cString: strerror(code))
        let message: String
        switch UInt32(stage) {
        case STK_STAGE_CLONE.rawValue where code == EPERM || code == ENOSPC:
            message = "cannot create the worker's namespaces (\(reason)): user namespaces may be disabled; " +
                "run as root, or set kernel.unprivileged_userns_clone=1 and raise user.max_user_namespaces"
        case STK_STAGE_CLONE.rawValue where code == ENOSYS:
            message = "clone3 is not available: Stockade needs Linux 5.7 or later"
        case STK_STAGE_CLONE.rawValue:
            message = "clone3 into new namespaces failed: \(reason)"
        case STK_STAGE_USERNS_MAP.rawValue:
            message = "cannot map the worker's ids to host ids \(spec.hostIdBase)..\(spec.hostIdBase + spec.idCount - 1) (\(reason)): the supervisor must run as root"
        case STK_STAGE_ROOT.rawValue:
            message = "cannot mount the worker's root on \(spec.rootDirectory) (\(reason)): the directory must exist"
        case STK_STAGE_MOUNTS.rawValue:
            let step = detail >= 0 && Int(detail) < spec.mounts.count ? " at step \(spec.mounts[Int(detail)])" : ""
            message = "cannot build the worker's filesystem\(step): \(reason)"
        case STK_STAGE_PIVOT_ROOT.rawValue:
            message = "pivot_root into the worker's root failed: \(reason)"
        case STK_STAGE_SECCOMP.rawValue:
            message = "cannot install the seccomp filter (\(reason)): the kernel needs CONFIG_SECCOMP_FILTER and user notifications (Linux 5.0+)"
        case STK_STAGE_SYNC.rawValue where code == ETIMEDOUT:
            message = "the worker did not reach execve within 15 s: the profile's seccomp policy may deny a call made " +
                "just before it (close, prlimit64, rt_sigprocmask, read, execve); allow those calls"
        case STK_STAGE_EXEC.rawValue where code == ENOENT:
            message = "command not found: \(spec.argv.first ?? "")"
        case STK_STAGE_EXEC.rawValue:
            message = "cannot execute \(spec.argv.first ?? ""): \(reason)"
        case STK_STAGE_CGROUP.rawValue:
            message = "cannot place the worker in its cgroup: \(reason)"
        case STK_STAGE_HELPER.rawValue where code == ESRCH:
            message = "no spawn helper is left: helpers are forked once, before the supervisor loads anything " +
                "(Supervisor.prepareToSpawn), and every one has died or none was prepared; start a new supervisor"
        case STK_STAGE_HELPER.rawValue:
            message = "the spawn helper stopped answering (\(reason))" +
                (detail == 1 ? "; the half-made worker was killed and reaped" : "") + "; other helpers, if any, go on"
        default:
            message = "sandbox setup failed at \(name.rawValue): \(reason)"
        }
        // Killed by the spawn path itself: a worker stuck before execve, or one whose helper was lost.
        let killed = (UInt32(stage) == STK_STAGE_SYNC.rawValue && code == ETIMEDOUT) || (UInt32(stage) == STK_STAGE_HELPER.rawValue && detail == 1)
        return LinuxError(UInt32(stage) == STK_STAGE_EXEC.rawValue ? .exec : .setup, stage: name, errno: code, message, killedWorker: killed)
    }
}
