using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net.Sockets;
using System.Security.Cryptography;
using Xunit.Abstractions;

namespace PtHost.Reliability.Support;

/// <summary>
/// A process on the path whose sockets and memory a scenario watches, and how many fds it must hold at the
/// load peak. <paramref name="PooledPort"/>: TCP sockets with this local or remote port are an HTTP
/// keep-alive pool (the jet server's REST connections to the relay, idle-closed after 30 s), counted apart
/// from the per-session sockets and bounded; <see cref="TransportScenarios.PoolDrainsAsync"/> shows they go.
/// </summary>
public sealed record Watched(string Name, int Pid, int PeakFdsAtLeast = 0, int PooledPort = 0)
{
    /// <summary>Sockets and pipes, less the pooled ones.</summary>
    public int Sockets => ProcStats.SocketCount(Pid) - Pooled;

    /// <summary>TCP sockets with <see cref="PooledPort"/> as their local or remote port.</summary>
    public int Pooled
    {
        get
        {
            if (PooledPort == 0) return 0;
            var inodes = new HashSet<string>(StringComparer.Ordinal);
            foreach (var file in new[] { "/proc/net/tcp", "/proc/net/tcp6" })
                foreach (var line in File.ReadLines(file).Skip(1))
                {
                    var f = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
                    if (f[3] != "0A" && (Port(f[1]) == PooledPort || Port(f[2]) == PooledPort)) inodes.Add(f[9]); // not the listener
                }
            int n = 0;
            foreach (var fd in Directory.GetFileSystemEntries($"/proc/{Pid}/fd"))
            {
                try { if (new FileInfo(fd).LinkTarget is { } t && t.StartsWith("socket:[", StringComparison.Ordinal) && inodes.Contains(t[8..^1])) n++; }
                catch (IOException) { }
            }
            return n;

            static int Port(string hexAddr) => Convert.ToInt32(hexAddr.Split(':')[1], 16);
        }
    }

    /// <summary>Polls until <see cref="Sockets"/> is at most <paramref name="limit"/> (or the time is up); returns the last count.</summary>
    public Task<int> WaitForSocketsAtMostAsync(int limit, TimeSpan within) => Eventually.ValueAsync(() => Sockets, n => n <= limit, within);

    /// <summary>
    /// The <see cref="Sockets"/> of each process once no count has changed for <see cref="ProcStats.RestQuiet"/>, after
    /// the chain's processes report no open session: the baseline of a leak check.
    /// </summary>
    public static async Task<int[]> AtRestAsync(PtChain chain, IReadOnlyList<Watched> procs)
    {
        await chain.SessionsClosedAsync();
        long Combined() => procs.Aggregate(0L, (acc, p) => (acc << 20) ^ p.Sockets);
        await Eventually.StableAsync(Combined, ProcStats.RestQuiet, TimeSpan.FromSeconds(30), "the socket counts of " + string.Join(", ", procs.Select(p => p.Name)));
        return [.. procs.Select(p => p.Sockets)];
    }
}

