import CStockade
import Glibc
import StockadePolicy

/// A user namespace that only carries an id map, for `mount_setattr(MOUNT_ATTR_IDMAP)`: image
/// layers, the workspace's lower layer and writable volumes are shown to the worker through one.
/// Made by a short-lived child (see `stk_idmap_userns`), which is killed and reaped before this returns.
enum IdMappedUserNamespace {
    /// The namespace's descriptor. `stage` and `purpose` name the failure: "cannot create the id map
    /// for PURPOSE".
    static func make(uidMap: String, gidMap: String, stage: SetupStage, purpose: String) throws(LinuxError) -> Int32 {
        let fd = stk_idmap_userns(uidMap, gidMap)
        guard fd >= 0 else {
            throw LinuxError(.setup, stage: stage, errno: errno,
                             "cannot create the id map for \(purpose): \(String(cString: strerror(errno))); user namespaces are required")
        }
        return fd
    }
}
