import Foundation
import Testing

/// docs/openapi.json, and a validator for the subset of JSON Schema it uses (type, properties,
/// required, additionalProperties, items, enum, const, oneOf, $ref, minimum, maximum, minLength,
/// maxLength, minItems, pattern). Every answer the server tests receive through `HTTPClient.request`
/// is checked against the operation its method and path name: an undocumented status, content type
/// or shape fails the test that received it.
struct OpenAPIDocument: @unchecked Sendable {
    // Read-only after loading: JSONSerialization's dictionaries.
    let root: [String: Any]
    /// (method, template segments, template) for every operation.
    let operations: [(method: String, segments: [String], template: String)]

    static let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    static let shared: OpenAPIDocument? = {
        guard let data = try? Data(contentsOf: repositoryRoot.appendingPathComponent("docs/openapi.json")),
              let root = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else { return nil }
        return OpenAPIDocument(root: root)
    }()

    init(root: [String: Any]) {
        self.root = root
        var operations: [(String, [String], String)] = []
        for (template, item) in (root["paths"] as? [String: Any]) ?? [:] {
            for method in ((item as? [String: Any]) ?? [:]).keys where ["get", "post", "put", "delete", "patch"].contains(method) {
                operations.append((method.uppercased(), template.split(separator: "/").map(String.init), template))
            }
        }
        self.operations = operations
    }

    /// The template a concrete path matches (`/v1/runs/01J…/wait` → `/v1/runs/{id}/wait`); a literal
    /// segment wins over a parameter.
    func template(method: String, path: String) -> String? {
        let concrete = path.split(separator: "?", maxSplits: 1).first.map { $0.split(separator: "/").map(String.init) } ?? []
        var best: (template: String, literals: Int)?
        for op in operations where op.method == method {
            // A trailing `{path}` takes the rest of the path, slashes included.
            let rest = op.segments.last == "{path}"
            guard rest ? concrete.count >= op.segments.count : op.segments.count == concrete.count else { continue }
            var literals = 0
            var matches = true
            for (t, c) in zip(op.segments, concrete) {
                if t.hasPrefix("{") { continue }
                if t != c { matches = false; break }
                literals += 1
            }
            if matches, literals > (best?.literals ?? -1) { best = (op.template, literals) }
        }
        return best?.template
    }

    func operation(_ method: String, _ template: String) -> [String: Any]? {
        ((root["paths"] as? [String: Any])?[template] as? [String: Any])?[method.lowercased()] as? [String: Any]
    }

    /// What is wrong with this answer, or an empty list. Paths no operation documents are not
    /// checked here (the router answers them 404; `documentedRoutes` checks the two lists agree).
    func problems(method: String, path: String, status: Int, headers: [String: String], body: [UInt8]) -> [String] {
        guard let template = template(method: method, path: path), let op = operation(method, template) else { return [] }
        let where_ = "\(method) \(template) → \(status)"
        guard var response = (op["responses"] as? [String: Any])?[String(status)] as? [String: Any] else {
            return ["\(where_): status \(status) is not documented for this operation"]
        }
        if let ref = response["$ref"] as? String, let resolved = resolve(ref) { response = resolved }
        guard let content = response["content"] as? [String: Any] else {
            return body.isEmpty ? [] : ["\(where_): a body where the document describes none"]
        }
        let type = (headers["content-type"] ?? "").split(separator: ";").first.map { $0.trimmingCharacters(in: .whitespaces) } ?? ""
        guard let media = content[type] as? [String: Any] else {
            return ["\(where_): content type \(type.isEmpty ? "(none)" : type) is not one of \(content.keys.sorted())"]
        }
        guard type == "application/json", let schema = media["schema"] else { return [] }
        guard let value = try? JSONSerialization.jsonObject(with: Data(body), options: [.fragmentsAllowed]) else {
            return ["\(where_): the body is not JSON: \(String(decoding: body.prefix(200), as: UTF8.self))"]
        }
        var found: [String] = []
        validate(value, against: schema, at: "$", into: &found)
        return found.map { "\(where_): \($0)" }
    }

    func resolve(_ ref: String) -> [String: Any]? {
        guard ref.hasPrefix("#/") else { return nil }
        var node: Any? = root
        for part in ref.dropFirst(2).split(separator: "/") { node = (node as? [String: Any])?[String(part)] }
        return node as? [String: Any]
    }

