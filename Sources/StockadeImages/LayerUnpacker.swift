import CArchive
import CStockade
import Glibc

/// What one import has spent so far, checked against the image's bounds across layers.
struct ImageBudget {
    var entries = 0
    var bytes: Int64 = 0
    var directoryOpens = 0
}

/// What unpacking one layer did.
public struct LayerStats: Sendable, Equatable {
    public var entries = 0
    public var bytes: Int64 = 0
    /// Entries whose setuid or setgid bit was dropped.
    public var strippedModes = 0
    public var whiteouts = 0
}

/// Reads one layer blob with libarchive and writes it beneath a directory descriptor, entry by
/// entry, by the project's rules: no absolute or `..` paths; no relative symlink whose target
/// climbs above the layer root (absolute targets are kept: they resolve inside the worker's root);
/// hard links only to earlier regular files of the same layer; no device nodes, FIFOs or sockets;
/// setuid and setgid bits dropped; owners within the 65,536 ids of a worker's range; no extended
/// attributes kept (so no file capabilities, no overlay xattrs from the archive). Nothing is
/// ever created through a symlink: parents are opened with `openat2(RESOLVE_BENEATH |
/// RESOLVE_NO_SYMLINKS)` and files with `O_NOFOLLOW | O_EXCL`. OCI whiteouts become overlayfs
/// whiteouts (a 0/0 character device) and opaque markers (`trusted.overlay.opaque`), so the
/// layer is an overlay lower layer as it stands. The blob's SHA-256 is computed over the very
/// bytes libarchive reads, and the caller uses the tree only when it matches.
struct LayerUnpacker {
    let root: Int32
    let bounds: ImageBounds
    let compression: LayerCompression
    var stats = LayerStats()
    /// The regular files made so far (hard links may name only these), as the SHA-256 of each path:
    /// 32 bytes an entry, not up to 4 KiB.
    private var regularFiles: Set<Digest> = []
    /// The directory the last entry went into, kept open: entries come grouped by directory, and a
    /// directory of a layer is never replaced, so the next entry there (or beneath it) starts from it
    /// instead of walking from the root again.
    private var lastParent: (parts: [[UInt8]], fd: Int32)?
    /// Directories made because an entry lay beneath them, not named by an entry of their own.
    private var implicitDirectories = 0
    /// Directories opened to place this layer's entries, and by the layers before it.
    private var directoryOpens = 0
    private var directoryOpensBefore = 0

    static let maxIds: UInt32 = 65536

    init(root: Int32, bounds: ImageBounds, compression: LayerCompression) {
        self.root = root
        self.bounds = bounds
        self.compression = compression
    }

