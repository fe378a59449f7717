using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text.Json.Nodes;
using PtHost.Testing;
using PtHost.Transports.Jet;

namespace PtHost.Benchmarks;

/// <summary>
/// The jet scenario (spec/jet.md): the relay's throughput on a tcp:// candidate against the same
/// blast over direct loopback (target ≥ 0.6); the jet transport end to end (TLS 1.3, tcp candidate)
/// against plain, with iperf3; and the time from SOCKS CONNECT to the first echoed byte with every
/// candidate kind raced.
/// </summary>
public static class JetBench
{
    private const int BlastBuffer = 256 * 1024;

    public static async Task RunAsync(Context ctx, List<Figure> figures, JsonObject details)
    {
        var direct = new Figure { Key = "jet_blast_direct_gbps", Label = "JET: byte blast over direct loopback (reference)", Unit = "Gbit/s" };
        var relayed = new Figure { Key = "jet_relay_tcp_gbps", Label = "JET: the same blast through the relay, tcp candidate", Unit = "Gbit/s" };
        var relayRatio = new Figure { Key = "jet_relay_tcp_ratio", Label = "ratio to direct", Unit = "", Indent = 1, Goal = Goal.AtLeast, Target = 0.6 };
        var plain = new Figure { Key = "jet_plain_e2e_gbps", Label = "iperf3 via client->plain->server (reference)", Unit = "Gbit/s" };
        var jet = new Figure { Key = "jet_e2e_gbps", Label = "iperf3 via client->jet (TLS, relay tcp)->server", Unit = "Gbit/s" };
        var jetRatio = new Figure { Key = "jet_e2e_ratio", Label = "ratio to plain", Unit = "", Indent = 1 };
        var firstByte = new Figure { Key = "jet_connect_first_byte_ms", Label = "JET: SOCKS CONNECT to first echoed byte, all candidates raced (p50)", Unit = "ms", Format = "0.0" };
        figures.AddRange([direct, relayed, relayRatio, plain, jet, jetRatio, firstByte]);
        var raw = new JsonArray();
        details["jet"] = raw;
        try
        {
            await Sys.EnsureToolsAsync([("iperf3", "iperf3"), ("proxychains4", "proxychains4")], ctx.Say).ConfigureAwait(false);
            ctx.Iperf3 = Sys.Which("iperf3")!;
            ctx.Proxychains = Sys.Which("proxychains4");
            await using var relay = await JetRelayChild.StartAsync(ctx.PtHost).ConfigureAwait(false);
            for (int rep = 0; rep < ctx.Repetitions; rep++)
            {
                ctx.Say($"jet {rep + 1}/{ctx.Repetitions}: blast direct, then through the relay");
                double d = await Measure(direct, () => BlastDirectAsync(ctx.IperfSeconds)).ConfigureAwait(false);
                double r = await Measure(relayed, () => BlastRelayAsync(relay, ctx.IperfSeconds)).ConfigureAwait(false);
                if (d > 0 && !double.IsNaN(r)) relayRatio.Samples.Add(r / d);
                raw.Add(new JsonObject { ["kind"] = "blast", ["rep"] = rep, ["direct_gbps"] = d, ["relay_gbps"] = r });

                ctx.Say($"jet {rep + 1}/{ctx.Repetitions}: iperf3 through plain, then through jet");
                double p = await Measure(plain, async () => (await Measurements.IperfChainAsync(ctx, noSplice: false).ConfigureAwait(false)).Gbps).ConfigureAwait(false);
                double j = await Measure(jet, () => IperfJetAsync(ctx, relay)).ConfigureAwait(false);
                if (p > 0 && !double.IsNaN(j)) jetRatio.Samples.Add(j / p);
                raw.Add(new JsonObject { ["kind"] = "e2e", ["rep"] = rep, ["plain_gbps"] = p, ["jet_gbps"] = j });
            }
            ctx.Say("jet: CONNECT to first byte, every candidate raced");
            await Measure(firstByte, () => FirstByteAsync(ctx, relay, raw)).ConfigureAwait(false);
        }
        catch (Exception e) when (e is InvalidOperationException or TimeoutException or IOException or SocketException)
        {
            ctx.Say("jet: " + e.Message);
            foreach (var f in new[] { direct, relayed, relayRatio, plain, jet, jetRatio, firstByte }) f.Error ??= e.Message;
        }
        if (relayRatio.Samples.Count > 0) relayRatio.Error = null;
        if (jetRatio.Samples.Count > 0) jetRatio.Error = null;
    }

