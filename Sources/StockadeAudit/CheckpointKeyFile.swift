import Crypto
import Glibc
import StockadePolicy

/// The Ed25519 key that signs audit checkpoints, kept in a file outside the database.
///
/// The file holds the raw 32-byte private key as 64 lowercase hex digits and a newline. It is used
/// only when it is a regular file (not a symlink), owned by the user running Stockade, readable by
/// nobody else, in a directory nobody else can write: a key others can read signs checkpoints for
/// them, and one they can replace signs checkpoints of a truncated trail. Created on first use
/// (mode 0600, its directory 0700), with the public key beside it (`<file>.pub`, same form) to copy
/// wherever checkpoints are checked.
public enum CheckpointKeyFile {
    /// `<state>/keys/audit-checkpoint.ed25519`.
    public static func defaultPath(stateDirectory: String) -> String {
        stateDirectory + "/keys/audit-checkpoint.ed25519"
    }

    /// The public key file written beside a private key file.
    public static func publicPath(of path: String) -> String { path + ".pub" }

    /// The key at `path`, made (with its directory, if missing) when there is none yet. `created`
    /// says a new key was made: checkpoints signed before then are not signed by it.
    public static func loadOrCreate(path: String) throws(AuditError) -> (key: Curve25519.Signing.PrivateKey, created: Bool) {
        var st = stat()
        if lstat(path, &st) == 0 { return try (load(path: path), false) }
        guard errno == ENOENT else { throw AuditError(.keyFile, path: path, errno: errno, "cannot examine the checkpoint key") }
        let directory = parent(of: path)
        if mkdir(directory, 0o700) != 0 && errno != EEXIST {
            throw AuditError(.keyFile, path: directory, errno: errno, "cannot create the checkpoint key's directory; create it with mode 0700 or pass another key path")
        }
        try checkDirectory(directory)
        let key = Curve25519.Signing.PrivateKey()
        let created = try publish(Array((Hex.lowercase(key.rawRepresentation) + "\n").utf8), at: path, mode: 0o600, replace: false)
        if created {
            // Only the process whose key won the race writes the public half.
            _ = try publish(Array((Hex.lowercase(key.publicKey.rawRepresentation) + "\n").utf8), at: publicPath(of: path), mode: 0o644, replace: true)
        }
        return try (load(path: path), created)
    }

    /// The key at `path`; fails naming what to fix when the file is missing or unsafe.
    public static func load(path: String) throws(AuditError) -> Curve25519.Signing.PrivateKey {
        var st = stat()
        guard lstat(path, &st) == 0 else {
            if errno == ENOENT {
                throw AuditError(.keyFile, path: path, "no checkpoint key here: `stockade audit checkpoint` creates it on first use; to check a checkpoint without it pass --public-key")
            }
            throw AuditError(.keyFile, path: path, errno: errno, "cannot examine the checkpoint key")
        }
        if (st.st_mode & S_IFMT) == S_IFLNK {
            throw AuditError(.keyFile, path: path, "the checkpoint key is a symbolic link: whoever can change the link chooses the key; replace the link with the key file itself")
        }
        try checkDirectory(parent(of: path))
        let fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { throw AuditError(.keyFile, path: path, errno: errno, "cannot open the checkpoint key") }
        defer { close(fd) }
        guard fstat(fd, &st) == 0 else { throw AuditError(.keyFile, path: path, errno: errno, "cannot examine the checkpoint key") }
        guard (st.st_mode & S_IFMT) == S_IFREG else {
            throw AuditError(.keyFile, path: path, "the checkpoint key is not a regular file")
        }
        let uid = geteuid()
        guard st.st_uid == uid else {
            throw AuditError(.keyFile, path: path, "the checkpoint key is owned by uid \(st.st_uid), not by uid \(uid) who runs stockade: another user could have written it; `chown \(uid) \(path)` if it is yours")
        }
        let mode = st.st_mode & 0o777
        guard mode & 0o077 == 0 else {
            throw AuditError(.keyFile, path: path, "the checkpoint key has mode \(octal(mode)), so group or others can read or change it: `chmod 600 \(path)`, and make a new key if others may have read it")
        }
        let text = try readSmall(fd, path: path)
        guard let raw = AuditCheckpoint.decodeHex(text), raw.count == 32,
              let key = try? Curve25519.Signing.PrivateKey(rawRepresentation: raw) else {
            throw AuditError(.keyFile, path: path, "not a checkpoint key: expected 64 lowercase hex digits (a raw Ed25519 private key) and a newline")
        }
        return key
    }

