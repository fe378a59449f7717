using System.Collections;
using System.Net;
using Newtonsoft.Json.Linq;
using PtHost.Configuration;

namespace PtHost.Tests.Unit;

/// <summary>pt-spec v1 §3.2: the environment tor gives a managed proxy (spec/ipc.md §10).</summary>
public class TorEnvironmentTests
{
    private static readonly string[] Known = ["plain", "zephyr"];

    private static Hashtable Client(params (string, string)[] extra)
    {
        var env = new Hashtable
        {
            ["TOR_PT_MANAGED_TRANSPORT_VER"] = "1",
            ["TOR_PT_STATE_LOCATION"] = "/var/lib/tor/pt_state/",
            ["TOR_PT_CLIENT_TRANSPORTS"] = "plain",
        };
        foreach (var (k, v) in extra) env[k] = v;
        return env;
    }

    private static Hashtable Server(params (string, string)[] extra)
    {
        var env = new Hashtable
        {
            ["TOR_PT_MANAGED_TRANSPORT_VER"] = "1",
            ["TOR_PT_STATE_LOCATION"] = "/var/lib/tor/pt_state/",
            ["TOR_PT_SERVER_TRANSPORTS"] = "plain",
            ["TOR_PT_ORPORT"] = "127.0.0.1:9001",
        };
        foreach (var (k, v) in extra) env[k] = v;
        return env;
    }

    private static PtConfig Parse(Hashtable env) => PtConfig.FromTorEnvironment(env, Known, out _);

    [Fact]
    public void Client_environment_as_tor_gives_it()
    {
        var c = PtConfig.FromTorEnvironment(Client(("TOR_PT_EXIT_ON_STDIN_CLOSE", "1"), ("TOR_PT_CLIENT_TRANSPORTS", "plain,obfs4,meek_lite")), Known, out var ignored);
        Assert.Equal(1, c.IpcVersion);
        Assert.Equal(Role.Client, c.Role);
        Assert.Equal(["plain"], c.Transports);
        Assert.Equal(["obfs4", "meek_lite"], ignored);
        Assert.True(c.ExitOnStdinClose);
        Assert.Equal("/var/lib/tor/pt_state/", c.StateDirectory);
        Assert.Equal(new IPEndPoint(IPAddress.Loopback, 0), c.ProxyListenAddresses["plain"]);
    }

    [Theory]
    [InlineData("2")]
    [InlineData("")]
    [InlineData("2,3")]
    public void A_version_list_without_1_is_a_version_error(string versions)
    {
        Assert.Throws<NoVersionException>(() => Parse(Client(("TOR_PT_MANAGED_TRANSPORT_VER", versions))));
    }

    [Fact]
    public void A_version_list_naming_1_among_others_is_accepted() =>
        Assert.Equal(1, Parse(Client(("TOR_PT_MANAGED_TRANSPORT_VER", "3,1"))).IpcVersion);

    [Fact]
    public void A_missing_state_location_is_an_env_error_with_pt_spec_words()
    {
        var env = Client();
        env.Remove("TOR_PT_STATE_LOCATION");
        var e = Assert.Throws<EnvironmentException>(() => Parse(env));
        Assert.Equal("No TOR_PT_STATE_LOCATION environment variable.", e.Message);
    }

    [Theory]
    [InlineData("TOR_PT_STATE_LOCATION", "relative/dir")]
    [InlineData("TOR_PT_EXIT_ON_STDIN_CLOSE", "yes")]
    [InlineData("TOR_PT_OUTBOUND_BIND_ADDRESS_V4", "10.0.0")]
    [InlineData("TOR_PT_OUTBOUND_BIND_ADDRESS_V4", "::1")]
    [InlineData("TOR_PT_OUTBOUND_BIND_ADDRESS_V6", "::1")]
    [InlineData("TOR_PT_OUTBOUND_BIND_ADDRESS_V6", "[10.0.0.1]")]
    public void Malformed_client_variables_are_env_errors_naming_the_variable(string variable, string value)
    {
        var e = Assert.Throws<EnvironmentException>(() => Parse(Client((variable, value))));
        Assert.Contains(variable, e.Message);
    }

    [Fact]
    public void Outbound_bind_addresses_are_read_with_IPv6_in_brackets()
    {
        var c = Parse(Client(("TOR_PT_OUTBOUND_BIND_ADDRESS_V4", "192.0.2.1"), ("TOR_PT_OUTBOUND_BIND_ADDRESS_V6", "[2001:db8::1]")));
        Assert.Equal(IPAddress.Parse("192.0.2.1"), c.OutboundBindV4);
        Assert.Equal(IPAddress.Parse("2001:db8::1"), c.OutboundBindV6);
    }

    [Fact]
    public void The_proxy_is_kept_for_validation_before_start() =>
        Assert.Equal("socks5://u:p@127.0.0.1:1080", Parse(Client(("TOR_PT_PROXY", "socks5://u:p@127.0.0.1:1080"))).UpstreamProxy);

