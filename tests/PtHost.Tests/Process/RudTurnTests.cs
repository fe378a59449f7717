using System.Net;
using System.Text.RegularExpressions;
using Newtonsoft.Json.Linq;
using PtHost.Contract;
using PtHost.Net.Udp;

namespace PtHost.Tests.Process;

/// <summary>
/// TURN through the rud transport (spec/rud.md §12.1): coturn's turnutils_uclient → the client
/// process's TURN listener → one RUD datagram stream per allocation → the server process's UDP
/// association → turnutils_peer. The logs prove the datagram path: the client names the datagram
/// stream of each association, the server counts the frames each one carried, and no association
/// rode in a reliable stream.
/// </summary>
public partial class TurnTests
{
    /// <summary>A rud client process (TURN listener on) and a rud server process with fresh keys.</summary>
    private static async Task<TurnChain> RudChainAsync(JObject serverConfig, Action<byte[]>? serverKey = null)
    {
        await using var keys = PtProcess.StartPthost("generate-config", "rud");
        Assert.Equal(0, await keys.WaitForExitAsync());
        var generated = JObject.Parse(string.Join("\n", keys.StdoutLines));
        serverKey?.Invoke(Convert.FromBase64String((string)generated["client"]!["serverKey"]!));
        // A test that takes the key talks to the server from an anonymous in-process initiator: no authorizedKeys (spec/rud.md §5.5).
        if (serverKey is not null) ((JObject)generated["server"]!).Remove("authorizedKeys");
        serverConfig["options"] = new JObject { ["rud"] = generated["server"] };
        var ptChain = await PtChain.StartAsync(serverConfig, serverEp =>
        {
            var config = TurnChain.ClientConfig(serverEp, "rud");
            var client = (JObject)generated["client"]!;
            client["serverAddress"] = serverEp.ToString();
            config["options"] = new JObject { ["rud"] = client };
            return config;
        });
        var line = ptChain.ClientStartup.Single(l => l.StartsWith("CMETHOD rud turn ", StringComparison.Ordinal));
        return new TurnChain { Chain = ptChain, TurnEndPoint = IPEndPoint.Parse(line.Split(' ')[3]) };
    }

