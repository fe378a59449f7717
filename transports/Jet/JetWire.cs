using System.Buffers.Binary;
using System.Globalization;
using System.Text;

namespace PtHost.Transports.Jet;

/// <summary>Why a JET_PACKET header is unusable (spec/jet.md §2).</summary>
public enum JetPacketError
{
    None,
    /// <summary>Fewer than 8 bytes: not an error yet, read more.</summary>
    Incomplete,
    /// <summary>The first 4 bytes are not <c>4A 45 54 00</c>.</summary>
    BadSignature,
    /// <summary>The size field is below 8 (it counts the header itself).</summary>
    SizeTooSmall,
}

/// <summary>The three operations of the v2 request path, and what v1's <c>Jet-Method</c> selects (spec/jet.md §3).</summary>
public enum JetMethod
{
    Accept,
    Connect,
    Test,
}

/// <summary>
/// A parsed JET request (spec/jet.md §3). <see cref="Association"/> is empty for a v1 accept, which gets a new one.
/// <see cref="Authorization"/>: the <c>Authorization</c> header, which an accept that creates an association needs when the relay has an API key (§5.5).
/// </summary>
public sealed record JetRequest(JetMethod Method, int Version, Guid Association, Guid Candidate, bool IsV1, string? Authorization = null);

/// <summary>A parsed JET response (spec/jet.md §4): the status code and the headers, names as sent.</summary>
public sealed record JetResponse(int Status, IReadOnlyList<KeyValuePair<string, string>> Headers)
{
    /// <summary>The first header of that name (case-insensitive), or null.</summary>
    public string? Header(string name)
    {
        foreach (var h in Headers)
            if (string.Equals(h.Key, name, StringComparison.OrdinalIgnoreCase)) return h.Value;
        return null;
    }
}

/// <summary>
/// The JET wire format (spec/jet.md §2–4): the 8-byte JET_PACKET header
/// (<c>"JET" 00 | u16 BE size incl. header | flags | mask</c>) and its payload, an HTTP/1.1-like
/// request or response with every byte XORed with the mask. Pure functions over spans.
/// </summary>
public static class JetWire
{
    public static ReadOnlySpan<byte> Signature => "JET\0"u8;
    public const int HeaderLength = 8;
    public const int MaxPacketSize = ushort.MaxValue;
    public const int MaxPayload = MaxPacketSize - HeaderLength; // 65527
    /// <summary>The mask the reference writes; readers take the mask from the header.</summary>
    public const byte DefaultMask = 0x73;
    /// <summary>Most header lines a request may carry (§3.1).</summary>
    public const int MaxHeaders = 16;

    /// <summary>Checks the header; on success <paramref name="size"/> is the whole packet's size (≥ 8) and <paramref name="mask"/> its mask.</summary>
    public static JetPacketError ParseHeader(ReadOnlySpan<byte> data, out int size, out byte mask)
    {
        size = 0;
        mask = 0;
        // A wrong signature is known from its first differing byte; no need to wait for 8.
        int known = Math.Min(data.Length, 4);
        if (!data[..known].SequenceEqual(Signature[..known])) return JetPacketError.BadSignature;
        if (data.Length < HeaderLength) return JetPacketError.Incomplete;
        size = BinaryPrimitives.ReadUInt16BigEndian(data[4..]);
        // data[6] is flags: written 0, ignored on read.
        mask = data[7];
        return size < HeaderLength ? JetPacketError.SizeTooSmall : JetPacketError.None;
    }

    /// <summary>XORs every byte with <paramref name="mask"/> (masking and unmasking are the same).</summary>
    public static void ApplyMask(Span<byte> payload, byte mask)
    {
        if (mask == 0) return;
        for (int i = 0; i < payload.Length; i++) payload[i] ^= mask;
    }

    /// <summary>A packet carrying <paramref name="text"/> (ASCII), masked with <paramref name="mask"/>.</summary>
    public static byte[] BuildPacket(string text, byte mask = DefaultMask)
    {
        int length = Encoding.ASCII.GetByteCount(text);
        if (length > MaxPayload) throw new ArgumentException($"payload is {length} bytes; a JET packet carries at most {MaxPayload}", nameof(text));
        var packet = new byte[HeaderLength + length];
        Signature.CopyTo(packet);
        BinaryPrimitives.WriteUInt16BigEndian(packet.AsSpan(4), (ushort)packet.Length);
        packet[6] = 0;
        packet[7] = mask;
        Encoding.ASCII.GetBytes(text, packet.AsSpan(HeaderLength));
        ApplyMask(packet.AsSpan(HeaderLength), mask);
        return packet;
    }

