using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using Microsoft.Extensions.Logging.Abstractions;
using Newtonsoft.Json.Linq;
using PtHost.Quic;
using PtHost.Transports.Asport;

namespace PtHost.Tests.Process;

/// <summary>
/// The real <c>pthost relay asport</c> process with our ASPORT client (behind "NAT") in the test:
/// TCP forwarding checked with curl, UDP forwarding in native and QUIC modes through a UDP echo
/// peer with payloads larger than one datagram, authentication and port policy, malformed
/// input, and reconnection after a server restart (spec/asport.md).
/// </summary>
[Collection("process")]
public sealed class AsportRelayTests
{
    private static readonly TimeSpan Wait = TimeSpan.FromSeconds(30);
    private static QuicCertificate Cert => AsportRelayProcess.Cert;
    private static Guid User => AsportRelayProcess.User;
    private const string Password = AsportRelayProcess.Password;
    private const int PortLo = 20000, PortHi = 60000;

    private static AsportRelayClient Client(IPEndPoint server, IPEndPoint target, ForwardMode mode = ForwardMode.Tcp,
        string password = Password, ushort lo = PortLo, ushort hi = PortHi) =>
        new(AsportRelayProcess.ClientOptions(server, target) with
        {
            Password = password,
            Mode = mode,
            PortStart = lo,
            PortEnd = hi,
            ReconnectMin = TimeSpan.FromMilliseconds(200),
            ReconnectMax = TimeSpan.FromSeconds(1),
        }, NullLogger.Instance);

    [Fact]
    public async Task Tcp_forwarding_end_to_end_with_curl()
    {
        var body = RandomNumberGenerator.GetBytes(3 << 20);
        await using var web = new HttpFileServer(body);
        await using var relay = await AsportRelayProcess.StartAsync();
        await using var client = Client(relay.EndPoint, new IPEndPoint(IPAddress.Loopback, web.Port));
        client.Start();
        var port = await client.Registered.WaitAsync(Wait);
        Assert.InRange(port, PortLo, PortHi);
        var file = Path.Combine(relay.Directory, "got");
        var (rc, _, err) = await PtProcess.RunAsync("curl", "-sS", "--max-time", "60", "-o", file, $"http://127.0.0.1:{port}/f");
        Assert.True(rc == 0, "curl: " + err + relay.Process.Stderr);
        Assert.Equal(SHA256.HashData(body), SHA256.HashData(File.ReadAllBytes(file)));
        // Several at once share the QUIC connection.
        var many = await Task.WhenAll(Enumerable.Range(0, 4).Select(i => PtProcess.RunAsync("curl", "-sS", "--max-time", "60", "-o", file + i, $"http://127.0.0.1:{port}/f")));
        Assert.All(many, r => Assert.Equal(0, r.Exit));
        for (var i = 0; i < 4; i++) Assert.Equal(body.Length, new FileInfo(file + i).Length);
    }

    [Theory]
    [InlineData(ForwardMode.UdpNative)]
    [InlineData(ForwardMode.UdpQuic)]
    [InlineData(ForwardMode.TcpUdpNative)]
    [InlineData(ForwardMode.TcpUdpQuic)]
    public async Task Udp_forwarding_round_trips_payloads_larger_than_one_datagram(ForwardMode mode)
    {
        await using var echo = new UdpEcho();
        await using var relay = await AsportRelayProcess.StartAsync();
        await using var client = Client(relay.EndPoint, echo.EndPoint, mode);
        client.Start();
        var port = await client.Registered.WaitAsync(Wait);
        using var udp = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
        udp.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        var target = new IPEndPoint(IPAddress.Loopback, port);
        var buf = new byte[65536];
        foreach (var size in new[] { 10, 1400, 4000, 20000 })
        {
            var payload = RandomNumberGenerator.GetBytes(size);
            // UDP is lossy: resend until the echo comes back.
            using var cts = new CancellationTokenSource(Wait);
            while (true)
            {
                await udp.SendToAsync(payload, SocketFlags.None, target, cts.Token);
                var recv = udp.ReceiveAsync(buf, SocketFlags.None, cts.Token).AsTask();
                if (!await Eventually.CompletesWithinAsync(recv, TimeSpan.FromSeconds(2))) continue; // lost on the way: send again
                var n = await recv;
                Assert.Equal(payload, buf.AsSpan(0, n).ToArray());
                break;
            }
        }
        Assert.True(echo.Received >= 4);
        if (mode is ForwardMode.TcpUdpNative or ForwardMode.TcpUdpQuic)
        {
            // The TCP half is bound on the same port.
            using var tcp = new TcpClient();
            await tcp.ConnectAsync(target.Address, port);
        }
    }

