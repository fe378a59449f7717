using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text.Json.Nodes;
using PtHost.Quic;
using PtHost.Testing;
using PtHost.Transports.Rud;

namespace PtHost.Benchmarks;

/// <summary>
/// The measurements of the rud scenario over a <see cref="LossyLink"/>: iperf3 through the SOCKS
/// front end of a pthost client in namespace A to an iperf3 server in namespace B, carried by
/// plain (TCP), asport (QUIC) or rud (UDP) — each transport's own traffic crosses the link:
/// <list type="bullet">
/// <item>plain: client pthost (A) —TCP→ server pthost (B) → iperf3 server (B);</item>
/// <item>asport: client pthost (A) → ASPORT relay (A) —QUIC→ server pthost (B, the ASPORT client) → iperf3 server (B);</item>
/// <item>rud: client pthost (A) —RUD/UDP→ server pthost (B) → iperf3 server (B).</item>
/// </list>
/// Also the RUD handshake time per exchange mode and the QUIC handshake time across the same link.
/// </summary>
public static class RudPathBench
{
    private const string AsportUser = "6f0d0f5e-2b4c-4d6a-9c11-0123456789ab";
    private const string AsportPassword = "bench";

    /// <param name="CpuNsPerByte">CPU time (user + system) of the transport's pthost processes (client, server, and the relay
    /// for asport) per byte iperf3 received, in nanoseconds: what the transport costs per byte, steadier than Mbit/s on a busy machine.</param>
    public sealed record Result(double Mbps, JsonObject Raw, double CpuNsPerByte = double.NaN);

    private static int s_port = 30000;
    /// <summary>Ports inside the fresh namespaces are all free; a new one per run avoids TIME_WAIT left-overs.</summary>
    private static int NextPort() => Interlocked.Increment(ref s_port);

    private static Child StartIn(string ns, string name, string file, IEnumerable<string> args, bool pthost = true) =>
        Child.Start(name, "ip", [.. LossyLink.Exec(ns), file, .. args], pthost ? Chain.ExtraEnvFor(null) : null);

    private static JsonObject ServerConfig(string transport, string state, int iperfPort, JsonObject? options, bool bind)
    {
        var config = new JsonObject
        {
            ["role"] = "server",
            ["transports"] = new JsonArray(transport),
            ["target"] = $"127.0.0.1:{iperfPort}",
            ["state"] = Path.Combine(state, "server"),
            ["exit-on-stdin-close"] = true,
        };
        if (bind) config["bindaddr"] = new JsonObject { [transport] = LossyLink.AddressB + ":0" };
        if (options is not null) config["options"] = new JsonObject { [transport] = options };
        return config;
    }

    private static JsonObject ClientConfig(string transport, string state, JsonObject options) => new()
    {
        ["role"] = "client",
        ["transports"] = new JsonArray(transport),
        ["state"] = Path.Combine(state, "client"),
        ["exit-on-stdin-close"] = true,
        ["options"] = new JsonObject { [transport] = options },
    };

    private static async Task<string> SmethodAddressAsync(Child server, string transport)
    {
        var (_, line) = await server.WaitForLineAsync(l => l.StartsWith($"SMETHOD {transport} ", StringComparison.Ordinal), TimeSpan.FromSeconds(40), Chain.IsIpcError).ConfigureAwait(false);
        return line.Split(' ')[2];
    }

    private static async Task<int> SocksPortAsync(Child client, string transport)
    {
        var (_, line) = await client.WaitForLineAsync(l => l.StartsWith($"CMETHOD {transport} ", StringComparison.Ordinal), Chain.StartTimeout, Chain.IsIpcError).ConfigureAwait(false);
        return IPEndPoint.Parse(line.Split(' ')[3]).Port;
    }

    public static async Task<Result> PlainAsync(Context ctx, LossyLink link)
    {
        string state = ctx.NewStateDir();
        int iperfPort = NextPort();
        await using var server = StartIn(link.NamespaceB, "pthost server (plain, B)", ctx.PtHost, [ServerConfig("plain", state, iperfPort, null, bind: true).ToJsonString()]);
        string address = await SmethodAddressAsync(server, "plain").ConfigureAwait(false);
        await using var client = StartIn(link.NamespaceA, "pthost client (plain, A)", ctx.PtHost,
            [ClientConfig("plain", state, new JsonObject { ["serverAddress"] = address }).ToJsonString()]);
        int socks = await SocksPortAsync(client, "plain").ConfigureAwait(false);
        return await IperfAcrossAsync(ctx, link, state, socks, iperfPort, [client.Pid, server.Pid]).ConfigureAwait(false);
    }

