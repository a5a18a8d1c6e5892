import Foundation
import Glibc
@testable import StockadeLinux
import StockadePolicy
import StockadeTestSupport
@testable import StockadeSupervisor
import Testing

private let projectRoot = TestPaths.projectRoot


@Suite("a relative extends path")
struct RelativeExtendsTests {
    @Test("a relative extends path names a file beside the profile, wherever the command is started")
    func besideTheProfile() throws {
        let dir = try temporaryDirectory("extends-beside"), elsewhere = try temporaryDirectory("extends-elsewhere")
        defer {
            try? FileManager.default.removeItem(atPath: dir)
            try? FileManager.default.removeItem(atPath: elsewhere)
        }
        try write(#"{"limits": {"memory": "48m"}}"#, to: dir + "/base.json", mode: 0o644)
        try write(#"{"extends": "./base.json", "limits": {"cpus": 0.5}}"#, to: dir + "/child.json", mode: 0o644)
        // A decoy where the old lookup (against the current directory) would have looked.
        try write(#"{"limits": {"memory": "24m"}}"#, to: elsewhere + "/base.json", mode: 0o644)

        let loaded = try ProfileCatalog(directories: []).load(dir + "/child.json")
        #expect(loaded.profile.limits.memoryBytes == 48 << 20)
        #expect(FileManager.default.currentDirectoryPath != dir)

        // Through the binary, started in the decoy's directory.
        let shown = try Harness.exec("/bin/sh", ["-c", "cd \"$1\" && exec \"$0\" profile show \"$2\"", Harness.stockade, elsewhere,
                                                 dir + "/child.json"])
        #expect(shown.status == 0, "\(shown.stderr)")
        #expect(shown.stdout.contains(#""memory": "48m""#), "\(shown.stdout)")
    }

    @Test("a missing base is reported by the path it was resolved to")
    func missingBase() throws {
        let dir = try temporaryDirectory("extends-missing")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try write(#"{"extends": "parts/base.json"}"#, to: dir + "/child.json", mode: 0o644)
        #expect {
            try ProfileCatalog(directories: []).load(dir + "/child.json")
        } throws: { error in
            (error as? ProfileError)?.source == dir + "/parts/base.json"
        }
        let r = try Harness.exec("/bin/sh", ["-c", "cd / && exec \"$0\" profile show \"$1\"", Harness.stockade, dir + "/child.json"])
        #expect(r.status == 1)
        #expect(r.stderr.contains(dir + "/parts/base.json"), "\(r.stderr)")
    }

    @Test("names, absolute paths and built-in profiles are not rebased", arguments: [
        ("default", "/p/child.json", false, "default"),
        ("/abs/base.json", "/p/child.json", false, "/abs/base.json"),
        ("base.json", "/p/child.json", false, "/p/base.json"),
        ("../up/base.json", "/p/q/child.json", false, "/p/q/../up/base.json"),
        ("./base.json", "child.json", false, "./base.json"),
        ("./base.json", "builtin:strict", true, "./base.json"),
    ])
    func rebasing(_ parent: String, _ source: String, _ builtin: Bool, _ expected: String) {
        #expect(ProfileCatalog.relative(parent, to: source, builtin: builtin) == expected)
    }
}

@Suite("operator profiles, end to end", .enabled(if: Harness.canSandbox, "needs root and user namespaces (run the suite as root on Linux)"),
       .timeLimit(.minutes(2)))
struct ProfileEndToEndTests {
    @Test("a read-only volume refuses writes and an rw one accepts them; only the rw host directory changes")
    func volumes() throws {
        let h = try Harness()
        let dir = try temporaryDirectory("e2e-vol")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for sub in ["ro", "rw"] {
            try FileManager.default.createDirectory(atPath: "\(dir)/\(sub)", withIntermediateDirectories: true)
            chmod("\(dir)/\(sub)", 0o777)
            try write("host\n", to: "\(dir)/\(sub)/existing", mode: 0o666)
        }
        let r = try h.run(["--volume", "\(dir)/ro:/data/ro", "--volume", "\(dir)/rw:/data/rw:rw"], ["/bin/sh", "-c", """
            cat /data/ro/existing
            echo worker > /data/ro/new && echo ro-write-worked
            echo worker >> /data/ro/existing && echo ro-append-worked
            echo worker > /data/rw/new && echo rw-write-worked
            """])
        let report = try r.report()
        let out = report.string("stdout") ?? ""
        #expect(out.contains("host\n"))
        #expect(!out.contains("ro-write-worked") && !out.contains("ro-append-worked"), "\(out)")
        #expect(out.contains("rw-write-worked"), "\(out) \(report.string("stderr") ?? "")")
        #expect(!FileManager.default.fileExists(atPath: dir + "/ro/new"))
        #expect(try String(contentsOfFile: dir + "/ro/existing", encoding: .utf8) == "host\n")
        #expect(try String(contentsOfFile: dir + "/rw/new", encoding: .utf8) == "worker\n")
    }

    @Test("a profile volume outside allowedVolumeRoots fails the run (125) and profile check, naming the field")
    func badProfile() throws {
        let h = try Harness()
        let dir = try temporaryDirectory("e2e-bad")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try write(#"{"extends": "default", "allowedVolumeRoots": ["/srv/data"], "volumes": [{"source": "/usr/share", "target": "/data"}]}"#,
                  to: dir + "/bad.json", mode: 0o644)
        let r = try h.stockade(["run", "--json", "--profile", dir + "/bad.json", "--", "/bin/true"])
        #expect(r.status == 125)
        let setup = try #require(try r.report()["setupError"] as? [String: Any])
        #expect(setup["message"] as? String == "volumes[0].source: not under an allowed root /srv/data")
        let check = try h.stockade(["profile", "check", dir + "/bad.json"])
        #expect(check.status == 1)
        #expect(check.stderr.contains("bad.json: volumes[0].source: not under an allowed root /srv/data"), "\(check.stderr)")
    }

    @Test("--network loopback brings lo up and shows no other interface; the default leaves lo down")
    func loopback() throws {
        let h = try Harness()
        let up = try h.run(["--network", "loopback"], ["/bin/sh", "-c", "/usr/bin/ip -o link show; tail -n +3 /proc/net/dev | cut -d: -f1"])
        let lines = (try up.report().string("stdout") ?? "").split(separator: "\n").map(String.init)
        let links = lines.filter { $0.contains(": <") }
        #expect(links.count == 1, "\(lines)")
        #expect(links.first?.contains("lo: <LOOPBACK,UP,LOWER_UP>") == true, "\(lines)")
        #expect(lines.filter { !$0.contains(": <") }.map { $0.trimmingCharacters(in: .whitespaces) } == ["lo"])
        let down = try h.run([], ["/usr/bin/ip", "-o", "link", "show"])
        let text = try down.report().string("stdout") ?? ""
        #expect(text.contains("lo: <LOOPBACK>") && !text.contains("UP"), "\(text)")
    }

    @Test("a published port reaches a server on the worker's loopback, and the worker cannot reach a host listener")
    func publish() throws {
        let h = try Harness()
        // A free host port: bind an ephemeral one, then release it for the forwarder.
        let probe = try hostListener()
        close(probe.fd)
        let hostPort = probe.port
        let server = """
            use IO::Socket::INET;
            my $s = IO::Socket::INET->new(LocalAddr => "127.0.0.1", LocalPort => 8080, Listen => 5, ReuseAddr => 1) or die "listen: $!";
            my $c = $s->accept; my $line = <$c>; print $c "worker got $line"; close $c; print "served\\n";
            """
        let result = LockedResult()
        let thread = Thread {
            result.set(try? h.run(["--publish", "\(hostPort):8080", "--timeout", "30"], ["/usr/bin/perl", "-e", server]))
        }
        thread.start()
        var reply: String?
        for _ in 0..<300 where reply == nil && !result.done {
            if let text = exchange(port: hostPort, send: "ping\n"), !text.isEmpty { reply = text } else { usleep(50_000) }
        }
        while !result.done { usleep(10_000) }
        #expect(reply == "worker got ping\n")
        let r = try #require(result.value)
        #expect(try r.report().string("stdout") == "served\n")

        // The other way: a host listener on 127.0.0.1 stays unreachable from a loopback worker.
        let listener = try hostListener()
        defer { close(listener.fd) }
        let out = try h.run(["--network", "loopback"], ["/usr/bin/perl", "-MIO::Socket::INET", "-e",
                                                        "print IO::Socket::INET->new(PeerAddr => '127.0.0.1:\(listener.port)', Timeout => 3) ? \"connected\\n\" : \"refused\\n\""])
        #expect(try out.report().string("stdout") == "refused\n")
        #expect(fcntl(listener.fd, F_SETFL, O_NONBLOCK) == 0)
        #expect(accept(listener.fd, nil, nil) < 0 && errno == EAGAIN)
    }

    @Test("a host port in use fails the run closed, naming the port")
    func portTaken() throws {
        let h = try Harness()
        let listener = try hostListener()
        defer { close(listener.fd) }
        let r = try h.run(["--publish", "\(listener.port):80"], ["/bin/true"])
        #expect(r.status == 125)
        let setup = try #require(try r.report()["setupError"] as? [String: Any])
        #expect(setup["stage"] as? String == "publish")
        #expect((setup["message"] as? String)?.contains("127.0.0.1:\(listener.port)") == true)
    }

    @Test("a secret from a 0600 file reaches the worker and never the report, the logs or report.json, even split across writes")
    func secrets() throws {
        let h = try Harness()
        let dir = try temporaryDirectory("e2e-secret")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let secret = "s3cr3t-Value-42"
        try write(secret + "\n", to: dir + "/token", mode: 0o600)
        try write(#"{"extends": "default", "secrets": [{"env": "API_TOKEN", "file": "\#(dir)/token"}]}"#, to: dir + "/p.json", mode: 0o644)
        let r = try h.run(["--profile", dir + "/p.json"], ["/bin/sh", "-c", """
            test "$API_TOKEN" = "\(secret.prefix(6))""\(secret.dropFirst(6))" && echo visible-to-worker
            echo "token=$API_TOKEN"; echo "$API_TOKEN" >&2
            printf 's3cr3t-'; sleep 0.2; printf 'Value-42\\n'
            """])
        let report = try r.report()
        let stdout = report.string("stdout") ?? ""
        #expect(stdout == "visible-to-worker\ntoken=[REDACTED]\n[REDACTED]\n")
        #expect(report.string("stderr") == "[REDACTED]\n")
        #expect(!r.stdout.contains(secret) && !r.stdout.contains("Value-42"))
        // Streaming to the operator (no --json): redacted as it streams, also across writes.
        let streamed = try h.stockade(["run", "--profile", dir + "/p.json", "--", "/bin/sh", "-c",
                                       "echo \"$API_TOKEN\"; printf 's3cr3t-'; sleep 0.2; printf 'Value-42\\n'"])
        #expect(streamed.stdout == "[REDACTED]\n[REDACTED]\n", "\(streamed.stdout)")
        #expect(!streamed.stderr.contains("Value-42"))
        let runDirectory = h.stateDirectory + "/runs/" + (report.string("runId") ?? "")
        for file in ["logs/stdout.log", "logs/stderr.log", "report.json"] {
            let text = try String(contentsOfFile: runDirectory + "/" + file, encoding: .utf8)
            #expect(!text.contains(secret) && !text.contains("Value-42"), "\(file)")
            #expect(text.contains("[REDACTED]"), "\(file)")
        }
    }

    @Test("a secret file readable by others is refused before anything runs")
    func secretMode() throws {
        let h = try Harness()
        let dir = try temporaryDirectory("e2e-secret")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try write("long-enough-secret\n", to: dir + "/token", mode: 0o644)
        try write(#"{"extends": "default", "secrets": [{"env": "API_TOKEN", "file": "\#(dir)/token"}]}"#, to: dir + "/p.json", mode: 0o644)
        let r = try h.run(["--profile", dir + "/p.json"], ["/bin/true"])
        #expect(r.status == 125)
        let setup = try #require(try r.report()["setupError"] as? [String: Any])
        #expect(setup["stage"] as? String == "secrets")
        #expect(setup["message"] as? String == "secrets[0].file: \(dir)/token has mode 0644; a secret file must be 0600 or stricter (chmod 600 \(dir)/token)")
    }

    @Test("an imported Docker-format profile denies what it lists, visibly, and allows the rest")
    func dockerProfile() throws {
        let h = try Harness()
        // keyctl is 250 and getpid 39 on x86_64; getcpu (309) is denied by the example's own deny list.
        let r = try h.stockade(["run", "--json", "--profile", projectRoot + "/Profiles/examples/docker-seccomp.json", "--",
                                "/usr/bin/perl", "-e", #"$r = syscall(250, 0, 0, 0, 0, 0); print "keyctl=$r errno=", $!+0, "\n"; print "getpid=", (syscall(39) > 0 ? "ok" : "fail"), "\n"; $r = syscall(309, 0, 0, 0); print "getcpu=$r errno=", $!+0, "\n";"#])
        let report = try r.report()
        #expect(report.string("outcome") == "exited")
        #expect(report.string("stdout") == "keyctl=-1 errno=1\ngetpid=ok\ngetcpu=-1 errno=1\n")
        #expect(Set(report.violationSyscalls) == ["keyctl", "getcpu"])
    }
}

final class LockedResult: @unchecked Sendable {
    private let lock = NSLock()
    private var result: Harness.Result?
    private var finished = false
    func set(_ r: Harness.Result?) { lock.lock(); result = r; finished = true; lock.unlock() }
    var done: Bool { lock.lock(); defer { lock.unlock() }; return finished }
    var value: Harness.Result? { lock.lock(); defer { lock.unlock() }; return result }
}