    [Fact]
    public async Task A_wrong_token_gets_AuthFailed_when_configured_to_reply()
    {
        await using var relay = await AsportRelayProcess.StartAsync(replyAuthFailed: true);
        await using var client = Client(relay.EndPoint, new IPEndPoint(IPAddress.Loopback, 9), password: "wrong");
        var refused = new TaskCompletionSource<ServerHelloCode>(TaskCreationOptions.RunContinuationsAsynchronously);
        client.OnRefused += c => refused.TrySetResult(c);
        client.Start();
        Assert.Equal(ServerHelloCode.AuthFailed, await refused.Task.WaitAsync(Wait));
        Assert.False(client.Registered.IsCompleted);
    }

    [Fact]
    public async Task A_wrong_token_gets_silence_and_a_closed_connection_by_default()
    {
        await using var relay = await AsportRelayProcess.StartAsync(replyAuthFailed: false);
        await using var endpoint = QuicEndpoint.CreateClient(new IPEndPoint(IPAddress.Loopback, 0));
        var conn = await endpoint.ConnectAsync(relay.EndPoint, new QuicClientOptions
        {
            Verification = QuicPeerVerification.Pinned(Cert.Sha256),
            ApplicationProtocols = ["asport"],
        }).WaitAsync(Wait);
        var hello = new byte[AsportWire.ClientHelloSize];
        AsportWire.WriteClientHello(hello, new ClientHello(User, new byte[32], ForwardMode.Tcp, PortLo, PortHi));
        var s = await conn.OpenUnidirectionalStreamAsync();
        await s.WriteAsync(hello);
        s.CompleteWrites();
        var closed = await conn.Closed.WaitAsync(Wait);
        Assert.True(closed.ByPeer);
        // No ServerHello stream was opened before the close.
        await Assert.ThrowsAnyAsync<Exception>(() => conn.AcceptStreamAsync().AsTask().WaitAsync(Wait));
        await relay.Process.WaitForStderrAsync("authentication failed", within: Wait);
    }

    [Fact]
    public async Task A_port_range_outside_the_allowed_ports_gets_PortDenied()
    {
        await using var relay = await AsportRelayProcess.StartAsync(ports: "40000-40010");
        await using var client = Client(relay.EndPoint, new IPEndPoint(IPAddress.Loopback, 9), lo: 50000, hi: 50010);
        var refused = new TaskCompletionSource<ServerHelloCode>(TaskCreationOptions.RunContinuationsAsynchronously);
        client.OnRefused += c => refused.TrySetResult(c);
        client.Start();
        Assert.Equal(ServerHelloCode.PortDenied, await refused.Task.WaitAsync(Wait));
    }

    [Fact]
    public async Task A_port_that_cannot_be_bound_gets_BindFailed()
    {
        using var taken = new TcpListener(IPAddress.Any, 0);
        taken.Start();
        var port = ((IPEndPoint)taken.LocalEndpoint).Port.ToString(System.Globalization.CultureInfo.InvariantCulture);
        await using var relay = await AsportRelayProcess.StartAsync(ports: port);
        await using var client = Client(relay.EndPoint, new IPEndPoint(IPAddress.Loopback, 9), lo: 1, hi: 65535);
        var refused = new TaskCompletionSource<ServerHelloCode>(TaskCreationOptions.RunContinuationsAsynchronously);
        client.OnRefused += c => refused.TrySetResult(c);
        client.Start();
        Assert.Equal(ServerHelloCode.BindFailed, await refused.Task.WaitAsync(Wait));
    }

