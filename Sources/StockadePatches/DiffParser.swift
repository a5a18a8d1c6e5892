import Glibc
/// Parses git-style unified diffs strictly: every line must be one this parser understands, every hunk's
/// line counts must match exactly, and every bound in ``DiffLimits`` holds while reading. Anything else
/// is rejected with its line number; nothing is guessed. Names are not judged here: ``PathGuard`` does that.
public enum DiffParser {
    public static func parse(_ bytes: [UInt8], limits: DiffLimits = .default) throws(PatchError) -> PatchSet {
        guard bytes.count <= limits.maxDiffBytes else {
            throw PatchError(.tooLarge, "the diff has \(bytes.count) bytes, more than the limit of \(limits.maxDiffBytes): split it or raise the limit")
        }
        var reader = LineReader(bytes: bytes, maxLineBytes: limits.maxLineBytes)
        var files: [FilePatch] = []
        var hunkCount = 0
        while let line = try reader.peek() {
            guard line.starts(with: Prefix.diffGit) else {
                throw malformed(reader.lineNumber, "expected a `diff --git` header, found \(show(line))")
            }
            guard files.count < limits.maxFiles else {
                throw PatchError(.tooLarge, "line \(reader.lineNumber): the diff has more than \(limits.maxFiles) file sections")
            }
            files.append(try parseFile(&reader, limits: limits, hunkCount: &hunkCount))
        }
        return PatchSet(files: files)
    }

    // MARK: - One file section

    private static func parseFile(_ reader: inout LineReader, limits: DiffLimits, hunkCount: inout Int) throws(PatchError) -> FilePatch {
        let headerLine = reader.lineNumber
        guard let header = try reader.next() else { throw malformed(headerLine, "unexpected end of diff") }
        var file = FilePatch(diffLine: headerLine)
        (file.gitOldName, file.gitNewName) = try gitHeaderNames(header.dropFirst(Prefix.diffGit.count), line: headerLine)

        var seen: Set<String> = []
        func once(_ key: String, _ line: Int) throws(PatchError) {
            guard seen.insert(key).inserted else { throw malformed(line, "`\(key)` appears twice in one file section") }
        }
        var sawContentHeaders = false
        headers: while let line = try reader.peek() {
            let n = reader.lineNumber
            if line.starts(with: Prefix.diffGit) { break }
            if line.starts(with: Prefix.minus) { sawContentHeaders = true; break }
            if line.elementsEqual(Prefix.gitBinary) { break }
            if line.starts(with: Prefix.binaryFiles) {
                throw malformed(n, "a `Binary files ... differ` line carries no content and cannot be applied: produce the diff with `--binary`")
            }
            _ = try reader.next()
            if let rest = after(line, Prefix.oldMode) { try once("old mode", n); file.oldMode = try mode(rest, n) }
            else if let rest = after(line, Prefix.newMode) { try once("new mode", n); file.newMode = try mode(rest, n) }
            else if let rest = after(line, Prefix.newFileMode) { try once("new file mode", n); file.newFileMode = try mode(rest, n) }
            else if let rest = after(line, Prefix.deletedFileMode) { try once("deleted file mode", n); file.deletedFileMode = try mode(rest, n) }
            else if let rest = after(line, Prefix.renameFrom) { try once("rename from", n); file.renameFrom = try wholeName(rest, n) }
            else if let rest = after(line, Prefix.renameTo) { try once("rename to", n); file.renameTo = try wholeName(rest, n) }
            else if let rest = after(line, Prefix.copyFrom) { try once("copy from", n); file.copyFrom = try wholeName(rest, n) }
            else if let rest = after(line, Prefix.copyTo) { try once("copy to", n); file.copyTo = try wholeName(rest, n) }
            else if let rest = after(line, Prefix.similarity) { try once("similarity index", n); try percent(rest, n) }
            else if let rest = after(line, Prefix.dissimilarity) { try once("dissimilarity index", n); try percent(rest, n) }
            else if let rest = after(line, Prefix.index) { try once("index", n); file.indexMode = try indexLine(rest, n) }
            else { throw malformed(n, "unrecognised header line \(show(line))") }
            continue headers
        }

        if sawContentHeaders {
            let n = reader.lineNumber
            guard let minus = try reader.next(), let plus = try reader.next(), plus.starts(with: Prefix.plus) else {
                throw malformed(n, "a `---` line must be followed by a `+++` line")
            }
            (file.minusName, file.minusIsDevNull) = try fileLineName(minus.dropFirst(4), prefix: UInt8(ascii: "a"), line: n)
            (file.plusName, file.plusIsDevNull) = try fileLineName(plus.dropFirst(4), prefix: UInt8(ascii: "b"), line: n + 1)
        }
        if let line = try reader.peek(), line.elementsEqual(Prefix.gitBinary) {
            _ = try reader.next()
            file.binary = try parseBinary(&reader, limits: limits)
        } else if sawContentHeaders {
            var delta = 0
            var previousEnd = 0
            while let line = try reader.peek(), line.starts(with: Prefix.hunk) {
                guard hunkCount < limits.maxHunks else {
                    throw PatchError(.tooLarge, "line \(reader.lineNumber): the diff has more than \(limits.maxHunks) hunks")
                }
                if let last = file.hunks.last, last.lines.contains(where: \.missingNewline) {
                    throw malformed(reader.lineNumber, "a hunk follows one that ends the file (`\\ No newline at end of file`)")
                }
                let hunk = try parseHunk(&reader)
                let oldPosition = hunk.oldCount == 0 ? hunk.oldStart : hunk.oldStart - 1
                let newPosition = hunk.newCount == 0 ? hunk.newStart : hunk.newStart - 1
                guard oldPosition >= previousEnd else {
                    throw malformed(hunk.diffLine, "hunk overlaps or precedes the previous hunk")
                }
                guard newPosition - oldPosition == delta else {
                    throw malformed(hunk.diffLine, "hunk's new start \(hunk.newStart) does not follow from its old start \(hunk.oldStart) and the earlier hunks")
                }
                delta += hunk.newCount - hunk.oldCount
                previousEnd = oldPosition + hunk.oldCount
                hunkCount += 1
                file.hunks.append(hunk)
            }
            guard !file.hunks.isEmpty else { throw malformed(reader.lineNumber, "`---`/`+++` lines without any hunk") }
        }
        if let line = try reader.peek(), !line.starts(with: Prefix.diffGit) {
            throw malformed(reader.lineNumber, "unrecognised line \(show(line)) after a file section")
        }
        try checkStructure(file)
        return file
    }

