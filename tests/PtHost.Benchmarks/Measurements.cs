using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text.Json.Nodes;
using PtHost.Testing;

namespace PtHost.Benchmarks;

public sealed class Context
{
    public required string PtHost { get; init; }
    public required string WorkDir { get; init; }
    public required Action<string> Say { get; init; }
    public string Iperf3 { get; set; } = "iperf3";
    public string? Proxychains { get; set; }
    /// <summary>Bytes each in-harness stream measurement sends (<see cref="StreamPump"/>).</summary>
    public long StreamBytes { get; init; } = 4L << 30;
    /// <summary>Idle registered connections held on the zephyr relay.</summary>
    public int RelayIdleConnections { get; init; } = 10_000;
    public int Repetitions { get; init; }
    public int IperfSeconds { get; init; }
    public int ConnTotal { get; init; }
    public int ConnConcurrency { get; init; }
    public int IdleSessions { get; init; }
    public int StartupRuns { get; init; }
    /// <summary>The NativeAOT pthost (<c>--pthost-aot PATH</c>); published into artifacts/bench/pthost-aot on first use when not given.</summary>
    public string? PtHostAot { get; set; }
    public string? RepoRoot { get; init; }

    public async Task<string> NativeAotPtHostAsync()
    {
        if (PtHostAot is not null) return PtHostAot;
        if (RepoRoot is null) throw new InvalidOperationException("no NativeAOT pthost: give --pthost-aot PATH (cannot find PtHost.sln to publish one)");
        PtHostAot = await Sys.PublishPtHostAsync(RepoRoot, Path.Combine(RepoRoot, "artifacts", "bench", "pthost-aot"), Say, "-r", "linux-x64", "-p:PublishAot=true").ConfigureAwait(false);
        return PtHostAot;
    }

    private int _stateCounter;
    public string NewStateDir()
    {
        string d = Path.Combine(WorkDir, "state-" + Interlocked.Increment(ref _stateCounter).ToString(CultureInfo.InvariantCulture));
        Directory.CreateDirectory(d);
        return d;
    }
}

/// <summary>Result of opening many SOCKS sessions.</summary>
public sealed record LoadResult(double[] LatenciesMs, int Failures, string? FirstError, TimeSpan Elapsed)
{
    public int Successes => LatenciesMs.Length;
    public double PerSecond => Successes / Elapsed.TotalSeconds;
}

public static class Measurements
{
    // ---------------------------------------------------------------- 1. throughput

    /// <summary>
    /// One iperf3 run against a fresh <paramref name="server"/>, the client aimed at <paramref name="clientPort"/>
    /// (the server itself, or a forwarder in front of it), optionally wrapped (proxychains). Returns the
    /// receiver's Gbit/s.
    /// </summary>
    public static async Task<(double Gbps, JsonObject Raw)> IperfOnceAsync(Context ctx, Iperf3Server server, int clientPort, string[] wrapper)
    {
        string[] clientArgs = ["-c", "127.0.0.1", "-p", clientPort.ToString(CultureInfo.InvariantCulture), "-t", ctx.IperfSeconds.ToString(CultureInfo.InvariantCulture), "-J"];
        string file = wrapper.Length > 0 ? wrapper[0] : ctx.Iperf3;
        string[] args = wrapper.Length > 0 ? [.. wrapper[1..], ctx.Iperf3, .. clientArgs] : clientArgs;
        var r = await Child.RunAsync(file, args, TimeSpan.FromSeconds(ctx.IperfSeconds + 40)).ConfigureAwait(false);
        JsonObject json;
        try { json = JsonNode.Parse(r.Stdout)?.AsObject() ?? throw new FormatException("empty"); }
        catch (Exception e) when (e is System.Text.Json.JsonException or FormatException or InvalidOperationException)
        {
            throw new InvalidOperationException($"iperf3 client exited {r.ExitCode} without JSON: {Sys.Tail(r.Stdout, 300)} {r.StderrTail}");
        }
        if (json["error"] is { } err) throw new InvalidOperationException($"iperf3: {err}");
        double bps = json["end"]?["sum_received"]?["bits_per_second"]?.GetValue<double>()
                     ?? throw new InvalidOperationException("iperf3 JSON has no end.sum_received.bits_per_second");
        await server.FinishAsync().ConfigureAwait(false);
        var raw = new JsonObject
        {
            ["bits_per_second"] = bps,
            ["retransmits"] = json["end"]?["sum_sent"]?["retransmits"]?.DeepClone(),
            ["cpu_utilization_percent"] = json["end"]?["cpu_utilization_percent"]?.DeepClone(),
        };
        return (bps / 1e9, raw);
    }

