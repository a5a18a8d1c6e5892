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

    @Test("stockade-server refuses a stockade of another build that executed it, with that command's failure status; one of its own build goes on")
    func otherBuildRefused() throws {
        let beside = try Beside()
        defer { beside.remove() }
        // /usr/bin/env standing in shows what stockade hands over: its build token and the status
        // serve exits with when it cannot go on, replacing any value the caller had set.
        try FileManager.default.copyItem(atPath: "/usr/bin/env", toPath: beside.server)
        #expect(chmod(beside.server, 0o755) == 0)
        let printed = try Harness.exec(beside.binary, ["serve"], environment: ["STOCKADE_CALLER_BUILD": "planted/1"])
        let handed = printed.stdout.split(separator: "\n").filter { $0.hasPrefix("STOCKADE_CALLER_BUILD=") }.map { String($0.dropFirst(22)) }
        let token = try #require(handed.first?.split(separator: "/").first.map(String.init), "\(printed.stdout) \(printed.stderr)")
        #expect(token.utf8.count == 16 && token.utf8.allSatisfy { (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }, "\(token)")
        #expect(handed == [token + "/1"], "\(handed)")

        // The real stockade and stockade-server of this build: a run handed on goes on to its store
        // (none listens at port 1: exit 125 naming it), not refused as another build's.
        let server = Harness.binDirectory + "/stockade-server"
        let chain = try Harness.exec(Harness.stockade, ["run", "--", "/bin/true"], environment: ["STOCKADE_STORE": "postgres://127.0.0.1:1/x"])
        #expect(chain.status == 125 && !chain.stderr.contains("not of the build") && chain.stderr.contains("127.0.0.1"), "\(chain.status) \(chain.stderr)")
        let own = try Harness.exec(server, ["cli", "--version"], environment: ["STOCKADE_CALLER_BUILD": token + "/125"])
        #expect(own.status == 0 && !own.stdout.isEmpty, "the positive control: \(own.status) \(own.stdout) \(own.stderr)")
        for (value, status) in [("0123456789abcdef/125", Int32(125)), ("0123456789abcdef/1", 1), (token, 1), ("", 1), ("\(token)x/125", 125)] {
            let r = try Harness.exec(server, ["cli", "--version"], environment: ["STOCKADE_CALLER_BUILD": value])
            #expect(r.status == status && r.stdout.isEmpty, "\(value): \(r.status) \(r.stdout) \(r.stderr)")
            #expect(r.stderr.contains("is not of the build of the stockade that ran it") && r.stderr.contains("from one build"), "\(value): \(r.stderr)")
        }
        // Without the variable (an operator running stockade-server itself) nothing is checked.
        let direct = try Harness.exec(server, ["cli", "--version"])
        #expect(direct.status == 0 && direct.stdout == own.stdout, "\(direct.status) \(direct.stderr)")
    }
}
