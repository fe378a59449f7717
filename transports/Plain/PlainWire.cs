using System.Buffers.Binary;
using System.Text;
using PtHost.Contract;

namespace PtHost.Transports.Plain;

/// <summary>
/// The plain transport's preamble (spec/plain.md §2). Client → server:
/// <c>"PTP" 0x01 | u16 BE length | destination ("host:port" UTF-8, empty = the server's target)</c>;
/// server → client: one reply byte, a SOCKS5 reply code (0x00 = connected). Raw bytes follow both ways.
/// </summary>
public static class PlainWire
{
    public static ReadOnlySpan<byte> Magic => "PTP\x01"u8;
    public const int HeaderLength = 6;
    public const int MaxDestinationLength = 262;

    /// <summary>Builds the client's preamble.</summary>
    public static byte[] BuildRequest(Destination? destination)
    {
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
    public static int ParseHeader(ReadOnlySpan<byte> header)
    {
        if (header.Length < HeaderLength || !header[..4].SequenceEqual(Magic)) return -1;
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
}
