using System.Numerics;

namespace PtHost.Testing;

/// <summary>
/// The earlier BigInteger Elligator 2 (spec/rud.md §4.6), kept as the model the constant-time
/// <see cref="PtHost.Transports.Rud.Elligator2"/> is checked against: the same map written the plain way,
/// with the same point T of order 8 (u = LE e0eb7a7c…5f49b800, v ≤ (p − 1)/2) and the same use of the tweak.
/// </summary>
public static class Elligator2Reference
{
    private static readonly BigInteger P = BigInteger.Pow(2, 255) - 19;
    private static readonly BigInteger A = 486662;
    private static readonly BigInteger SqrtM1 = BigInteger.ModPow(2, (P - 1) / 4, P);
    public static readonly BigInteger HalfP = (P - 1) / 2;
    private static readonly Lazy<Point?[]> s_lowOrder = new(LowOrderMultiples);

    private readonly record struct Point(BigInteger U, BigInteger V);

    public static BigInteger Prime => P;

    public static bool TryRepresent(ReadOnlySpan<byte> clean, ReadOnlySpan<byte> tweak, Span<byte> dirtyPublicKey, Span<byte> representative)
    {
        var u = Load(clean[..32]) % P; // an X25519 public key: below p, bit 255 clear
        if (Sqrt(Curve(u)) is not { } y) return false;
        if ((tweak[0] & 1) != 0) y = Mod(-y);
        var point = Add(new Point(u, y), s_lowOrder.Value[(tweak[0] >> 1) & 7]);
        if (point is not { } q || !TryEncode(q.U, (tweak[0] & 0x10) != 0, out var r)) return false;
        Store(q.U, dirtyPublicKey);
        Store(r, representative);
        representative[31] |= (byte)(tweak[1] & 0xC0);
        return true;
    }

    public static void Decode(ReadOnlySpan<byte> representative, Span<byte> publicKey)
    {
        Span<byte> masked = stackalloc byte[32];
        representative[..32].CopyTo(masked);
        masked[31] &= 0x3F;
        var r = Load(masked);
        var w = Mod(-A * Inverse(Mod(1 + 2 * r * r)));
        var u = IsSquare(Curve(w)) ? w : Mod(-w - A);
        Store(u, publicKey);
    }

    public static bool TryEncode(BigInteger u, bool second, out BigInteger r)
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

    private static BigInteger? Sqrt(BigInteger a)
    {
        var x = BigInteger.ModPow(a, (P + 3) / 8, P);
        if (Mod(x * x) == a) return x;
        x = Mod(x * SqrtM1);
        return Mod(x * x) == a ? x : null;
    }

    private static Point? Add(Point? p, Point? q)
    {
        if (p is not { } a) return q;
        if (q is not { } b) return p;
        BigInteger lambda;
        if (a.U == b.U)
        {
            if (Mod(a.V + b.V).IsZero) return null;
            lambda = Mod((3 * a.U * a.U + 2 * A * a.U + 1) * Inverse(Mod(2 * a.V)));
        }
        else lambda = Mod((b.V - a.V) * Inverse(Mod(b.U - a.U)));
        var u = Mod(lambda * lambda - A - a.U - b.U);
        return new Point(u, Mod(lambda * (a.U - u) - a.V));
    }

    private static Point?[] LowOrderMultiples()
    {
        var u = Load(Convert.FromHexString("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"));
        var v = Sqrt(Curve(u)) ?? throw new InvalidOperationException("T not on the curve");
        var t = new Point(u, v > HalfP ? P - v : v);
        var multiples = new Point?[8];
        for (int k = 1; k < 8; k++) multiples[k] = Add(multiples[k - 1], t);
        if (Add(multiples[7], t) is not null || multiples[4] is null) throw new InvalidOperationException("T is not of order 8");
        return multiples;
    }

    public static BigInteger Load(ReadOnlySpan<byte> le) => new(le, isUnsigned: true, isBigEndian: false);

    public static void Store(BigInteger x, Span<byte> le)
    {
        le[..32].Clear();
        x.TryWriteBytes(le, out _, isUnsigned: true, isBigEndian: false);
    }
}
