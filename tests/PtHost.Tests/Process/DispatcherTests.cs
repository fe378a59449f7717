using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using Newtonsoft.Json.Linq;
using Xunit.Abstractions;

namespace PtHost.Tests.Process;

/// <summary>
/// shapeshifter-dispatcher as a drop-in (spec/ipc.md §12, issue 21): its command line, the transparent TCP, UDP and
/// STUN front ends over every transport, and SOCKS5 UDP ASSOCIATE with Debian's PySocks.
/// </summary>
[Collection("process")]
public class DispatcherTests(ITestOutputHelper output)
{
    [Theory]
    [InlineData(new[] { "-transparent", "-client", "-bogus" }, "-bogus")]
    [InlineData(new[] { "-client", "--nosuch=1" }, "-nosuch")]
    [InlineData(new[] { "-server", "-transports", "plain", "-toneburst" }, "-toneburst")]
    [InlineData(new[] { "-generateConfig", "-transport", "plain", "-polish" }, "-polish")]
    [InlineData(new[] { "-client", "-transports", "plain", "-enableLocket" }, "-enableLocket")]
    [InlineData(new[] { "-client", "-transports" }, "-transports")]
    [InlineData(new[] { "-client", "-udp=maybe" }, "-udp")]
    [InlineData(new[] { "-client", "-transports", "plain", "-logLevel", "LOUD" }, "-logLevel")]
    [InlineData(new[] { "-client", "-transports", "plain", "-mode", "transparent-tcp" }, "-mode")]
    [InlineData(new[] { "-client", "-transports", "plain", "-target", "127.0.0.1:9" }, "-target")]
    [InlineData(new[] { "-client", "-transports", "plain", "stray" }, "stray")]
    [InlineData(new[] { "-client", "-server", "-transports", "plain" }, "-server")]
    [InlineData(new[] { "-transparent", "-client", "-transports", "obfs4", "-target", "127.0.0.1:9" }, "obfs4")]
    public async Task Unknown_and_unsupported_flags_exit_64_naming_the_flag(string[] args, string named)
    {
        var (exit, stdout, stderr) = await PtProcess.RunAsync(PtHostExecutable.Path, args);
        output.WriteLine(stderr);
        Assert.Equal(64, exit);
        Assert.Equal("", stdout);
        Assert.Contains(named, stderr, StringComparison.Ordinal);
        Assert.Single(stderr.TrimEnd('\n').Split('\n'));
    }

    [Fact]
    public async Task Help_lists_the_dispatcher_flags_and_showVersion_prints_the_version()
    {
        var (exit, help, _) = await PtProcess.RunAsync(PtHostExecutable.Path, "--help");
        Assert.Equal(0, exit);
        foreach (string flag in new[] { "-transparent", "-proxylistenaddr", "-optionsFile", "-enableLocket", "-ptversion" })
            Assert.Contains(flag, help, StringComparison.Ordinal);
        var (vexit, version, _) = await PtProcess.RunAsync(PtHostExecutable.Path, "-showVersion");
        Assert.Equal(0, vexit);
        Assert.StartsWith("pthost ", version, StringComparison.Ordinal);
    }

    /// <summary>
    /// The issue's two command lines (published OpenVPN-over-obfs4 scripts), with plain in place of obfs4 and port 0 in
    /// place of fixed ports; the server once with <c>-orport</c>, once with <c>-target</c>. A 4 MiB file arrives intact.
    /// </summary>
    [Theory]
    [InlineData("-orport")]
    [InlineData("-target")]
    public async Task The_issue_s_command_lines_with_plain_carry_a_file(string targetFlag)
    {
        var body = RandomNumberGenerator.GetBytes(4 << 20);
        await using var web = new HttpFileServer(body);
        string dir = Directory.CreateTempSubdirectory("pthost-dispatcher-").FullName;
        File.WriteAllText(Path.Combine(dir, "server.json"), "{}");
        File.WriteAllText(Path.Combine(dir, "plain.json"), "{}");
        await using var server = PtProcess.StartPthost("-transparent", "-server", "-state", Path.Combine(dir, "s"), targetFlag, $"127.0.0.1:{web.Port}",
            "-transports", "plain", "-bindaddr", "plain-127.0.0.1:0", "-optionsFile", Path.Combine(dir, "server.json"), "-logLevel", "DEBUG", "-enableLogging");
        var serverLines = await server.ReadUntilDoneAsync();
        var serverEp = serverLines.Single(l => l.StartsWith("SMETHOD plain ", StringComparison.Ordinal)).Split(' ')[2];
        await using var client = PtProcess.StartPthost("-transparent", "-client", "-state", Path.Combine(dir, "c"), "-target", serverEp,
            "-transports", "plain", "-proxylistenaddr", "127.0.0.1:0", "-optionsFile", Path.Combine(dir, "plain.json"), "-logLevel", "DEBUG", "-enableLogging");
        var clientLines = await client.ReadUntilDoneAsync();
        Assert.Equal("VERSION 2", clientLines[0]);
        var listen = IPEndPoint.Parse(clientLines.Single(l => l.StartsWith("CMETHOD plain transparent-TCP ", StringComparison.Ordinal)).Split(' ')[3]);
        Assert.Equal(SHA256.HashData(body), SHA256.HashData(await FetchAsync(listen)));
        Assert.True(Directory.Exists(Path.Combine(dir, "c", "plain")), "-state is the state directory");
        client.AssertOnlyProtocolLinesOnStdout();
    }