    /// <summary>The v2 request (§3.2): <c>GET /jet/{method}/{aid}/{cid} HTTP/1.1</c> with Host, Connection and <c>Jet-Version: 2</c>.</summary>
    public static string BuildRequest(JetMethod method, Guid association, Guid candidate, string host) =>
        $"GET /jet/{MethodName(method)}/{association:D}/{candidate:D} HTTP/1.1\r\nHost: {host}\r\n" +
        $"Connection: {(method == JetMethod.Test ? "Close" : "Keep-Alive")}\r\nJet-Version: 2\r\n\r\n";

    /// <summary>The v1 accept request (§3.3).</summary>
    public static string BuildV1Accept(string host) => $"GET / HTTP/1.1\r\nHost: {host}\r\nJet-Method: Accept\r\nJet-Version: 1\r\n\r\n";

    /// <summary>The v1 connect request (§3.3).</summary>
    public static string BuildV1Connect(string host, Guid association) =>
        $"GET / HTTP/1.1\r\nHost: {host}\r\nJet-Method: Connect\r\nJet-Version: 1\r\nJet-Association: {association:D}\r\n\r\n";

    /// <summary>A response (§4): status line, the headers given, an empty line.</summary>
    public static string BuildResponse(int status, params ReadOnlySpan<KeyValuePair<string, string>> headers)
    {
        var sb = new StringBuilder(64);
        sb.Append("HTTP/1.1 ").Append(status.ToString(CultureInfo.InvariantCulture)).Append(' ').Append(ReasonPhrase(status)).Append("\r\n");
        foreach (var h in headers) sb.Append(h.Key).Append(": ").Append(h.Value).Append("\r\n");
        return sb.Append("\r\n").ToString();
    }

    public static string MethodName(JetMethod method) => method switch
    {
        JetMethod.Accept => "accept",
        JetMethod.Connect => "connect",
        _ => "test",
    };

    public static string ReasonPhrase(int status) => status switch
    {
        101 => "Switching Protocols",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Status",
    };

    /// <summary>
    /// Parses an unmasked request payload (§3). Returns 0 and the request, or the status code the
    /// relay answers with: 400 malformed, 405 not GET, 431 more than <see cref="MaxHeaders"/> headers,
    /// 404 a path that is neither <c>/</c> nor <c>/jet/{accept|connect|test}/{aid}/{cid}</c>.
    /// </summary>
    public static int ParseRequest(ReadOnlySpan<byte> payload, out JetRequest? request, out string? problem)
    {
        request = null;
        if (!TryParseMessage(payload, out string startLine, out var headers, out problem)) return problem == TooManyHeaders ? 431 : 400;
        string[] parts = startLine.Split(' ');
        if (parts.Length != 3 || !parts[2].StartsWith("HTTP/1.", StringComparison.Ordinal) || parts[1].Length == 0 || parts[1][0] != '/')
        {
            problem = "request line is not \"GET path HTTP/1.x\"";
            return 400;
        }
        if (parts[0] != "GET")
        {
            problem = $"method {parts[0]} (only GET)";
            return 405;
        }
        string path = parts[1].ToLowerInvariant();
        string? host = Find(headers, "Host"), versionText = Find(headers, "Jet-Version");
        int version = 0;
        if (versionText is not null && !int.TryParse(versionText, NumberStyles.None, CultureInfo.InvariantCulture, out version))
        {
            problem = $"Jet-Version \"{versionText}\" is not a number";
            return 400;
        }

        if (path == "/")
        {
            // v1 (§3.3): Jet-Method accept, anything else is connect and names Jet-Association.
            string? method = Find(headers, "Jet-Method");
            if (method is null)
            {
                problem = "v1 request without Jet-Method";
                return 400;
            }
            if (versionText is null) version = 1;
            if (method.Equals("accept", StringComparison.OrdinalIgnoreCase))
            {
                request = new JetRequest(JetMethod.Accept, version, Guid.Empty, Guid.Empty, IsV1: true, Find(headers, "Authorization"));
                return 0;
            }
            if (!Guid.TryParse(Find(headers, "Jet-Association"), out var aid))
            {
                problem = "v1 connect without a valid Jet-Association";
                return 400;
            }
            request = new JetRequest(JetMethod.Connect, version, aid, Guid.Empty, IsV1: true);
            return 0;
        }

        if (!TryParsePath(path, out var op, out var association, out var candidate, out problem)) return 404;
        if (host is null)
        {
            problem = "no Host header";
            return 400;
        }
        if (versionText is null)
        {
            problem = "no Jet-Version header";
            return 400;
        }
        request = new JetRequest(op, version, association, candidate, IsV1: false, Find(headers, "Authorization"));
        return 0;
    }

