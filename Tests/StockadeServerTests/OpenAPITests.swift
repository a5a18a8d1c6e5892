import Foundation
import Testing

/// docs/openapi.json against the router and against itself. (Each answer the other server tests
/// receive is validated as it arrives: see `OpenAPIDocument.check`.)
@Suite("the OpenAPI document")
struct OpenAPITests {
    /// (METHOD, template) for every route the service's router registers, read from its source.
    static func routerRoutes() throws -> Set<String> {
        let directory = OpenAPIDocument.repositoryRoot.appendingPathComponent("Sources/StockadeServer")
        var routes = Set<String>()
        let pattern = #"router\.(get|post|put|delete|patch)\("([^"]+)""#
        for name in try FileManager.default.contentsOfDirectory(atPath: directory.path) where name.hasSuffix(".swift") {
            let text = try String(contentsOf: directory.appendingPathComponent(name), encoding: .utf8)
            let regex = try NSRegularExpression(pattern: pattern)
            for match in regex.matches(in: text, range: NSRange(text.startIndex..., in: text)) {
                guard let method = Range(match.range(at: 1), in: text), let route = Range(match.range(at: 2), in: text) else { continue }
                // Hummingbird's `**` (the rest of the path) is the document's `{path}`.
                routes.insert("\(text[method].uppercased()) \(text[route].replacingOccurrences(of: "/**", with: "/{path}"))")
            }
        }
        return routes
    }

    @Test("the document loads, every $ref resolves, every operation has an id, a scope or none, and answers")
    func wellFormed() throws {
        let document = try #require(OpenAPIDocument.shared, "docs/openapi.json parses as a JSON object")
        #expect(document.root["openapi"] as? String == "3.1.0")
        var refs: [String] = []
        func walk(_ node: Any) {
            if let object = node as? [String: Any] {
                if let ref = object["$ref"] as? String { refs.append(ref) }
                object.values.forEach(walk)
            } else if let array = node as? [Any] {
                array.forEach(walk)
            }
        }
        walk(document.root)
        #expect(refs.count > 20)
        for ref in Set(refs) { #expect(document.resolve(ref) != nil, "unresolvable \(ref)") }
        var ids = Set<String>()
        for op in document.operations {
            let operation = try #require(document.operation(op.method, op.template))
            let id = try #require(operation["operationId"] as? String, "\(op.method) \(op.template) has an operationId")
            #expect(ids.insert(id).inserted, "operationId \(id) is used twice")
            #expect(operation["security"] is [Any], "\(op.method) \(op.template) states its security (a scope, or [] for none)")
            let responses = try #require(operation["responses"] as? [String: Any])
            #expect(responses.keys.contains { $0.hasPrefix("2") }, "\(op.method) \(op.template) documents a success")
        }
    }

    @Test("the router and the document name the same routes")
    func sameRoutes() throws {
        let document = try #require(OpenAPIDocument.shared)
        let documented = Set(document.operations.map { "\($0.method) \($0.template)" })
        let served = try Self.routerRoutes()
        #expect(served.count >= 14, "the router's routes were found in Sources/StockadeServer: \(served.sorted())")
        #expect(served.subtracting(documented).isEmpty, "served but not documented: \(served.subtracting(documented).sorted())")
        #expect(documented.subtracting(served).isEmpty, "documented but not served: \(documented.subtracting(served).sorted())")
    }

    @Test("the validator refuses answers that depart from the document (so the checks on live answers can fail)")
    func validatorRefuses() throws {
        let document = try #require(OpenAPIDocument.shared)
        let json = ["content-type": "application/json"]
        let good = Array(#"{"status":"ok","running":0,"queued":0,"maxRunning":2,"maxQueued":16}"#.utf8)
        #expect(document.problems(method: "GET", path: "/v1/health", status: 200, headers: json, body: good).isEmpty)
        let cases: [(String, String, Int, [String: String], String, String)] = [
            ("GET", "/v1/health", 200, json, #"{"status":"ok","running":0,"queued":0,"maxRunning":2}"#, "required key maxQueued"),
            ("GET", "/v1/health", 200, json, #"{"status":"fine","running":0,"queued":0,"maxRunning":2,"maxQueued":1}"#, "not one of"),
            ("GET", "/v1/health", 200, json, #"{"status":"ok","running":"0","queued":0,"maxRunning":2,"maxQueued":1}"#, "expected integer"),
            ("GET", "/v1/health", 200, json, #"{"status":"ok","running":0,"queued":0,"maxRunning":2,"maxQueued":1,"extra":1}"#, "not documented"),
            ("GET", "/v1/health", 418, json, "{}", "status 418 is not documented"),
            ("GET", "/v1/health", 200, ["content-type": "text/html"], "<p>", "content type text/html"),
            ("GET", "/v1/runs/01M8T8XVRWJ2JTE6RJBTBY81KR", 404, json, #"{"error":{"code":"not-found","message":"m"}}"#, "required key field"),
            ("GET", "/v1/runs/01M8T8XVRWJ2JTE6RJBTBY81KR/wait", 200, json,
             #"{"id":"01M8T8XVRWJ2JTE6RJBTBY81KR","state":"finished","report":{"runId":"x"}}"#, "oneOf"),
            ("POST", "/v1/runs", 202, json, #"{"id":"01M8T8XVRWJ2JTE6RJBTBY81KR","state":"done","replayed":false}"#, "not one of"),
        ]
        for (method, path, status, headers, body, expected) in cases {
            let problems = document.problems(method: method, path: path, status: status, headers: headers, body: Array(body.utf8))
            #expect(problems.contains { $0.contains(expected) }, "\(method) \(path) \(status) \(body): expected a problem with \(expected), found \(problems)")
        }
        #expect(document.template(method: "GET", path: "/v1/runs/01M8T8XVRWJ2JTE6RJBTBY81KR/wait?x=1") == "/v1/runs/{id}/wait")
        #expect(document.template(method: "DELETE", path: "/v1/runs") == nil)
        #expect(document.template(method: "GET", path: "/v1/runs/01M8T8XVRWJ2JTE6RJBTBY81KR/result/a/b.txt") == "/v1/runs/{id}/result/{path}")
        #expect(document.template(method: "GET", path: "/v1/runs/01M8T8XVRWJ2JTE6RJBTBY81KR/result") == "/v1/runs/{id}/result")
    }
}