    public static async Task<(double Gbps, JsonObject Raw)> IperfDirectAsync(Context ctx)
    {
        await using var server = await Iperf3Server.StartAsync(ctx.Iperf3).ConfigureAwait(false);
        return await IperfOnceAsync(ctx, server, server.Port, []).ConfigureAwait(false);
    }

    /// <summary>iperf3 through <c>socat -b 262144</c> (a plain TCP forwarder with large buffers) to the iperf3 server.</summary>
    public static async Task<(double Gbps, JsonObject Raw)> IperfSocatAsync(Context ctx)
    {
        await using var server = await Iperf3Server.StartAsync(ctx.Iperf3).ConfigureAwait(false);
        await using var socat = await Baselines.StartSocatAsync(server.Port).ConfigureAwait(false);
        var (gbps, raw) = await IperfOnceAsync(ctx, server, socat.Port, []).ConfigureAwait(false);
        raw["forwarder_cpu_seconds"] = Sys.CpuSeconds(socat.Child.Pid);
        return (gbps, raw);
    }

    /// <summary>iperf3 through proxychains → dante (a real SOCKS5 server) → the iperf3 server.</summary>
    public static async Task<(double Gbps, JsonObject Raw)> IperfDanteAsync(Context ctx)
    {
        await using var dante = await Baselines.StartDanteAsync(ctx.NewStateDir()).ConfigureAwait(false);
        await using var server = await Iperf3Server.StartAsync(ctx.Iperf3).ConfigureAwait(false);
        return await IperfViaSocksAsync(ctx, dante.Port, [], server).ConfigureAwait(false);
    }

    /// <summary>
    /// iperf3 through proxychains → a SOCKS5 server on 127.0.0.1:<paramref name="socksPort"/> → the iperf3
    /// <paramref name="server"/>; the CPU of <paramref name="pids"/> during the run is in the raw record.
    /// </summary>
    public static async Task<(double Gbps, JsonObject Raw)> IperfViaSocksAsync(Context ctx, int socksPort, int[] pids, Iperf3Server server)
    {
        string proxychains = ctx.Proxychains ?? throw new InvalidOperationException("proxychains4 is not available");
        string conf = Baselines.WriteProxychainsConf(ctx.NewStateDir(), socksPort);
        double cpuBefore = pids.Sum(Sys.CpuSeconds);
        var sw = Stopwatch.StartNew();
        var (gbps, raw) = await IperfOnceAsync(ctx, server, server.Port, [proxychains, "-q", "-f", conf]).ConfigureAwait(false);
        double cpu = pids.Sum(Sys.CpuSeconds) - cpuBefore;
        raw["pthost_cpu_seconds"] = cpu;
        raw["pthost_cpu_percent_of_one_core"] = cpu / sw.Elapsed.TotalSeconds * 100;
        return (gbps, raw);
    }

    /// <summary>iperf3 through proxychains → pthost client (SOCKS5) → plain → pthost server (target = the iperf3 server).</summary>
    public static async Task<(double Gbps, JsonObject Raw)> IperfChainAsync(Context ctx, bool noSplice)
    {
        await using var server = await Iperf3Server.StartAsync(ctx.Iperf3).ConfigureAwait(false);
        await using var chain = await Chain.StartAsync(ctx.PtHost, ctx.NewStateDir(), server.Port, noSplice).ConfigureAwait(false);
        return await IperfViaSocksAsync(ctx, chain.Socks.Port, [chain.Client.Pid, chain.Server.Pid], server).ConfigureAwait(false);
    }

