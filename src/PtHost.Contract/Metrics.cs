using System.Globalization;
using System.Text;

namespace PtHost.Contract;

/// <summary>
/// Something that adds its metrics to a scrape (spec/ipc.md §4.12): a running relay, the host's transports. Called on the
/// scraper's thread; it reads counters and never blocks the sessions that write them.
/// </summary>
public interface IMetricsSource
{
    /// <summary>Adds the current values to <paramref name="metrics"/>.</summary>
    void WriteMetrics(MetricsWriter metrics);
}

/// <summary>
/// Collects samples and renders them in the Prometheus text exposition format 0.0.4 (spec/ipc.md §4.12): every family once,
/// its <c># HELP</c> and <c># TYPE</c> lines first, its samples together in the order added, whoever added them.
/// </summary>
public sealed class MetricsWriter
{
    private readonly List<Family> _families = [];
    private readonly Dictionary<string, Family> _byName = new(StringComparer.Ordinal);

    private sealed record Family(string Name, string Type, string Help, StringBuilder Samples);

    /// <summary>A monotonically increasing total; <paramref name="name"/> should end in <c>_total</c>.</summary>
    public void Counter(string name, string help, double value, params ReadOnlySpan<(string Name, string Value)> labels) =>
        Sample(Get(name, "counter", help).Samples, name, labels, default, value);

    /// <summary>A value that goes up and down.</summary>
    public void Gauge(string name, string help, double value, params ReadOnlySpan<(string Name, string Value)> labels) =>
        Sample(Get(name, "gauge", help).Samples, name, labels, default, value);

    /// <summary>A histogram's cumulative buckets, sum and count (<c>name_bucket</c>, <c>name_sum</c>, <c>name_count</c>).</summary>
    public void Histogram(string name, string help, LatencyHistogram histogram, params ReadOnlySpan<(string Name, string Value)> labels)
    {
        var samples = Get(name, "histogram", help).Samples;
        var snapshot = histogram.Snapshot();
        long cumulative = 0;
        for (int i = 0; i < LatencyHistogram.Bounds.Length; i++)
        {
            cumulative += snapshot.Buckets[i];
            Sample(samples, name + "_bucket", labels, ("le", LatencyHistogram.Bounds[i].ToString("R", CultureInfo.InvariantCulture)), cumulative);
        }
        cumulative += snapshot.Buckets[^1];
        Sample(samples, name + "_bucket", labels, ("le", "+Inf"), cumulative);
        Sample(samples, name + "_sum", labels, default, snapshot.SumSeconds);
        Sample(samples, name + "_count", labels, default, cumulative);
    }

    /// <summary>The exposition text.</summary>
    public override string ToString()
    {
        var text = new StringBuilder();
        foreach (var f in _families)
        {
            text.Append("# HELP ").Append(f.Name).Append(' ').Append(f.Help.Replace("\\", "\\\\", StringComparison.Ordinal).Replace("\n", "\\n", StringComparison.Ordinal)).Append('\n');
            text.Append("# TYPE ").Append(f.Name).Append(' ').Append(f.Type).Append('\n');
            text.Append(f.Samples);
        }
        return text.ToString();
    }

    private Family Get(string name, string type, string help)
    {
        if (_byName.TryGetValue(name, out var f))
        {
            if (f.Type != type) throw new InvalidOperationException($"metric {name} is a {f.Type}, not a {type}");
            return f;
        }
        f = new Family(name, type, help, new StringBuilder());
        _byName[name] = f;
        _families.Add(f);
        return f;
    }

    private static void Sample(StringBuilder s, string name, ReadOnlySpan<(string Name, string Value)> labels, (string Name, string Value) extra, double value)
    {
        s.Append(name);
        bool any = labels.Length > 0 || extra.Name is not null;
        if (any)
        {
            s.Append('{');
            bool first = true;
            foreach (var (n, v) in labels) Label(s, n, v, ref first);
            if (extra.Name is not null) Label(s, extra.Name, extra.Value, ref first);
            s.Append('}');
        }
        s.Append(' ').Append(double.IsPositiveInfinity(value) ? "+Inf" : value.ToString("R", CultureInfo.InvariantCulture)).Append('\n');
    }

    private static void Label(StringBuilder s, string name, string value, ref bool first)
    {
        if (!first) s.Append(',');
        first = false;
        s.Append(name).Append("=\"");
        foreach (char c in value)
        {
            if (c == '\\') s.Append("\\\\");
            else if (c == '"') s.Append("\\\"");
            else if (c == '\n') s.Append("\\n");
            else s.Append(c);
        }
        s.Append('"');
    }
}

/// <summary>
/// Latency buckets (spec/ipc.md §4.12): one interlocked increment per observation (one per session, never per packet),
/// read without a lock by the scraper.
/// </summary>
public sealed class LatencyHistogram
{
    /// <summary>Upper bounds in seconds; one more bucket above the last (+Inf).</summary>
    public static readonly double[] Bounds = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

    private readonly long[] _buckets = new long[Bounds.Length + 1];
    private long _sumMicroseconds;

    /// <summary>Records one duration, measured from <paramref name="startTimestamp"/> (<see cref="System.Diagnostics.Stopwatch.GetTimestamp"/>) to now.</summary>
    public void ObserveSince(long startTimestamp) => Observe(System.Diagnostics.Stopwatch.GetElapsedTime(startTimestamp).TotalSeconds);

    /// <summary>Records one duration in seconds.</summary>
    public void Observe(double seconds)
    {
        if (!(seconds >= 0)) seconds = 0;
        int i = 0;
        while (i < Bounds.Length && seconds > Bounds[i]) i++;
        Interlocked.Increment(ref _buckets[i]);
        Interlocked.Add(ref _sumMicroseconds, (long)(seconds * 1e6));
    }

    /// <summary>Per-bucket (not cumulative) counts and the sum.</summary>
    public (long[] Buckets, double SumSeconds) Snapshot()
    {
        var b = new long[_buckets.Length];
        for (int i = 0; i < b.Length; i++) b[i] = Volatile.Read(ref _buckets[i]);
        return (b, Volatile.Read(ref _sumMicroseconds) / 1e6);
    }
}
