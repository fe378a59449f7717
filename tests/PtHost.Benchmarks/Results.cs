using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;

namespace PtHost.Benchmarks;

public enum Goal { None, AtLeast, AtMost }

/// <summary>One reported figure: its samples (one per repetition), median, and optional target.</summary>
public sealed class Figure
{
    public required string Key { get; init; }
    public required string Label { get; init; }
    public required string Unit { get; init; }
    /// <summary>The scenario that reported it (set by <see cref="ScenarioRun.Add"/>).</summary>
    public string Scenario { get; set; } = "";
    public List<double> Samples { get; } = [];
    public Goal Goal { get; init; }
    public double Target { get; init; }
    public string Format { get; init; } = "0.00";
    public int Indent { get; init; }
    public string? Error { get; set; }
    public string? Note { get; set; }

    public double? Median => Samples.Count == 0 ? null : Stats.Median(Samples);

    public bool? Pass => Goal == Goal.None || Median is not { } m ? null : Goal == Goal.AtLeast ? m >= Target : m <= Target;

    public string ValueText => Error is not null ? "ERROR" : Median is { } m ? $"{Fmt(m)} {Unit}" : "-";

    public string TargetText => Goal switch
    {
        Goal.AtLeast => $">= {Target.ToString("0.##", CultureInfo.InvariantCulture)}",
        Goal.AtMost => $"<= {Target.ToString("0.##", CultureInfo.InvariantCulture)}",
        _ => "",
    };

    public string ResultText
    {
        get
        {
            if (Error is not null) return Goal == Goal.None ? "" : "MISS (error)";
            if (Pass is not { } p || Median is not { } m) return "";
            if (p) return "PASS";
            double by = Goal == Goal.AtLeast ? Target - m : m - Target;
            double pct = Target == 0 ? 0 : by / Target * 100;
            return $"MISS by {Fmt(by)} ({pct:0}%)";
        }
    }

    private string Fmt(double v) => v.ToString(Format, CultureInfo.InvariantCulture);

    public JsonObject ToJson()
    {
        var o = new JsonObject
        {
            ["label"] = Label,
            ["scenario"] = Scenario,
            ["unit"] = Unit,
            ["median"] = Median,
            ["samples"] = new JsonArray([.. Samples.Select(s => (JsonNode?)JsonValue.Create(s))]),
        };
        if (Goal != Goal.None)
        {
            o["target"] = Target;
            o["goal"] = Goal == Goal.AtLeast ? ">=" : "<=";
            o["pass"] = Pass;
        }
        if (Error is not null) o["error"] = Error;
        if (Note is not null) o["note"] = Note;
        return o;
    }
}

public static class Stats
{
    public static double Median(IReadOnlyList<double> values) => Percentile(values, 50);

    /// <summary>Nearest-rank percentile (p in 0..100) of unsorted values.</summary>
    public static double Percentile(IReadOnlyList<double> values, double p)
    {
        if (values.Count == 0) return double.NaN;
        var sorted = values.Order().ToArray();
        if (p >= 100) return sorted[^1];
        if (Math.Abs(p - 50) < 1e-9 && sorted.Length % 2 == 0)
            return (sorted[sorted.Length / 2 - 1] + sorted[sorted.Length / 2]) / 2;
        int rank = (int)Math.Ceiling(p / 100 * sorted.Length);
        return sorted[Math.Clamp(rank - 1, 0, sorted.Length - 1)];
    }
}

public static class Table
{
    public static string Render(IReadOnlyList<Figure> figures)
    {
        var rows = new List<string[]> { new[] { "Measurement", "Median", "Target", "Result", "Samples" } };
        foreach (var f in figures)
        {
            string samples = f.Error is not null ? Short(f.Error, 60)
                : string.Join(" ", f.Samples.Select(s => s.ToString(f.Format, CultureInfo.InvariantCulture)));
            if (f.Samples.Count > 5) samples = $"n={f.Samples.Count}";
            rows.Add([new string(' ', f.Indent * 2) + f.Label, f.ValueText, f.TargetText, f.ResultText, samples]);
        }
        int cols = rows[0].Length;
        var width = new int[cols];
        foreach (var r in rows)
            for (int i = 0; i < cols; i++) width[i] = Math.Max(width[i], r[i].Length);
        var sb = new StringBuilder();
        for (int ri = 0; ri < rows.Count; ri++)
        {
            var r = rows[ri];
            var line = new StringBuilder();
            for (int i = 0; i < cols; i++)
            {
                line.Append(i == 1 ? r[i].PadLeft(width[i]) : r[i].PadRight(width[i]));
                if (i < cols - 1) line.Append("  ");
            }
            sb.Append(line.ToString().TrimEnd()).Append('\n');
            if (ri == 0) sb.Append(new string('-', width.Sum() + 2 * (cols - 1))).Append('\n');
        }
        return sb.ToString();
    }

    private static string Short(string s, int n) => s.Length <= n ? s : s[..(n - 3)] + "...";
}
