using System.Buffers.Binary;
using System.Text;
using PtHost.Contract;

namespace PtHost.Transports.Plain;

/// <summary>
/// The plain transport's preamble (spec/plain.md §2). Client → server:
/// <c>"PTP" 0x01 | u16 BE length | destination ("host:port" UTF-8, empty = the server's target)</c>;
/// server → client: one reply byte, a SOCKS5 reply code (0x00 = connected). Raw bytes follow both ways.
/// A UDP association (spec/plain.md §2.5, spec/turn.md §5) sends <c>"PTP" 0x81</c> and no destination.
/// </summary>
public static class PlainWire
{
    public static ReadOnlySpan<byte> Magic => "PTP\x01"u8;
    /// <summary>The magic of a UDP association: version 1 with the high bit set.</summary>
    public static ReadOnlySpan<byte> DatagramMagic => [0x50, 0x54, 0x50, 0x81];
    public const int HeaderLength = 6;
    public const int MaxDestinationLength = 262;

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
            throw new ArgumentException($"destination is {dest.Length} bytes; plain carries at most {MaxDestinationLength}", nameof(destination));
        var result = new byte[HeaderLength + dest.Length];
        Magic.CopyTo(result);
        BinaryPrimitives.WriteUInt16BigEndian(result.AsSpan(4), (ushort)dest.Length);
        dest.CopyTo(result, HeaderLength);
        return result;
    }

    /// <summary>Checks the fixed header; returns the destination length, or -1 when the header is not plain's.</summary>
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

    /// <summary>Parses the destination bytes; null for an empty one. Throws <see cref="FormatException"/>.</summary>
    public static Destination? ParseDestination(ReadOnlySpan<byte> bytes)
    {
        if (bytes.IsEmpty) return null;
        string text;
        try { text = new UTF8Encoding(false, true).GetString(bytes); }
        catch (DecoderFallbackException) { throw new FormatException("destination is not UTF-8"); }
        return Destination.TryParse(text, out var d) && d.Port != 0 ? d : throw new FormatException($"destination \"{text}\" is not host:port");
    }

    /// <summary>
    /// Client side of §2 over any stream (plain's socket, zephyr's TLS): sends the preamble and reads
    /// the reply byte. A refusal, or an end before the reply, throws <see cref="TransportConnectException"/>
    /// naming <paramref name="server"/>.
    /// </summary>
    public static async Task RequestAsync(Stream stream, Destination? far, string server, CancellationToken ct, SessionKind kind = SessionKind.Stream)
    {
        await stream.WriteAsync(BuildRequest(kind == SessionKind.Datagram ? null : far, kind), ct).ConfigureAwait(false);
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
    /// Server side of §2: reads exactly the preamble (never a byte past it) and returns the
    /// destination, null for none. Throws <see cref="InvalidDataException"/> when the header is not
    /// plain's (close without a reply) and <see cref="FormatException"/> for a bad destination (reply 0x08).
    /// </summary>
    public static async Task<Destination?> ReadRequestAsync(Stream stream, CancellationToken ct) =>
        (await ReadPreambleAsync(stream, ct).ConfigureAwait(false)).Destination;

    /// <summary>
    /// As <see cref="ReadRequestAsync"/>, also returning the session kind. A UDP association that
    /// names a destination throws <see cref="FormatException"/> (reply 0x08).
    /// </summary>
    public static async Task<(Destination? Destination, SessionKind Kind)> ReadPreambleAsync(Stream stream, CancellationToken ct)
    {
        byte[] header = new byte[HeaderLength];
        await stream.ReadExactlyAsync(header, ct).ConfigureAwait(false);
        int length = ParseHeader(header, out var kind);
        if (length < 0) throw new InvalidDataException("not a plain preamble");
        if (kind == SessionKind.Datagram && length != 0) throw new FormatException("a UDP association names no destination");
        byte[] dest = new byte[length];
        await stream.ReadExactlyAsync(dest, ct).ConfigureAwait(false);
        return (ParseDestination(dest), kind);
    }
}

/// <summary>Signal kinds of the plain transport (spec/plain.md §3).</summary>
internal static class PlainSignals
{
    public const string Hello = "hello";
    public const string Server = "server";
}
