using System.Buffers;
using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text;
using PtHost.Socks;

namespace PtHost.ExtOrPort;

/// <summary>
/// Tor's Extended ORPort protocol (ext-orport-spec.txt): SAFE_COOKIE authentication and the
/// command frames a PT sends before the OR stream starts. Pure builders and parsers, no sockets.
/// </summary>
public static class ExtOrPortWire
{
    public const byte AuthSafeCookie = 0x01;
    public const byte AuthListEnd = 0x00;
    public const int NonceLength = 32;
    public const int HashLength = 32;
    public const int CookieLength = 32;

    /// <summary>The 32-byte header of the cookie file (ext-orport-spec §3.1).</summary>
    public static ReadOnlySpan<byte> CookieHeader => "! Extended ORPort Auth Cookie !\n"u8;
    public static ReadOnlySpan<byte> ServerHashContext => "ExtORPort authentication server-to-client hash"u8;
    public static ReadOnlySpan<byte> ClientHashContext => "ExtORPort authentication client-to-server hash"u8;

    // §4: commands from the PT (TB) and replies from the relay (BT).
    public const ushort CmdDone = 0x0000;
    public const ushort CmdUserAddr = 0x0001;
    public const ushort CmdTransport = 0x0002;
    public const ushort ReplyOkay = 0x1000;
    public const ushort ReplyDeny = 0x1001;
    public const ushort ReplyControl = 0x1002;

    /// <summary>Largest command body we accept from the relay.</summary>
    public const int MaxBodyLength = 4096;

    /// <summary>The cookie from a cookie file's bytes: exactly the 32-byte header, then 32 bytes.</summary>
    public static byte[] ParseCookieFile(ReadOnlySpan<byte> file)
    {
        if (file.Length != CookieHeader.Length + CookieLength)
            throw new FormatException($"cookie file is {file.Length} bytes, expected {CookieHeader.Length + CookieLength}");
        if (!file[..CookieHeader.Length].SequenceEqual(CookieHeader))
            throw new FormatException("cookie file does not start with \"! Extended ORPort Auth Cookie !\\n\"");
        return file[CookieHeader.Length..].ToArray();
    }

    /// <summary>HMAC-SHA256(cookie, context | ClientNonce | ServerNonce) (§3.1).</summary>
    public static void ComputeHash(ReadOnlySpan<byte> cookie, ReadOnlySpan<byte> context, ReadOnlySpan<byte> clientNonce, ReadOnlySpan<byte> serverNonce, Span<byte> hash)
    {
        Span<byte> message = stackalloc byte[64 + NonceLength * 2];
        context.CopyTo(message);
        clientNonce.CopyTo(message[context.Length..]);
        serverNonce.CopyTo(message[(context.Length + NonceLength)..]);
        HMACSHA256.HashData(cookie, message[..(context.Length + NonceLength * 2)], hash);
    }

    /// <summary>One command frame: TYPE(2) LENGTH(2) BODY. Returns the bytes written.</summary>
    public static int WriteCommand(Span<byte> destination, ushort command, ReadOnlySpan<byte> body)
    {
        if (body.Length > ushort.MaxValue) throw new ArgumentException("ExtORPort body longer than 65535 bytes", nameof(body));
        BinaryPrimitives.WriteUInt16BigEndian(destination, command);
        BinaryPrimitives.WriteUInt16BigEndian(destination[2..], (ushort)body.Length);
        body.CopyTo(destination[4..]);
        return 4 + body.Length;
    }

    /// <summary>
    /// The supported-auth-types list the relay sends first: bytes ending with 0. Done when the 0 has
    /// arrived; <paramref name="safeCookie"/> tells whether type 1 was offered. Invalid beyond 255 types.
    /// </summary>
    public static ParseStatus TryParseAuthTypes(ref ReadOnlySequence<byte> buffer, out bool safeCookie)
    {
        safeCookie = false;
        var reader = new SequenceReader<byte>(buffer);
        int count = 0;
        while (reader.TryRead(out byte type))
        {
            if (type == AuthListEnd)
            {
                buffer = buffer.Slice(reader.Position);
                return ParseStatus.Done;
            }
            if (type == AuthSafeCookie) safeCookie = true;
            if (++count > 255) return ParseStatus.Invalid;
        }
        safeCookie = false;
        return ParseStatus.Incomplete;
    }

    /// <summary>One command frame from the relay; bodies over <see cref="MaxBodyLength"/> are invalid.</summary>
    public static ParseStatus TryParseCommand(ref ReadOnlySequence<byte> buffer, out ushort command, out ReadOnlySequence<byte> body)
    {
        command = 0;
        body = default;
        var reader = new SequenceReader<byte>(buffer);
        if (!reader.TryReadBigEndian(out short type) || !reader.TryReadBigEndian(out short length)) return ParseStatus.Incomplete;
        command = (ushort)type;
        if ((ushort)length > MaxBodyLength) return ParseStatus.Invalid;
        if (reader.Remaining < (ushort)length) return ParseStatus.Incomplete;
        body = buffer.Slice(reader.Position, (ushort)length);
        buffer = buffer.Slice(body.End);
        return ParseStatus.Done;
    }

    /// <summary>USERADDR's body: <c>1.2.3.4:5678</c> or <c>[::1]:5678</c> in ASCII.</summary>
    public static byte[] UserAddrBody(System.Net.IPEndPoint remote)
    {
        var address = remote.Address.IsIPv4MappedToIPv6 ? remote.Address.MapToIPv4() : remote.Address;
        return Encoding.ASCII.GetBytes(new System.Net.IPEndPoint(address, remote.Port).ToString());
    }
}
