using System.Diagnostics.CodeAnalysis;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;
using PtHost.Contract;

namespace PtHost.Net;

/// <summary>The protocol spoken to an upstream proxy (pt-spec §3.2.2, TOR_PT_PROXY).</summary>
public enum UpstreamProxyKind
{
    /// <summary><c>socks5://</c>: RFC 1928, with RFC 1929 username/password when credentials are given.</summary>
    Socks5,
    /// <summary><c>socks4a://</c>: SOCKS 4a; the user part is the USERID.</summary>
    Socks4a,
    /// <summary><c>http://</c>: HTTP/1.1 CONNECT (RFC 9110 §9.3.6), Basic authentication (RFC 7617) when credentials are given.</summary>
    Http,
}

/// <summary>
/// An upstream proxy that every outgoing transport connection goes through (spec/external.md §2):
/// <c>&lt;socks5|socks4a|http&gt;://[user[:pass]@]ip:port</c>. Parse once at start-up; a bad URI is
/// reported with <see cref="FormatException.Message"/> as the text of a <c>PROXY-ERROR</c> line.
/// </summary>
public sealed class UpstreamProxy
{
    private UpstreamProxy(UpstreamProxyKind kind, IPEndPoint server, byte[]? user, byte[]? password)
    {
        Kind = kind;
        Server = server;
        User = user;
        Password = password;
    }

    /// <summary>The proxy protocol.</summary>
    public UpstreamProxyKind Kind { get; }

    /// <summary>The proxy's address (an IP literal and a non-zero port).</summary>
    public IPEndPoint Server { get; }

    /// <summary>The user name (SOCKS5 UNAME, SOCKS4a USERID, HTTP user-id), percent-decoded UTF-8; null for none.</summary>
    public byte[]? User { get; }

    /// <summary>The password (SOCKS5 PASSWD, HTTP password), percent-decoded UTF-8; null for none.</summary>
    public byte[]? Password { get; }

    /// <summary>True when credentials were given.</summary>
    public bool HasCredentials => User is not null;

    /// <summary>Parses like <see cref="Parse"/>; <paramref name="error"/> is the PROXY-ERROR message on failure.</summary>
    public static bool TryParse(string? uri, [NotNullWhen(true)] out UpstreamProxy? proxy, [NotNullWhen(false)] out string? error)
    {
        try
        {
            proxy = Parse(uri ?? "");
            error = null;
            return true;
        }
        catch (FormatException e)
        {
            proxy = null;
            error = e.Message;
            return false;
        }
    }

    /// <summary>
    /// Parses <c>scheme://[user[:pass]@]ip:port</c>. Rules (spec/external.md §2.1): the scheme is
    /// <c>socks5</c>, <c>socks4a</c> or <c>http</c> (case-insensitive); the host is an IPv4 strict
    /// dotted quad or a bracketed IPv6 literal; the port is 1–65535; nothing may follow the port
    /// except one optional <c>/</c>; user and password are percent-decoded. SOCKS5 needs both a user
    /// and a password of 1–255 bytes each, or neither; SOCKS4a takes a user only (no NUL); HTTP takes
    /// a user without <c>:</c> and an optional password.
    /// </summary>
    public static UpstreamProxy Parse(string uri)
    {
        ArgumentNullException.ThrowIfNull(uri);
        if (uri.Length == 0) throw new FormatException("proxy URI is empty");
        foreach (char c in uri)
            if (c <= ' ' || c >= 0x7f) throw new FormatException("proxy URI contains a space, a control or a non-ASCII character (percent-encode it)");
        int sep = uri.IndexOf("://", StringComparison.Ordinal);
        if (sep <= 0) throw new FormatException("proxy URI has no scheme (expected socks5://, socks4a:// or http://)");
        string scheme = uri[..sep].ToLowerInvariant();
        var kind = scheme switch
        {
            "socks5" => UpstreamProxyKind.Socks5,
            "socks4a" => UpstreamProxyKind.Socks4a,
            "http" => UpstreamProxyKind.Http,
            _ => throw new FormatException($"proxy URI scheme \"{uri[..sep]}\" is not supported (supported: socks5, socks4a, http)"),
        };
        string rest = uri[(sep + 3)..];
        if (rest.EndsWith('/')) rest = rest[..^1];
        if (rest.IndexOfAny(['/', '?', '#']) >= 0) throw new FormatException("proxy URI must not have a path, a query or a fragment");

        byte[]? user = null, password = null;
        int at = rest.LastIndexOf('@');
        if (at >= 0)
        {
            string userinfo = rest[..at];
            rest = rest[(at + 1)..];
            int colon = userinfo.IndexOf(':');
            user = PercentDecode(colon < 0 ? userinfo : userinfo[..colon], "user name");
            if (colon >= 0) password = PercentDecode(userinfo[(colon + 1)..], "password");
        }
        var server = ParseHostPort(rest);

        switch (kind)
        {
            case UpstreamProxyKind.Socks5:
                if (user is not null)
                {
                    // RFC 1929 §2: ULEN and PLEN are 1..255; tor likewise requires both.
                    if (password is null) throw new FormatException("socks5 proxy credentials need a password as well as a user name (user:pass@)");
                    if (user.Length is 0 or > 255) throw new FormatException($"socks5 proxy user name must be 1 to 255 bytes, not {user.Length}");
                    if (password.Length is 0 or > 255) throw new FormatException($"socks5 proxy password must be 1 to 255 bytes, not {password.Length}");
                }
                break;
            case UpstreamProxyKind.Socks4a:
                if (password is not null) throw new FormatException("socks4a proxy takes a user id only, not a password");
                if (user is not null)
                {
                    if (user.Length == 0) user = null; // "socks4a://@ip:port": an empty USERID
                    else if (Array.IndexOf(user, (byte)0) >= 0) throw new FormatException("socks4a proxy user id must not contain NUL");
                    else if (user.Length > 255) throw new FormatException($"socks4a proxy user id must be at most 255 bytes, not {user.Length}");
                }
                break;
            case UpstreamProxyKind.Http:
                if (user is not null)
                {
                    // RFC 7617 §2: the user-id cannot contain ':'.
                    if (user.Length == 0) throw new FormatException("http proxy user name is empty");
                    if (Array.IndexOf(user, (byte)':') >= 0) throw new FormatException("http proxy user name must not contain ':'");
                    if (user.Length > 255 || password?.Length > 255) throw new FormatException("http proxy user name and password must be at most 255 bytes each");
                    foreach (byte b in user.Concat(password ?? [])) if (b < 0x20 || b == 0x7f) throw new FormatException("http proxy credentials must not contain control characters");
                    password ??= [];
                }
                break;
        }
        return new UpstreamProxy(kind, server, user, password);
    }