    // ---------------------------------------------------------------- 2. connection set-up

    /// <summary>
    /// Opens <paramref name="total"/> SOCKS sessions with at most <paramref name="concurrency"/> in flight.
    /// Latency = TCP connect start → SOCKS success reply read. Sessions are closed at once unless
    /// <paramref name="keep"/> is given, in which case they are added to it and left open.
    /// </summary>
    public static async Task<LoadResult> OpenManyAsync(IPEndPoint socks, IPEndPoint destination, int total, int concurrency, List<Socket>? keep, TimeSpan perConnectTimeout)
    {
        var latencies = new double[total];
        var ok = new bool[total];
        int next = -1, failures = 0;
        string? firstError = null;
        var sw = Stopwatch.StartNew();
        async Task Worker()
        {
            while (true)
            {
                int i = Interlocked.Increment(ref next);
                if (i >= total) return;
                long start = Stopwatch.GetTimestamp();
                using var cts = new CancellationTokenSource(perConnectTimeout);
                try
                {
                    var s = await Socks5Client.ConnectAsync(socks, destination, cts.Token).ConfigureAwait(false);
                    latencies[i] = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
                    ok[i] = true;
                    if (keep is not null) lock (keep) keep.Add(s);
                    else s.Dispose();
                }
                catch (Exception e) when (e is SocketException or IOException or OperationCanceledException)
                {
                    Interlocked.Increment(ref failures);
                    Interlocked.CompareExchange(ref firstError, e.GetType().Name + ": " + e.Message, null);
                }
            }
        }
        await Task.WhenAll(Enumerable.Range(0, Math.Min(concurrency, total)).Select(_ => Task.Run(Worker))).ConfigureAwait(false);
        var elapsed = sw.Elapsed;
        return new LoadResult([.. latencies.Where((_, i) => ok[i])], failures, firstError, elapsed);
    }

    public sealed record ConnRateResult(double PerSecond, double P50Ms, double P99Ms, int Failures, string? FirstError, double PtHostCpuMsPerConn, double HarnessCpuMsPerConn, JsonObject Raw);

    /// <summary>Session set-up rate through the plain chain to an echo server in the harness.</summary>
    public static async Task<ConnRateResult> ConnRateAsync(Context ctx)
    {
        await using var echo = new EchoServer(recordLimit: 0);
        await using var chain = await Chain.StartAsync(ctx.PtHost, ctx.NewStateDir(), echo.EndPoint.Port, noSplice: false).ConfigureAwait(false);
        return await ConnRateAsync(chain.Socks, echo.EndPoint, [chain.Client.Pid, chain.Server.Pid], ctx.ConnTotal, ctx.ConnConcurrency, Math.Min(500, ctx.ConnTotal)).ConfigureAwait(false);
    }

