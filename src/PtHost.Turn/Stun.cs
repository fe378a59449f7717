using System.Buffers;
using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text;
using PtHost.Contract;

namespace PtHost.Turn;

/// <summary>STUN methods used by TURN (RFC 5389 §18.1, RFC 5766 §13).</summary>
public static class StunMethod
{
    public const int Binding = 0x001, Allocate = 0x003, Refresh = 0x004, Send = 0x006, Data = 0x007,
        CreatePermission = 0x008, ChannelBind = 0x009;
}

/// <summary>The two class bits of a STUN message type (RFC 5389 §6).</summary>
public enum StunClass { Request = 0, Indication = 1, Success = 2, Error = 3 }

/// <summary>Attribute types (RFC 5389 §18.2, RFC 5766 §14).</summary>
public static class StunAttribute
{
    public const ushort MappedAddress = 0x0001, Username = 0x0006, MessageIntegrity = 0x0008, ErrorCode = 0x0009,
        UnknownAttributes = 0x000A, ChannelNumber = 0x000C, Lifetime = 0x000D, XorPeerAddress = 0x0012, Data = 0x0013,
        Realm = 0x0014, Nonce = 0x0015, XorRelayedAddress = 0x0016, RequestedAddressFamily = 0x0017, EvenPort = 0x0018,
        RequestedTransport = 0x0019, DontFragment = 0x001A, XorMappedAddress = 0x0020, ReservationToken = 0x0022,
        Software = 0x8022, AlternateServer = 0x8023, Fingerprint = 0x8028;

    /// <summary>Types 0x0000–0x7FFF must be understood by the receiver (RFC 5389 §15).</summary>
    public static bool IsComprehensionRequired(ushort type) => type < 0x8000;

    /// <summary>The comprehension-required attributes this server understands (spec/turn.md §3.2).</summary>
    public static bool IsUnderstood(ushort type) => type is MappedAddress or Username or MessageIntegrity or ErrorCode
        or UnknownAttributes or ChannelNumber or Lifetime or XorPeerAddress or Data or Realm or Nonce or XorRelayedAddress
        or RequestedTransport or XorMappedAddress or EvenPort or ReservationToken or RequestedAddressFamily;
}

/// <summary>Why a byte sequence is not a well-formed STUN message.</summary>
public enum StunParseError
{
    None,
    /// <summary>Shorter than the 20-byte header.</summary>
    TooShort,
    /// <summary>The two top bits are not 0 (ChannelData or garbage).</summary>
    NotStun,
    /// <summary>The magic cookie is not 0x2112A442.</summary>
    BadCookie,
    /// <summary>The length is not a multiple of 4, or does not match the bytes received.</summary>
    BadLength,
    /// <summary>An attribute header or its padded value runs past the end of the message.</summary>
    AttributeOverrun,
    /// <summary>MESSAGE-INTEGRITY or FINGERPRINT has the wrong length, or FINGERPRINT is not last.</summary>
    BadAttribute,
    /// <summary>FINGERPRINT does not match the message.</summary>
    BadFingerprint,
}

