using System.Text.Json.Nodes;

namespace PtHost.Benchmarks;

/// <summary>
/// One benchmark scenario: a class in Scenarios/, listed once in <see cref="Scenarios.All"/>.
/// It adds its figures (table rows, JSON, chart bars) to <see cref="ScenarioRun"/> and measures
/// them <see cref="Context.Repetitions"/> times; the harness reports each figure's median.
/// A scenario catches its own measurement failures (see <see cref="ScenarioRun.AttemptAsync"/>)
/// so one broken scenario never stops the others.
/// </summary>
public interface IScenario
{
    /// <summary>The name <c>--only</c> selects it by (lower case, no spaces).</summary>
    string Name { get; }

    /// <summary>One line for <c>--help</c> and the chart's section heading.</summary>
    string Title { get; }

    Task RunAsync(Context ctx, ScenarioRun run);
}

/// <summary>The registry: adding a scenario is one class and one line here.</summary>
public static class Scenarios
{
    public static IReadOnlyList<IScenario> All { get; } =
    [
        new PlainThroughputScenario(),
        new ConnRateScenario(),
        new IdleMemoryScenario(),
        new StartupScenario(),
        new ZephyrRelayThroughputScenario(),
        new ZephyrEndToEndScenario(),
        new ZephyrIdleScenario(),
        new ZephyrSlotsScenario(),
        new AsportScenario(),
        new AsportAttackScenario(),
        new TurnScenario(),
        new JetScenario(),
        new RudScenario(),
        new RudAttackScenario(),
        new NodeAdapterScenario(),
        new PythonAdapterScenario(),
        new DotnetClientScenario(),
        new ScaleScenario(), // issue 20: relays at scale
        new OpenVpnScenario(),
        new RendezvousScenario(), // issue 19
    ];
}

/// <summary>What one scenario reports: its figures and its raw details for the JSON.</summary>
public sealed class ScenarioRun(IScenario scenario)
{
    public IScenario Scenario { get; } = scenario;
    public List<Figure> Figures { get; } = [];
    public JsonObject Details { get; } = [];

    /// <summary>Adds figures in table order; each is tagged with the scenario (chart sections).</summary>
    public void Add(params Figure[] figures)
    {
        foreach (var f in figures)
        {
            f.Scenario = Scenario.Name;
            Figures.Add(f);
        }
    }

    /// <summary>A JSON array under <see cref="Details"/>[<paramref name="key"/>] for raw per-repetition records.</summary>
    public JsonArray Raw(string key)
    {
        if (Details[key] is JsonArray a) return a;
        var created = new JsonArray();
        Details[key] = created;
        return created;
    }

    /// <summary>
    /// Runs one measurement; its value becomes a sample of <paramref name="figure"/>. A failure is
    /// recorded on the figure (first error kept) and yields NaN, so ratios skip that repetition.
    /// </summary>
    public static async Task<double> AttemptAsync(Figure figure, Func<Task<double>> measure)
    {
        try
        {
            double v = await measure().ConfigureAwait(false);
            figure.Samples.Add(v);
            if (figure.Error is not null)
            {
                figure.Note = "some repetitions failed: " + figure.Error;
                figure.Error = null;
            }
            return v;
        }
        catch (Exception e) when (IsMeasurementFailure(e))
        {
            Console.Error.WriteLine($"bench: {figure.Label}: {e.Message}");
            if (figure.Samples.Count == 0) figure.Error ??= e.Message;
            else figure.Note = "some repetitions failed: " + e.Message;
            return double.NaN;
        }
    }

    /// <summary>Adds <paramref name="value"/> / <paramref name="reference"/> to <paramref name="ratio"/> when both were measured.</summary>
    public static void AddRatio(Figure ratio, double value, double reference, Figure? valueFigure = null, Figure? referenceFigure = null)
    {
        if (!double.IsNaN(value) && !double.IsNaN(reference) && reference > 0)
        {
            ratio.Samples.Add(value / reference);
            ratio.Error = null;
        }
        else if (ratio.Samples.Count == 0) ratio.Error ??= valueFigure?.Error ?? referenceFigure?.Error ?? "not measured";
    }

    /// <summary>Marks every figure without samples as failed with <paramref name="e"/>'s message.</summary>
    public void FailRemaining(Exception e)
    {
        Console.Error.WriteLine($"bench: {Scenario.Name}: {e.Message}");
        foreach (var f in Figures) if (f.Samples.Count == 0) f.Error ??= e.Message;
    }

    public static bool IsMeasurementFailure(Exception e) =>
        e is InvalidOperationException or TimeoutException or IOException or System.Net.Sockets.SocketException
            or UnauthorizedAccessException or FormatException or OperationCanceledException;

    public static JsonObject Tag(JsonObject o, string kind, int rep)
    {
        o["kind"] = kind;
        o["rep"] = rep;
        return o;
    }
}