    [Fact]
    public async Task Ptversion_3_0_announces_VERSION_3_0()
    {
        await using var client = PtProcess.StartPthost("-client", "-ptversion", "3.0", "-transports", "plain", "-state", Directory.CreateTempSubdirectory("pthost-v3-").FullName);
        var lines = await client.ReadUntilDoneAsync();
        Assert.Equal("VERSION 3.0", lines[0]);
        Assert.Contains(lines, l => l.StartsWith("CMETHOD plain socks5 127.0.0.1:", StringComparison.Ordinal));
    }

    [Fact]
    public async Task GenerateConfig_with_serverIP_puts_the_address_in_the_client_options()
    {
        var (exit, stdout, stderr) = await PtProcess.RunAsync(PtHostExecutable.Path, "-generateConfig", "-transport", "rud", "-serverIP", "192.0.2.7:443");
        Assert.True(exit == 0, stderr);
        Assert.Equal("192.0.2.7:443", (string?)JObject.Parse(stdout)["client"]!["serverAddress"]);
    }

    /// <summary>
    /// <c>-transports obfs4</c> maps to Debian's obfs4proxy hosted as <c>external_obfs4</c> (SOCKS5 mode: obfs4's cert
    /// travels per connection); the server line is the issue's with obfs4. curl fetches a file through both.
    /// </summary>
    [Fact]
    public async Task Transports_obfs4_runs_the_hosted_obfs4proxy()
    {
        var body = RandomNumberGenerator.GetBytes(1 << 20);
        await using var web = new HttpFileServer(body);
        string dir = Directory.CreateTempSubdirectory("pthost-dispatcher-obfs4-").FullName;
        await using var server = PtProcess.StartPthost("-transparent", "-server", "-state", Path.Combine(dir, "s"), "-orport", $"127.0.0.1:{web.Port}",
            "-transports", "obfs4", "-bindaddr", "obfs4-127.0.0.1:0", "-logLevel", "DEBUG", "-enableLogging");
        var serverLines = await server.ReadUntilDoneAsync();
        string smethod = serverLines.Single(l => l.StartsWith("SMETHOD external_obfs4 ", StringComparison.Ordinal));
        string cert = System.Text.RegularExpressions.Regex.Match(smethod, "cert=([^,]+)").Groups[1].Value.Replace("\\", "", StringComparison.Ordinal);
        await using var client = PtProcess.StartPthost("-client", "-state", Path.Combine(dir, "c"), "-transports", "obfs4", "-proxylistenaddr", "127.0.0.1:0");
        var clientLines = await client.ReadUntilDoneAsync();
        string socks = clientLines.Single(l => l.StartsWith("CMETHOD external_obfs4 socks5 ", StringComparison.Ordinal)).Split(' ')[3];
        string file = Path.Combine(dir, "out.bin");
        var (exit, _, err) = await PtProcess.RunAsync("/usr/bin/curl", "-sS", "--max-time", "60", "-x",
            $"socks5://{Uri.EscapeDataString($"cert={cert};iat-mode=0")}@{socks}", "-o", file, $"http://{smethod.Split(' ')[2]}/");
        Assert.True(exit == 0, err + client.Stderr);
        Assert.Equal(SHA256.HashData(body), SHA256.HashData(File.ReadAllBytes(file)));
    }

    public static TheoryData<string> Transports => ["plain", "rud", "zephyr", "jet", "asport"];

