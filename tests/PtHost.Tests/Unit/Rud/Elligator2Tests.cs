using System.Diagnostics;
using System.Security.Cryptography;
using PtHost.Transports.Rud;
using Xunit.Abstractions;

namespace PtHost.Tests.Unit.Rud;

/// <summary>Elligator 2 representatives of X25519 keys (spec/rud.md §4.6).</summary>
public class Elligator2Tests(ITestOutputHelper output)
{
    /// <summary>
    /// Known answers of the direct map (representative → u, both little-endian): elligator.org's curve25519_direct
    /// vectors, which Monocypher's and obfs4's (x25519ell2) tests also use; some have bits 254–255 set, which decoding ignores.
    /// </summary>
    [Theory]
    [InlineData("0000000000000000000000000000000000000000000000000000000000000000", "0000000000000000000000000000000000000000000000000000000000000000")]
    [InlineData("0000000000000000000000000000000000000000000000000000000000000040", "0000000000000000000000000000000000000000000000000000000000000000")]
    [InlineData("00000000000000000000000000000000000000000000000000000000000000c0", "0000000000000000000000000000000000000000000000000000000000000000")]
    [InlineData("66665895c5bc6e44ba8d65fd9307092e3244bf2c18877832bd568cb3a2d38a12", "04d44290d13100b2c25290c9343d70c12ed4813487a07ac1176daa5925e7975e")]
    [InlineData("673a505e107189ee54ca93310ac42e4545e9e59050aaac6f8b5f64295c8ec02f", "242ae39ef158ed60f20b89396d7d7eef5374aba15dc312a6aea6d1e57cacf85e")]
    [InlineData("990b30e04e1c3620b4162b91a33429bddb9f1b70f1da6e5f76385ed3f98ab131", "998e98021eb4ee653effaa992f3fae4b834de777a953271baaa1fa3fef6b776e")]
    [InlineData("341a60725b482dd0de2e25a585b208433044bc0a1ba762442df3a0e888ca063c", "683a71d7fca4fc6ad3d4690108be808c2e50a5af3174486741d0a83af52aeb01")]
    [InlineData("922688fa428d42bc1fa8806998fbc5959ae801817e85a42a45e8ec25a0d7545a", "696f341266c64bcfa7afa834f8c34b2730be11c932e08474d1a22f26ed82410b")]
    [InlineData("0d3b0eb88b74ed13d5f6a130e03c4ad607817057dc227152827c0506a538bbba", "0b00df174d9fb0b6ee584d2cf05613130bad18875268c38b377e86dfefef177f")]
    [InlineData("01a3ea5658f4e00622eeacf724e0bd82068992fae66ed2b04a8599be16662ef5", "7ae4c58bc647b5646c9f5ae4c2554ccbf7c6e428e7b242a574a5a9c293c21f7e")]
    public void Decode_matches_the_reference_vectors(string representative, string publicKey)
    {
        var u = new byte[32];
        Elligator2.Decode(Convert.FromHexString(representative), u);
        Assert.Equal(publicKey, Convert.ToHexStringLower(u));
    }

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
