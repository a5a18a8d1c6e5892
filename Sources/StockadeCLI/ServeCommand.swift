import ArgumentParser
import FoundationEssentials
import Glibc
import StockadeLinux
import StockadeTokens

/// `stockade serve`: listed here for `--help`, run by the sibling `stockade-server` binary, which
/// `Main` execs before parsing (so its own parser prints `stockade serve --help`). The one-shot CLI
/// never links the HTTP stack.
struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Run the supervisor as a service: the HTTP API under /v1 on a Unix socket (runs the stockade-server binary).")

    @Argument(parsing: .allUnrecognized, help: "The service's flags (see stockade serve --help).") var arguments: [String] = []

    func run() throws {
        ServeLauncher.exec(arguments)
    }
}

public enum ServeLauncher {
    /// The `stockade-server` binary next to this one (found through /proc/self/exe, checked as the
    /// spawn helper is: SiblingBinary), executed through the descriptor that was checked with
    /// `arguments`; never returns. Exits `failureStatus` naming the path when the binary is missing
    /// or refused; `purpose` begins that message.
    static func exec(_ arguments: [String], purpose: String = "stockade serve", failureStatus: Int32 = 1) -> Never {
        let install = "stockade-server is built and installed next to stockade: swift build --product stockade-server"
        switch SiblingBinary.open("stockade-server", role: "the service binary") {
        case .absent(let path):
            Console.error("\(purpose): cannot run \(path): \(String(cString: strerror(ENOENT))) (\(install))")
        case .refused(let why):
            Console.error("\(purpose): refused: \(why)")
        case .ready(let fd, let path):
            let argv = [path] + arguments
            var cArgs: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) }
            cArgs.append(nil)
            // The caller's environment, and this build's token for stockade-server to check.
            var cEnv: [UnsafeMutablePointer<CChar>?] = []
            var entry = environ
            while let pointer = entry.pointee {
                if strncmp(pointer, callerBuildVariable + "=", callerBuildVariable.utf8.count + 1) != 0 { cEnv.append(pointer) }
                entry += 1
            }
            cEnv.append(strdup("\(callerBuildVariable)=\(SiblingBinary.buildToken)/\(failureStatus)"))
            cEnv.append(nil)
            fexecve(fd, cArgs, cEnv)
            let err = errno
            Console.error("\(purpose): cannot run \(path): \(String(cString: strerror(err))) (\(install))")
        }
        Glibc.exit(failureStatus)
    }

    /// Set by `exec` for the stockade-server it runs: the build token of the `stockade` that ran it and
    /// the status that command exits with when it cannot go on (`TOKEN/STATUS`).
    static let callerBuildVariable = "STOCKADE_CALLER_BUILD"

    /// Called first by stockade-server: when a `stockade` executed it, that `stockade` must be of this
    /// build (an upgrade that replaced one binary and not the other, a partial rebuild: the commands
    /// and their flags would be another build's). Exits with the caller's failure status naming both
    /// builds when it is not; the variable is removed either way, so nothing started later sees it.
    public static func checkCaller() {
        guard let value = getenv(callerBuildVariable).map({ String(cString: $0) }) else { return }
        unsetenv(callerBuildVariable)
        let parts = value.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        let status = parts.count == 2 ? Int32(parts[1]).flatMap { (1...255).contains($0) ? $0 : nil } ?? 1 : 1
        let own = SiblingBinary.buildToken
        guard parts.count == 2, parts[0] == own else {
            Console.error("stockade-server: refused: this stockade-server (build \(own)) is not of the build of the stockade that ran it (build \(parts.count == 2 ? String(parts[0]) : "unknown")): install stockade, stockade-spawn and stockade-server from one build (swift build, or scripts/build-release.sh) side by side")
            Glibc.exit(status)
        }
    }
}
