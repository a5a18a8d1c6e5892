import Foundation
import Testing
@testable import StockadeCLI

/// The one-shot `stockade` links no TLS client (it starts faster without SwiftNIO and swift-nio-ssl);
/// a command for an `https://` service runs in `stockade-server cli`, which has it.
@Suite("commands for an https:// service are handed to stockade-server", .serialized)
struct TLSRouteTests {
    @Test("--host and $STOCKADE_HOST name an https:// service for a command that can go through one, before any --; other addresses, other commands and a worker's words do not")
    func routeIsTakenOnlyForAnHTTPSService() {
        let none: [String: String] = [:]
        #expect(TLSRoute.named(["run", "--host", "https://h:8443", "--", "/bin/true"], environment: none))
        #expect(TLSRoute.named(["review", "list", "--host=https://[::1]:8443"], environment: none))
        #expect(TLSRoute.named(["audit", "events", "--run", "r"], environment: ["STOCKADE_HOST": "https://h"]))
        #expect(TLSRoute.named(["batch", "-"], environment: ["STOCKADE_HOST": "https://h"]))
        // The flag wins over the variable, as ServiceClient.configured has it.
        #expect(!TLSRoute.named(["run", "--host", "unix:///s", "--", "/bin/true"], environment: ["STOCKADE_HOST": "https://h"]))
        #expect(TLSRoute.named(["run", "--host", "https://h", "--", "/bin/true"], environment: ["STOCKADE_HOST": "unix:///s"]))
        for (words, environment) in [(["run", "--", "/bin/echo", "--host", "https://h"], none),
                                     // `--` is no value of --host: the worker's words after it do not count.
                                     (["run", "--host", "--", "/bin/echo", "--host=https://h"], none),
                                     (["run", "--host", "http://127.0.0.1:8700", "--", "/bin/true"], none),
                                     (["run", "--", "/bin/true"], none),
                                     (["run", "--", "/bin/true"], ["STOCKADE_HOST": ""]),
                                     (["run", "--host"], none),
                                     // Commands that cannot go through a service ignore $STOCKADE_HOST.
                                     (["audit", "runs"], ["STOCKADE_HOST": "https://h"]),
                                     (["profile", "check", "p.json"], ["STOCKADE_HOST": "https://h"]),
                                     (["--version"], ["STOCKADE_HOST": "https://h"])] {
            #expect(!TLSRoute.named(words, environment: environment), "\(words) \(environment)")
        }
    }

    @Test("without stockade-server beside it, stockade refuses an https:// service naming stockade-server (run: exit 125, others: 1) and reaches other services itself")
    func withoutTheServerBinary() throws {
        let parent = URL(fileURLWithPath: Harness.binDirectory).resolvingSymlinksInPath().deletingLastPathComponent().path
        let directory = parent + "/stk-tls-route-test-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: false)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let binary = directory + "/stockade"
        if link(Harness.stockade, binary) != 0 { try FileManager.default.copyItem(atPath: Harness.stockade, toPath: binary) }
        // The address is never reached: the command stops before any connection.
        let token = ["STOCKADE_TOKEN": "stk_route_test"]
        let run = try Harness.exec(binary, ["run", "--host", "https://127.0.0.1:1", "--", "/bin/true"], environment: token)
        #expect(run.status == 125, "\(run.stderr)")
        #expect(run.stderr.contains("stockade-server") && run.stderr.contains(directory), "\(run.stderr)")
        #expect(run.stderr.contains("commands for an https:// service run in stockade-server"), "\(run.stderr)")
        var viaVariable = token
        viaVariable["STOCKADE_HOST"] = "https://127.0.0.1:1"
        let list = try Harness.exec(binary, ["review", "list"], environment: viaVariable)
        #expect(list.status == 1 && list.stderr.contains("stockade-server"), "\(list.stderr)")
        // The positive control: the same binary reaches a Unix socket service itself (nothing listens:
        // its own connection error, not stockade-server's absence).
        let missing = directory + "/no.sock"
        let unix = try Harness.exec(binary, ["run", "--host", "unix://" + missing, "--", "/bin/true"], environment: token)
        #expect(unix.status != 0 && unix.stderr.contains(missing) && !unix.stderr.contains("stockade-server"), "\(unix.stderr)")
    }
}
