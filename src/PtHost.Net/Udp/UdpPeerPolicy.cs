using System.Net;
using PtHost.Contract;

namespace PtHost.Net.Udp;

/// <summary>
/// Which UDP peers a free server process may reach (spec/turn.md §6.1): the <c>allow</c> list, and
/// for addresses in special-purpose ranges only an entry that lies inside that range, never a
/// catch-all. IPv4-mapped IPv6 addresses are judged as IPv4; port 0 is never reachable.
/// </summary>
public sealed class UdpPeerPolicy
{
    /// <summary>Special-purpose ranges (RFC 6890 and friends), most specific first.</summary>
    public static readonly IReadOnlyList<(IPAddress Network, int Prefix, string Name)> SpecialRanges =
    [
        (IPAddress.Parse("0.0.0.0"), 8, "unspecified (\"this network\")"),
        (IPAddress.Parse("10.0.0.0"), 8, "private"),
        (IPAddress.Parse("100.64.0.0"), 10, "shared address space"),
        (IPAddress.Parse("127.0.0.0"), 8, "loopback"),
        (IPAddress.Parse("169.254.0.0"), 16, "link-local"),
        (IPAddress.Parse("172.16.0.0"), 12, "private"),
        (IPAddress.Parse("192.0.0.0"), 24, "IETF protocol assignments"),
        (IPAddress.Parse("192.168.0.0"), 16, "private"),
        (IPAddress.Parse("198.18.0.0"), 15, "benchmarking"),
        (IPAddress.Parse("224.0.0.0"), 4, "multicast"),
        (IPAddress.Parse("240.0.0.0"), 4, "reserved or broadcast"),
        (IPAddress.Parse("::"), 128, "unspecified"),
        (IPAddress.Parse("::1"), 128, "loopback"),
        (IPAddress.Parse("::"), 96, "IPv4-compatible"),
        (IPAddress.Parse("64:ff9b::"), 96, "NAT64"),
        (IPAddress.Parse("fc00::"), 7, "unique local (private)"),
        (IPAddress.Parse("fe80::"), 10, "link-local"),
        (IPAddress.Parse("ff00::"), 8, "multicast"),
    ];

    private readonly AllowList _allow;

    public UdpPeerPolicy(AllowList allow) => _allow = allow;

    /// <summary>Null when <paramref name="peer"/> may be reached; otherwise why not (for logs).</summary>
    public string? Refuse(PeerAddress peer)
    {
        if (peer.Port == 0) return "port 0";
        var address = peer.Unmapped().ToIPAddress();
        foreach (var (network, prefix, name) in SpecialRanges)
        {
            if (!InRange(address, network, prefix)) continue;
            return _allow.AllowsWithin(address, peer.Port, network, prefix)
                ? null : $"{name} address, and no allow entry inside {network}/{prefix} names it";
        }
        return _allow.Allows(address, peer.Port) ? null : "not in the allow list";
    }

    /// <summary>True when <paramref name="address"/> lies in <paramref name="network"/>/<paramref name="prefix"/> (same family).</summary>
    public static bool InRange(IPAddress address, IPAddress network, int prefix)
    {
        if (address.AddressFamily != network.AddressFamily) return false;
        Span<byte> a = stackalloc byte[16], n = stackalloc byte[16];
        address.TryWriteBytes(a, out int len);
        network.TryWriteBytes(n, out _);
        int full = prefix / 8, rem = prefix % 8;
        if (!a[..full].SequenceEqual(n[..full])) return false;
        if (rem == 0 || full >= len) return true;
        int mask = 0xff << (8 - rem) & 0xff;
        return (a[full] & mask) == (n[full] & mask);
    }
}
