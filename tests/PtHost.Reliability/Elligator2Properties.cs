using System.Numerics;
using FsCheck;
using FsCheck.Fluent;
using PtHost.Transports.Rud;

namespace PtHost.Reliability;

/// <summary>
/// FsCheck properties of the constant-time Elligator 2 (spec/rud.md §4.6): it agrees with the BigInteger model
/// (<see cref="Elligator2Reference"/>, the earlier implementation) on decoding and on the whole dirty-key encoding,
/// and representative → point → representative and point → representative → point round-trip.
/// </summary>
public class Elligator2Properties
{
    private static readonly Config Quick = Config.QuickThrowOnFailure.WithMaxTest(500);

    private static Gen<byte[]> Bytes(int n) => Gen.ArrayOf(Gen.Choose(0, 255).Select(i => (byte)i), n);

    /// <summary>Any 32 bytes, with the edge values (0, p − 1, p, p + 1, 2^255 − 1, all ones) mixed in.</summary>
    private static Gen<byte[]> Representatives => Gen.Frequency(
        (20, Bytes(32)),
        (1, Gen.Elements(new BigInteger[] { 0, 1, Elligator2Reference.HalfP, Elligator2Reference.HalfP + 1, Elligator2Reference.Prime - 1, Elligator2Reference.Prime,
            Elligator2Reference.Prime + 1, BigInteger.Pow(2, 254) - 1, BigInteger.Pow(2, 255) - 1, BigInteger.Pow(2, 256) - 1 })
            .Select(x =>
            {
                var b = new byte[32];
                Elligator2Reference.Store(x, b);
                return b;
            })));

    [Fact]
    public void Decode_agrees_with_the_BigInteger_model_on_any_32_bytes()
    {
        Check.One(Quick, Prop.ForAll(Representatives.ToArbitrary(), r =>
        {
            byte[] fast = new byte[32], model = new byte[32];
            Elligator2.Decode(r, fast);
            Elligator2Reference.Decode(r, model);
            return fast.AsSpan().SequenceEqual(model);
        }));
    }

    /// <summary>Point → representative → point, and the whole dirty-key encoding equal to the model's, for any key and tweak.</summary>
    [Fact]
    public void The_dirty_key_encoding_agrees_with_the_model_and_its_representative_decodes_to_the_dirty_key()
    {
        var cases = Gen.Zip(Bytes(32), Bytes(2));
        Check.One(Quick, Prop.ForAll(cases.ToArbitrary(), c =>
        {
            var clean = new byte[32];
            X25519.PublicKey(c.Item1, clean);
            byte[] dirty = new byte[32], rep = new byte[32], modelDirty = new byte[32], modelRep = new byte[32], decoded = new byte[32];
            bool ok = Elligator2.TryRepresent(clean, c.Item2, dirty, rep);
            bool modelOk = Elligator2Reference.TryRepresent(clean, c.Item2, modelDirty, modelRep);
            if (ok != modelOk) return false;
            if (!ok) return true;
            Elligator2.Decode(rep, decoded);
            return dirty.AsSpan().SequenceEqual(modelDirty) && rep.AsSpan().SequenceEqual(modelRep) && decoded.AsSpan().SequenceEqual(dirty);
        }));
    }

    /// <summary>Representative → point → representative: u = Decode(r) encodes back to r (≤ (p − 1)/2, else p − r) on one branch.</summary>
    [Fact]
    public void A_decoded_representative_encodes_back_to_itself()
    {
        Check.One(Quick, Prop.ForAll(Representatives.ToArbitrary(), r =>
        {
            var masked = (byte[])r.Clone();
            masked[31] &= 0x3F;
            var value = Elligator2Reference.Load(masked);
            if (value.IsZero) return true; // r = 0 decodes to u = 0, which has no representative
            var expected = new byte[32];
            Elligator2Reference.Store(value > Elligator2Reference.HalfP ? Elligator2Reference.Prime - value : value, expected);
            var u = new byte[32];
            Elligator2.Decode(r, u);
            byte[] first = new byte[32], second = new byte[32];
            bool a = Elligator2.TryEncode(u, false, first), b = Elligator2.TryEncode(u, true, second);
            return (a && first.AsSpan().SequenceEqual(expected)) || (b && second.AsSpan().SequenceEqual(expected));
        }));
    }
}
