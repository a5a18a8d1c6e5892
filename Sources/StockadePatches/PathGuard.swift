import CStockade
import Glibc
import SystemPackage

/// Why a name was rejected. The raw values are stable: they are audited and shown in review.
public struct PathRule: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: String
    public init(rawValue: String) { self.rawValue = rawValue }
    public var description: String { rawValue }

    public static let notUTF8 = Self(rawValue: "not_utf8")
    public static let controlByte = Self(rawValue: "control_byte")
    public static let backslash = Self(rawValue: "backslash")
    public static let absolute = Self(rawValue: "absolute")
    public static let emptyComponent = Self(rawValue: "empty_component")
    public static let dotComponent = Self(rawValue: "dot_component")
    public static let gitDir = Self(rawValue: "git_dir")
    public static let tooLong = Self(rawValue: "too_long")
    public static let headerMismatch = Self(rawValue: "header_mismatch")
    public static let collision = Self(rawValue: "collision")
    public static let badMode = Self(rawValue: "bad_mode")
    public static let symlinkInPath = Self(rawValue: "symlink_in_path")
    /// A component the name passes through exists in the workspace and is not a directory.
    public static let notADirectory = Self(rawValue: "not_a_directory")
    /// The name exists in the workspace and is not a regular file (directory, FIFO, socket, device).
    public static let notRegular = Self(rawValue: "not_regular")
    /// The workspace could not be inspected along the name (permissions, I/O).
    public static let inaccessible = Self(rawValue: "inaccessible")
}

/// The guard's answer. `path` is the offending name, C-quoted when it holds special bytes.
public enum PathVerdict: Sendable, Equatable {
    case ok
    case rejected(path: String, rule: PathRule, message: String)

    public var rule: PathRule? {
        if case .rejected(_, let rule, _) = self { return rule }
        return nil
    }
}

/// Every name from every header of a diff passes through ``checkName(_:)``; ``check(_:workspaceRoot:)``
/// adds the checks between names (headers that disagree, collisions), the modes, and the workspace as it
/// is on disk (symlinks along a name). One rejected entry rejects the whole diff.
public enum PathGuard {
    public static let maxComponentBytes = 255
    public static let maxPathBytes = 4096
    /// The only modes a diff may give a file: a plain file and an executable one.
    public static let allowedModes: Set<UInt32> = [0o100644, 0o100755]

    // MARK: - One name

    /// Checks one name (after C-unquoting and removing the `a/`/`b/` prefix).
    public static func checkName(_ name: [UInt8]) -> PathVerdict {
        checkPrintableASCII(name) ?? checkNameFully(name)
    }

    /// The same rules, in the same order, for a name of printable ASCII only (nearly every real name),
    /// byte by byte and without allocating; nil when the name has any other byte (then the full check
    /// decides). Control bytes, invalid UTF-8 and display controls cannot occur in such a name.
    static func checkPrintableASCII(_ name: [UInt8]) -> PathVerdict? {
        guard !name.isEmpty else { return nil }
        var backslash = false
        for byte in name {
            if byte < 0x20 || byte > 0x7E { return nil }
            if byte == 0x5C { backslash = true }
        }
        func reject(_ rule: PathRule, _ message: String) -> PathVerdict {
            .rejected(path: CQuote.display(name), rule: rule, message: message)
        }
        if backslash { return reject(.backslash, "the name contains a backslash (a Windows separator)") }
        if name[0] == UInt8(ascii: "/") { return reject(.absolute, "the name is absolute") }
        if name.count > maxPathBytes { return reject(.tooLong, "the name has \(name.count) bytes, more than \(maxPathBytes)") }
        var start = 0
        while start <= name.count {
            var end = start
            while end < name.count && name[end] != UInt8(ascii: "/") { end += 1 }
            let component = name[start..<end]
            if component.isEmpty { return reject(.emptyComponent, "the name has an empty component (`//` or a trailing `/`)") }
            if component.count > maxComponentBytes {
                return reject(.tooLong, "a component has \(component.count) bytes, more than \(maxComponentBytes)")
            }
            var dots = true
            for byte in component where byte != UInt8(ascii: ".") && byte != UInt8(ascii: " ") {
                dots = false
                break
            }
            if dots {
                return reject(.dotComponent, "the component `\(String(decoding: component, as: UTF8.self))` is made of dots (a `.` or `..` in some form)")
            }
            if isGitDirASCII(component) {
                return reject(.gitDir, "the component `\(String(decoding: component, as: UTF8.self))` names the .git directory in some form")
            }
            start = end + 1
        }
        return .ok
    }

