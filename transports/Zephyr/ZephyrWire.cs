using System.Buffers.Binary;

namespace PtHost.Transports.Zephyr;

/// <summary>Why a bind request was refused (spec/zephyr.md §3).</summary>
public enum BindRequestError
{
    None,
    /// <summary>Fewer than 12 bytes.</summary>
    Truncated,
    /// <summary>The first 4 bytes are not <c>82 96 44 a1</c>.</summary>
    WrongMagic,
    /// <summary>The length field is not 4.</summary>
    WrongLength,
}

/// <summary>
/// Zephyr relay messages (spec/zephyr.md §2). Both have the same 12 bytes:
/// <c>magic 82 96 44 a1 | length u32 BE = 4 | zid u32 BE</c>. The relay sends the assignment
/// (the connection's own zid) right after accepting; the peer answers with a bind request naming
/// the zid it wants to be joined to. Nothing else is framed: raw bytes follow.
/// </summary>
public static class ZephyrWire
{
    public static ReadOnlySpan<byte> Magic => [0x82, 0x96, 0x44, 0xa1];

    /// <summary>Every message is this long: magic, length field, zid.</summary>
    public const int MessageLength = 12;

    /// <summary>The value of the length field: the zid's size.</summary>
    public const uint PayloadLength = 4;

    /// <summary>Zids are non-negative 32-bit integers (§2): at most 2^31 - 1.</summary>
    public const uint MaxZid = int.MaxValue;

    /// <summary>Writes the 12-byte assignment of <paramref name="zid"/> into <paramref name="destination"/>.</summary>
    public static void WriteAssignment(Span<byte> destination, uint zid) => Write(destination, zid);

    /// <summary>Writes the 12-byte bind request naming the peer <paramref name="peerZid"/>.</summary>
    public static void WriteBindRequest(Span<byte> destination, uint peerZid) => Write(destination, peerZid);

    public static byte[] BuildAssignment(uint zid)
    {
        var message = new byte[MessageLength];
        WriteAssignment(message, zid);
        return message;
    }

    public static byte[] BuildBindRequest(uint peerZid)
    {
        var message = new byte[MessageLength];
        WriteBindRequest(message, peerZid);
        return message;
    }

    /// <summary>
    /// Parses a bind request (§3). Only the header is checked here: whether the zid is the
    /// sender's own, unknown or already bound is the relay's business.
    /// </summary>
    public static BindRequestError ParseBindRequest(ReadOnlySpan<byte> message, out uint peerZid) => Parse(message, out peerZid);

    /// <summary>Parses an assignment as a peer does: the same checks as a bind request.</summary>
    public static BindRequestError ParseAssignment(ReadOnlySpan<byte> message, out uint zid) => Parse(message, out zid);

    private static void Write(Span<byte> destination, uint zid)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(destination.Length, MessageLength, nameof(destination));
        ArgumentOutOfRangeException.ThrowIfGreaterThan(zid, MaxZid);
        Magic.CopyTo(destination);
        BinaryPrimitives.WriteUInt32BigEndian(destination[4..], PayloadLength);
        BinaryPrimitives.WriteUInt32BigEndian(destination[8..], zid);
    }

    private static BindRequestError Parse(ReadOnlySpan<byte> message, out uint zid)
    {
        zid = 0;
        if (message.Length < MessageLength) return BindRequestError.Truncated;
        if (!message[..4].SequenceEqual(Magic)) return BindRequestError.WrongMagic;
        if (BinaryPrimitives.ReadUInt32BigEndian(message[4..]) != PayloadLength) return BindRequestError.WrongLength;
        zid = BinaryPrimitives.ReadUInt32BigEndian(message[8..]);
        return BindRequestError.None;
    }
}

/// <summary>Signal kinds of the zephyr transport (spec/zephyr.md §7.2).</summary>
internal static class ZephyrSignals
{
    public const string Offer = "zephyr.offer";
    public const string Answer = "zephyr.answer";
}
