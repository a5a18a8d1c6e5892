import Crypto
import Foundation
import Glibc
import Testing

/// A followed log: reads the chunked body as it comes, and can be cut at any point.
final class LogFollowReader {
    let fd: Int32
    private var decoder = ChunkDecoder()
    private var raw: [UInt8] = []
    private var headParsed = false
    private(set) var status = 0
    private(set) var headers: [String: String] = [:]
    private(set) var body: [UInt8] = []

    init(client: HTTPClient, path: String, token: String) throws {
        fd = try client.connect(timeoutSeconds: 60)
        try HTTPClient.send(fd, HTTPClient.head("GET", path, token: token, headers: [:], bodyCount: nil))
    }

    deinit { close(fd) }

    /// Reads until `until` holds for the body so far, or the server ends the body (true) or the
    /// connection; returns whether the server ended the stream.
    @discardableResult
    func read(until: ([UInt8]) -> Bool = { _ in false }) throws -> Bool {
        var chunk = [UInt8](repeating: 0, count: 4096)
        while !until(body) {
            if decoder.finished { return true }
            let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n < 0 { throw HTTPClient.Failure(description: "read: \(String(cString: strerror(errno)))") }
            if n == 0 { return decoder.finished }
            var bytes = Array(chunk[0..<n])
            if !headParsed {
                raw += bytes
                guard let (status, headers, rest) = HTTPClient.splitHead(raw) else { continue }
                self.status = status
                self.headers = headers
                headParsed = true
                bytes = rest
                if headers["transfer-encoding"]?.lowercased() != "chunked" {
                    body += bytes
                    return true
                }
            }
            body += decoder.feed(bytes)
        }
        return decoder.finished
    }
}

@Suite("stockade serve: logs followed as they are written, verified results, verification through the API", .serialized,
       .enabled(if: ServerHarness.canSandbox, "needs root and user namespaces (run the suite as root on Linux)"), .timeLimit(.minutes(4)))
struct RunOutputRoutesTests {
    static func sha256(_ bytes: [UInt8]) -> String {
        SHA256.hash(data: bytes).map { String(format: "%02x", $0) }.joined()
    }

    func waitForState(_ server: ServerHarness, _ id: String, token: String, _ state: String) throws {
        for _ in 0..<400 {
            if try server.client.request("GET", "/v1/runs/\(id)", token: token).json()["state"] as? String == state { return }
            usleep(25_000)
        }
        Issue.record("run \(id) never reached \(state)")
    }