/// <summary>
/// The load and fault scenarios of the relay transports (jet, asport, rud), run against a started
/// chain; the plain and zephyr tests (LoadTests, FaultTests, ZephyrTests) are the models.
/// </summary>
public static class TransportScenarios
{
    /// <summary>
    /// Warm-up, then <paramref name="rounds"/> rounds of <see cref="LoadTests.Sessions"/> concurrent echo sessions
    /// (32–64 KiB each, SHA-256 at the far end and on the echo), sockets/pipes of every watched process back to
    /// the baseline after each round, RSS of round 2 bounded by round 1 and by the baseline.
    /// </summary>
    public static async Task LoadAsync(ITestOutputHelper output, PtChain chain, EchoServer echo, IReadOnlyList<Watched> procs, int rounds, int seed)
    {
        ulong limit = ProcStats.RaiseFdLimit();
        Assert.True(limit >= 3 * LoadTests.Sessions + 1000, $"RLIMIT_NOFILE {limit} is too low for {LoadTests.Sessions} sessions");
        var warm = await LoadTests.RunRoundAsync(chain, echo, 50, seed);
        Assert.True(warm.Verified == 50, $"warm-up: {string.Join("\n", warm.Errors.Take(5))}");
        var sock0 = await Watched.AtRestAsync(chain, procs);
        var rss0 = procs.Select(p => ProcStats.RssBytes(p.Pid)).ToArray();
        var rss = new List<long[]>();
        for (int round = 1; round <= rounds; round++)
        {
            var watch = Stopwatch.StartNew();
            int[] peak = [];
            var r = await LoadTests.RunRoundAsync(chain, echo, LoadTests.Sessions, seed + round, () => peak = procs.Select(p => ProcStats.FdCount(p.Pid)).ToArray());
            output.WriteLine($"round {round}: {r.Opened} opened, {r.Verified} verified, {r.Mismatches} mismatches, {r.Errors.Count} errors, {r.Bytes} bytes each way in {watch.Elapsed.TotalSeconds:0.0} s; fds at peak {string.Join(", ", procs.Select((p, i) => $"{p.Name} {peak[i]}"))}");
            Assert.True(r.Errors.Count == 0, $"{r.Errors.Count} sessions failed, e.g.:\n{string.Join("\n", r.Errors.Take(5))}\nclient stderr:\n{Tail(chain.Client.Stderr)}\nserver stderr:\n{Tail(chain.Server.Stderr)}");
            Assert.Equal(0, r.Mismatches);
            Assert.Equal(LoadTests.Sessions, r.Verified);
            // All were open at once: every watched process held its per-session sockets at the same moment.
            for (int i = 0; i < procs.Count; i++)
                Assert.True(peak[i] >= procs[i].PeakFdsAtLeast, $"{procs[i].Name} had {peak[i]} fds at the peak, expected at least {procs[i].PeakFdsAtLeast}");

            var after = new int[procs.Count];
            for (int i = 0; i < procs.Count; i++)
                after[i] = await procs[i].WaitForSocketsAtMostAsync(sock0[i] + 2, TimeSpan.FromSeconds(45));
            await ProcStats.SocketsAtRestAsync([.. procs.Select(p => p.Pid)]); // the round's teardown has ended before RSS is read
            rss.Add(procs.Select(p => ProcStats.RssBytes(p.Pid)).ToArray());
            output.WriteLine($"after round {round}: sockets/pipes {string.Join(", ", procs.Select((p, i) => $"{p.Name} {sock0[i]} → {after[i]}"))}; RSS MiB {string.Join(", ", procs.Select((p, i) => $"{p.Name} {rss0[i] >> 20} → {rss[^1][i] >> 20}"))}");
            for (int i = 0; i < procs.Count; i++)
            {
                Assert.True(after[i] <= sock0[i] + 2, $"{procs[i].Name}: {sock0[i]} → {after[i]} sockets/pipes: {ProcStats.FdSummary(procs[i].Pid)}");
                AssertPoolBounded(output, procs[i]);
            }
        }
        await PoolDrainsAsync(output, procs, sock0);
        for (int i = 0; i < procs.Count; i++)
        {
            // Memory does not keep growing (round 2 within 1.5 × round 1 + 64 MiB) and stays within 512 MiB of the baseline.
            if (rss.Count > 1) Assert.True(rss[1][i] <= rss[0][i] * 3 / 2 + (64L << 20), $"{procs[i].Name} RSS grew {rss[0][i] >> 20} → {rss[1][i] >> 20} MiB");
            Assert.True(rss[^1][i] <= rss0[i] + (512L << 20), $"{procs[i].Name} RSS {rss0[i] >> 20} → {rss[^1][i] >> 20} MiB");
        }
    }

    /// <summary>Several sessions streaming to an echo server (the echo is read and discarded), each noting when its stream ended.</summary>
    public sealed class Streams : IAsyncDisposable
    {
        private readonly CancellationTokenSource _stop = new();
        private long _moved;
        private readonly List<(SocksClient Client, Task Writer, Task<long?> EndedAt)> _sessions = [];
        public long Moved => Interlocked.Read(ref _moved);

