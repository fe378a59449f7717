using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text.Json.Nodes;
using PtHost.Testing;
using PtHost.Transports.Rud;

namespace PtHost.Benchmarks;

/// <summary>
/// RUD under attack (issue 24, "Tests and figures"): a legitimate session's echo rate through the real
/// client and server pthost (loopback, a free server) unattacked, then during (a) the sparse-frame attack
/// of a key holder (one byte in every page of the 4 MiB window on all 256 streams of each of its
/// connections, again and again, spec/rud.md §8.3) and (b) a forged-Exchange flood from 64 sources at
/// 3,000 a second (spec/rud.md §4.3–§4.4), all in one run. The attacks are those of the attack tests
/// (<see cref="RudAttacks"/>). Targets: each attacked rate ≥ 0.5 × the unattacked one; the server's peak
/// RSS (sampled every 50 ms through the whole run) below 512 MiB.
/// </summary>
public sealed class RudAttackScenario : IScenario
{
    private const int Transfer = 16 << 20;
    /// <summary>How long each rate is measured (sessions one after another), so that it spans the attack.</summary>
    private static readonly TimeSpan Measured = TimeSpan.FromSeconds(5);
    private static readonly IPAddress Attacker = IPAddress.Parse("127.0.0.2");

    public string Name => "rud-attack";
    public string Title => "RUD under attack: a legitimate session during sparse-frame and forged-handshake floods";

    public async Task RunAsync(Context ctx, ScenarioRun run)
    {
        var calm = new Figure { Key = "rud_attack_calm_mbps", Label = $"legitimate echo (sessions of {Transfer >> 20} MiB each way for {Measured.TotalSeconds:0} s), no attack", Unit = "Mbit/s", Format = "0.0" };
        var sparse = new Figure { Key = "rud_attack_sparse_mbps", Label = "the same during the sparse-frame attack", Unit = "Mbit/s", Format = "0.0" };
        var sparseRatio = new Figure { Key = "rud_attack_sparse_ratio", Label = "sparse-frame attack / no attack", Unit = "", Indent = 1, Goal = Goal.AtLeast, Target = 0.5 };
        var flood = new Figure { Key = "rud_attack_flood_mbps", Label = "the same during the forged-Exchange flood (3,000/s, 64 sources)", Unit = "Mbit/s", Format = "0.0" };
        var floodRatio = new Figure { Key = "rud_attack_flood_ratio", Label = "forged-Exchange flood / no attack", Unit = "", Indent = 1, Goal = Goal.AtLeast, Target = 0.5 };
        var rss = new Figure { Key = "rud_attack_server_peak_rss_mib", Label = "server peak RSS through the run", Unit = "MiB", Format = "0", Goal = Goal.AtMost, Target = 512 };
        run.Add(calm, sparse, sparseRatio, flood, floodRatio, rss);
        var raw = run.Raw("rud_attack");
        // The chain helpers start the pthost this harness measures.
        Environment.SetEnvironmentVariable("PTHOST_EXE", ctx.PtHost);
        for (int rep = 0; rep < ctx.Repetitions; rep++)
        {
            ctx.Say($"rud-attack {rep + 1}/{ctx.Repetitions}");
            try
            {
                await using var echo = new EchoServer();
                // An open server (no authorizedKeys, spec/rud.md §5.5): the sparse-frame attacker is any holder of the bridge line.
                await using var chain = await RudChain.StartAsync(editServer: o => o.Remove("authorizedKeys")).ConfigureAwait(false);
                var key = RudChain.ServerKey(chain);
                int pid = chain.Server.Pid;
                using var sampling = new CancellationTokenSource();
                long peak = 0;
                var sampler = Task.Run(async () =>
                {
                    while (!sampling.IsCancellationRequested)
                    {
                        try { peak = Math.Max(peak, ProcStats.RssBytes(pid)); }
                        catch (IOException) { }
                        try { await Task.Delay(50, sampling.Token).ConfigureAwait(false); }
                        catch (OperationCanceledException) { }
                    }
                });
                await EchoAsync(chain.SocksEndPoint, echo.Port).ConfigureAwait(false); // the client's connection exists and is warm
                double c = await EchoForAsync(chain.SocksEndPoint, echo.Port).ConfigureAwait(false);
                calm.Samples.Add(c);
                ctx.Say(string.Create(CultureInfo.InvariantCulture, $"rud-attack {rep + 1}: no attack {c:0.0} Mbit/s"));

                // (a) Sparse frames: the attacker keeps its connections' streams full of one-byte holes while the user moves data.
                await using var attacker = RudEndpoint.Bind(new IPEndPoint(Attacker, 0), new RudEndpointOptions { HandshakeTimeout = TimeSpan.FromSeconds(5) });
                using var stopSparse = new CancellationTokenSource();
                long sparseBytes = 0;
                int sparseRounds = 0;
                var sparseAttack = Task.Run(async () =>
                {
                    var open = new Queue<RudConnection>();
                    while (!stopSparse.IsCancellationRequested)
                    {
                        var conn = await attacker.ConnectAsync(chain.ServerEndPoint, key, stopSparse.Token).ConfigureAwait(false);
                        open.Enqueue(conn);
                        sparseBytes += await RudAttacks.SparseFramesAsync(conn, stopSparse.Token).ConfigureAwait(false);
                        sparseRounds++;
                        if (open.Count > 4) open.Dequeue().Close();
                    }
                });
                await Eventually.TrueAsync(() => sparseRounds > 0 || sparseAttack.IsCompleted, "the sparse-frame attack's first connection handled", TimeSpan.FromSeconds(120)).ConfigureAwait(false);
                if (sparseAttack.IsFaulted) await sparseAttack.ConfigureAwait(false);
                double s = await EchoForAsync(chain.SocksEndPoint, echo.Port).ConfigureAwait(false);
                bool sparseRunning = !sparseAttack.IsCompleted;
                await stopSparse.CancelAsync().ConfigureAwait(false);
                try { await sparseAttack.ConfigureAwait(false); }
                catch (OperationCanceledException) { }
                sparse.Samples.Add(s);
                ScenarioRun.AddRatio(sparseRatio, s, c, sparse, calm);
                ctx.Say(string.Create(CultureInfo.InvariantCulture, $"rud-attack {rep + 1}: sparse frames ({sparseRounds} connections × 256 streams, {sparseBytes >> 10} KiB of frames{(sparseRunning ? "" : ", attack ended early")}) {s:0.0} Mbit/s"));

                // (b) The forged-Exchange flood; its first second first (the server must see its rate).
                using var stopFlood = new CancellationTokenSource();
                var flooding = RudAttacks.ForgedExchangeFloodAsync(chain.ServerEndPoint, key, sources: 64, perSecond: 3000, TimeSpan.FromMinutes(5), stopFlood.Token);
                await Task.Delay(1000).ConfigureAwait(false); // the flood's first second, not a wait for a condition
                double f = await EchoForAsync(chain.SocksEndPoint, echo.Port).ConfigureAwait(false);
                await stopFlood.CancelAsync().ConfigureAwait(false);
                long forged = await flooding.ConfigureAwait(false);
                flood.Samples.Add(f);
                ScenarioRun.AddRatio(floodRatio, f, c, flood, calm);
                ctx.Say(string.Create(CultureInfo.InvariantCulture, $"rud-attack {rep + 1}: forged-Exchange flood ({forged:N0} sent) {f:0.0} Mbit/s"));

                await sampling.CancelAsync().ConfigureAwait(false);
                await sampler.ConfigureAwait(false);
                rss.Samples.Add(peak / (double)(1 << 20));
                raw.Add(ScenarioRun.Tag(new JsonObject
                {
                    ["calm_mbps"] = c,
                    ["sparse_mbps"] = s,
                    ["sparse_connections"] = sparseRounds,
                    ["sparse_frame_bytes"] = sparseBytes,
                    ["flood_mbps"] = f,
                    ["forged_exchanges"] = forged,
                    ["server_peak_rss_bytes"] = peak,
                }, "rud_attack", rep));
            }
            catch (Exception e) when (ScenarioRun.IsMeasurementFailure(e))
            {
                run.FailRemaining(e);
                return;
            }
        }
    }

