import Foundation
import Logging
import ServiceLifecycle
import StockadeAudit
import StockadePolicy
import StockadeSupervisor
import StockadeVerify

/// `stockade serve --verify-every`: the controls proven again and again while the service runs.
public struct VerifyOptions: Sendable {
    /// Seconds between verifications of each profile.
    public var everySeconds: Int64
    /// The profiles kept under proof (names or paths, as a run names them).
    public var profiles: [String]
    /// Selectors of the controls to run (`verify --only`); empty: the whole catalogue.
    public var only: [String]
    /// The team's required controls (`verify --controls`); nil: every applicable control must hold.
    public var requirements: ControlRequirements?
    /// Refuse runs under a profile whose required controls do not hold (or are not yet proven).
    public var refuse: Bool

    public init(everySeconds: Int64, profiles: [String], only: [String], requirements: ControlRequirements?, refuse: Bool) {
        self.everySeconds = everySeconds
        self.profiles = profiles
        self.only = only
        self.requirements = requirements
        self.refuse = refuse
    }
}

/// The latest proof per profile, read by the submit route and by `/metrics`.
actor VerificationStatus {
    struct Entry: Sendable {
        var digest: String
        var passed: Bool
        /// `control: verdict` for each required control that does not hold.
        var unmet: [String]
        var counts: [Verdict: Int]
        var runsAt: Date
    }

    let refuse: Bool
    let profiles: Set<String>
    private(set) var entries: [String: Entry] = [:]

    init(refuse: Bool, profiles: [String]) {
        self.refuse = refuse
        self.profiles = Set(profiles)
    }

    func record(_ profile: String, _ entry: Entry) { entries[profile] = entry }
    func forget(_ profile: String) { entries[profile] = nil }

    /// Why a run under `profile` is refused now, or nil. Only profiles under proof are judged;
    /// one not proven yet (the service just started, or the profile changed) is refused too.
    func refusal(for profile: String) -> String? {
        guard refuse, profiles.contains(profile) else { return nil }
        guard let entry = entries[profile] else {
            return "profile \(profile) is under continuous verification and not proven yet (the service started or the profile changed); retry shortly"
        }
        guard entry.passed else {
            let shown = entry.unmet.prefix(8).joined(separator: ", ")
            return "profile \(profile): its required controls do not hold (\(shown)\(entry.unmet.count > 8 ? ", ..." : "")): runs under it are refused until they do"
        }
        return nil
    }
}

/// Verifies each profile at start, every `everySeconds`, and as soon as its file changes (its
/// digest, checked every few seconds); records each verification (the `verification` event) and
/// keeps the result in `VerificationStatus`.
struct ContinuousVerification: Service {
    let supervisor: Supervisor
    let service: RunService
    let options: VerifyOptions
    let status: VerificationStatus
    let logger: Logger
    /// How often profile files are looked at for a change.
    static let pollSeconds: Int64 = 2

