/// Runs a seccomp BPF program on a synthetic `struct seccomp_data`, the way
/// the kernel would, so tests and `stockade verify` can prove what a compiled
/// filter returns for a given architecture, syscall number and arguments.
public struct BPFInterpreter: Sendable {
    public static let auditArchX86_64: UInt32 = 0xC000_003E
    public static let auditArchI386: UInt32 = 0x4000_0003
    public static let x32SyscallBit: Int32 = 0x4000_0000

    public enum Failure: Error, Equatable { case badInstruction(Int), outOfBounds(Int), noReturn }

    let program: SeccompProgram

    public init(_ program: SeccompProgram) { self.program = program }

    /// The filter's return value (action in the high 16 bits, data in the low).
    public func evaluate(arch: UInt32, nr: Int32, args: [UInt64] = [], instructionPointer: UInt64 = 0) throws(Failure) -> UInt32 {
        var data = [UInt8](repeating: 0, count: 64)
        func put32(_ v: UInt32, _ at: Int) { for i in 0..<4 { data[at + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt32(i))) } }
        func put64(_ v: UInt64, _ at: Int) { put32(UInt32(truncatingIfNeeded: v), at); put32(UInt32(truncatingIfNeeded: v >> 32), at + 4) }
        put32(UInt32(bitPattern: nr), 0)
        put32(arch, 4)
        put64(instructionPointer, 8)
        for (i, a) in args.prefix(6).enumerated() { put64(a, 16 + 8 * i) }

        let b = program.bytes
        var a: UInt32 = 0, x: UInt32 = 0
        var mem = [UInt32](repeating: 0, count: 16)
        var pc = 0
        while pc < program.instructionCount {
            let o = pc * 8
            let code = UInt16(b[o]) | UInt16(b[o + 1]) << 8
            let jt = Int(b[o + 2]), jf = Int(b[o + 3])
            let k = UInt32(b[o + 4]) | UInt32(b[o + 5]) << 8 | UInt32(b[o + 6]) << 16 | UInt32(b[o + 7]) << 24
            pc += 1
            switch code & 0x07 {
            case 0x00, 0x01: // LD, LDX
                var value: UInt32
                switch code & 0xE0 {
                case 0x00: value = k
                case 0x20:
                    guard code & 0x18 == 0, Int(k) + 4 <= data.count else { throw .outOfBounds(pc - 1) }
                    value = UInt32(data[Int(k)]) | UInt32(data[Int(k) + 1]) << 8 | UInt32(data[Int(k) + 2]) << 16 | UInt32(data[Int(k) + 3]) << 24
                case 0x60:
                    guard k < 16 else { throw .outOfBounds(pc - 1) }
                    value = mem[Int(k)]
                case 0x80: value = 64 // BPF_LEN
                default: throw .badInstruction(pc - 1)
                }
                if code & 0x07 == 0 { a = value } else { x = value }
            case 0x02: guard k < 16 else { throw .outOfBounds(pc - 1) }; mem[Int(k)] = a
            case 0x03: guard k < 16 else { throw .outOfBounds(pc - 1) }; mem[Int(k)] = x
            case 0x04: // ALU
                let operand = code & 0x08 == 0 ? k : x
                switch code & 0xF0 {
                case 0x00: a = a &+ operand
                case 0x10: a = a &- operand
                case 0x20: a = a &* operand
                case 0x30: guard operand != 0 else { return 0 }; a /= operand
                case 0x40: a |= operand
                case 0x50: a &= operand
                case 0x60: a = operand >= 32 ? 0 : a << operand
                case 0x70: a = operand >= 32 ? 0 : a >> operand
                case 0x80: a = 0 &- a
                case 0x90: guard operand != 0 else { return 0 }; a %= operand
                case 0xA0: a ^= operand
                default: throw .badInstruction(pc - 1)
                }
            case 0x05: // JMP
                let operand = code & 0x08 == 0 ? k : x
                switch code & 0xF0 {
                case 0x00: pc += Int(k)
                case 0x10: pc += a == operand ? jt : jf
                case 0x20: pc += a > operand ? jt : jf
                case 0x30: pc += a >= operand ? jt : jf
                case 0x40: pc += a & operand != 0 ? jt : jf
                default: throw .badInstruction(pc - 1)
                }
            case 0x06: return code & 0x18 == 0x10 ? a : k
            case 0x07: if code & 0xF8 == 0x80 { a = x } else { x = a }
            default: throw .badInstruction(pc - 1)
            }
        }
        throw .noReturn
    }
}
