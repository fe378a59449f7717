using System.Security.Cryptography;

namespace PtHost.Transports.Rud;

/// <summary>
/// Elligator 2 for Curve25519 (Bernstein, Hamburg, Krasnova, Lange 2013; spec/rud.md §4.6): X25519 public
/// keys encoded as 32 bytes indistinguishable from random. As obfs4's fixed encoder does, a key is made "dirty"
/// (a random low-order component added, which X25519 with a clamped scalar ignores) so that representatives
/// cover every curve point, not only the prime-order subgroup, and the two padding bits above the 254-bit
/// representative are random. Field arithmetic is <see cref="Field25519"/>: constant time, no allocation.
/// </summary>
public static class Elligator2
{
    public const int Size = 32;
    private static readonly Field25519 A = Field25519.From(486662);

    /// <summary>T, 2T, …, 7T for the point T of order 8 with u = LE e0eb7a7c…5f49b800 (index 0 unused).</summary>
    private static readonly (Field25519 U, Field25519 V)[] s_lowOrder = LowOrderMultiples();

    /// <summary>
    /// A fresh key pair whose public key has a representative: <paramref name="privateKey"/> (32 bytes, for
    /// <see cref="X25519.Agree"/>), <paramref name="publicKey"/> (the dirty u-coordinate the representative
    /// decodes to; use it as the public key in key derivations) and <paramref name="representative"/>.
    /// </summary>
    public static void GenerateKey(Span<byte> privateKey, Span<byte> publicKey, Span<byte> representative)
    {
        Span<byte> u0 = stackalloc byte[X25519.KeySize];
        Span<byte> tweak = stackalloc byte[2];
        while (true)
        {
            RandomNumberGenerator.Fill(privateKey);
            X25519.PublicKey(privateKey, u0);
            RandomNumberGenerator.Fill(tweak);
            // About half the keys have a representative; a failure says only that a discarded key had none.
            if (TryRepresent(u0, tweak, publicKey, representative)) return;
        }
    }

    /// <summary>
    /// The dirty key and its representative for the clean public key <paramref name="cleanPublicKey"/> (§4.6), the
    /// random choices taken from <paramref name="tweak"/> (2 bytes): bit 0 of byte 0 the sign of v, bits 1–3 the
    /// multiple j of T, bit 4 which of the two representatives; bits 6–7 of byte 1 the padding bits. False when the
    /// dirty point has no representative (the outputs are then meaningless).
    /// </summary>
    internal static bool TryRepresent(ReadOnlySpan<byte> cleanPublicKey, ReadOnlySpan<byte> tweak, Span<byte> dirtyPublicKey, Span<byte> representative)
    {
        var u = Field25519.FromBytes(cleanPublicKey);
        var (v, onCurve) = Curve(u).Sqrt();
        v = Field25519.Select(v, -v, 0UL - (ulong)(tweak[0] & 1));
        // j · T by a scan of the whole table (no secret index), then the affine sum P + jT: P has prime order and
        // jT order 2, 4 or 8, so their u differ and the chord formula applies; j = 0 keeps P.
        int j = (tweak[0] >> 1) & 7;
        var (tu, tv) = s_lowOrder[1];
        for (int i = 2; i < 8; i++)
        {
            ulong pick = 0UL - (ulong)(((uint)(i ^ j) - 1) >> 31); // all ones when i == j
            tu = Field25519.Select(tu, s_lowOrder[i].U, pick);
            tv = Field25519.Select(tv, s_lowOrder[i].V, pick);
        }
        var lambda = (tv - v) * (tu - u).Invert();
        var dirty = Field25519.Select(lambda.Square() - A - u - tu, u, 0UL - (ulong)(((uint)j - 1) >> 31));

        ulong ok = onCurve & Encode(dirty, 0UL - (ulong)((tweak[0] >> 4) & 1), out var r);
        dirty.ToBytes(dirtyPublicKey);
        r.ToBytes(representative);
        representative[31] |= (byte)(tweak[1] & 0xC0); // the two padding bits
        return ok != 0;
    }

