using System.Buffers;
using System.Buffers.Binary;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;
using PtHost.Contract;

namespace PtHost.Net;

/// <summary>
/// The client side of the proxy handshakes (spec/external.md §2.3): SOCKS5 (RFC 1928, RFC 1929),
/// SOCKS 4a and HTTP CONNECT. Each reads exactly the proxy's reply and nothing after it, so bytes
/// the far end sends first stay in the stream. Failures throw <see cref="TransportConnectException"/>
/// whose message begins with <c>proxyName</c> (e.g. "upstream proxy socks5://127.0.0.1:1080").
/// </summary>
public static class ProxyHandshake
{
    private const int MaxHttpHeader = 16 * 1024;

    /// <summary>
    /// SOCKS5 CONNECT to <paramref name="destination"/>. With <paramref name="user"/> set, offers
    /// only method <c>02</c> and sends the RFC 1929 sub-negotiation (fields 0–255 bytes each; an empty
    /// <paramref name="password"/> is sent with PLEN 0); otherwise offers only <c>00</c>.
    /// </summary>
    public static async ValueTask Socks5Async(Stream stream, Destination destination, ReadOnlyMemory<byte>? user, ReadOnlyMemory<byte>? password,
        string proxyName, CancellationToken ct)
    {
        if (user is { Length: > 255 } || password is { Length: > 255 }) throw new ArgumentException("RFC 1929 fields are at most 255 bytes");
        byte[] buffer = ArrayPool<byte>.Shared.Rent(1024);
        try
        {
            // Greeting: VER NMETHODS METHODS (RFC 1928 §3).
            buffer[0] = 5; buffer[1] = 1; buffer[2] = user is null ? (byte)0x00 : (byte)0x02;
            await stream.WriteAsync(buffer.AsMemory(0, 3), ct).ConfigureAwait(false);
            await ReadExactAsync(stream, buffer.AsMemory(0, 2), proxyName, ct).ConfigureAwait(false);
            if (buffer[0] != 5) throw Fail(ConnectFailure.General, proxyName, $"is not a SOCKS5 server (reply version {buffer[0]})");
            if (buffer[1] == 0xFF) throw Fail(ConnectFailure.NotAllowed, proxyName, user is null ? "requires authentication" : "does not accept username/password authentication");
            if (buffer[1] != buffer[2]) throw Fail(ConnectFailure.General, proxyName, $"chose method {buffer[1]:x2}, which was not offered");
            if (user is { } u)
            {
                // RFC 1929 §2: 01 ULEN UNAME PLEN PASSWD.
                var p = password ?? ReadOnlyMemory<byte>.Empty;
                int n = 0;
                buffer[n++] = 1;
                buffer[n++] = (byte)u.Length; u.Span.CopyTo(buffer.AsSpan(n)); n += u.Length;
                buffer[n++] = (byte)p.Length; p.Span.CopyTo(buffer.AsSpan(n)); n += p.Length;
                await stream.WriteAsync(buffer.AsMemory(0, n), ct).ConfigureAwait(false);
                await ReadExactAsync(stream, buffer.AsMemory(0, 2), proxyName, ct).ConfigureAwait(false);
                if (buffer[1] != 0) throw Fail(ConnectFailure.NotAllowed, proxyName, $"rejected the username/password (status {buffer[1]:x2})");
            }
            // Request: VER CMD RSV ATYP DST.ADDR DST.PORT (RFC 1928 §4).
            int len = 0;
            buffer[len++] = 5; buffer[len++] = 1; buffer[len++] = 0;
            if (destination.Address is { } ip)
            {
                if (ip.IsIPv4MappedToIPv6) ip = ip.MapToIPv4();
                buffer[len++] = ip.AddressFamily == AddressFamily.InterNetwork ? (byte)1 : (byte)4;
                ip.TryWriteBytes(buffer.AsSpan(len), out int written);
                len += written;
            }
            else
            {
                int nameLength = Encoding.ASCII.GetBytes(destination.Host, buffer.AsSpan(5));
                buffer[len++] = 3;
                buffer[len++] = (byte)nameLength;
                len += nameLength;
            }
            BinaryPrimitives.WriteUInt16BigEndian(buffer.AsSpan(len), (ushort)destination.Port);
            len += 2;
            await stream.WriteAsync(buffer.AsMemory(0, len), ct).ConfigureAwait(false);
            // Reply: VER REP RSV ATYP BND.ADDR BND.PORT (RFC 1928 §6).
            await ReadExactAsync(stream, buffer.AsMemory(0, 5), proxyName, ct).ConfigureAwait(false);
            if (buffer[0] != 5) throw Fail(ConnectFailure.General, proxyName, $"sent a reply with version {buffer[0]}");
            byte rep = buffer[1];
            int rest = buffer[3] switch
            {
                1 => 4 - 1 + 2,
                4 => 16 - 1 + 2,
                3 => buffer[4] + 2,
                _ => -1,
            };
            if (rep != 0) throw Fail(rep is >= 1 and <= 8 ? (ConnectFailure)rep : ConnectFailure.General, proxyName, $"could not connect to {destination} ({Socks5ReplyName(rep)})");
            if (rest < 0) throw Fail(ConnectFailure.General, proxyName, $"sent a reply with address type {buffer[3]}");
            await ReadExactAsync(stream, buffer.AsMemory(0, rest), proxyName, ct).ConfigureAwait(false);
        }
        finally { ArrayPool<byte>.Shared.Return(buffer); }
    }

