using System.Diagnostics;
using System.Globalization;
using System.Net;
using PtHost.Testing;
using PtHost.Transports.Rud;

namespace PtHost.Benchmarks;

/// <summary>
/// RUD in-process figures (run with --rud): handshake time p50 per exchange mode on loopback, and
/// one-way stream throughput through a seeded lossy UDP relay at 0, 1 and 5 % loss (5 ms each
/// way). No TCP or QUIC comparison: loss for TCP needs netem, which this machine does not have.
/// </summary>
internal static class RudBench
{
    public static async Task<int> RunAsync(bool quick)
    {
        int handshakes = quick ? 20 : 100;
        foreach (var (mode, server, withKey) in new[]
        {
            ("immediate", new RudEndpointOptions { StaticPrivateKey = X25519.GeneratePrivateKey(), Challenge = ChallengePolicy.Never }, true),
            ("deferred", new RudEndpointOptions { StaticPrivateKey = X25519.GeneratePrivateKey(), Challenge = ChallengePolicy.Always }, true),
            ("first contact", new RudEndpointOptions { StaticPrivateKey = X25519.GeneratePrivateKey(), AllowFirstContact = true }, false),
        })
        {
            await using var s = RudEndpoint.Bind(new IPEndPoint(IPAddress.Loopback, 0), server);
            await using var c = RudEndpoint.Bind(new IPEndPoint(IPAddress.Loopback, 0), new RudEndpointOptions());
            var times = new List<double>();
            for (int i = 0; i < handshakes; i++)
            {
                var watch = Stopwatch.StartNew();
                var conn = await c.ConnectAsync(s.LocalEndPoint, withKey ? s.StaticPublicKey : null, CancellationToken.None);
                times.Add(watch.Elapsed.TotalMilliseconds);
                conn.Close();
            }
            times.Sort();
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"rud handshake {mode,-14} p50 {times[times.Count / 2]:0.000} ms  p90 {times[times.Count * 9 / 10]:0.000} ms  ({handshakes} runs)"));
        }

        int size = (quick ? 5 : 20) << 20;
        foreach (double loss in new[] { 0.0, 0.01, 0.05 })
        {
            await using var s = RudEndpoint.Bind(new IPEndPoint(IPAddress.Loopback, 0), new RudEndpointOptions { StaticPrivateKey = X25519.GeneratePrivateKey() });
            await using var c = RudEndpoint.Bind(new IPEndPoint(IPAddress.Loopback, 0), new RudEndpointOptions());
            await using var relay = new LossyUdpRelay(s.LocalEndPoint, seed: 1) { Loss = loss, Delay = TimeSpan.FromMilliseconds(5) };
            using var cts = new CancellationTokenSource(TimeSpan.FromMinutes(5));
            var cc = await c.ConnectAsync(relay.EndPoint, s.StaticPublicKey, cts.Token);
            var sc = await s.AcceptConnectionAsync(cts.Token);
            var data = new byte[size];
            new Random(3).NextBytes(data);
            var watch = Stopwatch.StartNew();
            var stream = cc.OpenStream();
            var send = Task.Run(async () =>
            {
                for (int at = 0; at < data.Length; at += 64 << 10) await stream.WriteAsync(data.AsMemory(at, Math.Min(64 << 10, data.Length - at)), cts.Token);
                stream.ShutdownWrite();
            });
            using var traceStop = new CancellationTokenSource();
            var trace = Environment.GetEnvironmentVariable("PTHOST_BENCH_RUD_TRACE") is null ? Task.CompletedTask : Task.Run(async () =>
            {
                while (!traceStop.IsCancellationRequested)
                {
                    Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  t {watch.Elapsed.TotalMilliseconds:0} ms: {cc.DebugState}"));
                    try { await Task.Delay(50, traceStop.Token); } catch (OperationCanceledException) { }
                }
            });
            var peer = await sc.AcceptStreamAsync(cts.Token);
            long total = 0;
            var buffer = new byte[64 << 10];
            int n;
            while ((n = await peer.ReadAsync(buffer, cts.Token)) > 0) total += n;
            await send;
            if (total != data.Length) throw new InvalidOperationException($"received {total} of {data.Length} bytes");
            double seconds = watch.Elapsed.TotalSeconds;
            traceStop.Cancel();
            await trace;
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"rud throughput loss {loss * 100,3:0}%  rtt 10 ms  {size >> 20} MB in {seconds:0.00} s = {size / seconds / 1e6 * 8:0.0} Mbit/s  (relay dropped {relay.Dropped}, sender lost {c.Counters.PacketsLost}, congestion events {c.Counters.CongestionEvents}, tolerated {c.Counters.LossesTolerated}, spurious {c.Counters.SpuriousLosses}, PTOs {c.Counters.ProbeTimeouts}; {cc.DebugState})"));
        }
        return 0;
    }
}
