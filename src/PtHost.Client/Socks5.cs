using System.Buffers;
using System.Buffers.Binary;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.Json.Nodes;

namespace PtHost.Client;

/// <summary>The adapter's SOCKS5 handshake (spec/adapters.md §2.2): greeting, settings block and CONNECT in one write.</summary>
internal static class Socks5
{
    private static readonly IdnMapping s_idn = new();

    /// <summary>The bytes of the one write: <c>05 02 09 80</c>, LENGTH + JSON, <c>05 01 00 ATYP DST.ADDR DST.PORT</c>.</summary>
    public static byte[] Request(JsonObject? settings, EndPoint destination)
    {
        byte[] json = settings is null ? [] : Encoding.UTF8.GetBytes(settings.ToJsonString());
        var (atyp, addr, port) = Address(destination);
        var b = new byte[4 + 4 + json.Length + 4 + addr.Length + (atyp == 3 ? 1 : 0) + 2];
        b[0] = 5; b[1] = 2; b[2] = 0x09; b[3] = 0x80;
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(4), (uint)json.Length);
        json.CopyTo(b, 8);
        int o = 8 + json.Length;
        b[o++] = 5; b[o++] = 1; b[o++] = 0; b[o++] = atyp;
        if (atyp == 3) b[o++] = (byte)addr.Length;
        addr.CopyTo(b, o);
        o += addr.Length;
        BinaryPrimitives.WriteUInt16BigEndian(b.AsSpan(o), (ushort)port);
        return b;
    }

    private static (byte Atyp, byte[] Addr, int Port) Address(EndPoint destination)
    {
        switch (destination)
        {
            case IPEndPoint ip:
                var a = ip.Address.IsIPv4MappedToIPv6 ? ip.Address.MapToIPv4() : ip.Address;
                if (a.AddressFamily == AddressFamily.InterNetworkV6) a = new IPAddress(a.GetAddressBytes()); // drops the zone (§2.2)
                return (a.AddressFamily == AddressFamily.InterNetwork ? (byte)1 : (byte)4, a.GetAddressBytes(), ip.Port);
            case DnsEndPoint dns:
                if (IPAddress.TryParse(dns.Host.Split('%')[0], out var literal)) return Address(new IPEndPoint(literal, dns.Port));
                string ascii = dns.Host.All(char.IsAscii) ? dns.Host : s_idn.GetAscii(dns.Host);
                byte[] name = Encoding.ASCII.GetBytes(ascii);
                if (name.Length is 0 or > 255) throw new ArgumentException("a host name is 1-255 bytes", nameof(destination));
                return (3, name, dns.Port);
            default:
                throw new ArgumentException($"unsupported destination {destination}", nameof(destination));
        }
    }

    /// <summary>Sends the request and reads <c>05 METHOD</c> and the reply, never a byte past it (§2.2).</summary>
    public static async Task<IPEndPoint?> HandshakeAsync(Socket socket, JsonObject? settings, EndPoint destination, PtHostProcess? host, CancellationToken ct)
    {
        await socket.SendAsync(Request(settings, destination), SocketFlags.None, ct).ConfigureAwait(false);
        byte[] reply = ArrayPool<byte>.Shared.Rent(24);
        try
        {
            int have = await ReadAtLeastAsync(socket, reply, 0, 2, host, ct).ConfigureAwait(false);
            if (reply[0] != 5) throw new SocksException(0x01);
            if (reply[1] == 0xFF) throw new SocksException(0xFF);
            await ReadAtLeastAsync(socket, reply, 2, 10, host, ct).ConfigureAwait(false);
            if (reply[3] != 0) throw new SocksException(reply[3]);
            if (reply[5] == 4) await ReadAtLeastAsync(socket, reply, 12, 12, host, ct).ConfigureAwait(false);
            else if (reply[5] == 3) throw new SocksException(0x01); // pthost replies with an address (spec/ipc.md §5.6)
            _ = have;
            return reply[5] == 4
                ? new IPEndPoint(new IPAddress(reply.AsSpan(6, 16)), BinaryPrimitives.ReadUInt16BigEndian(reply.AsSpan(22)))
                : new IPEndPoint(new IPAddress(reply.AsSpan(6, 4)), BinaryPrimitives.ReadUInt16BigEndian(reply.AsSpan(10)));
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(reply);
        }
    }

    /// <summary>Reads exactly <paramref name="count"/> bytes at <paramref name="offset"/> (one byte at a time is never needed: the counts are exact).</summary>
    private static async Task<int> ReadAtLeastAsync(Socket socket, byte[] buffer, int offset, int count, PtHostProcess? host, CancellationToken ct)
    {
        int got = 0;
        while (got < count)
        {
            int n = await socket.ReceiveAsync(buffer.AsMemory(offset + got, count - got), SocketFlags.None, ct).ConfigureAwait(false);
            if (n == 0)
            {
                // An end of stream before the reply is complete is 01, unless pthost is exiting (§2.6).
                if (host is { IsExiting: true }) throw host.ExitError ?? (Exception)new PtHostDiedException(null);
                throw new SocksException(0x01);
            }
            got += n;
        }
        return got;
    }
}