    /// <summary>
    /// SOCKS 4a CONNECT: an IPv4 destination goes as DSTIP, a host name as DSTIP 0.0.0.1 followed by
    /// the name; IPv6 destinations cannot be expressed (0x08). <paramref name="userId"/> is the USERID.
    /// </summary>
    public static async ValueTask Socks4aAsync(Stream stream, Destination destination, ReadOnlyMemory<byte> userId, string proxyName, CancellationToken ct)
    {
        var ip = destination.Address;
        if (ip is { IsIPv4MappedToIPv6: true }) ip = ip.MapToIPv4();
        if (ip is { AddressFamily: AddressFamily.InterNetworkV6 })
            throw new TransportConnectException(ConnectFailure.AddressTypeNotSupported, $"{proxyName}: SOCKS 4a cannot carry the IPv6 destination {destination}");
        if (userId.Length > 255) throw new ArgumentException("USERID longer than 255 bytes");
        byte[] buffer = ArrayPool<byte>.Shared.Rent(1024);
        try
        {
            int n = 0;
            buffer[n++] = 4; buffer[n++] = 1;
            BinaryPrimitives.WriteUInt16BigEndian(buffer.AsSpan(n), (ushort)destination.Port); n += 2;
            if (ip is not null) { ip.TryWriteBytes(buffer.AsSpan(n), out _); n += 4; }
            else { buffer[n++] = 0; buffer[n++] = 0; buffer[n++] = 0; buffer[n++] = 1; }
            userId.Span.CopyTo(buffer.AsSpan(n)); n += userId.Length;
            buffer[n++] = 0;
            if (ip is null)
            {
                n += Encoding.ASCII.GetBytes(destination.Host, buffer.AsSpan(n));
                buffer[n++] = 0;
            }
            await stream.WriteAsync(buffer.AsMemory(0, n), ct).ConfigureAwait(false);
            await ReadExactAsync(stream, buffer.AsMemory(0, 8), proxyName, ct).ConfigureAwait(false);
            if (buffer[0] != 0) throw Fail(ConnectFailure.General, proxyName, $"is not a SOCKS4 server (reply version {buffer[0]})");
            switch (buffer[1])
            {
                case 0x5A: return;
                case 0x5B: throw Fail(ConnectFailure.General, proxyName, $"rejected or failed the request to {destination} (5b)");
                case 0x5C: throw Fail(ConnectFailure.NotAllowed, proxyName, "could not reach our identd (5c)");
                case 0x5D: throw Fail(ConnectFailure.NotAllowed, proxyName, "rejected the user id (5d)");
                default: throw Fail(ConnectFailure.General, proxyName, $"sent an unknown SOCKS4 reply code {buffer[1]:x2}");
            }
        }
        finally { ArrayPool<byte>.Shared.Return(buffer); }
    }