    static func typeName(_ value: Any) -> String {
        if value is NSNull { return "null" }
        if let n = value as? NSNumber {
            // JSONSerialization's booleans are NSNumbers of objCType "c".
            if String(cString: n.objCType) == "c" { return "boolean" }
            return n.doubleValue.rounded() == n.doubleValue ? "integer" : "number"
        }
        if value is String { return "string" }
        if value is [Any] { return "array" }
        if value is [String: Any] { return "object" }
        return "unknown"
    }

    static func same(_ a: Any, _ b: Any) -> Bool {
        guard typeName(a) == typeName(b) else { return false }
        if let x = a as? String, let y = b as? String { return x == y }
        if let x = a as? NSNumber, let y = b as? NSNumber { return x.doubleValue == y.doubleValue }
        return a is NSNull && b is NSNull
    }

    func validate(_ value: Any, against schemaAny: Any, at path: String, into found: inout [String]) {
        guard var schema = schemaAny as? [String: Any] else { return }
        if let ref = schema["$ref"] as? String {
            guard let resolved = resolve(ref) else { found.append("\(path): unresolvable $ref \(ref)"); return }
            schema = resolved
        }
        if let choices = schema["oneOf"] as? [Any] {
            let passing = choices.filter { choice in
                var sub: [String] = []
                validate(value, against: choice, at: path, into: &sub)
                return sub.isEmpty
            }
            if passing.count != 1 { found.append("\(path): matches \(passing.count) of the oneOf choices, not exactly one") }
            return
        }
        let actual = Self.typeName(value)
        if let declared = schema["type"] {
            let allowed = (declared as? [String]) ?? [(declared as? String) ?? ""]
            let ok = allowed.contains(actual) || (actual == "integer" && allowed.contains("number"))
            if !ok { found.append("\(path): \(actual), expected \(allowed.joined(separator: " or "))"); return }
        }
        if let options = schema["enum"] as? [Any], !options.contains(where: { Self.same($0, value) }) {
            found.append("\(path): \(value) is not one of \(options)")
        }
        if let constant = schema["const"], !Self.same(constant, value) {
            found.append("\(path): \(value), expected \(constant)")
        }
        if let n = value as? NSNumber, actual != "boolean" {
            if let min = schema["minimum"] as? Double, n.doubleValue < min { found.append("\(path): \(n) < minimum \(min)") }
            if let max = schema["maximum"] as? Double, n.doubleValue > max { found.append("\(path): \(n) > maximum \(max)") }
        }
        if let s = value as? String {
            if let min = schema["minLength"] as? Int, s.count < min { found.append("\(path): shorter than \(min)") }
            if let max = schema["maxLength"] as? Int, s.count > max { found.append("\(path): longer than \(max)") }
            if let pattern = schema["pattern"] as? String, s.range(of: pattern, options: .regularExpression) == nil {
                found.append("\(path): \(s) does not match \(pattern)")
            }
        }
        if let array = value as? [Any] {
            if let min = schema["minItems"] as? Int, array.count < min { found.append("\(path): fewer than \(min) items") }
            if let items = schema["items"] {
                for (i, item) in array.enumerated() { validate(item, against: items, at: "\(path)[\(i)]", into: &found) }
            }
        }
        if let object = value as? [String: Any] {
            let properties = schema["properties"] as? [String: Any] ?? [:]
            for key in (schema["required"] as? [String]) ?? [] where object[key] == nil {
                found.append("\(path): the required key \(key) is missing")
            }
            for (key, member) in object {
                if let sub = properties[key] {
                    validate(member, against: sub, at: "\(path).\(key)", into: &found)
                } else if let extra = schema["additionalProperties"] {
                    if let allowed = extra as? Bool {
                        if !allowed { found.append("\(path): the key \(key) is not documented") }
                    } else {
                        validate(member, against: extra, at: "\(path).\(key)", into: &found)
                    }
                }
            }
        }
    }

    /// Records, in the running test, every way an answer departs from the document.
    static func check(method: String, path: String, _ response: HTTPClient.Response) {
        guard let document = shared else {
            Issue.record("docs/openapi.json is missing or not a JSON object")
            return
        }
        for problem in document.problems(method: method, path: path, status: response.status, headers: response.headers, body: response.body) {
            Issue.record("OpenAPI: \(problem)")
        }
    }
}
