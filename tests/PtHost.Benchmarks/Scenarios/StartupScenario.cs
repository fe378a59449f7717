namespace PtHost.Benchmarks;

/// <summary>Process start to CMETHODS DONE / SMETHODS DONE, and the runtime's floor (pthost --version).</summary>
public sealed class StartupScenario : IScenario
{
    public string Name => "startup";
    public string Title => "Start-up time";

    public async Task RunAsync(Context ctx, ScenarioRun run)
    {
        var client = new Figure { Key = "startup_client_ms", Label = $"Start-up to CMETHODS DONE (client, {ctx.StartupRuns} runs)", Unit = "ms", Format = "0", Goal = Goal.AtMost, Target = 200 };
        var server = new Figure { Key = "startup_server_ms", Label = $"Start-up to SMETHODS DONE (server, {ctx.StartupRuns} runs)", Unit = "ms", Format = "0" };
        var floor = new Figure { Key = "startup_version_ms", Label = "runtime floor: pthost --version start to exit", Unit = "ms", Format = "0", Indent = 1 };
        run.Add(client, server, floor);
        ctx.Say($"start-up: {ctx.StartupRuns} runs each (after one unmeasured run)");
        try
        {
            await Measurements.StartupOnceAsync(ctx, server: false).ConfigureAwait(false);
            for (int i = 0; i < ctx.StartupRuns; i++)
            {
                await ScenarioRun.AttemptAsync(client, () => Measurements.StartupOnceAsync(ctx, server: false)).ConfigureAwait(false);
                await ScenarioRun.AttemptAsync(server, () => Measurements.StartupOnceAsync(ctx, server: true)).ConfigureAwait(false);
                await ScenarioRun.AttemptAsync(floor, () => Measurements.VersionRunAsync(ctx)).ConfigureAwait(false);
            }
        }
        catch (Exception e) when (ScenarioRun.IsMeasurementFailure(e))
        {
            run.FailRemaining(e);
        }
    }
}
