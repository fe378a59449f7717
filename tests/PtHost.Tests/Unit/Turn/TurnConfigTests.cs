using System.Net;
using PtHost.Configuration;

namespace PtHost.Tests.Unit.Turn;

/// <summary>The top-level <c>turn</c> key (spec/turn.md §2).</summary>
public class TurnConfigTests
{
    private const string Client = "'role':'client','transports':['plain']";

    private static PtConfig Parse(string json) => PtConfig.Parse(json.Replace('\'', '"'));

    [Fact]
    public void Turn_key_gives_listen_address_realm_and_users()
    {
        var c = Parse("{" + Client + ",'turn':{'listenaddr':'127.0.0.1:3478','realm':'example.org','users':{'test':'secret','b':'pw'}}}");
        Assert.NotNull(c.Turn);
        Assert.Equal(new IPEndPoint(IPAddress.Loopback, 3478), c.Turn.ListenAddress);
        Assert.Equal("example.org", c.Turn.Realm);
        Assert.Equal("secret", c.Turn.Users["test"]);
        Assert.Equal(2, c.Turn.Users.Count);
    }

    [Fact]
    public void Listen_address_defaults_to_loopback_port_0_and_no_key_means_no_turn()
    {
        Assert.Equal(new IPEndPoint(IPAddress.Loopback, 0), Parse("{" + Client + ",'turn':{'realm':'r','users':{'u':'p'}}}").Turn!.ListenAddress);
        Assert.Null(Parse("{" + Client + "}").Turn);
    }

    [Theory]
    [InlineData("'turn':[]", "turn")]
    [InlineData("'turn':{'realm':'r','users':{'u':'p'},'port':1}", "turn.port")]
    [InlineData("'turn':{'users':{'u':'p'}}", "turn.realm")]
    [InlineData("'turn':{'realm':'','users':{'u':'p'}}", "turn.realm")]
    [InlineData("'turn':{'realm':'r'}", "turn.users")]
    [InlineData("'turn':{'realm':'r','users':{}}", "turn.users")]
    [InlineData("'turn':{'realm':'r','users':{'u':''}}", "turn.users.u")]
    [InlineData("'turn':{'realm':'r','users':{'u':1}}", "turn.users.u")]
    [InlineData("'turn':{'realm':'r','users':{'a:b':'p'}}", "turn.users[\"a:b\"]")]
    [InlineData("'turn':{'realm':'r','users':{'u':'p'},'listenaddr':'localhost:1'}", "turn.listenaddr")]
    [InlineData("'turn':{'realm':'r','users':{'u':'p'},'listenaddr':3478}", "turn.listenaddr")]
    public void Malformed_turn_key_is_refused_naming_its_path(string turn, string key) =>
        Assert.Equal(key, Assert.Throws<ConfigException>(() => Parse("{" + Client + "," + turn + "}")).Key);

    [Fact]
    public void Fixed_turn_port_with_two_transports_is_refused_and_port_0_is_not()
    {
        const string two = "'role':'client','transports':['plain','zephyr']";
        Assert.Equal("turn.listenaddr", Assert.Throws<ConfigException>(() => Parse("{" + two + ",'turn':{'listenaddr':'127.0.0.1:3478','realm':'r','users':{'u':'p'}}}")).Key);
        Assert.NotNull(Parse("{" + two + ",'turn':{'listenaddr':'127.0.0.1:0','realm':'r','users':{'u':'p'}}}").Turn);
    }

    [Fact]
    public void Turn_key_applies_to_clients_only() =>
        Assert.Equal("turn", Assert.Throws<ConfigException>(() =>
            Parse("{'role':'server','transports':['plain'],'target':'127.0.0.1:1','turn':{'realm':'r','users':{'u':'p'}}}")).Key);
}