    [Fact]
    public void Neither_or_both_transport_lists_are_env_errors()
    {
        var neither = Client();
        neither.Remove("TOR_PT_CLIENT_TRANSPORTS");
        Assert.Throws<EnvironmentException>(() => Parse(neither));
        Assert.Throws<EnvironmentException>(() => Parse(Client(("TOR_PT_SERVER_TRANSPORTS", "plain"))));
    }

    [Fact]
    public void Star_asks_for_every_transport_this_host_has() =>
        Assert.Equal(Known, Parse(Client(("TOR_PT_CLIENT_TRANSPORTS", "*"))).Transports);

    [Fact]
    public void Server_environment_as_tor_gives_it_with_ExtORPort()
    {
        var c = Parse(Server(
            ("TOR_PT_SERVER_BINDADDR", "plain-127.0.0.1:9100"),
            ("TOR_PT_EXTENDED_SERVER_PORT", "127.0.0.1:4200"),
            ("TOR_PT_AUTH_COOKIE_FILE", "/var/lib/tor/extended_orport_auth_cookie"),
            ("TOR_PT_SERVER_TRANSPORT_OPTIONS", "plain:advertise=192.0.2.1:443")));
        Assert.Equal(Role.Server, c.Role);
        Assert.Equal(new IPEndPoint(IPAddress.Loopback, 9100), c.BindAddresses["plain"]);
        Assert.Equal(new IPEndPoint(IPAddress.Loopback, 4200), c.ExtendedOrPort);
        Assert.Equal("127.0.0.1:4200", c.Target!.ToString());
        Assert.Equal("/var/lib/tor/extended_orport_auth_cookie", c.AuthCookieFile);
        Assert.Equal("192.0.2.1:443", (string)c.Options["plain"]["advertise"]!);
    }

    [Fact]
    public void Without_ExtORPort_the_ORPort_is_the_target()
    {
        var c = Parse(Server(("TOR_PT_EXTENDED_SERVER_PORT", "")));
        Assert.Null(c.ExtendedOrPort);
        Assert.Equal("127.0.0.1:9001", c.Target!.ToString());
        Assert.Equal(new IPEndPoint(IPAddress.Loopback, 0), c.BindAddresses["plain"]);
    }

    [Theory]
    [InlineData("TOR_PT_SERVER_BINDADDR", "plain127.0.0.1:9100")]
    [InlineData("TOR_PT_SERVER_BINDADDR", "plain-localhost:9100")]
    [InlineData("TOR_PT_SERVER_BINDADDR", "plain-127.0.0.1:1,plain-127.0.0.1:2")]
    [InlineData("TOR_PT_ORPORT", "127.0.0.1")]
    [InlineData("TOR_PT_EXTENDED_SERVER_PORT", "127.0.0.1:0")]
    [InlineData("TOR_PT_SERVER_TRANSPORT_OPTIONS", "plain:novalue")]
    [InlineData("TOR_PT_SERVER_TRANSPORT_OPTIONS", "plain:k=1;plain:k=2")]
    [InlineData("TOR_PT_SERVER_TRANSPORT_OPTIONS", "plain:k=v\\")]
    public void Malformed_server_variables_are_env_errors_naming_the_variable(string variable, string value)
    {
        var e = Assert.Throws<EnvironmentException>(() => Parse(Server((variable, value))));
        Assert.Contains(variable, e.Message);
    }

    [Fact]
    public void An_ExtORPort_without_a_cookie_file_is_an_env_error()
    {
        var e = Assert.Throws<EnvironmentException>(() => Parse(Server(("TOR_PT_EXTENDED_SERVER_PORT", "127.0.0.1:4200"))));
        Assert.Contains("TOR_PT_AUTH_COOKIE_FILE", e.Message);
    }

    [Fact]
    public void No_ORPort_at_all_is_an_env_error()
    {
        var env = Server();
        env.Remove("TOR_PT_ORPORT");
        Assert.Throws<EnvironmentException>(() => Parse(env));
    }

    [Fact]
    public void Server_transport_options_follow_pt_spec_escaping()
    {
        // pt-spec §3.2.3's example, and escapes of ':', ';', '=' and '\'.
        var o = PtConfig.ParseServerTransportOptions(@"scramblesuit:key=banana;automata:rule=110;automata:depth=3;plain:a\:b=c\;d\=e\\f;", ["scramblesuit", "automata", "plain"]);
        Assert.Equal("banana", (string)o["scramblesuit"]["key"]!);
        Assert.Equal("110", (string)o["automata"]["rule"]!);
        Assert.Equal("3", (string)o["automata"]["depth"]!);
        Assert.Equal(@"c;d=e\f", (string)o["plain"]["a:b"]!);
    }

    [Fact]
    public void Options_of_transports_not_run_are_ignored()
    {
        var o = PtConfig.ParseServerTransportOptions("obfs4:iat-mode=1;plain:x=y", ["plain"]);
        Assert.Equal(["plain"], o.Keys);
        Assert.IsType<JObject>(o["plain"]);
    }
}