        public static async Task<Streams> StartAsync(PtChain chain, int port, int n)
        {
            var s = new Streams();
            for (int i = 0; i < n; i++)
            {
                var (reply, c) = await Support.Sessions.ConnectAsync(chain.SocksEndPoint, port, TimeSpan.FromSeconds(60));
                Assert.Equal(0, reply);
                // 16 KiB at a time with a short pause: a transfer in progress that does not starve a 2-core machine.
                var writer = Task.Run(async () =>
                {
                    var chunk = RandomNumberGenerator.GetBytes(16 * 1024);
                    try
                    {
                        while (!s._stop.IsCancellationRequested)
                        {
                            await c.Stream.WriteAsync(chunk, s._stop.Token);
                            Interlocked.Add(ref s._moved, chunk.Length);
                            await Task.Delay(2, s._stop.Token); // the pace of the load (see above), not a wait for anything
                        }
                    }
                    catch (Exception) { } // broken pipe / reset once the path is gone, or our cancel
                });
                var endedAt = Task.Run(async () => await Support.Sessions.EndsWithinAsync(c.Socket, TimeSpan.FromMinutes(3)) ? Stopwatch.GetTimestamp() : (long?)null);
                s._sessions.Add((c, writer, endedAt));
            }
            return s;
        }

        /// <summary>Waits until <paramref name="bytes"/> have been written (at most 30 s); false if nothing moved.</summary>
        public async Task<bool> WaitMovedAsync(long bytes)
        {
            await Eventually.HoldsWithinAsync(() => Moved >= bytes, TimeSpan.FromSeconds(30));
            return Moved > 0;
        }

        /// <summary>True while no session has ended.</summary>
        public bool AllOpen => _sessions.All(x => !x.EndedAt.IsCompleted);

        /// <summary>Seconds from <paramref name="since"/> (a Stopwatch timestamp) to each session's end; null: still open <paramref name="within"/> after it.</summary>
        public async Task<List<double?>> EndsAsync(long since, TimeSpan within)
        {
            var result = new List<double?>();
            foreach (var (_, _, endedAt) in _sessions)
            {
                var left = within - Stopwatch.GetElapsedTime(since);
                try { await endedAt.WaitAsync(left > TimeSpan.Zero ? left : TimeSpan.Zero); }
                catch (TimeoutException) { }
                result.Add(endedAt.IsCompletedSuccessfully && endedAt.Result is { } t ? Stopwatch.GetElapsedTime(since, t).TotalSeconds : null);
            }
            return result;
        }

        public async ValueTask DisposeAsync()
        {
            _stop.Cancel();
            foreach (var (c, writer, _) in _sessions)
            {
                await writer.WaitAsync(TimeSpan.FromSeconds(15)).ContinueWith(_ => { });
                await c.DisposeAsync();
            }
            _stop.Dispose();
        }
    }

    /// <summary>
    /// Streams <paramref name="n"/> sessions, runs <paramref name="kill"/> once data moves, and checks that every
    /// SOCKS stream ends within <paramref name="within"/> of it; returns the seconds each took.
    /// </summary>
    public static async Task<List<double>> KillUnderStreamsAsync(ITestOutputHelper output, PtChain chain, int echoPort, int n, Func<Task> kill, TimeSpan within)
    {
        await using var streams = await Streams.StartAsync(chain, echoPort, n);
        Assert.True(await streams.WaitMovedAsync(n * 256L * 1024), "no data moved before the kill");
        Assert.True(streams.AllOpen, "a session ended before the kill");
        long moved = streams.Moved;
        long at = Stopwatch.GetTimestamp();
        await kill();
        var ends = await streams.EndsAsync(at, within);
        output.WriteLine($"{n} sessions, {moved} bytes written before SIGKILL; ended {string.Join(", ", ends.Select(e => e is { } v ? $"{v:0.0}" : "never"))} s after it");
        Assert.All(ends, e => Assert.True(e is not null, $"a SOCKS session stayed open {within.TotalSeconds} s after the kill"));
        return [.. ends.Select(e => e!.Value)];
    }

