using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;

namespace PtHost.Client;

/// <summary>STUN messages (RFC 5389 §6, §15) with RFC 5766 §14's attributes, as the TURN client needs them (spec/adapters.md §2.8).</summary>
internal static class Stun
{
    public const uint Magic = 0x2112A442;
    public const int Allocate = 0x003, Refresh = 0x004, Data = 0x007, ChannelBind = 0x009;
    public const int Request = 0x000, Indication = 0x010, Success = 0x100, Error = 0x110;
    public const ushort Username = 0x0006, MessageIntegrity = 0x0008, ErrorCode = 0x0009, ChannelNumber = 0x000C, Lifetime = 0x000D,
        XorPeerAddress = 0x0012, DataAttr = 0x0013, Realm = 0x0014, Nonce = 0x0015, XorRelayedAddress = 0x0016,
        RequestedTransport = 0x0019, XorMappedAddress = 0x0020, Fingerprint = 0x8028;

    public static ushort Type(int method, int cls) => (ushort)((method & 0x000F) | ((method & 0x0070) << 1) | ((method & 0x0F80) << 2) | cls);

    /// <summary>Long-term credential key (RFC 5389 §15.4): MD5(username ":" realm ":" password).</summary>
    public static byte[] LongTermKey(string user, string realm, string password) =>
#pragma warning disable CA5351 // RFC 5389 §15.4 fixes MD5 for the key.
        MD5.HashData(Encoding.UTF8.GetBytes($"{user}:{realm}:{password}"));
#pragma warning restore CA5351

    /// <summary>Builds a message; with <paramref name="key"/> MESSAGE-INTEGRITY is added, FINGERPRINT always (§2.8 step 2).</summary>
    public static byte[] Build(int method, int cls, ReadOnlySpan<byte> tid, IEnumerable<(ushort Type, byte[] Value)> attributes, byte[]? key)
    {
        var ms = new MemoryStream();
        Span<byte> h = stackalloc byte[20];
        BinaryPrimitives.WriteUInt16BigEndian(h, Type(method, cls));
        BinaryPrimitives.WriteUInt32BigEndian(h[4..], Magic);
        tid.CopyTo(h[8..]);
        ms.Write(h);
        foreach (var (type, value) in attributes) WriteAttribute(ms, type, value);
        byte[] m;
        if (key is not null)
        {
            m = ms.ToArray();
            BinaryPrimitives.WriteUInt16BigEndian(m.AsSpan(2), (ushort)(m.Length - 20 + 24));
#pragma warning disable CA5350 // RFC 5389 §15.4 fixes HMAC-SHA1.
            WriteAttribute(ms, MessageIntegrity, HMACSHA1.HashData(key, m));
#pragma warning restore CA5350
        }
        m = ms.ToArray();
        BinaryPrimitives.WriteUInt16BigEndian(m.AsSpan(2), (ushort)(m.Length - 20 + 8));
        uint crc = System.IO.Hashing.Crc32.HashToUInt32(m) ^ 0x5354554E;
        var fp = new byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(fp, crc);
        WriteAttribute(ms, Fingerprint, fp);
        m = ms.ToArray();
        BinaryPrimitives.WriteUInt16BigEndian(m.AsSpan(2), (ushort)(m.Length - 20));
        return m;
    }

    private static void WriteAttribute(MemoryStream ms, ushort type, byte[] value)
    {
        Span<byte> h = stackalloc byte[4];
        BinaryPrimitives.WriteUInt16BigEndian(h, type);
        BinaryPrimitives.WriteUInt16BigEndian(h[2..], (ushort)value.Length);
        ms.Write(h);
        ms.Write(value);
        for (int pad = (4 - value.Length % 4) % 4; pad > 0; pad--) ms.WriteByte(0);
    }

    public static byte[] UInt32(uint v)
    {
        var b = new byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(b, v);
        return b;
    }

