using System.Security.Cryptography;
using PtHost.Transports.Rud;

namespace PtHost.Tests.Unit.Rud;

/// <summary>RUD's AES-256-GCM through gnutls gives exactly .NET's AesGcm bytes (spec/rud.md §5.4).</summary>
public sealed class GnutlsAeadTests
{
    [Fact]
    public void Gnutls_is_used_on_this_machine()
    {
        Assert.True(GnutlsAead.Available, "libgnutls.so.30 should load here (Debian's libgnutls30)");
    }

    [Fact]
    public void Seal_and_open_match_AesGcm_for_random_keys_nonces_aad_and_lengths()
    {
        var rng = new Random(4242);
        for (int i = 0; i < 300; i++)
        {
            var key = new byte[32];
            var nonce = new byte[12];
            var aad = new byte[rng.Next(0, 64)];
            var plain = new byte[i < 10 ? i : rng.Next(0, 1500)];
            rng.NextBytes(key); rng.NextBytes(nonce); rng.NextBytes(aad); rng.NextBytes(plain);
            using var fast = GnutlsAead.TryCreate(key);
            Assert.NotNull(fast);
            var sealedBytes = new byte[plain.Length + 16];
            fast!.Seal(nonce, aad, plain, sealedBytes);
            using var reference = new AesGcm(key, 16);
            var expected = new byte[plain.Length + 16];
            reference.Encrypt(nonce, plain, expected.AsSpan(0, plain.Length), expected.AsSpan(plain.Length), aad);
            Assert.Equal(expected, sealedBytes);
            var back = new byte[plain.Length];
            Assert.True(fast.Open(nonce, aad, sealedBytes, back));
            Assert.Equal(plain, back);
            // Any flipped bit in ciphertext, tag or aad fails authentication.
            var tampered = (byte[])sealedBytes.Clone();
            tampered[rng.Next(tampered.Length)] ^= (byte)(1 << rng.Next(8));
            Assert.False(fast.Open(nonce, aad, tampered, back));
            if (aad.Length > 0)
            {
                var badAad = (byte[])aad.Clone();
                badAad[0] ^= 1;
                Assert.False(fast.Open(nonce, badAad, sealedBytes, back));
            }
        }
    }

    [Fact]
    public void Packet_protection_opens_what_it_sealed_and_refuses_another_index()
    {
        var secret = RandomNumberGenerator.GetBytes(64);
        using var p = new PacketProtection(secret, 0);
        var plain = RandomNumberGenerator.GetBytes(1200);
        var sealedBytes = new byte[plain.Length + 16];
        p.Seal(77, "hdr"u8, plain, sealedBytes);
        var back = new byte[plain.Length];
        Assert.True(p.Open(77, "hdr"u8, sealedBytes, back));
        Assert.Equal(plain, back);
        Assert.False(p.Open(78, "hdr"u8, sealedBytes, back));
    }
}
