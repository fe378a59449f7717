using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.RegularExpressions;
using PtHost.Contract;

namespace PtHost.Logging;

/// <summary>
/// Safe logging (spec/ipc.md §4.11): the addresses in a log line become <see cref="Scrubbed"/>. Two
/// passes over the formatted line: every address-shaped text (IP literals with or without port,
/// bracketed IPv6, <c>name:port</c>, a URL's authority), so addresses inside exception messages and
/// strings go too; then the texts and host names of the line's arguments of address types,
/// wherever they appear in the line (a destination's DNS name alone, say), exception text included. Unspecified
/// addresses (<c>0.0.0.0</c>, <c>::</c>) name no host and stay.
/// </summary>
public static partial class AddressScrubber
{
    /// <summary>What replaces an address (the text obfs4proxy and tor use).</summary>
    public const string Scrubbed = "[scrubbed]";

    /// <summary>Whether a log argument is an address: its text, and its host name, are scrubbed.</summary>
    public static bool IsAddress(object? value) => value is EndPoint or IPAddress or SocketAddress or Destination or PeerAddress or Uri;

    /// <summary>
    /// The texts an address argument puts in a line: its own text and, for names, the host name
    /// (a destination named by DNS is as telling as its IP). Appended to <paramref name="tokens"/>.
    /// </summary>
    public static void AddTokens(object? value, List<string> tokens)
    {
        switch (value)
        {
            case IEnumerable<object> items:
                foreach (object item in items.Take(64)) if (IsAddress(item)) AddTokens(item, tokens);
                return;
            case Destination d:
                tokens.Add(d.ToString());
                if (d.Address is null) tokens.Add(d.Host);
                return;
            case DnsEndPoint dns:
                tokens.Add(dns.ToString());
                tokens.Add(dns.Host);
                return;
            case Uri { IsAbsoluteUri: true } uri:
                if (uri.GetComponents(UriComponents.UserInfo | UriComponents.HostAndPort, UriFormat.UriEscaped) is { Length: > 0 } authority) tokens.Add(authority);
                if (uri.Host.Length > 0) tokens.Add(uri.Host);
                return;
            case EndPoint or IPAddress or SocketAddress or PeerAddress:
                tokens.Add(value.ToString()!);
                return;
        }
    }

    /// <summary>The line with every address scrubbed: address-shaped text, then <paramref name="tokens"/> (from the line's arguments: host names).</summary>
    public static string Scrub(string text, IReadOnlyList<string>? tokens = null)
    {
        text = AddressText().Replace(text, Evaluate);
        if (tokens is not null)
            foreach (string token in tokens) text = ReplaceToken(text, token);
        return text;
    }

    /// <summary>
    /// Replaces whole occurrences of <paramref name="token"/> (not inside a longer name or number),
    /// with the <c>:port</c> that follows a host.
    /// </summary>
    private static string ReplaceToken(string text, string token)
    {
        if (token.Length == 0 || IsUnspecified(token)) return text;
        int at = text.IndexOf(token, StringComparison.OrdinalIgnoreCase);
        if (at < 0) return text;
        var sb = new StringBuilder(text.Length);
        int from = 0;
        for (; at >= 0; at = text.IndexOf(token, Math.Max(at + token.Length, from), StringComparison.OrdinalIgnoreCase))
        {
            int end = at + token.Length;
            if (at < from || (at > 0 && IsNameChar(text[at - 1])) || (end < text.Length && IsNameChar(text[end]))) continue;
            if (end + 1 < text.Length && text[end] == ':' && char.IsAsciiDigit(text[end + 1]))
                for (end++; end < text.Length && char.IsAsciiDigit(text[end]); end++) { }
            sb.Append(text, from, at - from).Append(Scrubbed);
            from = end;
            if (from >= text.Length) break;
        }
        return from == 0 ? text : sb.Append(text, from, text.Length - from).ToString();
    }

    private static bool IsNameChar(char c) => char.IsAsciiLetterOrDigit(c) || c is '.' or '-' or '_';

    private static bool IsUnspecified(string token) =>
        IPAddress.TryParse(token, out var a) ? IsUnspecified(a)
        : IPEndPoint.TryParse(token, out var ep) && IsUnspecified(ep.Address);

    private static bool IsUnspecified(IPAddress a) => a.Equals(IPAddress.Any) || a.Equals(IPAddress.IPv6Any);

    /// <summary>One match of <see cref="AddressText"/>: scrubbed when it really is an address.</summary>
    private static string Evaluate(Match m)
    {
        if (m.Groups["auth"].Success)
            return m.Groups["scheme"].Value + Scrubbed;
        if (m.Groups["name"].Success)
            return Scrubbed;
        if (m.Groups["v4"].Success)
            return IsIPv4(m.Groups["v4"].ValueSpan, out var a) && !IsUnspecified(a) ? Scrubbed : m.Value;
        if (m.Groups["v6b"].Success)
            return IPAddress.TryParse(m.Groups["v6b"].ValueSpan, out var b) && !IsUnspecified(b) ? Scrubbed : m.Value;
        // A bare IPv6 candidate may end with a colon or dot of the sentence around it.
        string candidate = m.Value;
        int length = candidate.Length;
        while (length > 0)
        {
            if (IPAddress.TryParse(candidate.AsSpan(0, length), out var v6) && v6.AddressFamily == AddressFamily.InterNetworkV6)
                return IsUnspecified(v6) ? candidate : Scrubbed + candidate[length..];
            if (candidate[length - 1] is not (':' or '.')) break;
            length--;
        }
        return candidate;
    }

    /// <summary>Four decimal octets, each at most 255.</summary>
    private static bool IsIPv4(ReadOnlySpan<char> text, out IPAddress address)
    {
        address = IPAddress.None;
        Span<byte> bytes = stackalloc byte[4];
        int i = 0;
        foreach (var range in text.Split('.'))
        {
            if (i == 4 || !byte.TryParse(text[range], NumberStyles.None, CultureInfo.InvariantCulture, out bytes[i])) return false;
            i++;
        }
        if (i != 4) return false;
        address = new IPAddress(bytes);
        return true;
    }

    // scheme://authority (credentials and host of a URL); [IPv6](:port); IPv4(:port), not an assembly
    // "Version=a.b.c.d"; name.tld:port and localhost(:port); a bare IPv6 candidate (two colons or more).
    [GeneratedRegex("""
        (?<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?<auth>[^\s/?\#"'<>]+)
        |\[(?<v6b>[0-9A-Fa-f:.]+(?:%[0-9A-Za-z]+)?)\](?::\d{1,5}(?!\d))?
        |(?<![\w.]|Version=)(?<v4>(?:\d{1,3}\.){3}\d{1,3})(?!\.?\d)(?::\d{1,5}(?!\d))?
        |(?<name>(?<![\w.-])(?:(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z][A-Za-z0-9-]{0,62}:\d{1,5}(?!\d)|localhost(?::\d{1,5}(?!\d))?(?![\w.-])))
        |(?<![\w.:])[0-9A-Fa-f]*:[0-9A-Fa-f]*:[0-9A-Fa-f:.]*(?:%[0-9A-Za-z]+)?
        """, RegexOptions.IgnorePatternWhitespace | RegexOptions.CultureInvariant)]
    private static partial Regex AddressText();
}
