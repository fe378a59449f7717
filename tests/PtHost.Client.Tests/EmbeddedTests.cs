using System.Globalization;
using System.Net;
using System.Text;
using Newtonsoft.Json.Linq;
using PtHost.Contract;
using PtHost.Embedded;

namespace PtHost.Client.Tests;

/// <summary>The in-process host (spec/adapters.md §5.8): HttpClient over the transports' own streams, with no SOCKS listener.</summary>
public sealed class EmbeddedTests
{
    /// <summary>The local ports of this process's listening TCP sockets (state 0A).</summary>
    private static HashSet<int> ListeningPorts() => SocketPorts(["/proc/self/net/tcp", "/proc/self/net/tcp6"], "0A");

    /// <summary>The local ports of this process's UDP sockets, bound or connected.</summary>
    private static HashSet<int> UdpPorts() => SocketPorts(["/proc/self/net/udp", "/proc/self/net/udp6"], null);

    /// <summary>The local ports of <paramref name="tables"/>' rows (in <paramref name="state"/> if given) whose inode is one of /proc/self/fd.</summary>
    private static HashSet<int> SocketPorts(string[] tables, string? state)
    {
        var inodes = new HashSet<string>();
        foreach (var fd in Directory.EnumerateFileSystemEntries("/proc/self/fd"))
        {
            try
            {
                if (new FileInfo(fd).LinkTarget is { } target && target.StartsWith("socket:[", StringComparison.Ordinal)) inodes.Add(target[8..^1]);
            }
            catch (IOException) { }
        }
        var ports = new HashSet<int>();
        foreach (var table in tables)
            foreach (var row in File.ReadLines(table).Skip(1))
            {
                var f = row.Split(' ', StringSplitOptions.RemoveEmptyEntries);
                if ((state is null || f[3] == state) && inodes.Contains(f[9])) ports.Add(int.Parse(f[1].Split(':')[1], NumberStyles.HexNumber, CultureInfo.InvariantCulture));
            }
        return ports;
    }

    private static JObject PlainClient(IPEndPoint server) => new()
    {
        ["transports"] = new JArray("plain"),
        ["options"] = new JObject { ["plain"] = new JObject { ["serverAddress"] = server.ToString() } },
    };

    [Fact]
    public async Task OneThousandDatagramsEchoInProcessWithNoSocketOfTheHost()
    {
        await using var echo = new UdpEcho();
        await using var server = await Support.FreePlainServerAsync(); // a pthost process: its sockets are not ours
        await using var client = await EmbeddedClient.StartAsync(PlainClient(server.EndPoint));
        await using var udp = await client.CreateUdpClientAsync("plain");
        Assert.NotEqual(0, udp.RelayedEndPoint.Port); // the server process's UDP socket (spec/turn.md §5.4)

        int echoed = await Support.EchoDatagramsAsync(1000, echo.EndPoint, d => udp.SendAsync(d, echo.EndPoint), ct => udp.ReceiveAsync(ct));

        Assert.Equal(1000, echoed);
        // No TURN listener, no UDP socket of the host: the only UDP socket here is the echo peer's, and nothing listens.
        Assert.Equal([echo.Port], UdpPorts());
        Assert.Empty(ListeningPorts());
        var stats = client.GetStats("plain");
        Assert.True(stats.SessionsOpened == 1 && stats.BytesIn >= 1000 * 200 && stats.BytesOut >= 1000 * 200, stats.ToString());
    }

    [Fact]
    public async Task APeerTheServerRefusesIsNotAllowedInProcess()
    {
        await using var echo = new UdpEcho();
        await using var server = await PtHostServer.ProxyAsync("plain", null, ["127.0.0.2"], options: Support.Options());
        await using var client = await EmbeddedClient.StartAsync(PlainClient(server.EndPoint));
        await using var udp = await client.CreateUdpClientAsync("plain");

        var e = await Assert.ThrowsAsync<TransportConnectException>(async () => await udp.SendAsync(new byte[] { 1 }, echo.EndPoint));

        Assert.Equal(ConnectFailure.NotAllowed, e.Failure);
        Assert.Equal(0, echo.Received);
    }

    [Fact]
    public async Task HttpClientOverPlainInProcessOpensNoListener()
    {
        await using var web = new HttpFileServer(Support.Body);
        await using var server = await Support.FreePlainServerAsync(); // a pthost process: its listener is not ours
        Assert.Equal([web.Port], ListeningPorts());
        await using var client = await EmbeddedClient.StartAsync(PlainClient(server.EndPoint));
        using var http = new HttpClient(new SocketsHttpHandler().UsePluggableTransport(client, "plain"));

        var got = await Support.FetchAsync(http, $"http://127.0.0.1:{web.Port}/file");

        Assert.Equal((200, Support.BodySha, Support.Body.Length), got);
        Assert.Equal([web.Port], ListeningPorts());
        var stats = client.GetStats("plain");
        Assert.True(stats.SessionsOpened >= 1 && stats.BytesIn >= Support.Body.Length, stats.ToString());
    }