    /// A public key file: 64 lowercase hex digits (the raw Ed25519 public key, as in a checkpoint's
    /// `publicKey` and the `.pub` file beside the key) and an optional newline. It holds no secret,
    /// so only its content is checked.
    public static func loadPublicKey(path: String) throws(AuditError) -> Curve25519.Signing.PublicKey {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { throw AuditError(.keyFile, path: path, errno: errno, "cannot open the public key") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else {
            throw AuditError(.keyFile, path: path, "the public key is not a regular file")
        }
        let text = try readSmall(fd, path: path)
        guard let raw = AuditCheckpoint.decodeHex(text), raw.count == 32,
              let key = try? Curve25519.Signing.PublicKey(rawRepresentation: raw) else {
            throw AuditError(.keyFile, path: path, "not a public key: expected 64 lowercase hex digits (a raw Ed25519 public key, as in a checkpoint's publicKey)")
        }
        return key
    }

    /// The key's directory must not let anyone else replace the key: owned by the user or root, and
    /// not writable by group or others.
    static func checkDirectory(_ directory: String) throws(AuditError) {
        var st = stat()
        guard stat(directory, &st) == 0 else { throw AuditError(.keyFile, path: directory, errno: errno, "cannot examine the checkpoint key's directory") }
        let uid = geteuid()
        guard st.st_uid == uid || st.st_uid == 0 else {
            throw AuditError(.keyFile, path: directory, "the checkpoint key's directory is owned by uid \(st.st_uid), so that user can replace the key: keep the key in a directory of uid \(uid) (mode 0700)")
        }
        let mode = st.st_mode & 0o777
        guard mode & 0o022 == 0 else {
            throw AuditError(.keyFile, path: directory, "the checkpoint key's directory has mode \(octal(mode)), so group or others can replace the key: `chmod go-w \(directory)` (0700 is best)")
        }
    }

    /// Writes `bytes` to a new file beside `path` and links it in: readers see the whole file or
    /// none. Without `replace`, returns false (and changes nothing) when `path` appeared meanwhile.
    private static func publish(_ bytes: [UInt8], at path: String, mode: mode_t, replace: Bool) throws(AuditError) -> Bool {
        let temporary = path + ".new-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode)
        guard fd >= 0 else { throw AuditError(.keyFile, path: temporary, errno: errno, "cannot create the key file") }
        defer { unlink(temporary) }
        var written = 0
        while written < bytes.count {
            let n = bytes[written...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else {
                let error = errno
                close(fd)
                throw AuditError(.keyFile, path: temporary, errno: error, "cannot write the key file")
            }
            written += n
        }
        let synced = fchmod(fd, mode) == 0 && fsync(fd) == 0
        let error = errno
        close(fd)
        guard synced else { throw AuditError(.keyFile, path: temporary, errno: error, "cannot write the key file") }
        if replace {
            guard rename(temporary, path) == 0 else { throw AuditError(.keyFile, path: path, errno: errno, "cannot write the key file") }
        } else if link(temporary, path) != 0 {
            if errno == EEXIST { return false }
            throw AuditError(.keyFile, path: path, errno: errno, "cannot write the key file")
        }
        let dir = open(parent(of: path), O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dir >= 0 {
            fsync(dir)
            close(dir)
        }
        return true
    }

    private static func readSmall(_ fd: Int32, path: String) throws(AuditError) -> String {
        var buffer = [UInt8](repeating: 0, count: 256)
        var count = 0
        while count < buffer.count {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress! + count, $0.count - count) }
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { throw AuditError(.keyFile, path: path, errno: errno, "cannot read the key") }
            if n == 0 { break }
            count += n
        }
        var text = Array(buffer[..<count])
        if text.last == 0x0A { text.removeLast() }
        return String(decoding: text, as: UTF8.self)
    }

    static func parent(of path: String) -> String {
        guard let slash = path.utf8.lastIndex(of: UInt8(ascii: "/")) else { return "." }
        let head = String(path[..<slash])
        return head.isEmpty ? "/" : head
    }

    private static func octal(_ mode: mode_t) -> String {
        let digits = String(mode, radix: 8)
        return String(repeating: "0", count: max(0, 4 - digits.count)) + digits
    }
}