/// <summary>
/// A parsed STUN message over the received bytes (RFC 5389 §6, §15). Nothing is copied: attribute
/// values are slices of <see cref="Bytes"/>. Attributes after MESSAGE-INTEGRITY, other than
/// FINGERPRINT, are ignored (§15.4).
/// </summary>
public readonly ref struct StunMessage
{
    internal StunMessage(ReadOnlySpan<byte> bytes, int integrityOffset, int fingerprintOffset, int attributesEnd)
    {
        Bytes = bytes;
        IntegrityOffset = integrityOffset;
        FingerprintOffset = fingerprintOffset;
        AttributesEnd = attributesEnd;
    }

    /// <summary>The whole message, header included.</summary>
    public ReadOnlySpan<byte> Bytes { get; }

    /// <summary>Offset of the MESSAGE-INTEGRITY attribute header, or -1.</summary>
    public int IntegrityOffset { get; }

    /// <summary>Offset of the FINGERPRINT attribute header, or -1.</summary>
    public int FingerprintOffset { get; }

    /// <summary>Where the attributes this server reads end (MESSAGE-INTEGRITY, FINGERPRINT or the message end).</summary>
    private int AttributesEnd { get; }

    public ushort Type => BinaryPrimitives.ReadUInt16BigEndian(Bytes);
    public int Method => Stun.MethodOf(Type);
    public StunClass Class => Stun.ClassOf(Type);
    public ReadOnlySpan<byte> TransactionId => Bytes.Slice(8, 12);
    public bool HasIntegrity => IntegrityOffset >= 0;
    public bool HasFingerprint => FingerprintOffset >= 0;

    /// <summary>The first attribute of <paramref name="type"/> before MESSAGE-INTEGRITY.</summary>
    public bool TryGet(ushort type, out ReadOnlySpan<byte> value)
    {
        foreach (var a in Attributes)
        {
            if (a.Type == type)
            {
                value = a.Value;
                return true;
            }
        }
        value = default;
        return false;
    }

    /// <summary>True when an attribute of <paramref name="type"/> is present before MESSAGE-INTEGRITY.</summary>
    public bool Has(ushort type) => TryGet(type, out _);

    /// <summary>
    /// Writes the comprehension-required attribute types that <see cref="StunAttribute.IsUnderstood"/>
    /// rejects (at most <c>into.Length</c>); returns how many.
    /// </summary>
    public int UnknownRequired(Span<ushort> into)
    {
        int n = 0;
        foreach (var a in Attributes)
            if (StunAttribute.IsComprehensionRequired(a.Type) && !StunAttribute.IsUnderstood(a.Type) && n < into.Length && into[..n].IndexOf(a.Type) < 0)
                into[n++] = a.Type;
        return n;
    }

    /// <summary>The attributes before MESSAGE-INTEGRITY (or FINGERPRINT), in order.</summary>
    public AttributeEnumerator Attributes => new(Bytes[..AttributesEnd]);

    /// <summary>Enumerates (type, value) pairs of a well-formed attribute area.</summary>
    public ref struct AttributeEnumerator
    {
        private readonly ReadOnlySpan<byte> _bytes;
        private int _next;

        internal AttributeEnumerator(ReadOnlySpan<byte> bytes)
        {
            _bytes = bytes;
            _next = Stun.HeaderLength;
            Current = default;
        }

        public StunAttributeValue Current { get; private set; }

        public readonly AttributeEnumerator GetEnumerator() => this;

        public bool MoveNext()
        {
            if (_next + 4 > _bytes.Length) return false;
            ushort type = BinaryPrimitives.ReadUInt16BigEndian(_bytes[_next..]);
            int length = BinaryPrimitives.ReadUInt16BigEndian(_bytes[(_next + 2)..]);
            Current = new StunAttributeValue(type, _bytes.Slice(_next + 4, length));
            _next += 4 + Stun.Pad(length);
            return true;
        }
    }
}

/// <summary>One attribute: its type and value (without padding).</summary>
public readonly ref struct StunAttributeValue(ushort type, ReadOnlySpan<byte> value)
{
    public ushort Type { get; } = type;
    public ReadOnlySpan<byte> Value { get; } = value;
}

/// <summary>The STUN wire format: header, parsing, addresses, MESSAGE-INTEGRITY and FINGERPRINT (RFC 5389).</summary>
public static class Stun
{
    public const uint MagicCookie = 0x2112A442;
    public const int HeaderLength = 20;
    public const uint FingerprintXor = 0x5354554e;
    public const int IntegrityLength = 20;

    /// <summary>Attribute values are padded to a multiple of 4 bytes (§15).</summary>
    public static int Pad(int length) => (length + 3) & ~3;

    /// <summary>The message type of <paramref name="method"/> in <paramref name="class"/> (§6, figure 3).</summary>
    public static ushort TypeOf(int method, StunClass @class)
    {
        int c = (int)@class;
        return (ushort)((method & 0x000F) | ((method & 0x0070) << 1) | ((method & 0x0F80) << 2) | ((c & 1) << 4) | ((c & 2) << 7));
    }

    public static int MethodOf(ushort type) => (type & 0x000F) | ((type & 0x00E0) >> 1) | ((type & 0x3E00) >> 2);