    private static async Task<double> Measure(Figure figure, Func<Task<double>> run)
    {
        try
        {
            double v = await run().ConfigureAwait(false);
            figure.Samples.Add(v);
            return v;
        }
        catch (Exception e) when (e is InvalidOperationException or TimeoutException or IOException or SocketException or HttpRequestException or OperationCanceledException)
        {
            Console.Error.WriteLine($"bench: {figure.Label}: {e.Message}");
            if (figure.Samples.Count == 0) figure.Error ??= e.Message;
            return double.NaN;
        }
    }

    // ---------------------------------------------------------------- relay throughput

    /// <summary>One sender, one receiver, <paramref name="seconds"/> of 256 KiB writes; returns the receiver's Gbit/s.</summary>
    private static async Task<double> BlastAsync(Socket sender, Socket receiver, int seconds)
    {
        var buffer = new byte[BlastBuffer];
        Random.Shared.NextBytes(buffer);
        var watch = Stopwatch.StartNew();
        var send = Task.Run(async () =>
        {
            while (watch.Elapsed.TotalSeconds < seconds) await sender.SendAsync(buffer, SocketFlags.None).ConfigureAwait(false);
            sender.Shutdown(SocketShutdown.Send);
        });
        long total = 0;
        var into = new byte[BlastBuffer];
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(seconds + 30));
        int n;
        while ((n = await receiver.ReceiveAsync(into, SocketFlags.None, cts.Token).ConfigureAwait(false)) > 0) total += n;
        double elapsed = watch.Elapsed.TotalSeconds;
        await send.ConfigureAwait(false);
        return total * 8 / elapsed / 1e9;
    }

    private static async Task<double> BlastDirectAsync(int seconds)
    {
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen(1);
        using var a = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        await a.ConnectAsync(listener.LocalEndPoint!).ConfigureAwait(false);
        using var b = await listener.AcceptAsync().ConfigureAwait(false);
        return await BlastAsync(a, b, seconds).ConfigureAwait(false);
    }

    private static async Task<double> BlastRelayAsync(JetRelayChild relay, int seconds)
    {
        var (aid, cid, host) = await relay.CreateTcpCandidateAsync().ConfigureAwait(false);
        using var acceptor = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        await acceptor.ConnectAsync(relay.Tcp).ConfigureAwait(false);
        await acceptor.SendAsync(JetWire.BuildPacket(JetWire.BuildRequest(JetMethod.Accept, aid, cid, host)), SocketFlags.None).ConfigureAwait(false);
        await relay.WaitAcceptedAsync(aid, cid).ConfigureAwait(false);
        // spec/jet.md §4: the relay answers the v2 accept with a 200 before any relayed byte.
        using (var accepted = new NetworkStream(acceptor, ownsSocket: false)) await ReadPacketAsync(accepted).ConfigureAwait(false);
        using var connector = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        await connector.ConnectAsync(relay.Tcp).ConfigureAwait(false);
        await connector.SendAsync(JetWire.BuildPacket(JetWire.BuildRequest(JetMethod.Connect, aid, cid, host)), SocketFlags.None).ConfigureAwait(false);
        using (var stream = new NetworkStream(connector, ownsSocket: false)) await ReadPacketAsync(stream).ConfigureAwait(false);
        return await BlastAsync(connector, acceptor, seconds).ConfigureAwait(false);
    }

    /// <summary>Reads one JET packet (a response) and nothing past it.</summary>
    private static async Task ReadPacketAsync(NetworkStream stream)
    {
        byte[] header = new byte[JetWire.HeaderLength];
        await stream.ReadExactlyAsync(header).ConfigureAwait(false);
        if (JetWire.ParseHeader(header, out int size, out _) != JetPacketError.None) throw new InvalidOperationException("relay sent no JET packet");
        await stream.ReadExactlyAsync(new byte[size - JetWire.HeaderLength]).ConfigureAwait(false);
    }

    // ---------------------------------------------------------------- jet end to end

    private static async Task<double> IperfJetAsync(Context ctx, JetRelayChild relay)
    {
        await using var iperf = await Iperf3Server.StartAsync(ctx.Iperf3).ConfigureAwait(false);
        string state = ctx.NewStateDir();
        await using var chain = await JetChain.StartAsync(ctx.PtHost, state, relay, $"127.0.0.1:{iperf.Port}", ["tcp"]).ConfigureAwait(false);
        string conf = Baselines.WriteProxychainsConf(state, chain.Socks.Port);
        var (gbps, _) = await Measurements.IperfOnceAsync(ctx, iperf, iperf.Port, [ctx.Proxychains!, "-q", "-f", conf]).ConfigureAwait(false);
        return gbps;
    }

    private static async Task<double> FirstByteAsync(Context ctx, JetRelayChild relay, JsonArray raw)
    {
        await using var echo = new EchoServer(recordLimit: 0);
        string state = ctx.NewStateDir();
        await using var chain = await JetChain.StartAsync(ctx.PtHost, state, relay, echo.EndPoint.ToString(), ["tcp", "tls", "ws", "wss", "direct"]).ConfigureAwait(false);
        var samples = new List<double>();
        int runs = ctx.Repetitions * 10;
        byte[] one = [42];
        for (int i = 0; i < runs + 1; i++)
        {
            using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30));
            long start = Stopwatch.GetTimestamp();
            using var s = await Socks5Client.ConnectAsync(chain.Socks, echo.EndPoint, cts.Token).ConfigureAwait(false);
            await s.SendAsync(one, SocketFlags.None, cts.Token).ConfigureAwait(false);
            var back = new byte[1];
            if (await s.ReceiveAsync(back, SocketFlags.None, cts.Token).ConfigureAwait(false) != 1) throw new IOException("echo closed");
            if (i > 0) samples.Add(Stopwatch.GetElapsedTime(start).TotalMilliseconds); // the first one warms up
        }
        samples.Sort();
        raw.Add(new JsonObject { ["kind"] = "first_byte", ["samples_ms"] = new JsonArray([.. samples.Select(x => (JsonNode?)JsonValue.Create(x))]) });
        return Stats.Median(samples);
    }

    // ---------------------------------------------------------------- processes

    /// <summary>A <c>pthost relay jet</c> child on loopback and its REST API.</summary>
    private sealed class JetRelayChild : IAsyncDisposable
    {
        private JetRelayChild(Child child, IPEndPoint http, IPEndPoint tcp)
        {
            Child = child;
            Http = http;
            Tcp = tcp;
            Rest = new HttpClient { BaseAddress = new Uri($"http://{http}"), Timeout = TimeSpan.FromSeconds(20) };
        }

        public Child Child { get; }
        public IPEndPoint Http { get; }
        public IPEndPoint Tcp { get; }
        public HttpClient Rest { get; }

        public static async Task<JetRelayChild> StartAsync(string pthost)
        {
            var child = Child.Start("pthost relay jet", pthost, ["relay", "jet", "--listen", "127.0.0.1:0", "--loglevel", "warning"]);
            try
            {
                var (_, line) = await child.WaitForLineAsync(l => l.StartsWith("LISTEN jet ", StringComparison.Ordinal), Chain.StartTimeout).ConfigureAwait(false);
                var fields = line.Split(' ');
                string tcp = fields.Single(f => f.StartsWith("tcp=", StringComparison.Ordinal))[4..];
                return new JetRelayChild(child, IPEndPoint.Parse(fields[2]), IPEndPoint.Parse(tcp));
            }
            catch
            {
                await child.DisposeAsync().ConfigureAwait(false);
                throw;
            }
        }

        public async Task<(Guid Aid, Guid Cid, string Host)> CreateTcpCandidateAsync()
        {
            var aid = Guid.NewGuid();
            (await Rest.PostAsync($"/jet/association/{aid}", null).ConfigureAwait(false)).EnsureSuccessStatusCode();
            var body = JsonNode.Parse(await (await Rest.PostAsync($"/jet/gather/{aid}", null).ConfigureAwait(false)).EnsureSuccessStatusCode().Content.ReadAsStringAsync().ConfigureAwait(false))!;
            foreach (var c in body["candidates"]!.AsArray())
            {
                var url = new Uri(c!["url"]!.GetValue<string>());
                if (url.Scheme == "tcp") return (aid, Guid.Parse(c["id"]!.GetValue<string>()), url.Authority);
            }
            throw new InvalidOperationException("gather returned no tcp candidate");
        }

        public Task WaitAcceptedAsync(Guid aid, Guid cid) =>
            Eventually.TrueAsync(async () =>
            {
                string text = await Rest.GetStringAsync($"/jet/association/{aid}").ConfigureAwait(false);
                return text.Contains($"\"id\":\"{cid}\"", StringComparison.Ordinal) && text.Contains("\"state\":\"accepted\"", StringComparison.Ordinal);
            }, "the relay to report the acceptor", TimeSpan.FromSeconds(10));

        public async ValueTask DisposeAsync()
        {
            Rest.Dispose();
            await Child.DisposeAsync().ConfigureAwait(false);
        }
    }

    /// <summary>A bound jet server (target given) and a jet client from <c>pthost generate-config jet</c>, signals carried by the harness.</summary>
    private sealed class JetChain : IAsyncDisposable
    {
        private readonly CancellationTokenSource _cts = new();
        private Task _forward = Task.CompletedTask;

        public required Child Server { get; init; }
        public required Child Client { get; init; }
        public required IPEndPoint Socks { get; init; }

        public static async Task<JetChain> StartAsync(string pthost, string state, JetRelayChild relay, string target, string[] kinds)
        {
            var generated = await Child.RunAsync(pthost, ["generate-config", "jet"], TimeSpan.FromSeconds(30)).ConfigureAwait(false);
            if (generated.ExitCode != 0) throw new InvalidOperationException($"generate-config jet exited {generated.ExitCode}: {generated.StderrTail}");
            var options = JsonNode.Parse(generated.Stdout)!.AsObject();
            var serverOptions = options["server"]!.AsObject();
            serverOptions["relay"] = $"http://{relay.Http}";
            serverOptions["kinds"] = new JsonArray([.. kinds.Select(k => (JsonNode?)JsonValue.Create(k))]);
            var serverConfig = new JsonObject
            {
                ["role"] = "server",
                ["transports"] = new JsonArray("jet"),
                ["target"] = target,
                ["options"] = new JsonObject { ["jet"] = serverOptions.DeepClone() },
                ["state"] = Path.Combine(state, "jet-server"),
                ["exit-on-stdin-close"] = true,
                ["loglevel"] = "warning",
            };
            var clientConfig = new JsonObject
            {
                ["role"] = "client",
                ["transports"] = new JsonArray("jet"),
                ["options"] = new JsonObject { ["jet"] = options["client"]!.DeepClone() },
                ["state"] = Path.Combine(state, "jet-client"),
                ["exit-on-stdin-close"] = true,
                ["loglevel"] = "warning",
            };
            var server = Child.Start("pthost jet server", pthost, [serverConfig.ToJsonString()]);
            Child? client = null;
            try
            {
                await server.WaitForLineAsync(l => l == "SMETHODS DONE", Chain.StartTimeout, l => l.StartsWith("SMETHOD-ERROR", StringComparison.Ordinal)).ConfigureAwait(false);
                client = Child.Start("pthost jet client", pthost, [clientConfig.ToJsonString()]);
                var (_, line) = await client.WaitForLineAsync(l => l.StartsWith("CMETHOD jet ", StringComparison.Ordinal), Chain.StartTimeout,
                    l => l.StartsWith("CMETHOD-ERROR", StringComparison.Ordinal)).ConfigureAwait(false);
                var socks = IPEndPoint.Parse(line.Split(' ')[3]);
                var chain = new JetChain { Server = server, Client = client, Socks = socks };
                chain._forward = Task.WhenAll(chain.ForwardAsync(client, server, "CMESSAGE "), chain.ForwardAsync(server, client, "SMESSAGE "));
                return chain;
            }
            catch
            {
                if (client is not null) await client.DisposeAsync().ConfigureAwait(false);
                await server.DisposeAsync().ConfigureAwait(false);
                throw;
            }
        }

        /// <summary>Copies every <paramref name="prefix"/> line of <paramref name="from"/> to <paramref name="to"/>'s stdin, as an application would.</summary>
        private async Task ForwardAsync(Child from, Child to, string prefix)
        {
            try
            {
                while (!_cts.IsCancellationRequested)
                {
                    var (_, line) = await from.WaitForLineAsync(l => l.StartsWith(prefix, StringComparison.Ordinal), TimeSpan.FromHours(1)).ConfigureAwait(false);
                    await to.WriteLineAsync(line).ConfigureAwait(false);
                }
            }
            catch (Exception e) when (e is InvalidOperationException or TimeoutException or IOException or ObjectDisposedException) { }
        }

        public async ValueTask DisposeAsync()
        {
            await _cts.CancelAsync().ConfigureAwait(false);
            await Client.DisposeAsync().ConfigureAwait(false);
            await Server.DisposeAsync().ConfigureAwait(false);
            await _forward.WaitAsync(TimeSpan.FromSeconds(5)).ContinueWith(_ => { }, TaskScheduler.Default).ConfigureAwait(false);
            _cts.Dispose();
        }
    }
}
