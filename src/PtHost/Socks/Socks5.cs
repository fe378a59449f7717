using System.Buffers;
using System.Buffers.Binary;
using System.Net;
using System.Text;
using Newtonsoft.Json.Linq;
using PtHost.Contract;

namespace PtHost.Socks;

/// <summary>Wire constants of RFC 1928, RFC 1929 and the PT settings methods (spec/ipc.md §5).</summary>
public static class Socks5
{
    public const byte Version = 0x05;
    public const byte MethodNoAuth = 0x00;
    public const byte MethodUserPass = 0x02;
    public const byte MethodJsonParameters = 0x09;   // PT 2.1/3.0 "JSON Parameter Block"
    public const byte MethodPtPrivate = 0x80;        // PT 2.0 draft 2 private method
    public const byte MethodNoneAcceptable = 0xFF;
    public const byte UserPassVersion = 0x01;
    public const byte CmdConnect = 0x01;
    public const byte CmdUdpAssociate = 0x03;
    public const byte AtypIPv4 = 0x01;
    public const byte AtypDomain = 0x03;
    public const byte AtypIPv6 = 0x04;

    /// <summary>Largest settings block accepted (bytes of JSON).</summary>
    public const int MaxSettingsBytes = 64 * 1024;

    // Reply codes beyond RFC 1928's, from the PT 3.0 JSON Parameter Block, used in the CONNECT reply.
    public const byte ReplySucceeded = 0x00;
    public const byte ReplySettingsTooLarge = 0x10;
    public const byte ReplySettingsTimeout = 0x11;
    public const byte ReplySettingsBadJson = 0x12;
    public const byte ReplySettingsInvalidKeys = 0x13;

    /// <summary>The method PtHost picks from a greeting: 0x09, then 0x80, then 0x02, then 0x00; else 0xFF.</summary>
    public static byte ChooseMethod(ReadOnlySpan<byte> offered)
    {
        foreach (byte preferred in (ReadOnlySpan<byte>)[MethodJsonParameters, MethodPtPrivate, MethodUserPass, MethodNoAuth])
            if (offered.Contains(preferred)) return preferred;
        return MethodNoneAcceptable;
    }

    /// <summary>Writes a 10-byte reply <c>05 REP 00 01 0.0.0.0 0</c>, or with the given IPv4/IPv6 bound address.</summary>
    public static int WriteReply(Span<byte> destination, byte reply, IPEndPoint? bound = null)
    {
        destination[0] = Version;
        destination[1] = reply;
        destination[2] = 0;
        if (bound is not null && bound.Address.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6 && !bound.Address.IsIPv4MappedToIPv6)
        {
            destination[3] = AtypIPv6;
            bound.Address.TryWriteBytes(destination.Slice(4, 16), out _);
            BinaryPrimitives.WriteUInt16BigEndian(destination.Slice(20), (ushort)bound.Port);
            return 22;
        }
        destination[3] = AtypIPv4;
        var v4 = bound?.Address.IsIPv4MappedToIPv6 == true ? bound.Address.MapToIPv4() : bound?.Address;
        if (v4 is null || !v4.TryWriteBytes(destination.Slice(4, 4), out _)) destination.Slice(4, 4).Clear();
        BinaryPrimitives.WriteUInt16BigEndian(destination.Slice(8), (ushort)(bound?.Port ?? 0));
        return 10;
    }
}

/// <summary>What a parse step reports.</summary>
public enum ParseStatus
{
    /// <summary>More bytes are needed; nothing consumed.</summary>
    Incomplete,
    /// <summary>Parsed; the message's bytes are consumed.</summary>
    Done,
    /// <summary>Malformed; the error says what, and which reply to send.</summary>
    Invalid,
}

/// <summary>A malformed message: why, and the reply byte the protocol has for it.</summary>
public readonly record struct Socks5Error(byte Reply, string Message);

