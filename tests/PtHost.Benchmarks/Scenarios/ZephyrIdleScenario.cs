using System.Net.Sockets;
using System.Text.Json.Nodes;
using PtHost.Testing;

namespace PtHost.Benchmarks;

/// <summary>
/// Memory of the Zephyr relay per idle registered connection (issue 8: 10,000 held, ≤ 16 KiB
/// each): connections that got their assignment and sent nothing since. The relay runs with a
/// long bind timeout and limits above the count so none is closed while measured.
/// </summary>
public sealed class ZephyrIdleScenario : IScenario
{
    public string Name => "zephyr-idle";
    public string Title => "Zephyr relay, idle registered connections";

    public async Task RunAsync(Context ctx, ScenarioRun run)
    {
        int count = ctx.RelayIdleConnections;
        long limit = Sys.OpenFileLimit();
        if (limit > 0 && limit < count + 512)
        {
            count = (int)Math.Max(100, limit - 512);
            ctx.Say($"zephyr idle: open-file limit {limit} is low; holding {count} connections instead of {ctx.RelayIdleConnections}");
        }
        var perConnection = new Figure { Key = "zephyr_relay_idle_kib", Label = $"Relay RSS per idle registered connection ({count} held)", Unit = "KiB", Format = "0.00", Goal = Goal.AtMost, Target = 16 };
        var held = new Figure { Key = "zephyr_relay_idle_held", Label = "connections held by the relay (open fds added)", Unit = "", Format = "0", Indent = 1 };
        var openRate = new Figure { Key = "zephyr_relay_idle_open_per_second", Label = "registrations per second (connect + assignment read)", Unit = "conn/s", Format = "0", Indent = 1 };
        run.Add(perConnection, held, openRate);
        var raw = run.Raw("zephyr_idle");
        string max = (count + 1000).ToString(System.Globalization.CultureInfo.InvariantCulture);
        for (int rep = 0; rep < ctx.Repetitions; rep++)
        {
            ctx.Say($"zephyr idle {rep + 1}/{ctx.Repetitions}: {count} registered connections");
            await ScenarioRun.AttemptAsync(perConnection, async () =>
            {
                await using var relay = await ZephyrRelayChild.StartAsync(ctx.PtHost, ["--bind-timeout", "3600", "--max-connections", max, "--max-per-source", max]).ConfigureAwait(false);
                int pid = relay.Child.Pid;
                // Warm-up: code paths and pools count in the baseline.
                await OpenAsync(relay, 256, close: true).ConfigureAwait(false);
                // The warm-up's connections are closed in the relay before the baseline.
                await ProcStats.SocketsAtRestAsync(pid).ConfigureAwait(false);
                long before = Sys.StatusKiB(pid, "VmRSS");
                int fdsBefore = Sys.OpenFds(pid);
                var start = System.Diagnostics.Stopwatch.GetTimestamp();
                var sockets = await OpenAsync(relay, count, close: false).ConfigureAwait(false);
                double perSecond = count / System.Diagnostics.Stopwatch.GetElapsedTime(start).TotalSeconds;
                try
                {
                    // Every connection registered in the relay (its socket count at rest) before the figures are read.
                    await ProcStats.SocketsAtRestAsync(pid).ConfigureAwait(false);
                    long after = Sys.StatusKiB(pid, "VmRSS");
                    int fdsAfter = Sys.OpenFds(pid);
                    if (fdsAfter - fdsBefore < count) throw new InvalidOperationException($"the relay holds only {fdsAfter - fdsBefore} of {count} connections");
                    held.Samples.Add(fdsAfter - fdsBefore);
                    openRate.Samples.Add(perSecond);
                    raw.Add(ScenarioRun.Tag(new JsonObject
                    {
                        ["connections"] = count,
                        ["rss_before_kib"] = before,
                        ["rss_after_kib"] = after,
                        ["rss_anon_after_kib"] = Sys.StatusKiB(pid, "RssAnon"),
                        ["threads"] = Sys.Threads(pid),
                        ["fds_before"] = fdsBefore,
                        ["fds_after"] = fdsAfter,
                    }, "zephyr_idle", rep));
                    return (after - before) / (double)count;
                }
                finally
                {
                    foreach (var s in sockets) s.Dispose();
                }
            }).ConfigureAwait(false);
        }
    }

    /// <summary>Opens <paramref name="count"/> connections, 64 at a time, each reading its assignment.</summary>
    private static async Task<List<Socket>> OpenAsync(ZephyrRelayChild relay, int count, bool close)
    {
        var sockets = new List<Socket>(close ? 0 : count);
        int next = -1;
        async Task Worker()
        {
            var message = new byte[12];
            while (Interlocked.Increment(ref next) < count)
            {
                var s = new Socket(System.Net.Sockets.AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
                try
                {
                    using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(20));
                    await s.ConnectAsync(relay.EndPoint, cts.Token).ConfigureAwait(false);
                    int got = 0;
                    while (got < 12)
                    {
                        int n = await s.ReceiveAsync(message.AsMemory(got), SocketFlags.None, cts.Token).ConfigureAwait(false);
                        if (n == 0) throw new IOException("the relay closed before the assignment");
                        got += n;
                    }
                }
                catch
                {
                    s.Dispose();
                    throw;
                }
                if (close) s.Dispose();
                else lock (sockets) sockets.Add(s);
            }
        }
        try
        {
            await Task.WhenAll(Enumerable.Range(0, 64).Select(_ => Task.Run(Worker))).ConfigureAwait(false);
        }
        catch
        {
            foreach (var s in sockets) s.Dispose();
            throw;
        }
        return sockets;
    }
}
