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
        static let configuration = CommandConfiguration(abstract: "Validate a profile; every error names the field path and the reason.")
        @Argument(help: "Profile name or path.") var profile: String

        func run() throws {
            do {
                let loaded = try ProfileCatalog.standard().load(profile)
                print("\(loaded.source): ok (profile \(loaded.profile.name), digest \(loaded.digest.prefix(16)))")
            } catch {
                Console.error(error.description)
                throw ExitCode(1)
            }
        }
    }

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print the fully resolved profile (defaults filled in) as JSON.")
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
