using System.Buffers.Binary;
using System.Text;

namespace PtHost.Contract;

/// <summary>
/// The session preamble every PtHost transport speaks inside its own channel (spec/session.md §2).
/// Client → server: <c>"PTP" 0x01 | u16 BE length | destination ("host:port" UTF-8, empty = the
/// server's target)</c>, or <c>"PTP" 0x81 00 00</c> for a UDP association; server → client: one reply
/// byte, a SOCKS5 reply code (0x00 = connected). Raw bytes follow both ways. The server side is the
/// host's (<see cref="IInboundHandler.ServeAsync(Stream, System.Net.EndPoint?, CancellationToken)"/>);
/// a transport's client side calls <see cref="RequestAsync"/>.
/// </summary>
public static class SessionPreamble
{
    /// <summary>The magic of a stream session: "PTP" and version 1.</summary>
    public static ReadOnlySpan<byte> Magic => "PTP\x01"u8;

    /// <summary>The magic of a UDP association: version 1 with the high bit set.</summary>
    public static ReadOnlySpan<byte> DatagramMagic => [0x50, 0x54, 0x50, 0x81];

    /// <summary>Magic and length.</summary>
    public const int HeaderLength = 6;

    /// <summary>The longest destination: a 255-byte name, brackets, colon and port.</summary>
    public const int MaxDestinationLength = 262;

    /// <summary>How long the server waits for the whole preamble, and for the reply byte to be written (spec/session.md §3).</summary>
    public static readonly TimeSpan Timeout = TimeSpan.FromSeconds(10);

    /// <summary>Builds the client's preamble.</summary>
    public static byte[] BuildRequest(Destination? destination, SessionKind kind = SessionKind.Stream)
    {
        if (kind == SessionKind.Datagram)
        {
            if (destination is not null) throw new ArgumentException("a UDP association names no destination", nameof(destination));
            return [.. DatagramMagic, 0, 0];
        }
        byte[] dest = destination is null ? [] : Encoding.UTF8.GetBytes(destination.ToString());
        if (dest.Length > MaxDestinationLength)
            throw new ArgumentException($"destination is {dest.Length} bytes; a preamble carries at most {MaxDestinationLength}", nameof(destination));
        var result = new byte[HeaderLength + dest.Length];
        Magic.CopyTo(result);
        BinaryPrimitives.WriteUInt16BigEndian(result.AsSpan(4), (ushort)dest.Length);
        dest.CopyTo(result, HeaderLength);
        return result;
    }

    /// <summary>Checks the fixed header; returns the destination length, or -1 when the header is not a preamble's.</summary>
    public static int ParseHeader(ReadOnlySpan<byte> header) => ParseHeader(header, out _);

    /// <summary>As <see cref="ParseHeader(ReadOnlySpan{byte})"/>, also telling a stream session from a UDP association.</summary>
    public static int ParseHeader(ReadOnlySpan<byte> header, out SessionKind kind)
    {
        kind = SessionKind.Stream;
        if (header.Length < HeaderLength) return -1;
        if (header[..4].SequenceEqual(DatagramMagic)) kind = SessionKind.Datagram;
        else if (!header[..4].SequenceEqual(Magic)) return -1;
        int length = BinaryPrimitives.ReadUInt16BigEndian(header[4..]);
        return length <= MaxDestinationLength ? length : -1;
    }

    private static readonly UTF8Encoding s_strictUtf8 = new(false, true);

    /// <summary>Parses the destination bytes; null for an empty one. Throws <see cref="FormatException"/>.</summary>
    public static Destination? ParseDestination(ReadOnlySpan<byte> bytes)
    {
        if (bytes.IsEmpty) return null;
        string text;
        try { text = s_strictUtf8.GetString(bytes); }
        catch (DecoderFallbackException) { throw new FormatException("destination is not UTF-8"); }
        return Destination.TryParse(text, out var d) && d.Port != 0 ? d : throw new FormatException($"destination \"{text}\" is not host:port");
    }

