import StockadeSupervisor
import StockadePolicy

/// A security team's threat model as a file (`stockade verify --controls FILE`):
/// per profile, the controls that must be `enforced`, and the few that may
/// instead be `not-applicable` (granted on purpose) or `inconclusive` (this
/// host cannot do the thing at all).
///
/// ```json
/// {"version": 1,
///  "profiles": {"default": {"require": ["class:2", "namespaces.*", "descriptors.inherited"],
///                           "allowNotApplicable": ["network.host-loopback"],
///                           "allowInconclusive": ["seccomp.foreign-arch-x32"]},
///               "*": {"require": ["*"]}}}
/// ```
/// Selectors: a control id, a prefix ending in `*`, `class:N`, or `*`. A
/// selector that names no control, an unknown key, or a wrong type is an
/// error naming the field. `*` as a profile key stands for every profile not named.
public struct ControlRequirements: Sendable, Equatable {
    public struct ProfileRequirement: Sendable, Equatable {
        public var require: [String]
        public var allowNotApplicable: [String]
        public var allowInconclusive: [String]
    }

    /// A required control whose verdict is not one the file allows.
    public struct Unmet: Sendable, Equatable, CustomStringConvertible {
        public var profile: String
        public var control: String
        public var verdict: Verdict
        public var allowed: [Verdict]
        public var evidence: String

        public var description: String {
            "\(profile): \(control) is \(verdict.rawValue), required \(allowed.map(\.rawValue).joined(separator: " or ")): \(evidence)"
        }

        public var jsonValue: JSONValue {
            .object([
                "profile": .string(profile),
                "control": .string(control),
                "verdict": .string(verdict.rawValue),
                "allowed": .array(allowed.map { .string($0.rawValue) }),
                "evidence": .string(evidence),
            ])
        }
    }

    public var profiles: [String: ProfileRequirement]

    public static let maxBytes = 1 << 20

    /// Parses the file's bytes with the strict JSON parser; every problem names its field.
    public static func parse(_ bytes: [UInt8], catalog: [Control] = ControlCatalog.all) throws(ProfileError) -> ControlRequirements {
        func fail(_ field: String, _ message: String) -> ProfileError {
            ProfileError(source: nil, issues: [ProfileIssue(field, message)])
        }
        let document: JSONValue
        do {
            document = try StrictJSON.parse(bytes, limits: StrictJSON.Limits(maxBytes: maxBytes, maxDepth: 8))
        } catch {
            throw fail("", "not valid JSON: \(error)")
        }
        guard let top = document.object else { throw fail("", "must be an object, not \(document.typeName)") }
        if let unknown = top.keys.sorted().first(where: { !["version", "profiles"].contains($0) }) {
            throw fail(unknown, "unknown key (known: version, profiles)")
        }
        guard let version = top["version"] else { throw fail("version", "missing (must be 1)") }
        guard version.exactInt64 == 1 else { throw fail("version", "must be 1") }
        guard let profilesValue = top["profiles"] else { throw fail("profiles", "missing") }
        guard let profiles = profilesValue.object else { throw fail("profiles", "must be an object, not \(profilesValue.typeName)") }
        guard !profiles.isEmpty else { throw fail("profiles", "names no profile") }

        var parsed: [String: ProfileRequirement] = [:]
        for (name, value) in profiles.sorted(by: { $0.key < $1.key }) {
            let base = "profiles.\(name)"
            guard let entry = value.object else { throw fail(base, "must be an object, not \(value.typeName)") }
            let keys = ["require", "allowNotApplicable", "allowInconclusive"]
            if let unknown = entry.keys.sorted().first(where: { !keys.contains($0) }) {
                throw fail("\(base).\(unknown)", "unknown key (known: \(keys.joined(separator: ", ")))")
            }
            func selectors(_ key: String) throws(ProfileError) -> [String] {
                guard let value = entry[key] else { return [] }
                guard let items = value.array else { throw fail("\(base).\(key)", "must be an array of selectors, not \(value.typeName)") }
                var out: [String] = []
                for (index, item) in items.enumerated() {
                    let field = "\(base).\(key)[\(index)]"
                    guard let selector = item.string else { throw fail(field, "must be a string, not \(item.typeName)") }
                    guard !ControlCatalog.select(selector, from: catalog).isEmpty else {
                        throw fail(field, "\"\(selector)\" names no control (an id, a prefix ending in *, class:N, or *; see stockade verify --list)")
                    }
                    out.append(selector)
                }
                return out
            }
            let require = try selectors("require")
            guard !require.isEmpty else { throw fail("\(base).require", "missing or empty: name the controls this profile must hold") }
            parsed[name] = ProfileRequirement(require: require, allowNotApplicable: try selectors("allowNotApplicable"),
                                              allowInconclusive: try selectors("allowInconclusive"))
        }
        return ControlRequirements(profiles: parsed)
    }

    /// The requirement for a profile: by the report's profile name, then by
    /// the name or path it was asked for, then `*`.
    public func requirement(for report: VerificationReport, requestedAs requested: String? = nil) -> ProfileRequirement? {
        profiles[report.profile] ?? requested.flatMap { profiles[$0] } ?? profiles["*"]
    }

    /// Every required control of `report` whose verdict is not allowed; a
    /// required control the report lacks (a narrower run) is unmet as well.
    public func unmet(in report: VerificationReport, requestedAs requested: String? = nil) -> [Unmet]? {
        guard let requirement = requirement(for: report, requestedAs: requested) else { return nil }
        let ids = Set(requirement.require.flatMap { ControlCatalog.select($0).map(\.id) })
        let notApplicable = Set(requirement.allowNotApplicable.flatMap { ControlCatalog.select($0).map(\.id) })
        let inconclusive = Set(requirement.allowInconclusive.flatMap { ControlCatalog.select($0).map(\.id) })
        var unmet: [Unmet] = []
        for control in ControlCatalog.all where ids.contains(control.id) {
            var allowed: [Verdict] = [.enforced]
            if notApplicable.contains(control.id) { allowed.append(.notApplicable) }
            if inconclusive.contains(control.id) { allowed.append(.inconclusive) }
            guard let result = report.controls.first(where: { $0.control.id == control.id }) else {
                unmet.append(Unmet(profile: report.profile, control: control.id, verdict: .inconclusive, allowed: allowed,
                                   evidence: "not verified in this run"))
                continue
            }
            if !allowed.contains(result.verdict) {
                unmet.append(Unmet(profile: report.profile, control: control.id, verdict: result.verdict, allowed: allowed,
                                   evidence: result.evidence))
            }
        }
        return unmet
    }
}

extension ControlRequirements {
    /// The verdict on a controls file: met when every profile verified holds every control the
    /// file requires of it, and the file names requirements for each.
    public static func resultJSON(file: String, unmet: [Unmet], profilesNotNamed: [String]) -> JSONValue {
        .object(["file": .string(file), "met": .bool(unmet.isEmpty && profilesNotNamed.isEmpty), "unmet": .array(unmet.map(\.jsonValue)),
                 "profilesNotNamed": .array(profilesNotNamed.map { .string($0) })])
    }
}