    @Test("a followed log cut mid-way and resumed from its offset: the pieces make the final log and the report's stdout, byte for byte, and the secret never shows")
    func followResume() throws {
        let server = try ServerHarness()
        let token = try server.token("engine", scopes: "run:read,run:write")
        let secret = "sk-follow-\(UUID().uuidString)"
        let secretFile = server.directory + "/token"
        try secret.write(toFile: secretFile, atomically: true, encoding: .utf8)
        chmod(secretFile, 0o600)
        let profile = server.directory + "/secret.json"
        try #"{"extends":"default","secrets":[{"env":"API_TOKEN","file":"\#(secretFile)"}]}"#.write(toFile: profile, atomically: true, encoding: .utf8)
        // Numbered lines with pauses; the secret is printed whole and split across two writes a pause apart.
        let script = """
            i=1
            while [ $i -le 12 ]; do echo "line $i"; i=$((i+1)); sleep 0.15; done
            echo "whole $API_TOKEN end"
            head=$(printf '%s' "$API_TOKEN" | cut -c1-9); rest=$(printf '%s' "$API_TOKEN" | cut -c10-)
            printf 'split %s' "$head"; sleep 0.4; printf '%s done\\n' "$rest"
            while [ $i -le 20 ]; do echo "line $i"; i=$((i+1)); sleep 0.1; done
            """
        let body = try JSONSerialization.data(withJSONObject: ["profile": profile, "command": ["/bin/sh", "-c", script]])
        let submitted = try server.client.request("POST", "/v1/runs", token: token, body: Array(body))
        #expect(submitted.status == 202, "\(submitted.text)")
        let id = try #require(try submitted.json()["id"] as? String)

        // Cut the first follower once a few lines have arrived, mid-run.
        let first = try LogFollowReader(client: server.client, path: "/v1/runs/\(id)/logs?follow=true", token: token)
        let ended = try first.read { String(decoding: $0, as: UTF8.self).contains("line 4\n") }
        #expect(first.status == 200)
        #expect(!ended, "the run was still going when the first follower was cut")
        let head = first.body
        close(first.fd)

        // Without follow, a running run answers what is written so far, a prefix of what will be.
        let partial = try server.client.request("GET", "/v1/runs/\(id)/logs", token: token)
        #expect(partial.status == 200, "\(partial.text)")
        #expect(partial.headers["stockade-next-offset"] == String(partial.body.count))

        let second = try LogFollowReader(client: server.client, path: "/v1/runs/\(id)/logs?follow=true&offset=\(head.count)", token: token)
        #expect(try second.read(), "the stream ends by itself once the run has finished")
        #expect(second.status == 200)
        let followed = head + second.body

        let waited = try server.client.request("GET", "/v1/runs/\(id)/wait", token: token)
        let report = try #require(try waited.json()["report"] as? [String: Any])
        let logFile = try Data(contentsOf: URL(fileURLWithPath: server.stateDirectory + "/runs/\(id)/logs/stdout.log"))
        #expect(followed == Array(logFile), "followed: \(String(decoding: followed, as: UTF8.self))")
        #expect(String(decoding: followed, as: UTF8.self) == report["stdout"] as? String)
        #expect(Array(partial.body) == Array(followed.prefix(partial.body.count)))
        let text = String(decoding: followed, as: UTF8.self)
        #expect(!text.contains(secret) && !text.contains(String(secret.prefix(9))), "\(text)")
        #expect(text.contains("whole [REDACTED] end\nsplit [REDACTED] done\n"), "\(text)")
        #expect(text.hasPrefix("line 1\nline 2\n") && text.hasSuffix("line 20\n"))

        // A finished run: follow from the middle gives the rest and ends; offset past the end, nothing.
        let rest = try LogFollowReader(client: server.client, path: "/v1/runs/\(id)/logs?follow=true&offset=7", token: token)
        #expect(try rest.read())
        #expect(rest.body == Array(followed.dropFirst(7)))
        let past = try server.client.request("GET", "/v1/runs/\(id)/logs?offset=\(followed.count + 5)", token: token)
        #expect(past.status == 200 && past.body.isEmpty)
        #expect(try server.client.request("GET", "/v1/runs/\(id)/logs?follow=maybe", token: token).error().field == "follow")

        // A worker that wrote nothing has its logs, empty: 200 with no bytes, not 404 no-logs.
        let silent = try #require(try server.client.request("POST", "/v1/runs", token: token, json: #"{"command":["/bin/true"]}"#).json()["id"] as? String)
        #expect(try server.client.request("GET", "/v1/runs/\(silent)/wait", token: token).status == 200)
        for stream in ["stdout", "stderr"] {
            let path = server.stateDirectory + "/runs/\(silent)/logs/\(stream).log"
            #expect((try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) == 0, "\(path) is not there empty")
            let answer = try server.client.request("GET", "/v1/runs/\(silent)/logs?stream=\(stream)", token: token)
            #expect(answer.status == 200 && answer.body.isEmpty && answer.headers["stockade-next-offset"] == "0", "\(answer.status) \(answer.text)")
        }
        #expect(server.terminate() == 0)
    }

