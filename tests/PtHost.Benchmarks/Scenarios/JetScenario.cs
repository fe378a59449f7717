namespace PtHost.Benchmarks;

/// <summary>
/// JET (spec/jet.md): relay throughput on a tcp candidate against direct loopback (target ≥ 0.6),
/// the jet transport end to end (TLS) against plain, and SOCKS CONNECT to first byte with every
/// candidate raced; the measurements live in <see cref="JetBench"/>.
/// </summary>
public sealed class JetScenario : IScenario
{
    public string Name => "jet";
    public string Title => "JET: relay on a tcp candidate vs direct, jet end to end vs plain, connect to first byte";

    public async Task RunAsync(Context ctx, ScenarioRun run)
    {
        var figures = new List<Figure>();
        await JetBench.RunAsync(ctx, figures, run.Details).ConfigureAwait(false);
        run.Add([.. figures]);
    }
}
