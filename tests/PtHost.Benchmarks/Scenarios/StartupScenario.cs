namespace PtHost.Benchmarks;

/// <summary>
/// Process start to CMETHODS DONE / SMETHODS DONE and the runtime's floor (pthost --version) for the
/// framework-dependent build, the same for the NativeAOT build (issue 16: ≤ 20 ms, RSS ≤ 25 MB), and
/// obfs4proxy's own start-up to CMETHODS DONE (Tor's PT 1.0 managed mode) as the reference, one run
/// after the other in the same loop.
/// </summary>
public sealed class StartupScenario : IScenario
{
    public string Name => "startup";
    public string Title => "Start-up time";

    public async Task RunAsync(Context ctx, ScenarioRun run)
    {
        var client = new Figure { Key = "startup_client_ms", Label = $"Start-up to CMETHODS DONE (client, {ctx.StartupRuns} runs)", Unit = "ms", Format = "0", Goal = Goal.AtMost, Target = 200 };
        var server = new Figure { Key = "startup_server_ms", Label = $"Start-up to SMETHODS DONE (server, {ctx.StartupRuns} runs)", Unit = "ms", Format = "0" };
        var floor = new Figure { Key = "startup_version_ms", Label = "runtime floor: pthost --version start to exit", Unit = "ms", Format = "0", Indent = 1 };
        var aotClient = new Figure { Key = "startup_aot_client_ms", Label = "NativeAOT: start-up to CMETHODS DONE (client)", Unit = "ms", Format = "0.0", Goal = Goal.AtMost, Target = 20 };
        var aotServer = new Figure { Key = "startup_aot_server_ms", Label = "NativeAOT: start-up to SMETHODS DONE (server)", Unit = "ms", Format = "0.0", Indent = 1 };
        var aotRss = new Figure { Key = "startup_aot_rss_mb", Label = "NativeAOT: client RSS at CMETHODS DONE", Unit = "MB", Format = "0.0", Goal = Goal.AtMost, Target = 25, Indent = 1 };
        var fdRss = new Figure { Key = "startup_rss_mb", Label = "framework-dependent: client RSS at CMETHODS DONE", Unit = "MB", Format = "0.0", Indent = 1 };
        var obfs4 = new Figure { Key = "startup_obfs4proxy_ms", Label = "reference: obfs4proxy start-up to CMETHODS DONE (PT 1.0)", Unit = "ms", Format = "0.0" };
        run.Add(client, server, floor, fdRss, aotClient, aotServer, aotRss, obfs4);
        try
        {
            string aot = await ctx.NativeAotPtHostAsync().ConfigureAwait(false);
            string? obfs4proxy = Sys.Which("obfs4proxy");
            if (obfs4proxy is null) obfs4.Error = "obfs4proxy is not installed";
            ctx.Say($"start-up: {ctx.StartupRuns} runs each (after one unmeasured run of each), framework-dependent {ctx.PtHost}, NativeAOT {aot}");
            await Measurements.StartupOnceAsync(ctx, ctx.PtHost, server: false).ConfigureAwait(false);
            await Measurements.StartupOnceAsync(ctx, aot, server: false).ConfigureAwait(false);
            if (obfs4proxy is not null) await Measurements.Obfs4proxyStartupAsync(ctx, obfs4proxy).ConfigureAwait(false);
            for (int i = 0; i < ctx.StartupRuns; i++)
            {
                await ScenarioRun.AttemptAsync(client, async () =>
                {
                    var (ms, rss) = await Measurements.StartupOnceAsync(ctx, ctx.PtHost, server: false).ConfigureAwait(false);
                    fdRss.Samples.Add(rss);
                    return ms;
                }).ConfigureAwait(false);
                await ScenarioRun.AttemptAsync(server, async () => (await Measurements.StartupOnceAsync(ctx, ctx.PtHost, server: true).ConfigureAwait(false)).Ms).ConfigureAwait(false);
                await ScenarioRun.AttemptAsync(floor, () => Measurements.VersionRunAsync(ctx)).ConfigureAwait(false);
                await ScenarioRun.AttemptAsync(aotClient, async () =>
                {
                    var (ms, rss) = await Measurements.StartupOnceAsync(ctx, aot, server: false).ConfigureAwait(false);
                    aotRss.Samples.Add(rss);
                    return ms;
                }).ConfigureAwait(false);
                await ScenarioRun.AttemptAsync(aotServer, async () => (await Measurements.StartupOnceAsync(ctx, aot, server: true).ConfigureAwait(false)).Ms).ConfigureAwait(false);
                if (obfs4proxy is not null) await ScenarioRun.AttemptAsync(obfs4, () => Measurements.Obfs4proxyStartupAsync(ctx, obfs4proxy)).ConfigureAwait(false);
            }
        }
        catch (Exception e) when (ScenarioRun.IsMeasurementFailure(e))
        {
            run.FailRemaining(e);
        }
    }
}
