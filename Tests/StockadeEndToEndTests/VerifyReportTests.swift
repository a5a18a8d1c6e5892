import Foundation
import StockadePolicy
import StockadeSupervisor
@testable import StockadeVerify
import Testing

/// Synthetic verification reports: real verdicts from `Verifier.judge` on observations a test chooses.
enum SyntheticReports {
    static func exited(_ code: Int32, _ output: String = "") -> ProbeObservation {
        ProbeObservation(outcome: "exited", exitCode: code, signal: nil, output: output)
    }

    static func refused(_ call: String) -> ProbeObservation {
        ProbeObservation(outcome: "exited", exitCode: 0, signal: nil, output: "refused", violations: ["x86_64/\(call)"])
    }

    static func result(_ id: String, profile: Profile = Profile(), positive: ProbeObservation, sandboxed: ProbeObservation) throws -> ControlResult {
        Verifier.judge(try #require(ControlCatalog.control(id)), profile: profile, positive: positive, sandboxed: sandboxed)
    }

    static var weak: Profile {
        var p = Profile()
        p.name = "weak"
        p.seccomp.allow = ["keyctl", "add_key"]
        return p
    }

    /// One of each verdict under `default`; under `weak` the keyring control is granted.
    static func reports(evidence: String = "refused") throws -> [VerificationReport] {
        let defaultResults = [
            try result("seccomp.keyrings", positive: exited(77), sandboxed: refused("add_key")),
            try result("seccomp.bpf", positive: exited(77), sandboxed: exited(77, "bpf: \(evidence)")),
            try result("seccomp.modules", positive: exited(2), sandboxed: exited(0)),
            try result("seccomp.ptrace", positive: exited(77), sandboxed: refused("ptrace")),
        ]
        let weakResults = [
            try result("seccomp.keyrings", profile: weak, positive: exited(77), sandboxed: exited(77)),
            try result("seccomp.bpf", profile: weak, positive: exited(77), sandboxed: refused("bpf")),
            try result("seccomp.modules", profile: weak, positive: exited(77), sandboxed: refused("init_module")),
            try result("seccomp.ptrace", profile: weak, positive: exited(77), sandboxed: refused("ptrace")),
        ]
        return [
            VerificationReport(profile: "default", profileDigest: "d1", kernel: "6.x", cgroupMode: "v1", controls: defaultResults, durationMs: 1200,
                               profileSource: "builtin:default"),
            VerificationReport(profile: "weak", profileDigest: "d2", kernel: "6.x", cgroupMode: "v1", controls: weakResults, durationMs: 800,
                               profileSource: "/etc/stockade/profiles/weak profile.json"),
        ]
    }
}

@Suite("verify for security teams: the catalogue, a controls file, reports other tools read, the profile matrix")
struct VerifyReportTests {
    static func write(_ text: String, _ name: String) throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("stockade-\(UUID().uuidString)-\(name)").path
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    /// python3 from PATH (the one with jsonschema may not be /usr/bin's).
    static func python(_ args: [String]) throws -> Harness.Result { try Harness.exec("/usr/bin/env", ["python3"] + args) }

    static func hasPython(_ module: String) -> Bool { (try? python(["-c", "import \(module)"]).status) == 0 }

    @Test("every control names a threat class of the model, what it proves and its probe; the classic escapes cite their incident")
    func catalogue() throws {
        for control in ControlCatalog.all {
            #expect((1...16).contains(control.threatClass) && !control.title.isEmpty && !control.probe.isEmpty, "\(control.id)")
        }
        let cited = [("namespaces.cgroup-release-agent", "CVE-2022-0492"), ("supervisor.runtime-binary", "CVE-2019-5736"),
                     ("descriptors.cwd-outside", "CVE-2024-21626"), ("descriptors.inherited", "CVE-2024-21626"),
                     ("seccomp.open-by-handle-at", "shocker"), ("namespaces.kernel-helpers", "core_pattern"),
                     ("namespaces.mount-proc", "unmask"), ("seccomp.keyctl-session", "keyrings"),
                     ("capabilities.ptrace-init", "CVE-2016-9962"), ("seccomp.userfaultfd", "userfaultfd"), ("seccomp.io-uring", "io_uring")]
        for (id, reference) in cited {
            let incident = ControlCatalog.control(id)?.incident ?? ""
            #expect(incident.contains(reference), "\(id): \(incident)")
        }
    }