    /// <summary>Transparent TCP (spec/ipc.md §12.3) over every transport: a bound server, a client with <c>"mode": "transparent-tcp"</c>.</summary>
    [Theory]
    [MemberData(nameof(Transports))]
    public async Task Transparent_tcp_carries_a_file_over(string transport)
    {
        var body = RandomNumberGenerator.GetBytes(2 << 20);
        await using var web = new HttpFileServer(body);
        await using var peers = await TransparentPeers.StartAsync(transport);
        await using var chain = await peers.StartChainAsync($"127.0.0.1:{web.Port}", "transparent-tcp");
        Assert.Contains(chain.ClientStartup, l => l.StartsWith($"CMETHOD {transport} transparent-TCP 127.0.0.1:", StringComparison.Ordinal));
        for (int i = 0; i < 2; i++)
            Assert.Equal(SHA256.HashData(body), SHA256.HashData(await FetchAsync(chain.SocksEndPoint)));
        var status = await chain.Client.QueryStatusAsync(transport);
        Assert.True(status["OPENED"] >= 2, $"OPENED={status["OPENED"]}");
    }

    /// <summary>spec/ipc.md §12.3: a session the transport cannot open is reset at once and counted in FAILED; the listener serves on.</summary>
    [Fact]
    public async Task Transparent_tcp_resets_a_connection_the_transport_cannot_open()
    {
        using var closed = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        closed.Bind(new IPEndPoint(IPAddress.Loopback, 0)); // bound, never listening: connections to it are refused
        await using var client = PtProcess.StartPthost("-transparent", "-client", "-transports", "plain", "-target", closed.LocalEndPoint!.ToString()!,
            "-state", Directory.CreateTempSubdirectory("pthost-reset-").FullName, "-proxylistenaddr", "127.0.0.1:0");
        var lines = await client.ReadUntilDoneAsync();
        var listen = IPEndPoint.Parse(lines.Single(l => l.StartsWith("CMETHOD plain transparent-TCP ", StringComparison.Ordinal)).Split(' ')[3]);
        for (int i = 1; i <= 2; i++)
        {
            using var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(20));
            // On loopback the reset can come before the connect's completion is seen: either step may report it.
            var e = await Assert.ThrowsAsync<SocketException>(async () =>
            {
                await s.ConnectAsync(listen, cts.Token);
                await s.ReceiveAsync(new byte[1], cts.Token);
            });
            Assert.Equal(SocketError.ConnectionReset, e.SocketErrorCode);
            Assert.Equal(i, (await client.QueryStatusAsync("plain"))["FAILED"]);
        }
    }

    /// <summary>
    /// Transparent UDP (spec/ipc.md §12.4): two sources each get their own association; 200 datagrams each reach the
    /// target's echo and every answer returns to the source that sent it.
    /// </summary>
    [Theory]
    [InlineData("plain")]
    [InlineData("asport")]
    [InlineData("rud")]
    public async Task Transparent_udp_returns_each_answer_to_its_source(string transport)
    {
        await using var echo = new UdpEcho();
        await using var peers = await TransparentPeers.StartAsync(transport);
        await using var chain = await peers.StartChainAsync(echo.EndPoint.ToString(), "transparent-udp");
        Assert.Contains(chain.ClientStartup, l => l.StartsWith($"CMETHOD {transport} transparent-UDP 127.0.0.1:", StringComparison.Ordinal));
        using var a = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
        using var b = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
        a.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        b.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        int gotA = await ExchangeAsync(a, chain.SocksEndPoint, "A", 200);
        int gotB = await ExchangeAsync(b, chain.SocksEndPoint, "B", 200);
        output.WriteLine($"{transport}: A {gotA}/200, B {gotB}/200, echo saw {echo.Received}");
        Assert.True(gotA >= 190 && gotB >= 190, $"answers: A {gotA}, B {gotB} of 200 each");
        var status = await chain.Client.QueryStatusAsync(transport);
        Assert.Equal(2, status["OPENED"]);
    }

    /// <summary>
    /// STUN mode (spec/ipc.md §12.5): a STUN Binding request reaches the target and its answer comes back; a datagram
    /// that is not a STUN message is dropped and counted in <c>DATAGRAMS-DROPPED</c>.
    /// </summary>
    [Fact]
    public async Task Stun_mode_carries_stun_messages_only()
    {
        await using var echo = new UdpEcho();
        await using var peers = await TransparentPeers.StartAsync("plain");
        await using var chain = await peers.StartChainAsync(echo.EndPoint.ToString(), "stun");
        Assert.Contains(chain.ClientStartup, l => l.StartsWith("CMETHOD plain STUN 127.0.0.1:", StringComparison.Ordinal));
        using var s = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
        s.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        byte[] binding = new byte[20];
        binding[1] = 0x01; // Binding request, length 0
        binding[4] = 0x21; binding[5] = 0x12; binding[6] = 0xA4; binding[7] = 0x42;
        RandomNumberGenerator.Fill(binding.AsSpan(8));
        await s.SendToAsync(Encoding.ASCII.GetBytes("not stun at all"), chain.SocksEndPoint);
        await Eventually.TrueAsync(async () => (await chain.Client.QueryStatusAsync("plain"))["DATAGRAMS-DROPPED"] == 1, "the non-STUN datagram counted");
        byte[] answer = new byte[100];
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(20));
        await s.SendToAsync(binding, chain.SocksEndPoint);
        int n = await s.ReceiveAsync(answer, cts.Token);
        Assert.Equal(binding, answer[..n]);
        Assert.Equal(1, echo.Received);
    }

    /// <summary>
    /// SOCKS5 UDP ASSOCIATE (RFC 1928 §7, spec/ipc.md §5.12) with Debian's PySocks: 1,000 datagrams to an echo peer
    /// behind a free server come back, counted; a FRAG ≠ 0 datagram is dropped and counted; after the control
    /// connection closes, a datagram reaches nothing.
    /// </summary>
    [Fact]
    public async Task Pysocks_udp_associate_echoes_1000_datagrams_and_ends_with_its_control_connection()
    {
        const string Python = "/usr/bin/python3";
        Assert.True(File.Exists(Python), "/usr/bin/python3 is missing: run bash test.sh");
        await using var echo = new UdpEcho();
        await using var chain = await PtChain.StartAsync(PtChain.FreeServer("plain", "127.0.0.1"), ep => PtChain.ClientWith(new JObject { ["serverAddress"] = ep.ToString() }));
        string script = Path.Combine(Directory.CreateTempSubdirectory("pthost-pysocks-").FullName, "udp.py");
        File.WriteAllText(script, """
            import socket, struct, sys, time
            import socks
            proxy_host, proxy_port, echo_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
            s = socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM)
            s.set_proxy(socks.SOCKS5, proxy_host, proxy_port)
            s.settimeout(5)
            s.bind(("127.0.0.1", 0))
            got = 0
            for i in range(1000):
                payload = b"datagram %d" % i
                s.sendto(payload, ("127.0.0.1", echo_port))
                data, addr = s.recvfrom(2048)
                if data == payload and addr == ("127.0.0.1", echo_port):
                    got += 1
            print("echoed", got, flush=True)
            # A fragment (FRAG = 1), written raw on PySocks' UDP socket (connected to the relay address it was given).
            frag = b"\x00\x00\x01\x01" + socket.inet_aton("127.0.0.1") + struct.pack(">H", echo_port) + b"fragment"
            socket.socket.send(s, frag)
            print("fragment sent", flush=True)
            sys.stdin.readline()
            s._proxyconn.close()  # the TCP control connection
            print("control closed", flush=True)
            sys.stdin.readline()
            socket.socket.send(s, b"\x00\x00\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack(">H", echo_port) + b"late")
            print("late sent", flush=True)
            sys.stdin.readline()
            """);
        await using var py = PtProcess.Start(Python, [script, chain.SocksEndPoint.Address.ToString(), chain.SocksEndPoint.Port.ToString(), echo.Port.ToString()], null);
        Assert.Equal("echoed 1000", await py.WaitForLineAsync("echoed", TimeSpan.FromSeconds(120)));
        Assert.Equal(1000, echo.Received);
        await py.WaitForLineAsync("fragment sent");
        await Eventually.TrueAsync(async () => (await chain.Client.QueryStatusAsync("plain"))["DATAGRAMS-DROPPED"] == 1, "the fragment dropped and counted");
        Assert.Equal(1000, echo.Received);
        var open = await chain.Client.QueryStatusAsync("plain");
        Assert.Equal(1, open["CONNECTIONS"]);
        await py.WriteLineAsync("close");
        await py.WaitForLineAsync("control closed");
        await Eventually.TrueAsync(async () => (await chain.Client.QueryStatusAsync("plain"))["CONNECTIONS"] == 0, "the association ended with its control connection");
        await py.WriteLineAsync("late");
        await py.WaitForLineAsync("late sent");
        Assert.False(await Eventually.HoldsWithinAsync(() => echo.Received > 1000, TimeSpan.FromSeconds(2)), "a datagram after the close reached the peer");
        output.WriteLine(string.Join(' ', py.StdoutLines));
    }

    private static async Task<int> ExchangeAsync(Socket socket, IPEndPoint to, string tag, int count)
    {
        int got = 0;
        byte[] answer = new byte[2048];
        for (int i = 0; i < count; i++)
        {
            byte[] payload = Encoding.ASCII.GetBytes($"{tag} {i}");
            await socket.SendToAsync(payload, to);
            using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(i == 0 ? 20 : 5));
            try
            {
                while (true)
                {
                    int n = await socket.ReceiveAsync(answer, cts.Token);
                    if (answer.AsSpan(0, n).SequenceEqual(payload)) { got++; break; }
                    Assert.StartsWith(tag + " ", Encoding.ASCII.GetString(answer, 0, n), StringComparison.Ordinal); // never another source's answer
                }
            }
            catch (OperationCanceledException) { }
        }
        return got;
    }

    /// <summary>GET / over a plain TCP connection to <paramref name="listen"/>; the body.</summary>
    internal static async Task<byte[]> FetchAsync(IPEndPoint listen)
    {
        using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        await socket.ConnectAsync(listen);
        using var stream = new NetworkStream(socket);
        await stream.WriteAsync("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"u8.ToArray());
        using var all = new MemoryStream();
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(120));
        await stream.CopyToAsync(all, cts.Token);
        byte[] bytes = all.ToArray();
        int split = bytes.AsSpan().IndexOf("\r\n\r\n"u8);
        Assert.True(split > 0, "no HTTP header came back");
        return bytes[(split + 4)..];
    }
}