    /// Unpacks the archive read from `fd` and returns the digest and size of every byte of it.
    mutating func unpack(fd: Int32, budget: inout ImageBudget) throws(ImageError) -> (Digest, Int64) {
        defer { closeLastParent() }
        directoryOpensBefore = budget.directoryOpens
        defer { budget.directoryOpens = directoryOpensBefore + directoryOpens }
        // What the tar reader may take from the decompressor: the files' bytes and generous room for
        // headers. Checked as libarchive asks for input, so data it skips (a whiteout's or a hard
        // link's, which no file bound counts) cannot make a small blob decompress without end.
        let stream = bounds.maxLayerBytes + Int64(bounds.maxLayerEntries) * 8192
        let source = BlobSource(fd: fd, maxBytes: bounds.maxLayerBlobBytes, maxStreamBytes: stream)
        guard let archive = archive_read_new() else {
            if let why = stk_archive_load_error() { throw ImageError(.badArchive, "cannot load libarchive to unpack image layers: \(String(cString: why))") }
            throw ImageError(.badArchive, "libarchive could not allocate a reader")
        }
        defer { archive_read_free(archive) }
        // Only the filter the media type names, and only built in: never an external program.
        let filter: Int32
        switch compression {
        case .none: filter = archive_read_support_filter_none(archive)
        case .gzip: filter = archive_read_support_filter_gzip(archive)
        case .zstd: filter = archive_read_support_filter_zstd(archive)
        }
        guard filter == ARCHIVE_OK, archive_read_support_format_tar(archive) == ARCHIVE_OK else {
            throw ImageError(.badArchive, "this libarchive cannot read \(compression) layers without an external program (refused)")
        }
        let context = Unmanaged.passUnretained(source).toOpaque()
        guard archive_read_open(archive, context, nil, blobRead, nil) == ARCHIVE_OK else {
            throw source.error ?? ImageError(.badArchive, "cannot read the layer: \(Self.message(archive))")
        }
        var entry: OpaquePointer?
        while true {
            let r = archive_read_next_header(archive, &entry)
            if r == ARCHIVE_EOF { break }
            guard r >= ARCHIVE_WARN, let entry else {
                throw source.error ?? ImageError(.badArchive, "the layer is not a readable tar archive: \(Self.message(archive))")
            }
            // Also here: a small blob's input may all be read before the data it skips is decompressed.
            if let over = source.streamOver(archive) { throw over }
            stats.entries += 1
            budget.entries += 1
            let name = Self.bytes(archive_entry_pathname(entry))
            let shown = Self.show(name)
            guard stats.entries <= bounds.maxLayerEntries else {
                throw ImageError(.overBound, entry: shown, "the layer has more than \(bounds.maxLayerEntries) entries (stopped at \(shown))")
            }
            // Directories made as parents count too, here as in the layer's count.
            guard budget.entries + implicitDirectories <= bounds.maxImageEntries else {
                throw ImageError(.overBound, entry: shown, "the image has more than \(bounds.maxImageEntries) entries (stopped at \(shown))")
            }
            try place(entry, name: name, archive: archive, source: source, budget: &budget)
        }
        budget.entries += implicitDirectories
        guard budget.entries <= bounds.maxImageEntries else {
            throw ImageError(.overBound, "the image has more than \(bounds.maxImageEntries) entries")
        }
        // The last entry's data is skipped on the way to the end.
        if let over = source.streamOver(archive) { throw over }
        try source.drain()
        return (source.digest.finish(), source.digest.count)
    }

    // MARK: Entries

