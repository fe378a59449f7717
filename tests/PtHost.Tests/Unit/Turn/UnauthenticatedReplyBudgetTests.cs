using System.Net;
using PtHost.Contract;
using PtHost.Turn;

namespace PtHost.Tests.Unit.Turn;

/// <summary>spec/turn.md §4, unauthenticated replies: per-prefix (IPv4 /24, IPv6 /64) and per-listener token buckets.</summary>
public class UnauthenticatedReplyBudgetTests
{
    private sealed class Ticks : TimeProvider
    {
        public long Now { get; set; } = 1_000_000;
        public override long GetTimestamp() => Now;
        public override long TimestampFrequency => 1000; // milliseconds
    }

    private static PeerAddress At(string endPoint) => PeerAddress.From(IPEndPoint.Parse(endPoint));

    private static int Take(UnauthenticatedReplyBudget budget, Func<int, PeerAddress> source, int tries)
    {
        int granted = 0;
        for (int i = 0; i < tries; i++) if (budget.TryTake(source(i))) granted++;
        return granted;
    }

    [Fact]
    public void One_prefix_gets_its_burst_then_16_per_second()
    {
        var time = new Ticks();
        var budget = new UnauthenticatedReplyBudget(time);
        Assert.Equal(UnauthenticatedReplyBudget.PrefixBurst, Take(budget, i => At($"198.51.100.{i % 250}:{1000 + i}"), 500));
        Assert.True(budget.TryTake(At("198.51.101.1:1"))); // the next /24 has its own bucket
        time.Now += 1000;
        Assert.Equal(UnauthenticatedReplyBudget.PrefixPerSecond, Take(budget, _ => At("198.51.100.7:7"), 100));
        Assert.Equal(500 - UnauthenticatedReplyBudget.PrefixBurst + 100 - UnauthenticatedReplyBudget.PrefixPerSecond, budget.Refused);
    }

    [Fact]
    public void IPv6_sources_share_a_64_and_mapped_IPv4_is_IPv4()
    {
        var budget = new UnauthenticatedReplyBudget(new Ticks());
        Assert.Equal(UnauthenticatedReplyBudget.PrefixBurst, Take(budget, i => At($"[2001:db8:0:1:{i:x}::1]:1"), 100));
        Assert.True(budget.TryTake(At("[2001:db8:0:2::1]:1")));
        Assert.Equal(UnauthenticatedReplyBudget.PrefixBurst, Take(budget, i => i % 2 == 0 ? At($"[::ffff:203.0.113.{i % 200}]:1") : At($"203.0.113.{i % 200}:1"), 100));
    }

    [Fact]
    public void The_listener_gets_1024_at_once_then_512_per_second_whatever_the_prefixes()
    {
        var time = new Ticks();
        var budget = new UnauthenticatedReplyBudget(time);
        // 4,096 prefixes × 1 request each: only the listener's burst is answered.
        Assert.Equal(UnauthenticatedReplyBudget.ListenerBurst, Take(budget, i => At($"10.{i >> 8}.{i & 255}.1:1"), 4096));
        time.Now += 500;
        Assert.Equal(UnauthenticatedReplyBudget.ListenerPerSecond / 2, Take(budget, i => At($"10.100.{i & 255}.1:1"), 1000));
    }
}
