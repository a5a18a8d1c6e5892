import ArgumentParser
import Foundation
import Glibc
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
    /// The `stockade-server` binary next to this one (found through /proc/self/exe), exec'd with
    /// `arguments`; never returns. Exits `failureStatus` naming the path when the binary is missing; `purpose` begins
    /// that message.
    static func exec(_ arguments: [String], purpose: String = "stockade serve", failureStatus: Int32 = 1) -> Never {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard n > 0 else {
            Console.error("\(purpose): cannot read /proc/self/exe: \(String(cString: strerror(errno)))")
            Glibc.exit(failureStatus)
        }
        let own = String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let directory = own.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
        let server = directory + "/stockade-server"
        let argv = [server] + arguments
        var cArgs: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) }
        cArgs.append(nil)
        execv(server, cArgs)
        let err = errno
        Console.error("\(purpose): cannot run \(server): \(String(cString: strerror(err))) (stockade-server is built and installed next to stockade: swift build --product stockade-server)")
        Glibc.exit(failureStatus)
    }
}
