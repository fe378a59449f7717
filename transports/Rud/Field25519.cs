using System.Buffers.Binary;
using System.Runtime.CompilerServices;

namespace PtHost.Transports.Rud;

/// <summary>
/// An element of GF(2^255 − 19) in radix 2^51 (five 51-bit limbs), for Elligator 2 (spec/rud.md §4.6). Every
/// operation runs in constant time (no branch or index on a secret, no allocation); results are weakly reduced
/// (limbs below 2^51 + 2^13), <see cref="ToBytes"/> gives the canonical value.
/// </summary>
internal struct Field25519
{
    private const ulong Mask = (1UL << 51) - 1;
    private ulong _l0, _l1, _l2, _l3, _l4;

    private Field25519(ulong l0, ulong l1, ulong l2, ulong l3, ulong l4)
    {
        _l0 = l0; _l1 = l1; _l2 = l2; _l3 = l3; _l4 = l4;
    }

    public static Field25519 Zero => default;
    public static Field25519 One => new(1, 0, 0, 0, 0);

    /// <summary>A small constant.</summary>
    public static Field25519 From(ulong small) => Carry(small, 0, 0, 0, 0);

    /// <summary>32 bytes little-endian; bit 255 is ignored (RFC 7748 §5), values ≥ p are taken mod p.</summary>
    public static Field25519 FromBytes(ReadOnlySpan<byte> b)
    {
        ulong w0 = BinaryPrimitives.ReadUInt64LittleEndian(b), w1 = BinaryPrimitives.ReadUInt64LittleEndian(b[8..]);
        ulong w2 = BinaryPrimitives.ReadUInt64LittleEndian(b[16..]), w3 = BinaryPrimitives.ReadUInt64LittleEndian(b[24..]);
        return new(w0 & Mask, ((w0 >> 51) | (w1 << 13)) & Mask, ((w1 >> 38) | (w2 << 26)) & Mask, ((w2 >> 25) | (w3 << 39)) & Mask, (w3 >> 12) & Mask);
    }