    /// Headers that contradict each other are malformed; names that disagree are left to the path guard.
    private static func checkStructure(_ file: FilePatch) throws(PatchError) {
        let n = file.diffLine
        if file.isCreation && file.isDeletion { throw malformed(n, "a file section both creates and deletes") }
        if (file.oldMode == nil) != (file.newMode == nil) { throw malformed(n, "`old mode` and `new mode` must come together") }
        if (file.isCreation || file.isDeletion) && file.oldMode != nil { throw malformed(n, "a created or deleted file cannot also change mode") }
        if file.isRename && file.isCopy { throw malformed(n, "a file section both renames and copies") }
        if (file.renameFrom == nil) != (file.renameTo == nil) { throw malformed(n, "`rename from` and `rename to` must come together") }
        if (file.copyFrom == nil) != (file.copyTo == nil) { throw malformed(n, "`copy from` and `copy to` must come together") }
        if (file.isRename || file.isCopy) && (file.isCreation || file.isDeletion) { throw malformed(n, "a rename or copy cannot also create or delete") }
        if file.minusIsDevNull != file.isCreation && (file.minusName != nil || file.minusIsDevNull) {
            throw malformed(n, "`--- /dev/null` goes with `new file mode` and only with it")
        }
        if file.plusIsDevNull != file.isDeletion && (file.plusName != nil || file.plusIsDevNull) {
            throw malformed(n, "`+++ /dev/null` goes with `deleted file mode` and only with it")
        }
        if file.isCreation, let first = file.hunks.first, file.hunks.count != 1 || first.oldCount != 0 || first.oldStart != 0 {
            throw malformed(n, "a created file must have exactly one hunk starting at -0,0")
        }
        if file.isDeletion, let first = file.hunks.first, file.hunks.count != 1 || first.newCount != 0 || first.newStart != 0 {
            throw malformed(n, "a deleted file must have exactly one hunk ending at +0,0")
        }
        if file.binary != nil && !file.hunks.isEmpty { throw malformed(n, "a file section has both text hunks and a binary patch") }
        if file.sourcePath == nil && file.targetPath == nil && file.gitOldName == nil {
            throw malformed(n, "the file section names no file")
        }
        if !file.isCreation && !file.isDeletion && !file.isRename && !file.isCopy && file.oldMode == nil
            && file.hunks.isEmpty && file.binary == nil {
            throw malformed(n, "the file section changes nothing")
        }
    }