    public static async Task<Result> RudAsync(Context ctx, LossyLink link)
    {
        string state = ctx.NewStateDir();
        int iperfPort = NextPort();
        byte[] key = X25519.GeneratePrivateKey();
        byte[] pub = new byte[X25519.KeySize];
        X25519.PublicKey(key, pub);
        await using var server = StartIn(link.NamespaceB, "pthost server (rud, B)", ctx.PtHost,
            [ServerConfig("rud", state, iperfPort, new JsonObject { ["key"] = Convert.ToBase64String(key) }, bind: true).ToJsonString()]);
        string address = await SmethodAddressAsync(server, "rud").ConfigureAwait(false);
        await using var client = StartIn(link.NamespaceA, "pthost client (rud, A)", ctx.PtHost,
            [ClientConfig("rud", state, new JsonObject { ["serverAddress"] = address, ["serverKey"] = Convert.ToBase64String(pub) }).ToJsonString()]);
        int socks = await SocksPortAsync(client, "rud").ConfigureAwait(false);
        return await IperfAcrossAsync(ctx, link, state, socks, iperfPort, [client.Pid, server.Pid]).ConfigureAwait(false);
    }

    public static async Task<Result> AsportAsync(Context ctx, LossyLink link, int handshakes)
    {
        string state = ctx.NewStateDir();
        int iperfPort = NextPort();
        byte[] pin;
        using (var ecdsa = ECDsa.Create(ECCurve.NamedCurves.nistP256))
        {
            var req = new CertificateRequest("CN=asport.bench", ecdsa, HashAlgorithmName.SHA256);
            using var cert = req.CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(7));
            await File.WriteAllTextAsync(Path.Combine(state, "cert.pem"), cert.ExportCertificatePem()).ConfigureAwait(false);
            PtHost.Net.PrivateFile.WriteNew(Path.Combine(state, "key.pem"), ecdsa.ExportPkcs8PrivateKeyPem()); // 0600 (spec/asport.md §5)
            pin = SHA256.HashData(cert.RawData);
        }
        var config = new JsonObject
        {
            ["certificate"] = "cert.pem",
            ["key"] = "key.pem",
            ["users"] = new JsonObject { [AsportUser] = AsportPassword },
            ["allowed_ports"] = new JsonArray("20000-60000"),
            ["allowed_networks"] = new JsonArray("127.0.0.0/8", "10.99.0.0/24"),
        };
        string configPath = Path.Combine(state, "asport.json");
        await File.WriteAllTextAsync(configPath, config.ToJsonString()).ConfigureAwait(false);
        await using var relay = StartIn(link.NamespaceA, "pthost relay asport (A)", ctx.PtHost,
            ["relay", "asport", "--listen", LossyLink.AddressA + ":0", "--config", configPath, "--loglevel", "warning"]);
        var (_, listen) = await relay.WaitForLineAsync(l => l.StartsWith("LISTEN asport ", StringComparison.Ordinal), Chain.StartTimeout).ConfigureAwait(false);
        var relayEp = IPEndPoint.Parse(listen.Split(' ')[2]);

