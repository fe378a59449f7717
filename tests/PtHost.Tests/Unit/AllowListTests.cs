using System.Net;
using PtHost.Net;

namespace PtHost.Tests.Unit;

public class AllowListTests
{
    private static bool Allows(string entry, string address, int port) =>
        AllowList.Parse([entry]).Allows(IPAddress.Parse(address), port);

    [Fact]
    public void Empty_list_allows_nothing()
    {
        var list = AllowList.Parse([]);
        Assert.Equal(0, list.Count);
        Assert.False(list.Allows(IPAddress.Loopback, 80));
        Assert.False(list.Allows(IPAddress.IPv6Loopback, 80));
        Assert.False(list.Allows(IPAddress.Any, 0));
    }

    [Theory]
    [InlineData("192.0.2.1", "192.0.2.1", 1, true)]
    [InlineData("192.0.2.1", "192.0.2.1", 65535, true)]
    [InlineData("192.0.2.1", "192.0.2.2", 80, false)]
    [InlineData("192.0.2.1", "::ffff:192.0.2.1", 80, true)]
    [InlineData("192.0.2.1", "::192.0.2.1", 80, false)]
    public void Single_IPv4_address_allows_that_address_on_any_port(string entry, string address, int port, bool allowed) =>
        Assert.Equal(allowed, Allows(entry, address, port));

    [Theory]
    [InlineData("10.0.0.0/8", "10.0.0.0", true)]
    [InlineData("10.0.0.0/8", "10.255.255.255", true)]
    [InlineData("10.0.0.0/8", "11.0.0.0", false)]
    [InlineData("10.0.0.0/8", "9.255.255.255", false)]
    [InlineData("192.168.4.0/22", "192.168.7.255", true)]
    [InlineData("192.168.4.0/22", "192.168.8.0", false)]
    [InlineData("192.168.4.0/22", "192.168.3.255", false)]
    [InlineData("192.0.2.128/25", "192.0.2.200", true)]
    [InlineData("192.0.2.128/25", "192.0.2.127", false)]
    [InlineData("192.0.2.7/32", "192.0.2.7", true)]
    [InlineData("192.0.2.7/32", "192.0.2.6", false)]
    [InlineData("192.0.2.7/31", "192.0.2.6", true)]
    [InlineData("0.0.0.0/0", "203.0.113.9", true)]
    [InlineData("0.0.0.0/0", "::1", false)]
    [InlineData("10.1.2.3/8", "10.9.9.9", true)] // host bits in the entry are ignored
    [InlineData("10.0.0.0/8", "::ffff:10.1.2.3", true)]
    public void IPv4_CIDR_allows_addresses_within_the_prefix(string entry, string address, bool allowed) =>
        Assert.Equal(allowed, Allows(entry, address, 443));

    [Theory]
    [InlineData("192.0.2.1:443", "192.0.2.1", 443, true)]
    [InlineData("192.0.2.1:443", "192.0.2.1", 80, false)]
    [InlineData("192.0.2.1:443", "192.0.2.2", 443, false)]
    [InlineData("10.0.0.0/8:22", "10.3.3.3", 22, true)]
    [InlineData("10.0.0.0/8:22", "10.3.3.3", 23, false)]
    [InlineData("192.0.2.1:65535", "192.0.2.1", 65535, true)]
    [InlineData("192.0.2.1:1", "192.0.2.1", 1, true)]
    public void Entry_with_port_allows_only_that_port(string entry, string address, int port, bool allowed) =>
        Assert.Equal(allowed, Allows(entry, address, port));

