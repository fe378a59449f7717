using System.Buffers.Binary;
using System.Security.Cryptography;

namespace PtHost.Transports.Rud;

/// <summary>
/// Packet obfuscation (spec/rud.md §3.3), after QUIC's header protection (RFC 9001 §5.4): every packet's
/// first 13 bytes are XORed with AES-256(k_hp, its last 16 bytes), and a handshake packet's body with
/// AES-256-CTR(k_hp) counting on from those 16 bytes. k_hp comes from the responder's static public key, so
/// without that key every packet reads as random bytes. One instance per responder key; thread-safe: the
/// mask is one AES block through the processor's AES instructions (<see cref="Aes256Block"/>, no native call
/// and no lock), or where those are missing through one reusable ECB transform (no native context per
/// packet) under a lock that only the receive thread and the sender holding the endpoint's lock contend for.
/// </summary>
public sealed class HeaderProtection : IDisposable
{
    /// <summary>The protected header: stream identifier 8, type 1, and 4 more bytes (§3.1, §4.1).</summary>
    public const int HeaderSize = 13;
    public const int SampleSize = 16;
    private readonly Aes _aes;
    private readonly ICryptoTransform _ecb;
    private readonly Aes256Block? _block;
    private readonly byte[] _sample = new byte[SampleSize], _mask = new byte[SampleSize];

    public HeaderProtection(ReadOnlySpan<byte> responderStatic)
    {
        Span<byte> key = stackalloc byte[32];
        HKDF.DeriveKey(HashAlgorithmName.SHA512, responderStatic, key, "RUD2 obfuscation"u8, []);
        _aes = Aes.Create();
        _aes.Key = key.ToArray();
        if (Aes256Block.IsSupported) _block = new Aes256Block(key);
        key.Clear();
        _aes.Mode = CipherMode.ECB;
        _aes.Padding = PaddingMode.None;
        _ecb = _aes.CreateEncryptor();
        Key = EphemeralKeyId.From(responderStatic);
    }

    /// <summary>The responder's static public key this protection belongs to.</summary>
    internal EphemeralKeyId Key { get; }

    /// <summary>XORs the header of <paramref name="packet"/> (at least 29 bytes) with the mask of its last 16 bytes; its own inverse.</summary>
    public void Mask(Span<byte> packet)
    {
        Span<byte> mask = stackalloc byte[SampleSize];
        if (_block is not null) _block.Encrypt(packet[^SampleSize..], mask);
        else
        {
            lock (_ecb)
            {
                packet[^SampleSize..].CopyTo(_sample);
                _ecb.TransformBlock(_sample, 0, SampleSize, _mask, 0);
                _mask.CopyTo(mask);
            }
        }
        for (int i = 0; i < HeaderSize; i++) packet[i] ^= mask[i];
    }

    /// <summary>
    /// XORs <paramref name="body"/> with the keystream AES-256(k_hp, S + 1), AES-256(k_hp, S + 2), … where S is
    /// <paramref name="sample"/> read as a 128-bit big-endian counter (§3.3); its own inverse. Handshakes only.
    /// </summary>
    public void Crypt(ReadOnlySpan<byte> sample, Span<byte> body)
    {
        int blocks = (body.Length + SampleSize - 1) / SampleSize;
        if (blocks == 0) return;
        var counters = new byte[blocks * SampleSize];
        var hi = BinaryPrimitives.ReadUInt64BigEndian(sample);
        var lo = BinaryPrimitives.ReadUInt64BigEndian(sample[8..]);
        for (int i = 0; i < blocks; i++)
        {
            lo++;
            if (lo == 0) hi++;
            BinaryPrimitives.WriteUInt64BigEndian(counters.AsSpan(i * SampleSize), hi);
            BinaryPrimitives.WriteUInt64BigEndian(counters.AsSpan(i * SampleSize + 8), lo);
        }
        var stream = _aes.EncryptEcb(counters, PaddingMode.None);
        for (int i = 0; i < body.Length; i++) body[i] ^= stream[i];
    }

    public void Dispose()
    {
        _ecb.Dispose();
        _aes.Dispose();
    }
}
