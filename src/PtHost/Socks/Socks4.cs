using System.Buffers;
using System.Buffers.Binary;
using System.Net;
using System.Text;
using PtHost.Contract;

namespace PtHost.Socks;

/// <summary>
/// SOCKS4 and SOCKS4a (the "SOCKS 4A" extension): a PT 1.0 client may carry its per-connection
/// arguments in USERID (pt-spec §3.5). The front end answers version 4 requests on the same port
/// as SOCKS5 (spec/ipc.md §5.11).
/// </summary>
public static class Socks4
{
    public const byte Version = 0x04;
    public const byte CmdConnect = 0x01;
    public const byte ReplyVersion = 0x00;
    public const byte ReplyGranted = 0x5A;   // 90
    public const byte ReplyRejected = 0x5B;  // 91

    /// <summary>Longest USERID accepted: PT arguments (an obfs4 cert is ~70 bytes) with ample room.</summary>
    public const int MaxUserIdBytes = 4096;

    /// <summary>
    /// VN(4) CD DSTPORT(2) DSTIP(4) USERID NUL [HOST NUL when DSTIP is 0.0.0.x, x ≠ 0]. Commands
    /// other than CONNECT are invalid once the request is read; an over-long USERID or host at once.
    /// </summary>
    public static ParseStatus TryParseRequest(ref ReadOnlySequence<byte> buffer, out Destination? destination, out string? userId, out Socks5Error error)
    {
        destination = null;
        userId = null;
        error = default;
        var reader = new SequenceReader<byte>(buffer);
        if (reader.TryPeek(out byte first) && first != Version) { error = new(ReplyRejected, $"request version {first}, expected 4"); return ParseStatus.Invalid; }
        if (reader.Remaining < 8) return ParseStatus.Incomplete;
        Span<byte> head = stackalloc byte[8];
        reader.TryCopyTo(head);
        reader.Advance(8);
        byte cmd = head[1];
        ushort port = BinaryPrimitives.ReadUInt16BigEndian(head[2..]);
        if (!reader.TryReadTo(out ReadOnlySequence<byte> user, 0, advancePastDelimiter: true))
        {
            if (reader.Remaining > MaxUserIdBytes) { error = new(ReplyRejected, $"USERID longer than {MaxUserIdBytes} bytes"); return ParseStatus.Invalid; }
            return ParseStatus.Incomplete;
        }
        if (user.Length > MaxUserIdBytes) { error = new(ReplyRejected, $"USERID longer than {MaxUserIdBytes} bytes"); return ParseStatus.Invalid; }
        string host;
        bool is4a = head[4] == 0 && head[5] == 0 && head[6] == 0 && head[7] != 0;
        if (is4a)
        {
            if (!reader.TryReadTo(out ReadOnlySequence<byte> name, 0, advancePastDelimiter: true))
            {
                if (reader.Remaining > 255) { error = new(ReplyRejected, "SOCKS4a host name longer than 255 bytes"); return ParseStatus.Invalid; }
                return ParseStatus.Incomplete;
            }
            try { host = Strict.GetString(name); }
            catch (DecoderFallbackException) { host = ""; }
            buffer = buffer.Slice(reader.Position);
            if (!Destination.IsValidHostName(host)) { error = new(ReplyRejected, "SOCKS4a host name is empty or not a host name"); return ParseStatus.Invalid; }
        }
        else
        {
            host = new IPAddress(head.Slice(4, 4)).ToString();
            buffer = buffer.Slice(reader.Position);
        }
        try { userId = Strict.GetString(user); }
        catch (DecoderFallbackException) { error = new(ReplyRejected, "USERID is not UTF-8"); return ParseStatus.Invalid; }
        if (cmd != CmdConnect) { error = new(ReplyRejected, cmd == 2 ? "BIND is not supported" : $"command {cmd} is not supported"); return ParseStatus.Invalid; }
        if (port == 0) { error = new(ReplyRejected, "destination port 0"); return ParseStatus.Invalid; }
        destination = new Destination(host, port);
        return ParseStatus.Done;
    }

    /// <summary>Writes the 8-byte reply <c>00 CD DSTPORT DSTIP</c> (the bound IPv4 address when known).</summary>
    public static int WriteReply(Span<byte> destination, byte code, IPEndPoint? bound = null)
    {
        destination[0] = ReplyVersion;
        destination[1] = code;
        var v4 = bound?.Address.IsIPv4MappedToIPv6 == true ? bound.Address.MapToIPv4() : bound?.Address;
        if (v4 is null || v4.AddressFamily != System.Net.Sockets.AddressFamily.InterNetwork)
        {
            destination.Slice(2, 6).Clear();
            return 8;
        }
        BinaryPrimitives.WriteUInt16BigEndian(destination[2..], (ushort)bound!.Port);
        v4.TryWriteBytes(destination.Slice(4, 4), out _);
        return 8;
    }

    private static readonly UTF8Encoding Strict = new(false, true);
}