    static func checkNameFully(_ name: [UInt8]) -> PathVerdict {
        func reject(_ rule: PathRule, _ message: String) -> PathVerdict {
            .rejected(path: CQuote.display(name), rule: rule, message: message)
        }
        if name.isEmpty { return reject(.emptyComponent, "the name is empty") }
        if let byte = name.first(where: { $0 < 0x20 || $0 == 0x7F }) {
            return reject(.controlByte, "the name contains the control byte 0x\(String(byte, radix: 16))")
        }
        guard let text = String(validating: name, as: UTF8.self) else {
            return reject(.notUTF8, "the name is not valid UTF-8")
        }
        if let scalar = text.unicodeScalars.first(where: isDisplayControl) {
            return reject(.controlByte, "the name contains the control character U+\(String(scalar.value, radix: 16, uppercase: true)), which can disguise it in review")
        }
        if name.contains(UInt8(ascii: "\\")) { return reject(.backslash, "the name contains a backslash (a Windows separator)") }
        if name.first == UInt8(ascii: "/") { return reject(.absolute, "the name is absolute") }
        if name.count > maxPathBytes { return reject(.tooLong, "the name has \(name.count) bytes, more than \(maxPathBytes)") }
        for component in name.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false) {
            if component.isEmpty { return reject(.emptyComponent, "the name has an empty component (`//` or a trailing `/`)") }
            if component.count > maxComponentBytes {
                return reject(.tooLong, "a component has \(component.count) bytes, more than \(maxComponentBytes)")
            }
            let dots: Bool, gitDir: Bool
            if component.allSatisfy({ $0 < 0x80 }) {
                // Fast path with the same meaning as the Unicode one for plain ASCII names.
                dots = component.allSatisfy { $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: " ") }
                gitDir = isGitDirASCII(component)
            } else {
                let folded = normalizedComponent(String(decoding: component, as: UTF8.self))
                dots = folded.allSatisfy { $0 == "." || $0 == " " }
                gitDir = isGitDir(folded)
            }
            if dots {
                return reject(.dotComponent, "the component `\(String(decoding: component, as: UTF8.self))` is made of dots (a `.` or `..` in some form)")
            }
            if gitDir {
                return reject(.gitDir, "the component `\(String(decoding: component, as: UTF8.self))` names the .git directory in some form")
            }
        }
        return .ok
    }

    /// Checks a mode from any mode line: only 100644 and 100755.
    public static func checkMode(_ mode: UInt32, of name: [UInt8]) -> PathVerdict {
        if allowedModes.contains(mode) { return .ok }
        let what: String
        switch mode & 0o170000 {
        case 0o120000: what = "a symbolic link"
        case 0o160000: what = "a gitlink (submodule)"
        case 0o040000: what = "a directory"
        case 0o100000: what = mode & 0o7000 != 0 ? "a file with setuid, setgid or sticky bits" : "a file with unusual permissions"
        default: what = "not a regular file"
        }
        return .rejected(path: CQuote.display(name), rule: .badMode,
                         message: "mode \(String(mode, radix: 8)) is \(what): only 100644 and 100755 are accepted")
    }

    // MARK: - A whole diff

    /// Checks every name and mode of every section, the agreement of each section's headers, collisions
    /// between sections, and, given the workspace root, that no name passes through a symlink there.
    public static func check(_ set: PatchSet, workspaceRoot: FileDescriptor? = nil) -> PathVerdict {
        for file in set.files {
            for (origin, name) in file.allNames {
                if case .rejected(let path, let rule, let message) = checkName(name) {
                    return .rejected(path: path, rule: rule, message: "\(message) (from `\(origin)` in the section at line \(file.diffLine))")
                }
            }
            let anyName = file.targetPath ?? file.sourcePath ?? file.gitOldName ?? []
            for (origin, mode) in file.allModes {
                if case .rejected(let path, let rule, let message) = checkMode(mode, of: anyName) {
                    return .rejected(path: path, rule: rule, message: "\(message) (from `\(origin)` in the section at line \(file.diffLine))")
                }
            }
            let verdict = checkHeaders(file)
            if verdict != .ok { return verdict }
        }
        let verdict = checkCollisions(set)
        if verdict != .ok { return verdict }
        if let workspaceRoot {
            for file in set.files {
                for name in [file.sourcePath, file.targetPath].compactMap({ $0 }) {
                    let verdict = checkWorkspace(name, beneath: workspaceRoot)
                    if verdict != .ok { return verdict }
                }
            }
        }
        return .ok
    }

    /// Names within one section must agree: `diff --git` with `---`/`+++` with `rename`/`copy` lines.
    static func checkHeaders(_ file: FilePatch) -> PathVerdict {
        func mismatch(_ a: [UInt8], _ b: [UInt8], _ what: String) -> PathVerdict {
            .rejected(path: CQuote.display(a), rule: .headerMismatch,
                      message: "\(what) disagree: `\(CQuote.display(a))` and `\(CQuote.display(b))` (section at line \(file.diffLine))")
        }
        let oldNames = [file.gitOldName, file.minusName, file.renameFrom, file.copyFrom].compactMap { $0 }
        let newNames = [file.gitNewName, file.plusName, file.renameTo, file.copyTo].compactMap { $0 }
        if let first = oldNames.first, let other = oldNames.first(where: { $0 != first }) {
            return mismatch(first, other, "the old-side names")
        }
        if let first = newNames.first, let other = newNames.first(where: { $0 != first }) {
            return mismatch(first, other, "the new-side names")
        }
        if file.isRename || file.isCopy {
            if let old = oldNames.first, let new = newNames.first, old == new {
                return mismatch(old, new, "a rename or copy must change the name; the names")
            }
        } else if let old = oldNames.first, let new = newNames.first, old != new {
            return mismatch(old, new, "without a rename or copy header, the old and new names")
        }
        return .ok
    }

    /// No two sections may touch names that are equal after case folding and Unicode normalisation, and
    /// no touched name may be a directory of another.
    static func checkCollisions(_ set: PatchSet) -> PathVerdict {
        var files: [String: [UInt8]] = [:]
        var directories: [String: [UInt8]] = [:]
        for file in set.files {
            var touched: [[UInt8]] = []
            if let target = file.targetPath { touched.append(target) }
            if (file.isDeletion || file.isRename), let source = file.sourcePath { touched.append(source) }
            for name in touched {
                let key = foldKey(name)
                if let previous = files[key] {
                    return .rejected(path: CQuote.display(name), rule: .collision,
                                     message: "`\(CQuote.display(name))` and `\(CQuote.display(previous))` are the same name under case folding or Unicode normalisation")
                }
                files[key] = name
                let components = name.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false)
                for count in 1..<max(components.count, 1) {
                    let prefix = Array(components[..<count].joined(separator: [UInt8(ascii: "/")]))
                    directories[foldKey(prefix)] = prefix
                }
            }
        }
        for (key, name) in files {
            if let directory = directories[key] {
                return .rejected(path: CQuote.display(name), rule: .collision,
                                 message: "`\(CQuote.display(name))` is a file in one section and the directory `\(CQuote.display(directory))` in another")
            }
        }
        return .ok
    }

    /// Walks the name beneath the root one component at a time without following anything: every existing
    /// component must be a directory, the last one a regular file, and none a symlink.
    public static func checkWorkspace(_ name: [UInt8], beneath root: FileDescriptor) -> PathVerdict {
        let components = name.split(separator: UInt8(ascii: "/")).map { Array($0) }
        var directory = root.rawValue
        defer { if directory != root.rawValue { close(directory) } }
        for (index, component) in components.enumerated() {
            let shown = CQuote.display(Array(components[...index].joined(separator: [UInt8(ascii: "/")])))
            func reject(_ rule: PathRule, _ message: String) -> PathVerdict {
                .rejected(path: CQuote.display(name), rule: rule, message: "`\(shown)` \(message)")
            }
            var info = stat()
            let status = fstatat(directory, cName(component), &info, AT_SYMLINK_NOFOLLOW)
            if status != 0 {
                if errno == ENOENT { return .ok }
                return reject(.inaccessible, "cannot be inspected in the workspace (errno \(errno))")
            }
            let type = info.st_mode & S_IFMT
            if type == S_IFLNK { return reject(.symlinkInPath, "is a symbolic link in the workspace") }
            if index == components.count - 1 {
                return type == S_IFREG ? .ok : reject(.notRegular, "exists in the workspace and is not a regular file")
            }
            guard type == S_IFDIR else { return reject(.notADirectory, "exists in the workspace and is not a directory") }
            let next = openBeneath(directory, component, flags: openPathOnly | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            if next < 0 { return reject(errno == ELOOP ? .symlinkInPath : .inaccessible, "cannot be opened beneath the workspace (errno \(errno))") }
            if directory != root.rawValue { close(directory) }
            directory = next
        }
        return .ok
    }

    // MARK: - Normalisation

    /// C1 controls, line and paragraph separators and bidirectional controls: they reorder or break what
    /// a reviewer sees (`evil\u{202E}txt.sh` shows as `evilhs.txt`).
    static func isDisplayControl(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar.value {
        case 0x80...0x9F, 0x061C, 0x200E, 0x200F, 0x2028...0x202E, 0x2066...0x2069: return true
        default: return false
        }
    }

    /// Code points that HFS+ and some tools ignore, so that `.g\u{200C}it` is `.git` to them.
    static func isIgnorable(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar.value {
        case 0x00AD, 0x034F, 0x200B...0x200F, 0x202A...0x202E, 0x2060...0x2064, 0x2066...0x206F, 0xFEFF: return true
        default: return false
        }
    }

    /// A component with ignorable code points removed, full-width ASCII mapped to ASCII and dot
    /// look-alikes mapped to dots, so that dot and `.git` checks see what a lenient filesystem would.
    static func normalizedComponent(_ component: String) -> String {
        var out = String.UnicodeScalarView()
        for scalar in component.unicodeScalars where !isIgnorable(scalar) {
            switch scalar.value {
            case 0xFF01...0xFF5E:
                if let ascii = Unicode.Scalar(scalar.value - 0xFEE0) { out.append(ascii) }
            case 0x2024, 0xFE52, 0x3002, 0xFF61, 0x0701, 0x0702, 0xA4F8, 0xA60E, 0x2E31, 0x00B7, 0x2027:
                out.append(".")
            case 0x2025: out.append(contentsOf: "..".unicodeScalars)
            case 0x2026: out.append(contentsOf: "...".unicodeScalars)
            case 0x3000, 0x00A0, 0x2000...0x200A: out.append(" ")
            default: out.append(scalar)
            }
        }
        return String(out)
    }

    /// `.git` in any case, with NTFS's ignored trailing dots and spaces, an NTFS stream suffix
    /// (`.git::$INDEX_ALLOCATION`), or the 8.3 short name `git~1`.
    static func isGitDir(_ normalized: String) -> Bool {
        var name = Substring(normalized.uppercased().lowercased())
        if let colon = name.firstIndex(of: ":") { name = name[..<colon] }
        while let last = name.last, last == "." || last == " " { name = name.dropLast() }
        if name == ".git" { return true }
        if name.hasPrefix("git~"), name.count > 4, name.dropFirst(4).allSatisfy(\.isASCII), name.dropFirst(4).allSatisfy(\.isNumber) { return true }
        return false
    }

    /// ``isGitDir(_:)`` for an all-ASCII component, without building strings.
    static func isGitDirASCII(_ component: ArraySlice<UInt8>) -> Bool {
        // Up to a `:` (an NTFS stream), without trailing dots and spaces, case folded: `.git`, or
        // `git~` and digits (an 8.3 short name).
        var end = component.startIndex
        while end < component.endIndex && component[end] != UInt8(ascii: ":") { end += 1 }
        while end > component.startIndex, component[end - 1] == UInt8(ascii: ".") || component[end - 1] == UInt8(ascii: " ") { end -= 1 }
        let start = component.startIndex
        let count = end - start
        func lower(_ i: Int) -> UInt8 {
            let b = component[start + i]
            return b >= 0x41 && b <= 0x5A ? b | 0x20 : b
        }
        if count == 4 && lower(0) == UInt8(ascii: ".") && lower(1) == UInt8(ascii: "g") && lower(2) == UInt8(ascii: "i") && lower(3) == UInt8(ascii: "t") {
            return true
        }
        guard count > 4, lower(0) == UInt8(ascii: "g"), lower(1) == UInt8(ascii: "i"), lower(2) == UInt8(ascii: "t"),
              lower(3) == UInt8(ascii: "~") else { return false }
        for i in 4..<count where !(0x30...0x39).contains(component[start + i]) { return false }
        return true
    }

    /// The key two names collide under: ignorables removed, case folded; `String` equality and hashing
    /// already treat canonically equivalent (NFC/NFD) strings as equal.
    static func foldKey(_ name: [UInt8]) -> String {
        let text = String(decoding: name, as: UTF8.self)
        var scalars = String.UnicodeScalarView()
        scalars.append(contentsOf: text.unicodeScalars.filter { !isIgnorable($0) })
        return String(scalars).uppercased().lowercased()
    }
}
