using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text;

namespace PtHost.Net.Signals;

/// <summary>
/// What one rendezvous secret gives (spec/rendezvous.md §3): the bearer token and the self-certifying
/// channel id it opens, and the AEAD key that seals every message end to end (§4).
/// </summary>
public sealed class RendezvousKeys
{
    /// <summary>Secret length bounds in bytes (§3.1).</summary>
    public const int MinSecretBytes = 16, MaxSecretBytes = 64;
    /// <summary>Channel ids are 22 base64url characters (132 bits of SHA-256(token)).</summary>
    public const int ChannelLength = 22;
    /// <summary>Sealed-message overhead: version byte, nonce, tag (§4.2).</summary>
    public const int NonceBytes = 12, TagBytes = 16, Overhead = 1 + NonceBytes + TagBytes;
    public const byte Version = 1;

    private static readonly byte[] Salt = Encoding.ASCII.GetBytes("pthost rendezvous v1");
    private static readonly byte[] AadPrefix = Encoding.ASCII.GetBytes("pthost rendezvous v1\0");
    private readonly byte[] _sealKey;

    private RendezvousKeys(byte[] secret)
    {
        Secret = secret;
        Token = HKDF.DeriveKey(HashAlgorithmName.SHA256, secret, 32, Salt, Encoding.ASCII.GetBytes("auth"));
        _sealKey = HKDF.DeriveKey(HashAlgorithmName.SHA256, secret, 32, Salt, Encoding.ASCII.GetBytes("seal"));
        TokenText = Base64Url(Token);
        Channel = ChannelOf(Token);
    }

    /// <summary>The secret's bytes.</summary>
    public byte[] Secret { get; }

    /// <summary>The bearer token (32 bytes) and its base64url text, the <c>Authorization: Bearer</c> value.</summary>
    public byte[] Token { get; }
    public string TokenText { get; }

    /// <summary>The channel id: base64url(SHA-256(token))[..22].</summary>
    public string Channel { get; }

    /// <summary>Reads a secret: base64url (or standard base64), padding optional, 16–64 bytes. Throws <see cref="FormatException"/>.</summary>
    public static RendezvousKeys Parse(string text)
    {
        byte[] secret;
        try { secret = Convert.FromBase64String(ToStandardBase64(text)); }
        catch (FormatException) { throw new FormatException("is not base64url"); }
        if (secret.Length is < MinSecretBytes or > MaxSecretBytes) throw new FormatException($"must be {MinSecretBytes} to {MaxSecretBytes} bytes, not {secret.Length}");
        return new RendezvousKeys(secret);
    }

    /// <summary>A fresh 16-byte secret as base64url text.</summary>
    public static string NewSecret() => Base64Url(RandomNumberGenerator.GetBytes(MinSecretBytes));

    /// <summary>The channel a token opens (§3.2); the rendezvous checks a request's path against it.</summary>
    public static string ChannelOf(ReadOnlySpan<byte> token) => Base64Url(SHA256.HashData(token))[..ChannelLength];

    /// <summary>Derives further key material from the secret (§3.3: the client certificate's seed).</summary>
    public byte[] Derive(string info, int length) => HKDF.DeriveKey(HashAlgorithmName.SHA256, Secret, length, Salt, Encoding.ASCII.GetBytes(info));

    /// <summary>
    /// Seals one signal for <paramref name="mailbox"/> (§4): <c>01 | nonce(12) | AES-256-GCM(plaintext) | tag(16)</c>,
    /// plaintext <c>u8 len | transport | payload (UTF-8)</c>, AAD <c>"pthost rendezvous v1\0" channel "\0" mailbox</c>.
    /// </summary>
    public byte[] Seal(string mailbox, string transport, string payload)
    {
        int tlen = Encoding.ASCII.GetByteCount(transport);
        if (tlen is 0 or > 255) throw new ArgumentException("transport name must be 1 to 255 ASCII characters", nameof(transport));
        int plen = Encoding.UTF8.GetByteCount(payload);
        byte[] plain = new byte[1 + tlen + plen];
        plain[0] = (byte)tlen;
        Encoding.ASCII.GetBytes(transport, plain.AsSpan(1));
        Encoding.UTF8.GetBytes(payload, plain.AsSpan(1 + tlen));
        byte[] sealedMessage = new byte[Overhead + plain.Length];
        sealedMessage[0] = Version;
        var nonce = sealedMessage.AsSpan(1, NonceBytes);
        RandomNumberGenerator.Fill(nonce);
        using var gcm = new AesGcm(_sealKey, TagBytes);
        gcm.Encrypt(nonce, plain, sealedMessage.AsSpan(1 + NonceBytes, plain.Length), sealedMessage.AsSpan(1 + NonceBytes + plain.Length, TagBytes), Aad(mailbox));
        return sealedMessage;
    }