    public static StunClass ClassOf(ushort type) => (StunClass)(((type >> 4) & 1) | ((type >> 7) & 2));

    /// <summary>
    /// The length of the STUN message at the start of <paramref name="data"/> from its header
    /// (20 + length), or -1 when the header is not STUN's (used for TCP framing, RFC 5766 §11).
    /// </summary>
    public static int FrameLength(ReadOnlySpan<byte> header) =>
        header.Length >= 4 && (header[0] & 0xC0) == 0 ? HeaderLength + BinaryPrimitives.ReadUInt16BigEndian(header[2..]) : -1;

    /// <summary>Parses one whole message; <paramref name="data"/> must be exactly the message.</summary>
    public static StunParseError TryParse(ReadOnlySpan<byte> data, out StunMessage message)
    {
        message = default;
        if (data.Length < HeaderLength) return StunParseError.TooShort;
        if ((data[0] & 0xC0) != 0) return StunParseError.NotStun;
        if (BinaryPrimitives.ReadUInt32BigEndian(data[4..]) != MagicCookie) return StunParseError.BadCookie;
        int length = BinaryPrimitives.ReadUInt16BigEndian(data[2..]);
        if ((length & 3) != 0 || HeaderLength + length != data.Length) return StunParseError.BadLength;
        int integrity = -1, fingerprint = -1, attributesEnd = data.Length;
        int at = HeaderLength;
        while (at < data.Length)
        {
            if (at + 4 > data.Length) return StunParseError.AttributeOverrun;
            ushort type = BinaryPrimitives.ReadUInt16BigEndian(data[at..]);
            int valueLength = BinaryPrimitives.ReadUInt16BigEndian(data[(at + 2)..]);
            if (at + 4 + Pad(valueLength) > data.Length) return StunParseError.AttributeOverrun;
            if (fingerprint >= 0) return StunParseError.BadAttribute; // FINGERPRINT must be last (§15.5)
            if (type == StunAttribute.Fingerprint)
            {
                if (valueLength != 4) return StunParseError.BadAttribute;
                fingerprint = at;
                if (integrity < 0) attributesEnd = at;
            }
            else if (integrity < 0 && type == StunAttribute.MessageIntegrity)
            {
                if (valueLength != IntegrityLength) return StunParseError.BadAttribute;
                integrity = at;
                attributesEnd = at;
            }
            at += 4 + Pad(valueLength);
        }
        if (fingerprint >= 0 && BinaryPrimitives.ReadUInt32BigEndian(data[(fingerprint + 4)..]) != ComputeFingerprint(data, fingerprint))
            return StunParseError.BadFingerprint;
        message = new StunMessage(data, integrity, fingerprint, attributesEnd);
        return StunParseError.None;
    }

    /// <summary>
    /// CRC-32 of the message up to the FINGERPRINT attribute at <paramref name="fingerprintOffset"/>,
    /// with the header's length covering it, XOR 0x5354554e (§15.5).
    /// </summary>
    public static uint ComputeFingerprint(ReadOnlySpan<byte> message, int fingerprintOffset)
    {
        Span<byte> header = stackalloc byte[HeaderLength];
        message[..HeaderLength].CopyTo(header);
        BinaryPrimitives.WriteUInt16BigEndian(header[2..], (ushort)(fingerprintOffset + 8 - HeaderLength));
        var crc = new System.IO.Hashing.Crc32();
        crc.Append(header);
        crc.Append(message[HeaderLength..fingerprintOffset]);
        return crc.GetCurrentHashAsUInt32() ^ FingerprintXor;
    }

    /// <summary>
    /// HMAC-SHA1 with <paramref name="key"/> of the message up to the MESSAGE-INTEGRITY attribute at
    /// <paramref name="integrityOffset"/>, with the header's length ending after it (§15.4).
    /// </summary>
    public static void ComputeIntegrity(ReadOnlySpan<byte> message, int integrityOffset, ReadOnlySpan<byte> key, Span<byte> hmac)
    {
        byte[] copy = ArrayPool<byte>.Shared.Rent(integrityOffset);
        try
        {
            message[..integrityOffset].CopyTo(copy);
            BinaryPrimitives.WriteUInt16BigEndian(copy.AsSpan(2), (ushort)(integrityOffset + 4 + IntegrityLength - HeaderLength));
            HMACSHA1.HashData(key, copy.AsSpan(0, integrityOffset), hmac);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(copy);
        }
    }

