using System.Buffers;
using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using PtHost.Net.Udp;

namespace PtHost.Transports.Asport;

/// <summary>ASPORT command types (spec/asport.md §3).</summary>
public enum AsportCommand : byte { ClientHello = 0, ServerHello = 1, Connect = 2, Packet = 3, Dissociate = 4, Heartbeat = 5 }

/// <summary>Forward modes of the seed (reference v0.1), spec/asport.md §3.2.</summary>
public enum ForwardMode : byte { Tcp = 0, UdpNative = 1, UdpQuic = 2, TcpUdpNative = 3, TcpUdpQuic = 4 }

/// <summary>ServerHello codes (spec/asport.md §3.3).</summary>
public enum ServerHelloCode : byte { Success = 0, AuthFailed = 1, BindFailed = 2, PortDenied = 3, NetworkDenied = 4 }

public readonly record struct ClientHello(Guid User, byte[] Token, ForwardMode Mode, ushort PortStart, ushort PortEnd);

/// <summary>A Packet command header; <see cref="Address"/> is null for ATYP None.</summary>
public readonly record struct PacketHeader(ushort AssocId, ushort PacketId, byte FragmentTotal, byte FragmentId, ushort Size, IPEndPoint? Address);

/// <summary>Pure parse/build of ASPORT messages over spans. Parsers return false on any
/// malformed input (never throw) and report how many bytes they consumed.</summary>
public static class AsportWire
{
    public const byte Version = 0;
    public const byte AtypIPv4 = 1, AtypIPv6 = 4, AtypNone = 0xFF;
    public const int HeaderSize = 2;
    public const int TokenSize = 32;
    public const int ClientHelloSize = HeaderSize + 16 + TokenSize + 1 + 4;
    /// <summary>Packet header without address: assoc 2, pkt 2, total 1, id 1, size 2.</summary>
    public const int PacketFixedSize = 8;
    public const int MaxAddressSize = 1 + 16 + 2;

    public static bool IsKnownMode(byte mode) => mode <= (byte)ForwardMode.TcpUdpQuic;
    public static bool ForwardsTcp(ForwardMode m) => m is ForwardMode.Tcp or ForwardMode.TcpUdpNative or ForwardMode.TcpUdpQuic;
    public static bool ForwardsUdp(ForwardMode m) => m != ForwardMode.Tcp;
    public static bool UdpOverStreams(ForwardMode m) => m is ForwardMode.UdpQuic or ForwardMode.TcpUdpQuic;

    /// <summary>Reads the 2-byte header; false when too short or the version is not 0.</summary>
    public static bool TryReadHeader(ReadOnlySpan<byte> src, out AsportCommand command)
    {
        command = default;
        if (src.Length < HeaderSize || src[0] != Version || src[1] > (byte)AsportCommand.Heartbeat) return false;
        command = (AsportCommand)src[1];
        return true;
    }

    public static int WriteHeader(Span<byte> dst, AsportCommand command)
    {
        dst[0] = Version;
        dst[1] = (byte)command;
        return HeaderSize;
    }

    // ---- addresses ----

    public static int AddressSize(IPEndPoint? address) =>
        address is null ? 1 : address.AddressFamily == AddressFamily.InterNetwork ? 7 : 19;

    public static int WriteAddress(Span<byte> dst, IPEndPoint? address)
    {
        if (address is null)
        {
            dst[0] = AtypNone;
            return 1;
        }
        var v4 = address.AddressFamily == AddressFamily.InterNetwork;
        dst[0] = v4 ? AtypIPv4 : AtypIPv6;
        var len = v4 ? 4 : 16;
        if (!address.Address.TryWriteBytes(dst.Slice(1, len), out _)) throw new ArgumentException("bad address");
        BinaryPrimitives.WriteUInt16BigEndian(dst[(1 + len)..], (ushort)address.Port);
        return 1 + len + 2;
    }