    @Test("a follower that stops reading is cut off after the stall limit, not buffered for; it resumes from its offset and gets the rest")
    func stalledFollower() throws {
        let server = try ServerHarness(environment: ["STOCKADE_SERVE_STALL_SECONDS": "2"])
        let token = try server.token("engine", scopes: "run:read,run:write")
        // 1 MiB (the default cap), more than the socket's buffers hold; the run stays up a while.
        let script = "head -c 1048576 /dev/zero | tr '\\0' a; sleep 6"
        let body = try JSONSerialization.data(withJSONObject: ["command": ["/bin/sh", "-c", script]])
        let id = try #require(try server.client.request("POST", "/v1/runs", token: token, body: Array(body)).json()["id"] as? String)
        let full = 1 << 20
        for _ in 0..<400 {
            let size = (try? FileManager.default.attributesOfItem(atPath: server.stateDirectory + "/runs/\(id)/logs/stdout.log")[.size] as? Int) ?? 0
            if size == full { break }
            usleep(25_000)
        }
        let reader = try LogFollowReader(client: server.client, path: "/v1/runs/\(id)/logs?follow=true", token: token)
        // Read the head only, then take nothing for longer than the stall limit.
        try reader.read { !$0.isEmpty }
        sleep(4)
        let ended = try reader.read()
        #expect(!ended, "the stream was cut, not ended")
        #expect(reader.body.count < full, "the stalled follower did not get the whole log: \(reader.body.count)")
        #expect(server.log.contains("logs.stalled"), "\(server.log)")
        let rest = try LogFollowReader(client: server.client, path: "/v1/runs/\(id)/logs?follow=true&offset=\(reader.body.count)", token: token)
        #expect(try rest.read())
        let log = try Data(contentsOf: URL(fileURLWithPath: server.stateDirectory + "/runs/\(id)/logs/stdout.log"))
        #expect(reader.body + rest.body == Array(log))
        #expect(log.count == full)
        #expect(server.terminate() == 0)
    }

