import Foundation
import Glibc
import NIOSSL

/// `--tls-cert FILE` and `--tls-key FILE`: the TCP listener serves HTTPS only, TLS 1.2 at least.
/// Both files are read and checked at start, so a bad one stops the service before it listens.
public struct ServerTLS: Sendable {
    let configuration: TLSConfiguration
    /// For the `service.listening` log line.
    public let certificatePath: String

    public struct Invalid: Error, CustomStringConvertible {
        public let description: String
    }

    public static func load(certificate certificatePath: String, key keyPath: String) throws(Invalid) -> ServerTLS {
        let certificateBytes = try read("--tls-cert", certificatePath)
        let keyBytes = try read("--tls-key", keyPath)
        var st = stat()
        if stat(keyPath, &st) == 0, st.st_mode & 0o007 != 0 {
            throw Invalid(description: "--tls-key \(keyPath): readable by other users (mode \(String(st.st_mode & 0o777, radix: 8))): chmod 600 it")
        }
        let chain: [NIOSSLCertificate]
        do {
            chain = try NIOSSLCertificate.fromPEMBytes(certificateBytes)
        } catch {
            throw Invalid(description: "--tls-cert \(certificatePath): not a PEM certificate chain (\(error))")
        }
        guard !chain.isEmpty else { throw Invalid(description: "--tls-cert \(certificatePath): no PEM certificate in the file") }
        let key: NIOSSLPrivateKey
        do {
            key = try NIOSSLPrivateKey(bytes: keyBytes, format: .pem)
        } catch {
            throw Invalid(description: "--tls-key \(keyPath): not an unencrypted PEM private key (\(error))")
        }
        var configuration = TLSConfiguration.makeServerConfiguration(certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
        configuration.minimumTLSVersion = .tlsv12
        // The context is what each connection uses: building it now checks that key and certificate match.
        do {
            _ = try NIOSSLContext(configuration: configuration)
        } catch {
            throw Invalid(description: "--tls-key \(keyPath) does not go with --tls-cert \(certificatePath), or one of them is unusable (\(error))")
        }
        return ServerTLS(configuration: configuration, certificatePath: certificatePath)
    }

    private static func read(_ flag: String, _ path: String) throws(Invalid) -> [UInt8] {
        guard let bytes = FileBytes.read(path, limit: 1 << 20) else {
            let reason = access(path, F_OK) != 0 ? "no such file" : "cannot be read (unreadable, a directory, a symlink, or larger than 1 MiB)"
            throw Invalid(description: "\(flag) \(path): \(reason)")
        }
        guard !bytes.isEmpty else { throw Invalid(description: "\(flag) \(path): the file is empty") }
        return bytes
    }
}
