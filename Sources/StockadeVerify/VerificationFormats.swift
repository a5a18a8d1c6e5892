import StockadeSupervisor
import StockadePolicy

/// The reports other tools read (`stockade verify --format junit|sarif`) and
/// the profile × control matrix (`--profiles DIR`), from one or more
/// verification reports (one per profile). Pure: no syscalls.
public enum VerificationFormats {
    // MARK: JUnit XML

    /// JUnit XML: one `testsuite` per profile, one `testcase` per control
    /// (`classname` the profile and threat class, `name` the control id);
    /// a failing control (`not-enforced`, or `inconclusive` because the
    /// sandboxed run could not tell) is a `failure`, a `not-applicable` one
    /// and an `inconclusive` one the host cannot do either are `skipped`.
    public static func junit(_ reports: [VerificationReport]) -> String {
        var out = #"<?xml version="1.0" encoding="UTF-8"?>"# + "\n"
        let total = reports.reduce(0) { $0 + $1.controls.count }
        let failures = reports.reduce(0) { $0 + $1.controls.filter(\.fails).count }
        let skipped = reports.reduce(0) { $0 + $1.controls.filter { !$0.fails && $0.verdict != .enforced }.count }
        let seconds = Double(reports.reduce(0) { $0 + $1.durationMs }) / 1000
        out += "<testsuites name=\"stockade verify\" tests=\"\(total)\" failures=\"\(failures)\" errors=\"0\" skipped=\"\(skipped)\" time=\"\(seconds)\">\n"
        for report in reports {
            let failing = report.controls.filter(\.fails).count
            let skipping = report.controls.filter { !$0.fails && $0.verdict != .enforced }.count
            out += "  <testsuite name=\"\(xml("stockade verify: profile \(report.profile)"))\" tests=\"\(report.controls.count)\""
                + " failures=\"\(failing)\" errors=\"0\" skipped=\"\(skipping)\" time=\"\(Double(report.durationMs) / 1000)\">\n"
            out += "    <properties>\n"
            for (name, value) in [("profile", report.profile), ("profileDigest", report.profileDigest), ("kernel", report.kernel),
                                  ("cgroupMode", report.cgroupMode)] {
                out += "      <property name=\"\(name)\" value=\"\(xml(value))\"/>\n"
            }
            out += "    </properties>\n"
            for r in report.controls {
                let classname = xml("stockade.verify.\(report.profile).class\(r.control.threatClass)")
                out += "    <testcase classname=\"\(classname)\" name=\"\(xml(r.control.id))\" time=\"0\">\n"
                let message = xml("\(r.verdict.rawValue): \(r.control.title)")
                if r.fails {
                    out += "      <failure type=\"\(r.verdict.rawValue)\" message=\"\(message)\">\(xml(r.evidence))</failure>\n"
                } else if r.verdict != .enforced {
                    out += "      <skipped message=\"\(xml("\(r.verdict.rawValue): \(r.evidence)"))\"/>\n"
                }
                out += "      <system-out>\(xml(r.evidence))</system-out>\n"
                out += "    </testcase>\n"
            }
            out += "  </testsuite>\n"
        }
        out += "</testsuites>\n"
        return out
    }