    /// <summary>
    /// Client side (spec/session.md §2) over any stream: sends the preamble and reads the reply byte.
    /// A refusal, or an end before the reply, throws <see cref="TransportConnectException"/> naming
    /// <paramref name="server"/>.
    /// </summary>
    public static async Task RequestAsync(Stream stream, Destination? far, string server, CancellationToken ct, SessionKind kind = SessionKind.Stream)
    {
        ArgumentNullException.ThrowIfNull(stream);
        await HandshakeWrite.WriteAsync(stream, BuildRequest(kind == SessionKind.Datagram ? null : far, kind), ct).ConfigureAwait(false);
        byte[] reply = new byte[1];
        if (await stream.ReadAsync(reply, ct).ConfigureAwait(false) != 1)
            throw new TransportConnectException(ConnectFailure.General, $"{server} closed before replying");
        if (reply[0] != 0)
        {
            var failure = Enum.IsDefined((ConnectFailure)reply[0]) ? (ConnectFailure)reply[0] : ConnectFailure.General;
            throw new TransportConnectException(failure, $"{server} could not reach {(far?.ToString() ?? "its target")} (reply 0x{reply[0]:x2})");
        }
    }

    /// <summary>
    /// The client side over a TCP connection of its own: dials <paramref name="server"/> with the
    /// host's dialer, then <see cref="RequestAsync"/>. Returns the connected stream; an I/O error
    /// becomes <see cref="TransportConnectException"/> (0x01) naming <paramref name="what"/>, and the
    /// connection is closed on any failure.
    /// </summary>
    /// <param name="dialer">The host's dialer (<see cref="TransportEnvironment.Dialer"/>).</param>
    /// <param name="server">The server process's address.</param>
    /// <param name="far">The destination to name in the preamble; null for the server's target.</param>
    /// <param name="kind">A stream session, or a UDP association.</param>
    /// <param name="what">How the server is named in errors, e.g. "server 192.0.2.1:443".</param>
    /// <param name="ct">Cancels the dial and the wait for the reply.</param>
    public static async Task<Stream> ConnectAsync(INetworkDialer dialer, Destination server, Destination? far, SessionKind kind, string what, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(dialer);
        var stream = await dialer.ConnectTcpAsync(server, ct).ConfigureAwait(false);
        try
        {
            await RequestAsync(stream, far, what, ct, kind).ConfigureAwait(false);
            return stream;
        }
        catch (Exception e) when (e is IOException or System.Net.Sockets.SocketException)
        {
            await stream.DisposeAsync().ConfigureAwait(false);
            throw new TransportConnectException(ConnectFailure.General, $"{what}: {e.Message}", e);
        }
        catch
        {
            await stream.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>
    /// Server side (spec/session.md §3): reads exactly the preamble, never a byte past it. Throws
    /// <see cref="InvalidDataException"/> when the header is not a preamble's (close without a reply);
    /// a destination that does not parse (or one a UDP association names) comes back in
    /// <see cref="SessionRequest.Error"/> (reply 08). A transport calls this only when it must see the
    /// preamble itself (jet's candidate race); otherwise the host reads it.
    /// </summary>
    public static async Task<SessionRequest> ReadAsync(Stream stream, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(stream);
        byte[] header = new byte[HeaderLength];
        await stream.ReadExactlyAsync(header, ct).ConfigureAwait(false);
        int length = ParseHeader(header, out var kind);
        if (length < 0) throw new InvalidDataException("not a session preamble");
        byte[] dest = new byte[length];
        await stream.ReadExactlyAsync(dest, ct).ConfigureAwait(false);
        if (kind == SessionKind.Datagram && length != 0) return new SessionRequest(null, kind) { Error = "a UDP association names no destination" };
        try { return new SessionRequest(ParseDestination(dest), kind); }
        catch (FormatException e) { return new SessionRequest(null, kind) { Error = e.Message }; }
    }
}

/// <summary>What a session's preamble asked for (spec/session.md §2).</summary>
/// <param name="Destination">Where a free server should connect; null for none (a bound server's target).</param>
/// <param name="Kind">A byte stream, or a UDP association carried in the stream (spec/turn.md §5).</param>
public sealed record SessionRequest(Destination? Destination, SessionKind Kind)
{
    /// <summary>Why the preamble is unusable although it is one (a malformed destination): the host replies 08.</summary>
    public string? Error { get; init; }
}