    // MARK: - Hunks

    private static func parseHunk(_ reader: inout LineReader) throws(PatchError) -> Hunk {
        let n = reader.lineNumber
        guard let header = try reader.next() else { throw malformed(n, "unexpected end of diff") }
        guard let ranges = hunkRanges(header) else { throw malformed(n, "malformed hunk header \(show(header))") }
        var hunk = Hunk(oldStart: ranges.0, oldCount: ranges.1, newStart: ranges.2, newCount: ranges.3, lines: [], diffLine: n)
        var oldLeft = hunk.oldCount, newLeft = hunk.newCount
        var oldEnded = false, newEnded = false
        // The header's counts are the worker's claim: reserve only what a small hunk needs.
        hunk.lines.reserveCapacity(min(oldLeft + newLeft, 1024))
        while oldLeft > 0 || newLeft > 0 {
            let ln = reader.lineNumber
            guard let line = try reader.next() else {
                throw malformed(ln, "the diff ends inside the hunk at line \(n) (\(oldLeft) old and \(newLeft) new lines missing)")
            }
            guard let first = line.first else { throw malformed(ln, "an empty line inside a hunk (a context line starts with a space)") }
            let kind: HunkLine.Kind
            switch first {
            case UInt8(ascii: " "): kind = .context; oldLeft -= 1; newLeft -= 1
            case UInt8(ascii: "-"): kind = .removed; oldLeft -= 1
            case UInt8(ascii: "+"): kind = .added; newLeft -= 1
            default: throw malformed(ln, "unrecognised line \(show(line)) inside the hunk at line \(n)")
            }
            guard oldLeft >= 0, newLeft >= 0 else {
                throw malformed(ln, "the hunk at line \(n) has more lines than its header counts")
            }
            if (kind != .added && oldEnded) || (kind != .removed && newEnded) {
                throw malformed(ln, "a line follows `\\ No newline at end of file` on the same side")
            }
            var hunkLine = HunkLine(kind, slice: line.dropFirst())
            if let next = try reader.peek(), next.starts(with: [0x5C]) {
                guard next.elementsEqual(Prefix.noNewline) else { throw malformed(reader.lineNumber, "unrecognised line \(show(next))") }
                _ = try reader.next()
                hunkLine.missingNewline = true
                if kind != .added { oldEnded = true }
                if kind != .removed { newEnded = true }
            }
            hunk.lines.append(hunkLine)
        }
        return hunk
    }

    /// `@@ -a[,b] +c[,d] @@[ section]`.
    private static func hunkRanges(_ line: ArraySlice<UInt8>) -> (Int, Int, Int, Int)? {
        var i = line.startIndex + 2
        func expect(_ byte: UInt8) -> Bool {
            guard i < line.endIndex, line[i] == byte else { return false }
            i += 1
            return true
        }
        func number() -> Int? {
            var value = 0, digits = 0
            while i < line.endIndex, (0x30...0x39).contains(line[i]), digits < 10 {
                value = value * 10 + Int(line[i] - 0x30); i += 1; digits += 1
            }
            guard digits > 0, value <= Int(Int32.max) else { return nil }
            if i < line.endIndex, (0x30...0x39).contains(line[i]) { return nil }
            return value
        }
        func range(_ sign: UInt8) -> (Int, Int)? {
            guard expect(sign), let start = number() else { return nil }
            var count = 1
            if expect(UInt8(ascii: ",")) { guard let c = number() else { return nil }; count = c }
            if count > 0 && start == 0 { return nil }
            return (start, count)
        }
        guard expect(UInt8(ascii: " ")), let old = range(UInt8(ascii: "-")), expect(UInt8(ascii: " ")),
              let new = range(UInt8(ascii: "+")), expect(UInt8(ascii: " ")), expect(UInt8(ascii: "@")),
              expect(UInt8(ascii: "@")) else { return nil }
        guard i == line.endIndex || line[i] == UInt8(ascii: " ") else { return nil }
        guard old.1 > 0 || new.1 > 0 else { return nil }
        return (old.0, old.1, new.0, new.1)
    }

