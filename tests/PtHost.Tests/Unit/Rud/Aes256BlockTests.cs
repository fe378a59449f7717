using System.Security.Cryptography;
using PtHost.Transports.Rud;

namespace PtHost.Tests.Unit.Rud;

/// <summary>The AES-NI block cipher behind the header mask (spec/rud.md §3.3) gives exactly AES-256's bytes.</summary>
public sealed class Aes256BlockTests
{
    [Fact]
    public void Aes_instructions_are_used_on_this_machine()
    {
        Assert.True(Aes256Block.IsSupported, "an x86-64 processor with AES-NI is expected here");
    }

    [Fact]
    public void Encrypt_matches_the_FIPS_197_appendix_C3_vector()
    {
        var key = Convert.FromHexString("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f");
        var block = new Aes256Block(key);
        var output = new byte[16];
        block.Encrypt(Convert.FromHexString("00112233445566778899aabbccddeeff"), output);
        Assert.Equal("8ea2b7ca516745bfeafc49904b496089", Convert.ToHexStringLower(output));
    }

    [Fact]
    public void Encrypt_matches_AES_256_ECB_for_random_keys_and_blocks()
    {
        var rng = new Random(3303);
        for (int i = 0; i < 200; i++)
        {
            var key = new byte[32];
            var input = new byte[16];
            rng.NextBytes(key);
            rng.NextBytes(input);
            using var reference = Aes.Create();
            reference.Key = key;
            var expected = reference.EncryptEcb(input, PaddingMode.None);
            var output = new byte[16];
            new Aes256Block(key).Encrypt(input, output);
            Assert.Equal(expected, output);
        }
    }

    [Fact]
    public void Header_mask_is_its_own_inverse_and_changes_only_the_13_header_bytes()
    {
        var rng = new Random(77);
        var serverPublic = new byte[32];
        rng.NextBytes(serverPublic);
        using var hp = new HeaderProtection(serverPublic);
        var packet = new byte[1350];
        rng.NextBytes(packet);
        var original = (byte[])packet.Clone();
        hp.Mask(packet);
        Assert.NotEqual(original.AsSpan(0, HeaderProtection.HeaderSize).ToArray(), packet.AsSpan(0, HeaderProtection.HeaderSize).ToArray());
        Assert.Equal(original.AsSpan(HeaderProtection.HeaderSize).ToArray(), packet.AsSpan(HeaderProtection.HeaderSize).ToArray());
        // The mask is AES-256(k_hp, the last 16 bytes) (§3.3): k_hp from HKDF-SHA-512 over the responder's key.
        var kHp = HKDF.DeriveKey(HashAlgorithmName.SHA512, serverPublic, 32, "RUD2 obfuscation"u8.ToArray(), []);
        using var reference = Aes.Create();
        reference.Key = kHp;
        var mask = reference.EncryptEcb(original.AsSpan(original.Length - 16).ToArray(), PaddingMode.None);
        for (int i = 0; i < HeaderProtection.HeaderSize; i++) Assert.Equal((byte)(original[i] ^ mask[i]), packet[i]);
        hp.Mask(packet);
        Assert.Equal(original, packet);
    }
}
