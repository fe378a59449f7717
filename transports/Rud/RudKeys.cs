using System.Buffers.Binary;
using System.Net;
using System.Security.Cryptography;

namespace PtHost.Transports.Rud;

/// <summary>Key schedule of spec/rud.md §5.2–§5.4.</summary>
public static class RudKeys
{
    public const int TagSize = 16;
    public const int NonceSize = 12;
    private static ReadOnlySpan<byte> MezzanineSalt => "RUD1 mezzanine"u8;
    private static ReadOnlySpan<byte> TrafficSalt => "RUD1 traffic"u8;

    /// <summary>K_m = HKDF-SHA-512(salt "RUD1 mezzanine", es, info = ephemeral | static) (§5.2).</summary>
    public static byte[] MezzanineKey(ReadOnlySpan<byte> es, ReadOnlySpan<byte> initiatorEphemeral, ReadOnlySpan<byte> responderStatic)
    {
        Span<byte> info = stackalloc byte[64];
        initiatorEphemeral.CopyTo(info);
        responderStatic.CopyTo(info[32..]);
        var key = new byte[32];
        HKDF.DeriveKey(HashAlgorithmName.SHA512, es, key, MezzanineSalt, info);
        return key;
    }

    /// <summary>
    /// K_a = HKDF-SHA-512(salt "RUD2 initiator", IKM = es | ss, info = initiator ephemeral | responder static |
    /// initiator static, L = 32): the key of the initiator's proof (§5.5).
    /// </summary>
    public static byte[] InitiatorProofKey(ReadOnlySpan<byte> es, ReadOnlySpan<byte> ss, ReadOnlySpan<byte> initiatorEphemeral,
        ReadOnlySpan<byte> responderStatic, ReadOnlySpan<byte> initiatorStatic)
    {
        Span<byte> ikm = stackalloc byte[64];
        es.CopyTo(ikm);
        ss.CopyTo(ikm[32..]);
        Span<byte> info = stackalloc byte[96];
        initiatorEphemeral.CopyTo(info);
        responderStatic.CopyTo(info[32..]);
        initiatorStatic.CopyTo(info[64..]);
        var key = new byte[32];
        HKDF.DeriveKey(HashAlgorithmName.SHA512, ikm, key, "RUD2 initiator"u8, info);
        return key;
    }

    /// <summary>
    /// The initiator's proof (§5.5): the GCM tag of an empty plaintext under K_a with the mezzanine's nonce and
    /// the sealed mezzanine (ciphertext and tag) as associated data.
    /// </summary>
    public static void InitiatorProof(ReadOnlySpan<byte> proofKey, byte nonceLast, ReadOnlySpan<byte> sealedMezzanine, Span<byte> proof)
    {
        Span<byte> nonce = stackalloc byte[NonceSize];
        MezzanineNonce(nonce, nonceLast);
        using var aead = new AesGcm(proofKey, TagSize);
        aead.Encrypt(nonce, [], [], proof[..TagSize], sealedMezzanine);
    }

    /// <summary>Whether <paramref name="proof"/> is the initiator's proof (<see cref="InitiatorProof"/>); constant time.</summary>
    public static bool CheckInitiatorProof(ReadOnlySpan<byte> proofKey, byte nonceLast, ReadOnlySpan<byte> sealedMezzanine, ReadOnlySpan<byte> proof)
    {
        Span<byte> expected = stackalloc byte[TagSize];
        InitiatorProof(proofKey, nonceLast, sealedMezzanine, expected);
        return CryptographicOperations.FixedTimeEquals(expected, proof[..TagSize]);
    }