    private mutating func place(_ entry: OpaquePointer, name: [UInt8], archive: OpaquePointer, source: BlobSource,
                                budget: inout ImageBudget) throws(ImageError) {
        let shown = Self.show(name)
        let parts = try components(name, shown: shown)
        guard let last = parts.last else { return }  // "./": the layer root itself.
        let parent = try openParent(Array(parts.dropLast()), shown: shown)
        defer { close(parent) }
        let leaf = cName(last)

        if last.starts(with: Self.whiteoutPrefix) {
            try whiteout(parent: parent, parentParts: Array(parts.dropLast()), name: Array(last.dropFirst(Self.whiteoutPrefix.count)), shown: shown)
            return
        }
        let type = archive_entry_filetype(entry) & Mode.type
        let uid = archive_entry_uid(entry), gid = archive_entry_gid(entry)
        guard uid >= 0, gid >= 0, uid < Int64(Self.maxIds), gid < Int64(Self.maxIds) else {
            throw ImageError(.badEntry, entry: shown, "\(shown) is owned by \(uid):\(gid), outside the \(Self.maxIds) ids a worker's range maps (refused)")
        }
        let perm = UInt32(archive_entry_perm(entry)) & 0o7777
        let mode = perm & ~(Mode.setuid | Mode.setgid)
        if mode != perm { stats.strippedModes += 1 }

        if let target = archive_entry_hardlink(entry) {
            let targetName = Self.bytes(target)
            let targetParts = (try? components(targetName, shown: shown)) ?? []
            guard !targetParts.isEmpty, regularFiles.contains(Digest.of(Self.join(targetParts))) else {
                throw ImageError(.badEntry, entry: shown, "\(shown) is a hard link to \(Self.show(targetName)), which is not an earlier regular file of this layer (refused)")
            }
            try clear(parent: parent, leaf: leaf, parts: parts, shown: shown, forDirectory: false)
            let targetParent = try openParent(Array(targetParts.dropLast()), shown: shown)
            defer { close(targetParent) }
            guard linkat(targetParent, cName(targetParts.last!), parent, leaf, 0) == 0 else {
                throw fail(shown, errno, "cannot make the hard link")
            }
            regularFiles.insert(Digest.of(Self.join(parts)))
            return
        }

        switch type {
        case Mode.directory:
            var st = stat()
            if fstatat(parent, leaf, &st, AT_SYMLINK_NOFOLLOW) == 0 && st.st_mode & Mode.type == Mode.directory {
                // An earlier entry (or an implied parent): keep it, take this entry's metadata.
            } else {
                try clear(parent: parent, leaf: leaf, parts: parts, shown: shown, forDirectory: true)
                guard mkdirat(parent, leaf, 0o700) == 0 else { throw fail(shown, errno, "cannot create the directory") }
            }
            let dir = stk_openat2(parent, leaf, UInt64(O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC), 0,
                                  UInt64(STK_RESOLVE_BENEATH | STK_RESOLVE_NO_SYMLINKS))
            guard dir >= 0 else { throw fail(shown, errno, "cannot open the directory it made") }
            defer { close(dir) }
            guard fchown(dir, uid_t(uid), gid_t(gid)) == 0, fchmod(dir, mode_t(mode)) == 0 else { throw fail(shown, errno, "cannot set owner and mode") }
        case Mode.regular:
            try clear(parent: parent, leaf: leaf, parts: parts, shown: shown, forDirectory: false)
            let file = openat(parent, leaf, O_CREAT | O_EXCL | O_WRONLY | O_NOFOLLOW | O_CLOEXEC, 0o600)
            guard file >= 0 else { throw fail(shown, errno, "cannot create the file") }
            defer { close(file) }
            try copyData(archive, to: file, shown: shown, source: source, budget: &budget)
            guard fchown(file, uid_t(uid), gid_t(gid)) == 0, fchmod(file, mode_t(mode)) == 0 else { throw fail(shown, errno, "cannot set owner and mode") }
            regularFiles.insert(Digest.of(Self.join(parts)))
        case Mode.symlink:
            let target = Self.bytes(archive_entry_symlink(entry))
            try checkSymlink(target, depth: parts.count - 1, shown: shown)
            try clear(parent: parent, leaf: leaf, parts: parts, shown: shown, forDirectory: false)
            guard symlinkat(cName(target), parent, leaf) == 0 else { throw fail(shown, errno, "cannot create the symlink") }
            guard fchownat(parent, leaf, uid_t(uid), gid_t(gid), AT_SYMLINK_NOFOLLOW) == 0 else { throw fail(shown, errno, "cannot set the owner") }
        case Mode.character, Mode.block:
            throw ImageError(.badEntry, entry: shown, "\(shown) is a device node: image layers may not carry devices (refused)")
        default:
            throw ImageError(.badEntry, entry: shown, "\(shown) is a FIFO, socket or unknown file type (refused)")
        }
    }

    private static let whiteoutPrefix = Array(".wh.".utf8)
    private static let opaqueMarker = Array(".wh..wh..opq".utf8)

    private mutating func whiteout(parent: Int32, parentParts: [[UInt8]], name: [UInt8], shown: String) throws(ImageError) {
        stats.whiteouts += 1
        if Self.whiteoutPrefix + name == Self.opaqueMarker {
            let value: [UInt8] = [UInt8(ascii: "y")]
            guard stk_fsetxattr(parent, "trusted.overlay.opaque", value, 1) == 0 else {
                throw fail(shown, errno, "cannot mark the directory opaque (the cache's filesystem must take trusted.* extended attributes)")
            }
            return
        }
        guard !name.isEmpty, name != Array(".".utf8), name != Array("..".utf8), !name.starts(with: Self.whiteoutPrefix) else {
            throw ImageError(.badEntry, entry: shown, "\(shown) is a whiteout of \(Self.show(name).debugDescription), which names no entry of its directory (refused)")
        }
        let leaf = cName(name)
        try clear(parent: parent, leaf: leaf, parts: parentParts + [name], shown: shown, forDirectory: false)
        guard mknodat(parent, leaf, Mode.character, 0) == 0 else { throw fail(shown, errno, "cannot create the overlay whiteout") }
    }