    /// `text` as XML 1.0 character data or attribute value: markup escaped,
    /// and every character XML 1.0 cannot carry at all (C0 controls but tab,
    /// newline and return; U+FFFE, U+FFFF) written as `\u{..}` text instead.
    static func xml(_ text: String) -> String {
        var out = ""
        out.reserveCapacity(text.utf8.count)
        for scalar in text.unicodeScalars {
            switch scalar {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&apos;"
            case "\t", "\n", "\r": out += "&#\(scalar.value);"
            default:
                if scalar.value < 0x20 || scalar.value == 0xFFFE || scalar.value == 0xFFFF {
                    out += "\\u{\(String(scalar.value, radix: 16))}"
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out
    }

    // MARK: SARIF 2.1.0

    public static let sarifSchema = "https://json.schemastore.org/sarif-2.1.0.json"

    /// SARIF 2.1.0: one run per profile; the tool's rules are the controls
    /// verified (rule id = control id); one result per failing control
    /// (`not-enforced` at level `error`, a failing `inconclusive` at
    /// `warning`), located at the profile's file when it came from one.
    public static func sarif(_ reports: [VerificationReport], toolVersion: String) -> JSONValue {
        .object([
            "$schema": .string(sarifSchema),
            "version": .string("2.1.0"),
            "runs": .array(reports.map { sarifRun($0, toolVersion: toolVersion) }),
        ])
    }

    static func sarifRun(_ report: VerificationReport, toolVersion: String) -> JSONValue {
        let rules: [JSONValue] = report.controls.map { r in
            var properties: [String: JSONValue] = [
                "threatClass": .number(String(r.control.threatClass)),
                "probe": .string(r.control.probe),
                "mechanism": .string(r.control.mechanism.name),
                "tags": .array([.string("security"), .string("sandbox"), .string("threat-class-\(r.control.threatClass)")]),
            ]
            if let incident = r.control.incident { properties["incident"] = .string(incident) }
            var full = r.control.title
            if let incident = r.control.incident { full += ". Guards against: \(incident)." }
            return .object([
                "id": .string(r.control.id),
                "name": .string(r.control.id),
                "shortDescription": .object(["text": .string(r.control.title)]),
                "fullDescription": .object(["text": .string(full)]),
                "defaultConfiguration": .object(["level": .string("error")]),
                "properties": .object(properties),
            ])
        }
        var location: [String: JSONValue] = [
            "logicalLocations": .array([.object(["name": .string(report.profile), "fullyQualifiedName": .string("profile/\(report.profile)")])]),
        ]
        if let source = report.profileSource, !source.hasPrefix("builtin:") {
            location["physicalLocation"] = .object(["artifactLocation": .object(["uri": .string(sarifURI(source))])])
        }
        var results: [JSONValue] = []
        for (index, r) in report.controls.enumerated() where r.fails {
            results.append(.object([
                "ruleId": .string(r.control.id),
                "ruleIndex": .number(String(index)),
                "kind": .string("fail"),
                "level": .string(r.verdict == .notEnforced ? "error" : "warning"),
                "message": .object(["text": .string("\(r.control.id) is \(r.verdict.rawValue) under profile \(report.profile): \(r.evidence)")]),
                "locations": .array([.object(location)]),
                "properties": .object(["verdict": .string(r.verdict.rawValue), "profile": .string(report.profile)]),
            ]))
        }
        return .object([
            "tool": .object(["driver": .object([
                "name": .string("stockade verify"),
                "version": .string(toolVersion),
                "rules": .array(rules),
            ])]),
            "automationDetails": .object(["id": .string("stockade-verify/\(report.profile)/")]),
            "invocations": .array([.object(["executionSuccessful": .bool(true)])]),
            "results": .array(results),
            "properties": .object([
                "profile": .string(report.profile),
                "profileDigest": .string(report.profileDigest),
                "kernel": .string(report.kernel),
                "cgroupMode": .string(report.cgroupMode),
                "enforced": .number(String(report.count(.enforced))),
                "notEnforced": .number(String(report.count(.notEnforced))),
                "notApplicable": .number(String(report.count(.notApplicable))),
                "inconclusive": .number(String(report.count(.inconclusive))),
            ]),
        ])
    }

    /// A URI reference for a file path: every byte outside the unreserved set and `/` percent-encoded.
    static func sarifURI(_ path: String) -> String {
        var out = ""
        for byte in path.utf8 {
            let c = Character(Unicode.Scalar(byte))
            if byte < 0x80 && (c.isLetter || c.isNumber || "-._~/".contains(c)) {
                out.append(c)
            } else {
                out += "%" + (byte < 16 ? "0" : "") + String(byte, radix: 16, uppercase: true)
            }
        }
        return out
    }

    // MARK: Profile × control matrix

    /// The word a matrix cell shows: what a profile grants on purpose reads
    /// `granted`, what it fails to hold `NOT-ENFORCED`.
    static func cell(_ verdict: Verdict?) -> String {
        switch verdict {
        case .enforced: "enforced"
        case .notApplicable: "granted"
        case .notEnforced: "NOT-ENFORCED"
        case .inconclusive: "inconclusive"
        case nil: "-"
        }
    }

    /// One row per control, one column per profile; a row any profile
    /// weakens (`granted` or `NOT-ENFORCED`) is marked `*` in front. Below it,
    /// for each profile, what it grants on purpose (with the grant) and what
    /// it does not hold.
    public static func matrix(_ reports: [VerificationReport], escape: (String) -> String = { $0 }) -> String {
        let ids = orderedControlIds(reports)
        let width = max(7, ids.map(\.count).max() ?? 0)
        let widths = reports.map { max(12, escape($0.profile).count) }
        func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s : s + String(repeating: " ", count: n - s.count) }
        var lines: [String] = []
        var header = "  " + pad("CONTROL", width)
        for (i, report) in reports.enumerated() { header += "  " + pad(escape(report.profile), widths[i]) }
        lines.append(header)
        for id in ids {
            let verdicts = reports.map { $0.controls.first { $0.control.id == id }?.verdict }
            let weakened = verdicts.contains { $0 == .notApplicable || $0 == .notEnforced }
            var line = (weakened ? "* " : "  ") + pad(escape(id), width)
            for (i, verdict) in verdicts.enumerated() { line += "  " + pad(cell(verdict), widths[i]) }
            lines.append(line)
        }
        lines.append("")
        for report in reports {
            let granted = report.controls.filter { $0.verdict == .notApplicable }
            let broken = report.controls.filter(\.fails)
            var summary = escape("profile \(report.profile): \(report.count(.enforced)) enforced")
            summary += granted.isEmpty ? ", grants nothing on purpose" : ", grants on purpose: "
                + granted.map { escape("\($0.control.id) (\(grantSentence($0)))") }.joined(separator: "; ")
            if !broken.isEmpty {
                summary += "; does not hold: " + broken.map { escape("\($0.control.id) (\($0.verdict.rawValue))") }.joined(separator: ", ")
            }
            lines.append(summary)
        }
        return lines.joined(separator: "\n")
    }

    /// The matrix as JSON: `profiles` (each report's object), `matrix`
    /// (control id → profile → verdict), `passed`.
    public static func matrixJSON(_ reports: [VerificationReport]) -> JSONValue {
        var matrix: [String: JSONValue] = [:]
        for id in orderedControlIds(reports) {
            var row: [String: JSONValue] = [:]
            for report in reports {
                if let verdict = report.controls.first(where: { $0.control.id == id })?.verdict { row[report.profile] = .string(verdict.rawValue) }
            }
            matrix[id] = .object(row)
        }
        return .object([
            "profiles": .array(reports.map(\.jsonValue)),
            "matrix": .object(matrix),
            "passed": .bool(reports.allSatisfy(\.passed)),
        ])
    }

    static func orderedControlIds(_ reports: [VerificationReport]) -> [String] {
        var seen: Set<String> = []
        var ids: [String] = []
        for report in reports {
            for r in report.controls where seen.insert(r.control.id).inserted { ids.append(r.control.id) }
        }
        return ids
    }

    /// The grant part of a not-applicable verdict's evidence (before "; sandboxed:").
    static func grantSentence(_ r: ControlResult) -> String {
        guard let range = r.evidence.firstRange(of: "; sandboxed:") else { return r.evidence }
        return String(r.evidence[..<range.lowerBound])
    }
}
