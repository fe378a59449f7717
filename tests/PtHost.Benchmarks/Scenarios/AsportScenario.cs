namespace PtHost.Benchmarks;

/// <summary>
/// ASPORT (QUIC): iperf3 through client→asport→server against direct loopback and against
/// Debian's own ngtcp2 pair (gtlsclient downloading from gtlsserver) in the same run; QUIC
/// handshake p50 to the ASPORT server.
/// </summary>
public sealed class AsportScenario : IScenario
{
    public string Name => "asport";
    public string Title => "ASPORT over QUIC: throughput vs direct and vs the ngtcp2 example pair";

    public async Task RunAsync(Context ctx, ScenarioRun run)
    {
        var direct = new Figure { Key = "asport_direct_gbps", Label = "Throughput, direct iperf3 (reference, same run)", Unit = "Gbit/s" };
        var gtls = new Figure { Key = "asport_gtls_pair_gbps", Label = "Throughput, gtlsclient <- gtlsserver (ngtcp2 reference)", Unit = "Gbit/s" };
        var asport = new Figure { Key = "asport_chain_gbps", Label = "Throughput via client->asport (QUIC)->server", Unit = "Gbit/s" };
        var toGtls = new Figure { Key = "asport_ratio_to_gtls", Label = "ratio to the ngtcp2 pair", Unit = "", Indent = 1, Goal = Goal.AtLeast, Target = 0.8 };
        var toDirect = new Figure { Key = "asport_ratio_to_direct", Label = "ratio to direct", Unit = "", Indent = 1 };
        var handshake = new Figure { Key = "asport_quic_handshake_p50_ms", Label = "QUIC handshake to the ASPORT server, p50", Unit = "ms", Format = "0.0" };
        run.Add(direct, gtls, asport, toGtls, toDirect, handshake);
        var raw = run.Raw("asport");
        try
        {
            await Sys.EnsureToolsAsync([("iperf3", "iperf3"), ("proxychains4", "proxychains4"), ("gtlsclient", "ngtcp2-client")], ctx.Say).ConfigureAwait(false);
            ctx.Iperf3 = Sys.Which("iperf3")!;
            ctx.Proxychains = Sys.Which("proxychains4");
        }
        catch (Exception e) when (ScenarioRun.IsMeasurementFailure(e))
        {
            run.FailRemaining(e);
            return;
        }
        int megabytes = ctx.Repetitions == 1 ? 64 : 256;
        for (int rep = 0; rep < ctx.Repetitions; rep++)
        {
            ctx.Say($"asport {rep + 1}/{ctx.Repetitions}: direct");
            double d = await ScenarioRun.AttemptAsync(direct, async () => (await Measurements.IperfDirectAsync(ctx).ConfigureAwait(false)).Gbps).ConfigureAwait(false);
            ctx.Say($"asport {rep + 1}/{ctx.Repetitions}: gtlsclient <- gtlsserver, {megabytes} MiB");
            double g = await ScenarioRun.AttemptAsync(gtls, () => AsportBench.GtlsPairAsync(ctx, megabytes)).ConfigureAwait(false);
            ctx.Say($"asport {rep + 1}/{ctx.Repetitions}: chain through ASPORT");
            int r = rep;
            double a = await ScenarioRun.AttemptAsync(asport, async () =>
            {
                var result = await AsportBench.ThroughputAsync(ctx).ConfigureAwait(false);
                handshake.Samples.Add(result.HandshakeP50Ms);
                raw.Add(ScenarioRun.Tag(result.Raw, "asport", r));
                return result.Gbps;
            }).ConfigureAwait(false);
            ScenarioRun.AddRatio(toGtls, a, g, asport, gtls);
            ScenarioRun.AddRatio(toDirect, a, d, asport, direct);
        }
        if (handshake.Samples.Count == 0) handshake.Error ??= asport.Error;
    }
}