    /// Makes room for an entry that replaces an earlier one of the same name (as tar does); a
    /// directory is never replaced by a non-directory.
    private mutating func clear(parent: Int32, leaf: [CChar], parts: [[UInt8]], shown: String, forDirectory: Bool) throws(ImageError) {
        var st = stat()
        guard fstatat(parent, leaf, &st, AT_SYMLINK_NOFOLLOW) == 0 else { return }
        guard st.st_mode & Mode.type != Mode.directory else {
            throw ImageError(.badEntry, entry: shown, "\(shown) replaces a directory of the same layer (refused)")
        }
        guard unlinkat(parent, leaf, 0) == 0 else { throw fail(shown, errno, "cannot replace the earlier entry") }
        regularFiles.remove(Digest.of(Self.join(parts)))
    }

    private mutating func copyData(_ archive: OpaquePointer, to file: Int32, shown: String, source: BlobSource,
                                   budget: inout ImageBudget) throws(ImageError) {
        var block: UnsafeRawPointer?
        var size = 0
        var offset: la_int64_t = 0
        // A sparse entry's blocks come at offsets with holes between them: what is charged is how far
        // the file reaches (its apparent size: the bound holds for whoever copies or reads it whole),
        // not the bytes the archive held. A file that ends in a hole reaches its size only at the end,
        // where the end's offset is that size.
        var reached: Int64 = 0
        while true {
            let r = archive_read_data_block(archive, &block, &size, &offset)
            guard r >= ARCHIVE_WARN else {
                throw source.error ?? ImageError(.badArchive, entry: shown, "cannot read the data of \(shown): \(Self.message(archive))")
            }
            guard offset >= 0, size >= 0 else { throw ImageError(.badArchive, entry: shown, "a data block of \(shown) at a negative offset") }
            let (end, overflow) = Int64(offset).addingReportingOverflow(Int64(size))
            guard !overflow else { throw ImageError(.badArchive, entry: shown, "a data block of \(shown) beyond any file size") }
            if r == ARCHIVE_EOF && end <= reached { return }
            let grown = max(0, end - reached)
            reached = max(reached, end)
            stats.bytes += grown
            budget.bytes += grown
            guard stats.bytes <= bounds.maxLayerBytes, end <= bounds.maxLayerBytes else {
                throw ImageError(.overBound, entry: shown, "the layer unpacks to more than \(bounds.maxLayerBytes) bytes (stopped in \(shown))")
            }
            guard budget.bytes <= bounds.maxImageBytes else {
                throw ImageError(.overBound, entry: shown, "the image unpacks to more than \(bounds.maxImageBytes) bytes (stopped in \(shown))")
            }
            if r == ARCHIVE_EOF {
                // The trailing hole: the file is extended to its size without writing a byte.
                guard ftruncate(file, off_t(end)) == 0 else { throw fail(shown, errno, "cannot extend the file to its size") }
                return
            }
            var done = 0
            while done < size, let block {
                let n = pwrite(file, block + done, size - done, off_t(offset) + off_t(done))
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else { throw fail(shown, errno, "cannot write the file") }
                done += n
            }
        }
    }

    // MARK: Paths

