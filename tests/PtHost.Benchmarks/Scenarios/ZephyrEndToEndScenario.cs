using System.Net;
using System.Text.Json.Nodes;
using PtHost.Testing;

namespace PtHost.Benchmarks;

/// <summary>
/// The zephyr transport end to end (issue 8): iperf3 via proxychains → pthost client → relay →
/// pthost server (mutual TLS 1.3 inside) → iperf3 server, against the plain chain and direct in the
/// same repetition; then SOCKS session set-up through zephyr (signals carried by the harness,
/// relay joins and a TLS handshake per session).
/// </summary>
public sealed class ZephyrEndToEndScenario : IScenario
{
    public string Name => "zephyr-e2e";
    public string Title => "Zephyr transport end to end (TLS) against plain";

    public async Task RunAsync(Context ctx, ScenarioRun run)
    {
        int sessions = Math.Max(200, ctx.ConnTotal / 5);
        const int inFlight = 32;
        var direct = new Figure { Key = "zephyr_e2e_direct_gbps", Label = "Throughput, direct iperf3 (reference)", Unit = "Gbit/s" };
        var plain = new Figure { Key = "zephyr_e2e_plain_gbps", Label = "Throughput via client->plain->server", Unit = "Gbit/s" };
        var zephyr = new Figure { Key = "zephyr_e2e_gbps", Label = "Throughput via client->zephyr relay->server (TLS 1.3)", Unit = "Gbit/s" };
        var zephyrRatio = new Figure { Key = "zephyr_e2e_ratio", Label = "ratio to direct", Unit = "", Indent = 1 };
        var zephyrVsPlain = new Figure { Key = "zephyr_e2e_vs_plain", Label = "ratio to plain", Unit = "", Indent = 1 };
        var cpu = new Figure { Key = "zephyr_e2e_cpu_percent", Label = "client+server+relay CPU (% of one core)", Unit = "%", Indent = 1, Format = "0" };
        var rate = new Figure { Key = "zephyr_connections_per_second", Label = $"SOCKS sessions set up per second through zephyr ({sessions}, {inFlight} in flight)", Unit = "conn/s", Format = "0" };
        var p50 = new Figure { Key = "zephyr_setup_p50_ms", Label = "set-up latency p50", Unit = "ms", Indent = 1 };
        var p99 = new Figure { Key = "zephyr_setup_p99_ms", Label = "set-up latency p99", Unit = "ms", Indent = 1 };
        var perSession = new Figure { Key = "zephyr_cpu_ms_per_connection", Label = "client+server+relay CPU per session", Unit = "ms", Indent = 1, Format = "0.000" };
        run.Add(direct, plain, zephyr, zephyrRatio, zephyrVsPlain, cpu, rate, p50, p99, perSession);
        var raw = run.Raw("zephyr_e2e");
        try
        {
            await Sys.EnsureToolsAsync([("iperf3", "iperf3"), ("proxychains4", "proxychains4")], ctx.Say).ConfigureAwait(false);
            ctx.Iperf3 = Sys.Which("iperf3")!;
            ctx.Proxychains = Sys.Which("proxychains4");
            await using var relay = await ZephyrRelayChild.StartAsync(ctx.PtHost).ConfigureAwait(false);
            for (int rep = 0; rep < ctx.Repetitions; rep++)
            {
                string step = $"zephyr e2e {rep + 1}/{ctx.Repetitions}";
                async Task<double> Measure(Figure f, string kind, Func<Task<(double Gbps, JsonObject Raw)>> m)
                {
                    ctx.Say($"{step}: {kind}");
                    return await ScenarioRun.AttemptAsync(f, async () =>
                    {
                        var r = await m().ConfigureAwait(false);
                        raw.Add(ScenarioRun.Tag(r.Raw, kind, rep));
                        return r.Gbps;
                    }).ConfigureAwait(false);
                }
                double d = await Measure(direct, "direct", () => Measurements.IperfDirectAsync(ctx)).ConfigureAwait(false);
                double p = await Measure(plain, "plain", () => Measurements.IperfChainAsync(ctx, noSplice: false)).ConfigureAwait(false);
                double z = await Measure(zephyr, "zephyr", async () =>
                {
                    await using var iperf = await Iperf3Server.StartAsync(ctx.Iperf3).ConfigureAwait(false);
                    await using var chain = await ZephyrChain.StartAsync(ctx.PtHost, ctx.NewStateDir(), relay.EndPoint).ConfigureAwait(false);
                    var r = await Measurements.IperfViaSocksAsync(ctx, chain.Socks.Port, [chain.Client.Pid, chain.Server.Pid, relay.Child.Pid], iperf).ConfigureAwait(false);
                    if (r.Raw["pthost_cpu_percent_of_one_core"]?.GetValue<double>() is { } pct) cpu.Samples.Add(pct);
                    return r;
                }).ConfigureAwait(false);
                ScenarioRun.AddRatio(zephyrRatio, z, d, zephyr, direct);
                ScenarioRun.AddRatio(zephyrVsPlain, z, p, zephyr, plain);

                ctx.Say($"{step}: session set-up, {sessions} sessions");
                await ScenarioRun.AttemptAsync(rate, async () =>
                {
                    await using var echo = new EchoServer(recordLimit: 0);
                    await using var chain = await ZephyrChain.StartAsync(ctx.PtHost, ctx.NewStateDir(), relay.EndPoint).ConfigureAwait(false);
                    var r = await Measurements.ConnRateAsync(chain.Socks, echo.EndPoint, [chain.Client.Pid, chain.Server.Pid, relay.Child.Pid], sessions, inFlight, warmup: 100).ConfigureAwait(false);
                    p50.Samples.Add(r.P50Ms);
                    p99.Samples.Add(r.P99Ms);
                    perSession.Samples.Add(r.PtHostCpuMsPerConn);
                    raw.Add(ScenarioRun.Tag(r.Raw, "zephyr_connrate", rep));
                    if (r.Failures > 0) rate.Note = $"{r.Failures} failed: {r.FirstError}";
                    return r.PerSecond;
                }).ConfigureAwait(false);
            }
        }
        catch (Exception e) when (ScenarioRun.IsMeasurementFailure(e))
        {
            run.FailRemaining(e);
        }
    }
}
