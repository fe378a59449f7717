using System.Globalization;
using System.Text.Json.Nodes;

namespace PtHost.Benchmarks;

/// <summary>
/// RUD (issue 6's benchmark): throughput of rud, plain (TCP) and asport (QUIC) over the same lossy
/// link (<see cref="LossyLink"/>: two network namespaces joined by TUN devices, the harness drops a
/// seeded fraction of packets each way and delays each by <see cref="OneWayDelayMs"/>) at 0, 1 and
/// 5 % loss, in one run; target rud ≥ 1.0 × asport at every loss rate. Handshake p50 per RUD
/// exchange mode (and QUIC's) across the same link at 0 % loss.
/// </summary>
public sealed class RudScenario : IScenario
{
    /// <summary>One-way delay of the link: RTT 10 ms, so loss recovery and congestion control matter.</summary>
    public const int OneWayDelayMs = 5;
    private static readonly double[] s_losses = [0, 0.01, 0.05];
    private static readonly string[] s_modes = ["first contact", "immediate", "deferred"];

    public string Name => "rud";
    public string Title => $"RUD vs plain (TCP) and asport (QUIC) over one lossy link (0/1/5 % loss, RTT {2 * OneWayDelayMs} ms)";

    private sealed record PerLoss(double Loss, Figure Plain, Figure Asport, Figure Rud, Figure ToAsport, Figure ToPlain, Figure Applied,
        Figure PlainCpu, Figure AsportCpu, Figure RudCpu);

