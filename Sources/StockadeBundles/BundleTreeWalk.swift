import CStockade
import Glibc
import StockadePolicy

/// One bounded pass over a bundle tree that follows no link.
///
/// Every entry is counted as it is seen; the walk stops at the first entry past
/// `maxFiles` + the directories the manifest needs (`too_many_files`). Each entry is classified
/// with `fstatat(AT_SYMLINK_NOFOLLOW)`: links, special files and hard-linked files stop the walk
/// at once; bad names and paths past the bounds too. Directories are opened through
/// `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` from the root, so no more than one directory
/// fd is open at a time. Unlisted entries are remembered and reported after the walk (so a
/// flood of files is reported as too many, not as the first unlisted one), then listed files
/// the walk did not meet are reported missing.
struct TreeWalk {
    let manifest: BundleManifest
    let bounds: BundleBounds
    /// Exact bytes of each listed file → its index in the manifest.
    private var listedFiles: [[UInt8]: Int] = [:]
    /// Exact bytes of each directory the listed files need.
    private var listedDirectories = Set<[UInt8]>()

    init(manifest: BundleManifest, bounds: BundleBounds) {
        self.manifest = manifest
        self.bounds = bounds
        for (index, file) in manifest.files.enumerated() {
            let path = Array(file.path.utf8)
            listedFiles[path] = index
            var start = path.startIndex
            while let slash = path[start...].firstIndex(of: UInt8(ascii: "/")) {
                listedDirectories.insert(Array(path[..<slash]))
                start = slash + 1
            }
        }
    }

    func run(root: Int32) throws(BundleError) {
        let (sum, overflow) = bounds.maxFiles.addingReportingOverflow(listedDirectories.count)
        let entryLimit = overflow ? Int.max : sum
        var entries = 0
        var seen = [Bool](repeating: false, count: manifest.files.count)
        var firstUnlisted: [UInt8]?
        var pending: [[UInt8]] = [[]]

        while let directory = pending.popLast() {
            let fd = directory.isEmpty
                ? stk_openat2(root, ".", UInt64(O_RDONLY | O_DIRECTORY | O_CLOEXEC), 0, BundleCopy.confined)
                : stk_openat2(root, BundleCopy.cString(directory), UInt64(O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC), 0, BundleCopy.confined)
            let entryName = directory.isEmpty ? "." : BundlePath.display(directory)
            guard fd >= 0 else { throw BundleReader.openFailure(errno, entry: entryName) }
            guard let stream = fdopendir(fd) else {
                let code = errno
                close(fd)
                throw BundleError(.bundleUnreadable, path: entryName, errno: code, "cannot read the bundle directory")
            }
            defer { closedir(stream) }
            let streamFD = dirfd(stream)

            while true {
                errno = 0
                guard let record = readdir(stream) else {
                    if errno != 0 { throw BundleError(.bundleUnreadable, path: entryName, errno: errno, "cannot list the bundle directory") }
                    break
                }
                let name = withUnsafeBytes(of: &record.pointee.d_name) { raw in Array(raw.prefix { $0 != 0 }) }
                if name == [0x2E] || name == [0x2E, 0x2E] { continue }
                if directory.isEmpty && name == Array(BundleManifest.fileName.utf8) { continue }

                entries += 1
                if entries > entryLimit {
                    throw BundleError(.tooManyFiles, path: nil,
                                      "the bundle holds more than \(bounds.maxFiles) files (plus the \(listedDirectories.count) directories the manifest needs); remove files or raise bundles.maxFiles")
                }
                let path = directory.isEmpty ? name : directory + [UInt8(ascii: "/")] + name
                let entry = BundlePath.display(path)
                var st = stat()
                let status = withUnsafePointer(to: &record.pointee.d_name) { pointer in
                    pointer.withMemoryRebound(to: CChar.self, capacity: MemoryLayout.size(ofValue: record.pointee.d_name)) {
                        fstatat(streamFD, $0, &st, AT_SYMLINK_NOFOLLOW)
                    }
                }
                guard status == 0 else { throw BundleError(.bundleUnreadable, path: entry, errno: errno, "cannot inspect the bundle entry") }

                let type = st.st_mode & S_IFMT
                if type != S_IFDIR { try BundleReader.checkType(st, entry: entry, isManifest: false) }
                if let problem = BundlePath.problem(path, bounds: bounds) {
                    throw BundleError(.badPath, path: entry, problem)
                }
                if type == S_IFDIR {
                    if !listedDirectories.contains(path) { firstUnlisted = firstUnlisted ?? path }
                    pending.append(path)
                } else if let index = listedFiles[path] {
                    seen[index] = true
                } else {
                    firstUnlisted = firstUnlisted ?? path
                }
            }
        }

        if let firstUnlisted {
            throw BundleError(.unlistedFile, path: BundlePath.display(firstUnlisted), "the bundle holds this entry but the manifest does not list it: list it or remove it")
        }
        if let missing = seen.firstIndex(of: false) {
            throw BundleError(.missingFile, path: BundlePath.display(manifest.files[missing].path),
                              "the manifest lists this file but the bundle does not hold it: add it or drop it from the manifest")
        }
    }
}
