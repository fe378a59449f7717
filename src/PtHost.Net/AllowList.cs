using System.Globalization;
using System.Net;
using System.Net.Sockets;

namespace PtHost.Net;

/// <summary>
/// The destinations a free server may reach (spec/ipc.md §3.4): entries <c>ip</c>, <c>ip/prefix</c>,
/// each optionally with <c>:port</c> (IPv6 in brackets: <c>[2001:db8::/32]:443</c>). IPv4-mapped IPv6
/// addresses are compared as IPv4. An empty list allows nothing. <see cref="Refuse"/> is the rule
/// every onward TCP connection and every UDP peer of a free server passes: an address in a
/// special-purpose range is reached only through an entry inside that range, never a catch-all.
/// </summary>
public sealed class AllowList
{
    /// <summary>
    /// Special-purpose ranges (RFC 6890 and the IANA registries), most specific first: a catch-all
    /// never opens them (spec/ipc.md §3.4, spec/turn.md §6.1).
    /// </summary>
    public static readonly IReadOnlyList<(IPAddress Network, int Prefix, string Name)> SpecialRanges =
    [
        (IPAddress.Parse("0.0.0.0"), 8, "unspecified (\"this network\")"),
        (IPAddress.Parse("10.0.0.0"), 8, "private"),
        (IPAddress.Parse("100.64.0.0"), 10, "shared address space (CGN)"),
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
        (IPAddress.Parse("::ffff:0:0:0"), 96, "IPv4-translated"),
        (IPAddress.Parse("64:ff9b::"), 96, "NAT64"),
        (IPAddress.Parse("64:ff9b:1::"), 48, "local-use NAT64"),
        (IPAddress.Parse("fc00::"), 7, "unique local (private)"),
        (IPAddress.Parse("fe80::"), 10, "link-local"),
        (IPAddress.Parse("fec0::"), 10, "site-local (deprecated, private)"),
        (IPAddress.Parse("ff00::"), 8, "multicast"),
    ];

    private readonly Entry[] _entries;

    private AllowList(Entry[] entries, string[] texts)
    {
        _entries = entries;
        CatchAlls = [.. texts.Where((_, i) => entries[i].Prefix == 0)];
    }

    public int Count => _entries.Length;

    /// <summary>The entries with prefix length 0 (<c>0.0.0.0/0</c>, <c>::/0</c>, with or without a port), as written.</summary>
    public IReadOnlyList<string> CatchAlls { get; }

    public static AllowList Parse(IEnumerable<string> entries)
    {
        var texts = entries.ToArray();
        return new(texts.Select(ParseEntry).ToArray(), texts);
    }

    /// <summary>
    /// Null when a free server may reach <paramref name="address"/>:<paramref name="port"/>; otherwise
    /// why not (for logs and the refusal's message). IPv4-mapped addresses are judged as IPv4; an
    /// address in one of <see cref="SpecialRanges"/> needs an entry inside that range (spec/ipc.md §3.4).
    /// </summary>
    public string? Refuse(IPAddress address, int port)
    {
        if (address.IsIPv4MappedToIPv6) address = address.MapToIPv4();
        foreach (var (network, prefix, name) in SpecialRanges)
        {
            if (!InRange(address, network, prefix)) continue;
            return AllowsWithin(address, port, network, prefix)
                ? null : $"{address} is a {name} address, and no allow entry inside {network}/{prefix} names it";
        }
        return Allows(address, port) ? null : $"{address} port {port} is not in the allow list";
    }

    /// <summary>
    /// True when any entry contains the address and port, special ranges not considered: for lists of
    /// source networks (the ASPORT relay's <c>allowed_networks</c>). A free server's destinations go
    /// through <see cref="Refuse"/>.
    /// </summary>
    public bool Allows(IPAddress address, int port)
    {
        if (address.IsIPv4MappedToIPv6) address = address.MapToIPv4();
        foreach (var e in _entries)
            if ((e.Port == 0 || e.Port == port) && e.Contains(address)) return true;
        return false;
    }

    /// <summary>
    /// True when an entry that lies wholly inside <paramref name="network"/>/<paramref name="prefix"/>
    /// allows the address and port: a catch-all such as <c>0.0.0.0/0</c> does not count.
    /// </summary>
    public bool AllowsWithin(IPAddress address, int port, IPAddress network, int prefix)
    {
        if (address.IsIPv4MappedToIPv6) address = address.MapToIPv4();
        var range = new Entry(network.GetAddressBytes(), prefix, 0);
        foreach (var e in _entries)
            if ((e.Port == 0 || e.Port == port) && e.Prefix >= prefix && e.Network.Length == range.Network.Length
                && range.Contains(new IPAddress(e.Network)) && e.Contains(address)) return true;
        return false;
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

    private static Entry ParseEntry(string text)
    {
        string addressPart = text;
        int port = 0;
        if (text.StartsWith('['))
        {
            int close = text.IndexOf(']');
            if (close < 0) throw new FormatException($"\"{text}\": missing ']'");
            addressPart = text[1..close];
            string rest = text[(close + 1)..];
            if (rest.Length > 0)
            {
                if (rest[0] != ':') throw new FormatException($"\"{text}\": expected ':port' after ']'");
                port = ParsePort(text, rest[1..]);
            }
        }
        else if (text.Count(c => c == ':') == 1)
        {
            int colon = text.IndexOf(':');
            addressPart = text[..colon];
            port = ParsePort(text, text[(colon + 1)..]);
        }
        int prefix = -1;
        int slash = addressPart.IndexOf('/');
        if (slash >= 0)
        {
            if (!int.TryParse(addressPart[(slash + 1)..], NumberStyles.None, CultureInfo.InvariantCulture, out prefix))
                throw new FormatException($"\"{text}\": bad prefix length");
            addressPart = addressPart[..slash];
        }
        var ip = PtHost.Contract.Destination.ParseLiteral(addressPart)
            ?? throw new FormatException($"\"{text}\" is not ip-or-cidr[:port] (IPv4 as a strict dotted quad)");
        if (ip.IsIPv4MappedToIPv6) ip = ip.MapToIPv4();
        int bits = ip.AddressFamily == AddressFamily.InterNetwork ? 32 : 128;
        if (prefix < 0) prefix = bits;
        if (prefix > bits) throw new FormatException($"\"{text}\": prefix longer than {bits}");
        return new Entry(ip.GetAddressBytes(), prefix, port);
    }

    private static int ParsePort(string text, string port) =>
        int.TryParse(port, NumberStyles.None, CultureInfo.InvariantCulture, out int p) && p is > 0 and <= 65535
            ? p : throw new FormatException($"\"{text}\": bad port");

    private sealed record Entry(byte[] Network, int Prefix, int Port)
    {
        public bool Contains(IPAddress address)
        {
            Span<byte> bytes = stackalloc byte[16];
            if (!address.TryWriteBytes(bytes, out int n) || n != Network.Length) return false;
            int full = Prefix / 8, rem = Prefix % 8;
            if (!bytes[..full].SequenceEqual(Network.AsSpan(0, full))) return false;
            if (rem == 0) return true;
            int mask = 0xff << (8 - rem) & 0xff;
            return (bytes[full] & mask) == (Network[full] & mask);
        }
    }
}
