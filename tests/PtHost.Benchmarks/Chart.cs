using System.Globalization;
using System.Security;
using System.Text;

namespace PtHost.Benchmarks;

/// <summary>
/// The results as one SVG a person can open in a browser: a section per scenario, a horizontal
/// bar per figure (scaled against the largest figure of the same unit in that section; ratios
/// against at least 1.0), the median printed beside it, the target as a dark tick, bars green
/// when a target is met, red when missed, blue without a target.
/// </summary>
public static class Chart
{
    private const int Width = 1000, LabelWidth = 470, BarMax = 380, Row = 22, Left = 10;

    public static string Render(string header, IReadOnlyList<(IScenario Scenario, IReadOnlyList<Figure> Figures)> sections)
    {
        var body = new StringBuilder();
        int y = 30;
        body.Append(Text(Left, y, header, "title"));
        y += 14;
        foreach (var (scenario, figures) in sections)
        {
            if (figures.Count == 0) continue;
            y += 26;
            body.Append(Text(Left, y, scenario.Title, "section"));
            y += 8;
            var scale = figures.Where(f => f.Median is { } m && double.IsFinite(m))
                .GroupBy(f => f.Unit)
                .ToDictionary(g => g.Key, g => Math.Max(g.Max(f => Math.Max(f.Median!.Value, f.Goal == Goal.None ? 0 : f.Target)), g.Key == "" ? 1.0 : 0) * 1.1);
            foreach (var f in figures)
            {
                y += Row;
                body.Append(Text(Left + f.Indent * 14, y, f.Label.Length > 70 ? f.Label[..67] + "..." : f.Label, f.Indent > 0 ? "sub" : "label"));
                int x0 = Left + LabelWidth;
                if (f.Error is not null)
                {
                    body.Append(Text(x0, y, "ERROR: " + (f.Error.Length > 60 ? f.Error[..57] + "..." : f.Error), "error"));
                    continue;
                }
                if (f.Median is not { } m || !double.IsFinite(m)) { body.Append(Text(x0, y, "-", "value")); continue; }
                double max = scale.GetValueOrDefault(f.Unit, 1);
                if (max <= 0) max = 1;
                int w = (int)Math.Round(Math.Clamp(m / max, 0, 1) * BarMax);
                string cls = f.Pass switch { true => "pass", false => "miss", _ => "plain" };
                body.Append(CultureInfo.InvariantCulture, $"<rect class=\"{cls}\" x=\"{x0}\" y=\"{y - 13}\" width=\"{Math.Max(w, 1)}\" height=\"15\" rx=\"2\"/>\n");
                int textX = x0 + w + 6;
                if (f.Goal != Goal.None)
                {
                    int tx = x0 + (int)Math.Round(Math.Clamp(f.Target / max, 0, 1) * BarMax);
                    body.Append(CultureInfo.InvariantCulture, $"<line class=\"target\" x1=\"{tx}\" y1=\"{y - 17}\" x2=\"{tx}\" y2=\"{y + 6}\"/>\n");
                    textX = Math.Max(textX, tx + 6); // the value never sits under the tick
                }
                string value = f.ValueText + (f.Goal != Goal.None ? $"  (target {f.TargetText})" : "");
                body.Append(Text(textX, y, value, "value"));
            }
        }
        y += 30;
        body.Append(Text(Left, y, "Bars: median of the repetitions. Green: target met; red: missed; dark tick: the target.", "foot"));
        y += 12;
        var svg = new StringBuilder();
        svg.Append(CultureInfo.InvariantCulture, $"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{Width}\" height=\"{y}\" viewBox=\"0 0 {Width} {y}\">\n");
        svg.Append("""
            <style>
              text { font-family: DejaVu Sans, Arial, Helvetica, sans-serif; fill: #222; }
              .title { font-size: 15px; font-weight: bold; }
              .section { font-size: 14px; font-weight: bold; fill: #114; }
              .label { font-size: 12px; }
              .sub { font-size: 11px; fill: #555; }
              .value { font-size: 11px; }
              .error { font-size: 11px; fill: #b00; }
              .foot { font-size: 10px; fill: #666; }
              .pass { fill: #3a9d4a; }
              .miss { fill: #d0453a; }
              .plain { fill: #4a78c0; }
              .target { stroke: #111; stroke-width: 2; }
            </style>

            """);
        svg.Append(CultureInfo.InvariantCulture, $"<rect x=\"0\" y=\"0\" width=\"{Width}\" height=\"{y}\" fill=\"#fff\"/>\n");
        svg.Append(body);
        svg.Append("</svg>\n");
        return svg.ToString();
    }

    private static string Text(int x, int y, string s, string cls) =>
        string.Create(CultureInfo.InvariantCulture, $"<text class=\"{cls}\" x=\"{x}\" y=\"{y}\">{SecurityElement.Escape(s)}</text>\n");
}