    /// <summary>
    /// The two directional secrets (§5.3): initiator→responder, responder→initiator. <paramref name="ss"/> is
    /// the initiator's static agreement (§5.5), empty when the initiator proved no static key.
    /// </summary>
    public static (byte[] InitiatorSecret, byte[] ResponderSecret) TrafficSecrets(ReadOnlySpan<byte> es, ReadOnlySpan<byte> ee,
        ReadOnlySpan<byte> initiatorEphemeral, ReadOnlySpan<byte> responderEphemeral, ReadOnlySpan<byte> responderStatic, ReadOnlySpan<byte> ss = default)
    {
        Span<byte> ikm = stackalloc byte[96];
        es.CopyTo(ikm);
        ee.CopyTo(ikm[32..]);
        ss.CopyTo(ikm[64..]);
        ikm = ikm[..(64 + ss.Length)];
        Span<byte> prk = stackalloc byte[64];
        HKDF.Extract(HashAlgorithmName.SHA512, ikm, TrafficSalt, prk);
        Span<byte> info = stackalloc byte[96];
        initiatorEphemeral.CopyTo(info);
        responderEphemeral.CopyTo(info[32..]);
        responderStatic.CopyTo(info[64..]);
        Span<byte> okm = stackalloc byte[128];
        HKDF.Expand(HashAlgorithmName.SHA512, prk, okm, info);
        return (okm[..64].ToArray(), okm[64..].ToArray());
    }

    /// <summary>next(secret) = HKDF-Expand(secret, "RUD1 update", 64) (§5.3, §7.3).</summary>
    public static byte[] NextSecret(ReadOnlySpan<byte> secret)
    {
        var next = new byte[64];
        HKDF.Expand(HashAlgorithmName.SHA512, secret, next, "RUD1 update"u8);
        return next;
    }

    /// <summary>The 12-byte nonce: 11 zero bytes then <paramref name="last"/> (mezzanine, §5.2).</summary>
    public static void MezzanineNonce(Span<byte> nonce, byte last)
    {
        nonce.Clear();
        nonce[^1] = last;
    }
}

/// <summary>One direction's packet protection in one key phase: AES-256-GCM with nonce = iv XOR sent index (§5.4).</summary>
public sealed class PacketProtection : IDisposable
{
    private readonly AesGcm? _aead;
    private readonly GnutlsAead? _fast;
    private readonly byte[] _iv = new byte[RudKeys.NonceSize];

    public PacketProtection(byte[] secret, int phase)
    {
        Secret = secret;
        Phase = phase;
        Span<byte> key = stackalloc byte[32];
        HKDF.Expand(HashAlgorithmName.SHA512, secret, key, "RUD1 key"u8);
        HKDF.Expand(HashAlgorithmName.SHA512, secret, _iv, "RUD1 iv"u8);
        if (RudKeys.TagSize == 16 && GnutlsAead.Available) _fast = GnutlsAead.TryCreate(key);
        if (_fast is null) _aead = new AesGcm(key, RudKeys.TagSize);
        key.Clear();
    }

    public byte[] Secret { get; }

    /// <summary>0 or 1: the key-phase bit this protection goes with.</summary>
    public int Phase { get; }

    /// <summary>The protection of the next key phase (§7.3).</summary>
    public PacketProtection Next() => new(RudKeys.NextSecret(Secret), Phase ^ 1);

    private void Nonce(ulong sentIndex, Span<byte> nonce)
    {
        _iv.CopyTo(nonce);
        ulong x = BinaryPrimitives.ReadUInt64BigEndian(nonce[4..]) ^ sentIndex;
        BinaryPrimitives.WriteUInt64BigEndian(nonce[4..], x);
    }

    /// <summary>Encrypts <paramref name="plaintext"/> into <paramref name="output"/> (ciphertext then tag).</summary>
    public void Seal(ulong sentIndex, ReadOnlySpan<byte> aad, ReadOnlySpan<byte> plaintext, Span<byte> output)
    {
        Span<byte> nonce = stackalloc byte[RudKeys.NonceSize];
        Nonce(sentIndex, nonce);
        if (_fast is not null) _fast.Seal(nonce, aad, plaintext, output[..(plaintext.Length + RudKeys.TagSize)]);
        else _aead!.Encrypt(nonce, plaintext, output[..plaintext.Length], output.Slice(plaintext.Length, RudKeys.TagSize), aad);
    }

