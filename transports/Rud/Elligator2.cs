using System.Numerics;
using System.Security.Cryptography;

namespace PtHost.Transports.Rud;

/// <summary>
/// Elligator 2 for Curve25519 (Bernstein, Hamburg, Krasnova, Lange 2013; spec/rud.md §4.6): X25519 public
/// keys encoded as 32 bytes indistinguishable from random. Field arithmetic with <see cref="BigInteger"/>:
/// handshakes only, speed secondary. As obfs4's fixed encoder does, a key is made "dirty" (a random
/// low-order component added, which X25519 with a clamped scalar ignores) so that representatives cover
/// every curve point, not only the prime-order subgroup, and the two padding bits above the 254-bit
/// representative are random.
/// </summary>
public static class Elligator2
{
    public const int Size = 32;
    private static readonly BigInteger P = BigInteger.Pow(2, 255) - 19;
    private static readonly BigInteger A = 486662;
    /// <summary>The order of the prime subgroup (RFC 7748 §4.1).</summary>
    private static readonly BigInteger L = BigInteger.Pow(2, 252) + BigInteger.Parse("27742317777372353535851937790883648493", System.Globalization.CultureInfo.InvariantCulture);
    private static readonly BigInteger SqrtM1 = BigInteger.ModPow(2, (P - 1) / 4, P);
    private static readonly BigInteger HalfP = (P - 1) / 2;
    /// <summary>The multiples 0..7 of a point of order 8 (null: the point at infinity).</summary>
    private static readonly Lazy<Point?[]> s_lowOrder = new(LowOrderMultiples);

    private readonly record struct Point(BigInteger U, BigInteger V);

    /// <summary>
    /// A fresh key pair whose public key has a representative: <paramref name="privateKey"/> (32 bytes, for
    /// <see cref="X25519.Agree"/>), <paramref name="publicKey"/> (the dirty u-coordinate the representative
    /// decodes to; use it as the public key in key derivations) and <paramref name="representative"/>.
    /// </summary>
    public static void GenerateKey(Span<byte> privateKey, Span<byte> publicKey, Span<byte> representative)
    {
        Span<byte> u0 = stackalloc byte[X25519.KeySize];
        Span<byte> random = stackalloc byte[2];
        while (true)
        {
            RandomNumberGenerator.Fill(privateKey);
            X25519.PublicKey(privateKey, u0);
            RandomNumberGenerator.Fill(random);
            var u = Load(u0);
            var v = Sqrt(Curve(u));
            if (v is not { } y) continue; // cannot happen for a public key; defensive
            if ((random[0] & 1) != 0) y = Mod(-y);
            // The low-order component: k × T, k from the random byte (0..7).
            var point = Add(new Point(u, y), s_lowOrder.Value[(random[0] >> 1) & 7]);
            if (point is not { } q || !TryRepresent(q.U, (random[0] & 0x10) != 0, out var r)) continue;
            Store(q.U, publicKey);
            Store(r, representative);
            representative[31] |= (byte)(random[1] & 0xC0); // the two padding bits (r < 2^254)
            return;
        }
    }

    /// <summary>The u-coordinate (public key, 32 bytes little-endian) that <paramref name="representative"/> encodes.</summary>
    public static void Decode(ReadOnlySpan<byte> representative, Span<byte> publicKey)
    {
        Span<byte> masked = stackalloc byte[Size];
        representative[..Size].CopyTo(masked);
        masked[31] &= 0x3F;
        var r = Load(masked);
        // w = -A / (1 + 2 r²); u = w when w³ + A w² + w is a square, else -w - A.
        var w = Mod(-A * Inverse(Mod(1 + 2 * r * r)));
        var u = IsSquare(Curve(w)) ? w : Mod(-w - A);
        Store(u, publicKey);
    }

    /// <summary>r with the map taking r to u: branch <paramref name="second"/> picks one of u's two representatives.</summary>
    private static bool TryRepresent(BigInteger u, bool second, out BigInteger r)
    {
        r = default;
        var uPlusA = Mod(u + A);
        if (u.IsZero || uPlusA.IsZero || !IsSquare(Mod(-2 * u * uPlusA))) return false;
        var square = second ? Mod(-u * Inverse(Mod(2 * uPlusA))) : Mod(-uPlusA * Inverse(Mod(2 * u)));
        if (Sqrt(square) is not { } root) return false;
        r = root > HalfP ? P - root : root;
        return true;
    }

    private static BigInteger Curve(BigInteger u) => Mod(((u + A) * u + 1) * u);

    private static BigInteger Mod(BigInteger x)
    {
        var m = x % P;
        return m.Sign < 0 ? m + P : m;
    }

    private static BigInteger Inverse(BigInteger x) => BigInteger.ModPow(x, P - 2, P);

    private static bool IsSquare(BigInteger x) => x.IsZero || BigInteger.ModPow(x, HalfP, P).IsOne;

    /// <summary>A square root mod p (p ≡ 5 mod 8), or null for a non-square.</summary>
    private static BigInteger? Sqrt(BigInteger a)
    {
        var x = BigInteger.ModPow(a, (P + 3) / 8, P);
        if (Mod(x * x) == a) return x;
        x = Mod(x * SqrtM1);
        return Mod(x * x) == a ? x : null;
    }

    /// <summary>Affine addition on v² = u³ + A u² + u; null is the point at infinity.</summary>
    private static Point? Add(Point? p, Point? q)
    {
        if (p is not { } a) return q;
        if (q is not { } b) return p;
        BigInteger lambda;
        if (a.U == b.U)
        {
            if (Mod(a.V + b.V).IsZero) return null; // P + (-P), and doubling a point of order 2
            lambda = Mod((3 * a.U * a.U + 2 * A * a.U + 1) * Inverse(Mod(2 * a.V)));
        }
        else lambda = Mod((b.V - a.V) * Inverse(Mod(b.U - a.U)));
        var u = Mod(lambda * lambda - A - a.U - b.U);
        return new Point(u, Mod(lambda * (a.U - u) - a.V));
    }

    private static Point? Multiply(BigInteger k, Point? p)
    {
        Point? result = null;
        for (int bit = (int)k.GetBitLength() - 1; bit >= 0; bit--)
        {
            result = Add(result, result);
            if (!(k >> bit).IsEven) result = Add(result, p);
        }
        return result;
    }

    /// <summary>0, T, 2T, …, 7T for a point T of order 8: ℓ × a random curve point until the result has order 8.</summary>
    private static Point?[] LowOrderMultiples()
    {
        Span<byte> b = stackalloc byte[32];
        while (true)
        {
            RandomNumberGenerator.Fill(b);
            b[31] &= 0x7F;
            var u = Mod(Load(b));
            if (Sqrt(Curve(u)) is not { } v) continue;
            var t = Multiply(L, new Point(u, v));
            if (Multiply(4, t) is null) continue; // order 1, 2 or 4
            var multiples = new Point?[8];
            for (int k = 1; k < 8; k++) multiples[k] = Add(multiples[k - 1], t);
            return multiples;
        }
    }

    private static BigInteger Load(ReadOnlySpan<byte> le) => new(le, isUnsigned: true, isBigEndian: false);

    private static void Store(BigInteger x, Span<byte> le)
    {
        le[..32].Clear();
        x.TryWriteBytes(le, out _, isUnsigned: true, isBigEndian: false);
    }
}