    /// <summary>Sessions of <see cref="EchoAsync"/> one after another for at least <see cref="Measured"/>; Mbit/s of both directions over all of them.</summary>
    private static async Task<double> EchoForAsync(IPEndPoint socks, int echoPort)
    {
        var watch = Stopwatch.StartNew();
        long bytes = 0;
        while (watch.Elapsed < Measured) bytes += await EchoAsync(socks, echoPort).ConfigureAwait(false);
        return bytes * 8 / watch.Elapsed.TotalSeconds / 1e6;
    }

    /// <summary>One session through the SOCKS port to the echo server: <see cref="Transfer"/> bytes each way at once; returns the bytes moved (both directions).</summary>
    private static async Task<long> EchoAsync(IPEndPoint socks, int echoPort)
    {
        using var cts = new CancellationTokenSource(TimeSpan.FromMinutes(3));
        await using var c = await SocksClient.ConnectAsync(socks).ConfigureAwait(false);
        await c.SendAsync(SocksClient.Greeting(0)).ConfigureAwait(false);
        await c.ReadExactlyAsync(2).ConfigureAwait(false);
        await c.SendAsync(SocksClient.ConnectIPv4(IPAddress.Loopback, echoPort)).ConfigureAwait(false);
        byte reply = await c.ReadReplyAsync().ConfigureAwait(false);
        if (reply != 0) throw new InvalidOperationException($"the SOCKS reply was {reply}");
        var data = new byte[Transfer];
        new Random(7).NextBytes(data);
        var reader = Task.Run(async () =>
        {
            var buf = new byte[64 << 10];
            long total = 0;
            int n;
            while ((n = await c.Stream.ReadAsync(buf, cts.Token).ConfigureAwait(false)) > 0) total += n;
            return total;
        });
        await c.Stream.WriteAsync(data, cts.Token).ConfigureAwait(false);
        c.Socket.Shutdown(SocketShutdown.Send);
        long back = await reader.ConfigureAwait(false);
        if (back != Transfer) throw new InvalidOperationException($"echoed {back} of {Transfer} bytes");
        return 2L * Transfer;
    }
}