    [Fact]
    public async Task A_client_outside_the_allowed_networks_gets_NetworkDenied()
    {
        await using var relay = await AsportRelayProcess.StartAsync(network: "10.0.0.0/8");
        await using var client = Client(relay.EndPoint, new IPEndPoint(IPAddress.Loopback, 9));
        var refused = new TaskCompletionSource<ServerHelloCode>(TaskCreationOptions.RunContinuationsAsynchronously);
        client.OnRefused += c => refused.TrySetResult(c);
        client.Start();
        Assert.Equal(ServerHelloCode.NetworkDenied, await refused.Task.WaitAsync(Wait));
    }

    [Fact]
    public async Task Malformed_hellos_and_fragments_are_dropped_and_the_server_keeps_serving()
    {
        await using var echo = new UdpEcho();
        await using var relay = await AsportRelayProcess.StartAsync();
        await using var endpoint = QuicEndpoint.CreateClient(new IPEndPoint(IPAddress.Loopback, 0));
        var qopts = new QuicClientOptions { Verification = QuicPeerVerification.Pinned(Cert.Sha256), ApplicationProtocols = ["asport"] };

        // 1. A garbage ClientHello closes that connection.
        var bad = await endpoint.ConnectAsync(relay.EndPoint, qopts).WaitAsync(Wait);
        var s = await bad.OpenUnidirectionalStreamAsync();
        await s.WriteAsync(new byte[] { 0, 0, 1, 2, 3 });
        s.CompleteWrites();
        Assert.True((await bad.Closed.WaitAsync(Wait)).ByPeer);

        // 2. An authenticated UDP client sends broken commands and fragments: dropped, connection stays.
        var conn = await endpoint.ConnectAsync(relay.EndPoint, qopts).WaitAsync(Wait);
        var label = new byte[16];
        AsportWire.WriteUuid(label, User);
        var token = await conn.ExportKeyingMaterialAsync(label, System.Text.Encoding.UTF8.GetBytes(Password), 32);
        var hello = new byte[AsportWire.ClientHelloSize];
        AsportWire.WriteClientHello(hello, new ClientHello(User, token, ForwardMode.UdpNative, PortLo, PortHi));
        var hs = await conn.OpenUnidirectionalStreamAsync();
        await hs.WriteAsync(hello);
        hs.CompleteWrites();
        var reply = await conn.AcceptStreamAsync().AsTask().WaitAsync(Wait);
        var r = new byte[8];
        var got = 0;
        int n;
        while ((n = await reply.ReadAsync(r.AsMemory(got))) > 0) got += n;
        Assert.True(AsportWire.TryReadServerHello(r.AsSpan(0, got), out var code, out _));
        Assert.Equal(ServerHelloCode.Success, code);
        byte[][] garbage =
        [
            [1, 3, 0, 0],                                  // version 1
            [0, 9],                                        // unknown command
            [0, 3, 0, 1, 0, 1, 2, 5, 0, 0, 0xFF],          // frag_id 5 >= total 2
            [0, 3, 0, 1, 0, 1, 2, 0, 0, 1, 0xFF, 7],       // first fragment without address
            [0, 3, 0, 1],                                  // truncated
            [0, 0, 1, 2],                                  // a ClientHello after authentication
        ];
        foreach (var g in garbage) Assert.True(conn.TrySendDatagram(g));
        var gs = await conn.OpenUnidirectionalStreamAsync();
        await gs.WriteAsync(new byte[] { 0, 3, 0xFF });
        gs.CompleteWrites();
        var bidi = await conn.OpenBidirectionalStreamAsync();
        await bidi.WriteAsync(new byte[] { 0, 2 });
        // Heartbeats keep working and the connection is still up.
        Assert.True(conn.TrySendDatagram(new byte[] { 0, 5 }));
        // Nothing closes it: the relay would close at once on a connection-level error (2 s is ample for "at once").
        Assert.False(await Eventually.CompletesWithinAsync(conn.Closed, TimeSpan.FromSeconds(2)), "the relay closed the connection over malformed commands");
        await relay.Process.WaitForStderrAsync("dropped malformed command", within: Wait);

        // 3. A proper client is still served.
        await using var client = Client(relay.EndPoint, echo.EndPoint, ForwardMode.UdpNative);
        client.Start();
        await client.Registered.WaitAsync(Wait);
        await conn.CloseAsync();
    }