/// <summary>
/// A bound server and a transparent-mode client of one transport, with whatever relay the transport needs,
/// configured from <c>pthost generate-config</c> as the transport's own tests do.
/// </summary>
internal sealed class TransparentPeers : IAsyncDisposable
{
    private readonly string _transport;
    private readonly IAsyncDisposable? _relay;
    private readonly JObject _client, _server;
    private readonly IPEndPoint? _asportRelay;

    private TransparentPeers(string transport, IAsyncDisposable? relay, JObject client, JObject server, IPEndPoint? asportRelay = null)
    {
        _transport = transport;
        _relay = relay;
        _client = client;
        _server = server;
        _asportRelay = asportRelay;
    }

    public static async Task<TransparentPeers> StartAsync(string transport)
    {
        switch (transport)
        {
            case "plain":
                return new TransparentPeers(transport, null, [], []);
            case "rud":
            {
                var g = await PtChain.GenerateConfigAsync("rud");
                return new TransparentPeers(transport, null, (JObject)g["client"]!, (JObject)g["server"]!);
            }
            case "zephyr":
            {
                var relay = await ZephyrRelayProcess.StartAsync();
                var g = await ZephyrChain.GenerateAsync();
                var client = (JObject)g["client"]!;
                var server = (JObject)g["server"]!;
                client["relay"] = relay.EndPoint.ToString();
                server["relay"] = relay.EndPoint.ToString();
                return new TransparentPeers(transport, relay, client, server);
            }
            case "jet":
            {
                var relay = await JetRelayProcess.StartAsync();
                var (client, server) = await JetChain.OptionsAsync(relay);
                return new TransparentPeers(transport, relay, client, server);
            }
            case "asport":
            {
                var relay = await AsportRelayProcess.StartAsync(network: "127.0.0.0/8");
                return new TransparentPeers(transport, relay, [], [], relay.EndPoint);
            }
            default:
                throw new ArgumentException(transport);
        }
    }