    [Theory]
    [InlineData("::1", "::1", 80, true)]
    [InlineData("::1", "::2", 80, false)]
    [InlineData("2001:db8::/32", "2001:db8:ffff::1", 80, true)]
    [InlineData("2001:db8::/32", "2001:db9::1", 80, false)]
    [InlineData("2001:db8::/33", "2001:db8:7fff::1", 80, true)]
    [InlineData("2001:db8::/33", "2001:db8:8000::1", 80, false)]
    [InlineData("::/0", "2001:db8::1", 80, true)]
    [InlineData("::/0", "192.0.2.1", 80, false)]
    [InlineData("2001:db8::1/128", "2001:db8::1", 80, true)]
    [InlineData("[2001:db8::1]", "2001:db8::1", 80, true)]
    [InlineData("[2001:db8::1]:443", "2001:db8::1", 443, true)]
    [InlineData("[2001:db8::1]:443", "2001:db8::1", 444, false)]
    [InlineData("[2001:db8::/32]:443", "2001:db8:1::1", 443, true)]
    [InlineData("[2001:db8::/32]:443", "2001:db8:1::1", 80, false)]
    [InlineData("[2001:db8::/32]:443", "2001:db9::1", 443, false)]
    [InlineData("[::1]:8080", "::1", 8080, true)]
    public void IPv6_entries_use_brackets_for_ports(string entry, string address, int port, bool allowed) =>
        Assert.Equal(allowed, Allows(entry, address, port));

    [Theory]
    [InlineData("::ffff:192.0.2.1", "192.0.2.1", true)]
    [InlineData("::ffff:192.0.2.1", "::ffff:192.0.2.1", true)]
    [InlineData("[::ffff:192.0.2.1]:443", "192.0.2.1", true)]
    [InlineData("::ffff:192.0.2.1", "192.0.2.2", false)]
    [InlineData("192.0.2.1", "::ffff:192.0.2.1", true)]
    public void IPv4_mapped_IPv6_addresses_compare_as_IPv4(string entry, string address, bool allowed) =>
        Assert.Equal(allowed, Allows(entry, address, 443));

    [Fact]
    public void Any_matching_entry_allows()
    {
        var list = AllowList.Parse(["192.0.2.1:80", "10.0.0.0/8", "[2001:db8::/32]:443"]);
        Assert.Equal(3, list.Count);
        Assert.True(list.Allows(IPAddress.Parse("192.0.2.1"), 80));
        Assert.False(list.Allows(IPAddress.Parse("192.0.2.1"), 81));
        Assert.True(list.Allows(IPAddress.Parse("10.20.30.40"), 81));
        Assert.True(list.Allows(IPAddress.Parse("2001:db8::5"), 443));
        Assert.False(list.Allows(IPAddress.Parse("2001:db8::5"), 80));
        Assert.False(list.Allows(IPAddress.Parse("172.16.0.1"), 80));
    }

    [Theory]
    [InlineData("")]
    [InlineData("example.org")]
    [InlineData("example.org:443")]
    [InlineData("1")]              // IPAddress.TryParse would read 0.0.0.1
    [InlineData("4294967295")]     // …or 255.255.255.255
    [InlineData("256.0.0.1")]
    [InlineData("1.2.3.4:")]
    [InlineData("1.2.3.4:0")]
    [InlineData("1.2.3.4:65536")]
    [InlineData("1.2.3.4:-1")]
    [InlineData("1.2.3.4:+80")]
    [InlineData("1.2.3.4: 80")]
    [InlineData("1.2.3.4:http")]
    [InlineData("1.2.3.4/")]
    [InlineData("1.2.3.4/33")]
    [InlineData("1.2.3.4/-1")]
    [InlineData("1.2.3.4/+8")]
    [InlineData("1.2.3.4/8/8")]
    [InlineData("1.2.3.4/x")]
    [InlineData("::1/129")]
    [InlineData("[::1")]
    [InlineData("[::1]:")]
    [InlineData("[::1]80")]
    [InlineData("[::1]/64")]
    [InlineData("[::1]:0")]
    [InlineData("[::1]:99999")]
    [InlineData("[]")]
    [InlineData("[example.org]:80")]
    [InlineData("2001:db8::1:443:x")]
    [InlineData("::ffff:1.2.3.4/33")]
    public void Malformed_entry_throws_FormatException(string entry) =>
        Assert.Throws<FormatException>(() => AllowList.Parse([entry]));

    [Fact]
    public void Malformed_entry_anywhere_in_the_list_throws_and_names_it()
    {
        var e = Assert.Throws<FormatException>(() => AllowList.Parse(["10.0.0.0/8", "nonsense:1"]));
        Assert.Contains("nonsense:1", e.Message);
    }

