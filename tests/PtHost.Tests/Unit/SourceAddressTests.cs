using System.Net;
using PtHost.Net;

namespace PtHost.Tests.Unit;

/// <summary>The per-source key of the relays' limits (spec/zephyr.md §4.6): IPv4 per address, IPv6 per prefix.</summary>
public class SourceAddressTests
{
    [Theory]
    [InlineData("2001:db8:1:2:3:4:5:6", 64, "2001:db8:1:2::")]
    [InlineData("2001:db8:1:2:ffff:ffff:ffff:ffff", 64, "2001:db8:1:2::")]
    [InlineData("2001:db8:1:2ff::1", 56, "2001:db8:1:200::")]
    [InlineData("2001:db8:1:2ff::1", 60, "2001:db8:1:2f0::")]
    [InlineData("2001:db8:1:2:3:4:5:6", 128, "2001:db8:1:2:3:4:5:6")]
    [InlineData("2001:db8:1:2:3:4:5:6", 127, "2001:db8:1:2:3:4:5:6")]
    [InlineData("2001:db8:1:2:3:4:5:7", 127, "2001:db8:1:2:3:4:5:6")]
    [InlineData("ffff::1", 1, "8000::")]
    [InlineData("7fff::1", 1, "::")]
    [InlineData("::1", 64, "::")]
    public void IPv6_sources_count_per_network_of_the_prefix(string address, int prefix, string key) =>
        Assert.Equal(IPAddress.Parse(key), SourceAddress.Key(IPAddress.Parse(address), prefix));

    [Theory]
    [InlineData("192.0.2.7", "192.0.2.7")]
    [InlineData("::ffff:192.0.2.7", "192.0.2.7")]
    public void IPv4_and_IPv4_mapped_sources_count_per_address(string address, string key)
    {
        foreach (int prefix in new[] { 1, 64, 128 })
            Assert.Equal(IPAddress.Parse(key), SourceAddress.Key(IPAddress.Parse(address), prefix));
    }

    [Fact]
    public void Two_addresses_of_one_64_share_a_key_and_the_next_64_does_not()
    {
        var a = SourceAddress.Key(IPAddress.Parse("2001:db8::1"));
        Assert.Equal(a, SourceAddress.Key(IPAddress.Parse("2001:db8::ffff:1")));
        Assert.NotEqual(a, SourceAddress.Key(IPAddress.Parse("2001:db8:0:1::1")));
        Assert.Equal(a, SourceAddress.Key(IPAddress.Parse("2001:db8::1%3"))); // the scope id plays no part
    }

    [Theory]
    [InlineData(0)]
    [InlineData(129)]
    public void A_prefix_outside_1_to_128_is_refused(int prefix) =>
        Assert.Throws<ArgumentOutOfRangeException>(() => SourceAddress.Key(IPAddress.IPv6Loopback, prefix));
}
