using System.Net;
using System.Net.Sockets;
using System.Text.Json.Nodes;

namespace PtHost.Benchmarks;

/// <summary>
/// The Zephyr relay alone (issue 8): one bound pair carrying a single stream, against direct
/// loopback and against socat -b 262144 as a baseline forwarder, all with the same in-harness
/// sender and receiver (<see cref="StreamPump"/>; iperf3 cannot speak the bind handshake).
/// Interleaved per repetition; ratios per repetition. Also the relay's CPU per GiB carried,
/// which moves less with other load on the machine than the throughput does.
/// </summary>
public sealed class ZephyrRelayThroughputScenario : IScenario
{
    public string Name => "zephyr-relay";
    public string Title => "Zephyr relay alone, one bound pair, single stream";

    public async Task RunAsync(Context ctx, ScenarioRun run)
    {
        string size = $"{ctx.StreamBytes >> 20} MiB";
        var direct = new Figure { Key = "zephyr_relay_direct_gbps", Label = $"Stream direct on loopback ({size}, reference)", Unit = "Gbit/s" };
        var relay = new Figure { Key = "zephyr_relay_gbps", Label = "Stream through the zephyr relay (bound pair, splice)", Unit = "Gbit/s" };
        var relayRatio = new Figure { Key = "zephyr_relay_ratio", Label = "ratio to direct", Unit = "", Indent = 1, Goal = Goal.AtLeast, Target = 0.7 };
        var relayCpu = new Figure { Key = "zephyr_relay_cpu_s_per_gib", Label = "relay CPU per GiB carried", Unit = "s/GiB", Indent = 1, Format = "0.000" };
        var inlineFig = new Figure { Key = "zephyr_relay_inline_gbps", Label = "Stream through the zephyr relay, inline socket completions (experiment)", Unit = "Gbit/s" };
        var inlineRatio = new Figure { Key = "zephyr_relay_inline_ratio", Label = "ratio to direct", Unit = "", Indent = 1 };
        var inlineCpu = new Figure { Key = "zephyr_relay_inline_cpu_s_per_gib", Label = "relay CPU per GiB carried", Unit = "s/GiB", Indent = 1, Format = "0.000" };
        var copy = new Figure { Key = "zephyr_relay_nosplice_gbps", Label = "Stream through the zephyr relay, PTHOST_NO_SPLICE=1", Unit = "Gbit/s" };
        var copyRatio = new Figure { Key = "zephyr_relay_nosplice_ratio", Label = "ratio to direct", Unit = "", Indent = 1 };
        var socat = new Figure { Key = "zephyr_relay_socat_gbps", Label = $"Stream through socat -b {Baselines.SocatBuffer} (baseline forwarder)", Unit = "Gbit/s" };
        var socatRatio = new Figure { Key = "zephyr_relay_socat_ratio", Label = "ratio to direct", Unit = "", Indent = 1 };
        var relayVsSocat = new Figure { Key = "zephyr_relay_vs_socat", Label = "relay / socat", Unit = "", Indent = 1 };
        run.Add(direct, relay, relayRatio, relayCpu, inlineFig, inlineRatio, inlineCpu, copy, copyRatio, socat, socatRatio, relayVsSocat);
        var raw = run.Raw("zephyr_relay");
        var timeout = TimeSpan.FromSeconds(120);
        try
        {
            await Sys.EnsureToolsAsync([("socat", "socat")], ctx.Say).ConfigureAwait(false);
            await using var spliced = await ZephyrRelayChild.StartAsync(ctx.PtHost).ConfigureAwait(false);
            await using var copying = await ZephyrRelayChild.StartAsync(ctx.PtHost, [], new Dictionary<string, string?> { ["PTHOST_NO_SPLICE"] = "1" }).ConfigureAwait(false);
            // An experiment kept for comparison: socket continuations run on the epoll thread instead of
            // the thread pool (fewer wake-ups and sched_yield calls, but lower throughput here; see README).
            await using var inlined = await ZephyrRelayChild.StartAsync(ctx.PtHost, [], new Dictionary<string, string?> { ["DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS"] = "1" }).ConfigureAwait(false);
            // socat forwards to a listener of the harness's own, held for the whole scenario.
            using var sink = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            sink.Bind(new IPEndPoint(IPAddress.Loopback, 0));
            sink.Listen(4);
            await using var forwarder = await Baselines.StartSocatAsync(((IPEndPoint)sink.LocalEndPoint!).Port).ConfigureAwait(false);
            for (int rep = 0; rep < ctx.Repetitions; rep++)
            {
                string step = $"zephyr relay {rep + 1}/{ctx.Repetitions}";
                async Task<double> Stream(Figure f, string kind, Func<Task<(Socket, Socket)>> pair, int relayPid)
                {
                    ctx.Say($"{step}: {kind}");
                    return await ScenarioRun.AttemptAsync(f, async () =>
                    {
                        var (a, b) = await pair().ConfigureAwait(false);
                        using var _a = a;
                        using var _b = b;
                        double cpu0 = relayPid > 0 ? Sys.CpuSeconds(relayPid) : 0;
                        var r = await StreamPump.RunAsync(a, b, ctx.StreamBytes, timeout).ConfigureAwait(false);
                        double cpu = relayPid > 0 ? Sys.CpuSeconds(relayPid) - cpu0 : double.NaN;
                        var o = new JsonObject { ["gbps"] = r.Gbps, ["bytes"] = r.Received, ["seconds"] = r.Elapsed.TotalSeconds };
                        if (relayPid > 0) o["relay_cpu_seconds"] = cpu;
                        raw.Add(ScenarioRun.Tag(o, kind, rep));
                        if (f == relay) relayCpu.Samples.Add(cpu / (r.Received / (double)(1L << 30)));
                        if (f == inlineFig) inlineCpu.Samples.Add(cpu / (r.Received / (double)(1L << 30)));
                        return r.Gbps;
                    }).ConfigureAwait(false);
                }
                double d = await Stream(direct, "direct", StreamPump.DirectPairAsync, 0).ConfigureAwait(false);
                double z = await Stream(relay, "relay", () => Task.FromResult(StreamPump.ZephyrPair(spliced.EndPoint)), spliced.Child.Pid).ConfigureAwait(false);
                ScenarioRun.AddRatio(relayRatio, z, d, relay, direct);
                double p = await Stream(inlineFig, "relay_inline", () => Task.FromResult(StreamPump.ZephyrPair(inlined.EndPoint)), inlined.Child.Pid).ConfigureAwait(false);
                ScenarioRun.AddRatio(inlineRatio, p, d, inlineFig, direct);
                double c = await Stream(copy, "relay_nosplice", () => Task.FromResult(StreamPump.ZephyrPair(copying.EndPoint)), copying.Child.Pid).ConfigureAwait(false);
                ScenarioRun.AddRatio(copyRatio, c, d, copy, direct);
                double s = await Stream(socat, "socat", () => StreamPump.ConnectThroughAsync(sink, new IPEndPoint(IPAddress.Loopback, forwarder.Port)), 0).ConfigureAwait(false);
                ScenarioRun.AddRatio(socatRatio, s, d, socat, direct);
                ScenarioRun.AddRatio(relayVsSocat, z, s, relay, socat);
            }
            relay.Note ??= "the Go reference relay is not on this machine; the issue quotes ~0.55 of direct for it";
        }
        catch (Exception e) when (ScenarioRun.IsMeasurementFailure(e))
        {
            run.FailRemaining(e);
        }
    }
}