    /// The entry's path as components: "." and empty components dropped, `..` and absolute refused.
    private func components(_ name: [UInt8], shown: String) throws(ImageError) -> [[UInt8]] {
        guard !name.isEmpty else { throw ImageError(.badEntry, entry: shown, "an entry has an empty name (refused)") }
        guard name.count <= bounds.maxPathBytes else {
            throw ImageError(.overBound, entry: String(shown.prefix(80)) + "...", "an entry's path is \(name.count) bytes, over the bound of \(bounds.maxPathBytes)")
        }
        guard name.first != UInt8(ascii: "/") else {
            throw ImageError(.badEntry, entry: shown, "\(shown) is an absolute path: layer entries are relative to the layer root (refused)")
        }
        var parts: [[UInt8]] = []
        for part in name.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: true) {
            if part.elementsEqual(".".utf8) { continue }
            guard !part.elementsEqual("..".utf8) else {
                throw ImageError(.badEntry, entry: shown, "\(shown) has a .. component, which would leave the layer root (refused)")
            }
            guard part.count <= 255 else { throw ImageError(.badEntry, entry: shown, "\(shown) has a component over 255 bytes (refused)") }
            parts.append(Array(part))
        }
        guard parts.count <= bounds.maxPathComponents else {
            throw ImageError(.overBound, entry: String(shown.prefix(80)) + "...", "an entry's path has \(parts.count) components, over the bound of \(bounds.maxPathComponents)")
        }
        return parts
    }

    /// A relative target may not climb above the layer root from the link's directory.
    private func checkSymlink(_ target: [UInt8], depth: Int, shown: String) throws(ImageError) {
        guard !target.isEmpty, target.count <= bounds.maxPathBytes else {
            throw ImageError(.badEntry, entry: shown, "\(shown) is a symlink with an empty or over-long target (refused)")
        }
        guard target.first != UInt8(ascii: "/") else { return }
        var level = depth
        for part in target.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: true) {
            if part.elementsEqual(".".utf8) { continue }
            if part.elementsEqual("..".utf8) {
                level -= 1
                guard level >= 0 else {
                    throw ImageError(.badEntry, entry: shown, "\(shown) is a symlink to \(Self.show(target)), which escapes the layer root (refused)")
                }
            } else {
                level += 1
            }
        }
    }

    /// The directory of an entry, created (0755, owned by root of the image) where missing; never through a symlink.
    private mutating func openParent(_ parts: [[UInt8]], shown: String) throws(ImageError) -> Int32 {
        var start = 0
        var current: Int32
        if let last = lastParent, last.parts.count <= parts.count, parts.starts(with: last.parts) {
            start = last.parts.count
            current = dup(last.fd)
        } else {
            current = dup(root)
        }
        guard current >= 0 else { throw fail(shown, errno, "cannot duplicate the layer's descriptor") }
        for part in parts[start...] {
            directoryOpens += 1
            guard directoryOpensBefore + directoryOpens <= bounds.maxDirectoryOpens else {
                close(current)
                throw ImageError(.overBound, entry: shown,
                                 "placing the image's entries took more than \(bounds.maxDirectoryOpens) directory opens (stopped at \(shown)): entries that alternate between deep directories")
            }
            let leaf = cName(part)
            var next = stk_openat2(current, leaf, UInt64(O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC), 0,
                                   UInt64(STK_RESOLVE_BENEATH | STK_RESOLVE_NO_SYMLINKS))
            if next < 0 && errno == ENOENT {
                stats.entries += 1
                implicitDirectories += 1
                guard stats.entries <= bounds.maxLayerEntries else {
                    close(current)
                    throw ImageError(.overBound, entry: shown, "the layer has more than \(bounds.maxLayerEntries) entries (stopped at \(shown))")
                }
                if mkdirat(current, leaf, 0o755) == 0 || errno == EEXIST {
                    next = stk_openat2(current, leaf, UInt64(O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC), 0,
                                       UInt64(STK_RESOLVE_BENEATH | STK_RESOLVE_NO_SYMLINKS))
                }
            }
            let code = errno
            close(current)
            guard next >= 0 else {
                if code == ELOOP || code == ENOTDIR {
                    throw ImageError(.badEntry, entry: shown, errno: code,
                                     "\(shown) lies beneath \(Self.show(part)), a symlink or non-directory of the layer: entries are never written through links (refused)")
                }
                throw fail(shown, code, "cannot open its directory")
            }
            current = next
        }
        if start < parts.count || lastParent == nil {
            let kept = dup(current)
            if kept >= 0 {
                if let old = lastParent { close(old.fd) }
                lastParent = (parts, kept)
            }
        }
        return current
    }

    /// Closes the directory kept from the last entry.
    mutating func closeLastParent() {
        if let last = lastParent { close(last.fd) }
        lastParent = nil
    }

    private func fail(_ shown: String, _ code: Int32, _ what: String) -> ImageError {
        ImageError(.cache, entry: shown, errno: code, "\(shown): \(what): \(String(cString: strerror(code)))")
    }

    static func bytes(_ p: UnsafePointer<CChar>?) -> [UInt8] {
        guard let p else { return [] }
        return Array(UnsafeBufferPointer(start: UnsafeRawPointer(p).assumingMemoryBound(to: UInt8.self), count: strlen(p)))
    }

    static func show(_ name: [UInt8]) -> String { String(decoding: name.prefix(512), as: UTF8.self) }
    static func join(_ parts: [[UInt8]]) -> [UInt8] { Array(parts.joined(separator: [UInt8(ascii: "/")])) }
    static func message(_ archive: OpaquePointer) -> String {
        archive_error_string(archive).map { String(cString: $0) } ?? "unknown libarchive error"
    }
}

