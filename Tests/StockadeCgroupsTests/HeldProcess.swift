import Foundation
@testable import StockadeCgroups

/// A real `SHELL -c SCRIPT` child that blocks on its stdin until released, so a test can place it in a
/// cgroup before it runs anything, as the spawner does.
struct HeldProcess {
    let pid: pid_t
    private let release: Int32

    init(_ script: String, shell: String = "/bin/sh") throws {
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else { throw Failure("pipe: errno \(errno)") }
        // The parent's write end must not leak into the children, or they would never see EOF.
        _ = fcntl(fds[1], F_SETFD, FD_CLOEXEC)
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, fds[0], 0)
        posix_spawn_file_actions_addclose(&actions, fds[1])
        let args: [String] = [shell, "-c", "read -r go; " + script]
        var argv: [UnsafeMutablePointer<CChar>?] = args.map { strdup($0) }
        argv.append(nil)
        defer { argv.forEach { free($0) } }
        var child: pid_t = 0
        let rc = posix_spawn(&child, shell, &actions, nil, argv, environ)
        close(fds[0])
        guard rc == 0 else {
            close(fds[1])
            throw Failure("posix_spawn: \(rc)")
        }
        pid = child
        release = fds[1]
    }

    /// Lets the script run.
    func start() {
        _ = "go\n".withCString { Glibc.write(release, $0, 3) }
        close(release)
    }

    /// Closes the release pipe without starting the script (for a child killed while held).
    func abandon() {
        close(release)
    }

    /// Reaps the child; returns the signal that ended it, or nil if it exited.
    func reap() -> Int32? {
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let signal = status & 0x7f
        return signal != 0 && signal != 0x7f ? signal : nil
    }
}

struct Failure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Writes `pid` into each descriptor of `cgroup.procs`, as the spawner's C path does.
func join(_ pid: pid_t, through descriptors: [Int32]) throws {
    let text = String(pid)
    for fd in descriptors {
        let n = text.withCString { pwrite(fd, $0, strlen($0), 0) }
        guard n == text.utf8.count else { throw Failure("joining pid \(pid) through fd \(fd): errno \(errno)") }
    }
}

/// Polls for at most about two seconds.
func eventually(_ condition: () -> Bool) -> Bool {
    for _ in 0..<400 {
        if condition() { return true }
        usleep(5_000)
    }
    return condition()
}

func readText(_ path: String) -> String? {
    try? String(contentsOfFile: path, encoding: .utf8)
}

func trimmed(_ path: String) -> String? {
    readText(path).map { String($0.trimmingWhitespace) }
}
