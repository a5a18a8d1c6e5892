import Crypto
import StockadePolicy

/// Writes git-style unified diff sections that ``DiffParser`` reads back and ``PatchApplier`` applies
/// exactly: 3 lines of context, `\ No newline at end of file`, mode lines, and `GIT binary patch`
/// literals for content that has a NUL byte or is not UTF-8.
public enum DiffWriter {
    /// Context lines around each change.
    public static let context = 3
    /// The largest edit distance searched for a minimal diff; beyond it the changed middle of the file is
    /// written as one replacement, which is correct but larger. Bounds memory to O(maxEditDistance²).
    public static let maxEditDistance = 2_000

    /// One file's section. `old == nil` creates, `new == nil` deletes; modes default to 100644.
    /// Returns no bytes when nothing changes.
    public static func fileDiff(path: String, old: [UInt8]?, new: [UInt8]?, oldMode: UInt32?, newMode: UInt32?) -> [UInt8] {
        let name = Array(path.utf8)
        if old == nil && new == nil { return [] }
        let fromMode = oldMode ?? 0o100644, toMode = newMode ?? 0o100644
        if old == new && fromMode == toMode { return [] }

        var out: [UInt8] = []
        func line(_ parts: [UInt8]...) { for part in parts { out += part }; out.append(0x0A) }
        let aName = CQuote.quoteIfNeeded(Array("a/".utf8) + name)
        let bName = CQuote.quoteIfNeeded(Array("b/".utf8) + name)
        line(Array("diff --git ".utf8), aName, [0x20], bName)
        if old == nil { line(Array("new file mode \(String(toMode, radix: 8))".utf8)) }
        else if new == nil { line(Array("deleted file mode \(String(fromMode, radix: 8))".utf8)) }
        else if fromMode != toMode {
            line(Array("old mode \(String(fromMode, radix: 8))".utf8))
            line(Array("new mode \(String(toMode, radix: 8))".utf8))
        }
        let before = old ?? [], after = new ?? []
        if before == after { return out }
        // Full blob ids: `git apply` refuses a binary patch without them ("without full index line") and
        // checks the file against the old id and its result against the new one.
        let unchangedMode = old != nil && new != nil && fromMode == toMode
        line(Array("index \(blobId(old))..\(blobId(new))\(unchangedMode ? " " + String(toMode, radix: 8) : "")".utf8))
        if isBinary(before) || isBinary(after) {
            line(Array("GIT binary patch".utf8))
            for content in [after, before] {
                line(Array("literal \(content.count)".utf8))
                out += Base85.encodeLines(Zlib.deflate(content))
                line([])
            }
            return out
        }
        // A name with a space gets a trailing tab on ---/+++ lines, as git writes it.
        let tab: [UInt8] = name.contains(0x20) ? [0x09] : []
        line(Array("--- ".utf8), old == nil ? Array("/dev/null".utf8) : aName, old == nil ? [] : tab)
        line(Array("+++ ".utf8), new == nil ? Array("/dev/null".utf8) : bName, new == nil ? [] : tab)
        out += hunks(before, after)
        return out
    }

    /// The git object id of `content` as a blob: SHA-1 of `blob <length>\0` and the content, in hex;
    /// 40 zeros for a side that does not exist. The corresponding git command is `git hash-object`.
    public static func blobId(_ content: [UInt8]?) -> String {
        guard let content else { return String(repeating: "0", count: 40) }
        var hasher = Insecure.SHA1()
        hasher.update(data: Array("blob \(content.count)\0".utf8))
        hasher.update(data: content)
        return Hex.lowercase(hasher.finalize())
    }

    static func isBinary(_ content: [UInt8]) -> Bool {
        content.contains(0) || String(validating: content, as: UTF8.self) == nil
    }

    // MARK: - Lines and edit script

    private struct Line: Hashable {
        var text: ArraySlice<UInt8>
        var terminated: Bool
    }

    private static func split(_ content: [UInt8]) -> [Line] {
        var result: [Line] = []
        var start = 0
        while start < content.count {
            if let newline = content[start...].firstIndex(of: 0x0A) {
                result.append(Line(text: content[start..<newline], terminated: true))
                start = newline + 1
            } else {
                result.append(Line(text: content[start...], terminated: false))
                start = content.count
            }
        }
        return result
    }

    enum Edit: UInt8 { case equal, delete, insert }

    /// The edit script turning `a` into `b`: common prefix and suffix, then Myers' greedy search over the
    /// middle, falling back to delete-all/insert-all when the middle differs by more than `maxEditDistance`.
    static func editScript(_ a: [Int], _ b: [Int]) -> [Edit] {
        var prefix = 0
        while prefix < a.count && prefix < b.count && a[prefix] == b[prefix] { prefix += 1 }
        var suffix = 0
        while suffix < a.count - prefix && suffix < b.count - prefix && a[a.count - 1 - suffix] == b[b.count - 1 - suffix] { suffix += 1 }
        let middleA = Array(a[prefix..<(a.count - suffix)]), middleB = Array(b[prefix..<(b.count - suffix)])
        var middle = myers(middleA, middleB) ?? []
        if middle.isEmpty || !reproduces(middle, middleA, middleB) {
            middle = [Edit](repeating: .delete, count: middleA.count) + [Edit](repeating: .insert, count: middleB.count)
        }
        return [Edit](repeating: .equal, count: prefix) + middle + [Edit](repeating: .equal, count: suffix)
    }