/// <summary>
/// Pure, allocation-light parsers for each SOCKS5 message (RFC 1928 §3–§5, RFC 1929 §2, PT settings
/// block). Each takes the buffered bytes and, when a whole message is there, says how far it reached.
/// </summary>
public static class Socks5Parser
{
    /// <summary>RFC 1928 §3: VER NMETHODS METHODS. A version other than 5 or zero methods is invalid.</summary>
    public static ParseStatus TryParseGreeting(ref ReadOnlySequence<byte> buffer, out byte chosenMethod, out Socks5Error error)
    {
        chosenMethod = Socks5.MethodNoneAcceptable;
        error = default;
        var reader = new SequenceReader<byte>(buffer);
        if (!reader.TryRead(out byte ver)) return ParseStatus.Incomplete;
        if (ver != Socks5.Version) { error = new(Socks5.MethodNoneAcceptable, $"greeting version {ver}, expected 5"); return ParseStatus.Invalid; }
        if (!reader.TryRead(out byte n)) return ParseStatus.Incomplete;
        if (n == 0) { error = new(Socks5.MethodNoneAcceptable, "greeting offers no methods"); return ParseStatus.Invalid; }
        if (reader.Remaining < n) return ParseStatus.Incomplete;
        Span<byte> methods = stackalloc byte[255];
        reader.TryCopyTo(methods[..n]);
        reader.Advance(n);
        chosenMethod = Socks5.ChooseMethod(methods[..n]);
        buffer = buffer.Slice(reader.Position);
        return ParseStatus.Done;
    }

    /// <summary>
    /// The settings block of methods 0x09/0x80: 4-byte big-endian length, then that many bytes of a
    /// UTF-8 JSON object. A length over <see cref="Socks5.MaxSettingsBytes"/> is invalid as soon as the
    /// length is read (0x10); bad UTF-8/JSON or a non-object is invalid once the block is consumed (0x12).
    /// A zero length means no settings.
    /// </summary>
    public static ParseStatus TryParseSettings(ref ReadOnlySequence<byte> buffer, out JObject? settings, out Socks5Error error)
    {
        settings = null;
        error = default;
        var reader = new SequenceReader<byte>(buffer);
        if (!reader.TryReadBigEndian(out int length)) return ParseStatus.Incomplete;
        if (length < 0 || length > Socks5.MaxSettingsBytes)
        {
            error = new(Socks5.ReplySettingsTooLarge, $"settings block of {(uint)length} bytes exceeds {Socks5.MaxSettingsBytes}");
            return ParseStatus.Invalid;
        }
        if (reader.Remaining < length) return ParseStatus.Incomplete;
        var block = buffer.Slice(reader.Position, length);
        buffer = buffer.Slice(block.End);
        if (length == 0) { settings = new JObject(); return ParseStatus.Done; }
        string text;
        try { text = Strict.GetString(block); }
        catch (DecoderFallbackException) { error = new(Socks5.ReplySettingsBadJson, "settings block is not UTF-8"); return ParseStatus.Invalid; }
        try
        {
            var token = StrictJson.Parse(text);
            settings = token as JObject;
            if (settings is null) { error = new(Socks5.ReplySettingsBadJson, $"settings block is a JSON {token.Type}, not an object"); return ParseStatus.Invalid; }
            return ParseStatus.Done;
        }
        catch (FormatException e)
        {
            error = new(Socks5.ReplySettingsBadJson, "settings block is not JSON (RFC 8259): " + e.Message);
            return ParseStatus.Invalid;
        }
    }

    /// <summary>RFC 1929 §2: VER(1) ULEN UNAME PLEN PASSWD. Returns the concatenated PT 1.0 argument string.</summary>
    public static ParseStatus TryParseUserPass(ref ReadOnlySequence<byte> buffer, out string? args, out Socks5Error error)
    {
        args = null;
        error = default;
        var reader = new SequenceReader<byte>(buffer);
        if (!reader.TryRead(out byte ver)) return ParseStatus.Incomplete;
        if (ver != Socks5.UserPassVersion) { error = new(0x01, $"username/password version {ver}, expected 1"); return ParseStatus.Invalid; }
        if (!reader.TryRead(out byte ulen)) return ParseStatus.Incomplete;
        if (reader.Remaining < ulen + 1) return ParseStatus.Incomplete;
        var uname = buffer.Slice(reader.Position, ulen);
        reader.Advance(ulen);
        reader.TryRead(out byte plen);
        if (reader.Remaining < plen) return ParseStatus.Incomplete;
        var passwd = buffer.Slice(reader.Position, plen);
        reader.Advance(plen);
        buffer = buffer.Slice(reader.Position);
        try
        {
            // pt-spec §3.5: a lone NUL password means "everything fitted in UNAME".
            string u = Strict.GetString(uname);
            string p = plen == 1 && passwd.FirstSpan[0] == 0 ? "" : Strict.GetString(passwd);
            args = u + p;
            return ParseStatus.Done;
        }
        catch (DecoderFallbackException)
        {
            error = new(0x01, "username/password are not UTF-8");
            return ParseStatus.Invalid;
        }
    }