        // QUIC handshakes (ALPN asport, pinned) from namespace B to the relay in A: across the link.
        var times = new List<double>();
        if (handshakes > 0)
        {
            await using var endpoint = LossyLink.InNamespace(link.NamespaceB, () => QuicEndpoint.CreateClient(new IPEndPoint(IPAddress.Parse(LossyLink.AddressB), 0)));
            var options = new QuicClientOptions { Verification = QuicPeerVerification.Pinned(pin), ApplicationProtocols = ["asport"] };
            for (int i = 0; i < handshakes; i++)
            {
                using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(10));
                var sw = Stopwatch.StartNew();
                var conn = await endpoint.ConnectAsync(relayEp, options, cts.Token).ConfigureAwait(false);
                times.Add(sw.Elapsed.TotalMilliseconds);
                await conn.CloseAsync().ConfigureAwait(false);
            }
        }

        await using var server = StartIn(link.NamespaceB, "pthost server (asport, B)", ctx.PtHost,
            [ServerConfig("asport", state, iperfPort, new JsonObject
            {
                ["server"] = relayEp.ToString(), ["pin"] = Convert.ToHexString(pin), ["user"] = AsportUser, ["password"] = AsportPassword, ["ports"] = "20000-60000",
            }, bind: false).ToJsonString()]);
        string publicAddress = await SmethodAddressAsync(server, "asport").ConfigureAwait(false);
        await using var client = StartIn(link.NamespaceA, "pthost client (asport, A)", ctx.PtHost,
            [ClientConfig("asport", state, new JsonObject { ["serverAddress"] = publicAddress }).ToJsonString()]);
        int socks = await SocksPortAsync(client, "asport").ConfigureAwait(false);
        var result = await IperfAcrossAsync(ctx, link, state, socks, iperfPort, [client.Pid, server.Pid, relay.Pid]).ConfigureAwait(false);
        if (times.Count > 0) result.Raw["quic_handshake_ms"] = new JsonArray([.. times.Select(t => (JsonNode?)t)]);
        return result;
    }

    /// <summary>
    /// iperf3 -s in B on 127.0.0.1:<paramref name="iperfPort"/>; iperf3 -c in A through proxychains
    /// to the SOCKS port <paramref name="socksPort"/> in A. Returns the receiver's Mbit/s and the
    /// link's counters for the run (the loss actually applied) and the CPU seconds <paramref name="pids"/> used.
    /// </summary>
    private static async Task<Result> IperfAcrossAsync(Context ctx, LossyLink link, string state, int socksPort, int iperfPort, int[] pids)
    {
        string proxychains = ctx.Proxychains ?? throw new InvalidOperationException("proxychains4 is not available");
        string conf = Baselines.WriteProxychainsConf(state, socksPort);
        string port = iperfPort.ToString(CultureInfo.InvariantCulture);
        await using var server = StartIn(link.NamespaceB, "iperf3 -s (B)", ctx.Iperf3, ["-s", "-1", "-B", "127.0.0.1", "-p", port], pthost: false);
        if (await ProcessSockets.WaitTcpListenerAsync(server.Pid, TimeSpan.FromSeconds(10), iperfPort).ConfigureAwait(false) is null)
            throw new TimeoutException($"iperf3 -s in {link.NamespaceB} not listening on {port}: {server.StderrTail}");
        long deviceDrops0 = await link.DeviceTxDroppedAsync().ConfigureAwait(false);
        link.ResetCounters();
        double[] cpu0 = [.. pids.Select(Sys.CpuSeconds)];
        var sw = Stopwatch.StartNew();
        var r = await Child.RunAsync("ip", [.. LossyLink.Exec(link.NamespaceA), proxychains, "-q", "-f", conf,
            ctx.Iperf3, "-c", "127.0.0.1", "-p", port, "-t", ctx.IperfSeconds.ToString(CultureInfo.InvariantCulture), "-J"],
            TimeSpan.FromSeconds(ctx.IperfSeconds + 60)).ConfigureAwait(false);
        double seconds = sw.Elapsed.TotalSeconds;
        var counters = link.Counters;
        long deviceDrops1 = await link.DeviceTxDroppedAsync().ConfigureAwait(false);
        double[] cpu = [.. pids.Select((pid, i) => Sys.CpuSeconds(pid) - cpu0[i])];
        JsonObject json;
        try { json = JsonNode.Parse(r.Stdout)?.AsObject() ?? throw new FormatException("empty"); }
        catch (Exception e) when (e is System.Text.Json.JsonException or FormatException or InvalidOperationException)
        {
            throw new InvalidOperationException($"iperf3 client exited {r.ExitCode} without JSON: {Sys.Tail(r.Stdout, 300)} {r.StderrTail}");
        }
        if (json["error"] is { } err) throw new InvalidOperationException($"iperf3: {err}");
        double bps = json["end"]?["sum_received"]?["bits_per_second"]?.GetValue<double>()
                     ?? throw new InvalidOperationException("iperf3 JSON has no end.sum_received.bits_per_second");
        double received = json["end"]?["sum_received"]?["bytes"]?.GetValue<double>() ?? double.NaN;
        double cpuNsPerByte = received > 0 ? cpu.Sum() * 1e9 / received : double.NaN;
        try { await server.WaitExitAsync(TimeSpan.FromSeconds(10)).ConfigureAwait(false); }
        catch (TimeoutException) { server.Kill(); }
        var raw = new JsonObject
        {
            ["bits_per_second"] = bps,
            ["tcp_retransmits_client_side"] = json["end"]?["sum_sent"]?["retransmits"]?.DeepClone(),
            ["link_loss_setting"] = link.Loss,
            ["link_loss_applied"] = counters.AppliedLoss,
            ["link_packets_forwarded"] = counters.Forwarded,
            ["link_packets_dropped"] = counters.Dropped,
            ["link_packets_tail_dropped"] = counters.Overflow,
            // Dropped by a TUN device's own 500-packet queue before the link's reader saw them
            // (a shallow buffer in front of the link; counted for every transport alike).
            ["link_device_tx_dropped"] = deviceDrops0 < 0 || deviceDrops1 < 0 ? null : deviceDrops1 - deviceDrops0,
            ["link_bytes_forwarded"] = counters.Bytes,
            ["link_seconds"] = seconds,
            ["cpu_seconds_client_server_relay"] = new JsonArray([.. cpu.Select(c => (JsonNode?)c)]),
            ["bytes_received"] = double.IsNaN(received) ? null : received,
            ["cpu_ns_per_byte"] = double.IsNaN(cpuNsPerByte) ? null : cpuNsPerByte,
        };
        return new Result(bps / 1e6, raw, cpuNsPerByte);
    }

    /// <summary>
    /// RUD handshake times (ms) across the link for one exchange mode: an in-process endpoint in B
    /// (the responder) and one in A (the initiator); each connection is closed after its handshake.
    /// </summary>
    public static async Task<List<double>> RudHandshakesAsync(LossyLink link, string mode, int count)
    {
        var (serverOptions, withKey) = mode switch
        {
            "immediate" => (new RudEndpointOptions { StaticPrivateKey = X25519.GeneratePrivateKey(), Challenge = ChallengePolicy.Never }, true),
            "deferred" => (new RudEndpointOptions { StaticPrivateKey = X25519.GeneratePrivateKey(), Challenge = ChallengePolicy.Always }, true),
            "first contact" => (new RudEndpointOptions { StaticPrivateKey = X25519.GeneratePrivateKey(), AllowFirstContact = true }, false),
            _ => throw new ArgumentException("unknown mode " + mode, nameof(mode)),
        };
        await using var s = LossyLink.InNamespace(link.NamespaceB, () => RudEndpoint.Bind(new IPEndPoint(IPAddress.Parse(LossyLink.AddressB), 0), serverOptions));
        await using var c = LossyLink.InNamespace(link.NamespaceA, () => RudEndpoint.Bind(new IPEndPoint(IPAddress.Parse(LossyLink.AddressA), 0), new RudEndpointOptions()));
        using var accept = new CancellationTokenSource(TimeSpan.FromMinutes(2));
        // The responder's side must be accepted, or its queue of new connections fills.
        var acceptor = Task.Run(async () =>
        {
            try { while (true) (await s.AcceptConnectionAsync(accept.Token).ConfigureAwait(false)).Close(); }
            catch (OperationCanceledException) { }
        });
        var times = new List<double>(count);
        try
        {
            for (int i = 0; i < count; i++)
            {
                using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(10));
                var sw = Stopwatch.StartNew();
                var conn = await c.ConnectAsync(s.LocalEndPoint, withKey ? s.StaticPublicKey : null, cts.Token).ConfigureAwait(false);
                times.Add(sw.Elapsed.TotalMilliseconds);
                conn.Close();
            }
        }
        finally
        {
            await accept.CancelAsync().ConfigureAwait(false);
            await acceptor.ConfigureAwait(false);
        }
        return times;
    }
}