    private static IPEndPoint ParseHostPort(string text)
    {
        if (text.Length == 0) throw new FormatException("proxy URI has no host");
        string host, port;
        if (text[0] == '[')
        {
            int close = text.IndexOf(']');
            if (close < 0) throw new FormatException("proxy URI has an unterminated IPv6 literal ('[' without ']')");
            host = text[1..close];
            if (close + 1 >= text.Length || text[close + 1] != ':') throw new FormatException("proxy URI has no port (expected [ipv6]:port)");
            port = text[(close + 2)..];
            if (!IPAddress.TryParse(host, out var v6) || v6.AddressFamily != AddressFamily.InterNetworkV6 || host.Contains('%'))
                throw new FormatException($"proxy host \"[{host}]\" is not an IPv6 address");
            return new IPEndPoint(v6, ParsePort(port));
        }
        int colon = text.LastIndexOf(':');
        if (colon < 0) throw new FormatException("proxy URI has no port (expected ip:port)");
        host = text[..colon];
        port = text[(colon + 1)..];
        if (host.Contains(':')) throw new FormatException("proxy host IPv6 address must be in brackets ([addr]:port)");
        if (!Destination.IsStrictIPv4(host)) throw new FormatException($"proxy host \"{host}\" is not an IP address (a host name is not allowed)");
        return new IPEndPoint(IPAddress.Parse(host), ParsePort(port));
    }

    private static int ParsePort(string text)
    {
        if (text.Length is 0 or > 5 || !text.All(char.IsAsciiDigit)) throw new FormatException($"proxy port \"{text}\" is not a number 1-65535");
        int port = int.Parse(text, NumberStyles.None, CultureInfo.InvariantCulture);
        if (port is 0 or > 65535) throw new FormatException($"proxy port {port} is out of range 1-65535");
        return port;
    }

    private static byte[] PercentDecode(string text, string what)
    {
        var bytes = new List<byte>(text.Length);
        for (int i = 0; i < text.Length; i++)
        {
            char c = text[i];
            if (c == '%')
            {
                if (i + 2 >= text.Length || !char.IsAsciiHexDigit(text[i + 1]) || !char.IsAsciiHexDigit(text[i + 2]))
                    throw new FormatException($"proxy {what} has a bad percent-escape");
                bytes.Add(byte.Parse(text.AsSpan(i + 1, 2), NumberStyles.HexNumber, CultureInfo.InvariantCulture));
                i += 2;
            }
            else if (c is '[' or ']' or '@' or '/') throw new FormatException($"proxy {what} contains '{c}' (percent-encode it)");
            else bytes.Add((byte)c);
        }
        return [.. bytes];
    }

    /// <summary>The URI with any password replaced by <c>***</c>, for logs.</summary>
    public static string Redact(string uri)
    {
        int sep = uri.IndexOf("://", StringComparison.Ordinal);
        int at = uri.LastIndexOf('@');
        if (sep < 0 || at < sep) return uri;
        int colon = uri.IndexOf(':', sep + 3);
        return colon >= 0 && colon < at ? uri[..(colon + 1)] + "***" + uri[at..] : uri;
    }

    /// <summary>The URI with its credentials (percent-encoded), e.g. for a child's TOR_PT_PROXY. Never log it.</summary>
    public string ToUri()
    {
        string creds = User is null ? "" : Encode(User) + (Password is null ? "" : ":" + Encode(Password)) + "@";
        return $"{Scheme}://{creds}{Server}";

        static string Encode(byte[] b) => string.Concat(b.Select(x => char.IsAsciiLetterOrDigit((char)x) || x is (byte)'-' or (byte)'.' or (byte)'_' or (byte)'~' ? ((char)x).ToString() : $"%{x:X2}"));
    }

    private string Scheme => Kind switch { UpstreamProxyKind.Socks5 => "socks5", UpstreamProxyKind.Socks4a => "socks4a", _ => "http" };

    /// <summary><c>scheme://[user:***@]ip:port</c>: the password never appears.</summary>
    public override string ToString()
    {
        string creds = User is null ? "" : Uri.EscapeDataString(Encoding.UTF8.GetString(User)) + (Password is null ? "" : ":***") + "@";
        return $"{Scheme}://{creds}{Server}";
    }
}
