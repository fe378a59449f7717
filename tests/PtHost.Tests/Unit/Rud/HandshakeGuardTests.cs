using PtHost.Transports.Rud;

namespace PtHost.Tests.Unit.Rud;

/// <summary>The replay cache's floor (spec/rud.md §6.1) and the handshake rates of the load policy (§4.3, §4.4).</summary>
public class HandshakeGuardTests
{
    private static EphemeralKeyId Key(int i) => new((ulong)i, 1, 2, 3);

    [Fact]
    public void A_full_replay_cache_evicts_the_oldest_stamp_and_refuses_at_or_below_it_only()
    {
        var cache = new ReplayCache(limit: 4, windowMs: 120_000);
        for (int i = 0; i < 4; i++) cache.Add(Key(i), 1_000 + i);
        Assert.Equal(long.MinValue, cache.Floor);
        Assert.True(cache.Refuses(Key(2), 5_000)); // in the cache
        Assert.False(cache.Refuses(Key(9), 900)); // not full yet: an old stamp is the window's business

        cache.Add(Key(4), 2_000); // full: key 0 (stamp 1,000) goes
        Assert.Equal(4, cache.Count);
        Assert.Equal(1_000, cache.Floor);
        Assert.True(cache.Refuses(Key(0), 1_000)); // the evicted key replayed: at the floor
        Assert.True(cache.Refuses(Key(10), 999));
        Assert.False(cache.Refuses(Key(11), 1_001)); // a new exchange is still accepted
    }

    [Fact]
    public void Replay_cache_entries_leave_with_the_window()
    {
        var cache = new ReplayCache(limit: 100, windowMs: 120_000);
        cache.Add(Key(1), 10_000);
        cache.Add(Key(2), 50_000);
        cache.Prune(130_001);
        Assert.Equal(1, cache.Count);
        Assert.False(cache.Refuses(Key(1), 140_000));
        Assert.True(cache.Refuses(Key(2), 50_000));
    }

    [Fact]
    public void The_exchange_rate_raises_the_load_signal_for_the_hold_time()
    {
        var load = new HandshakeLoad();
        long t = 5_000_000;
        for (int i = 0; i < HandshakeLoad.DeferExchangeRate; i++) load.OnExchange(t);
        Assert.False(load.Raised(t));
        load.OnExchange(t + 10);
        Assert.True(load.Raised(t + 10));
        Assert.True(load.Raised(t + HandshakeLoad.DeferHold));
        Assert.False(load.Raised(t + 10 + HandshakeLoad.DeferHold));
    }

    [Fact]
    public void Authentication_failures_raise_the_load_signal_and_a_calm_rate_does_not()
    {
        var load = new HandshakeLoad();
        // 200 exchanges a second for 10 s: below the limit.
        for (int s = 0; s < 10; s++)
            for (int i = 0; i < 200; i++) load.OnExchange(s * 1_000_000L + i * 5_000);
        Assert.False(load.Raised(10_000_000));
        for (int i = 0; i <= HandshakeLoad.DeferFailureRate; i++) load.OnFailure(10_000_000 + i);
        Assert.True(load.Raised(10_000_100));
    }

    [Fact]
    public void Each_source_prefix_has_its_own_bucket_that_refills_at_the_rate()
    {
        var load = new HandshakeLoad();
        var a = new SourcePrefix(0, 0x7f000002);
        var b = new SourcePrefix(0, 0x7f000003);
        long t = 1_000_000;
        for (int i = 0; i < HandshakeLoad.PrefixBurst; i++) Assert.True(load.TryTake(a, t));
        Assert.False(load.TryTake(a, t));
        Assert.True(load.TryTake(b, t)); // another prefix is not affected
        t += 1_000_000 / HandshakeLoad.PrefixRate; // one token later
        Assert.True(load.TryTake(a, t));
        Assert.False(load.TryTake(a, t));
        load.Prune(t + 1_000_000L * HandshakeLoad.PrefixBurst / HandshakeLoad.PrefixRate);
        for (int i = 0; i < HandshakeLoad.PrefixBurst; i++) Assert.True(load.TryTake(a, t + 5_000_000));
    }

    [Fact]
    public void Ipv6_sources_share_a_prefix_per_64_and_mapped_ipv4_is_ipv4()
    {
        static SourcePrefix Of(string ip) => SourcePrefix.From(new System.Net.IPEndPoint(System.Net.IPAddress.Parse(ip), 1).Serialize());
        Assert.Equal(Of("2001:db8:1:2::1"), Of("2001:db8:1:2:ffff::9"));
        Assert.NotEqual(Of("2001:db8:1:2::1"), Of("2001:db8:1:3::1"));
        Assert.Equal(Of("192.0.2.7"), Of("::ffff:192.0.2.7"));
        Assert.NotEqual(Of("192.0.2.7"), Of("192.0.2.8"));
    }
}
