namespace PtHost.Benchmarks;

/// <summary>
/// TURN + plain (spec/turn.md): datagrams/s and loss against iperf3 UDP direct, and round-trip
/// p50/p99 of small packets; the measurements live in <see cref="TurnBench"/>.
/// </summary>
public sealed class TurnScenario : IScenario
{
    public string Name => "turn";
    public string Title => "TURN channel + plain: UDP datagrams/s and RTT vs direct UDP";

    public async Task RunAsync(Context ctx, ScenarioRun run)
    {
        var figures = new List<Figure>();
        await TurnBench.RunAsync(ctx, figures, run.Details).ConfigureAwait(false);
        run.Add([.. figures]);
    }
}
