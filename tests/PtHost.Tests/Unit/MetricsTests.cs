using PtHost.Contract;
using PtHost.Transports.Zephyr;

namespace PtHost.Tests.Unit;

/// <summary>The text exposition (spec/ipc.md §4.12) and the Zephyr cluster's routing arithmetic (spec/zephyr.md §8).</summary>
public class MetricsTests
{
    [Fact]
    public void Families_are_written_once_with_their_samples_together_whoever_added_them()
    {
        var m = new MetricsWriter();
        m.Counter("a_total", "A.", 1, ("t", "x"));
        m.Gauge("b", "B.", 2);
        m.Counter("a_total", "A.", 3, ("t", "y"));
        Assert.Equal("# HELP a_total A.\n# TYPE a_total counter\na_total{t=\"x\"} 1\na_total{t=\"y\"} 3\n# HELP b B.\n# TYPE b gauge\nb 2\n", m.ToString());
    }

    [Fact]
    public void Label_values_are_escaped_and_a_family_cannot_change_its_type()
    {
        var m = new MetricsWriter();
        m.Gauge("g", "G.", 1, ("id", "a\"b\\c\nd"));
        Assert.Contains("g{id=\"a\\\"b\\\\c\\nd\"} 1\n", m.ToString(), StringComparison.Ordinal);
        Assert.Throws<InvalidOperationException>(() => m.Counter("g", "G.", 1));
    }

    [Fact]
    public void A_histogram_writes_cumulative_buckets_sum_and_count()
    {
        var h = new LatencyHistogram();
        h.Observe(0.0001);
        h.Observe(0.003);
        h.Observe(100);
        var m = new MetricsWriter();
        m.Histogram("h_seconds", "H.", h, ("t", "x"));
        string text = m.ToString();
        Assert.Contains("h_seconds_bucket{t=\"x\",le=\"0.0005\"} 1\n", text, StringComparison.Ordinal);
        Assert.Contains("h_seconds_bucket{t=\"x\",le=\"0.0025\"} 1\n", text, StringComparison.Ordinal);
        Assert.Contains("h_seconds_bucket{t=\"x\",le=\"0.005\"} 2\n", text, StringComparison.Ordinal);
        Assert.Contains("h_seconds_bucket{t=\"x\",le=\"30\"} 2\n", text, StringComparison.Ordinal);
        Assert.Contains("h_seconds_bucket{t=\"x\",le=\"+Inf\"} 3\n", text, StringComparison.Ordinal);
        Assert.Contains("h_seconds_count{t=\"x\"} 3\n", text, StringComparison.Ordinal);
        Assert.Contains("h_seconds_sum{t=\"x\"} 100.0031\n", text, StringComparison.Ordinal);
    }

    [Fact]
    public void Failures_are_counted_by_reason_and_in_the_status_total()
    {
        var c = new TransportCounters();
        c.SessionFailed("auth");
        c.SessionFailed("auth");
        c.SessionFailed();
        var m = new MetricsWriter();
        c.WriteMetrics(m, "plain", "client");
        string text = m.ToString();
        Assert.Equal(3, c.Snapshot().SessionsFailed);
        Assert.Contains("pthost_sessions_failed_total{transport=\"plain\",role=\"client\",reason=\"auth\"} 2\n", text, StringComparison.Ordinal);
        Assert.Contains("pthost_sessions_failed_total{transport=\"plain\",role=\"client\",reason=\"other\"} 1\n", text, StringComparison.Ordinal);
    }

    [Fact]
    public void The_meeting_instance_is_one_of_the_two_owners_and_the_same_from_both_sides()
    {
        var random = new Random(7);
        var seen = new int[4];
        for (int i = 0; i < 10_000; i++)
        {
            uint a = ((uint)random.Next(1, 4) << ZephyrLink.TagShift) | (uint)random.Next(1 << ZephyrLink.TagShift);
            uint b = ((uint)random.Next(1, 4) << ZephyrLink.TagShift) | (uint)random.Next(1 << ZephyrLink.TagShift);
            int m = ZephyrLink.Meeting(a, b);
            Assert.Equal(m, ZephyrLink.Meeting(b, a));
            Assert.True(m == ZephyrLink.Tag(a) || m == ZephyrLink.Tag(b));
            Assert.True(a <= ZephyrWire.MaxZid && b <= ZephyrWire.MaxZid);
            seen[m]++;
        }
        // Spread evenly: each of three instances meets about a third of the pairs.
        for (int n = 1; n <= 3; n++) Assert.InRange(seen[n], 2_800, 3_900);
    }
}
