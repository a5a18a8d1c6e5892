import Foundation
import Testing

/// `stockade serve`, and the commands `stockade` hands on (a PostgreSQL store, an https:// service),
/// execute the `stockade-server` beside it: checked as the spawn helper is, and executed through the
/// descriptor that was checked. Here a copy of /bin/echo stands in for it, so what ran is what it prints.
@Suite("the stockade-server binary stockade executes", .serialized)
struct ServerBinaryTests {
    struct Beside {
        let directory: String
        var binary: String { directory + "/stockade" }
        var server: String { directory + "/stockade-server" }

        init() throws {
            let parent = URL(fileURLWithPath: Harness.binDirectory).resolvingSymlinksInPath().deletingLastPathComponent().path
            directory = parent + "/stk-server-binary-test-\(UUID().uuidString.prefix(8))"
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: false)
            #expect(chmod(directory, 0o755) == 0)
            if link(Harness.stockade, binary) != 0 { try FileManager.default.copyItem(atPath: Harness.stockade, toPath: binary) }
        }

        /// `stockade serve planted-ran`: /bin/echo prints its words when it is executed.
        func serve() throws -> Harness.Result { try Harness.exec(binary, ["serve", "planted-ran"]) }

        func remove() { try? FileManager.default.removeItem(atPath: directory) }
    }

    @Test("a stockade-server writable by others, a link, set-user-ID, not a file, a script, or in a directory others may write is not executed; a root-owned 0755 file is")
    func refusedUnlessClosed() throws {
        let beside = try Beside()
        defer { beside.remove() }
        func refused(_ what: String, _ expected: String) throws {
            let r = try beside.serve()
            #expect(r.status == 1 && !r.stdout.contains("planted-ran"), "\(what): a refused stockade-server ran: \(r.status) \(r.stdout) \(r.stderr)")
            #expect(r.stderr.contains("refused") && r.stderr.contains(expected) && r.stderr.contains(beside.directory), "\(what): \(r.stderr)")
        }
        // Absent: named, with how to build it.
        let absent = try beside.serve()
        #expect(absent.status == 1 && absent.stderr.contains(beside.server) && absent.stderr.contains("swift build --product stockade-server"), "\(absent.stderr)")
        try FileManager.default.copyItem(atPath: "/bin/echo", toPath: beside.server)
        // The positive control: the same file, closed, is executed with the words given.
        #expect(chmod(beside.server, 0o755) == 0)
        let ran = try beside.serve()
        #expect(ran.status == 0 && ran.stdout == "planted-ran\n", "\(ran.status) \(ran.stdout) \(ran.stderr)")
        for mode in [0o775, 0o757] {
            #expect(chmod(beside.server, mode_t(mode)) == 0)
            try refused("mode \(String(mode, radix: 8))", "writable by its group or by others")
        }
        #expect(chmod(beside.server, 0o4755) == 0)
        try refused("set-user-ID", "set-user-ID")
        #expect(chmod(beside.server, 0o755) == 0)
        #expect(chmod(beside.directory, 0o777) == 0)
        try refused("a directory others may write", "writable by its group or by others")
        #expect(chmod(beside.directory, 0o755) == 0)
        try FileManager.default.removeItem(atPath: beside.server)
        #expect(symlink("/bin/echo", beside.server) == 0)
        try refused("a symbolic link", "is a symbolic link")
        try FileManager.default.removeItem(atPath: beside.server)
        #expect(mkfifo(beside.server, 0o755) == 0)
        try refused("a FIFO", "is not a regular file")
        try FileManager.default.removeItem(atPath: beside.server)
        // A script, closed as the binary would be: not run (it could not be, through the checked
        // descriptor), and said so rather than a bare "No such file or directory".
        try Data("#!/bin/sh\necho planted-ran\n".utf8).write(to: URL(fileURLWithPath: beside.server))
        #expect(chmod(beside.server, 0o755) == 0)
        try refused("a script", "is not an ELF program")
        try FileManager.default.removeItem(atPath: beside.server)
        // The routes take the same path: a PostgreSQL store's command with a refused file runs nothing.
        try FileManager.default.copyItem(atPath: "/bin/echo", toPath: beside.server)
        #expect(chmod(beside.server, 0o757) == 0)
        let routed = try Harness.exec(beside.binary, ["audit", "runs", "--store", "postgres://127.0.0.1:1/x"])
        #expect(routed.status == 1 && !routed.stdout.contains("cli") && routed.stderr.contains("writable by its group or by others"), "\(routed.stdout) \(routed.stderr)")
        #expect(chmod(beside.server, 0o755) == 0)
        let handed = try Harness.exec(beside.binary, ["audit", "runs", "--store", "postgres://127.0.0.1:1/x"])
        #expect(handed.status == 0 && handed.stdout.hasPrefix("cli "), "\(handed.stdout) \(handed.stderr)")
    }
}
