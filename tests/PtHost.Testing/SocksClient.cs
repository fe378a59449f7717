using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace PtHost.Testing;

/// <summary>A byte-level SOCKS5 client for tests: every message is written as the RFCs lay it out.</summary>
public sealed class SocksClient : IAsyncDisposable
{
    public Socket Socket { get; }
    public NetworkStream Stream { get; }

    private SocksClient(Socket s)
    {
        Socket = s;
        Stream = new NetworkStream(s, ownsSocket: true);
    }

    public static async Task<SocksClient> ConnectAsync(IPEndPoint proxy)
    {
        var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        await s.ConnectAsync(proxy);
        return new SocksClient(s);
    }

    public Task SendAsync(params byte[] bytes) => Stream.WriteAsync(bytes).AsTask();

    public async Task<byte[]> ReadExactlyAsync(int n, TimeSpan? timeout = null)
    {
        var buf = new byte[n];
        using var cts = new CancellationTokenSource(timeout ?? TimeSpan.FromSeconds(45));
        await Stream.ReadExactlyAsync(buf, cts.Token);
        return buf;
    }

    /// <summary>Reads until the peer closes (or the timeout), returning what arrived.</summary>
    public async Task<byte[]> ReadToEndAsync(TimeSpan? timeout = null)
    {
        using var cts = new CancellationTokenSource(timeout ?? TimeSpan.FromSeconds(20));
        var ms = new MemoryStream();
        var buf = new byte[65536];
        try
        {
            int n;
            while ((n = await Stream.ReadAsync(buf, cts.Token)) > 0) ms.Write(buf, 0, n);
        }
        catch (IOException) { }
        return ms.ToArray();
    }

    public static byte[] Greeting(params byte[] methods) => [5, (byte)methods.Length, .. methods];

    public static byte[] SettingsBlock(string json)
    {
        var body = Encoding.UTF8.GetBytes(json);
        var b = new byte[4 + body.Length];
        BinaryPrimitives.WriteInt32BigEndian(b, body.Length);
        body.CopyTo(b, 4);
        return b;
    }

    public static byte[] ConnectIPv4(IPAddress ip, int port) => ConnectIp(ip, port, atyp: 1, length: 4);

    public static byte[] ConnectIPv6(IPAddress ip, int port) => ConnectIp(ip, port, atyp: 4, length: 16);

    /// <summary>VER 5, CMD CONNECT, RSV 0, ATYP, the address bytes, the port big-endian (RFC 1928 §4).</summary>
    private static byte[] ConnectIp(IPAddress ip, int port, byte atyp, int length)
    {
        var b = new byte[4 + length + 2];
        b[0] = 5; b[1] = 1; b[2] = 0; b[3] = atyp;
        Assert.True(ip.TryWriteBytes(b.AsSpan(4, length), out _), $"{ip} is not a {length}-byte address");
        BinaryPrimitives.WriteUInt16BigEndian(b.AsSpan(4 + length), (ushort)port);
        return b;
    }

    public static byte[] ConnectDomain(string host, int port, byte command = 1)
    {
        var name = Encoding.ASCII.GetBytes(host);
        var b = new byte[7 + name.Length];
        b[0] = 5; b[1] = command; b[2] = 0; b[3] = 3; b[4] = (byte)name.Length;
        name.CopyTo(b, 5);
        BinaryPrimitives.WriteUInt16BigEndian(b.AsSpan(5 + name.Length), (ushort)port);
        return b;
    }

    public static byte[] UserPass(string user, string pass)
    {
        var u = Encoding.UTF8.GetBytes(user);
        var p = Encoding.UTF8.GetBytes(pass);
        return [1, (byte)u.Length, .. u, (byte)p.Length, .. p];
    }

    /// <summary>Reads a CONNECT reply and returns its REP byte.</summary>
    public async Task<byte> ReadReplyAsync()
    {
        var head = await ReadExactlyAsync(4);
        Assert.Equal(5, head[0]);
        int rest = head[3] switch { 1 => 4 + 2, 4 => 16 + 2, _ => throw new InvalidDataException($"reply ATYP {head[3]}") };
        await ReadExactlyAsync(rest);
        return head[1];
    }

    public ValueTask DisposeAsync() => Stream.DisposeAsync();
}
