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

enum ServeLauncher {
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
            fexecve(fd, cArgs, environ)
            let err = errno
            Console.error("\(purpose): cannot run \(path): \(String(cString: strerror(err))) (\(install))")
        }
        Glibc.exit(failureStatus)
    }
}
