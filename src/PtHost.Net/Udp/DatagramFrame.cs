using System.Buffers.Binary;
using PtHost.Contract;

namespace PtHost.Net.Udp;

/// <summary>Frame types of a UDP association (spec/turn.md §5.2; OPEN and CLOSE §5.6).</summary>
public enum DatagramFrameType : byte
{
    /// <summary>A datagram: client → server "send to ADDRESS", server → client "received from ADDRESS".</summary>
    Data = 0x00,
    /// <summary>Client → server: may ADDRESS be reached? Answered by <see cref="Allowed"/> or <see cref="Refused"/>.</summary>
    Check = 0x01,
    /// <summary>Server → client: ADDRESS may be reached.</summary>
    Allowed = 0x02,
    /// <summary>Server → client: ADDRESS is refused (answer to a check, or a dropped datagram).</summary>
    Refused = 0x03,
    /// <summary>Server → client, first frame: ADDRESS is the server's UDP socket (the relayed address).</summary>
    Relayed = 0x04,
    /// <summary>Datagram carriers only (§5.6), client → server: open the association (<c>[::]:0</c>), or keep it alive (<c>[::]:1</c>); answered by RELAYED.</summary>
    Open = 0x05,
    /// <summary>Datagram carriers only (§5.6), either way: the association is over (or, from an asport server, unknown).</summary>
    Close = 0x06,
}

/// <summary>
/// The framing of datagrams inside a transport's stream (spec/turn.md §5.2):
/// <c>LENGTH(u16 BE) | TYPE(u8) | ATYP(u8: 01 IPv4, 04 IPv6) | ADDRESS(4|16) | PORT(u16 BE) | PAYLOAD</c>,
/// LENGTH counting every byte after itself. As PT 3.0's transparent-UDP mode, each datagram is
/// preceded by a 2-byte big-endian length; the address follows it.
/// </summary>
public static class DatagramFrame
{
    public const byte AtypIPv4 = 0x01, AtypIPv6 = 0x04;
    /// <summary>The largest frame: 2 + 65535.</summary>
    public const int MaxFrameLength = 2 + ushort.MaxValue;
    /// <summary>The largest header (IPv6).</summary>
    public const int MaxHeaderLength = 2 + 1 + 1 + 16 + 2;
    /// <summary>The largest payload any frame can carry (an IPv6 peer).</summary>
    public const int MaxPayload = MaxFrameLength - MaxHeaderLength;

    /// <summary>OPEN for <c>[::]:0</c>: 22 bytes, as long as the longest RELAYED answer (no amplification).</summary>
    public static readonly byte[] OpenFrame = Build(DatagramFrameType.Open, PeerAddress.FromBytes(new byte[16], 0));
    /// <summary>OPEN for <c>[::]:1</c>: keep-alive of an open association; never opens one.</summary>
    public static readonly byte[] KeepaliveFrame = Build(DatagramFrameType.Open, PeerAddress.FromBytes(new byte[16], 1));
    /// <summary>CLOSE for <c>0.0.0.0:0</c>: 10 bytes, the shortest frame.</summary>
    public static readonly byte[] CloseFrame = Build(DatagramFrameType.Close, PeerAddress.FromBytes(new byte[4], 0));

    private static byte[] Build(DatagramFrameType type, PeerAddress address)
    {
        var frame = new byte[HeaderLength(address)];
        Write(frame, type, address, default);
        return frame;
    }

    public static int HeaderLength(PeerAddress peer) => 2 + 1 + 1 + peer.AddressLength + 2;

    /// <summary>Writes a frame's header into <paramref name="destination"/> for a payload of <paramref name="payloadLength"/> bytes; returns the header length.</summary>
    public static int WriteHeader(Span<byte> destination, DatagramFrameType type, PeerAddress peer, int payloadLength)
    {
        int header = HeaderLength(peer);
        int length = header - 2 + payloadLength;
        if (length > ushort.MaxValue) throw new ArgumentOutOfRangeException(nameof(payloadLength), "datagram too large for one frame");
        BinaryPrimitives.WriteUInt16BigEndian(destination, (ushort)length);
        destination[2] = (byte)type;
        destination[3] = peer.IsIPv4 ? AtypIPv4 : AtypIPv6;
        int n = peer.WriteAddress(destination[4..]);
        BinaryPrimitives.WriteUInt16BigEndian(destination[(4 + n)..], (ushort)peer.Port);
        return header;
    }

    /// <summary>Writes a whole frame; returns its length.</summary>
    public static int Write(Span<byte> destination, DatagramFrameType type, PeerAddress peer, ReadOnlySpan<byte> payload)
    {
        int header = WriteHeader(destination, type, peer, payload.Length);
        payload.CopyTo(destination[header..]);
        return header + payload.Length;
    }

    /// <summary>
    /// Parses the frame at the start of <paramref name="data"/>. Returns its total length (LENGTH + 2),
    /// 0 when more bytes are needed, or -1 when it is malformed (LENGTH too short for its address,
    /// unknown ATYP): the stream is then unusable.
    /// </summary>
    public static int TryParse(ReadOnlySpan<byte> data, out DatagramFrameType type, out PeerAddress peer, out Range payload)
    {
        type = default;
        peer = default;
        payload = default;
        if (data.Length < 4) return 0;
        int length = BinaryPrimitives.ReadUInt16BigEndian(data);
        int addressLength = data[3] switch { AtypIPv4 => 4, AtypIPv6 => 16, _ => -1 };
        if (addressLength < 0 || length < 2 + addressLength + 2) return -1;
        if (data.Length < 2 + length) return 0;
        type = (DatagramFrameType)data[2];
        int port = BinaryPrimitives.ReadUInt16BigEndian(data[(4 + addressLength)..]);
        peer = PeerAddress.FromBytes(data.Slice(4, addressLength), port);
        int start = 4 + addressLength + 2;
        payload = start..(2 + length);
        return 2 + length;
    }

    /// <summary>
    /// A datagram carrier's datagram (§5.6): true when it is exactly one well-formed frame
    /// (LENGTH = datagram length − 2); never throws.
    /// </summary>
    public static bool TryReadDatagram(ReadOnlySpan<byte> datagram, out DatagramFrameType type, out PeerAddress peer, out Range payload)
    {
        int n = TryParse(datagram, out type, out peer, out payload);
        return n > 0 && n == datagram.Length;
    }
}
