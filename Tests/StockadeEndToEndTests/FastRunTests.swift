import ArgumentParser
import Testing
@testable import StockadeCLI

/// `stockade run`'s hand reader (FastRun) against ArgumentParser's: the same flags, every field, for
/// every line it takes; nil (ArgumentParser reads it) for every line it must not take.
@Suite("stockade run's command line read without reflection")
struct FastRunTests {
    /// Every field of `run`.
    static func fields(_ run: RunFlags) -> String {
        var text = ""
        dump(run, to: &text)
        return text
    }

    static let taken: [[String]] = [
        ["--", "/bin/true"],
        ["--json", "--", "/bin/sh", "-c", "echo hi -- --json"],
        ["--profile", "strict", "--memory", "64m", "--cpus", "0.5", "--pids", "32", "--timeout", "10s", "--", "true"],
        ["--memory=128MiB", "--cpus=1.5", "--pids=7", "--timeout=1m", "--network=loopback", "--", "x", "--memory", "1"],
        ["--network", "proxy", "--allow-host", "pypi.org", "--allow-host", "*.example.com:8443", "--", "pip"],
        ["--network", "loopback", "--publish", "8080:80", "--publish", "9090:90", "--", "srv"],
        ["--volume", "/tmp:/data:ro", "--volume", "/var/tmp:/scratch:rw", "--env", "A=1", "--env", "B=", "--", "env"],
        ["--label", "team=ci", "--label", "job=7", "--name", "build-7", "-i", "--", "cat"],
        ["--interactive", "--state-dir", "/tmp/s", "--", "cat"],
        ["--workspace", "/tmp", "--", "ls"],
        ["--request", "/tmp/req"],
        ["--image", "busybox:latest", "--", "/bin/sh"],
        ["--rootfs", "/srv/root", "--", "/bin/sh"],
        ["--profile", "", "--", "true"],
        ["--cpus", "2", "--json", "--", "true"],
        ["--", "--json", "--help", "-i"],
    ]

    static let refused: [[String]] = [
        [],                                         // no command: validate refuses
        ["--help"], ["-h"], ["--version"], ["--", ], ["--bogus", "--", "true"], ["-x", "--", "true"],
        ["true"],                                   // a positional before --
        ["--profile", "a", "--profile", "b", "--", "true"],
        ["--json", "--json", "--", "true"],
        ["--json=yes", "--", "true"],
        ["--profile", "--json", "--", "true"],      // a missing value
        ["--memory", "--", "true"],
        ["--profile"],
        ["--cpus", "lots", "--", "true"], ["--pids", "1.5", "--", "true"],
        ["--image", "a", "--rootfs", "/r", "--", "true"],
        ["--rootfs", "relative", "--", "true"],
        ["--network", "wifi", "--", "true"],
        ["--memory", "12q", "--", "true"],
        ["--memory", "-1", "--", "true"],           // taken as the value (.unconditional), then refused by validate
        ["--env", "=x", "--", "true"],
        ["-i", "-i", "--", "cat"],
        ["-ij", "--", "true"],
    ]

    @Test("a line the hand reader takes gives the flags ArgumentParser gives, field by field")
    func sameRun() throws {
        for line in Self.taken {
            let fast = try #require(FastRun.parse(["run"] + line), "the hand reader should take \(line)")
            let parsed = try #require(try Stockade.parseAsRoot(["run"] + line) as? Run, "\(line)")
            #expect(Self.fields(fast) == Self.fields(parsed.flags), "\(line)")
            // The dump holds the values themselves.
            for value in line where !value.hasPrefix("-") && !value.isEmpty { #expect(Self.fields(fast).contains(value), "\(value) in \(line)") }
            // The check can fail: a different value shows.
            if !line.contains("--name") {
                #expect(Self.fields(fast) != Self.fields(try #require(FastRun.parse(["run", "--name", "other-name"] + line))))
            }
        }
    }

    @Test("a line it does not plainly understand is left to ArgumentParser, which says what is wrong")
    func leftToArgumentParser() {
        for line in Self.refused {
            #expect(FastRun.parse(["run"] + line) == nil, "\(line)")
        }
        // Not `run`: never read by hand.
        #expect(FastRun.parse(["batch", "-"]) == nil)
        #expect(FastRun.parse(["audit", "--", "true"]) == nil)
    }

    /// A property's name without a wrapper's leading underscore.
    static func labels(_ value: Any) -> Set<String> {
        Set(Mirror(reflecting: value).children.compactMap { $0.label.map { $0.hasPrefix("_") ? String($0.dropFirst()) : $0 } })
    }

    @Test("RunFlags has a field for every flag of Run, its option groups' included")
    func everyFlag() {
        var flags = Self.labels(Run()).subtracting(["state", "remote"])
        flags.formUnion(Self.labels(StateOptions()))
        flags.formUnion(Self.labels(HostOptions()))
        #expect(flags.count == 22, "\(flags.sorted())")
        #expect(flags == Self.labels(RunFlags()))
        // The check can fail: a Run with a flag more has a name RunFlags lacks.
        #expect(flags.union(["newFlag"]) != Self.labels(RunFlags()))
    }
}