    /// <summary>True when the message's MESSAGE-INTEGRITY matches <paramref name="key"/> (constant time).</summary>
    public static bool CheckIntegrity(in StunMessage message, ReadOnlySpan<byte> key)
    {
        if (!message.HasIntegrity) return false;
        Span<byte> expected = stackalloc byte[IntegrityLength];
        ComputeIntegrity(message.Bytes, message.IntegrityOffset, key, expected);
        return CryptographicOperations.FixedTimeEquals(expected, message.Bytes.Slice(message.IntegrityOffset + 4, IntegrityLength));
    }

    /// <summary>The long-term credential key MD5(username ":" realm ":" password) (§15.4).</summary>
    public static byte[] LongTermKey(string username, string realm, string password) =>
        MD5.HashData(Encoding.UTF8.GetBytes($"{username}:{realm}:{password}"));

    /// <summary>
    /// Reads an XOR-MAPPED-ADDRESS-style value (§15.2): family 1 (IPv4, 8 bytes) or 2 (IPv6, 20 bytes),
    /// port XOR the cookie's top half, address XOR the cookie (and, for IPv6, the transaction id).
    /// </summary>
    public static bool TryReadXorAddress(ReadOnlySpan<byte> value, ReadOnlySpan<byte> transactionId, out PeerAddress address)
    {
        address = default;
        if (value.Length < 4) return false;
        int family = value[1];
        int port = BinaryPrimitives.ReadUInt16BigEndian(value[2..]) ^ (int)(MagicCookie >> 16);
        Span<byte> bytes = stackalloc byte[16];
        int n = family switch { 1 => 4, 2 => 16, _ => 0 };
        if (n == 0 || value.Length != 4 + n) return false;
        XorAddress(value.Slice(4, n), transactionId, bytes);
        address = PeerAddress.FromBytes(bytes[..n], port);
        return true;
    }

    /// <summary>Writes the value of an XOR address attribute; returns its length (8 or 20).</summary>
    public static int WriteXorAddress(Span<byte> value, PeerAddress address, ReadOnlySpan<byte> transactionId)
    {
        value[0] = 0;
        value[1] = address.IsIPv4 ? (byte)1 : (byte)2;
        BinaryPrimitives.WriteUInt16BigEndian(value[2..], (ushort)(address.Port ^ (int)(MagicCookie >> 16)));
        Span<byte> plain = stackalloc byte[16];
        int n = address.WriteAddress(plain);
        XorAddress(plain[..n], transactionId, value.Slice(4, n));
        return 4 + n;
    }

    private static void XorAddress(ReadOnlySpan<byte> from, ReadOnlySpan<byte> transactionId, Span<byte> to)
    {
        Span<byte> mask = stackalloc byte[16];
        BinaryPrimitives.WriteUInt32BigEndian(mask, MagicCookie);
        transactionId.CopyTo(mask[4..]);
        for (int i = 0; i < from.Length; i++) to[i] = (byte)(from[i] ^ mask[i]);
    }

    /// <summary>The reason phrases this server sends with each error code (RFC 5389 §15.6, RFC 5766 §15).</summary>
    public static string ReasonPhrase(int code) => code switch
    {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        420 => "Unknown Attribute",
        437 => "Allocation Mismatch",
        440 => "Address Family not Supported",
        438 => "Stale Nonce",
        441 => "Wrong Credentials",
        442 => "Unsupported Transport Protocol",
        486 => "Allocation Quota Reached",
        500 => "Server Error",
        508 => "Insufficient Capacity",
        _ => "Error",
    };
}

