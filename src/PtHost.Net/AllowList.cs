using System.Globalization;
using System.Net;
using System.Net.Sockets;

namespace PtHost.Net;

/// <summary>
/// The destinations a free server may reach (spec/ipc.md §3.4): entries <c>ip</c>, <c>ip/prefix</c>,
/// each optionally with <c>:port</c> (IPv6 in brackets: <c>[2001:db8::/32]:443</c>). IPv4-mapped IPv6
/// addresses are compared as IPv4. An empty list allows nothing.
/// </summary>
public sealed class AllowList
{
    private readonly Entry[] _entries;

    private AllowList(Entry[] entries) => _entries = entries;

    public int Count => _entries.Length;

    public static AllowList Parse(IEnumerable<string> entries) => new(entries.Select(ParseEntry).ToArray());

    public bool Allows(IPAddress address, int port)
    {
        if (address.IsIPv4MappedToIPv6) address = address.MapToIPv4();
        foreach (var e in _entries)
            if ((e.Port == 0 || e.Port == port) && e.Contains(address)) return true;
        return false;
    }

    /// <summary>
    /// True when an entry that lies wholly inside <paramref name="network"/>/<paramref name="prefix"/>
    /// allows the address and port: a catch-all such as <c>0.0.0.0/0</c> does not count. Used for
    /// UDP peers in special-purpose ranges (spec/turn.md §6.1).
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