    @Test("verify --list --json prints the catalogue: every control with its class, title, probe, mechanism and incident; no root needed",
          .timeLimit(.minutes(1)))
    func listJSON() throws {
        let r = try Harness.exec(Harness.stockade, ["verify", "--list", "--json"])
        #expect(r.status == 0, "\(r.stderr)")
        let entries = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [[String: Any]])
        #expect(entries.map { $0["id"] as? String ?? "" } == ControlCatalog.all.map(\.id))
        for entry in entries {
            for key in ["id", "threatClass", "title", "probe", "mechanism", "grantedBy", "needsCgroups", "incident"] {
                #expect(entry.keys.contains(key), "\(entry["id"] ?? "?"): \(key)")
            }
        }
        let table = try Harness.exec(Harness.stockade, ["verify", "--list"])
        #expect(table.stdout.contains("namespaces.cgroup-release-agent") && table.stdout.contains("CVE-2022-0492"), "\(table.stdout.prefix(400))")
    }

    @Test("selectors name controls by id, prefix and threat class; one that names none selects nothing")
    func selectors() {
        #expect(ControlCatalog.select("seccomp.keyrings").map(\.id) == ["seccomp.keyrings"])
        #expect(ControlCatalog.select("seccomp.*").allSatisfy { $0.id.hasPrefix("seccomp.") })
        #expect(ControlCatalog.select("seccomp.*").count == ControlCatalog.all.filter { $0.id.hasPrefix("seccomp.") }.count)
        #expect(ControlCatalog.select("class:2").allSatisfy { $0.threatClass == 2 } && !ControlCatalog.select("class:2").isEmpty)
        #expect(ControlCatalog.select("*").count == ControlCatalog.all.count)
        for none in ["seccomp.nothing", "class:99", "class:x", "sec*comp*", ""] {
            #expect(ControlCatalog.select(none).isEmpty, "\(none)")
        }
    }

    struct BadFile: Sendable, CustomTestStringConvertible {
        var text: String
        var field: String
        var testDescription: String { field.isEmpty ? text : field }
    }