    // ---- the free server's rule (spec/ipc.md §3.4): special-purpose ranges need an entry inside them ----

    [Theory]
    [InlineData("127.0.0.1")]
    [InlineData("127.255.0.1")]
    [InlineData("0.0.0.0")]
    [InlineData("::ffff:127.0.0.1")]
    [InlineData("::ffff:0:127.0.0.1")]   // IPv4-translated
    [InlineData("::127.0.0.1")]          // IPv4-compatible
    [InlineData("::1")]
    [InlineData("::")]
    [InlineData("169.254.169.254")]      // cloud metadata
    [InlineData("10.1.2.3")]
    [InlineData("172.20.0.1")]
    [InlineData("192.168.1.1")]
    [InlineData("100.64.0.1")]
    [InlineData("192.0.0.170")]
    [InlineData("198.18.0.1")]
    [InlineData("224.0.0.1")]
    [InlineData("255.255.255.255")]
    [InlineData("64:ff9b::7f00:1")]      // NAT64 of 127.0.0.1
    [InlineData("64:ff9b:1::a00:1")]     // local-use NAT64
    [InlineData("fd00::1")]
    [InlineData("fe80::1")]
    [InlineData("fec0::1")]
    [InlineData("ff02::1")]
    public void A_catch_all_never_reaches_a_special_purpose_address(string address)
    {
        foreach (var list in new[] { ["0.0.0.0/0"], ["::/0", "0.0.0.0/0"], ["0.0.0.0/0:80", "[::/0]:80"], new[] { "0.0.0.0/1", "128.0.0.0/1", "::/1", "8000::/1" } })
            Assert.NotNull(AllowList.Parse(list).Refuse(IPAddress.Parse(address), 80));
    }

    [Theory]
    [InlineData("203.0.113.9")]
    [InlineData("8.8.8.8")]
    [InlineData("::ffff:8.8.8.8")]
    [InlineData("172.32.0.1")]
    [InlineData("2001:4860::8888")]
    [InlineData("2002:7f00:1::1")]       // 6to4: public (spec/ipc.md §3.4)
    public void A_catch_all_reaches_public_addresses(string address) =>
        Assert.Null(AllowList.Parse(["0.0.0.0/0", "::/0"]).Refuse(IPAddress.Parse(address), 443));

    [Theory]
    [InlineData("127.0.0.1", "127.0.0.1", true)]
    [InlineData("127.0.0.1", "::ffff:127.0.0.1", true)]
    [InlineData("127.0.0.1", "127.0.0.2", false)]
    [InlineData("127.0.0.0/8", "127.9.9.9", true)]
    [InlineData("::1", "::1", true)]
    [InlineData("169.254.169.254:80", "169.254.169.254", true)]
    [InlineData("169.254.0.0/16:443", "169.254.169.254", false)]
    [InlineData("10.0.0.0/8", "10.1.1.1", true)]
    [InlineData("10.0.0.0/7", "10.1.1.1", false)]       // wider than the range: does not open it
    [InlineData("64:ff9b::/96", "64:ff9b::a00:1", true)]
    public void An_entry_inside_the_range_opens_it(string entry, string address, bool admitted) =>
        Assert.Equal(admitted, AllowList.Parse([entry, "0.0.0.0/0", "::/0"]).Refuse(IPAddress.Parse(address), 80) is null);

    [Fact]
    public void The_refusal_says_which_range_and_the_catch_alls_are_listed()
    {
        var list = AllowList.Parse(["0.0.0.0/0", "192.0.2.1", "[::/0]:443"]);
        Assert.Equal(["0.0.0.0/0", "[::/0]:443"], list.CatchAlls);
        Assert.Contains("loopback", list.Refuse(IPAddress.Loopback, 80));
        Assert.Contains("link-local", list.Refuse(IPAddress.Parse("169.254.169.254"), 80));
        Assert.Contains("not in the allow list", AllowList.Parse(["192.0.2.1"]).Refuse(IPAddress.Parse("192.0.2.2"), 80));
        Assert.Empty(AllowList.Parse(["127.0.0.1", "10.0.0.0/8"]).CatchAlls);
    }
}