    // MARK: - Binary

    private static func parseBinary(_ reader: inout LineReader, limits: DiffLimits) throws(PatchError) -> BinaryPatch {
        guard let forward = try binaryHunk(&reader, limits: limits) else {
            throw malformed(reader.lineNumber, "`GIT binary patch` must be followed by `literal N`")
        }
        let reverse = try binaryHunk(&reader, limits: limits)
        return BinaryPatch(newContent: forward, oldContent: reverse)
    }

    private static func binaryHunk(_ reader: inout LineReader, limits: DiffLimits) throws(PatchError) -> [UInt8]? {
        let n = reader.lineNumber
        guard let line = try reader.peek() else { return nil }
        if line.starts(with: Prefix.delta) {
            throw malformed(n, "`delta` binary patches are not accepted: produce the diff so that it carries `literal` content")
        }
        guard let rest = after(line, Prefix.literal) else { return nil }
        _ = try reader.next()
        guard let size = decimal(rest) else { throw malformed(n, "malformed `literal` size") }
        guard size <= limits.maxFileBytes else {
            throw PatchError(.tooLarge, "line \(n): a binary literal of \(size) bytes exceeds the file limit of \(limits.maxFileBytes)")
        }
        let compressedLimit = limits.maxFileBytes + limits.maxFileBytes / 512 + 64
        var compressed: [UInt8] = []
        while true {
            let ln = reader.lineNumber
            guard let data = try reader.next() else { break }
            if data.isEmpty { break }
            guard let decoded = Base85.decodeLine(data) else { throw malformed(ln, "malformed base85 line in a binary patch") }
            compressed += decoded
            guard compressed.count <= compressedLimit else {
                throw PatchError(.tooLarge, "line \(ln): binary patch data is larger than any \(size)-byte file compresses to")
            }
        }
        guard let content = Zlib.inflate(compressed, expectedSize: size) else {
            throw malformed(n, "the binary literal does not inflate to exactly \(size) bytes")
        }
        return content
    }

    // MARK: - Names

    /// `a/X b/Y` after `diff --git `: quoted or not; nil names when unquoted names with spaces make the split ambiguous.
    private static func gitHeaderNames(_ rest: ArraySlice<UInt8>, line: Int) throws(PatchError) -> ([UInt8]?, [UInt8]?) {
        let space = UInt8(ascii: " "), quote = UInt8(ascii: "\"")
        var left: [UInt8], right: [UInt8]
        if rest.first == quote {
            guard let (name, end) = CQuote.unquote(rest, from: rest.startIndex) else { throw malformed(line, "malformed quoted name") }
            guard end < rest.endIndex, rest[end] == space else { throw malformed(line, "expected a space after the quoted old name") }
            left = name
            let tail = rest[(end + 1)...]
            if tail.first == quote {
                guard let (second, end2) = CQuote.unquote(tail, from: tail.startIndex), end2 == tail.endIndex else {
                    throw malformed(line, "malformed quoted new name")
                }
                right = second
            } else {
                right = Array(tail)
            }
        } else if rest.last == quote, let split = quotedTailSplit(rest) {
            (left, right) = split
        } else {
            let count = rest.count
            let middle = rest.startIndex + (count - 1) / 2
            if count % 2 == 1, rest[middle] == space, rest[..<middle].dropFirst(2).elementsEqual(rest[(middle + 1)...].dropFirst(2)) {
                left = Array(rest[..<middle]); right = Array(rest[(middle + 1)...])
            } else {
                let marker: [UInt8] = Array(" b/".utf8)
                let hits = rest.indices.filter { rest[$0...].starts(with: marker) }
                guard hits.count == 1, let hit = hits.first else { return (nil, nil) }
                left = Array(rest[..<hit]); right = Array(rest[(hit + 1)...])
            }
        }
        guard left.starts(with: [UInt8(ascii: "a"), UInt8(ascii: "/")]), right.starts(with: [UInt8(ascii: "b"), UInt8(ascii: "/")]) else {
            throw malformed(line, "`diff --git` names must start with a/ and b/")
        }
        return (Array(left.dropFirst(2)), Array(right.dropFirst(2)))
    }

