import Logging
import ServiceLifecycle
import StockadePolicy
import StockadeSupervisor
import UnixSignals

/// SIGHUP: every profile the service can name (the built-in ones and each `NAME.json` in the profile
/// directories) is read again and checked, and the result logged: `profiles.reloaded` (notice) with
/// the counts, and `profile.invalid` (error) naming each profile that does not load and why.
///
/// Runs always load their profile when they are submitted (a changed file applies to the next run,
/// and `--verify-every` proves a changed profile again within seconds), so the signal changes what
/// runs nothing by itself: it tells an operator at once, in the service's log, whether the profiles
/// just edited are sound, before a run under one is refused.
struct ProfileReload: Service {
    let catalog: ProfileCatalog
    let logger: Logger

    func run() async throws {
        let signals = await UnixSignalsSequence(trapping: .sighup)
        for await _ in signals.cancelOnGracefulShutdown() {
            check()
        }
    }

    /// Loads every profile; returns (valid, invalid) counts.
    @discardableResult
    func check() -> (valid: Int, invalid: Int) {
        var valid = 0, invalid = 0
        for name in catalog.names() {
            do throws(ProfileError) {
                let loaded = try catalog.load(name)
                valid += 1
                logger.info("profile.loaded", metadata: ["profile": "\(name)", "source": "\(loaded.source)", "digest": "\(loaded.digest)"])
            } catch {
                invalid += 1
                let first = error.issues.first.map { "\($0.field): \($0.reason)" } ?? "\(error)"
                logger.error("profile.invalid", metadata: ["profile": "\(name)", "source": "\(error.source ?? name)", "error": "\(first)",
                                                           "errors": "\(error.issues.count)"])
            }
        }
        logger.notice("profiles.reloaded", metadata: ["valid": "\(valid)", "invalid": "\(invalid)",
                                                      "directories": "\(catalog.directories.joined(separator: ":"))"])
        return (valid, invalid)
    }
}