/// <summary>
/// Builds one STUN message into a caller's buffer (RFC 5389 §6, §15): the header's length is kept
/// current as attributes are added; values are zero-padded. Throws when the buffer is too small.
/// </summary>
public ref struct StunWriter
{
    private readonly Span<byte> _buffer;
    private int _position;

    public StunWriter(Span<byte> buffer, int method, StunClass @class, ReadOnlySpan<byte> transactionId)
    {
        if (buffer.Length < Stun.HeaderLength) throw new ArgumentException("buffer too small", nameof(buffer));
        _buffer = buffer;
        BinaryPrimitives.WriteUInt16BigEndian(buffer, Stun.TypeOf(method, @class));
        BinaryPrimitives.WriteUInt16BigEndian(buffer[2..], 0);
        BinaryPrimitives.WriteUInt32BigEndian(buffer[4..], Stun.MagicCookie);
        transactionId.CopyTo(buffer[8..20]);
        _position = Stun.HeaderLength;
    }

    /// <summary>Bytes written so far (the whole message).</summary>
    public readonly int Length => _position;

    public readonly ReadOnlySpan<byte> Written => _buffer[.._position];

    private readonly ReadOnlySpan<byte> TransactionId => _buffer.Slice(8, 12);

    /// <summary>Reserves an attribute of <paramref name="length"/> bytes and returns its value area.</summary>
    public Span<byte> Reserve(ushort type, int length)
    {
        int padded = Stun.Pad(length);
        if (_position + 4 + padded > _buffer.Length || _position + 4 + padded - Stun.HeaderLength > ushort.MaxValue)
            throw new ArgumentException("STUN message does not fit its buffer");
        BinaryPrimitives.WriteUInt16BigEndian(_buffer[_position..], type);
        BinaryPrimitives.WriteUInt16BigEndian(_buffer[(_position + 2)..], (ushort)length);
        var value = _buffer.Slice(_position + 4, length);
        _buffer.Slice(_position + 4 + length, padded - length).Clear();
        _position += 4 + padded;
        BinaryPrimitives.WriteUInt16BigEndian(_buffer[2..], (ushort)(_position - Stun.HeaderLength));
        return value;
    }

    public void Add(ushort type, scoped ReadOnlySpan<byte> value) => value.CopyTo(Reserve(type, value.Length));

    public void AddUInt32(ushort type, uint value) => BinaryPrimitives.WriteUInt32BigEndian(Reserve(type, 4), value);

    public void AddString(ushort type, string value)
    {
        int n = Encoding.UTF8.GetByteCount(value);
        Encoding.UTF8.GetBytes(value, Reserve(type, n));
    }

    public void AddXorAddress(ushort type, PeerAddress address)
    {
        Span<byte> value = stackalloc byte[20];
        int n = Stun.WriteXorAddress(value, address, TransactionId);
        Add(type, value[..n]);
    }

    /// <summary>ERROR-CODE (§15.6): class (hundreds) and number, then the reason phrase.</summary>
    public void AddErrorCode(int code, string? reason = null)
    {
        reason ??= Stun.ReasonPhrase(code);
        int n = Encoding.UTF8.GetByteCount(reason);
        var value = Reserve(StunAttribute.ErrorCode, 4 + n);
        value[0] = 0;
        value[1] = 0;
        value[2] = (byte)(code / 100);
        value[3] = (byte)(code % 100);
        Encoding.UTF8.GetBytes(reason, value[4..]);
    }

    /// <summary>UNKNOWN-ATTRIBUTES (§15.9): the 16-bit types.</summary>
    public void AddUnknownAttributes(ReadOnlySpan<ushort> types)
    {
        var value = Reserve(StunAttribute.UnknownAttributes, types.Length * 2);
        for (int i = 0; i < types.Length; i++) BinaryPrimitives.WriteUInt16BigEndian(value[(2 * i)..], types[i]);
    }

    /// <summary>MESSAGE-INTEGRITY over everything written so far (§15.4).</summary>
    public void AddIntegrity(ReadOnlySpan<byte> key)
    {
        int offset = _position;
        var value = Reserve(StunAttribute.MessageIntegrity, Stun.IntegrityLength);
        HMACSHA1.HashData(key, _buffer[..offset], value);
    }

    /// <summary>FINGERPRINT (§15.5); must be the last attribute.</summary>
    public void AddFingerprint()
    {
        int offset = _position;
        var value = Reserve(StunAttribute.Fingerprint, 4);
        BinaryPrimitives.WriteUInt32BigEndian(value, Stun.ComputeFingerprint(_buffer[.._position], offset));
    }
}