    /// <summary>Frames from the client summed over the server's "association ended" lines, once <paramref name="associations"/> have ended.</summary>
    private static async Task<long> RudFramesFromClientsAsync(TurnChain chain, int associations)
    {
        await chain.Chain.Server.WaitForStderrAsync("frames from the client", associations, TimeSpan.FromSeconds(60));
        return RudEndedPattern().Matches(chain.Chain.Server.Stderr).Sum(m => long.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture));
    }

    [GeneratedRegex(@"rud UDP association \d+ ended: (\d+) frames from the client")]
    private static partial Regex RudEndedPattern();

    /// <summary>
    /// 5 allocations (uclient -m 5 -c: one allocation per client, no RTCP) × 100 messages of 1,000
    /// bytes over channels, 0 lost on loopback, every one over a datagram stream.
    /// </summary>
    [Fact]
    public async Task Uclient_through_rud_loses_nothing()
    {
        const int clients = 5, messages = 100;
        await using var peer = await EchoPeer.StartAsync();
        await using var chain = await RudChainAsync(PtChain.FreeServer("rud", "127.0.0.1"));
        for (int attempt = 1; ; attempt++)
        {
            long kernelDropsBefore = UdpReceiveBufferErrors();
            var (exit, text) = await Uclient(chain, peer.Port, ["-n", messages.ToString(System.Globalization.CultureInfo.InvariantCulture), "-m", clients.ToString(System.Globalization.CultureInfo.InvariantCulture), "-l", "1000", "-c"]);
            long kernelDrops = UdpReceiveBufferErrors() - kernelDropsBefore;
            output.WriteLine($"attempt {attempt}: {LastLines(text)}; kernel UDP receive-buffer drops: {kernelDrops}");
            // Repeated (at most 3 attempts) only when the kernel itself dropped datagrams of a socket on this loaded machine.
            if (attempt < 3 && exit == 0 && !text.Contains("Total lost packets 0 ", StringComparison.Ordinal) && kernelDrops > 0) continue;
            AssertDelivered(exit, text, clients * messages, chain);
            break;
        }
        await chain.Chain.Client.WaitForStderrAsync("rud: UDP association on datagram stream");
        Assert.DoesNotContain("carried in a stream", chain.Chain.Server.Stderr);
        // Each allocation ends when uclient is done; its CLOSE ends the server's association, which logs its count.
        long frames = await RudFramesFromClientsAsync(chain, clients);
        output.WriteLine($"frames the server process received over datagram streams: {frames}");
        Assert.True(frames >= clients * messages, $"only {frames} frames crossed datagram streams\n{chain.Chain.Server.Stderr}");
        Assert.DoesNotMatch(@"[1-9]\d* not queued", chain.Chain.Client.Stderr + chain.Chain.Server.Stderr);
    }

    [Fact]
    public async Task Rud_bound_server_sends_every_peer_s_datagrams_to_its_target_over_datagram_streams()
    {
        await using var peer = await EchoPeer.StartAsync();
        await using var chain = await RudChainAsync(PtChain.BoundServer($"127.0.0.1:{peer.Port}", "rud"));
        // The client names a TEST-NET peer; the bound server process sends to its target instead (spec/turn.md §5.4).
        var (exit, text) = await Uclient(chain, peer.Port, ["-n", "20", "-m", "1", "-l", "1100", "-c"], peerAddress: "192.0.2.1");
        output.WriteLine(LastLines(text));
        AssertDelivered(exit, text, 20, chain);
        await chain.Chain.Client.WaitForStderrAsync("rud: UDP association on datagram stream");
        Assert.DoesNotContain("carried in a stream", chain.Chain.Server.Stderr);
    }

    /// <summary>
    /// CHECK and its answer cross the datagram stream: a peer outside the allow list gets 403 and the
    /// server process logs the refusal; data for it never reaches it; an allowed peer is reached.
    /// </summary>
    [Fact]
    public async Task Rud_peer_checks_over_datagram_streams_refuse_what_the_allow_list_refuses()
    {
        await using var peer = new UdpEcho();
        await using var other = new UdpEcho();
        await using var chain = await RudChainAsync(PtChain.FreeServer("rud", $"127.0.0.1:{peer.Port}"));
        await using var client = await UdpTurnClient.ConnectAsync(chain.TurnEndPoint);
        Assert.Equal(0, await client.AllocateAsync());
        var refused = PeerAddress.From(new IPEndPoint(IPAddress.Loopback, other.Port));
        Assert.Equal(403, await client.CreatePermissionAsync(refused));
        await chain.Chain.Server.WaitForStderrAsync("refused:");
        client.SendIndication(refused, "must not arrive"u8.ToArray()); // no permission: the TURN server drops it
        var allowed = PeerAddress.From(new IPEndPoint(IPAddress.Loopback, peer.Port));
        Assert.Equal(0, await client.CreatePermissionAsync(allowed));
        client.SendIndication(allowed, "ping"u8.ToArray());
        var (from, data) = await client.ReceiveDataAsync();
        Assert.Equal("ping"u8.ToArray(), data);
        Assert.Equal(peer.Port, from.Port);
        Assert.Equal(1, peer.Received);
        Assert.Equal(0, other.Received);
        await chain.Chain.Client.WaitForStderrAsync("rud: UDP association on datagram stream");
        Assert.DoesNotContain("carried in a stream", chain.Chain.Server.Stderr);
    }

    /// <summary>
    /// The largest payload is 1,178 bytes (a 1,200-byte RUD datagram less a 22-byte frame header):
    /// 1,179 bytes are dropped and counted by the client process, 1,178 cross and come back.
    /// </summary>
    [Fact]
    public async Task Rud_datagram_above_1178_bytes_is_dropped_and_counted()
    {
        await using var peer = new UdpEcho();
        await using var chain = await RudChainAsync(PtChain.FreeServer("rud", $"127.0.0.1:{peer.Port}"));
        var allowed = PeerAddress.From(new IPEndPoint(IPAddress.Loopback, peer.Port));
        await using (var client = await UdpTurnClient.ConnectAsync(chain.TurnEndPoint))
        {
            Assert.Equal(0, await client.AllocateAsync());
            Assert.Equal(0, await client.CreatePermissionAsync(allowed));
            client.SendIndication(allowed, new byte[1179]);
            var largest = new byte[1178];
            Random.Shared.NextBytes(largest);
            client.SendIndication(allowed, largest);
            var (_, data) = await client.ReceiveDataAsync();
            Assert.Equal(largest, data);
            Assert.Equal(1, peer.Received);
        }
        // Stopping the client process ends its allocations; each session logs its counters.
        var (s, c) = await chain.Chain.StopAsync();
        Assert.Equal(0, c);
        Assert.Equal(0, s);
        Assert.Contains("1 datagrams sent, 1 received, 1 too large for a RUD datagram", chain.Chain.Client.Stderr);
    }

    /// <summary>
    /// The load of the plain test (10 clients × 1,000 messages of 1,000 bytes at 1 ms intervals) over
    /// datagram streams on one RUD connection. Repeated (at most 3 attempts) only when the kernel
    /// dropped datagrams of uclient's or turnutils_peer's sockets on this loaded machine.
    /// </summary>
    [Fact]
    public async Task Uclient_load_of_10000_messages_through_rud_loses_nothing()
    {
        await using var peer = await EchoPeer.StartAsync();
        await using var chain = await RudChainAsync(PtChain.FreeServer("rud", "127.0.0.1"));
        for (int attempt = 1; ; attempt++)
        {
            long kernelDropsBefore = UdpReceiveBufferErrors();
            var (exit, text) = await Uclient(chain, peer.Port, ["-n", "1000", "-m", "10", "-l", "1000", "-z", "1", "-c"]);
            long kernelDrops = UdpReceiveBufferErrors() - kernelDropsBefore;
            output.WriteLine($"attempt {attempt}: {LastLines(text)}; kernel UDP receive-buffer drops during the run: {kernelDrops}");
            if (attempt < 3 && exit == 0 && !text.Contains("Total lost packets 0 ", StringComparison.Ordinal) && kernelDrops > 0) continue;
            AssertDelivered(exit, text, 10000, chain);
            break;
        }
        Assert.DoesNotContain("carried in a stream", chain.Chain.Server.Stderr);
    }

    /// <summary>
    /// The test speaks §12.1 itself, with the real RUD endpoint, to a real server process: DATA as the
    /// first datagram of a stream gets CLOSE; OPEN gets RELAYED; CHECK gets ALLOWED / REFUSED by the
    /// allow list; junk is dropped; DATA to the allowed peer comes back; DATA to a refused peer never
    /// arrives (and is logged); a keep-alive gets RELAYED; CLOSE ends the association (logged with its counts).
    /// </summary>
    [Fact]
    public async Task Rud_server_follows_the_datagram_stream_rules()
    {
        await using var peer = new UdpEcho();
        await using var other = new UdpEcho();
        byte[] key = [];
        await using var chain = await RudChainAsync(PtChain.FreeServer("rud", $"127.0.0.1:{peer.Port}"), k => key = k);
        await using var endpoint = PtHost.Transports.Rud.RudEndpoint.Bind(new IPEndPoint(IPAddress.Loopback, 0), new PtHost.Transports.Rud.RudEndpointOptions());
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        var conn = await endpoint.ConnectAsync(chain.Chain.ServerEndPoint, key, cts.Token);
        var allowed = PeerAddress.From(new IPEndPoint(IPAddress.Loopback, peer.Port));
        var refused = PeerAddress.From(new IPEndPoint(IPAddress.Loopback, other.Port));
        var any6 = PeerAddress.FromBytes(new byte[16], 0);
        var buffer = new byte[2048];

        void Send(PtHost.Transports.Rud.RudDatagramStream ch, DatagramFrameType type, PeerAddress to, ReadOnlySpan<byte> payload)
        {
            var frame = new byte[DatagramFrame.HeaderLength(to) + payload.Length];
            DatagramFrame.Write(frame, type, to, payload);
            Assert.True(ch.TrySend(frame));
        }
        async Task<(DatagramFrameType Type, PeerAddress Peer, byte[] Payload)> ReceiveAsync(PtHost.Transports.Rud.RudDatagramStream ch)
        {
            int n = await ch.ReceiveAsync(buffer, cts.Token);
            Assert.Equal(n, DatagramFrame.TryParse(buffer.AsSpan(0, n), out var type, out var from, out var payload));
            return (type, from, buffer[payload]);
        }

        var stray = conn.OpenDatagramStream();
        Send(stray, DatagramFrameType.Data, allowed, "first"u8);
        Assert.Equal((DatagramFrameType)0x06, (await ReceiveAsync(stray)).Type); // not OPEN: CLOSE
        await chain.Chain.Server.WaitForStderrAsync("is not OPEN [::]:0; CLOSE sent");

        var ch = conn.OpenDatagramStream();
        Send(ch, (DatagramFrameType)0x05, any6, default);
        var relayed = await ReceiveAsync(ch);
        Assert.Equal(DatagramFrameType.Relayed, relayed.Type);
        Assert.NotEqual(0, relayed.Peer.Port);
        Send(ch, DatagramFrameType.Check, allowed, default);
        Assert.Equal((DatagramFrameType.Allowed, allowed), Pick(await ReceiveAsync(ch)));
        Send(ch, DatagramFrameType.Check, refused, default);
        Assert.Equal((DatagramFrameType.Refused, refused), Pick(await ReceiveAsync(ch)));
        Assert.True(ch.TrySend(new byte[] { 0xde, 0xad, 0xbe, 0xef, 0x00 })); // not a frame: dropped, the association goes on
        Send(ch, DatagramFrameType.Data, refused, "must not arrive"u8); // dropped by the server process
        var payload = new byte[1178];
        Random.Shared.NextBytes(payload);
        Send(ch, DatagramFrameType.Data, allowed, payload);
        var echo = await ReceiveAsync(ch);
        Assert.Equal((DatagramFrameType.Data, allowed), Pick(echo));
        Assert.Equal(payload, echo.Payload);
        Send(ch, (DatagramFrameType)0x05, any6.WithPort(1), default);
        Assert.Equal(DatagramFrameType.Relayed, (await ReceiveAsync(ch)).Type); // keep-alive of the open association
        Send(ch, (DatagramFrameType)0x06, PeerAddress.FromBytes(new byte[4], 0), default);
        await chain.Chain.Server.WaitForStderrAsync("ended: 4 frames from the client, 4 datagrams to it, 0 too large for the carrier, 0 not sent (carrier full or gone), 1 malformed");
        Assert.Equal(1, peer.Received);
        Assert.Equal(0, other.Received);
        conn.Close();
    }

    /// <summary>
    /// The stream-carried path still works on the server (an older client, or any IStreamCarrier
    /// use): an asynchronous stream whose plain preamble asks for a datagram session carries the
    /// association with spec/turn.md §5.2 framing, and the server process logs that it did.
    /// </summary>
    [Fact]
    public async Task Rud_server_still_serves_a_UDP_association_carried_in_a_stream()
    {
        await using var peer = new UdpEcho();
        byte[] key = [];
        await using var chain = await RudChainAsync(PtChain.FreeServer("rud", $"127.0.0.1:{peer.Port}"), k => key = k);
        await using var endpoint = PtHost.Transports.Rud.RudEndpoint.Bind(new IPEndPoint(IPAddress.Loopback, 0), new PtHost.Transports.Rud.RudEndpointOptions());
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        var conn = await endpoint.ConnectAsync(chain.Chain.ServerEndPoint, key, cts.Token);
        var stream = conn.OpenStream();
        await SessionPreamble.RequestAsync(stream, null, "test", cts.Token, SessionKind.Datagram);
        await using var session = await StreamAssociation.StartAsync(stream, cts.Token);
        var allowed = PeerAddress.From(new IPEndPoint(IPAddress.Loopback, peer.Port));
        var buffer = new byte[2048];
        var receiving = session.ReceiveAsync(buffer, cts.Token).AsTask(); // the receive loop also takes the CHECK's answer
        Assert.True(await session.CheckPeerAsync(allowed, cts.Token));
        await session.SendAsync(allowed, "over a stream"u8.ToArray(), cts.Token);
        var (from, n) = await receiving;
        Assert.Equal(allowed, from);
        Assert.Equal("over a stream"u8.ToArray(), buffer[..n]);
        await chain.Chain.Server.WaitForStderrAsync("a UDP association carried in a stream");
        conn.Close();
    }
}
