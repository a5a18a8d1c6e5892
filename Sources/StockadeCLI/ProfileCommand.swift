import ArgumentParser
import Glibc
import StockadePolicy
import StockadeSupervisor

struct ProfileCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "profile",
        abstract: "Validate and show worker profiles.",
        subcommands: [Check.self, Show.self]
    )

    struct Check: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "check", abstract: "Validate a profile; every error names the field path and the reason.")
        @Argument(help: "Profile name or path.") var profile: String
        @Flag(help: "The result as one JSON object: valid, source, name, digest, errors (each with field and message).")
        var json = false

        func run() throws {
            do {
                let loaded = try ProfileCatalog.standard().load(profile)
                // Checks against this machine: volumes, secret files, the seccomp base and names.
                let state = StateDirectory.resolve(explicit: nil, environment: ProcessEnvironment.current())
                let issues = ProfileHostCheck.issues(loaded.profile, stateDirectory: state)
                if !issues.isEmpty { throw ProfileError(source: loaded.source, issues: issues) }
                if json {
                    Console.out(ProfileCheckResult.passed(loaded).jsonValue.serialized())
                } else {
                    print("\(loaded.source): ok (profile \(loaded.profile.name), digest \(loaded.digest.prefix(16)))")
                }
            } catch let error as ProfileError where json {
                Console.out(ProfileCheckResult.failed(error).jsonValue.serialized())
                throw ExitCode(1)
            } catch {
                if json {
                    Console.out(ProfileCheckResult.failed(error).jsonValue.serialized())
                } else {
                    Console.error("\(error)")
                }
                throw ExitCode(1)
            }
        }
    }

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "show", abstract: "Print the fully resolved profile (defaults filled in) as JSON.")
        @Argument(help: "Profile name or path.") var profile: String

        func run() throws {
            do {
                print(try ProfileCatalog.standard().load(profile).profile.jsonValue.serialized(pretty: true))
            } catch {
                Console.error(error.description)
                throw ExitCode(1)
            }
        }
    }
}