    @Test("the accepted result: its manifest and files served as verified; traversal, unlisted paths and planted links refused without reading outside")
    func results() throws {
        let server = try ServerHarness()
        let token = try server.token("engine", scopes: "run:read,run:write")
        let content = "sorted: 1 2 3\n"
        let nested = "deep file\n"
        func manifest(_ sha: String) -> String {
            #"{"version":1,"files":[{"path":"out/a.txt","size":\#(content.utf8.count),"sha256":"\#(sha)"},{"path":"b c.txt","size":\#(nested.utf8.count),"sha256":"\#(Self.sha256(Array(nested.utf8)))"}],"artifacts":["out/a.txt"]}"#
        }
        func script(_ sha: String, delay: String = "0") -> String {
            "sleep \(delay); cd /sandbox/result && mkdir out && printf '\(content.replacingOccurrences(of: "\n", with: "\\n"))' > out/a.txt && "
                + "printf '\(nested.replacingOccurrences(of: "\n", with: "\\n"))' > 'b c.txt' && printf '%s' '\(manifest(sha))' > manifest.json"
        }
        func submit(_ command: [String]) throws -> String {
            let body = try JSONSerialization.data(withJSONObject: ["command": command])
            let submitted = try server.client.request("POST", "/v1/runs", token: token, body: Array(body))
            #expect(submitted.status == 202, "\(submitted.text)")
            return try #require(try submitted.json()["id"] as? String)
        }
        let id = try submit(["/bin/sh", "-c", script(Self.sha256(Array(content.utf8)), delay: "3")])
        let early = try server.client.request("GET", "/v1/runs/\(id)/result", token: token)
        #expect(try early.status == 409 && early.error().code == "not-finished", "\(early.text)")
        let report = try #require(try server.client.request("GET", "/v1/runs/\(id)/wait", token: token).json()["report"] as? [String: Any])
        #expect((report["result"] as? [String: Any])?["status"] as? String == "accepted", "\(report)")

        let listing = try server.client.request("GET", "/v1/runs/\(id)/result", token: token)
        #expect(listing.status == 200, "\(listing.text)")
        let json = try listing.json()
        let files = try #require(json["files"] as? [[String: Any]])
        #expect(files.map { $0["path"] as? String } == ["out/a.txt", "b c.txt"])
        #expect(files.first?["size"] as? Int == content.utf8.count)
        #expect(files.first?["sha256"] as? String == Self.sha256(Array(content.utf8)))
        #expect(json["artifacts"] as? [String] == ["out/a.txt"])
        let manifestBytes = try Data(contentsOf: URL(fileURLWithPath: server.stateDirectory + "/runs/\(id)/result/manifest.json"))
        #expect(json["manifestSha256"] as? String == Self.sha256(Array(manifestBytes)))

        let file = try server.client.request("GET", "/v1/runs/\(id)/result/out/a.txt", token: token)
        #expect(file.status == 200 && file.text == content, "\(file.text)")
        #expect(file.headers["content-type"] == "application/octet-stream")
        #expect(try server.client.request("GET", "/v1/runs/\(id)/result/b%20c.txt", token: token).text == nested)
        #expect(try server.client.request("GET", "/v1/runs/\(id)/result/out%2Fa.txt", token: token).text == content)

        // Paths that break the bundle path rules: 400 naming `path`; the router may refuse some first (404).
        let invalid = ["../report.json", "out/../../report.json", "%2e%2e/report.json", "%2E%2E%2Freport.json", "out/..%2F..%2Freport.json",
                       "%2Fetc%2Fpasswd", "out//a.txt", "out/a.txt%00", "./out/a.txt", "%zz", "out/%0aa.txt"]
        for path in invalid {
            let answer = try server.client.request("GET", "/v1/runs/\(id)/result/\(path)", token: token)
            #expect(answer.status == 400 || answer.status == 404, "\(path): \(answer.status) \(answer.text)")
            #expect(!answer.text.contains("root:") && !answer.text.contains("\"outcome\""), "\(path) leaked: \(answer.text)")
            if answer.status == 400 { #expect(try answer.error().field == "path", "\(path)") }
        }
        for path in ["%2e%2e/report.json", "out//a.txt", "out/a.txt%00", "%2Fetc%2Fpasswd"] {
            #expect(try server.client.request("GET", "/v1/runs/\(id)/result/\(path)", token: token).status == 400, "\(path)")
        }
        // Listed paths only: the manifest itself, a directory and an absent name are not files of the result.
        for path in ["manifest.json", "out", "nope.txt", "OUT/A.TXT"] {
            let answer = try server.client.request("GET", "/v1/runs/\(id)/result/\(path)", token: token)
            #expect(try answer.status == 404 && answer.error().field == "path", "\(path): \(answer.text)")
        }

        // A link planted in the copy after the run is never followed.
        let copy = server.stateDirectory + "/runs/\(id)/result/out/a.txt"
        unlink(copy)
        symlink("/etc/passwd", copy)
        let planted = try server.client.request("GET", "/v1/runs/\(id)/result/out/a.txt", token: token)
        #expect(try planted.status == 500 && planted.error().code == "result-unavailable", "\(planted.text)")
        #expect(!planted.text.contains("root:"))
        #expect(!planted.text.contains(server.stateDirectory), "the answer names the state directory: \(planted.text)")
        // A manifest changed after the run is not the accepted one.
        try Data((manifest(Self.sha256(Array(content.utf8))) + " ").utf8).write(to: URL(fileURLWithPath: server.stateDirectory + "/runs/\(id)/result/manifest.json"))
        let changed = try server.client.request("GET", "/v1/runs/\(id)/result", token: token)
        #expect(try changed.status == 500 && changed.error().code == "result-unavailable", "\(changed.text)")

        // A rejected result (a wrong hash) and no result at all.
        let rejected = try submit(["/bin/sh", "-c", script(String(repeating: "0", count: 64))])
        _ = try server.client.request("GET", "/v1/runs/\(rejected)/wait", token: token)
        let refused = try server.client.request("GET", "/v1/runs/\(rejected)/result", token: token)
        #expect(try refused.status == 409 && refused.error().code == "result-rejected", "\(refused.text)")
        #expect(try server.client.request("GET", "/v1/runs/\(rejected)/result/out/a.txt", token: token).error().code == "result-rejected")
        let none = try submit(["/bin/true"])
        _ = try server.client.request("GET", "/v1/runs/\(none)/wait", token: token)
        let absent = try server.client.request("GET", "/v1/runs/\(none)/result", token: token)
        #expect(try absent.status == 404 && absent.error().code == "no-result", "\(absent.text)")
        #expect(try server.client.request("GET", "/v1/runs/01M8T8XVRWJ2JTE6RJBTBY81KR/result", token: token).status == 404)
        #expect(server.terminate() == 0)
    }

    @Test("POST /v1/verify runs the selected controls in the service and answers the verify report; one at a time; bad bodies name the field")
    func verify() throws {
        // One run at a time, held by a sleeping run: the verification's probe run waits in the queue.
        let server = try ServerHarness(arguments: ["--max-running", "1"])
        let admin = try server.token("security", scopes: "admin")
        let engine = try server.token("engine", scopes: "run:read,run:write")
        #expect(try server.client.request("POST", "/v1/verify", token: engine, json: "{}").status == 403)
        let unknown = try server.client.request("POST", "/v1/verify", token: admin, json: #"{"only":["seccomp.keyrings"],"bogus":1}"#)
        #expect(try unknown.status == 400 && unknown.error().code == "invalid-field" && unknown.error().field == "bogus", "\(unknown.text)")
        #expect(try server.client.request("POST", "/v1/verify", token: admin, json: #"{"only":["no-such.control"]}"#).error().field == "only[0]")
        #expect(try server.client.request("POST", "/v1/verify", token: admin, json: #"{"only":"seccomp.*"}"#).error().field == "only")
        #expect(try server.client.request("POST", "/v1/verify", token: admin, json: #"{"profile":"no-such-profile"}"#).error().field == "profile")
        #expect(try server.client.request("POST", "/v1/verify", token: admin, json: "[1]").error().code == "invalid-json")

        let sleeper = try server.client.request("POST", "/v1/runs", token: engine, json: #"{"command":["sleep","60"]}"#)
        let sleeperId = try #require(try sleeper.json()["id"] as? String)
        try waitForState(server, sleeperId, token: engine, "running")

        /// The first verification's answer, from the thread that waits for it.
        final class Answer: @unchecked Sendable {
            private let lock = NSLock()
            private var value: Result<HTTPClient.Response, Error>?
            var result: Result<HTTPClient.Response, Error>? { lock.withLock { value } }
            func set(_ result: Result<HTTPClient.Response, Error>) { lock.withLock { value = result } }
        }
        let box = Answer()
        let client = server.client
        let thread = Thread {
            box.set(Result { try client.request("POST", "/v1/verify", token: admin, json: #"{"profile":"default","only":["seccomp.keyrings"]}"#) })
        }
        thread.start()
        // The first verification's probe run is queued behind the sleeper: it is under way.
        var queued = 0
        for _ in 0..<600 where queued == 0 {
            queued = try server.client.request("GET", "/v1/health").json()["queued"] as? Int ?? 0
            if queued == 0 { usleep(50_000) }
        }
        #expect(queued >= 1, "the verification's probe run never queued")
        let second = try server.client.request("POST", "/v1/verify", token: admin, json: "{}")
        #expect(try second.status == 409 && second.error().code == "verify-running", "\(second.text)")
        _ = try server.client.request("POST", "/v1/runs/\(sleeperId)/cancel", token: engine)

        for _ in 0..<1200 where box.result == nil { usleep(50_000) }
        let answer = try #require(try box.result?.get())
        #expect(answer.status == 200, "\(answer.text)")
        let report = try answer.json()
        #expect(report["profile"] as? String == "default")
        let controls = try #require(report["controls"] as? [[String: Any]])
        #expect(controls.map { $0["id"] as? String } == ["seccomp.keyrings"])
        #expect(controls.first?["verdict"] as? String == "enforced", "\(answer.text)")
        #expect(report["passed"] as? Bool == true)
        let events = try server.stockade(["audit", "events", "--kind", "verification", "--json"]).stdout.split(separator: "\n")
        #expect(events.count == 1, "\(events)")
        #expect(server.terminate() == 0)
    }
}
