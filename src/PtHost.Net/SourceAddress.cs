using System.Net;

namespace PtHost.Net;

/// <summary>
/// The key a relay counts a connection's source under for its per-source limits
/// (spec/zephyr.md §4.6): an IPv4 address (IPv4-mapped IPv6 included) as itself, an IPv6 address
/// as its network of <c>ipv6Prefix</c> bits (default /64, the smallest block one subscriber is
/// normally given), so that the many addresses of one /64 count as one source.
/// </summary>
public static class SourceAddress
{
    public const int DefaultIPv6Prefix = 64;

    /// <summary>The source key of <paramref name="address"/>; <paramref name="ipv6Prefix"/> from 1 to 128.</summary>
    public static IPAddress Key(IPAddress address, int ipv6Prefix = DefaultIPv6Prefix)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(ipv6Prefix, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(ipv6Prefix, 128);
        if (address.IsIPv4MappedToIPv6) return address.MapToIPv4();
        if (address.AddressFamily != System.Net.Sockets.AddressFamily.InterNetworkV6 || ipv6Prefix == 128) return address;
        Span<byte> bytes = stackalloc byte[16];
        address.TryWriteBytes(bytes, out _);
        int full = ipv6Prefix / 8, rem = ipv6Prefix % 8;
        if (rem != 0) bytes[full++] &= (byte)(0xff << (8 - rem));
        bytes[full..].Clear();
        return new IPAddress(bytes); // scope id dropped: one network, whatever the interface
    }
}