    [Fact]
    public async Task An_idle_association_ends_with_a_Dissociate_and_the_next_datagram_gets_a_new_id()
    {
        await using var relay = await AsportRelayProcess.StartAsync(associationTimeout: 1);
        await using var endpoint = QuicEndpoint.CreateClient(new IPEndPoint(IPAddress.Loopback, 0));
        var conn = await endpoint.ConnectAsync(relay.EndPoint, new QuicClientOptions
        {
            Verification = QuicPeerVerification.Pinned(Cert.Sha256), ApplicationProtocols = ["asport"],
        }).WaitAsync(Wait);
        var label = new byte[16];
        AsportWire.WriteUuid(label, User);
        var token = await conn.ExportKeyingMaterialAsync(label, System.Text.Encoding.UTF8.GetBytes(Password), 32);
        var hello = new byte[AsportWire.ClientHelloSize];
        AsportWire.WriteClientHello(hello, new ClientHello(User, token, ForwardMode.UdpNative, PortLo, PortHi));
        var hs = await conn.OpenUnidirectionalStreamAsync();
        await hs.WriteAsync(hello);
        hs.CompleteWrites();
        var reply = await ReadStreamAsync(await conn.AcceptStreamAsync().AsTask().WaitAsync(Wait));
        Assert.True(AsportWire.TryReadServerHello(reply, out var code, out var port));
        Assert.Equal(ServerHelloCode.Success, code);

        using var udp = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
        udp.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        async Task<PacketHeader> SendAndReceiveAsync()
        {
            var buf = new byte[65536];
            using var cts = new CancellationTokenSource(Wait);
            while (true)
            {
                await udp.SendToAsync(new byte[] { 1, 2, 3 }, SocketFlags.None, new IPEndPoint(IPAddress.Loopback, port), cts.Token);
                var recv = conn.ReceiveDatagramAsync(buf, cts.Token).AsTask();
                if (!await Eventually.CompletesWithinAsync(recv, TimeSpan.FromSeconds(1))) continue; // lost on the way: send again
                var n = await recv;
                Assert.True(AsportWire.TryReadHeader(buf.AsSpan(0, n), out var cmd) && cmd == AsportCommand.Packet);
                Assert.True(AsportWire.TryReadPacketHeader(buf.AsSpan(2, n - 2), out var h, out _));
                // The public port is open to anyone: a stray datagram from another process on this
                // machine gets its own association; only ours counts here.
                if (!Equals(h.Address, (IPEndPoint)udp.LocalEndPoint!)) continue;
                return h;
            }
        }
        var first = await SendAndReceiveAsync();
        // §3.5: after the association timeout the server sends Dissociate on a uni stream.
        byte[] expected = [0, 4, (byte)(first.AssocId >> 8), (byte)first.AssocId];
        byte[] dissociate;
        do dissociate = await ReadStreamAsync(await conn.AcceptStreamAsync().AsTask().WaitAsync(Wait));
        while (!dissociate.AsSpan().SequenceEqual(expected) && dissociate.Length == 4 && dissociate[1] == 4); // a stray association's Dissociate
        Assert.Equal(expected, dissociate);
        var second = await SendAndReceiveAsync();
        Assert.True(second.AssocId > first.AssocId, $"association ids {first.AssocId} then {second.AssocId}");
        await conn.CloseAsync();
    }

    private static async Task<byte[]> ReadStreamAsync(Stream s)
    {
        var ms = new MemoryStream();
        await s.CopyToAsync(ms).WaitAsync(Wait);
        return ms.ToArray();
    }

