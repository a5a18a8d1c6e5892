import CStockade
import Glibc
import SystemPackage

/// Applies a diff beneath a workspace root, all or nothing as far as a filesystem allows: every file's new
/// content is computed in memory first (any hunk that does not match exactly stops everything before a
/// byte is written), then each file is written to a temporary name beside it, synced and renamed into place.
public enum PatchApplier {
    public static func apply(_ set: PatchSet, workspaceRoot: String, limits: DiffLimits = .default) throws(PatchError) {
        let root = open(workspaceRoot, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard root >= 0 else {
            throw PatchError(.io, path: workspaceRoot, errno: errno, "cannot open the workspace root: check that it exists and is a directory")
        }
        defer { close(root) }
        // The guard runs here, right before writing, against the workspace as it is now.
        if case .rejected(let path, let rule, let message) = PathGuard.check(set, workspaceRoot: FileDescriptor(rawValue: root)) {
            throw PatchError(.rejected, path: path, "\(rule): \(message)")
        }
        let plan = try plan(set, root: root, limits: limits)
        try execute(plan, root: root)
    }

    // MARK: - Planning (no writes)

    struct Write {
        var path: [UInt8]
        var content: [UInt8]
        var mode: mode_t
        var mustNotExist: Bool
        /// The owner of the file it replaces in place; nil for a new name (it takes its directory's owner).
        var owner: (uid: uid_t, gid: gid_t)? = nil
    }

    struct Plan {
        var writes: [Write] = []
        var deletions: [[UInt8]] = []
    }

    static func plan(_ set: PatchSet, root: Int32, limits: DiffLimits) throws(PatchError) -> Plan {
        var plan = Plan()
        for file in set.files {
            // C calls would stop a name at a NUL byte; the guard rejects those, and so does the applier.
            for name in [file.sourcePath, file.targetPath].compactMap({ $0 }) where name.contains(0) {
                throw PatchError(.rejected, path: CQuote.display(name), "control_byte: the name contains a NUL byte")
            }
            let shownPath = CQuote.display(file.targetPath ?? file.sourcePath ?? [])
            var old: [UInt8] = []
            var oldMode: mode_t = 0o644
            var oldOwner: (uid: uid_t, gid: gid_t)?
            if let source = file.sourcePath {
                let current = try readRegular(root: root, source, limits: limits)
                old = current.content
                oldMode = current.mode
                oldOwner = current.owner
                let declared = file.deletedFileMode ?? file.oldMode
                if let declared, mode_t(declared & 0o777) != oldMode {
                    throw PatchError(.doesNotApply, path: CQuote.display(source),
                                     "the diff expects mode \(String(declared, radix: 8)) but the file has \(String(oldMode, radix: 8)): the workspace changed since the diff was made")
                }
            }
            if let target = file.targetPath, file.isCreation || file.isRename || file.isCopy {
                try requireAbsent(root: root, target)
            }
            var new: [UInt8]
            if let binary = file.binary {
                if let expected = binary.oldContent, !file.isCreation, expected != old {
                    throw PatchError(.doesNotApply, path: shownPath, "the binary patch's old content differs from the file: the workspace changed since the diff was made")
                }
                new = binary.newContent
            } else {
                new = try applyHunks(file.hunks, to: old, path: shownPath)
            }
            if file.isDeletion {
                guard new.isEmpty else {
                    throw PatchError(.doesNotApply, path: shownPath, "the deletion does not remove all of the file's content: the workspace changed since the diff was made")
                }
                if let source = file.sourcePath { plan.deletions.append(source) }
                continue
            }
            guard let target = file.targetPath else { continue }
            guard new.count <= limits.maxFileBytes else {
                throw PatchError(.tooLarge, path: shownPath, "the patched file would have \(new.count) bytes, more than \(limits.maxFileBytes)")
            }
            let mode: mode_t = (file.newFileMode ?? file.newMode).map { mode_t($0 & 0o777) } ?? oldMode
            let newName = file.isCreation || file.isRename || file.isCopy
            plan.writes.append(Write(path: target, content: new, mode: mode, mustNotExist: newName, owner: newName ? nil : oldOwner))
            if file.isRename, let source = file.sourcePath { plan.deletions.append(source) }
        }
        return plan
    }

    /// A file split into lines; `terminated` is false only for a last line without a newline.
    private struct Line {
        var range: Range<Int>
        var terminated: Bool
    }

    private static func lines(of content: [UInt8]) -> [Line] {
        var result: [Line] = []
        var start = 0
        while start < content.count {
            if let newline = content[start...].firstIndex(of: 0x0A) {
                result.append(Line(range: start..<newline, terminated: true))
                start = newline + 1
            } else {
                result.append(Line(range: start..<content.count, terminated: false))
                start = content.count
            }
        }
        return result
    }

    /// Applies hunks exactly: no offsets, no fuzz; every context and removed line must match byte for byte,
    /// including whether it ends in a newline.
    static func applyHunks(_ hunks: [Hunk], to old: [UInt8], path: String) throws(PatchError) -> [UInt8] {
        let oldLines = lines(of: old)
        var out: [UInt8] = []
        out.reserveCapacity(old.count)
        var cursor = 0
        var endsFile = false
        func emit(_ line: Line) {
            out += old[line.range]
            if line.terminated { out.append(0x0A) }
        }
        for (number, hunk) in hunks.enumerated() {
            func mismatch(_ why: String) -> PatchError {
                let header = "@@ -\(hunk.oldStart),\(hunk.oldCount) +\(hunk.newStart),\(hunk.newCount) @@"
                return PatchError(.doesNotApply, path: path, hunk: "hunk \(number + 1) (\(header))",
                                  "hunk \(number + 1) (`\(header)`, diff line \(hunk.diffLine)) does not apply: \(why); the workspace changed since the diff was made, so nothing was written")
            }
            let position = hunk.oldCount == 0 ? hunk.oldStart : hunk.oldStart - 1
            guard position >= cursor, position + hunk.oldCount <= oldLines.count else {
                throw mismatch("the file has \(oldLines.count) lines")
            }
            for line in oldLines[cursor..<position] { emit(line) }
            var index = position
            for line in hunk.lines {
                if line.kind != .added {
                    let current = oldLines[index]
                    guard old[current.range].elementsEqual(line.text), current.terminated != line.missingNewline else {
                        throw mismatch("line \(index + 1) differs")
                    }
                    index += 1
                }
                if line.kind != .removed {
                    out += line.text
                    if line.missingNewline { endsFile = true } else { out.append(0x0A) }
                }
            }
            cursor = index
        }
        if endsFile && cursor != oldLines.count {
            throw PatchError(.doesNotApply, path: path, "the diff ends the file without a newline but the file has more lines after the last hunk")
        }
        for line in oldLines[cursor...] { emit(line) }
        return out
    }

    // MARK: - Reading

    static func readRegular(root: Int32, _ name: [UInt8], limits: DiffLimits) throws(PatchError)
        -> (content: [UInt8], mode: mode_t, owner: (uid: uid_t, gid: gid_t)) {
        let shown = CQuote.display(name)
        let fd = openBeneath(root, name, flags: O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else {
            let code = errno
            if code == ENOENT { throw PatchError(.doesNotApply, path: shown, errno: code, "the file the diff changes does not exist in the workspace") }
            throw PatchError(.io, path: shown, errno: code, "cannot open the file beneath the workspace without following links")
        }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw PatchError(.io, path: shown, errno: errno, "cannot stat the opened file") }
        guard info.st_mode & S_IFMT == S_IFREG else {
            throw PatchError(.rejected, path: shown, "not_regular: the file is not a regular file")
        }
        var content: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64 << 10)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                throw PatchError(.io, path: shown, errno: errno, "cannot read the file")
            }
            if count == 0 { break }
            content += chunk[..<count]
            guard content.count <= limits.maxFileBytes else {
                throw PatchError(.tooLarge, path: shown, "the file is larger than the limit of \(limits.maxFileBytes) bytes")
            }
        }
        return (content, info.st_mode & 0o111 != 0 ? 0o755 : 0o644, (info.st_uid, info.st_gid))
    }

    private static func requireAbsent(root: Int32, _ name: [UInt8]) throws(PatchError) {
        let fd = openBeneath(root, name, flags: openPathOnly | O_NOFOLLOW | O_CLOEXEC)
        if fd >= 0 {
            close(fd)
            throw PatchError(.doesNotApply, path: CQuote.display(name), "the diff creates a file that already exists in the workspace")
        }
        if errno != ENOENT {
            throw PatchError(.io, path: CQuote.display(name), errno: errno, "cannot check beneath the workspace whether the file exists")
        }
    }

    // MARK: - Writing

    private struct Staged {
        var directory: Int32
        var temporary: [UInt8]
        var final: [UInt8]
        var mustNotExist: Bool
        var path: [UInt8]
    }

    static func execute(_ plan: Plan, root: Int32) throws(PatchError) {
        var staged: [Staged] = []
        var createdDirectories: [(parent: Int32, name: [UInt8])] = []
        var openDirectories: [Int32] = []
        defer { for fd in openDirectories { close(fd) } }
        func rollback() {
            for item in staged { unlinkat(item.directory, cName(item.temporary), 0) }
            for created in createdDirectories.reversed() { unlinkat(created.parent, cName(created.name), AT_REMOVEDIR) }
        }
        do throws(PatchError) {
            for write in plan.writes {
                let components = write.path.split(separator: UInt8(ascii: "/")).map { Array($0) }
                guard let final = components.last else { continue }
                let directory = try openParent(root: root, components.dropLast(), create: true,
                                               created: &createdDirectories, open: &openDirectories, path: write.path)
                let temporary = try writeTemporary(in: directory, write)
                staged.append(Staged(directory: directory, temporary: temporary, final: final,
                                     mustNotExist: write.mustNotExist, path: write.path))
            }
        } catch {
            rollback()
            throw error
        }
        // Everything is on disk under temporary names. Each step from here is one undoable rename: a
        // replaced file is exchanged with its new content (the old content stays under the temporary
        // name), a new file is renamed in without replacing anything, a deleted file is renamed aside.
        // If any step fails, the done ones are undone in reverse, and the workspace is as it was.
        enum Done {
            case exchanged(Staged)      // final holds the new content, temporary the old
            case created(Staged)        // final is the new file
            case setAside(directory: Int32, name: [UInt8], aside: [UInt8], path: [UInt8])
        }
        var done: [Done] = []
        func undo() {
            for step in done.reversed() {
                switch step {
                case .exchanged(let item):
                    _ = stk_renameat2(item.directory, cName(item.temporary), item.directory, cName(item.final), Self.renameExchange)
                case .created(let item):
                    unlinkat(item.directory, cName(item.final), 0)
                case .setAside(let directory, let name, let aside, _):
                    _ = stk_renameat2(directory, cName(aside), directory, cName(name), Self.renameNoReplace)
                }
            }
            rollback()
        }
        for item in staged {
            let flags = item.mustNotExist ? Self.renameNoReplace : Self.renameExchange
            guard stk_renameat2(item.directory, cName(item.temporary), item.directory, cName(item.final), flags) == 0 else {
                let code = errno
                undo()
                let why = code == EINVAL ? "the workspace's filesystem does not support renameat2 exchange or no-replace"
                    : item.mustNotExist ? "something appeared at its name since the check" : "it is gone since the check"
                throw PatchError(.io, path: CQuote.display(item.path), errno: code,
                                 "cannot move the new content into place (\(why)); nothing was changed")
            }
            done.append(item.mustNotExist ? .created(item) : .exchanged(item))
        }
        var deletionParents: [(components: [[UInt8]], chain: [Int32])] = []
        for name in plan.deletions {
            let components = name.split(separator: UInt8(ascii: "/")).map { Array($0) }
            guard let final = components.last else { continue }
            let firstOpened = openDirectories.count
            let directory: Int32
            do throws(PatchError) {
                var unused: [(parent: Int32, name: [UInt8])] = []
                directory = try openParent(root: root, components.dropLast(), create: false,
                                           created: &unused, open: &openDirectories, path: name)
            } catch {
                undo()
                throw error
            }
            var info = stat()
            guard fstatat(directory, cName(final), &info, AT_SYMLINK_NOFOLLOW) == 0, info.st_mode & S_IFMT == S_IFREG else {
                let code = errno
                undo()
                throw PatchError(.io, path: CQuote.display(name), errno: code, "the file to delete is gone or no longer a regular file; nothing was changed")
            }
            let aside = Self.temporaryName()
            guard stk_renameat2(directory, cName(final), directory, cName(aside), Self.renameNoReplace) == 0 else {
                let code = errno
                undo()
                throw PatchError(.io, path: CQuote.display(name), errno: code, "cannot set the file to delete aside; nothing was changed")
            }
            done.append(.setAside(directory: directory, name: final, aside: aside, path: name))
            deletionParents.append((components, [root] + openDirectories[firstOpened...]))
        }
        // Committed: drop the old contents and the deleted files.
        for step in done {
            switch step {
            case .exchanged(let item): unlinkat(item.directory, cName(item.temporary), 0)
            case .created: break
            case .setAside(let directory, _, let aside, _): unlinkat(directory, cName(aside), 0)
            }
        }
        // Like git, remove directories the deletions left empty; the first non-empty one stops it.
        for (components, chain) in deletionParents {
            for level in stride(from: components.count - 2, through: 0, by: -1) {
                if unlinkat(chain[level], cName(components[level]), AT_REMOVEDIR) != 0 { break }
            }
        }
        _ = fsync(root)
        for fd in openDirectories { _ = fsync(fd) }
    }

    static let renameNoReplace: UInt32 = 1  // RENAME_NOREPLACE
    static let renameExchange: UInt32 = 2   // RENAME_EXCHANGE

    static func temporaryName() -> [UInt8] {
        var generator = SystemRandomNumberGenerator()
        return Array(".stockade-\(String(generator.next() as UInt64, radix: 16)).tmp".utf8)
    }

    /// Opens (creating when asked) each directory of `components` beneath the root, refusing symlinks.
    private static func openParent(root: Int32, _ components: ArraySlice<[UInt8]>, create: Bool,
                                   created: inout [(parent: Int32, name: [UInt8])], open: inout [Int32],
                                   path: [UInt8]) throws(PatchError) -> Int32 {
        var directory = root
        for component in components {
            if create {
                if mkdirat(directory, cName(component), 0o755) == 0 {
                    created.append((directory, component))
                    // The supervisor is root: a new directory belongs to whoever owns its parent, as if
                    // that user had applied the diff.
                    if let owner = owner(of: directory) {
                        _ = fchownat(directory, cName(component), owner.uid, owner.gid, AT_SYMLINK_NOFOLLOW)
                    }
                } else if errno != EEXIST {
                    throw PatchError(.io, path: CQuote.display(path), errno: errno, "cannot create a parent directory beneath the workspace")
                }
            }
            let next = openBeneath(directory, component, flags: O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            guard next >= 0 else {
                throw PatchError(.io, path: CQuote.display(path), errno: errno,
                                 "cannot open a parent directory beneath the workspace without following links")
            }
            open.append(next)
            directory = next
        }
        return directory
    }

    /// The owner of an open directory, when the supervisor is root (nil otherwise: nothing to give away).
    private static func owner(of directory: Int32) -> (uid: uid_t, gid: gid_t)? {
        var info = stat()
        guard geteuid() == 0, fstat(directory, &info) == 0 else { return nil }
        return (info.st_uid, info.st_gid)
    }

    private static func writeTemporary(in directory: Int32, _ write: Write) throws(PatchError) -> [UInt8] {
        let shown = CQuote.display(write.path)
        let name = temporaryName()
        let fd = openat(directory, cName(name), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, write.mode)
        guard fd >= 0 else { throw PatchError(.io, path: shown, errno: errno, "cannot create a temporary file beside the target") }
        defer { close(fd) }
        func fail(_ message: String) -> PatchError {
            let error = PatchError(.io, path: shown, errno: errno, message)
            unlinkat(directory, cName(name), 0)
            return error
        }
        // Owned as the file it replaces, or else as its directory: applying as root must not leave
        // root-owned files in a user's workspace. (Only root can give files away; others own what they write.)
        if geteuid() == 0, let owner = write.owner ?? Self.owner(of: directory), fchown(fd, owner.uid, owner.gid) != 0 {
            throw fail("cannot give the new file its owner")
        }
        // The umask may have removed bits; set exactly 0644 or 0755 (after the owner: chown clears set-id bits).
        guard fchmod(fd, write.mode) == 0 else { throw fail("cannot set the file mode") }
        var offset = 0
        while offset < write.content.count {
            let count = write.content[offset...].withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                throw fail("cannot write the new content")
            }
            offset += count
        }
        guard fsync(fd) == 0 else { throw fail("cannot sync the new content") }
        return name
    }
}