    /// <summary>
    /// RFC 1928 §4: VER CMD RSV ATYP DST.ADDR DST.PORT. Commands other than CONNECT are invalid with
    /// reply 0x07 once the whole request is read; an unknown ATYP with 0x08 at once (its length is unknown).
    /// </summary>
    public static ParseStatus TryParseRequest(ref ReadOnlySequence<byte> buffer, out Destination? destination, out Socks5Error error) =>
        TryParseRequest(ref buffer, out destination, out _, udpAssociate: false, out error);

    /// <summary>
    /// As above; with <paramref name="udpAssociate"/> UDP ASSOCIATE (RFC 1928 §7) is accepted too, and
    /// <paramref name="command"/> says which was asked (spec/ipc.md §5.12).
    /// </summary>
    public static ParseStatus TryParseRequest(ref ReadOnlySequence<byte> buffer, out Destination? destination, out byte command, bool udpAssociate, out Socks5Error error)
    {
        destination = null;
        command = 0;
        error = default;
        var reader = new SequenceReader<byte>(buffer);
        if (reader.TryPeek(out byte first) && first != Socks5.Version) { error = new(0x01, $"request version {first}, expected 5"); return ParseStatus.Invalid; }
        if (reader.Remaining < 4) return ParseStatus.Incomplete;
        reader.TryRead(out byte ver);
        reader.TryRead(out byte cmd);
        reader.TryRead(out _); // RSV: ignored, as RFC 1928 gives it no meaning
        reader.TryRead(out byte atyp);
        if (ver != Socks5.Version) { error = new(0x01, $"request version {ver}, expected 5"); return ParseStatus.Invalid; }
        Span<byte> addr = stackalloc byte[16];
        string host;
        switch (atyp)
        {
            case Socks5.AtypIPv4:
                if (reader.Remaining < 4 + 2) return ParseStatus.Incomplete;
                reader.TryCopyTo(addr[..4]);
                reader.Advance(4);
                host = new IPAddress(addr[..4]).ToString();
                break;
            case Socks5.AtypIPv6:
                if (reader.Remaining < 16 + 2) return ParseStatus.Incomplete;
                reader.TryCopyTo(addr);
                reader.Advance(16);
                var v6 = new IPAddress(addr);
                host = (v6.IsIPv4MappedToIPv6 ? v6.MapToIPv4() : v6).ToString();
                break;
            case Socks5.AtypDomain:
                if (!reader.TryRead(out byte len)) return ParseStatus.Incomplete;
                if (reader.Remaining < len + 2) return ParseStatus.Incomplete;
                var name = buffer.Slice(reader.Position, len);
                reader.Advance(len);
                try { host = Strict.GetString(name); }
                catch (DecoderFallbackException) { host = ""; }
                // UDP ASSOCIATE's DST.ADDR only hints at the client's source (RFC 1928 §7; PySocks sends "0"): never refused.
                if (!Destination.IsValidHostName(host) && udpAssociate && cmd == Socks5.CmdUdpAssociate) host = "0.0.0.0";
                else if (!Destination.IsValidHostName(host))
                {
                    buffer = buffer.Slice(reader.Position).Slice(2);
                    error = new(0x04, "domain name is empty or has characters a host name cannot have");
                    return ParseStatus.Invalid;
                }
                break;
            default:
                error = new(0x08, $"address type {atyp} is not supported");
                return ParseStatus.Invalid;
        }
        reader.TryReadBigEndian(out short port);
        buffer = buffer.Slice(reader.Position);
        command = cmd;
        if (cmd != Socks5.CmdConnect && !(udpAssociate && cmd == Socks5.CmdUdpAssociate))
        {
            error = new(0x07, cmd switch { 2 => "BIND is not supported", 3 => "UDP ASSOCIATE is not supported: the transport cannot carry UDP", _ => $"command {cmd} is not supported" });
            return ParseStatus.Invalid;
        }
        destination = new Destination(host, (ushort)port);
        return ParseStatus.Done;
    }

    private static readonly UTF8Encoding Strict = new(false, true);
}