    /// <summary>
    /// Parses <c>/jet/{accept|connect|test}/{aid}/{cid}</c> (already lowercased) — the path of the
    /// binary request and of the WebSocket upgrade alike (§3.2, §6).
    /// </summary>
    public static bool TryParsePath(string path, out JetMethod method, out Guid association, out Guid candidate, out string? problem)
    {
        method = default;
        association = candidate = Guid.Empty;
        problem = null;
        string[] segments = path.Split('/');
        if (segments.Length != 5 || segments[0].Length != 0 || !segments[1].Equals("jet", StringComparison.OrdinalIgnoreCase))
        {
            problem = $"path {Truncate(path)} is not /jet/{{accept|connect|test}}/{{association}}/{{candidate}}";
            return false;
        }
        switch (segments[2].ToLowerInvariant())
        {
            case "accept": method = JetMethod.Accept; break;
            case "connect": method = JetMethod.Connect; break;
            case "test": method = JetMethod.Test; break;
            default:
                problem = $"unknown operation \"{Truncate(segments[2])}\"";
                return false;
        }
        if (!Guid.TryParseExact(segments[3], "D", out association) || !Guid.TryParseExact(segments[4], "D", out candidate))
        {
            problem = "association or candidate is not a UUID";
            return false;
        }
        return true;
    }

    /// <summary>
    /// Parses an unmasked response payload (§4). The status line is read leniently: <c>HTTP/1.x</c>,
    /// a 3-digit code, then anything (the reference writes <c>HTTP/1.1 200 OK 200</c>).
    /// </summary>
    public static bool TryParseResponse(ReadOnlySpan<byte> payload, out JetResponse? response, out string? problem)
    {
        response = null;
        if (!TryParseMessage(payload, out string statusLine, out var headers, out problem)) return false;
        if (!statusLine.StartsWith("HTTP/1.", StringComparison.Ordinal) || statusLine.Length < 12 || statusLine[8] != ' '
            || !int.TryParse(statusLine.AsSpan(9, 3), NumberStyles.None, CultureInfo.InvariantCulture, out int status)
            || (statusLine.Length > 12 && statusLine[12] != ' '))
        {
            problem = $"status line \"{Truncate(statusLine)}\" is not \"HTTP/1.x NNN ...\"";
            return false;
        }
        response = new JetResponse(status, headers);
        return true;
    }

    private const string TooManyHeaders = "more than 16 headers";

    /// <summary>Start line and headers of an HTTP/1.1-like message ending with an empty line; ASCII only.</summary>
    private static bool TryParseMessage(ReadOnlySpan<byte> payload, out string startLine, out List<KeyValuePair<string, string>> headers, out string? problem)
    {
        startLine = "";
        headers = [];
        problem = null;
        foreach (byte b in payload)
        {
            if (b >= 0x80 || (b < 0x20 && b is not (byte)'\r' and not (byte)'\n' and not (byte)'\t'))
            {
                problem = "payload is not printable ASCII (wrong mask?)";
                return false;
            }
        }
        string text = Encoding.ASCII.GetString(payload);
        int end = text.IndexOf("\r\n\r\n", StringComparison.Ordinal);
        if (end < 0)
        {
            problem = "no empty line ending the header block";
            return false;
        }
        if (end + 4 != text.Length)
        {
            problem = "bytes after the header block inside the packet";
            return false;
        }
        string[] lines = text[..end].Split("\r\n");
        startLine = lines[0];
        if (lines.Length - 1 > MaxHeaders)
        {
            problem = TooManyHeaders;
            return false;
        }
        for (int i = 1; i < lines.Length; i++)
        {
            int colon = lines[i].IndexOf(':');
            if (colon <= 0 || lines[i].AsSpan(0, colon).ContainsAny(' ', '\t'))
            {
                problem = $"header line \"{Truncate(lines[i])}\" is not \"Name: value\"";
                return false;
            }
            headers.Add(new(lines[i][..colon], lines[i][(colon + 1)..].Trim()));
        }
        return true;
    }

    private static string? Find(List<KeyValuePair<string, string>> headers, string name)
    {
        foreach (var h in headers)
            if (string.Equals(h.Key, name, StringComparison.OrdinalIgnoreCase)) return h.Value;
        return null;
    }

    private static string Truncate(string s) => s.Length <= 64 ? s : s[..64] + "…";
}

/// <summary>Signal kinds of the jet transport (spec/jet.md §7.2).</summary>
internal static class JetSignals
{
    public const string Offer = "jet.offer";
    public const string Answer = "jet.answer";
}