    /// <summary>The chain: a server bound to <paramref name="target"/>, a client in <paramref name="mode"/>.</summary>
    public async Task<PtChain> StartChainAsync(string target, string mode)
    {
        JObject serverConfig;
        if (_asportRelay is { } relay) serverConfig = AsportTransportTests.ServerConfig(relay, target);
        else
        {
            serverConfig = PtChain.BoundServer(target, _transport);
            serverConfig["options"] = new JObject { [_transport] = _server.DeepClone() };
        }
        serverConfig["loglevel"] = "debug";
        var starting = PtChain.StartAsync(serverConfig, serverEp =>
        {
            var client = new JObject
            {
                ["role"] = "client",
                ["transports"] = new JArray(_transport),
                ["mode"] = mode,
                ["exit-on-stdin-close"] = true,
                ["loglevel"] = "debug",
                ["options"] = new JObject { [_transport] = _client.DeepClone() },
            };
            // Where the transport reaches its server by address (plain, rud), the target is the PT server (§12.2);
            // zephyr and jet find theirs through the relay, asport through the server's announcement.
            if (_transport is "plain" or "rud") client["target"] = serverEp.ToString();
            return client;
        });
        return _transport == "asport" ? await PtChain.AnnouncedAsync(starting) : await starting;
    }

    public async ValueTask DisposeAsync()
    {
        if (_relay is not null) await _relay.DisposeAsync();
    }
}
