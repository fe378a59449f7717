using System.Diagnostics.CodeAnalysis;
using System.Globalization;
using System.Net;
using System.Net.Sockets;

namespace PtHost.Contract;

/// <summary>A host (IP literal or domain name) and a TCP/UDP port.</summary>
public sealed record Destination
{
    /// <summary>Creates a destination; <paramref name="host"/> is an IP literal (no brackets) or a domain name.</summary>
    public Destination(string host, int port)
    {
        ArgumentException.ThrowIfNullOrEmpty(host);
        ArgumentOutOfRangeException.ThrowIfNegative(port);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(port, 65535);
        Address = ParseLiteral(host);
        if (Address is null && !IsValidHostName(host))
            throw new ArgumentException($"\"{host}\" is neither an IP literal nor a host name", nameof(host));
        Host = host;
        Port = port;
    }

    /// <summary>An IPv6 literal, or an IPv4 literal in strict dotted-quad form; null otherwise.</summary>
    public static IPAddress? ParseLiteral(string host)
    {
        if (host.Contains(':'))
            return IPAddress.TryParse(host, out var v6) && v6.AddressFamily == AddressFamily.InterNetworkV6 ? v6 : null;
        return IsStrictIPv4(host) ? IPAddress.Parse(host) : null;
    }

    /// <summary>
    /// Four decimal octets 0–255 without leading zeros. The shorthand and octal/hex forms that
    /// inet_aton accepts ("127.1", "010.0.0.1", "0x7f.0.0.1") are not addresses here.
    /// </summary>
    public static bool IsStrictIPv4(ReadOnlySpan<char> text)
    {
        int parts = 0;
        foreach (var range in text.Split('.'))
        {
            var part = text[range];
            if (++parts > 4 || part.Length is 0 or > 3 || (part.Length > 1 && part[0] == '0')) return false;
            foreach (char c in part) if (!char.IsAsciiDigit(c)) return false;
            if (int.Parse(part, NumberStyles.None, CultureInfo.InvariantCulture) > 255) return false;
        }
        return parts == 4;
    }

    /// <summary>Creates a destination from an IP endpoint.</summary>
    public Destination(IPEndPoint endPoint) : this(endPoint.Address.ToString(), endPoint.Port) { }

    /// <summary>IP literal or domain name, without brackets.</summary>
    public string Host { get; }

    /// <summary>Port, 0–65535.</summary>
    public int Port { get; }

    /// <summary>The address when <see cref="Host"/> is an IP literal.</summary>
    public IPAddress? Address { get; }

    /// <summary>True for <c>0.0.0.0:0</c> and <c>[::]:0</c>: what a PT 2.0 client sends to a bound transport.</summary>
    public bool IsUnspecified => Port == 0 && Address is not null &&
        (Address.Equals(IPAddress.Any) || Address.Equals(IPAddress.IPv6Any));

    /// <summary><c>host:port</c>, with IPv6 literals in brackets.</summary>
    public override string ToString() =>
        Address?.AddressFamily == AddressFamily.InterNetworkV6 ? $"[{Host}]:{Port}" : $"{Host}:{Port}";

    /// <summary>Parses <c>host:port</c>, <c>ip:port</c> or <c>[ipv6]:port</c>.</summary>
    public static bool TryParse(string? text, [NotNullWhen(true)] out Destination? destination)
    {
        destination = null;
        if (string.IsNullOrEmpty(text) || text.Length > 262) return false;
        string host;
        string portText;
        if (text[0] == '[')
        {
            int close = text.IndexOf(']');
            if (close < 0 || close + 1 >= text.Length || text[close + 1] != ':') return false;
            host = text[1..close];
            portText = text[(close + 2)..];
            if (!IPAddress.TryParse(host, out var v6) || v6.AddressFamily != AddressFamily.InterNetworkV6) return false;
        }
        else
        {
            int colon = text.LastIndexOf(':');
            if (colon <= 0 || text.IndexOf(':') != colon) return false;
            host = text[..colon];
            portText = text[(colon + 1)..];
            if (!IsStrictIPv4(host) && !IsValidHostName(host)) return false;
        }
        if (portText.Length is 0 or > 5 || !portText.All(char.IsAsciiDigit)) return false;
        int port = int.Parse(portText, NumberStyles.None, CultureInfo.InvariantCulture);
        if (port > 65535) return false;
        destination = new Destination(host, port);
        return true;
    }

    /// <summary>Parses like <see cref="TryParse"/>, throwing <see cref="FormatException"/>.</summary>
    public static Destination Parse(string text) =>
        TryParse(text, out var d) ? d : throw new FormatException($"'{text}' is not host:port");

    /// <summary>
    /// A domain name: 1–255 characters of printable ASCII without spaces, colons, brackets, slashes
    /// or '@'. A name whose last label is numeric ("127.1", "10.0.0.010", "0x7f.1") is an address in
    /// disguise (resolvers parse it as one): it is valid only as a strict dotted quad.
    /// </summary>
    public static bool IsValidHostName(string host)
    {
        if (host.Length is 0 or > 255) return false;
        foreach (char c in host)
            if (c <= ' ' || c >= 0x7f || c is ':' or '[' or ']' or '/' or '\\' or '@') return false;
        string last = host.TrimEnd('.');
        last = last[(last.LastIndexOf('.') + 1)..];
        bool numeric = last.Length > 0 && (last.All(char.IsAsciiDigit) || last.StartsWith("0x", StringComparison.OrdinalIgnoreCase));
        return !numeric || IsStrictIPv4(host);
    }
}
