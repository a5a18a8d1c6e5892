import ArgumentParser
import Crypto
import Glibc
import StockadeAudit
import StockadePolicy
import StockadeSupervisor

struct ReceiptCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "receipt",
        abstract: "Signed run receipts (GET /v1/runs/{id}/receipt of `stockade serve`).",
        subcommands: [Verify.self]
    )

    struct Verify: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "verify",
            abstract: "Check a run receipt offline; exit 1 naming each field that fails.",
            discussion: """
                The signature must verify over the receipt's canonical bytes with the trusted key: \
                --public-key, else the state directory's checkpoint key (never the key the receipt \
                carries). With --run-dir, or the state directory's runs/RUNID when it exists, the \
                logged stdout and stderr must still hash to the receipt's stdoutSha256 and stderrSha256.
                """)
        @OptionGroup var state: StateOptions
        @Argument(help: "The receipt document (the JSON the API answered).") var file: String
        @Option(help: "The trusted public key: a file holding 64 hex digits (as <key>.pub), or the key itself as 64 hex digits or base64; default: the state directory's checkpoint key.")
        var publicKey: String?
        @Option(help: "The run's directory: its logs/stdout.log and logs/stderr.log must match the receipt's hashes.")
        var runDir: String?
        @Flag(help: "The result as one JSON object.") var json = false

        func run() throws {
            let bytes: [UInt8]
            do {
                bytes = try RunReceipt.readDocument(path: file)
            } catch {
                fail(["document: \(error)"])
            }
            let trusted: Curve25519.Signing.PublicKey
            do {
                // Never the key the receipt carries: anyone can sign a receipt with a key of their own.
                if let publicKey {
                    trusted = try RunReceipt.publicKey(publicKey)
                } else {
                    trusted = try CheckpointKeyFile.load(path: CheckpointKeyFile.defaultPath(stateDirectory: state.resolved())).publicKey
                }
            } catch {
                fail(["publicKey: no trusted key: \(error)"])
            }
            var directory = runDir
            if directory == nil {
                let stateDir = state.resolved()
                // The run id is read before the signature is checked: only a valid id names a directory.
                if let id = RunReceipt.verify(bytes, trusting: trusted).runId, id.utf8.count == 26, id.utf8.allSatisfy({ (0x30...0x39).contains($0) || (0x41...0x5A).contains($0) }) {
                    var st = stat()
                    let candidate = stateDir + "/runs/" + id
                    if stat(candidate, &st) == 0 { directory = candidate }
                }
            }
            let result = RunReceipt.verify(bytes, trusting: trusted, runDirectory: directory)
            guard result.valid else { fail(result.failures, result: result) }
            if json {
                Console.out(result.jsonValue.serialized())
            } else {
                Console.out("receipt of run \(result.runId ?? "?") valid: signed by key \(result.keyId ?? "?")\(result.logsChecked ? "; logs match" : "")")
            }
        }

        private func fail(_ failures: [String], result: RunReceipt.Verification? = nil) -> Never {
            if json {
                var shown = result ?? RunReceipt.Verification()
                shown.failures = failures
                Console.out(shown.jsonValue.serialized())
            } else {
                for failure in failures { Console.error("stockade: receipt invalid: \(TerminalOutput.field(failure))") }
            }
            Glibc.exit(1)
        }
    }
}
