import CStockade
import Glibc
import StockadePolicy

/// The worker's copy-on-write `/workspace`, mounted by the supervisor in the
/// initial user namespace and attached by the worker's init: overlay with the
/// real workspace as a read-only lower layer and the run directory's `upper`
/// and `work`. The lower layer is idmapped so that files owned by the
/// workspace's owner appear owned by the worker (others stay read-only);
/// the worker's changes land in `upper`, never in the workspace.
public enum WorkspaceOverlay {
    /// The overlay's mount fd (attached by the worker's init) and an fd of the root of the bounded
    /// tmpfs holding its upper (`data/`) and work directories. Both live only as long as these
    /// descriptors and the worker's mount namespace: they are made in a private mount namespace
    /// (see `stk_workspace_overlay`), never mounted on the host.
    public static func mount(workspace: String, anchor: String, sizeBytes: Int64, inodes: Int,
                             workerHostUid: UInt32, workerHostGid: UInt32) throws(LinuxError) -> (overlay: Int32, layer: Int32) {
        // `workspace` was resolved (realpath) when the run was planned: no link is followed to it now,
        // and the tree mounted must be the directory whose owner is read here (checked by device and inode).
        var st = stat()
        // O_DIRECTORY also mounts an automount point there (O_PATH alone does not).
        let at = stk_openat2(AT_FDCWD, workspace, UInt64(STK_O_PATH | O_CLOEXEC | O_DIRECTORY), 0,
                             UInt64(STK_RESOLVE_NO_SYMLINKS | STK_RESOLVE_NO_MAGICLINKS))
        guard at >= 0, fstat(at, &st) == 0 else {
            let e = errno
            if at >= 0 { close(at) }
            let why = e == ELOOP ? LinuxError.linkSwappedIn : String(cString: strerror(e))
            throw LinuxError(.setup, stage: .workspace, errno: e, "cannot use --workspace \(workspace): \(why)")
        }
        close(at)
        guard st.st_mode & S_IFMT == S_IFDIR else {
            throw LinuxError(.setup, stage: .workspace, errno: ENOTDIR, "--workspace \(workspace) is not a directory")
        }
        let ns = try IdMappedUserNamespace.make(uidMap: "\(st.st_uid) \(workerHostUid) 1\n", gidMap: "\(st.st_gid) \(workerHostGid) 1\n",
                                                stage: .workspace, purpose: "the workspace")
        defer { close(ns) }
        var stage: UnsafePointer<CChar>? = nil
        var layer: Int32 = -1
        let fd = stk_workspace_overlay(workspace, UInt64(st.st_dev), UInt64(st.st_ino), anchor, "size=\(sizeBytes),nr_inodes=\(inodes),mode=0700",
                                       workerHostUid, workerHostGid, ns, &layer, &stage)
        guard fd >= 0 else {
            let e = errno
            let step = stage.map { String(cString: $0) } ?? "overlay"
            let hint = step == "idmap" ? ": the workspace's filesystem must support idmapped mounts (Linux 5.12+; ext4, xfs, btrfs, tmpfs 6.3+)"
                : step == "overlay" ? ": overlayfs with idmapped lower layers is required (Linux 5.19+, CONFIG_OVERLAY_FS)"
                : step == "tmpfs" ? ": the bounded tmpfs for the workspace's changes could not be mounted"
                : step == "changed" ? ": the directory at that path was replaced while the run was being prepared"
                : step == "open_tree" && e == ELOOP ? ": " + LinuxError.linkSwappedIn : ""
            throw LinuxError(.setup, stage: .workspace, errno: e,
                             "cannot mount the copy-on-write workspace over \(workspace) (\(step): \(String(cString: strerror(e))))\(hint)")
        }
        return (fd, layer)
    }
}