    private static func quotedTailSplit(_ rest: ArraySlice<UInt8>) -> ([UInt8], [UInt8])? {
        var index = rest.endIndex - 1
        while index > rest.startIndex {
            index -= 1
            if rest[index] == UInt8(ascii: " "), rest[index + 1] == UInt8(ascii: "\""),
               let (name, end) = CQuote.unquote(rest, from: index + 1), end == rest.endIndex {
                return (Array(rest[..<index]), name)
            }
        }
        return nil
    }

    /// The name on a `---`/`+++` line: `/dev/null`, or `a/X` (`b/X`), quoted or not, optionally ended by a tab.
    private static func fileLineName(_ rest: ArraySlice<UInt8>, prefix: UInt8, line: Int) throws(PatchError) -> ([UInt8]?, Bool) {
        var name: [UInt8]
        var tail: ArraySlice<UInt8>
        if rest.first == UInt8(ascii: "\"") {
            guard let (unquoted, end) = CQuote.unquote(rest, from: rest.startIndex) else { throw malformed(line, "malformed quoted name") }
            name = unquoted; tail = rest[end...]
        } else {
            let tab = rest.firstIndex(of: 0x09) ?? rest.endIndex
            name = Array(rest[..<tab]); tail = rest[tab...]
        }
        guard tail.isEmpty || tail.elementsEqual([0x09]) else { throw malformed(line, "unexpected text after the file name") }
        if name.elementsEqual("/dev/null".utf8) { return (nil, true) }
        guard name.starts(with: [prefix, UInt8(ascii: "/")]) else {
            throw malformed(line, "the file name must start with \(Character(Unicode.Scalar(prefix)))/ or be /dev/null")
        }
        name.removeFirst(2)
        return (name, false)
    }

    /// The name on `rename from`/`rename to`/`copy from`/`copy to`: the rest of the line, quoted or not, no prefix.
    private static func wholeName(_ rest: ArraySlice<UInt8>, _ line: Int) throws(PatchError) -> [UInt8] {
        guard rest.first == UInt8(ascii: "\"") else { return Array(rest) }
        guard let (name, end) = CQuote.unquote(rest, from: rest.startIndex), end == rest.endIndex else {
            throw malformed(line, "malformed quoted name")
        }
        return name
    }

    // MARK: - Small fields

    private static func mode(_ text: ArraySlice<UInt8>, _ line: Int) throws(PatchError) -> UInt32 {
        guard (1...7).contains(text.count), text.allSatisfy({ (0x30...0x37).contains($0) }) else {
            throw malformed(line, "a mode must be 1 to 7 octal digits, found \(show(text))")
        }
        return text.reduce(UInt32(0)) { $0 << 3 | UInt32($1 - 0x30) }
    }

    private static func percent(_ text: ArraySlice<UInt8>, _ line: Int) throws(PatchError) {
        guard text.last == UInt8(ascii: "%"), let value = decimal(text.dropLast()), value <= 100 else {
            throw malformed(line, "malformed percentage \(show(text))")
        }
    }