    /// <summary>
    /// HTTP/1.1 CONNECT (RFC 9110 §9.3.6) with <c>Proxy-Authorization: Basic</c> (RFC 7617) when
    /// <paramref name="user"/> is set. A 2xx status is success; the header block is read up to its
    /// blank line and not one byte further.
    /// </summary>
    public static async ValueTask HttpConnectAsync(Stream stream, Destination destination, byte[]? user, byte[]? password, string proxyName, CancellationToken ct)
    {
        string authority = destination.ToString();
        var request = new StringBuilder()
            .Append("CONNECT ").Append(authority).Append(" HTTP/1.1\r\n")
            .Append("Host: ").Append(authority).Append("\r\n");
        if (user is not null)
        {
            byte[] pair = [.. user, (byte)':', .. password ?? []];
            request.Append("Proxy-Authorization: Basic ").Append(Convert.ToBase64String(pair)).Append("\r\n");
        }
        request.Append("\r\n");
        await stream.WriteAsync(Encoding.ASCII.GetBytes(request.ToString()), ct).ConfigureAwait(false);

        byte[] header = ArrayPool<byte>.Shared.Rent(MaxHttpHeader);
        try
        {
            int n = 0;
            int matched; // how much of CRLF CRLF the bytes read so far end with
            while ((matched = TerminatorSuffix(header.AsSpan(0, n))) < 4)
            {
                // Bytes after the blank line belong to the tunnel: never read past it. The blank
                // line cannot end sooner than 4 - matched bytes from here, so that many are safe.
                int want = Math.Min(4 - matched, MaxHttpHeader - n);
                if (want == 0) throw Fail(ConnectFailure.General, proxyName, $"sent a response header longer than {MaxHttpHeader} bytes");
                int got = await stream.ReadAsync(header.AsMemory(n, want), ct).ConfigureAwait(false);
                if (got == 0) throw Fail(ConnectFailure.General, proxyName, "closed the connection before answering CONNECT");
                n += got;
            }
            string head = Encoding.Latin1.GetString(header, 0, n);
            string statusLine = head[..head.IndexOf('\r')];
            // HTTP-version SP status-code SP [reason-phrase]
            var parts = statusLine.Split(' ', 3);
            if (parts.Length < 2 || !parts[0].StartsWith("HTTP/1.", StringComparison.Ordinal) || parts[1].Length != 3
                || !int.TryParse(parts[1], NumberStyles.None, CultureInfo.InvariantCulture, out int status))
                throw Fail(ConnectFailure.General, proxyName, $"sent a malformed status line \"{Printable(statusLine)}\"");
            if (status is >= 200 and < 300) return;
            var failure = status switch
            {
                401 or 403 or 407 => ConnectFailure.NotAllowed,
                404 or 502 => ConnectFailure.HostUnreachable,
                504 or 408 => ConnectFailure.TimedOut,
                _ => ConnectFailure.General,
            };
            throw Fail(failure, proxyName, $"answered CONNECT {authority} with \"{Printable(statusLine)}\"");
        }
        finally { ArrayPool<byte>.Shared.Return(header); }
    }

    /// <summary>The length of the longest end of <paramref name="read"/> that begins CR LF CR LF (4 = the whole terminator).</summary>
    private static int TerminatorSuffix(ReadOnlySpan<byte> read)
    {
        ReadOnlySpan<byte> terminator = "\r\n\r\n"u8;
        for (int m = Math.Min(4, read.Length); m > 0; m--)
            if (read[^m..].SequenceEqual(terminator[..m])) return m;
        return 0;
    }

    private static string Printable(string s) => new(s.Take(120).Select(c => c is < ' ' or > '~' ? '?' : c).ToArray());

    private static string Socks5ReplyName(byte rep) => rep switch
    {
        1 => "general failure",
        2 => "not allowed by ruleset",
        3 => "network unreachable",
        4 => "host unreachable",
        5 => "connection refused",
        6 => "TTL expired",
        7 => "command not supported",
        8 => "address type not supported",
        _ => $"reply {rep:x2}",
    };

    private static TransportConnectException Fail(ConnectFailure failure, string proxyName, string what) =>
        new(failure, $"{proxyName} {what}");

    private static async ValueTask ReadExactAsync(Stream stream, Memory<byte> buffer, string proxyName, CancellationToken ct)
    {
        try { await stream.ReadExactlyAsync(buffer, ct).ConfigureAwait(false); }
        catch (EndOfStreamException e)
        {
            throw new TransportConnectException(ConnectFailure.General, $"{proxyName} closed the connection during the handshake", e);
        }
    }
}