    /// <summary>Decrypts ciphertext-then-tag into <paramref name="plaintext"/>; false when it does not authenticate.</summary>
    public bool Open(ulong sentIndex, ReadOnlySpan<byte> aad, ReadOnlySpan<byte> sealedData, Span<byte> plaintext)
    {
        if (sealedData.Length < RudKeys.TagSize) return false;
        Span<byte> nonce = stackalloc byte[RudKeys.NonceSize];
        Nonce(sentIndex, nonce);
        int n = sealedData.Length - RudKeys.TagSize;
        if (_fast is not null) return _fast.Open(nonce, aad, sealedData, plaintext[..n]);
        try
        {
            _aead!.Decrypt(nonce, sealedData[..n], sealedData[n..], plaintext[..n], aad);
            return true;
        }
        catch (AuthenticationTagMismatchException) { return false; }
    }

    public void Dispose()
    {
        _aead?.Dispose();
        _fast?.Dispose();
    }
}

/// <summary>Stateless challenge tokens (spec/rud.md §4.4).</summary>
public sealed class TokenIssuer
{
    public const int TokenSize = 24;
    private readonly byte[] _secret = RandomNumberGenerator.GetBytes(32);

    public TokenIssuer(TimeSpan lifetime) => Lifetime = lifetime;

    public TimeSpan Lifetime { get; }

    /// <summary>Writes a token for (address, initiator id) issued at <paramref name="nowMs"/>.</summary>
    public void Issue(IPEndPoint initiator, ulong initiatorId, long nowMs, Span<byte> token)
    {
        BinaryPrimitives.WriteInt64BigEndian(token, nowMs);
        Mac(initiator, initiatorId, nowMs, token[8..TokenSize]);
    }

    /// <summary>Checks a token: <see cref="TokenCheck.Valid"/>, <see cref="TokenCheck.Expired"/> or <see cref="TokenCheck.Invalid"/>.</summary>
    public TokenCheck Check(ReadOnlySpan<byte> token, IPEndPoint initiator, ulong initiatorId, long nowMs)
    {
        if (token.Length != TokenSize) return TokenCheck.Invalid;
        long issued = BinaryPrimitives.ReadInt64BigEndian(token);
        Span<byte> mac = stackalloc byte[16];
        Mac(initiator, initiatorId, issued, mac);
        if (!CryptographicOperations.FixedTimeEquals(mac, token[8..])) return TokenCheck.Invalid;
        return issued <= nowMs && nowMs < issued + (long)Lifetime.TotalMilliseconds ? TokenCheck.Valid : TokenCheck.Expired;
    }

    private void Mac(IPEndPoint initiator, ulong initiatorId, long issued, Span<byte> output)
    {
        Span<byte> input = stackalloc byte[10 + 8 + 16 + 2 + 8];
        "RUD1 token"u8.CopyTo(input);
        int n = 10;
        BinaryPrimitives.WriteInt64BigEndian(input[n..], issued);
        n += 8;
        var address = initiator.Address.IsIPv4MappedToIPv6 ? initiator.Address.MapToIPv4() : initiator.Address;
        address.TryWriteBytes(input[n..], out int written);
        n += written;
        BinaryPrimitives.WriteUInt16BigEndian(input[n..], (ushort)initiator.Port);
        n += 2;
        BinaryPrimitives.WriteUInt64BigEndian(input[n..], initiatorId);
        n += 8;
        Span<byte> full = stackalloc byte[32];
        HMACSHA256.HashData(_secret, input[..n], full);
        full[..output.Length].CopyTo(output);
    }
}

public enum TokenCheck { Valid, Expired, Invalid }