    public async Task RunAsync(Context ctx, ScenarioRun run)
    {
        var rows = new List<PerLoss>();
        foreach (double loss in s_losses)
        {
            string pct = (loss * 100).ToString("0", CultureInfo.InvariantCulture);
            var row = new PerLoss(loss,
                new Figure { Key = $"rud_loss{pct}_plain_mbps", Label = $"{pct} % loss: plain (TCP) over the link", Unit = "Mbit/s", Format = "0.0" },
                new Figure { Key = $"rud_loss{pct}_asport_mbps", Label = $"{pct} % loss: asport (QUIC) over the link", Unit = "Mbit/s", Format = "0.0" },
                new Figure { Key = $"rud_loss{pct}_rud_mbps", Label = $"{pct} % loss: rud over the link", Unit = "Mbit/s", Format = "0.0" },
                new Figure { Key = $"rud_loss{pct}_ratio_to_asport", Label = "rud / asport", Unit = "", Indent = 1, Goal = Goal.AtLeast, Target = 1.0 },
                new Figure { Key = $"rud_loss{pct}_ratio_to_plain", Label = "rud / plain", Unit = "", Indent = 1 },
                new Figure { Key = $"rud_loss{pct}_applied_loss_pct", Label = "loss applied by the link (all runs, both ways)", Unit = "%", Indent = 1, Format = "0.00" },
                // CPU per byte (issue 22): the pthost processes' user + system time per byte iperf3 received.
                new Figure { Key = $"rud_loss{pct}_plain_cpu_ns_per_byte", Label = "CPU per byte: plain (client + server)", Unit = "ns/B", Indent = 1, Format = "0.0" },
                new Figure { Key = $"rud_loss{pct}_asport_cpu_ns_per_byte", Label = "CPU per byte: asport (client + server + relay)", Unit = "ns/B", Indent = 1, Format = "0.0" },
                new Figure { Key = $"rud_loss{pct}_rud_cpu_ns_per_byte", Label = "CPU per byte: rud (client + server)", Unit = "ns/B", Indent = 1, Format = "0.0" });
            rows.Add(row);
            run.Add(row.Plain, row.Asport, row.Rud, row.ToAsport, row.ToPlain, row.Applied, row.PlainCpu, row.AsportCpu, row.RudCpu);
        }
        var handshakes = s_modes.ToDictionary(m => m, m => new Figure
        {
            Key = "rud_handshake_" + m.Replace(' ', '_') + "_p50_ms",
            Label = $"RUD handshake, {m}, p50 (RTT {2 * OneWayDelayMs} ms)",
            Unit = "ms",
            Format = "0.0",
        });
        var quicHandshake = new Figure { Key = "rud_quic_handshake_p50_ms", Label = $"QUIC handshake to the ASPORT relay, p50 (same link)", Unit = "ms", Format = "0.0" };
        run.Add([.. handshakes.Values, quicHandshake]);
        var raw = run.Raw("rud");

        LossyLink link;
        try
        {
            await Sys.EnsureToolsAsync([("iperf3", "iperf3"), ("proxychains4", "proxychains4"), ("ip", "iproute2")], ctx.Say).ConfigureAwait(false);
            ctx.Iperf3 = Sys.Which("iperf3")!;
            ctx.Proxychains = Sys.Which("proxychains4");
            link = await LossyLink.CreateAsync(TimeSpan.FromMilliseconds(OneWayDelayMs), seed: 6).ConfigureAwait(false);
        }
        catch (Exception e) when (ScenarioRun.IsMeasurementFailure(e))
        {
            run.FailRemaining(e);
            return;
        }
        using (link)
        {
            // TCP's congestion control in the namespaces (inherited from the host; bbr here) decides how plain copes with loss.
            var cc = await Child.RunAsync("ip", [.. LossyLink.Exec(link.NamespaceA), "cat", "/proc/sys/net/ipv4/tcp_congestion_control"], TimeSpan.FromSeconds(10)).ConfigureAwait(false);
            run.Details["rud_link"] = new JsonObject
            {
                ["tcp_congestion_control"] = cc.Stdout.Trim(),
                ["kind"] = "two network namespaces joined by TUN devices; the harness copies packets, drops a seeded random fraction each way, delays each",
                ["one_way_delay_ms"] = OneWayDelayMs,
                ["mtu"] = 1500,
                ["device_queue"] = "each TUN device queues at most 500 packets (txqueuelen) toward the harness's reader and drops beyond; those drops are in link_device_tx_dropped per run, not in the link's own counters",
                ["namespace_a"] = "iperf3 client, proxychains, pthost client, asport relay",
                ["namespace_b"] = "pthost server (asport: the ASPORT client), iperf3 server",
            };
            int handshakeCount = ctx.Repetitions == 1 ? 20 : 50;
            for (int rep = 0; rep < ctx.Repetitions; rep++)
            {
                int r = rep;
                link.Loss = 0;
                foreach (string mode in s_modes)
                {
                    ctx.Say($"rud {rep + 1}/{ctx.Repetitions}: {handshakeCount} RUD handshakes, {mode}");
                    await ScenarioRun.AttemptAsync(handshakes[mode], async () =>
                    {
                        var times = await RudPathBench.RudHandshakesAsync(link, mode, handshakeCount).ConfigureAwait(false);
                        raw.Add(ScenarioRun.Tag(new JsonObject { ["mode"] = mode, ["ms"] = new JsonArray([.. times.Select(t => (JsonNode?)t)]) }, "rud_handshake", r));
                        return Stats.Percentile([.. times], 50);
                    }).ConfigureAwait(false);
                }
                foreach (var row in rows)
                {
                    link.Loss = row.Loss;
                    string pct = (row.Loss * 100).ToString("0", CultureInfo.InvariantCulture);
                    long dropped = 0, offered = 0;
                    async Task<double> Measure(string transport, Func<Task<RudPathBench.Result>> run1)
                    {
                        var result = await run1().ConfigureAwait(false);
                        var cpuFigure = transport switch { "plain" => row.PlainCpu, "asport" => row.AsportCpu, _ => row.RudCpu };
                        if (!double.IsNaN(result.CpuNsPerByte)) cpuFigure.Samples.Add(result.CpuNsPerByte);
                        result.Raw["transport"] = transport;
                        result.Raw["loss"] = row.Loss;
                        raw.Add(ScenarioRun.Tag(result.Raw, "rud_throughput", r));
                        dropped += result.Raw["link_packets_dropped"]!.GetValue<long>();
                        offered += result.Raw["link_packets_dropped"]!.GetValue<long>() + result.Raw["link_packets_forwarded"]!.GetValue<long>();
                        return result.Mbps;
                    }
                    ctx.Say($"rud {rep + 1}/{ctx.Repetitions}: {pct} % loss: plain");
                    double p = await ScenarioRun.AttemptAsync(row.Plain, () => Measure("plain", () => RudPathBench.PlainAsync(ctx, link))).ConfigureAwait(false);
                    ctx.Say($"rud {rep + 1}/{ctx.Repetitions}: {pct} % loss: asport");
                    bool first = row.Loss == 0;
                    double a = await ScenarioRun.AttemptAsync(row.Asport, () => Measure("asport", async () =>
                    {
                        var result = await RudPathBench.AsportAsync(ctx, link, first ? handshakeCount : 0).ConfigureAwait(false);
                        if (result.Raw["quic_handshake_ms"] is JsonArray hs && hs.Count > 0)
                            quicHandshake.Samples.Add(Stats.Percentile([.. hs.Select(h => h!.GetValue<double>())], 50));
                        return result;
                    })).ConfigureAwait(false);
                    ctx.Say($"rud {rep + 1}/{ctx.Repetitions}: {pct} % loss: rud");
                    double u = await ScenarioRun.AttemptAsync(row.Rud, () => Measure("rud", () => RudPathBench.RudAsync(ctx, link))).ConfigureAwait(false);
                    ScenarioRun.AddRatio(row.ToAsport, u, a, row.Rud, row.Asport);
                    ScenarioRun.AddRatio(row.ToPlain, u, p, row.Rud, row.Plain);
                    foreach (var (cpuFigure, value) in new[] { (row.PlainCpu, row.Plain), (row.AsportCpu, row.Asport), (row.RudCpu, row.Rud) })
                        if (cpuFigure.Samples.Count == 0) cpuFigure.Error ??= value.Error ?? "not measured";
                    if (offered > 0) row.Applied.Samples.Add(100.0 * dropped / offered);
                    else row.Applied.Error ??= "no packets crossed the link";
                    ctx.Say(string.Create(CultureInfo.InvariantCulture, $"rud {rep + 1}/{ctx.Repetitions}: {pct} % loss: plain {p:0.0}, asport {a:0.0}, rud {u:0.0} Mbit/s"));
                }
            }
            if (quicHandshake.Samples.Count == 0) quicHandshake.Error ??= rows[0].Asport.Error ?? "not measured";
        }
    }
}