    private static func indexLine(_ text: ArraySlice<UInt8>, _ line: Int) throws(PatchError) -> UInt32? {
        let parts = text.split(separator: UInt8(ascii: " "), omittingEmptySubsequences: false)
        guard (1...2).contains(parts.count) else { throw malformed(line, "malformed index line") }
        let hashes = parts[0].split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false)
        func isHex(_ s: ArraySlice<UInt8>) -> Bool {
            (4...64).contains(s.count) && s.allSatisfy { (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }
        }
        guard hashes.count == 3, hashes[1].isEmpty, isHex(hashes[0]), isHex(hashes[2]) else {
            throw malformed(line, "malformed index line: expected `index HEX..HEX [MODE]`")
        }
        return parts.count == 2 ? try mode(parts[1], line) : nil
    }

    private static func decimal(_ text: ArraySlice<UInt8>) -> Int? {
        guard (1...12).contains(text.count), text.allSatisfy({ (0x30...0x39).contains($0) }) else { return nil }
        return text.reduce(0) { $0 * 10 + Int($1 - 0x30) }
    }

    private static func after(_ line: ArraySlice<UInt8>, _ prefix: [UInt8]) -> ArraySlice<UInt8>? {
        line.starts(with: prefix) ? line.dropFirst(prefix.count) : nil
    }

    static func show(_ line: ArraySlice<UInt8>) -> String {
        let shown = line.prefix(80)
        return CQuote.display(Array(shown)) + (line.count > 80 ? "..." : "")
    }

    private static func malformed(_ line: Int, _ message: String) -> PatchError {
        PatchError(.malformed, "line \(line): \(message)")
    }

    private enum Prefix {
        static let diffGit = Array("diff --git ".utf8)
        static let minus = Array("--- ".utf8)
        static let plus = Array("+++ ".utf8)
        static let hunk = Array("@@ ".utf8)
        static let oldMode = Array("old mode ".utf8)
        static let newMode = Array("new mode ".utf8)
        static let newFileMode = Array("new file mode ".utf8)
        static let deletedFileMode = Array("deleted file mode ".utf8)
        static let renameFrom = Array("rename from ".utf8)
        static let renameTo = Array("rename to ".utf8)
        static let copyFrom = Array("copy from ".utf8)
        static let copyTo = Array("copy to ".utf8)
        static let similarity = Array("similarity index ".utf8)
        static let dissimilarity = Array("dissimilarity index ".utf8)
        static let index = Array("index ".utf8)
        static let gitBinary = Array("GIT binary patch".utf8)
        static let binaryFiles = Array("Binary files ".utf8)
        static let literal = Array("literal ".utf8)
        static let delta = Array("delta ".utf8)
        static let noNewline = Array("\\ No newline at end of file".utf8)
    }
}

/// Splits the diff into lines, each of which must end in a newline and be at most `maxLineBytes` long.
struct LineReader {
    let bytes: [UInt8]
    let maxLineBytes: Int
    private var position = 0
    /// 1-based number of the line `peek`/`next` returns.
    private(set) var lineNumber = 1
    private var peeked: (line: ArraySlice<UInt8>, end: Int)?

    init(bytes: [UInt8], maxLineBytes: Int) {
        self.bytes = bytes
        self.maxLineBytes = maxLineBytes
    }

    mutating func peek() throws(PatchError) -> ArraySlice<UInt8>? {
        if let peeked { return peeked.line }
        guard position < bytes.count else { return nil }
        let limit = min(bytes.count, position + maxLineBytes + 1)
        // memchr: the newline search is most of the parser's time when done byte by byte.
        let start = position
        let end = bytes.withUnsafeBufferPointer { buffer -> Int in
            guard let base = buffer.baseAddress, let hit = memchr(base + start, 0x0A, limit - start) else { return limit }
            return UnsafeRawPointer(base).distance(to: UnsafeRawPointer(hit))
        }
        guard end < limit else {
            if end == bytes.count { throw PatchError(.malformed, "line \(lineNumber): the diff does not end with a newline") }
            throw PatchError(.tooLarge, "line \(lineNumber): a line is longer than \(maxLineBytes) bytes")
        }
        peeked = (bytes[position..<end], end + 1)
        return bytes[position..<end]
    }

    mutating func next() throws(PatchError) -> ArraySlice<UInt8>? {
        guard let line = try peek(), let end = peeked?.end else { return nil }
        position = end
        peeked = nil
        lineNumber += 1
        return line
    }
}