    /// <summary>
    /// Opens <paramref name="total"/> SOCKS sessions through <paramref name="socks"/> to <paramref name="target"/>
    /// (after <paramref name="warmup"/> unmeasured ones); rate, latency percentiles, and the CPU of
    /// <paramref name="pids"/> and of the harness per session.
    /// </summary>
    public static async Task<ConnRateResult> ConnRateAsync(IPEndPoint socks, IPEndPoint target, int[] pids, int total, int concurrency, int warmup)
    {
        var timeout = TimeSpan.FromSeconds(20);
        // Warm-up (JIT tiering, thread pool growth), not measured.
        if (warmup > 0) await OpenManyAsync(socks, target, warmup, concurrency, null, timeout).ConfigureAwait(false);
        // The warm-up's sessions are torn down before the CPU counters are read.
        await ProcStats.SocketsAtRestAsync(pids).ConfigureAwait(false);
        var p0 = pids.Select(Sys.CpuSplit).ToArray();
        var h0 = Sys.CpuSplit(Environment.ProcessId);
        var r = await OpenManyAsync(socks, target, total, concurrency, null, timeout).ConfigureAwait(false);
        var p1 = pids.Select(Sys.CpuSplit).ToArray();
        var h1 = Sys.CpuSplit(Environment.ProcessId);
        if (r.Successes == 0) throw new InvalidOperationException($"no SOCKS session succeeded: {r.FirstError}");
        double Per(double seconds) => seconds * 1000 / r.Successes;
        var cpuJson = new JsonObject
        {
            ["harness_user"] = Per(h1.User - h0.User),
            ["harness_sys"] = Per(h1.System - h0.System),
        };
        double pthost = 0;
        for (int i = 0; i < pids.Length; i++)
        {
            cpuJson[$"pid{i}_user"] = Per(p1[i].User - p0[i].User);
            cpuJson[$"pid{i}_sys"] = Per(p1[i].System - p0[i].System);
            pthost += p1[i].User - p0[i].User + p1[i].System - p0[i].System;
        }
        var raw = new JsonObject
        {
            ["per_second"] = r.PerSecond,
            ["successes"] = r.Successes,
            ["failures"] = r.Failures,
            ["first_error"] = r.FirstError,
            ["elapsed_s"] = r.Elapsed.TotalSeconds,
            ["p50_ms"] = Stats.Percentile(r.LatenciesMs, 50),
            ["p90_ms"] = Stats.Percentile(r.LatenciesMs, 90),
            ["p99_ms"] = Stats.Percentile(r.LatenciesMs, 99),
            ["max_ms"] = Stats.Percentile(r.LatenciesMs, 100),
            ["cpu_ms_per_conn"] = cpuJson,
        };
        double harness = h1.User - h0.User + h1.System - h0.System;
        return new ConnRateResult(r.PerSecond, Stats.Percentile(r.LatenciesMs, 50), Stats.Percentile(r.LatenciesMs, 99), r.Failures, r.FirstError,
            Per(pthost), Per(harness), raw);
    }

    // ---------------------------------------------------------------- 3. idle session memory

    public sealed record MemoryResult(int Sessions, long ClientBeforeKiB, long ClientAfterKiB, long ServerBeforeKiB, long ServerAfterKiB, JsonObject Raw)
    {
        public double ClientPerSession => (ClientAfterKiB - ClientBeforeKiB) / (double)Sessions;
        public double ServerPerSession => (ServerAfterKiB - ServerBeforeKiB) / (double)Sessions;
        public double TotalPerSession => ClientPerSession + ServerPerSession;

        /// <summary>VmRSS with the first batch held, after a settling pause, and after a second batch of <see cref="Sessions"/> on top (0 when not measured).</summary>
        public long ClientSettledKiB { get; init; }
        public long ServerSettledKiB { get; init; }
        public long ClientAfterSecondKiB { get; init; }
        public long ServerAfterSecondKiB { get; init; }
        public double ClientPerSessionSecond => (ClientAfterSecondKiB - ClientSettledKiB) / (double)Sessions;
        public double ServerPerSessionSecond => (ServerAfterSecondKiB - ServerSettledKiB) / (double)Sessions;
        public double TotalPerSessionSecond => ClientPerSessionSecond + ServerPerSessionSecond;
    }