    static let badFiles: [BadFile] = [
        BadFile(text: #"{"version":1,"profiles":{"default":{"require":["*"]}},"extra":true}"#, field: "extra"),
        BadFile(text: #"{"version":2,"profiles":{"default":{"require":["*"]}}}"#, field: "version"),
        BadFile(text: #"{"profiles":{"default":{"require":["*"]}}}"#, field: "version"),
        BadFile(text: #"{"version":1}"#, field: "profiles"),
        BadFile(text: #"{"version":1,"profiles":{}}"#, field: "profiles"),
        BadFile(text: #"{"version":1,"profiles":{"default":{"require":["*"],"allowNotAplicable":[]}}}"#, field: "profiles.default.allowNotAplicable"),
        BadFile(text: #"{"version":1,"profiles":{"default":{"require":["seccomp.keyring"]}}}"#, field: "profiles.default.require[0]"),
        BadFile(text: #"{"version":1,"profiles":{"default":{"require":["class:2", 3]}}}"#, field: "profiles.default.require[1]"),
        BadFile(text: #"{"version":1,"profiles":{"default":{"require":"seccomp.*"}}}"#, field: "profiles.default.require"),
        BadFile(text: #"{"version":1,"profiles":{"default":{"require":[]}}}"#, field: "profiles.default.require"),
        BadFile(text: #"{"version":1,"profiles":{"default":[]}}"#, field: "profiles.default"),
        BadFile(text: #"{"version":1,"version":1,"profiles":{"default":{"require":["*"]}}}"#, field: ""),
    ]

    @Test("a controls file is parsed strictly: each mistake is an error naming its field", arguments: badFiles)
    func badControlsFile(_ bad: BadFile) {
        do {
            _ = try ControlRequirements.parse(Array(bad.text.utf8))
            Issue.record("accepted: \(bad.text)")
        } catch {
            let issue = error.issues.first
            #expect(issue?.field == bad.field, "\(error)")
        }
    }

    @Test("a controls file that requires a control the profile grants on purpose is unmet, naming that control; allowing not-applicable meets it")
    func requirementUnmet() throws {
        let reports = try SyntheticReports.reports()
        let strictFile = try ControlRequirements.parse(Array(#"{"version":1,"profiles":{"*":{"require":["seccomp.keyrings","seccomp.ptrace"]}}}"#.utf8))
        // Positive control: under default the same file is met.
        #expect(strictFile.unmet(in: reports[0]) == [])
        let unmet = try #require(strictFile.unmet(in: reports[1]))
        #expect(unmet.map(\.control) == ["seccomp.keyrings"])
        #expect(unmet.first?.verdict == .notApplicable)
        #expect(unmet.first?.description.contains("weak: seccomp.keyrings is not-applicable, required enforced") == true, "\(unmet)")
        let lenient = try ControlRequirements.parse(Array(
            #"{"version":1,"profiles":{"weak":{"require":["seccomp.keyrings","seccomp.bpf","seccomp.modules","seccomp.ptrace"],"allowNotApplicable":["seccomp.key*"],"allowInconclusive":["seccomp.modules"]}}}"#.utf8))
        #expect(lenient.unmet(in: reports[1]) == [])
        // Under default, bpf is not-enforced: unmet whatever is allowed; default is not named at all.
        #expect(lenient.unmet(in: reports[0]) == nil)
        let everything = try ControlRequirements.parse(Array(#"{"version":1,"profiles":{"default":{"require":["class:2"]}}}"#.utf8))
        #expect(try #require(everything.unmet(in: reports[0])).map(\.control).contains("seccomp.bpf"))
    }

    @Test("JUnit XML is well-formed, one testcase per control, failures for failing controls and skipped for not-applicable, counts as in the JSON",
          .enabled(if: hasPython("xml.etree.ElementTree"), "needs python3 for xml.etree"), .timeLimit(.minutes(1)))
    func junit() throws {
        // Hostile evidence: markup and control bytes XML 1.0 cannot carry.
        let reports = try SyntheticReports.reports(evidence: "</failure><x a=\"1\"> & \u{1B}[2J\u{07}\u{0}")
        let path = try Self.write(VerificationFormats.junit(reports), "junit.xml")
        defer { try? FileManager.default.removeItem(atPath: path) }
        let script = """
            import sys, json, xml.etree.ElementTree as ET
            root = ET.parse(sys.argv[1]).getroot()
            assert root.tag == "testsuites", root.tag
            out = {"tests": int(root.get("tests")), "failures": int(root.get("failures")), "skipped": int(root.get("skipped")), "suites": []}
            for suite in root.findall("testsuite"):
                cases = suite.findall("testcase")
                assert int(suite.get("tests")) == len(cases)
                assert int(suite.get("failures")) == sum(1 for c in cases if c.find("failure") is not None)
                assert int(suite.get("skipped")) == sum(1 for c in cases if c.find("skipped") is not None)
                for c in cases: assert c.get("name") and c.get("classname")
                out["suites"].append({"name": suite.get("name"), "cases": [c.get("name") for c in cases],
                    "failed": [c.get("name") for c in cases if c.find("failure") is not None],
                    "skipped": [c.get("name") for c in cases if c.find("skipped") is not None],
                    "evidence": [c.find("system-out").text for c in cases]})
            print(json.dumps(out))
            """
        let r = try Self.python(["-c", script, path])
        #expect(r.status == 0, "\(r.stderr)")
        let parsed = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any], "\(r.stdout) \(r.stderr)")
        let suites = try #require(parsed["suites"] as? [[String: Any]])
        #expect(parsed["tests"] as? Int == reports.map(\.controls.count).reduce(0, +))
        for (report, suite) in zip(reports, suites) {
            // The same controls as the JSON report, in its order.
            let ids = (report.jsonValue.object?["controls"]?.array ?? []).compactMap { $0.object?["id"]?.string }
            #expect(suite["cases"] as? [String] == ids)
            #expect(suite["failed"] as? [String] == report.controls.filter(\.fails).map(\.control.id))
            #expect(suite["skipped"] as? [String] == report.controls.filter { !$0.fails && $0.verdict != .enforced }.map(\.control.id))
        }
        #expect(suites[0]["failed"] as? [String] == ["seccomp.bpf"])
        #expect(suites[1]["skipped"] as? [String] == ["seccomp.keyrings"])
        // The hostile evidence survived as text, its markup inert.
        let evidence = (suites[0]["evidence"] as? [Any])?.compactMap { $0 as? String } ?? []
        #expect(evidence.contains { $0.contains("</failure><x a=\"1\"> & \\u{1b}[2J\\u{7}\\u{0}") }, "\(evidence)")
    }

    /// The parts of the SARIF 2.1.0 schema (sarif-schema-2.1.0.json, OASIS) a consumer relies on:
    /// its required properties, enums and types for the objects this report writes.
    static let sarifSchema = #"""
    {"type": "object", "required": ["version", "runs"],
     "properties": {
      "$schema": {"type": "string", "format": "uri"},
      "version": {"enum": ["2.1.0"]},
      "runs": {"type": "array", "items": {"$ref": "#/definitions/run"}}},
     "definitions": {
      "message": {"type": "object", "anyOf": [{"required": ["text"]}, {"required": ["id"]}],
                  "properties": {"text": {"type": "string"}, "id": {"type": "string"}}},
      "multiformatMessageString": {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}},
      "run": {"type": "object", "required": ["tool"],
              "properties": {"tool": {"$ref": "#/definitions/tool"},
                             "results": {"type": "array", "items": {"$ref": "#/definitions/result"}},
                             "invocations": {"type": "array", "items": {"type": "object", "required": ["executionSuccessful"],
                                             "properties": {"executionSuccessful": {"type": "boolean"}}}},
                             "automationDetails": {"type": "object", "properties": {"id": {"type": "string"}}},
                             "properties": {"type": "object"}}},
      "tool": {"type": "object", "required": ["driver"], "properties": {"driver": {"$ref": "#/definitions/toolComponent"}}},
      "toolComponent": {"type": "object", "required": ["name"],
                        "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                                       "rules": {"type": "array", "uniqueItems": true, "items": {"$ref": "#/definitions/reportingDescriptor"}}}},
      "reportingDescriptor": {"type": "object", "required": ["id"],
                              "properties": {"id": {"type": "string"}, "name": {"type": "string"},
                                             "shortDescription": {"$ref": "#/definitions/multiformatMessageString"},
                                             "fullDescription": {"$ref": "#/definitions/multiformatMessageString"},
                                             "defaultConfiguration": {"type": "object", "properties": {"level": {"enum": ["none", "note", "warning", "error"]}}},
                                             "properties": {"type": "object"}}},
      "result": {"type": "object", "required": ["message"],
                 "properties": {"ruleId": {"type": "string"}, "ruleIndex": {"type": "integer", "minimum": -1},
                                "kind": {"enum": ["notApplicable", "pass", "fail", "review", "open", "informational"]},
                                "level": {"enum": ["none", "note", "warning", "error"]},
                                "message": {"$ref": "#/definitions/message"},
                                "locations": {"type": "array", "items": {"$ref": "#/definitions/location"}},
                                "properties": {"type": "object"}}},
      "location": {"type": "object",
                   "properties": {"physicalLocation": {"type": "object", "anyOf": [{"required": ["address"]}, {"required": ["artifactLocation"]}],
                                                       "properties": {"artifactLocation": {"type": "object",
                                                                      "properties": {"uri": {"type": "string", "format": "uri-reference"}}}}},
                                  "logicalLocations": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}}}}}}}}
    """#

    static let hasJSONSchema = hasPython("jsonschema")

    @Test("SARIF 2.1.0 validates against the schema's required structure: a rule per control, a result per failing control, counts as in the JSON",
          .enabled(if: hasJSONSchema, "needs python3 with jsonschema"), .timeLimit(.minutes(1)))
    func sarif() throws {
        let reports = try SyntheticReports.reports()
        let sarif = VerificationFormats.sarif(reports, toolVersion: "0.1.0")
        let document = try Self.write(sarif.serialized(pretty: true), "verify.sarif")
        let schema = try Self.write(Self.sarifSchema, "sarif-schema.json")
        defer { for p in [document, schema] { try? FileManager.default.removeItem(atPath: p) } }
        let script = """
            import sys, json, jsonschema
            doc = json.load(open(sys.argv[1])); schema = json.load(open(sys.argv[2]))
            jsonschema.Draft7Validator.check_schema(schema)
            jsonschema.validate(doc, schema)
            # Positive control: the validator rejects a document missing a required field.
            bad = json.loads(json.dumps(doc)); del bad["runs"][0]["tool"]["driver"]["name"]
            try:
                jsonschema.validate(bad, schema); print("the schema accepted a driver without a name"); sys.exit(3)
            except jsonschema.ValidationError: pass
            for run in doc["runs"]:
                ids = [r["id"] for r in run["tool"]["driver"]["rules"]]
                for res in run["results"]: assert ids[res["ruleIndex"]] == res["ruleId"], res
            print(json.dumps([{"rules": [r["id"] for r in run["tool"]["driver"]["rules"]],
                               "results": [r["ruleId"] for r in run["results"]]} for run in doc["runs"]]))
            """
        let r = try Self.python(["-c", script, document, schema])
        #expect(r.status == 0, "\(r.stdout) \(r.stderr)")
        let runs = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [[String: [String]]], "\(r.stdout)")
        for (report, run) in zip(reports, runs) {
            let ids = (report.jsonValue.object?["controls"]?.array ?? []).compactMap { $0.object?["id"]?.string }
            #expect(run["rules"] == ids)
            #expect(run["results"] == report.controls.filter(\.fails).map(\.control.id))
        }
        #expect(runs.first?["results"] == ["seccomp.bpf"])
        #expect(runs.last?["results"] == [])
        // A profile from a file is the finding's location, its path a URI reference; a built-in one has none.
        #expect(!sarif.serialized().contains(#""physicalLocation""#))
        var fromFile = reports[0]
        fromFile.profileSource = "/etc/stockade/profiles/team profile.json"
        let located = VerificationFormats.sarif([fromFile], toolVersion: "0.1.0").serialized()
        #expect(located.contains(#""physicalLocation":{"artifactLocation":{"uri":"/etc/stockade/profiles/team%20profile.json"}}"#), "\(located)")
    }

    @Test("the profile matrix marks the rows a weakened profile grants and shows the grant; the JSON matrix says the same")
    func matrix() throws {
        let reports = try SyntheticReports.reports()
        let text = VerificationFormats.matrix(reports)
        let lines = text.split(separator: "\n").map(String.init)
        let keyrings = try #require(lines.first { $0.contains("seccomp.keyrings") })
        #expect(keyrings.hasPrefix("* "), "\(keyrings)")
        #expect(keyrings.contains("enforced") && keyrings.contains("granted"), "\(keyrings)")
        // Positive control: a row no profile weakens is not marked.
        let ptrace = try #require(lines.first { $0.contains("seccomp.ptrace") })
        #expect(ptrace.hasPrefix("  "), "\(ptrace)")
        #expect(text.contains("profile weak: 3 enforced, grants on purpose: seccomp.keyrings (the profile's seccomp allow list grants add_key)"),
                "\(text)")
        let json = try #require(VerificationFormats.matrixJSON(reports).object)
        let row = try #require(json["matrix"]?.object?["seccomp.keyrings"]?.object)
        #expect(row["default"] == .string("enforced") && row["weak"] == .string("not-applicable"))
        #expect(json["passed"] == .bool(false))
    }
}

@Suite("stockade verify for security teams, end to end",
       .enabled(if: Harness.canSandbox, "needs root and user namespaces (run the suite as root on Linux)"),
       .timeLimit(.minutes(3)))
struct VerifyTeamTests {
    static func weakProfileDirectory() throws -> URL {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("stockade-profiles-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        try #"{"extends":"default"}"#.write(to: dir.appendingPathComponent("baseline.json"), atomically: true, encoding: .utf8)
        try #"{"extends":"default","seccomp":{"allow":["keyctl","add_key"]}}"#
            .write(to: dir.appendingPathComponent("weak.json"), atomically: true, encoding: .utf8)
        return dir
    }

    @Test("verify --controls: a file requiring a control the profile grants on purpose fails with that control named; the default profile meets it")
    func controlsFile() throws {
        let dir = try Self.weakProfileDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("team-controls.txt").path
        try #"{"version":1,"profiles":{"*":{"require":["seccomp.keyrings","namespaces.cgroup-release-agent"]}}}"#
            .write(toFile: file, atomically: true, encoding: .utf8)
        let h = try Harness()
        let only = ["--only", "seccomp.keyrings", "--only", "namespaces.cgroup-release-agent"]
        let weak = try h.stockade(["verify", "--profile", dir.appendingPathComponent("weak.json").path, "--controls", file] + only)
        #expect(weak.status == 1, "\(weak.stdout) \(weak.stderr)")
        #expect(weak.stdout.contains("required control not held: weak: seccomp.keyrings is not-applicable, required enforced"), "\(weak.stdout)")
        #expect(!weak.stdout.contains("required control not held: weak: namespaces.cgroup-release-agent"), "\(weak.stdout)")
        let json = try h.stockade(["verify", "--json", "--profile", dir.appendingPathComponent("weak.json").path, "--controls", file] + only)
        #expect(json.status == 1)
        #expect(json.stderr.contains("seccomp.keyrings"))
        let requirements = try #require(try json.report()["requirements"] as? [String: Any])
        #expect(requirements["met"] as? Bool == false)
        // Positive control: the same file under the default profile holds.
        let baseline = try h.stockade(["verify", "--controls", file] + only)
        #expect(baseline.status == 0, "\(baseline.stdout) \(baseline.stderr)")
        #expect(baseline.stdout.contains("every required control of \(file) holds"))
        // A mistake in the file is an error naming the field, before anything runs (exit 2).
        try #"{"version":1,"profiles":{"*":{"requires":["*"]}}}"#.write(toFile: file, atomically: true, encoding: .utf8)
        let bad = try h.stockade(["verify", "--controls", file])
        #expect(bad.status == 2 && bad.stderr.contains("profiles.*.requires: unknown key"), "\(bad.stderr)")
    }

    @Test("--format junit and --format sarif count the same controls as --json, from real runs")
    func formatsAgree() throws {
        let dir = try Self.weakProfileDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let h = try Harness()
        let args = ["verify", "--profile", dir.appendingPathComponent("weak.json").path, "--only", "seccomp.key*", "--only", "namespaces.host-pids"]
        let json = try h.stockade(args + ["--json"])
        let controls = try #require(try json.report()["controls"] as? [[String: Any]])
        #expect(controls.count == 3)
        let junit = try h.stockade(args + ["--format", "junit"])
        #expect(junit.stdout.hasPrefix("<?xml") && junit.stdout.components(separatedBy: "<testcase ").count - 1 == controls.count,
                "\(junit.stdout.prefix(400))")
        #expect(junit.stdout.contains("<skipped "), "the keyring grants are skipped: \(junit.stdout)")
        let sarif = try h.stockade(args + ["--format", "sarif"])
        let document = try #require(try JSONSerialization.jsonObject(with: Data(sarif.stdout.utf8)) as? [String: Any])
        #expect(document["version"] as? String == "2.1.0")
        let run = try #require((document["runs"] as? [[String: Any]])?.first)
        let rules = ((run["tool"] as? [String: Any])?["driver"] as? [String: Any])?["rules"] as? [[String: Any]]
        #expect(rules?.compactMap { $0["id"] as? String } == controls.compactMap { $0["id"] as? String })
        #expect((run["results"] as? [Any])?.count == controls.filter { $0["fails"] as? Bool == true }.count)
        #expect(json.status == junit.status && junit.status == sarif.status)
    }

    @Test("verify --profiles DIR prints profile x control and marks the rows the weakened profile grants")
    func profileMatrix() throws {
        let dir = try Self.weakProfileDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let h = try Harness()
        let r = try h.stockade(["verify", "--profiles", dir.path, "--only", "seccomp.key*", "--only", "seccomp.bpf"])
        let lines = r.stdout.split(separator: "\n").map(String.init)
        let header = try #require(lines.first, "\(r.stdout) \(r.stderr)")
        #expect(header.contains("baseline") && header.contains("weak"), "\(header)")
        let keyrings = try #require(lines.first { $0.contains("seccomp.keyrings") }, "\(r.stdout)")
        #expect(keyrings.hasPrefix("* ") && keyrings.contains("granted"), "\(keyrings)")
        let bpf = try #require(lines.first { $0.contains("seccomp.bpf") })
        #expect(bpf.hasPrefix("  ") && !bpf.contains("granted"), "\(bpf)")
        #expect(r.stdout.contains("profile weak: ") && r.stdout.contains("grants on purpose: seccomp.keyrings"), "\(r.stdout)")
        #expect(r.stdout.contains("profile baseline: 3 enforced, grants nothing on purpose"), "\(r.stdout)")
        let json = try h.stockade(["verify", "--json", "--profiles", dir.path, "--only", "seccomp.keyrings"])
        let matrix = try #require(try json.report()["matrix"] as? [String: [String: String]])
        #expect(matrix["seccomp.keyrings"] == ["baseline": "enforced", "weak": "not-applicable"])
        // Each profile's verification is its own audit event.
        let events = try h.stockade(["audit", "events", "--kind", "verification", "--json"])
        #expect(events.stdout.split(separator: "\n").count == 2 + 2, "two runs of two profiles: \(events.stdout.prefix(300))")
    }
}