    /// <summary>Opens a sealed message addressed to <paramref name="mailbox"/>; null with <paramref name="why"/> when it is not one (§4.3).</summary>
    public (string Transport, string Payload)? Open(string mailbox, ReadOnlySpan<byte> sealedMessage, out string? why)
    {
        why = null;
        if (sealedMessage.Length < Overhead + 2) { why = $"{sealedMessage.Length} bytes is shorter than a sealed message"; return null; }
        if (sealedMessage[0] != Version) { why = $"version {sealedMessage[0]}, not {Version}"; return null; }
        int plen = sealedMessage.Length - Overhead;
        byte[] plain = new byte[plen];
        using (var gcm = new AesGcm(_sealKey, TagBytes))
        {
            try { gcm.Decrypt(sealedMessage.Slice(1, NonceBytes), sealedMessage.Slice(1 + NonceBytes, plen), sealedMessage.Slice(1 + NonceBytes + plen, TagBytes), plain, Aad(mailbox)); }
            catch (AuthenticationTagMismatchException) { why = "authentication failed (another secret, another mailbox, or altered)"; return null; }
        }
        int tlen = plain[0];
        if (tlen == 0 || 1 + tlen > plen) { why = "malformed plaintext"; return null; }
        try
        {
            var strict = new UTF8Encoding(false, true);
            return (Encoding.ASCII.GetString(plain, 1, tlen), strict.GetString(plain, 1 + tlen, plen - 1 - tlen));
        }
        catch (DecoderFallbackException) { why = "payload is not UTF-8"; return null; }
    }

    private byte[] Aad(string mailbox)
    {
        int clen = Encoding.ASCII.GetByteCount(Channel), mlen = Encoding.ASCII.GetByteCount(mailbox);
        byte[] aad = new byte[AadPrefix.Length + clen + 1 + mlen];
        AadPrefix.CopyTo(aad, 0);
        Encoding.ASCII.GetBytes(Channel, aad.AsSpan(AadPrefix.Length));
        aad[AadPrefix.Length + clen] = 0;
        Encoding.ASCII.GetBytes(mailbox, aad.AsSpan(AadPrefix.Length + clen + 1));
        return aad;
    }

    /// <summary>Base64url without padding (RFC 4648 §5).</summary>
    public static string Base64Url(ReadOnlySpan<byte> bytes) => Convert.ToBase64String(bytes).TrimEnd('=').Replace('+', '-').Replace('/', '_');

    private static string ToStandardBase64(string text)
    {
        string s = text.Replace('-', '+').Replace('_', '/');
        return (s.Length % 4) switch { 2 => s + "==", 3 => s + "=", _ => s };
    }

    /// <summary>Frames a response body (§2.4): <c>u32 BE length | sealed message</c>, repeated.</summary>
    public static void WriteFrame(Stream output, ReadOnlySpan<byte> message)
    {
        Span<byte> len = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(len, (uint)message.Length);
        output.Write(len);
        output.Write(message);
    }

    /// <summary>Splits a response body into its frames; stops at a malformed tail.</summary>
    public static IEnumerable<ReadOnlyMemory<byte>> ReadFrames(ReadOnlyMemory<byte> body)
    {
        int at = 0;
        while (body.Length - at >= 4)
        {
            uint len = BinaryPrimitives.ReadUInt32BigEndian(body.Span[at..]);
            if (len > body.Length - at - 4) yield break;
            yield return body.Slice(at + 4, (int)len);
            at += 4 + (int)len;
        }
    }
}
