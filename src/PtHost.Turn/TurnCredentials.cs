using System.Buffers.Binary;
using System.Globalization;
using System.Security.Cryptography;
using PtHost.Contract;

namespace PtHost.Turn;

/// <summary>
/// Long-term credentials (RFC 5389 §10.2; spec/turn.md §3.3): each user's key, and stateless nonces
/// bound to the client's address that expire after <see cref="TurnLimits.NonceLifetime"/>.
/// </summary>
internal sealed class TurnCredentials
{
    private readonly Dictionary<string, byte[]> _keys = new(StringComparer.Ordinal);
    private readonly byte[] _nonceSecret = RandomNumberGenerator.GetBytes(32);
    private readonly TimeSpan _nonceLifetime;
    private readonly TimeProvider _time;

    public TurnCredentials(TurnOptions options, TimeProvider time)
    {
        _nonceLifetime = options.Limits.NonceLifetime;
        _time = time;
        foreach (var (user, password) in options.Users) _keys[user] = Stun.LongTermKey(user, options.Realm, password);
    }

    /// <summary>The key of <paramref name="user"/>: MD5(user:realm:password).</summary>
    public bool TryGetKey(string user, out byte[] key) => _keys.TryGetValue(user, out key!);

    /// <summary>NONCE = 16 hex digits of its expiry (Unix seconds) + 16 hex digits of HMAC-SHA256(secret, expiry | client address) (spec/turn.md §3.3).</summary>
    public string NewNonce(PeerAddress client)
    {
        long expiry = _time.GetUtcNow().Add(_nonceLifetime).ToUnixTimeSeconds();
        Span<byte> mac = stackalloc byte[32];
        NonceMac(expiry, client, mac);
        return expiry.ToString("x16", CultureInfo.InvariantCulture) + Convert.ToHexStringLower(mac[..8]);
    }

    /// <summary>True for a nonce this server made for <paramref name="client"/> that has not expired.</summary>
    public bool IsValidNonce(ReadOnlySpan<byte> nonce, PeerAddress client)
    {
        if (nonce.Length != 32) return false;
        Span<char> text = stackalloc char[32];
        for (int i = 0; i < 32; i++) text[i] = (char)nonce[i];
        if (!long.TryParse(text[..16], NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out long expiry)) return false;
        Span<byte> mac = stackalloc byte[32];
        NonceMac(expiry, client, mac);
        Span<byte> given = stackalloc byte[8];
        if (Convert.FromHexString(text[16..], given, out _, out int written) != System.Buffers.OperationStatus.Done || written != 8) return false;
        return CryptographicOperations.FixedTimeEquals(given, mac[..8]) && expiry > _time.GetUtcNow().ToUnixTimeSeconds();
    }

    private void NonceMac(long expiry, PeerAddress client, Span<byte> mac)
    {
        Span<byte> input = stackalloc byte[8 + 16 + 2];
        BinaryPrimitives.WriteInt64BigEndian(input, expiry);
        int n = client.WriteAddress(input[8..]);
        BinaryPrimitives.WriteUInt16BigEndian(input[(8 + n)..], (ushort)client.Port);
        HMACSHA256.HashData(_nonceSecret, input[..(8 + n + 2)], mac);
    }
}
