using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text.Json.Nodes;
using Microsoft.Extensions.Logging.Abstractions;
using PtHost.Quic;
using PtHost.Testing;
using PtHost.Transports.Asport;

namespace PtHost.Benchmarks;

/// <summary>
/// Issue 24's ASPORT Initial flood: a legitimate ASPORT client (in this process, registered before the
/// attack) carries an upload through the relay's public port, once unattacked and once while 200 loopback
/// addresses flood the relay with distinct QUIC Initials (QuicInitialFlood), in the same repetition. The
/// legitimate rate under attack over the unattacked one (target ≥ 0.5) and the relay's peak RSS (target
/// under 512 MiB) are the figures; the flood's rate and the bytes the relay answered it with go to the JSON.
/// </summary>
public sealed class AsportAttackScenario : IScenario
{
    private const int FloodPerSecond = 5000, FloodSources = 200;

    public string Name => "asport-attack";
    public string Title => "ASPORT relay under an Initial flood: a legitimate upload's rate, relay memory";

    public async Task RunAsync(Context ctx, ScenarioRun run)
    {
        var quiet = new Figure { Key = "asport_attack_unattacked_gbps", Label = "Upload via the relay, unattacked", Unit = "Gbit/s" };
        var attacked = new Figure { Key = "asport_attack_flooded_gbps", Label = $"Upload via the relay, {FloodPerSecond:N0} Initials/s from {FloodSources} addresses", Unit = "Gbit/s" };
        var ratio = new Figure { Key = "asport_attack_ratio", Label = "ratio under attack to unattacked", Unit = "", Indent = 1, Goal = Goal.AtLeast, Target = 0.5 };
        var rss = new Figure { Key = "asport_attack_relay_rss_mib", Label = "relay RSS, peak during the flood", Unit = "MiB", Indent = 1, Format = "0", Goal = Goal.AtMost, Target = 512 };
        var answered = new Figure { Key = "asport_attack_answer_ratio", Label = "bytes the relay sent the flood per byte received", Unit = "", Indent = 1 };
        run.Add(quiet, attacked, ratio, rss, answered);
        var raw = run.Raw("asport_attack");
        int megabytes = ctx.Repetitions == 1 ? 128 : 256;
        for (int rep = 0; rep < ctx.Repetitions; rep++)
        {
            ctx.Say($"asport-attack {rep + 1}/{ctx.Repetitions}: {megabytes} MiB unattacked, then under the flood");
            int r = rep;
            double q = double.NaN;
            double a = await ScenarioRun.AttemptAsync(attacked, async () =>
            {
                var m = await MeasureAsync(ctx, megabytes).ConfigureAwait(false);
                quiet.Samples.Add(q = m.Quiet);
                rss.Samples.Add(m.PeakRssMiB);
                answered.Samples.Add(m.AnswerRatio);
                raw.Add(ScenarioRun.Tag(m.Raw, "asport_attack", r));
                return m.Attacked;
            }).ConfigureAwait(false);
            ScenarioRun.AddRatio(ratio, a, q, attacked, quiet);
        }
        if (quiet.Samples.Count == 0) quiet.Error ??= attacked.Error;
        if (rss.Samples.Count == 0) rss.Error ??= attacked.Error;
    }

    private sealed record Measurement(double Quiet, double Attacked, double PeakRssMiB, double AnswerRatio, JsonObject Raw);