    [Fact]
    public async Task HttpClientOverZephyrBothSidesInProcess()
    {
        await using var relay = await ZephyrRelayProcess.StartAsync();
        var generated = JObject.Parse((await PtHostServer.GenerateConfigAsync("zephyr", Support.Options())).ToJsonString());
        var clientOptions = (JObject)generated["client"]!;
        var serverOptions = (JObject)generated["server"]!;
        clientOptions["relay"] = relay.EndPoint.ToString();
        serverOptions["relay"] = relay.EndPoint.ToString();

        await using var server = await EmbeddedServer.StartAsync("zephyr", serverOptions);
        await using var client = await EmbeddedClient.StartAsync(new JObject
        {
            ["transports"] = new JArray("zephyr"),
            ["options"] = new JObject { ["zephyr"] = clientOptions },
        });
        int offers = 0, answers = 0;
        client.SignalWritten += line => { Interlocked.Increment(ref offers); server.DeliverSignal(line); };
        server.SignalWritten += line => { Interlocked.Increment(ref answers); client.DeliverSignal(line); };
        using var stop = new CancellationTokenSource();
        var serving = ServeHttpAsync(server, stop.Token);
        using var http = new HttpClient(new SocketsHttpHandler().UsePluggableTransport(client, "zephyr"));

        var got = await Support.FetchAsync(http, "http://app.example:80/file");

        Assert.Equal((200, Support.BodySha, Support.Body.Length), got);
        Assert.True(offers >= 1 && answers >= 1, $"{offers} offers, {answers} answers");
        Assert.Empty(ListeningPorts());
        await stop.CancelAsync();
        await serving;
    }

    /// <summary>The application's side of the in-process server: each accepted session gets one HTTP response with the body.</summary>
    private static async Task ServeHttpAsync(EmbeddedServer server, CancellationToken ct)
    {
        var sessions = new List<Task>();
        try
        {
            while (true)
            {
                var session = await server.AcceptAsync(ct);
                Assert.Equal(new Destination("app.example", 80), session.Destination);
                sessions.Add(Task.Run(async () =>
                {
                    await using var s = session.Stream;
                    var head = new StringBuilder();
                    var one = new byte[1];
                    while (!head.ToString().EndsWith("\r\n\r\n", StringComparison.Ordinal))
                    {
                        if (await s.ReadAsync(one, ct) == 0) return;
                        head.Append((char)one[0]);
                    }
                    await s.WriteAsync(Encoding.ASCII.GetBytes($"HTTP/1.1 200 OK\r\nContent-Length: {Support.Body.Length}\r\nConnection: close\r\n\r\n"), ct);
                    await s.WriteAsync(Support.Body, ct);
                    await s.FlushAsync(ct);
                }, ct));
            }
        }
        catch (OperationCanceledException) { }
        await Task.WhenAll(sessions).ContinueWith(_ => { }, TaskScheduler.Default);
    }

    [Fact]
    public async Task BoundServerInProcessForwardsCurlThroughAPthostClientToItsTarget()
    {
        await using var web = new HttpFileServer(Support.Body);
        await using var server = await EmbeddedServer.ListenAsync("plain", null, new Destination("127.0.0.1", web.Port));
        Assert.Throws<InvalidOperationException>(() => server.AcceptAsync());
        await using var client = await PtHostClient.StartAsync(Support.PlainClient(server.EndPoint), Support.Options());
        string file = Path.GetTempFileName();
        try
        {
            // The URL's host is not where the session goes: a bound server sends every session to its target.
            await Support.CurlAsync(client.GetSocksEndPoint("plain"), "http://elsewhere.example:81/file", "-o", file);
            Assert.Equal(Support.BodySha, Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(await File.ReadAllBytesAsync(file))));
        }
        finally
        {
            File.Delete(file);
        }
        Assert.Equal(1, web.Accepted);
        var stats = server.GetStats("plain");
        Assert.True(stats.SessionsOpened == 1 && stats.BytesOut >= Support.Body.Length, stats.ToString());
    }

    [Fact]
    public async Task BoundServerWhoseTargetRefusesFailsThatSessionAndKeepsServing()
    {
        // A bound socket that does not listen: connecting to it is refused.
        using var closed = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.InterNetwork, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Tcp);
        closed.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        await using var server = await EmbeddedServer.ListenAsync("plain", null, new Destination((IPEndPoint)closed.LocalEndPoint!));
        await using var client = await PtHostClient.StartAsync(Support.PlainClient(server.EndPoint), Support.Options());

        for (int i = 1; i <= 2; i++)
        {
            var (exit, _, stderr) = await Support.RunCurlAsync(client.GetSocksEndPoint("plain"), "http://any.example/");
            Assert.True(exit == 97, $"curl exited {exit} (97: the proxy refused): {stderr}");
            int failed = i;
            await Eventually.TrueAsync(() => server.GetStats("plain").SessionsFailed == failed, $"{failed} failed sessions counted");
        }
    }

    [Fact]
    public async Task ExternalTransportsAreRefusedInProcess()
    {
        var e = await Assert.ThrowsAsync<TransportOptionsException>(() => EmbeddedClient.StartAsync(new JObject
        {
            ["transports"] = new JArray("external_obfs4"),
        }));
        Assert.Contains("cannot run in process", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task SignalsFollowTheExecutablesEnvelopeRules()
    {
        await using var client = await EmbeddedClient.StartAsync(new JObject { ["transports"] = new JArray("plain") });
        Assert.Throws<ArgumentException>(() => client.DeliverSignal("CMESSAGE plain {}"));
        Assert.Equal("\"v\" must be 1", client.DeliverSignal("SMESSAGE plain {\"mid\":1}"));
        const string valid = "SMESSAGE plain {\"v\":1,\"mid\":7,\"sid\":\"s1\",\"kind\":\"k\"}";
        Assert.Null(client.DeliverSignal(valid));
        Assert.StartsWith("duplicate", client.DeliverSignal(valid), StringComparison.Ordinal);
        _ = IPAddress.Loopback;
    }
}
