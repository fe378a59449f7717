using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;

namespace PtHost.Transports.Rud;

/// <summary>
/// The unit of per-source limits (spec/rud.md §11): an IPv4 address (IPv4-mapped IPv6 addresses count
/// as IPv4), or an IPv6 /64, the block one subscriber gets.
/// </summary>
internal readonly record struct SourcePrefix(ulong High, ulong Low)
{
    public static SourcePrefix From(SocketAddress a)
    {
        var b = a.Buffer.Span;
        if (a.Family == AddressFamily.InterNetwork) return new(0, BinaryPrimitives.ReadUInt32BigEndian(b[4..]));
        // sockaddr_in6: family 2, port 2, flowinfo 4, address 16 at offset 8.
        var address = b.Slice(8, 16);
        if (address[..10].IndexOfAnyExcept((byte)0) < 0 && address[10] == 0xff && address[11] == 0xff)
            return new(0, BinaryPrimitives.ReadUInt32BigEndian(address[12..]));
        return new(1, BinaryPrimitives.ReadUInt64BigEndian(address));
    }
}
