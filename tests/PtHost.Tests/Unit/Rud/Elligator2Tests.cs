using System.Diagnostics;
using System.Security.Cryptography;
using PtHost.Transports.Rud;
using Xunit.Abstractions;

namespace PtHost.Tests.Unit.Rud;

/// <summary>Elligator 2 representatives of X25519 keys (spec/rud.md §4.6).</summary>
public class Elligator2Tests(ITestOutputHelper output)
{
    [Fact]
    public void A_representative_decodes_to_the_public_key_and_the_agreement_matches_both_ways()
    {
        var clock = Stopwatch.StartNew();
        const int Keys = 200;
        for (int i = 0; i < Keys; i++)
        {
            byte[] priv = new byte[32], pub = new byte[32], rep = new byte[32], decoded = new byte[32];
            Elligator2.GenerateKey(priv, pub, rep);
            Elligator2.Decode(rep, decoded);
            Assert.Equal(pub, decoded);
            var peer = X25519.GeneratePrivateKey();
            var peerPub = new byte[32];
            X25519.PublicKey(peer, peerPub);
            byte[] mine = new byte[32], theirs = new byte[32];
            Assert.True(X25519.Agree(priv, peerPub, mine));
            Assert.True(X25519.Agree(peer, decoded, theirs)); // the dirty key's low-order part vanishes under a clamped scalar
            Assert.Equal(mine, theirs);
        }
        output.WriteLine($"{Keys} representable key pairs, decoded and agreed: {clock.Elapsed.TotalMilliseconds / Keys:0.00} ms each");
    }

    [Fact]
    public void Dirty_keys_leave_the_prime_order_subgroup_and_bits_254_and_255_are_used()
    {
        // A clean public key is ℓ-torsion: X25519 with the scalar ℓ·(anything clamped) is not testable through
        // OpenSSL, so check instead that the dirty keys differ from the clean key of the same private key.
        int differ = 0, top = 0, next = 0;
        const int Keys = 400;
        for (int i = 0; i < Keys; i++)
        {
            byte[] priv = new byte[32], pub = new byte[32], rep = new byte[32], clean = new byte[32];
            Elligator2.GenerateKey(priv, pub, rep);
            X25519.PublicKey(priv, clean);
            if (!clean.AsSpan().SequenceEqual(pub)) differ++;
            if ((rep[31] & 0x80) != 0) top++;
            if ((rep[31] & 0x40) != 0) next++;
        }
        output.WriteLine($"{Keys} keys: {differ} dirty, bit 255 set in {top}, bit 254 in {next}");
        // k = 0 (a clean key) with probability 1/8: expect 350 dirty; 5 standard deviations either side.
        Assert.InRange(differ, 310, 390);
        Assert.InRange(top, 150, 250);
        Assert.InRange(next, 150, 250);
    }

    [Fact]
    public void Every_32_bytes_decode_to_a_key_that_agrees()
    {
        var peer = X25519.GeneratePrivateKey();
        var shared = new byte[32];
        var pub = new byte[32];
        for (int i = 0; i < 200; i++)
        {
            Elligator2.Decode(RandomNumberGenerator.GetBytes(32), pub);
            Assert.True(X25519.Agree(peer, pub, shared) || pub.AsSpan().IndexOfAnyExcept((byte)0) < 0);
        }
    }
}