    private static async Task<Measurement> MeasureAsync(Context ctx, int megabytes)
    {
        string state = ctx.NewStateDir();
        var (relay, relayEp, pin) = await AsportBench.StartRelayAsync(ctx, state).ConfigureAwait(false);
        await using var relayProcess = relay;
        using var sink = new CountingSink();
        await using var client = new AsportRelayClient(new AsportRelayClientOptions
        {
            Server = relayEp,
            Verification = QuicPeerVerification.Pinned(pin),
            User = Guid.Parse(AsportBench.UserId),
            Password = AsportBench.UserPassword,
            PortStart = 20000,
            PortEnd = 60000,
            LocalTarget = sink.EndPoint,
        }, NullLogger.Instance);
        client.Start();
        int port = await client.Registered.WaitAsync(TimeSpan.FromSeconds(30)).ConfigureAwait(false);
        long bytes = (long)megabytes << 20;

        double quiet = await UploadAsync(port, bytes, sink, null).ConfigureAwait(false);

        // Enough distinct Initials for the flood to outlast the attacked upload several times over.
        var initials = await QuicInitialFlood.CaptureAsync(4 * FloodPerSecond, AsportRelay.Alpn, TimeSpan.FromMinutes(2)).ConfigureAwait(false);
        await using var flood = QuicInitialFlood.Create(FloodSources);
        using var stop = new CancellationTokenSource();
        var flooding = flood.RunAsync(relayEp, initials, FloodPerSecond, stop.Token);
        await Eventually.TrueAsync(() => flood.Sent >= FloodPerSecond / 4, "the flood to be under way", TimeSpan.FromSeconds(30)).ConfigureAwait(false);
        long peak = 0;
        double underAttack = await UploadAsync(port, bytes, sink, () => peak = Math.Max(peak, ProcStats.RssBytes(relay.Pid))).ConfigureAwait(false);
        long sentDuring = flood.Sent;
        await stop.CancelAsync().ConfigureAwait(false);
        await flooding.ConfigureAwait(false);
        peak = Math.Max(peak, ProcStats.RssBytes(relay.Pid));
        long floodBytes = initials.Take((int)flood.Sent).Sum(i => (long)i.Length);
        double answerRatio = floodBytes == 0 ? 0 : (double)flood.AnswerBytes / floodBytes;
        var raw = new JsonObject
        {
            ["unattacked_gbps"] = quiet,
            ["attacked_gbps"] = underAttack,
            ["initials_sent"] = flood.Sent,
            ["initials_sent_during_upload"] = sentDuring,
            ["answers"] = flood.Answers,
            ["answer_bytes"] = flood.AnswerBytes,
            ["relay_peak_rss_bytes"] = peak,
        };
        return new(quiet, underAttack, peak / 1048576.0, answerRatio, raw);
    }

    /// <summary>Uploads <paramref name="bytes"/> through the public port; Gbit/s until the sink has them all.</summary>
    private static async Task<double> UploadAsync(int port, long bytes, CountingSink sink, Action? sample)
    {
        var chunk = new byte[1 << 20];
        Random.Shared.NextBytes(chunk);
        long before = sink.Received;
        var sw = Stopwatch.StartNew();
        using (var tcp = new TcpClient { NoDelay = true })
        {
            await tcp.ConnectAsync(IPAddress.Loopback, port).ConfigureAwait(false);
            var net = tcp.GetStream();
            for (long sent = 0; sent < bytes; sent += chunk.Length)
            {
                await net.WriteAsync(chunk).ConfigureAwait(false);
                sample?.Invoke();
            }
            tcp.Client.Shutdown(SocketShutdown.Send);
            await Eventually.TrueAsync(() => sink.Received - before >= bytes, "the upload to arrive", TimeSpan.FromMinutes(5)).ConfigureAwait(false);
        }
        return bytes * 8 / sw.Elapsed.TotalSeconds / 1e9;
    }

    /// <summary>The local service: accepts connections and counts what they carry.</summary>
    private sealed class CountingSink : IDisposable
    {
        private readonly TcpListener _listener = new(IPAddress.Loopback, 0);
        private long _received;

        public CountingSink()
        {
            _listener.Start();
            _ = Task.Run(AcceptAsync);
        }

        public IPEndPoint EndPoint => (IPEndPoint)_listener.LocalEndpoint;
        public long Received => Interlocked.Read(ref _received);

        private async Task AcceptAsync()
        {
            while (true)
            {
                TcpClient c;
                try { c = await _listener.AcceptTcpClientAsync().ConfigureAwait(false); }
                catch (Exception e) when (e is SocketException or ObjectDisposedException) { return; }
                _ = Task.Run(async () =>
                {
                    using (c)
                    {
                        var buf = new byte[256 * 1024];
                        var s = c.GetStream();
                        try
                        {
                            int n;
                            while ((n = await s.ReadAsync(buf).ConfigureAwait(false)) > 0) Interlocked.Add(ref _received, n);
                        }
                        catch (Exception e) when (e is IOException or SocketException) { }
                    }
                });
            }
        }

        public void Dispose() => _listener.Stop();
    }
}