    /// <summary>Retries an echo round trip until it works (the path is being re-established) or <paramref name="within"/> passes.</summary>
    public static async Task<TimeSpan> EchoWorksAgainAsync(PtChain chain, int echoPort, TimeSpan within)
    {
        var watch = Stopwatch.StartNew();
        Exception? last = null;
        // One attempt every 500 ms at most: each is a whole session that may take a while to fail.
        bool worked = await Eventually.HoldsWithinAsync(async () =>
        {
            try
            {
                using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30));
                await Support.Sessions.EchoRoundTripAsync(chain.SocksEndPoint, echoPort, 64 * 1024, cts.Token);
                return true;
            }
            catch (Exception e) when (e is not OperationCanceledException || watch.Elapsed < within)
            {
                last = e;
                return false;
            }
        }, within, poll: TimeSpan.FromMilliseconds(500));
        if (worked) return watch.Elapsed;
        throw new TimeoutException($"no working session within {within.TotalSeconds} s; last: {last}\nclient stderr:\n{Tail(chain.Client.Stderr)}\nserver stderr:\n{Tail(chain.Server.Stderr)}");
    }

    /// <summary>50 sessions to a closed port: each answered <c>05</c> and closed; a normal session afterwards; sockets back to the baseline.</summary>
    public static async Task RefusingTargetAsync(ITestOutputHelper output, PtChain chain, EchoServer echo, IReadOnlyList<Watched> procs)
    {
        await Support.Sessions.EchoRoundTripAsync(chain.SocksEndPoint, echo.Port, 1024);
        var sock0 = await Watched.AtRestAsync(chain, procs);
        using var closed = new RefusingPort();
        var replies = await Task.WhenAll(Enumerable.Range(0, 50).Select(async _ =>
        {
            var (reply, c) = await Support.Sessions.ConnectAsync(chain.SocksEndPoint, closed.Port, TimeSpan.FromSeconds(60));
            bool ended = await Support.Sessions.EndsWithinAsync(c.Socket, TimeSpan.FromSeconds(15));
            await c.DisposeAsync();
            return (reply, ended);
        }));
        output.WriteLine($"refusing target: replies {string.Join(", ", replies.GroupBy(r => r.reply).Select(g => $"{g.Key:x2} ×{g.Count()}"))}, {replies.Count(r => r.ended)} closed after the reply");
        Assert.True(replies.All(r => r.reply == 0x05), $"not every reply was 05:\nclient stderr:\n{Tail(chain.Client.Stderr)}\nserver stderr:\n{Tail(chain.Server.Stderr)}");
        Assert.All(replies, r => Assert.True(r.ended, "the session was not closed after its failure reply"));
        await Support.Sessions.EchoRoundTripAsync(chain.SocksEndPoint, echo.Port, 256 * 1024);
        for (int i = 0; i < procs.Count; i++)
        {
            int n = await procs[i].WaitForSocketsAtMostAsync(sock0[i] + 2, TimeSpan.FromSeconds(20));
            Assert.True(n <= sock0[i] + 2, $"{procs[i].Name}: {sock0[i]} → {n} sockets/pipes: {ProcStats.FdSummary(procs[i].Pid)}");
            AssertPoolBounded(output, procs[i]);
        }
        await PoolDrainsAsync(output, procs, sock0);
    }

    /// <summary>A far end that never reads blocks only its own session: 8 × 1 MiB echo sessions pass meanwhile; a reset tears the path down.</summary>
    public static async Task StalledFarEndAsync(ITestOutputHelper output, PtChain chain, EchoServer echo, IReadOnlyList<Watched> procs)
    {
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        long drained = 0;
        await using var stall = new ScriptServer(async (s, ct) =>
        {
            await release.Task.WaitAsync(ct);          // accepts, never reads until released
            Interlocked.Add(ref drained, await ScriptServer.DrainAsync(s, ct));
        });
        await Support.Sessions.EchoRoundTripAsync(chain.SocksEndPoint, echo.Port, 1024);
        var sock0 = await Watched.AtRestAsync(chain, procs);
        var rss0 = procs.Select(p => ProcStats.RssBytes(p.Pid)).ToArray();

        var (reply, stalled) = await Support.Sessions.ConnectAsync(chain.SocksEndPoint, stall.Port, TimeSpan.FromSeconds(60));
        Assert.Equal(0, reply);
        long written = 0;
        using var stopWriting = new CancellationTokenSource();
        var writer = Task.Run(async () =>
        {
            var chunk = RandomNumberGenerator.GetBytes(64 * 1024);
            try { while (true) { await stalled.Stream.WriteAsync(chunk, stopWriting.Token); Interlocked.Add(ref written, chunk.Length); } }
            catch (Exception) { }
        });
        // Let the writer fill every buffer on the path and block (no progress for 1 s).
        await Eventually.StableAsync(() => Interlocked.Read(ref written), TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(60), "the bytes the stalled session accepted");

        await Task.WhenAll(Enumerable.Range(0, 8).Select(_ => Support.Sessions.EchoRoundTripAsync(chain.SocksEndPoint, echo.Port, 1024 * 1024)));
        long blockedAt = Interlocked.Read(ref written);
        output.WriteLine($"stalled session accepted {blockedAt} bytes before blocking; 8 × 1 MiB echo sessions passed meanwhile; RSS growth MiB {string.Join(", ", procs.Select((p, i) => $"{p.Name} {(ProcStats.RssBytes(p.Pid) - rss0[i]) >> 20}"))}");
        Assert.False(writer.IsCompleted, "the writer should be blocked by the far end, not failed");
        Assert.True(blockedAt < 256L << 20, $"{blockedAt} bytes were accepted for a far end that reads nothing");

        // The application gives up (reset): the whole path is torn down.
        Support.Sessions.Abort(stalled.Socket);
        stopWriting.Cancel();
        await writer.WaitAsync(TimeSpan.FromSeconds(15));
        release.SetResult();
        Assert.True(await stall.WaitFinishedAsync(1, TimeSpan.FromSeconds(45)), "the far end's connection stayed open after the application reset its session");
        for (int i = 0; i < procs.Count; i++)
        {
            int n = await procs[i].WaitForSocketsAtMostAsync(sock0[i] + 2, TimeSpan.FromSeconds(30));
            output.WriteLine($"{procs[i].Name}: sockets/pipes {sock0[i]} → {n}");
            Assert.True(n <= sock0[i] + 2, $"{procs[i].Name}: {sock0[i]} → {n} sockets/pipes: {ProcStats.FdSummary(procs[i].Pid)}");
            AssertPoolBounded(output, procs[i]);
        }
        await Support.Sessions.EchoRoundTripAsync(chain.SocksEndPoint, echo.Port, 256 * 1024);
    }

    /// <summary>The application half-closes first; the far end reads to EOF, answers (reversed) and closes: 4 sessions, SHA-256 checked.</summary>
    public static async Task HalfCloseFromApplicationAsync(PtChain chain)
    {
        await using var far = new ScriptServer(async (s, ct) =>
        {
            var got = await Support.Sessions.ReadAllAsync(s, ct);
            Array.Reverse(got);
            await s.SendAsync(got, SocketFlags.None, ct);
            s.Shutdown(SocketShutdown.Send);
        });
        for (int i = 0; i < 4; i++)
        {
            var (reply, c) = await Support.Sessions.ConnectAsync(chain.SocksEndPoint, far.Port, TimeSpan.FromSeconds(60));
            await using (c)
            {
                Assert.Equal(0, reply);
                var data = RandomNumberGenerator.GetBytes(768 * 1024 + i);
                await c.Stream.WriteAsync(data);
                c.Socket.Shutdown(SocketShutdown.Send);   // FIN towards the far end; the other direction stays open
                using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(60));
                var back = await Support.Sessions.ReadAllAsync(c.Socket, cts.Token);
                Array.Reverse(data);
                Assert.Equal(SHA256.HashData(data), SHA256.HashData(back));
            }
        }
        Assert.Empty(far.Errors);
    }

    /// <summary>The far end sends everything and half-closes first; the application then sends, and the far end gets it: 4 sessions.</summary>
    public static async Task HalfCloseFromFarEndAsync(PtChain chain)
    {
        var farGot = new ConcurrentQueue<byte[]>();
        var payload = RandomNumberGenerator.GetBytes(640 * 1024);
        await using var far = new ScriptServer(async (s, ct) =>
        {
            await s.SendAsync(payload, SocketFlags.None, ct);
            s.Shutdown(SocketShutdown.Send);
            farGot.Enqueue(SHA256.HashData(await Support.Sessions.ReadAllAsync(s, ct)));
        });
        var sent = new List<byte[]>();
        for (int i = 0; i < 4; i++)
        {
            var (reply, c) = await Support.Sessions.ConnectAsync(chain.SocksEndPoint, far.Port, TimeSpan.FromSeconds(60));
            await using (c)
            {
                Assert.Equal(0, reply);
                using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(60));
                var got = await Support.Sessions.ReadAllAsync(c.Socket, cts.Token);   // until the far end's FIN arrives
                Assert.Equal(SHA256.HashData(payload), SHA256.HashData(got));
                var data = RandomNumberGenerator.GetBytes(512 * 1024 + i);   // only now the application writes
                await c.Stream.WriteAsync(data, cts.Token);
                c.Socket.Shutdown(SocketShutdown.Send);
                sent.Add(SHA256.HashData(data));
                Assert.True(await Support.Sessions.EndsWithinAsync(c.Socket, TimeSpan.FromSeconds(30)));
            }
        }
        Assert.True(await far.WaitFinishedAsync(4, TimeSpan.FromSeconds(30)));
        Assert.Empty(far.Errors);
        Assert.Equal(sent.Select(Convert.ToHexString).Order(), farGot.Select(Convert.ToHexString).Order());
    }

    /// <summary>
    /// The keep-alive pool holds at most one connection per concurrent REST call: create and gather while at most
    /// 64 sessions are set up, but one DELETE per session when a round's sessions all end at once. So the bound
    /// is one per session; <see cref="PoolDrainsAsync"/> shows that they close.
    /// </summary>
    private static void AssertPoolBounded(ITestOutputHelper output, Watched w)
    {
        if (w.PooledPort == 0) return;
        int pooled = w.Pooled;
        output.WriteLine($"{w.Name}: {pooled} pooled REST connections (port {w.PooledPort})");
        Assert.InRange(pooled, 0, LoadTests.Sessions);
    }

    /// <summary>
    /// The pooled REST connections close once idle (30 s, spec/jet.md §7): afterwards every socket and pipe of each
    /// watched process, pooled or not, is back to <paramref name="baseline"/> (its <see cref="Watched.Sockets"/> count) + 2.
    /// </summary>
    public static async Task PoolDrainsAsync(ITestOutputHelper output, IReadOnlyList<Watched> procs, int[] baseline)
    {
        for (int i = 0; i < procs.Count; i++)
        {
            if (procs[i].PooledPort == 0) continue;
            var watch = Stopwatch.StartNew();
            int n = await ProcStats.WaitForSocketsAtMostAsync(procs[i].Pid, baseline[i] + 2, TimeSpan.FromSeconds(90));
            output.WriteLine($"{procs[i].Name}: all sockets/pipes {n} (baseline {baseline[i]}) {watch.Elapsed.TotalSeconds:0} s later");
            Assert.True(n <= baseline[i] + 2, $"{procs[i].Name}: {ProcStats.FdSummary(procs[i].Pid)}");
        }
    }

    public static string Tail(string s) => s.Length > 4000 ? s[^4000..] : s;
}