    /// <param name="secondBatch">Also open a second batch of <paramref name="sessions"/> on top and read its delta.</param>
    public static async Task<MemoryResult> IdleMemoryAsync(Context ctx, int sessions, bool secondBatch = false)
    {
        await using var echo = new EchoServer(recordLimit: 0);
        await using var chain = await Chain.StartAsync(ctx.PtHost, ctx.NewStateDir(), echo.EndPoint.Port, noSplice: false).ConfigureAwait(false);
        var timeout = TimeSpan.FromSeconds(15);
        int cpid = chain.Client.Pid, spid = chain.Server.Pid;

        // Warm-up: a few sessions opened and closed, so code paths and pools count in the baseline.
        var warm = await OpenManyAsync(chain.Socks, echo.EndPoint, 128, ctx.ConnConcurrency, null, timeout).ConfigureAwait(false);
        if (warm.Successes == 0) throw new InvalidOperationException($"warm-up: no SOCKS session succeeded: {warm.FirstError}");
        await Eventually.HoldsWithinAsync(() => echo.Live == 0, TimeSpan.FromSeconds(10)).ConfigureAwait(false);
        // The warm-up's sessions are torn down in both processes before the baseline.
        await ProcStats.SocketsAtRestAsync(cpid, spid).ConfigureAwait(false);
        var before = Snapshot(cpid, spid);

        var kept = new List<Socket>(2 * sessions);
        try
        {
            var r = await OpenManyAsync(chain.Socks, echo.EndPoint, sessions, ctx.ConnConcurrency, kept, timeout).ConfigureAwait(false);
            if (r.Failures > 0) throw new InvalidOperationException($"{r.Failures} of {sessions} sessions failed: {r.FirstError}");
            await Eventually.HoldsWithinAsync(() => echo.Live >= sessions, TimeSpan.FromSeconds(15)).ConfigureAwait(false);
            // Every session set up in both processes (their socket counts at rest) before the figures are read.
            await ProcStats.SocketsAtRestAsync(cpid, spid).ConfigureAwait(false);
            var after = Snapshot(cpid, spid);
            if (echo.Live < sessions) throw new InvalidOperationException($"only {echo.Live} of {sessions} sessions still open at the target after settling");

            // A second batch on top (the first still held): its delta is the marginal cost of a session once the
            // processes have settled. The first window also carries one-time costs of each process: the tiered JIT
            // recompiles the session path at tier 1 while the first batch opens (100 ms after start-up's last
            // tier-0 compile, then 30 calls), which DOTNET_TC_CallCountingDelayMs=0 moves into the warm-up.
            long afterSecondClient = 0, afterSecondServer = 0, settledClient = 0, settledServer = 0;
            JsonObject? secondJson = null;
            if (secondBatch)
            {
                await Task.Delay(TimeSpan.FromMilliseconds(500)).ConfigureAwait(false); // background tier-1 compiles finish
                var first = Snapshot(cpid, spid);
                var r2 = await OpenManyAsync(chain.Socks, echo.EndPoint, sessions, ctx.ConnConcurrency, kept, timeout).ConfigureAwait(false);
                if (r2.Failures > 0) throw new InvalidOperationException($"second batch: {r2.Failures} of {sessions} sessions failed: {r2.FirstError}");
                await Eventually.HoldsWithinAsync(() => echo.Live >= 2 * sessions, TimeSpan.FromSeconds(15)).ConfigureAwait(false);
                await ProcStats.SocketsAtRestAsync(cpid, spid).ConfigureAwait(false);
                var second = Snapshot(cpid, spid);
                (afterSecondClient, afterSecondServer, settledClient, settledServer) = (second.ClientRss, second.ServerRss, first.ClientRss, first.ServerRss);
                secondJson = new JsonObject { ["settled_before"] = first.Json, ["after"] = second.Json };
            }
            // For a heap dump of the idle sessions (dotnet-gcdump collect -p PID): PTHOST_BENCH_MEMORY_HOLD=SECONDS holds them.
            if (int.TryParse(Environment.GetEnvironmentVariable("PTHOST_BENCH_MEMORY_HOLD"), out int hold) && hold > 0)
            {
                Console.Error.WriteLine($"memory: holding {kept.Count} sessions for {hold} s: client pid {cpid}, server pid {spid}");
                await Task.Delay(TimeSpan.FromSeconds(hold)).ConfigureAwait(false);
            }
            var raw = new JsonObject
            {
                ["sessions"] = sessions,
                ["before"] = before.Json,
                ["after"] = after.Json,
                ["live_at_target"] = echo.Live,
                ["second_batch"] = secondJson,
            };
            return new MemoryResult(sessions, before.ClientRss, after.ClientRss, before.ServerRss, after.ServerRss, raw)
            {
                ClientSettledKiB = settledClient,
                ServerSettledKiB = settledServer,
                ClientAfterSecondKiB = afterSecondClient,
                ServerAfterSecondKiB = afterSecondServer,
            };
        }
        finally
        {
            foreach (var s in kept) s.Dispose();
        }
    }

    private sealed record ProcSnapshot(long ClientRss, long ServerRss, JsonObject Json);

