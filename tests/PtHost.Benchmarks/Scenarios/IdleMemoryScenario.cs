namespace PtHost.Benchmarks;

/// <summary>RSS per idle SOCKS session held through client→plain→server.</summary>
public sealed class IdleMemoryScenario : IScenario
{
    public string Name => "memory";
    public string Title => "Memory per idle session (plain chain)";

    public async Task RunAsync(Context ctx, ScenarioRun run)
    {
        int sessions = ctx.IdleSessions;
        long limit = Sys.OpenFileLimit();
        // The harness holds both ends (SOCKS client side and the target's accepted side) of each session, two batches.
        if (limit > 0 && limit < 4L * sessions + 256)
        {
            sessions = (int)Math.Max(100, (limit - 256) / 4);
            ctx.Say($"memory: open-file limit {limit} is low; measuring {sessions} sessions instead of {ctx.IdleSessions}");
        }
        var total = new Figure { Key = "idle_session_kib_total", Label = $"RSS per idle session, client+server ({sessions} sessions)", Unit = "KiB", Format = "0.0", Goal = Goal.AtMost, Target = 40 };
        var client = new Figure { Key = "idle_session_kib_client", Label = "client", Unit = "KiB", Format = "0.0", Indent = 1 };
        var server = new Figure { Key = "idle_session_kib_server", Label = "server", Unit = "KiB", Format = "0.0", Indent = 1 };
        // The marginal cost: a second batch opened on top of the first, after a settling pause (Measurements.IdleMemoryAsync).
        var total2 = new Figure { Key = "idle_session_kib_total_second", Label = $"the next {sessions} sessions on top (settled), client+server", Unit = "KiB", Format = "0.0" };
        var client2 = new Figure { Key = "idle_session_kib_client_second", Label = "client", Unit = "KiB", Format = "0.0", Indent = 1 };
        var server2 = new Figure { Key = "idle_session_kib_server_second", Label = "server", Unit = "KiB", Format = "0.0", Indent = 1 };
        run.Add(total, client, server, total2, client2, server2);
        var raw = run.Raw("memory");
        for (int rep = 0; rep < ctx.Repetitions; rep++)
        {
            ctx.Say($"idle memory {rep + 1}/{ctx.Repetitions}: {sessions} sessions");
            await ScenarioRun.AttemptAsync(total, async () =>
            {
                var r = await Measurements.IdleMemoryAsync(ctx, sessions, secondBatch: true).ConfigureAwait(false);
                client.Samples.Add(r.ClientPerSession);
                server.Samples.Add(r.ServerPerSession);
                total2.Samples.Add(r.TotalPerSessionSecond);
                client2.Samples.Add(r.ClientPerSessionSecond);
                server2.Samples.Add(r.ServerPerSessionSecond);
                r.Raw["rep"] = rep;
                raw.Add(r.Raw);
                return r.TotalPerSession;
            }).ConfigureAwait(false);
        }
    }
}
