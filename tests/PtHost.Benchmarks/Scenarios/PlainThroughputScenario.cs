namespace PtHost.Benchmarks;

/// <summary>
/// iperf3 single stream: direct (the physical reference), through socat -b 262144 (a TCP
/// forwarder), through dante (a SOCKS5 server, via proxychains), and through
/// client→plain→server with and without splice. Interleaved per repetition; ratios per repetition.
/// </summary>
public sealed class PlainThroughputScenario : IScenario
{
    public string Name => "throughput";
    public string Title => "Throughput, iperf3 single stream (plain chain and baselines)";

    public async Task RunAsync(Context ctx, ScenarioRun run)
    {
        var direct = new Figure { Key = "throughput_direct_gbps", Label = "Throughput, direct iperf3 (reference)", Unit = "Gbit/s" };
        var socat = new Figure { Key = "throughput_socat_gbps", Label = $"Throughput via socat -b {Baselines.SocatBuffer} (baseline forwarder)", Unit = "Gbit/s" };
        var socatRatio = new Figure { Key = "throughput_socat_ratio", Label = "ratio to direct", Unit = "", Indent = 1 };
        var dante = new Figure { Key = "throughput_dante_gbps", Label = "Throughput via dante SOCKS5 (baseline, proxychains)", Unit = "Gbit/s" };
        var danteRatio = new Figure { Key = "throughput_dante_ratio", Label = "ratio to direct", Unit = "", Indent = 1 };
        var splice = new Figure { Key = "throughput_chain_splice_gbps", Label = "Throughput via client->plain->server, splice", Unit = "Gbit/s" };
        var spliceRatio = new Figure { Key = "throughput_chain_splice_ratio", Label = "ratio to direct", Unit = "", Indent = 1, Goal = Goal.AtLeast, Target = 0.4 };
        var spliceDante = new Figure { Key = "throughput_chain_splice_vs_dante", Label = "ratio to dante", Unit = "", Indent = 1 };
        var copy = new Figure { Key = "throughput_chain_nosplice_gbps", Label = "Throughput via client->plain->server, PTHOST_NO_SPLICE=1", Unit = "Gbit/s" };
        var copyRatio = new Figure { Key = "throughput_chain_nosplice_ratio", Label = "ratio to direct", Unit = "", Indent = 1, Goal = Goal.AtLeast, Target = 0.4 };
        run.Add(direct, socat, socatRatio, dante, danteRatio, splice, spliceRatio, spliceDante, copy, copyRatio);
        var raw = run.Raw("throughput");
        try
        {
            await Sys.EnsureToolsAsync([("iperf3", "iperf3"), ("proxychains4", "proxychains4"), ("socat", "socat"), ("danted", "dante-server")], ctx.Say).ConfigureAwait(false);
            ctx.Iperf3 = Sys.Which("iperf3")!;
            ctx.Proxychains = Sys.Which("proxychains4");
        }
        catch (Exception e) when (ScenarioRun.IsMeasurementFailure(e))
        {
            run.FailRemaining(e);
            return;
        }
        for (int rep = 0; rep < ctx.Repetitions; rep++)
        {
            string step = $"throughput {rep + 1}/{ctx.Repetitions}";
            async Task<double> Measure(Figure f, string kind, Func<Task<(double Gbps, System.Text.Json.Nodes.JsonObject Raw)>> m)
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
            double so = await Measure(socat, "socat", () => Measurements.IperfSocatAsync(ctx)).ConfigureAwait(false);
            ScenarioRun.AddRatio(socatRatio, so, d, socat, direct);
            double da = await Measure(dante, "dante", () => Measurements.IperfDanteAsync(ctx)).ConfigureAwait(false);
            ScenarioRun.AddRatio(danteRatio, da, d, dante, direct);
            double sp = await Measure(splice, "chain_splice", () => Measurements.IperfChainAsync(ctx, noSplice: false)).ConfigureAwait(false);
            ScenarioRun.AddRatio(spliceRatio, sp, d, splice, direct);
            ScenarioRun.AddRatio(spliceDante, sp, da, splice, dante);
            double cp = await Measure(copy, "chain_nosplice", () => Measurements.IperfChainAsync(ctx, noSplice: true)).ConfigureAwait(false);
            ScenarioRun.AddRatio(copyRatio, cp, d, copy, direct);
        }
    }
}
