import ArgumentParser
import Glibc
import StockadeImages
import StockadePolicy
import StockadeSupervisor

struct ImageCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "image",
        abstract: "Import OCI image layouts as worker roots; list, inspect and remove them.",
        subcommands: [Import.self, List.self, Inspect.self, Remove.self]
    )

    struct Import: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "import",
            abstract: "Verify an OCI image layout (PATH or PATH:REF) and unpack its layers into the state directory's cache.")
        @OptionGroup var state: StateOptions
        @Argument(help: "OCI image layout directory (index.json, oci-layout, blobs/), optionally :REF.") var path: String
        @Option(help: "NAME[:TAG] to import it as (default: the layout's directory name and ref).") var name: String?
        @Flag(help: "Print the image record as JSON.") var json = false

        func run() throws {
            let started = monotonicSeconds()
            do {
                let result = try ImageStore(stateDirectory: state.resolved()).importLayout(path, name: name)
                let seconds = monotonicSeconds() - started
                if json {
                    Console.out(result.record.json.serialized())
                } else {
                    Console.out("\(result.record.name) \(result.record.digest)")
                }
                let stripped = result.unpacked.values.reduce(0) { $0 + $1.strippedModes }
                Console.error("stockade: imported \(result.record.name): \(result.record.layers.count) layers (\(result.unpacked.count) unpacked, \(result.reused.count) already cached), \(result.record.entries) entries, \(result.record.bytes) bytes in \((seconds * 100).rounded() / 100)s" + (stripped > 0 ? "; setuid/setgid dropped from \(stripped) entries" : ""))
            } catch {
                Console.error("stockade: image import \(path): \(error)")
                throw ExitCode(1)
            }
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "list", abstract: "List imported images.")
        @OptionGroup var state: StateOptions
        @Flag(help: "Print a JSON array.") var json = false

        func run() throws {
            do {
                let records = try ImageStore(stateDirectory: state.resolved()).list()
                if json {
                    Console.out(JSONValue.array(records.map(\.json)).serialized())
                } else {
                    for r in records { Console.out("\(r.name)\t\(r.digest.description.prefix(19))\t\(r.layers.count) layers") }
                }
            } catch {
                Console.error("stockade: image list: \(error)")
                throw ExitCode(1)
            }
        }
    }

    struct Inspect: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "inspect", abstract: "Show an imported image: digest, layers, config defaults.")
        @OptionGroup var state: StateOptions
        @Argument(help: "NAME[:TAG] or sha256:DIGEST.") var name: String
        @Flag(help: "Print the record as JSON (the default is the same, pretty).") var json = false

        func run() throws {
            do {
                let record = try ImageStore(stateDirectory: state.resolved()).find(name)
                Console.out(record.json.serialized(pretty: !json))
            } catch {
                Console.error("stockade: image inspect: \(error)")
                throw ExitCode(1)
            }
        }
    }

    struct Remove: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "rm", abstract: "Remove an image's name; `stockade gc` removes layers no image uses.")
        @OptionGroup var state: StateOptions
        @Argument(help: "NAME[:TAG] or sha256:DIGEST.") var name: String

        func run() throws {
            do {
                try ImageStore(stateDirectory: state.resolved()).remove(name)
            } catch {
                Console.error("stockade: image rm: \(error)")
                throw ExitCode(1)
            }
        }
    }
}

private func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}