    /// <summary>The canonical value (below p), 32 bytes little-endian.</summary>
    public readonly void ToBytes(Span<byte> b)
    {
        var t = Carry(_l0, _l1, _l2, _l3, _l4); // limbs < 2^51 except l0 < 2^51 + 19·2^13
        t = Carry(t._l0, t._l1, t._l2, t._l3, t._l4);
        // q = 1 exactly when t ≥ p: t + 19 carries out of bit 255.
        ulong q = (t._l0 + 19) >> 51;
        q = (t._l1 + q) >> 51;
        q = (t._l2 + q) >> 51;
        q = (t._l3 + q) >> 51;
        q = (t._l4 + q) >> 51;
        ulong l0 = t._l0 + 19 * q, l1 = t._l1, l2 = t._l2, l3 = t._l3, l4 = t._l4;
        l1 += l0 >> 51; l0 &= Mask;
        l2 += l1 >> 51; l1 &= Mask;
        l3 += l2 >> 51; l2 &= Mask;
        l4 += l3 >> 51; l3 &= Mask;
        l4 &= Mask; // drops 2^255 (t + 19q − 2^255 q = t − p q)
        BinaryPrimitives.WriteUInt64LittleEndian(b, l0 | (l1 << 51));
        BinaryPrimitives.WriteUInt64LittleEndian(b[8..], (l1 >> 13) | (l2 << 38));
        BinaryPrimitives.WriteUInt64LittleEndian(b[16..], (l2 >> 26) | (l3 << 25));
        BinaryPrimitives.WriteUInt64LittleEndian(b[24..], (l3 >> 39) | (l4 << 12));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Field25519 Carry(ulong l0, ulong l1, ulong l2, ulong l3, ulong l4)
    {
        l1 += l0 >> 51; l0 &= Mask;
        l2 += l1 >> 51; l1 &= Mask;
        l3 += l2 >> 51; l2 &= Mask;
        l4 += l3 >> 51; l3 &= Mask;
        l0 += 19 * (l4 >> 51); l4 &= Mask;
        return new(l0, l1, l2, l3, l4);
    }

    public static Field25519 operator +(in Field25519 a, in Field25519 b) =>
        Carry(a._l0 + b._l0, a._l1 + b._l1, a._l2 + b._l2, a._l3 + b._l3, a._l4 + b._l4);

    /// <summary>a − b + 2p (b weakly reduced, so no limb underflows).</summary>
    public static Field25519 operator -(in Field25519 a, in Field25519 b) =>
        Carry(a._l0 + 0xFFFFFFFFFFFDA - b._l0, a._l1 + 0xFFFFFFFFFFFFE - b._l1, a._l2 + 0xFFFFFFFFFFFFE - b._l2,
            a._l3 + 0xFFFFFFFFFFFFE - b._l3, a._l4 + 0xFFFFFFFFFFFFE - b._l4);

    public static Field25519 operator -(in Field25519 a) => Zero - a;

    public static Field25519 operator *(in Field25519 a, in Field25519 b)
    {
        ulong b1 = 19 * b._l1, b2 = 19 * b._l2, b3 = 19 * b._l3, b4 = 19 * b._l4;
        UInt128 t0 = Math.BigMul(a._l0, b._l0) + Math.BigMul(a._l1, b4) + Math.BigMul(a._l2, b3) + Math.BigMul(a._l3, b2) + Math.BigMul(a._l4, b1);
        UInt128 t1 = Math.BigMul(a._l0, b._l1) + Math.BigMul(a._l1, b._l0) + Math.BigMul(a._l2, b4) + Math.BigMul(a._l3, b3) + Math.BigMul(a._l4, b2);
        UInt128 t2 = Math.BigMul(a._l0, b._l2) + Math.BigMul(a._l1, b._l1) + Math.BigMul(a._l2, b._l0) + Math.BigMul(a._l3, b4) + Math.BigMul(a._l4, b3);
        UInt128 t3 = Math.BigMul(a._l0, b._l3) + Math.BigMul(a._l1, b._l2) + Math.BigMul(a._l2, b._l1) + Math.BigMul(a._l3, b._l0) + Math.BigMul(a._l4, b4);
        UInt128 t4 = Math.BigMul(a._l0, b._l4) + Math.BigMul(a._l1, b._l3) + Math.BigMul(a._l2, b._l2) + Math.BigMul(a._l3, b._l1) + Math.BigMul(a._l4, b._l0);
        return Reduce(t0, t1, t2, t3, t4);
    }

    public readonly Field25519 Square()
    {
        ulong d0 = 2 * _l0, d1 = 2 * _l1, l3x19 = 19 * _l3, l4x19 = 19 * _l4;
        UInt128 t0 = Math.BigMul(_l0, _l0) + Math.BigMul(d1, l4x19) + Math.BigMul(2 * _l2, l3x19);
        UInt128 t1 = Math.BigMul(d0, _l1) + Math.BigMul(2 * _l2, l4x19) + Math.BigMul(_l3, l3x19);
        UInt128 t2 = Math.BigMul(d0, _l2) + Math.BigMul(_l1, _l1) + Math.BigMul(2 * _l3, l4x19);
        UInt128 t3 = Math.BigMul(d0, _l3) + Math.BigMul(d1, _l2) + Math.BigMul(_l4, l4x19);
        UInt128 t4 = Math.BigMul(d0, _l4) + Math.BigMul(d1, _l3) + Math.BigMul(_l2, _l2);
        return Reduce(t0, t1, t2, t3, t4);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Field25519 Reduce(UInt128 t0, UInt128 t1, UInt128 t2, UInt128 t3, UInt128 t4)
    {
        t1 += (ulong)(t0 >> 51);
        t2 += (ulong)(t1 >> 51);
        t3 += (ulong)(t2 >> 51);
        t4 += (ulong)(t3 >> 51);
        ulong l0 = ((ulong)t0 & Mask) + 19 * (ulong)(t4 >> 51);
        ulong l1 = ((ulong)t1 & Mask) + (l0 >> 51);
        return new(l0 & Mask, l1, (ulong)t2 & Mask, (ulong)t3 & Mask, (ulong)t4 & Mask);
    }

    /// <summary>a^(2^n).</summary>
    private readonly Field25519 SquareTimes(int n)
    {
        var r = this;
        for (int i = 0; i < n; i++) r = r.Square();
        return r;
    }

    /// <summary>a^((p − 5)/8) = a^(2^252 − 3), the addition chain every curve25519 implementation uses.</summary>
    private readonly Field25519 Pow22523()
    {
        var z2 = Square();
        var z9 = z2.SquareTimes(2) * this;
        var z11 = z9 * z2;
        var z5_0 = z11.Square() * z9;             // 2^5 − 1
        var z10_0 = z5_0.SquareTimes(5) * z5_0;   // 2^10 − 1
        var z20_0 = z10_0.SquareTimes(10) * z10_0;
        var z40_0 = z20_0.SquareTimes(20) * z20_0;
        var z50_0 = z40_0.SquareTimes(10) * z10_0;
        var z100_0 = z50_0.SquareTimes(50) * z50_0;
        var z200_0 = z100_0.SquareTimes(100) * z100_0;
        var z250_0 = z200_0.SquareTimes(50) * z50_0;
        return z250_0.SquareTimes(2) * this;       // 2^252 − 4 + 1
    }

    /// <summary>1/a = a^(p − 2) = (a^(2^252 − 3))^8 · a^3; 0 for 0.</summary>
    public readonly Field25519 Invert() => Pow22523().SquareTimes(3) * Square() * this;

    /// <summary>The Legendre symbol as a mask: all ones when a is a non-zero non-square, else 0 (a square or 0).</summary>
    public readonly ulong NonSquareMask()
    {
        // a^((p−1)/2) = a^(2^254 − 10) = (a^(2^252 − 3))^4 · a^2: 1, p − 1 or 0.
        var chi = Pow22523().SquareTimes(2) * Square();
        return Equal(chi, -One);
    }

    /// <summary>A square root: (root, all ones) when a is a square (0 included), else (garbage, 0).</summary>
    public readonly (Field25519 Root, ulong Ok) Sqrt()
    {
        // p ≡ 5 (mod 8): x = a^((p+3)/8); x² = ±a; times sqrt(−1) when −a.
        var x = Pow22523() * this;
        var x2 = x.Square();
        ulong plus = Equal(x2, this), minus = Equal(x2, -this);
        x = Select(x, x * SqrtM1, minus);
        return (x, plus | minus);
    }

    /// <summary>All ones when the canonical value exceeds (p − 1)/2 (2a mod p is then odd), else 0.</summary>
    public readonly ulong IsNegativeMask()
    {
        Span<byte> b = stackalloc byte[32];
        (this + this).ToBytes(b);
        return 0UL - (ulong)(b[0] & 1);
    }

    public readonly ulong IsZeroMask()
    {
        Span<byte> b = stackalloc byte[32];
        ToBytes(b);
        ulong acc = 0;
        for (int i = 0; i < 32; i++) acc |= b[i];
        return 0UL - ((acc - 1) >> 63); // acc ≤ 255: acc − 1 wraps (top bit set) only for 0
    }

    /// <summary>All ones when a = b, else 0.</summary>
    public static ulong Equal(in Field25519 a, in Field25519 b) => (a - b).IsZeroMask();

    /// <summary><paramref name="a"/> where <paramref name="mask"/> is 0, <paramref name="b"/> where it is all ones.</summary>
    public static Field25519 Select(in Field25519 a, in Field25519 b, ulong mask) => new(
        a._l0 ^ (mask & (a._l0 ^ b._l0)), a._l1 ^ (mask & (a._l1 ^ b._l1)), a._l2 ^ (mask & (a._l2 ^ b._l2)),
        a._l3 ^ (mask & (a._l3 ^ b._l3)), a._l4 ^ (mask & (a._l4 ^ b._l4)));

    /// <summary>sqrt(−1) = 2^((p−1)/4), checked once at start-up (a wrong constant fails loudly).</summary>
    public static readonly Field25519 SqrtM1 = CheckedSqrtM1();

    private static Field25519 CheckedSqrtM1()
    {
        var s = new Field25519(1718705420411056, 234908883556509, 2233514472574048, 2117202627021982, 765476049583133);
        // Not through Equal: that would negate, which is fine, but keep the check independent of Sqrt.
        Span<byte> a = stackalloc byte[32], b = stackalloc byte[32];
        s.Square().ToBytes(a);
        (Zero - One).ToBytes(b);
        return a.SequenceEqual(b) ? s : throw new InvalidOperationException("Field25519: sqrt(-1) constant is wrong");
    }
}