    /// <summary>Parses an address; consumed = 0 with false when incomplete or the ATYP is unknown.</summary>
    public static bool TryReadAddress(ReadOnlySpan<byte> src, out IPEndPoint? address, out int consumed)
    {
        address = null;
        consumed = 0;
        if (src.Length < 1) return false;
        switch (src[0])
        {
            case AtypNone:
                consumed = 1;
                return true;
            case AtypIPv4:
                if (src.Length < 7) return false;
                address = new IPEndPoint(new IPAddress(src.Slice(1, 4)), BinaryPrimitives.ReadUInt16BigEndian(src[5..]));
                consumed = 7;
                return true;
            case AtypIPv6:
                if (src.Length < 19) return false;
                var ip = new IPAddress(src.Slice(1, 16));
                if (ip.IsIPv4MappedToIPv6) ip = ip.MapToIPv4();
                address = new IPEndPoint(ip, BinaryPrimitives.ReadUInt16BigEndian(src[17..]));
                consumed = 19;
                return true;
            default:
                return false;
        }
    }

    // ---- ClientHello / ServerHello ----

    /// <summary>RFC 4122 byte order (big-endian fields), not Guid.ToByteArray's.</summary>
    public static void WriteUuid(Span<byte> dst, Guid id)
    {
        if (!id.TryWriteBytes(dst, bigEndian: true, out _)) throw new ArgumentException("short buffer");
    }

    public static Guid ReadUuid(ReadOnlySpan<byte> src) => new(src[..16], bigEndian: true);

    public static int WriteClientHello(Span<byte> dst, in ClientHello hello)
    {
        if (hello.Token.Length != TokenSize) throw new ArgumentException("token must be 32 bytes");
        WriteHeader(dst, AsportCommand.ClientHello);
        WriteUuid(dst[2..], hello.User);
        hello.Token.CopyTo(dst[18..]);
        dst[50] = (byte)hello.Mode;
        BinaryPrimitives.WriteUInt16BigEndian(dst[51..], hello.PortStart);
        BinaryPrimitives.WriteUInt16BigEndian(dst[53..], hello.PortEnd);
        return ClientHelloSize;
    }

    /// <summary>Parses a whole ClientHello message (header included); false on any defect.</summary>
    public static bool TryReadClientHello(ReadOnlySpan<byte> src, out ClientHello hello)
    {
        hello = default;
        if (src.Length != ClientHelloSize || !TryReadHeader(src, out var cmd) || cmd != AsportCommand.ClientHello) return false;
        if (!IsKnownMode(src[50])) return false;
        var start = BinaryPrimitives.ReadUInt16BigEndian(src[51..]);
        var end = BinaryPrimitives.ReadUInt16BigEndian(src[53..]);
        if (start > end) return false;
        hello = new ClientHello(ReadUuid(src[2..]), src.Slice(18, TokenSize).ToArray(), (ForwardMode)src[50], start, end);
        return true;
    }

    public static int WriteServerHello(Span<byte> dst, ServerHelloCode code, ushort port)
    {
        WriteHeader(dst, AsportCommand.ServerHello);
        dst[2] = (byte)code;
        if (code != ServerHelloCode.Success) return 3;
        BinaryPrimitives.WriteUInt16BigEndian(dst[3..], port);
        return 5;
    }

    public static bool TryReadServerHello(ReadOnlySpan<byte> src, out ServerHelloCode code, out ushort port)
    {
        code = default;
        port = 0;
        if (!TryReadHeader(src, out var cmd) || cmd != AsportCommand.ServerHello || src.Length < 3 || src[2] > 4) return false;
        code = (ServerHelloCode)src[2];
        if (code != ServerHelloCode.Success) return src.Length == 3;
        if (src.Length != 5) return false;
        port = BinaryPrimitives.ReadUInt16BigEndian(src[3..]);
        return true;
    }

    // ---- Connect / Dissociate / Heartbeat ----

    public static int WriteConnect(Span<byte> dst, IPEndPoint? source) =>
        WriteHeader(dst, AsportCommand.Connect) + WriteAddress(dst[2..], source);

    public static int WriteDissociate(Span<byte> dst, ushort assocId)
    {
        WriteHeader(dst, AsportCommand.Dissociate);
        BinaryPrimitives.WriteUInt16BigEndian(dst[2..], assocId);
        return 4;
    }