    [Fact]
    public async Task The_client_reconnects_after_a_server_restart()
    {
        var body = RandomNumberGenerator.GetBytes(1000);
        await using var web = new HttpFileServer(body);
        var relay = await AsportRelayProcess.StartAsync();
        var listen = relay.EndPoint.ToString();
        await using var client = Client(relay.EndPoint, new IPEndPoint(IPAddress.Loopback, web.Port));
        var registrations = System.Threading.Channels.Channel.CreateUnbounded<int>();
        client.OnRegistered += p => registrations.Writer.TryWrite(p);
        client.Start();
        using var cts = new CancellationTokenSource(Wait * 2);
        var first = await registrations.Reader.ReadAsync(cts.Token);
        relay.Process.Signal(15);
        Assert.Equal(0, await relay.Process.WaitForExitAsync());
        await relay.DisposeAsync();
        await using var again = await AsportRelayProcess.StartAsync(listen);
        var second = await registrations.Reader.ReadAsync(cts.Token);
        Assert.InRange(second, PortLo, PortHi);
        var file = Path.Combine(again.Directory, "got");
        var (rc, _, err) = await PtProcess.RunAsync("curl", "-sS", "--max-time", "30", "-o", file, $"http://127.0.0.1:{second}/f");
        Assert.True(rc == 0, err);
        Assert.Equal(body, File.ReadAllBytes(file));
        Assert.True(client.Connections >= 2);
        _ = first;
    }

    [Theory]
    [InlineData("--listen", "nowhere", "--config", "x")]
    [InlineData("--listen", "127.0.0.1:0")]
    [InlineData("--config", "x")]
    [InlineData("--bogus", "1")]
    public async Task Bad_arguments_exit_64(params string[] args)
    {
        await using var p = PtProcess.StartPthost(["relay", "asport", .. args]);
        Assert.Equal(64, await p.WaitForExitAsync());
        Assert.Empty(p.StdoutLines);
    }

    [Fact]
    public async Task A_bad_configuration_exits_78_naming_the_key()
    {
        var dir = Directory.CreateTempSubdirectory("pthost-asport-bad-").FullName;
        try
        {
            var path = AsportRelayProcess.WriteConfig(dir);
            var o = JObject.Parse(File.ReadAllText(path));
            o["allowed_ports"] = new JArray("5-4");
            File.WriteAllText(path, o.ToString());
            await using var p = PtProcess.StartPthost("relay", "asport", "--listen", "127.0.0.1:0", "--config", path);
            Assert.Equal(78, await p.WaitForExitAsync());
            Assert.Contains("allowed_ports", p.Stderr);
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    /// <summary>Issue 24 point 8: the private key is read through PrivateFile (spec/asport.md §5): a key open to
    /// group or others, or a symbolic link to one, is a configuration error naming "key", exit 78.</summary>
    [Fact]
    [System.Runtime.Versioning.SupportedOSPlatform("linux")]
    public async Task A_key_file_open_to_others_or_behind_a_link_is_refused_with_exit_78()
    {
        var dir = Directory.CreateTempSubdirectory("pthost-asport-key-").FullName;
        try
        {
            var path = AsportRelayProcess.WriteConfig(dir);
            var key = Path.Combine(dir, "key.pem");
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(key));
            File.SetUnixFileMode(key, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead | UnixFileMode.OtherRead);
            await using (var p = PtProcess.StartPthost("relay", "asport", "--listen", "127.0.0.1:0", "--config", path))
            {
                Assert.Equal(78, await p.WaitForExitAsync());
                Assert.Empty(p.StdoutLines);
                Assert.Contains("key: ", p.Stderr);
                Assert.Contains("mode 0644", p.Stderr);
            }

            File.SetUnixFileMode(key, UnixFileMode.UserRead | UnixFileMode.UserWrite);
            File.Move(key, Path.Combine(dir, "real.pem"));
            File.CreateSymbolicLink(key, Path.Combine(dir, "real.pem"));
            await using (var p = PtProcess.StartPthost("relay", "asport", "--listen", "127.0.0.1:0", "--config", path))
            {
                Assert.Equal(78, await p.WaitForExitAsync());
                Assert.Contains("symbolic link", p.Stderr);
            }
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }
}
