using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text.Json.Nodes;
using PtHost.Quic;
using PtHost.Testing;

namespace PtHost.Benchmarks;

/// <summary>
/// The ASPORT scenario: iperf3 through pthost client → TCP → ASPORT server (QUIC) → pthost
/// server (the ASPORT client) → iperf3 server, against Debian's own ngtcp2 example pair
/// (gtlsclient downloading a file from gtlsserver) measured in the same run, and the QUIC
/// handshake time to the ASPORT server.
/// </summary>
public static class AsportBench
{
    private const string User = "6f0d0f5e-2b4c-4d6a-9c11-0123456789ab";
    private const string Password = "bench";

    private static (string CertPem, string KeyPem, byte[] Pin) NewCertificate()
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var req = new CertificateRequest("CN=asport.bench", key, HashAlgorithmName.SHA256);
        using var cert = req.CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(7));
        return (cert.ExportCertificatePem(), key.ExportPkcs8PrivateKeyPem(), SHA256.HashData(cert.RawData));
    }

    /// <summary>gtlsclient downloads <paramref name="megabytes"/> MiB from gtlsserver; returns Gbit/s.</summary>
    public static async Task<double> GtlsPairAsync(Context ctx, int megabytes)
    {
        string dir = Path.Combine(ctx.NewStateDir(), "gtls");
        Directory.CreateDirectory(Path.Combine(dir, "htdocs"));
        Directory.CreateDirectory(Path.Combine(dir, "dl"));
        var (cert, key, _) = NewCertificate();
        await File.WriteAllTextAsync(Path.Combine(dir, "cert.pem"), cert).ConfigureAwait(false);
        await File.WriteAllTextAsync(Path.Combine(dir, "key.pem"), key).ConfigureAwait(false);
        long size = (long)megabytes << 20;
        await using (var f = File.Create(Path.Combine(dir, "htdocs", "f")))
        {
            var chunk = RandomNumberGenerator.GetBytes(1 << 20);
            for (int i = 0; i < megabytes; i++) await f.WriteAsync(chunk).ConfigureAwait(false);
        }
        string server = Sys.Which("gtlsserver") ?? (File.Exists("/usr/sbin/gtlsserver") ? "/usr/sbin/gtlsserver" : throw new InvalidOperationException("gtlsserver missing (ngtcp2-server)"));
        string client = Sys.Which("gtlsclient") ?? throw new InvalidOperationException("gtlsclient missing (ngtcp2-client)");
        // Port 0: gtlsserver prints nothing, so its port is read from its own UDP socket.
        await using var s = Child.Start("gtlsserver", server, ["-q", "-d", Path.Combine(dir, "htdocs"), "127.0.0.1", "0", Path.Combine(dir, "key.pem"), Path.Combine(dir, "cert.pem")]);
        var bound = await ProcessSockets.WaitUdpSocketAsync(s.Pid, TimeSpan.FromSeconds(10)).ConfigureAwait(false)
            ?? throw new TimeoutException($"gtlsserver bound no UDP socket: {s.StderrTail}");
        string p = bound.Port.ToString(CultureInfo.InvariantCulture);
        for (int attempt = 0; ; attempt++)
        {
            var sw = Stopwatch.StartNew();
            var r = await Child.RunAsync(client, ["-q", "--exit-on-all-streams-close", "--download=" + Path.Combine(dir, "dl"), "127.0.0.1", p, $"https://127.0.0.1:{p}/f"], TimeSpan.FromMinutes(5)).ConfigureAwait(false);
            var got = new FileInfo(Path.Combine(dir, "dl", "f"));
            if (got.Exists && got.Length == size) return size * 8 / sw.Elapsed.TotalSeconds / 1e9;
            if (attempt == 2) throw new InvalidOperationException($"gtlsclient exit {r.ExitCode}, downloaded {(got.Exists ? got.Length : 0)} of {size}: {r.StderrTail}");
        }
    }

    public sealed record Result(double Gbps, double HandshakeP50Ms, JsonObject Raw);

    public const string UserId = User, UserPassword = Password;

    /// <summary>A <c>pthost relay asport</c> with a fresh certificate (key 0600, spec/asport.md §5) in <paramref name="state"/>; returns it, its address and the pin.</summary>
    public static async Task<(Child Relay, IPEndPoint EndPoint, byte[] Pin)> StartRelayAsync(Context ctx, string state)
    {
        var (certPem, keyPem, pin) = NewCertificate();
        await File.WriteAllTextAsync(Path.Combine(state, "cert.pem"), certPem).ConfigureAwait(false);
        PtHost.Net.PrivateFile.WriteNew(Path.Combine(state, "key.pem"), keyPem);
        var config = new JsonObject
        {
            ["certificate"] = "cert.pem",
            ["key"] = "key.pem",
            ["users"] = new JsonObject { [User] = Password },
            ["allowed_ports"] = new JsonArray("20000-60000"),
            ["allowed_networks"] = new JsonArray("127.0.0.0/8"),
        };
        string configPath = Path.Combine(state, "asport.json");
        await File.WriteAllTextAsync(configPath, config.ToJsonString()).ConfigureAwait(false);
        var relay = Child.Start("pthost relay asport", ctx.PtHost, ["relay", "asport", "--listen", "127.0.0.1:0", "--config", configPath, "--loglevel", "warning"]);
        try
        {
            var (_, listen) = await relay.WaitForLineAsync(l => l.StartsWith("LISTEN asport ", StringComparison.Ordinal), Chain.StartTimeout).ConfigureAwait(false);
            return (relay, IPEndPoint.Parse(listen.Split(' ')[2]), pin);
        }
        catch
        {
            await relay.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    public static async Task<Result> ThroughputAsync(Context ctx)
    {
        string proxychains = ctx.Proxychains ?? throw new InvalidOperationException("proxychains4 is not available");
        string state = ctx.NewStateDir();
        var (relay, relayEp, pin) = await StartRelayAsync(ctx, state).ConfigureAwait(false);
        await using var relayProcess = relay;

        // Handshake p50: QUIC handshakes (ALPN asport, pinned) to the relay from this process.
        var handshakes = new List<double>();
        await using (var endpoint = QuicEndpoint.CreateClient(new IPEndPoint(IPAddress.Loopback, 0)))
        {
            var options = new QuicClientOptions { Verification = QuicPeerVerification.Pinned(pin), ApplicationProtocols = ["asport"] };
            for (int i = 0; i < 30; i++)
            {
                var sw = Stopwatch.StartNew();
                var conn = await endpoint.ConnectAsync(relayEp, options).ConfigureAwait(false);
                handshakes.Add(sw.Elapsed.TotalMilliseconds);
                await conn.CloseAsync().ConfigureAwait(false);
            }
        }
        handshakes.Sort();

        await using var iperf = await Iperf3Server.StartAsync(ctx.Iperf3).ConfigureAwait(false);
        var serverConfig = new JsonObject
        {
            ["role"] = "server",
            ["transports"] = new JsonArray("asport"),
            ["target"] = $"127.0.0.1:{iperf.Port}",
            ["state"] = Path.Combine(state, "server"),
            ["exit-on-stdin-close"] = true,
            ["options"] = new JsonObject
            {
                ["asport"] = new JsonObject
                {
                    ["server"] = relayEp.ToString(), ["pin"] = Convert.ToHexString(pin), ["user"] = User, ["password"] = Password, ["ports"] = "20000-60000",
                },
            },
        };
        await using var server = Child.Start("pthost server (asport)", ctx.PtHost, [serverConfig.ToJsonString()]);
        var (_, smethod) = await server.WaitForLineAsync(l => l.StartsWith("SMETHOD asport ", StringComparison.Ordinal), TimeSpan.FromSeconds(40),
            l => l.StartsWith("SMETHOD-ERROR", StringComparison.Ordinal)).ConfigureAwait(false);
        string publicAddress = smethod.Split(' ')[2];
        var clientConfig = new JsonObject
        {
            ["role"] = "client",
            ["transports"] = new JsonArray("asport"),
            ["state"] = Path.Combine(state, "client"),
            ["exit-on-stdin-close"] = true,
            ["options"] = new JsonObject { ["asport"] = new JsonObject { ["serverAddress"] = publicAddress } },
        };
        await using var client = Child.Start("pthost client (asport)", ctx.PtHost, [clientConfig.ToJsonString()]);
        var (_, cmethod) = await client.WaitForLineAsync(l => l.StartsWith("CMETHOD asport ", StringComparison.Ordinal), Chain.StartTimeout,
            l => l.StartsWith("CMETHOD-ERROR", StringComparison.Ordinal)).ConfigureAwait(false);
        var socks = IPEndPoint.Parse(cmethod.Split(' ')[3]);
        string conf = Baselines.WriteProxychainsConf(state, socks.Port);
        var (gbps, raw) = await Measurements.IperfOnceAsync(ctx, iperf, iperf.Port, [proxychains, "-q", "-f", conf]).ConfigureAwait(false);
        raw["handshake_ms"] = new JsonArray(handshakes.Select(h => (JsonNode?)h).ToArray());
        return new Result(gbps, handshakes[handshakes.Count / 2], raw);
    }
}
