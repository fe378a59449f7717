namespace PtHost.Benchmarks;

/// <summary>SOCKS sessions set up per second through client→plain→server, with latency percentiles and CPU per session.</summary>
public sealed class ConnRateScenario : IScenario
{
    public string Name => "connrate";
    public string Title => "SOCKS session set-up through the plain chain";

    public async Task RunAsync(Context ctx, ScenarioRun run)
    {
        var rate = new Figure { Key = "socks_connections_per_second", Label = $"SOCKS sessions set up per second ({ctx.ConnTotal}, {ctx.ConnConcurrency} in flight)", Unit = "conn/s", Format = "0", Goal = Goal.AtLeast, Target = 2000 };
        var p50 = new Figure { Key = "socks_setup_p50_ms", Label = "set-up latency p50", Unit = "ms", Indent = 1 };
        var p99 = new Figure { Key = "socks_setup_p99_ms", Label = "set-up latency p99", Unit = "ms", Indent = 1 };
        var cpu = new Figure { Key = "pthost_cpu_ms_per_connection", Label = "pthost CPU per session (client+server)", Unit = "ms", Indent = 1, Format = "0.000" };
        var selfCpu = new Figure { Key = "harness_cpu_ms_per_connection", Label = "harness CPU per session (load + target)", Unit = "ms", Indent = 1, Format = "0.000" };
        run.Add(rate, p50, p99, cpu, selfCpu);
        var raw = run.Raw("connrate");
        for (int rep = 0; rep < ctx.Repetitions; rep++)
        {
            ctx.Say($"connection rate {rep + 1}/{ctx.Repetitions}");
            await ScenarioRun.AttemptAsync(rate, async () =>
            {
                var r = await Measurements.ConnRateAsync(ctx).ConfigureAwait(false);
                p50.Samples.Add(r.P50Ms);
                p99.Samples.Add(r.P99Ms);
                cpu.Samples.Add(r.PtHostCpuMsPerConn);
                selfCpu.Samples.Add(r.HarnessCpuMsPerConn);
                raw.Add(ScenarioRun.Tag(r.Raw, "connrate", rep));
                if (r.Failures > 0) rate.Note = $"{r.Failures} failed: {r.FirstError}";
                return r.PerSecond;
            }).ConfigureAwait(false);
        }
    }
}