    public static int WriteHeartbeat(Span<byte> dst) => WriteHeader(dst, AsportCommand.Heartbeat);

    // ---- Packet ----

    public static int WritePacketHeader(Span<byte> dst, in PacketHeader h)
    {
        WriteHeader(dst, AsportCommand.Packet);
        BinaryPrimitives.WriteUInt16BigEndian(dst[2..], h.AssocId);
        BinaryPrimitives.WriteUInt16BigEndian(dst[4..], h.PacketId);
        dst[6] = h.FragmentTotal;
        dst[7] = h.FragmentId;
        BinaryPrimitives.WriteUInt16BigEndian(dst[8..], h.Size);
        return HeaderSize + PacketFixedSize + WriteAddress(dst[10..], h.Address);
    }

    /// <summary>Parses a Packet body (after the 2-byte header); consumed covers the fixed part and the address.</summary>
    public static bool TryReadPacketHeader(ReadOnlySpan<byte> body, out PacketHeader header, out int consumed)
    {
        header = default;
        consumed = 0;
        if (body.Length < PacketFixedSize) return false;
        if (!TryReadAddress(body[PacketFixedSize..], out var address, out var alen)) return false;
        header = new PacketHeader(
            BinaryPrimitives.ReadUInt16BigEndian(body), BinaryPrimitives.ReadUInt16BigEndian(body[2..]),
            body[4], body[5], BinaryPrimitives.ReadUInt16BigEndian(body[6..]), address);
        consumed = PacketFixedSize + alen;
        return true;
    }

    /// <summary>How many fragments a payload needs when each datagram may carry
    /// <paramref name="maxDatagram"/> bytes; the first fragment carries the address, later ones
    /// None. An exact multiple produces no empty trailing fragment (unlike the reference).</summary>
    public static int FragmentCount(int payloadLength, int maxDatagram, IPEndPoint? address)
    {
        var first = maxDatagram - HeaderSize - PacketFixedSize - AddressSize(address);
        var later = maxDatagram - HeaderSize - PacketFixedSize - 1;
        if (first <= 0 || later <= 0) return -1;
        if (payloadLength <= first) return 1;
        var rest = payloadLength - first;
        var n = 1 + (rest + later - 1) / later;
        return n > 255 ? -1 : n;
    }

    /// <summary>Writes fragment <paramref name="index"/> of <paramref name="payload"/> into
    /// <paramref name="dst"/> (at least maxDatagram bytes); returns the datagram length.</summary>
    public static int WriteFragment(Span<byte> dst, ushort assocId, ushort packetId, int index, int total,
        ReadOnlySpan<byte> payload, int maxDatagram, IPEndPoint? address)
    {
        var first = maxDatagram - HeaderSize - PacketFixedSize - AddressSize(address);
        var later = maxDatagram - HeaderSize - PacketFixedSize - 1;
        int offset = index == 0 ? 0 : first + (index - 1) * later;
        int size = Math.Min(index == 0 ? first : later, payload.Length - offset);
        var h = new PacketHeader(assocId, packetId, (byte)total, (byte)index, (ushort)size, index == 0 ? address : null);
        var n = WritePacketHeader(dst, h);
        payload.Slice(offset, size).CopyTo(dst[n..]);
        return n + size;
    }
}

/// <summary>
/// The asport transport's UDP mapping (spec/asport.md §6.2): every UDP datagram between the client
/// process and the public UDP port is exactly one frame of spec/turn.md §5.2 (LENGTH included), with
/// two frame types of this mapping only: OPEN and CLOSE (<see cref="DatagramFrame"/>).
/// </summary>
internal static class AsportUdpFrames
{
    /// <summary>The largest frame in one datagram: the largest UDP payload over IPv4.</summary>
    public const int MaxFrame = 65507;
    /// <summary>The largest datagram payload a TURN allocation can send this way (any peer family).</summary>
    public const int MaxPayload = MaxFrame - DatagramFrame.MaxHeaderLength;
}