    private static ProcSnapshot Snapshot(int cpid, int spid)
    {
        JsonObject One(int pid) => new()
        {
            ["VmRSS_KiB"] = Sys.StatusKiB(pid, "VmRSS"),
            ["RssAnon_KiB"] = Sys.StatusKiB(pid, "RssAnon"),
            ["RssFile_KiB"] = Sys.StatusKiB(pid, "RssFile"),
            ["Threads"] = Sys.Threads(pid),
            ["fds"] = Sys.OpenFds(pid),
        };
        return new ProcSnapshot(Sys.StatusKiB(cpid, "VmRSS"), Sys.StatusKiB(spid, "VmRSS"), new JsonObject { ["client"] = One(cpid), ["server"] = One(spid) });
    }

    // ---------------------------------------------------------------- 4. start-up

    /// <summary>The runtime's floor: process start → exit of <c>pthost --version</c>, in ms.</summary>
    public static async Task<double> VersionRunAsync(Context ctx)
    {
        long start = Stopwatch.GetTimestamp();
        var r = await Child.RunAsync(ctx.PtHost, ["--version"], TimeSpan.FromSeconds(20), Chain.ExtraEnv).ConfigureAwait(false);
        double ms = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
        return r.ExitCode == 0 ? ms : throw new InvalidOperationException($"pthost --version exited {r.ExitCode}: {r.StderrTail}");
    }

    /// <summary>
    /// Process start → <c>CMETHODS DONE</c> (client) or <c>SMETHODS DONE</c> (server) read on stdout, in ms,
    /// of <paramref name="pthost"/> (either build), and its VmRSS at that moment in MB.
    /// </summary>
    public static async Task<(double Ms, double RssMb)> StartupOnceAsync(Context ctx, string pthost, bool server)
    {
        string state = ctx.NewStateDir();
        if (server)
        {
            var (child, _, t) = await Chain.StartServerAsync(pthost, state, "127.0.0.1:9", null).ConfigureAwait(false);
            double rss = Sys.StatusKiB(child.Pid, "VmRSS") / 1024.0;
            await child.DisposeAsync().ConfigureAwait(false);
            return (t.TotalMilliseconds, rss);
        }
        else
        {
            // Nothing listens on the server address (a port held but refusing); the client does not dial it until a SOCKS request.
            using var nowhere = new RefusingPort();
            var (child, _, t) = await Chain.StartClientAsync(pthost, state, nowhere.Port, null).ConfigureAwait(false);
            double rss = Sys.StatusKiB(child.Pid, "VmRSS") / 1024.0;
            await child.DisposeAsync().ConfigureAwait(false);
            return (t.TotalMilliseconds, rss);
        }
    }

    /// <summary>
    /// The reference: obfs4proxy as Tor starts it (PT 1.0 managed mode, client, obfs4), process start →
    /// <c>CMETHODS DONE</c> on its stdout, in ms.
    /// </summary>
    public static async Task<double> Obfs4proxyStartupAsync(Context ctx, string obfs4proxy)
    {
        var env = new Dictionary<string, string?>
        {
            ["TOR_PT_MANAGED_TRANSPORT_VER"] = "1",
            ["TOR_PT_CLIENT_TRANSPORTS"] = "obfs4",
            ["TOR_PT_STATE_LOCATION"] = ctx.NewStateDir(),
            ["TOR_PT_EXIT_ON_STDIN_CLOSE"] = "1",
        };
        var child = Child.Start("obfs4proxy", obfs4proxy, [], env);
        try
        {
            var (done, _) = await child.WaitForLineAsync(l => l == "CMETHODS DONE", Chain.StartTimeout,
                l => l.StartsWith("CMETHOD-ERROR", StringComparison.Ordinal) || l.StartsWith("ENV-ERROR", StringComparison.Ordinal)).ConfigureAwait(false);
            return Stopwatch.GetElapsedTime(child.StartTimestamp, done).TotalMilliseconds;
        }
        finally
        {
            await child.DisposeAsync().ConfigureAwait(false);
        }
    }
}