    public static byte[] XorAddress(IPEndPoint ep, ReadOnlySpan<byte> tid)
    {
        var a = ep.Address.IsIPv4MappedToIPv6 ? ep.Address.MapToIPv4() : ep.Address;
        byte[] raw = a.GetAddressBytes();
        var b = new byte[4 + raw.Length];
        b[1] = raw.Length == 4 ? (byte)1 : (byte)2;
        BinaryPrimitives.WriteUInt16BigEndian(b.AsSpan(2), (ushort)(ep.Port ^ (Magic >> 16)));
        Span<byte> mask = stackalloc byte[16];
        BinaryPrimitives.WriteUInt32BigEndian(mask, Magic);
        tid.CopyTo(mask[4..]);
        for (int i = 0; i < raw.Length; i++) b[4 + i] = (byte)(raw[i] ^ mask[i]);
        return b;
    }

    public static IPEndPoint? ReadXorAddress(ReadOnlySpan<byte> v, ReadOnlySpan<byte> tid)
    {
        if (v.Length < 8) return null;
        int len = v[1] == 1 ? 4 : v[1] == 2 ? 16 : 0;
        if (len == 0 || v.Length != 4 + len) return null;
        Span<byte> mask = stackalloc byte[16];
        BinaryPrimitives.WriteUInt32BigEndian(mask, Magic);
        tid.CopyTo(mask[4..]);
        Span<byte> raw = stackalloc byte[len];
        for (int i = 0; i < len; i++) raw[i] = (byte)(v[4 + i] ^ mask[i]);
        return new IPEndPoint(new IPAddress(raw), BinaryPrimitives.ReadUInt16BigEndian(v[2..]) ^ (int)(Magic >> 16));
    }

    /// <summary>A parsed message: method, class, transaction id, attributes (first of each type), and where MESSAGE-INTEGRITY starts.</summary>
    public sealed class Message
    {
        public int Method, Class, IntegrityOffset = -1;
        public byte[] TransactionId = [];
        public Dictionary<ushort, ArraySegment<byte>> Attributes = [];

        public bool TryGet(ushort type, out ArraySegment<byte> value) => Attributes.TryGetValue(type, out value);

        public (int Code, string Reason) ErrorCodeValue => TryGet(ErrorCode, out var e) && e.Count >= 4
            ? (e[2] * 100 + e[3], Encoding.UTF8.GetString(e.AsSpan(4)))
            : (0, "");
    }

    public static Message? Parse(byte[] buffer, int length)
    {
        if (length < 20 || (buffer[0] & 0xC0) != 0 || BinaryPrimitives.ReadUInt32BigEndian(buffer.AsSpan(4)) != Magic) return null;
        int len = BinaryPrimitives.ReadUInt16BigEndian(buffer.AsSpan(2));
        if (len % 4 != 0 || 20 + len != length) return null;
        int type = BinaryPrimitives.ReadUInt16BigEndian(buffer);
        var m = new Message
        {
            Class = type & 0x0110,
            Method = (type & 0x000F) | ((type & 0x00E0) >> 1) | ((type & 0x3E00) >> 2),
            TransactionId = buffer.AsSpan(8, 12).ToArray(),
        };
        for (int o = 20; o + 4 <= length;)
        {
            ushort at = BinaryPrimitives.ReadUInt16BigEndian(buffer.AsSpan(o));
            int al = BinaryPrimitives.ReadUInt16BigEndian(buffer.AsSpan(o + 2));
            if (o + 4 + al > length) return null;
            if (at == MessageIntegrity) m.IntegrityOffset = o;
            m.Attributes.TryAdd(at, new ArraySegment<byte>(buffer, o + 4, al));
            o += 4 + al + (4 - al % 4) % 4;
        }
        return m;
    }

    /// <summary>RFC 5389 §15.4: the HMAC over the message up to MESSAGE-INTEGRITY, with the length covering it.</summary>
    public static bool IntegrityHolds(byte[] buffer, Message m, byte[] key)
    {
        if (m.IntegrityOffset < 0 || !m.TryGet(MessageIntegrity, out var mac) || mac.Count != 20) return false;
        var copy = buffer.AsSpan(0, m.IntegrityOffset).ToArray();
        BinaryPrimitives.WriteUInt16BigEndian(copy.AsSpan(2), (ushort)(m.IntegrityOffset - 20 + 24));
#pragma warning disable CA5350
        return CryptographicOperations.FixedTimeEquals(HMACSHA1.HashData(key, copy), mac);
#pragma warning restore CA5350
    }

}