    /// <summary>
    /// The representative r ≤ (p − 1)/2 of u (§4.6), branch <paramref name="second"/> (a mask): r² = −(u + A) / (2u), or
    /// −u / (2(u + A)) for the second. The mask returned is all ones when it exists (u ≠ 0, u ≠ −A, −2u(u + A) a square).
    /// </summary>
    private static ulong Encode(in Field25519 u, ulong second, out Field25519 r)
    {
        var uPlusA = u + A;
        var numerator = Field25519.Select(-uPlusA, -u, second);
        var denominator = Field25519.Select(u + u, uPlusA + uPlusA, second);
        var (root, isSquare) = (numerator * denominator.Invert()).Sqrt();
        r = Field25519.Select(root, -root, root.IsNegativeMask()); // the root ≤ (p − 1)/2: r < 2^254
        return isSquare & ~u.IsZeroMask() & ~uPlusA.IsZeroMask();
    }

    /// <summary>§4.6's encoding of a u-coordinate without the dirty step (tests: representative → point → representative).</summary>
    internal static bool TryEncode(ReadOnlySpan<byte> u, bool second, Span<byte> representative)
    {
        ulong ok = Encode(Field25519.FromBytes(u), second ? ulong.MaxValue : 0, out var r);
        r.ToBytes(representative);
        return ok != 0;
    }

    /// <summary>The u-coordinate (public key, 32 bytes little-endian) that <paramref name="representative"/> encodes.</summary>
    public static void Decode(ReadOnlySpan<byte> representative, Span<byte> publicKey)
    {
        Span<byte> masked = stackalloc byte[Size];
        representative[..Size].CopyTo(masked);
        masked[31] &= 0x3F;
        var r = Field25519.FromBytes(masked);
        // w = −A / (1 + 2r²); u = w when w³ + A w² + w is a square, else −w − A. 1 + 2r² is never 0 (−1/2 is a non-square).
        var w = -A * (Field25519.One + r.Square() + r.Square()).Invert();
        var u = Field25519.Select(w, -w - A, Curve(w).NonSquareMask());
        u.ToBytes(publicKey);
    }

    /// <summary>u³ + A u² + u.</summary>
    private static Field25519 Curve(in Field25519 u) => ((u + A) * u + Field25519.One) * u;

    /// <summary>The multiples of T (start-up only, public constants: not constant time), checked: 7T = −T.</summary>
    private static (Field25519, Field25519)[] LowOrderMultiples()
    {
        Span<byte> le = stackalloc byte[32];
        Convert.FromHexString("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800").CopyTo(le);
        var u = Field25519.FromBytes(le);
        var (v, ok) = Curve(u).Sqrt();
        if (ok == 0) throw new InvalidOperationException("Elligator2: the order-8 point is not on the curve");
        var m = new (Field25519 U, Field25519 V)[8];
        m[1] = (u, Field25519.Select(v, -v, v.IsNegativeMask()));
        // 2T by the tangent, then kT = (k − 1)T + T by the chord (their u differ for k = 3…7).
        var l2 = (Field25519.From(3) * m[1].U.Square() + Field25519.From(2) * A * m[1].U + Field25519.One) * (m[1].V + m[1].V).Invert();
        var u2 = l2.Square() - A - m[1].U - m[1].U;
        m[2] = (u2, l2 * (m[1].U - u2) - m[1].V);
        for (int k = 3; k < 8; k++)
        {
            var (pu, pv) = m[k - 1];
            var l = (m[1].V - pv) * (m[1].U - pu).Invert();
            var uk = l.Square() - A - pu - m[1].U;
            m[k] = (uk, l * (pu - uk) - pv);
        }
        if (Field25519.Equal(m[7].U, m[1].U) == 0 || Field25519.Equal(m[7].V, -m[1].V) == 0 || m[4].V.IsZeroMask() == 0)
            throw new InvalidOperationException("Elligator2: T is not of order 8");
        return m;
    }
}
