import CStockade
import Glibc

/// The worker's copy-on-write `/workspace`, mounted by the supervisor in the
/// initial user namespace and attached by the worker's init: overlay with the
/// real workspace as a read-only lower layer and the run directory's `upper`
/// and `work`. The lower layer is idmapped so that files owned by the
/// workspace's owner appear owned by the worker (others stay read-only);
/// the worker's changes land in `upper`, never in the workspace.
public enum WorkspaceOverlay {
    /// Returns the detached overlay's mount fd (the caller closes it after the spawn).
    public static func mount(workspace: String, upper: String, work: String,
                             workerHostUid: UInt32, workerHostGid: UInt32) throws(LinuxError) -> Int32 {
        var st = stat()
        guard stat(workspace, &st) == 0 else {
            throw LinuxError(.setup, stage: "workspace", errno: errno,
                             "cannot use --workspace \(workspace): \(String(cString: strerror(errno)))")
        }
        guard st.st_mode & S_IFMT == S_IFDIR else {
            throw LinuxError(.setup, stage: "workspace", errno: ENOTDIR, "--workspace \(workspace) is not a directory")
        }
        // The overlay's root takes its owner from upper: the worker's.
        guard chown(upper, workerHostUid, workerHostGid) == 0, chmod(upper, 0o755) == 0 else {
            throw LinuxError(.setup, stage: "workspace", errno: errno, "cannot hand \(upper) to the worker's uid")
        }
        let ns = stk_idmap_userns("\(st.st_uid) \(workerHostUid) 1\n", "\(st.st_gid) \(workerHostGid) 1\n")
        guard ns >= 0 else {
            throw LinuxError(.setup, stage: "workspace", errno: errno,
                             "cannot create the id map for the workspace: \(String(cString: strerror(errno))); user namespaces are required")
        }
        defer { close(ns) }
        var stage: UnsafePointer<CChar>? = nil
        let fd = stk_workspace_overlay(workspace, upper, work, ns, &stage)
        guard fd >= 0 else {
            let e = errno
            let step = stage.map { String(cString: $0) } ?? "overlay"
            let hint = step == "idmap" ? ": the workspace's filesystem must support idmapped mounts (Linux 5.12+; ext4, xfs, btrfs, tmpfs 6.3+)"
                : step == "overlay" ? ": overlayfs with idmapped lower layers is required (Linux 5.19+, CONFIG_OVERLAY_FS)" : ""
            throw LinuxError(.setup, stage: "workspace", errno: e,
                             "cannot mount the copy-on-write workspace over \(workspace) (\(step): \(String(cString: strerror(e))))\(hint)")
        }
        return fd
    }
}