    func run() async throws {
        var due: [String: ContinuousClock.Instant] = [:]
        var digests: [String: String] = [:]
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            for profile in options.profiles {
                let digest = try? supervisor.catalog.load(profile).digest
                let changed = digest != digests[profile]
                if changed, digests[profile] != nil {
                    logger.notice("verify.profile-changed", metadata: ["profile": "\(profile)"])
                    await status.forget(profile)
                }
                guard changed || ContinuousClock.now >= due[profile] ?? .now else { continue }
                digests[profile] = digest
                await verify(profile)
                due[profile] = ContinuousClock.now + .seconds(options.everySeconds)
                if Task.isShuttingDownGracefully { return }
            }
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: .seconds(Self.pollSeconds)) }
        }
    }

    func verify(_ profile: String) async {
        guard let probe = Verifier.probeNextToExecutable() else {
            logger.error("verify.no-probe", metadata: ["profile": "\(profile)", "error": "no stockade-probe next to stockade-server"])
            await status.record(profile, .init(digest: "", passed: false, unmet: ["no stockade-probe next to the server binary"],
                                               counts: [:], runsAt: Date()))
            return
        }
        var controls = ControlCatalog.all
        if !options.only.isEmpty {
            let ids = Set(options.only.flatMap { ControlCatalog.select($0).map(\.id) })
            controls = controls.filter { ids.contains($0.id) }
        }
        let verifier = Verifier(supervisor: supervisor, probePath: probe, profile: profile, controls: controls, service: service)
        let report: VerificationReport
        do {
            report = try await verifier.run()
        } catch {
            logger.error("verify.failed", metadata: ["profile": "\(profile)", "error": "\(error)"])
            await status.record(profile, .init(digest: "", passed: false, unmet: ["verification could not run: \(error)"], counts: [:], runsAt: Date()))
            return
        }
        // A verification cut short by the shutdown (its probe runs cancelled) proves nothing either way.
        if Task.isShuttingDownGracefully { return }
        do {
            try verifier.record(report)
        } catch let error as Verifier.CleanupFailure {
            logger.warning("verify.cleanup-failed", metadata: ["profile": "\(profile)", "error": "\(error.underlying)"])
        } catch {
            // Unrecorded, a verification is no proof: the profile counts as failing.
            logger.error("verify.not-recorded", metadata: ["profile": "\(profile)", "error": "\(error)"])
            await status.record(profile, .init(digest: report.profileDigest, passed: false, unmet: ["the verification could not be recorded"],
                                               counts: [:], runsAt: Date()))
            return
        }
        let unmet: [String]
        if let requirements = options.requirements {
            unmet = (requirements.unmet(in: report, requestedAs: profile) ?? []).map { "\($0.control): \($0.verdict.rawValue)" }
        } else {
            unmet = report.controls.filter(\.fails).map { "\($0.control.id): \($0.verdict.rawValue)" }
        }
        var counts: [Verdict: Int] = [:]
        for verdict in Verdict.allCases { counts[verdict] = report.count(verdict) }
        await status.record(profile, .init(digest: report.profileDigest, passed: unmet.isEmpty, unmet: unmet, counts: counts, runsAt: Date()))
        logger.notice("verify.done", metadata: ["profile": "\(profile)", "passed": "\(unmet.isEmpty)", "unmet": "\(unmet.count)"])
    }
}

/// `/metrics` in Prometheus's text format (version 0.0.4).
enum Metrics {
    static func text(load: (running: Int, queued: Int), verification: [String: VerificationStatus.Entry]) -> String {
        var lines: [String] = []
        lines.append("# HELP stockade_runs_running Runs under way in this service.")
        lines.append("# TYPE stockade_runs_running gauge")
        lines.append("stockade_runs_running \(load.running)")
        lines.append("# HELP stockade_runs_queued Runs admitted and waiting for a slot.")
        lines.append("# TYPE stockade_runs_queued gauge")
        lines.append("stockade_runs_queued \(load.queued)")
        lines.append("# HELP stockade_controls Controls of the latest verification of each profile, by verdict.")
        lines.append("# TYPE stockade_controls gauge")
        for (profile, entry) in verification.sorted(by: { $0.key < $1.key }) {
            for verdict in Verdict.allCases {
                lines.append("stockade_controls{profile=\"\(label(profile))\",verdict=\"\(verdict.rawValue)\"} \(entry.counts[verdict] ?? 0)")
            }
        }
        lines.append("# HELP stockade_verification_passed 1 when the latest verification of the profile holds its required controls.")
        lines.append("# TYPE stockade_verification_passed gauge")
        for (profile, entry) in verification.sorted(by: { $0.key < $1.key }) {
            lines.append("stockade_verification_passed{profile=\"\(label(profile))\"} \(entry.passed ? 1 : 0)")
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// A label value as the format escapes it: backslash, double quote and line feed.
    static func label(_ value: String) -> String {
        value.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"").replacingOccurrences(of: "\n", with: "\\n")
    }
}