    private static func myers(_ a: [Int], _ b: [Int]) -> [Edit]? {
        let n = a.count, m = b.count
        if n == 0 && m == 0 { return [] }
        let limit = min(n + m, maxEditDistance)
        let offset = limit + 1
        var v = [Int](repeating: 0, count: 2 * limit + 3)
        var trace: [[Int]] = []
        var found: Int?
        search: for d in 0...limit {
            for k in stride(from: -d, through: d, by: 2) {
                var x = (k == -d || (k != d && v[offset + k - 1] < v[offset + k + 1])) ? v[offset + k + 1] : v[offset + k - 1] + 1
                var y = x - k
                while x < n && y < m && a[x] == b[y] { x += 1; y += 1 }
                v[offset + k] = x
                if x >= n && y >= m {
                    found = d
                    trace.append(Array(v[(offset - d)...(offset + d)]))
                    break search
                }
            }
            trace.append(Array(v[(offset - d)...(offset + d)]))
        }
        guard let distance = found else { return nil }
        var edits: [Edit] = []
        var x = n, y = m
        for d in stride(from: distance, to: 0, by: -1) {
            let previous = trace[d - 1]   // covers k in -(d-1)...(d-1), index k + d - 1
            func at(_ k: Int) -> Int { previous[k + d - 1] }
            let k = x - y
            let previousK = (k == -d || (k != d && at(k - 1) < at(k + 1))) ? k + 1 : k - 1
            let previousX = at(previousK), previousY = previousX - previousK
            while x > previousX && y > previousY { edits.append(.equal); x -= 1; y -= 1 }
            if x == previousX { edits.append(.insert); y -= 1 } else { edits.append(.delete); x -= 1 }
        }
        while x > 0 && y > 0 { edits.append(.equal); x -= 1; y -= 1 }
        guard x == 0, y == 0 else { return nil }
        return edits.reversed()
    }

    private static func reproduces(_ edits: [Edit], _ a: [Int], _ b: [Int]) -> Bool {
        var i = 0, j = 0
        for edit in edits {
            switch edit {
            case .equal:
                guard i < a.count, j < b.count, a[i] == b[j] else { return false }
                i += 1; j += 1
            case .delete:
                guard i < a.count else { return false }
                i += 1
            case .insert:
                guard j < b.count else { return false }
                j += 1
            }
        }
        return i == a.count && j == b.count
    }

    // MARK: - Hunks

    private static func hunks(_ before: [UInt8], _ after: [UInt8]) -> [UInt8] {
        let a = split(before), b = split(after)
        var ids: [Line: Int] = [:]
        func id(_ line: Line) -> Int {
            if let known = ids[line] { return known }
            ids[line] = ids.count
            return ids.count - 1
        }
        let edits = editScript(a.map(id), b.map(id))
        // Positions in a and b before each edit.
        var positions: [(Int, Int)] = []
        positions.reserveCapacity(edits.count + 1)
        var i = 0, j = 0
        for edit in edits {
            positions.append((i, j))
            if edit != .insert { i += 1 }
            if edit != .delete { j += 1 }
        }
        positions.append((i, j))

        var out: [UInt8] = []
        var index = 0
        var previousEnd = 0
        while index < edits.count {
            if edits[index] == .equal { index += 1; continue }
            let low = max(previousEnd, index - context)
            var end = index
            while true {
                while end < edits.count && edits[end] != .equal { end += 1 }
                var run = 0
                while end + run < edits.count && edits[end + run] == .equal { run += 1 }
                if end + run == edits.count || run > 2 * context {
                    end = min(end + context, edits.count)
                    break
                }
                end += run
            }
            let (oldPosition, newPosition) = positions[low]
            let oldCount = edits[low..<end].filter { $0 != .insert }.count
            let newCount = edits[low..<end].filter { $0 != .delete }.count
            func range(_ position: Int, _ count: Int) -> String {
                let start = count == 0 ? position : position + 1
                return count == 1 ? "\(start)" : "\(start),\(count)"
            }
            out += Array("@@ -\(range(oldPosition, oldCount)) +\(range(newPosition, newCount)) @@\n".utf8)
            for k in low..<end {
                let (ai, bi) = positions[k]
                let (marker, line): (UInt8, Line) = switch edits[k] {
                case .equal: (0x20, a[ai])
                case .delete: (UInt8(ascii: "-"), a[ai])
                case .insert: (UInt8(ascii: "+"), b[bi])
                }
                out.append(marker)
                out += line.text
                out.append(0x0A)
                if !line.terminated { out += Array("\\ No newline at end of file\n".utf8) }
            }
            previousEnd = end
            index = end
        }
        return out
    }
}
