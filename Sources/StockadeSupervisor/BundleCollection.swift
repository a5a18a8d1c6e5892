import Glibc
import StockadeAudit
import StockadeBundles
import StockadePolicy

/// Request bundles in (validated, copied into the run directory, shown
/// read-only) and result bundles out (read from the worker's bounded result
/// filesystem after the namespace is gone, every bound enforced while reading).
extension Supervisor {
    /// Validates `--request DIR` and copies it into the run directory's `request/`.
    func admitRequest(_ path: String, into dir: RunDirectory, bounds: BundleBounds) -> Result<VerifiedBundle, SetupFailure> {
        let source = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard source >= 0 else {
            return .failure(SetupFailure(stage: .request, errno: errno, message: "--request \(path): \(String(cString: strerror(errno)))"))
        }
        defer { close(source) }
        do {
            _ = try dir.makeSubdirectory(RunDirectory.requestName)
        } catch {
            return .failure(SetupFailure(stage: .request, errno: error.errno ?? 0, message: error.description))
        }
        let destination = dir.descriptor.map { openat($0, RunDirectory.requestName, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW) } ?? -1
        guard destination >= 0 else {
            return .failure(SetupFailure(stage: .request, errno: errno, message: "cannot open \(dir.requestPath)"))
        }
        defer { close(destination) }
        switch BundleReader.read(directory: source, bounds: bounds, role: .request, copyTo: destination) {
        case .accepted(let bundle):
            // The worker (an unmapped uid on the host) must be able to read the copy.
            Self.openForReading(dir.requestPath)
            return .success(bundle)
        case .rejected(let rejection):
            return .failure(SetupFailure(stage: .request, message: "request bundle \(path) rejected: \(rejection.description)"))
        case .failed(let error):
            return .failure(SetupFailure(stage: .request, errno: error.errno ?? 0, message: "request bundle \(path): \(error.description)"))
        }
    }

    /// Makes the copied request tree world-readable (directories 0755, files 0644).
    static func openForReading(_ path: String) {
        chmod(path, 0o755)
        guard let dir = opendir(path) else { return }
        defer { closedir(dir) }
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name == "." || name == ".." { continue }
            let child = path + "/" + name
            var st = stat()
            guard lstat(child, &st) == 0 else { continue }
            if st.st_mode & S_IFMT == S_IFDIR { openForReading(child) } else if st.st_mode & S_IFMT == S_IFREG { chmod(child, 0o644) }
        }
    }

    /// Reads the result bundle the worker left (if any), records the verdict,
    /// and returns the bytes of the patches it declares when it was accepted.
    func collectResult(_ context: RunScope, profile: Profile, report: inout RunReport) -> [UInt8] {
        guard context.resultMount >= 0, let dir = context.runDirectory else { return [] }
        let root = openat(context.resultMount, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard root >= 0 else {
            report.result = RunReport.ResultVerdict(status: "rejected", reason: "the result filesystem cannot be opened: \(String(cString: strerror(errno)))")
            return []
        }
        defer { close(root) }
        if BundleReader.isEmpty(directory: root) { return [] }
        recordPendingEvents(context)  // on disk before the worker's bundle is read (I8)
        // result/ is made only now, for a worker that left something (most leave nothing).
        // A bundle that cannot be copied is not accepted: the review reads the copy, never the
        // worker's filesystem, so an accepted verdict without one would hand review nothing.
        var verdict: BundleVerdict
        var destination: Int32 = -1
        do throws(BundleError) {
            let path = try dir.makeSubdirectory(RunDirectory.resultName)
            destination = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW)
            if destination < 0 {
                let code = errno
                throw BundleError(.runDirectoryFailed, path: path, errno: code,
                                  "cannot open the run's result directory: \(String(cString: strerror(code)))")
            }
            verdict = BundleReader.read(directory: root, bounds: profile.bundles, role: .result, copyTo: destination)
        } catch {
            verdict = .failed(error)
        }
        defer { if destination >= 0 { close(destination) } }
        if case .accepted(let bundle) = verdict, let leaked = leakedSecret(in: bundle, at: dir.resultPath, context: context, bounds: profile.bundles) {
            // A secret must not sit in a file the supervisor wrote: drop the copy.
            for file in bundle.manifest.files { unlink(dir.resultPath + "/" + file.path) }
            unlink(dir.resultPath + "/manifest.json")
            verdict = .rejected(BundleRejection(rule: .badManifest, entry: leaked, message: "holds the value of a secret given to the worker"))
        }
        var patches: [UInt8] = []
        recordPendingEvents(context)
        let recorded: Result<Void, AuditError>
        switch verdict {
        case .accepted(let bundle):
            report.result = RunReport.ResultVerdict(status: "accepted", reason: nil)
            recorded = Result { () throws(AuditError) in
                try audit.recordBundle(runId: context.runId, role: "result", status: "accepted", reason: nil, files: bundle.fileCount,
                                       bytes: bundle.totalBytes, manifestSha256: bundle.manifestSHA256)
            }
            for patch in bundle.manifest.patches {
                if let bytes = try? FileReading.read(dir.resultPath + "/" + patch, limit: Int(profile.bundles.maxFileBytes)) {
                    patches += bytes
                }
            }
        case .rejected(let rejection):
            report.result = RunReport.ResultVerdict(status: "rejected", reason: rejection.description)
            recorded = Result { () throws(AuditError) in
                try audit.recordBundle(runId: context.runId, role: "result", status: "rejected", reason: rejection.description,
                                       files: 0, bytes: 0, manifestSha256: nil)
            }
        case .failed(let error):
            report.result = RunReport.ResultVerdict(status: "rejected", reason: "the supervisor could not read the result: \(error.description)")
            recorded = Result { () throws(AuditError) in
                try audit.recordBundle(runId: context.runId, role: "result", status: "rejected", reason: error.description,
                                       files: 0, bytes: 0, manifestSha256: nil)
            }
        }
        if case .failure(let error) = recorded {
            context.auditFailed = true
            if report.setupError == nil {
                report.setupError = .audit("the result verdict could not be recorded", storeError: error)
            }
        }
        return patches
    }

    /// The first file of an accepted result that holds a secret value, if any.
    func leakedSecret(in bundle: VerifiedBundle, at root: String, context: RunScope, bounds: BundleBounds) -> String? {
        guard !context.redactor.isEmpty else { return nil }
        for file in bundle.manifest.files {
            guard let bytes = try? FileReading.read(root + "/" + file.path, limit: Int(bounds.maxFileBytes)) else { continue }
            if context.redactor.redact(bytes) != bytes { return file.path }
        }
        return nil
    }
}