/// File type and mode bits (<sys/stat.h> and <archive_entry.h> both define them, so Swift finds two).
enum Mode {
    static let type: UInt32 = 0o170000
    static let regular: UInt32 = 0o100000
    static let directory: UInt32 = 0o040000
    static let symlink: UInt32 = 0o120000
    static let character: UInt32 = 0o020000
    static let block: UInt32 = 0o060000
    static let setuid: UInt32 = 0o4000
    static let setgid: UInt32 = 0o2000
}

func cName(_ bytes: some Collection<UInt8>) -> [CChar] {
    var out = bytes.map { CChar(bitPattern: $0) }
    out.append(0)
    return out
}

/// The layer blob as libarchive reads it: every byte hashed on the way, the compressed size bounded.
final class BlobSource {
    let fd: Int32
    let maxBytes: Int64
    /// Uncompressed bytes the tar reader may consume.
    let maxStreamBytes: Int64
    var digest = StreamDigest()
    var error: ImageError?
    let buffer = UnsafeMutableRawPointer.allocate(byteCount: 1 << 16, alignment: 16)

    init(fd: Int32, maxBytes: Int64, maxStreamBytes: Int64) {
        self.fd = fd
        self.maxBytes = maxBytes
        self.maxStreamBytes = maxStreamBytes
    }

    deinit { buffer.deallocate() }

    func next() -> Int {
        var n: Int
        repeat { n = read(fd, buffer, 1 << 16) } while n < 0 && errno == EINTR
        if n < 0 {
            error = ImageError(.badArchive, errno: errno, "cannot read the layer blob: \(String(cString: strerror(errno)))")
            return -1
        }
        digest.update(UnsafeRawBufferPointer(start: buffer, count: n))
        if digest.count > maxBytes {
            error = ImageError(.overBound, "the layer blob is over \(maxBytes) bytes")
            return -1
        }
        return n
    }

    /// The refusal when the tar reader has taken more than `maxStreamBytes` from the decompressor.
    func streamOver(_ archive: OpaquePointer) -> ImageError? {
        guard archive_filter_bytes(archive, 0) > maxStreamBytes else { return nil }
        return ImageError(.overBound, "the layer decompresses to more than \(maxStreamBytes) bytes of tar stream (the files' bound and room for headers)")
    }

    /// Hashes what libarchive left unread (the archive's end padding), so the digest covers the whole blob.
    func drain() throws(ImageError) {
        while true {
            let n = next()
            if n < 0 { throw error ?? ImageError(.badArchive, "cannot read the layer blob") }
            if n == 0 { return }
        }
    }
}

private let blobRead: @convention(c) (OpaquePointer?, UnsafeMutableRawPointer?, UnsafeMutablePointer<UnsafeRawPointer?>?) -> la_ssize_t = { archive, context, out in
    guard let context, let out else { return -1 }
    let source = Unmanaged<BlobSource>.fromOpaque(context).takeUnretainedValue()
    // On failure the reason waits in `source.error` (archive_set_error is variadic).
    if let archive, let over = source.streamOver(archive) {
        source.error = over
        return -1
    }
    let n = source.next()
    if n < 0 { return -1 }
    out.pointee = UnsafeRawPointer(source.buffer)
    return la_ssize_t(n)
}
