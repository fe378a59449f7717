using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using Newtonsoft.Json.Linq;

namespace PtHost.Reliability.Support;

/// <summary>SOCKS5 sessions through a chain, as an application opens them.</summary>
public static class Sessions
{
    /// <summary>A chain with a free server (allow 127.0.0.1) and a client that knows the server's address.</summary>
    public static Task<PtChain> StartPlainChainAsync(JObject? server = null) =>
        PtChain.StartAsync(server ?? PtChain.FreeServer(), ep => PtChain.ClientWith(new JObject { ["serverAddress"] = ep.ToString() }));

    /// <summary>Greeting (no authentication) and CONNECT to 127.0.0.1:<paramref name="port"/>, sent together; returns the reply code and the client.</summary>
    public static async Task<(byte Reply, SocksClient Client)> ConnectAsync(IPEndPoint socks, int port, TimeSpan? timeout = null)
    {
        var c = await SocksClient.ConnectAsync(socks);
        try
        {
            await c.SendAsync([.. SocksClient.Greeting(0x00), .. SocksClient.ConnectIPv4(IPAddress.Loopback, port)]);
            var method = await c.ReadExactlyAsync(2, timeout);
            Assert.Equal(new byte[] { 5, 0 }, method);
            var head = await c.ReadExactlyAsync(4, timeout);
            Assert.Equal(5, head[0]);
            await c.ReadExactlyAsync(head[3] == 4 ? 18 : 6, timeout);
            return (head[1], c);
        }
        catch
        {
            await c.DisposeAsync();
            throw;
        }
    }

    /// <summary>Opens a session to an echo server, sends <paramref name="size"/> random bytes, half-closes, and checks the echo by SHA-256.</summary>
    public static async Task EchoRoundTripAsync(IPEndPoint socks, int echoPort, int size, CancellationToken ct = default)
    {
        var (reply, c) = await ConnectAsync(socks, echoPort);
        await using (c)
        {
            Assert.Equal(0, reply);
            var data = RandomNumberGenerator.GetBytes(size);
            var reader = ReadAllAsync(c.Socket, ct);
            await c.Stream.WriteAsync(data, ct);
            c.Socket.Shutdown(SocketShutdown.Send);
            var back = await reader;
            Assert.Equal(SHA256.HashData(data), SHA256.HashData(back));
        }
    }

    /// <summary>Reads until EOF; an error propagates.</summary>
    public static async Task<byte[]> ReadAllAsync(Socket s, CancellationToken ct)
    {
        var ms = new MemoryStream();
        var buf = new byte[64 * 1024];
        int n;
        while ((n = await s.ReceiveAsync(buf, SocketFlags.None, ct)) > 0) ms.Write(buf, 0, n);
        return ms.ToArray();
    }

    /// <summary>Waits until the peer ends the connection (EOF or reset); false if it is still open after <paramref name="within"/>.</summary>
    public static async Task<bool> EndsWithinAsync(Socket s, TimeSpan within)
    {
        using var cts = new CancellationTokenSource(within);
        var buf = new byte[4096];
        try
        {
            while (await s.ReceiveAsync(buf, SocketFlags.None, cts.Token) > 0) { }
            return true;
        }
        catch (OperationCanceledException) { return false; }
        catch (SocketException) { return true; }
        catch (ObjectDisposedException) { return true; }
    }

    /// <summary>Closes with RST (SO_LINGER 0).</summary>
    public static void Abort(Socket s)
    {
        try { s.LingerState = new LingerOption(true, 0); } catch (SocketException) { }
        s.Close();
    }
}
