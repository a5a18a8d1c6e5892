import CStockade
import Glibc
import StockadePolicy

/// The worker's `/` from an image: an overlay whose lower layers are the image's cached layer
/// directories, read-only, nosuid, nodev and idmapped onto the run's own host id range (the cache
/// keeps the image's numeric ids, 0..65535, so one unpacked copy serves every run whatever its
/// range), and whose upper layer is a small bounded tmpfs holding only what the supervisor puts
/// there before the worker starts: every mount point and the generated `/etc` files. The child
/// attaches it as its root, mounts on top, and makes it read-only after `pivot_root`.
public enum ImageRoot {
    /// `resolved`: the layers are paths resolved when they were checked (a `--rootfs` directory): no
    /// link is followed to them now, so one swapped in since fails the run (`ELOOP`).
    public static func mount(layers: [String], anchor: String, layout: RootLayout, hostIdBase: UInt32, idCount: UInt32,
                             upperBytes: Int64 = 4 << 20, resolved: Bool = false) throws(LinuxError) -> Int32 {
        guard !layers.isEmpty else { throw LinuxError(.setup, stage: .image, errno: EINVAL, "the image has no layers") }
        let upper = stk_tmpfs_detached(UInt64(upperBytes), 4096, hostIdBase, hostIdBase, 0o755)
        guard upper >= 0 else {
            throw LinuxError(.setup, stage: .image, errno: errno, "cannot create the image root's upper layer: \(String(cString: strerror(errno)))")
        }
        defer { close(upper) }
        let owner = (hostIdBase, hostIdBase)
        try makeDirectory(upper, "upper", mode: 0o755, owner: owner)
        try makeDirectory(upper, "work", mode: 0o700, owner: nil)
        try makeDirectory(upper, "lower", mode: 0o755, owner: nil)
        for i in layers.indices { try makeDirectory(upper, "lower/\(i)", mode: 0o755, owner: nil) }
        for point in layout.mountPoints() {
            let parts = point.path.split(separator: "/").map(String.init)
            var current = "upper"
            for (i, part) in parts.enumerated() {
                current += "/" + part
                if i == parts.count - 1 && point.isFile {
                    try makeFile(upper, current, contents: [], mode: 0o444, owner: owner)
                } else {
                    try makeDirectory(upper, current, mode: i == parts.count - 1 ? point.mode : 0o755, owner: owner)
                }
            }
        }
        try makeDirectory(upper, "upper/etc", mode: 0o755, owner: owner)
        for file in layout.imageFiles() { try makeFile(upper, "upper" + file.path, contents: file.contents, mode: 0o644, owner: owner) }

        let map = "0 \(hostIdBase) \(idCount)\n"
        let ns = try IdMappedUserNamespace.make(uidMap: map, gidMap: map, stage: .image, purpose: "the image's layers")
        defer { close(ns) }
        let paths = layers.map { strdup($0) }
        defer { for p in paths { free(p) } }
        var stage: UnsafePointer<CChar>? = nil
        let fd = paths.map { UnsafePointer($0!) }.withUnsafeBufferPointer { buffer in
            stk_image_root(anchor, upper, buffer.baseAddress!, buffer.count, ns, resolved ? 1 : 0, &stage)
        }
        guard fd >= 0 else {
            let e = errno
            let step = stage.map { String(cString: $0) } ?? "overlay"
            let hint = step == "idmap" ? ": the image cache's filesystem must support idmapped mounts (Linux 5.12+; ext4, xfs, btrfs, tmpfs 6.3+)"
                : step == "overlay" ? ": overlayfs with idmapped lower layers is required (Linux 5.19+, CONFIG_OVERLAY_FS)"
                : e == ELOOP && resolved ? ": " + LinuxError.linkSwappedIn : ""
            throw LinuxError(.setup, stage: .image, errno: e, "cannot mount the image's layers as the worker's root (\(step): \(String(cString: strerror(e))))\(hint)")
        }
        return fd
    }

    /// A directory beneath the fresh tmpfs (no link can be in it: only the supervisor wrote there).
    private static func makeDirectory(_ root: Int32, _ path: String, mode: UInt32, owner: (UInt32, UInt32)?) throws(LinuxError) {
        if mkdirat(root, path, mode_t(mode)) != 0 {
            var st = stat()
            guard errno == EEXIST, fstatat(root, path, &st, AT_SYMLINK_NOFOLLOW) == 0, st.st_mode & S_IFMT == S_IFDIR else {
                throw LinuxError(.setup, stage: .image, errno: errno, "cannot make \(path) in the image root's upper layer: \(String(cString: strerror(errno)))")
            }
            return
        }
        if let owner, fchownat(root, path, owner.0, owner.1, AT_SYMLINK_NOFOLLOW) != 0 {
            throw LinuxError(.setup, stage: .image, errno: errno, "cannot give \(path) to the worker's root: \(String(cString: strerror(errno)))")
        }
    }

    private static func makeFile(_ root: Int32, _ path: String, contents: [UInt8], mode: UInt32, owner: (UInt32, UInt32)) throws(LinuxError) {
        let fd = openat(root, path, O_CREAT | O_TRUNC | O_WRONLY | O_NOFOLLOW | O_CLOEXEC, mode_t(mode))
        guard fd >= 0 else {
            throw LinuxError(.setup, stage: .image, errno: errno, "cannot write \(path) in the image root's upper layer: \(String(cString: strerror(errno)))")
        }
        defer { close(fd) }
        let n = contents.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        guard n == contents.count, fchown(fd, owner.0, owner.1) == 0, fchmod(fd, mode_t(mode)) == 0 else {
            throw LinuxError(.setup, stage: .image, errno: errno, "cannot write \(path) in the image root's upper layer: \(String(cString: strerror(errno)))")
        }
    }
}
