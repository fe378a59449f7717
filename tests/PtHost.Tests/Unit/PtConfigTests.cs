using System.Net;
using Microsoft.Extensions.Logging;
using Newtonsoft.Json.Linq;
using PtHost.Configuration;
using PtHost.Contract;

namespace PtHost.Tests.Unit;

public class PtConfigTests
{
    /// <summary>Parses JSON written with single quotes for readability.</summary>
    private static PtConfig Parse(string json) => PtConfig.Parse(json.Replace('\'', '"'));

    private static ConfigException Refused(string json) => Assert.Throws<ConfigException>(() => Parse(json));

    private const string Client = "'role':'client','transports':['plain']";
    private const string BoundServer = "'role':'server','transports':['plain'],'target':'127.0.0.1:9000'";
    private const string FreeServer = "'role':'server','transports':['plain'],'allow':['10.0.0.0/8']";

    [Fact]
    public void Minimal_client_gets_the_defaults()
    {
        var c = Parse("{" + Client + "}");
        Assert.Equal(Role.Client, c.Role);
        Assert.Equal("2", c.PtVersion);
        Assert.Equal(["plain"], c.Transports);
        Assert.Equal(new IPEndPoint(IPAddress.Loopback, 0), Assert.Single(c.ProxyListenAddresses, kv => kv.Key == "plain").Value);
        Assert.Empty(c.BindAddresses);
        Assert.Null(c.Target);
        Assert.Null(c.Allow);
        Assert.Empty(c.Options);
        Assert.Null(c.PluginDirectory);
        Assert.Equal(Path.GetFullPath(Directory.GetCurrentDirectory()), c.StateDirectory);
        Assert.False(c.ExitOnStdinClose);
        Assert.Equal(LogLevel.Information, c.LogLevel);
    }

    [Fact]
    public void Minimal_bound_server_gets_the_defaults()
    {
        var c = Parse("{" + BoundServer + "}");
        Assert.Equal(Role.Server, c.Role);
        Assert.Equal("127.0.0.1:9000", c.Target!.ToString());
        Assert.Null(c.Allow);
        Assert.Empty(c.ProxyListenAddresses);
        Assert.Equal(new IPEndPoint(IPAddress.Loopback, 0), c.BindAddresses["plain"]);
    }

    [Fact]
    public void Free_server_with_allow_list_is_accepted()
    {
        var c = Parse("{" + FreeServer + "}");
        Assert.Null(c.Target);
        Assert.Equal(1, c.Allow!.Count);
        Assert.True(c.Allow.Allows(IPAddress.Parse("10.1.1.1"), 80));
    }

    [Fact]
    public void Free_server_with_empty_allow_list_is_accepted_and_allows_nothing()
    {
        var c = Parse("{'role':'server','transports':['plain'],'allow':[]}");
        Assert.Equal(0, c.Allow!.Count);
        Assert.False(c.Allow.Allows(IPAddress.Loopback, 80));
    }

    [Fact]
    public void Free_server_without_allow_is_refused_naming_allow()
    {
        var e = Refused("{'role':'server','transports':['plain']}");
        Assert.Equal("allow", e.Key);
        Assert.Contains("free server", e.Message);
    }

    [Fact]
    public void Bound_server_with_allow_is_refused_naming_allow()
    {
        var e = Refused("{" + BoundServer + ",'allow':['10.0.0.0/8']}");
        Assert.Equal("allow", e.Key);
    }

    [Theory]
    [InlineData("")]
    [InlineData("not json")]
    [InlineData("{")]
    [InlineData("[]")]
    [InlineData("'client'")]
    [InlineData("null")]
    [InlineData("{'role':'client','transports':['plain']} {}")]
    [InlineData("{'role':'client','transports':['plain']} x")]
    public void Document_that_is_not_one_JSON_object_is_refused(string json) =>
        Assert.Equal("(document)", Refused(json).Key);

    [Theory]
    [InlineData("bogus", "bogus")]
    [InlineData("Role", "Role")]
    [InlineData("proxy-listen-addr", "proxy-listen-addr")]
    [InlineData("", "[\"\"]")]
    [InlineData("a.b", "[\"a.b\"]")]
    public void Unknown_key_is_refused_naming_the_key(string key, string path)
    {
        var e = Refused("{" + Client + ",'" + key + "':1}");
        Assert.Equal(path, e.Key);
        Assert.Contains("unknown key", e.Message);
        Assert.Contains("ptversion", e.Message);
    }

    [Fact]
    public void Unknown_key_is_reported_before_other_problems()
    {
        Assert.Equal("zzz", Refused("{'zzz':1}").Key);
    }

    [Fact]
    public void ConfigException_message_names_the_key()
    {
        var e = new ConfigException("state", "broken");
        Assert.Equal("state", e.Key);
        Assert.Equal("config key 'state': broken", e.Message);
    }

    [Theory]
    [InlineData("{'transports':['plain']}")]
    [InlineData("{'role':'Client','transports':['plain']}")]
    [InlineData("{'role':'both','transports':['plain']}")]
    [InlineData("{'role':1,'transports':['plain']}")]
    [InlineData("{'role':null,'transports':['plain']}")]
    public void Role_must_be_client_or_server(string json) => Assert.Equal("role", Refused(json).Key);

    [Theory]
    [InlineData("{'role':'client'}")]
    [InlineData("{'role':'client','transports':'plain'}")]
    [InlineData("{'role':'client','transports':[]}")]
    [InlineData("{'role':'client','transports':[1]}")]
    [InlineData("{'role':'client','transports':[null]}")]
    [InlineData("{'role':'client','transports':['']}")]
    [InlineData("{'role':'client','transports':['a-b']}")]
    [InlineData("{'role':'client','transports':['a b']}")]
    [InlineData("{'role':'client','transports':['obfs4','plain','obfs4']}")]
    [InlineData("{'role':'client','transports':['pläin']}")]
    public void Transports_must_be_a_non_empty_list_of_distinct_names(string json) =>
        Assert.Matches(@"^transports(\[\d+\])?$", Refused(json).Key);

    [Fact]
    public void A_bad_transport_name_is_named_by_its_index()
    {
        var e = Refused("{'role':'client','transports':['plain','a-b']}");
        Assert.Equal("transports[1]", e.Key);
        Assert.Equal("config key 'transports[1]': is not a transport name ([A-Za-z0-9_]{1,64}), not \"a-b\"", e.Message);
        Assert.Equal("transports[2]", Refused("{'role':'client','transports':['obfs4','plain','obfs4']}").Key);
    }

    [Fact]
    public void Transport_names_are_1_to_64_ASCII_letters_digits_or_underscores()
    {
        Assert.True(PtConfig.IsTransportName("obfs4"));
        Assert.True(PtConfig.IsTransportName("Web_Tunnel_2"));
        Assert.True(PtConfig.IsTransportName(new string('a', 64)));
        Assert.False(PtConfig.IsTransportName(new string('a', 65)));
        Assert.False(PtConfig.IsTransportName(""));
        Assert.False(PtConfig.IsTransportName("a.b"));
        Assert.False(PtConfig.IsTransportName("ａ")); // full-width letter
        Assert.Equal(2, Parse("{'role':'client','transports':['" + new string('a', 64) + "','b']}").Transports.Count);
        Assert.Equal("transports[0]", Refused("{'role':'client','transports':['" + new string('a', 65) + "']}").Key);
    }

    [Fact]
    public void Transports_keep_their_order()
    {
        var c = Parse("{'role':'client','transports':['zeta','alpha','mid']}");
        Assert.Equal(["zeta", "alpha", "mid"], c.Transports);
    }

    [Fact]
    public void Options_are_kept_per_transport()
    {
        var c = Parse("{'role':'client','transports':['a','b'],'options':{'a':{'k':1},'b':'text'}}");
        Assert.Equal(1, (int)c.Options["a"]["k"]!);
        Assert.Equal("text", (string)c.Options["b"]!);
        Assert.Equal(2, c.Options.Count);
    }

    [Theory]
    [InlineData("'options':[]", "options")]
    [InlineData("'options':'x'", "options")]
    [InlineData("'options':{'other':{}}", "options.other")]
    public void Options_must_be_an_object_of_listed_transports(string fragment, string key) =>
        Assert.Equal(key, Refused("{" + Client + "," + fragment + "}").Key);

    [Theory]
    [InlineData("error", LogLevel.Error)]
    [InlineData("warning", LogLevel.Warning)]
    [InlineData("notice", LogLevel.Information)]
    [InlineData("info", LogLevel.Information)]
    [InlineData("debug", LogLevel.Debug)]
    [InlineData("trace", LogLevel.Trace)]
    [InlineData("none", LogLevel.None)]
    public void Loglevel_maps_to_LogLevel(string text, LogLevel level) =>
        Assert.Equal(level, Parse("{" + Client + ",'loglevel':'" + text + "'}").LogLevel);

    [Theory]
    [InlineData("'loglevel':'warn'")]
    [InlineData("'loglevel':'INFO'")]
    [InlineData("'loglevel':''")]
    [InlineData("'loglevel':2")]
    public void Loglevel_other_than_the_listed_names_is_refused(string fragment) =>
        Assert.Equal("loglevel", Refused("{" + Client + "," + fragment + "}").Key);

    [Fact]
    public void Unsafe_logging_is_off_unless_set_true()
    {
        Assert.False(Parse("{" + Client + "}").UnsafeLogging);
        Assert.True(Parse("{" + Client + ",'unsafe-logging':true}").UnsafeLogging);
        Assert.False(Parse("{" + Client + ",'unsafe-logging':false}").UnsafeLogging);
        Assert.Equal("unsafe-logging", Refused("{" + Client + ",'unsafe-logging':'yes'}").Key);
    }

    [Theory]
    [InlineData("true", true)]
    [InlineData("false", false)]
    public void Exit_on_stdin_close_is_a_boolean(string value, bool expected) =>
        Assert.Equal(expected, Parse("{" + Client + ",'exit-on-stdin-close':" + value + "}").ExitOnStdinClose);

    [Theory]
    [InlineData("'true'")]
    [InlineData("1")]
    [InlineData("null")]
    public void Exit_on_stdin_close_other_than_a_boolean_is_refused(string value) =>
        Assert.Equal("exit-on-stdin-close", Refused("{" + Client + ",'exit-on-stdin-close':" + value + "}").Key);

    [Theory]
    [InlineData("'2'", "2")]
    [InlineData("'2.1'", "2.1")]
    [InlineData("'3'", "3")] // support is checked by the launcher (IsSupportedVersion), not by the parser
    public void Ptversion_is_a_string(string value, string expected) =>
        Assert.Equal(expected, Parse("{" + Client + ",'ptversion':" + value + "}").PtVersion);

    [Theory]
    [InlineData("2")]
    [InlineData("2.0")]
    [InlineData("null")]
    public void Ptversion_other_than_a_string_is_refused(string value) =>
        Assert.Equal("ptversion", Refused("{" + Client + ",'ptversion':" + value + "}").Key);

    [Theory]
    [InlineData("2", true)]
    [InlineData("2.0", true)]
    [InlineData("2.1", true)]
    [InlineData("1", false)]
    [InlineData("3.0", false)]
    [InlineData("2.2", false)]
    [InlineData("", false)]
    public void Supported_versions_are_2_and_2_0_and_2_1(string v, bool supported) =>
        Assert.Equal(supported, PtConfig.IsSupportedVersion(v));

    [Fact]
    public void State_is_made_absolute()
    {
        var c = Parse("{" + Client + ",'state':'some/relative/dir'}");
        Assert.Equal(Path.GetFullPath("some/relative/dir"), c.StateDirectory);
        Assert.True(Path.IsPathRooted(c.StateDirectory));
    }

    [Fact]
    public void State_other_than_a_string_is_refused() =>
        Assert.Equal("state", Refused("{" + Client + ",'state':{}}").Key);

    [Fact]
    public void Plugindir_must_be_an_existing_directory()
    {
        string dir = Directory.CreateTempSubdirectory("pthost-unit-").FullName;
        try
        {
            Assert.Equal(dir, PtConfig.FromObject(JObject.Parse("{\"role\":\"client\",\"transports\":[\"plain\"]}").Also(o => o["plugindir"] = dir)).PluginDirectory);
            string missing = Path.Combine(dir, "missing");
            var e = Assert.Throws<ConfigException>(() => PtConfig.FromObject(JObject.Parse("{\"role\":\"client\",\"transports\":[\"plain\"]}").Also(o => o["plugindir"] = missing)));
            Assert.Equal("plugindir", e.Key);
            Assert.Contains(missing, e.Message);
            Assert.Equal("plugindir", Refused("{" + Client + ",'plugindir':5}").Key);
        }
        finally { Directory.Delete(dir, true); }
    }

    [Theory]
    [InlineData("'bindaddr':{'plain':'127.0.0.1:1'}", "bindaddr")]
    [InlineData("'allow':['10.0.0.0/8']", "allow")]
    [InlineData("'allow':[]", "allow")]
    public void Server_only_keys_are_refused_for_a_client(string fragment, string key)
    {
        var e = Refused("{" + Client + "," + fragment + "}");
        Assert.Equal(key, e.Key);
        Assert.Contains("role \"server\" only", e.Message);
    }

    /// <summary>spec/ipc.md §3.2, §12.2: a client takes <c>target</c> (its PT server) only in a transparent mode.</summary>
    [Theory]
    [InlineData("'target':'127.0.0.1:1'", "a client takes a \"target\" only in a transparent mode")]
    [InlineData("'target':null", "")]
    [InlineData("'mode':'transparent-tcp','target':'127.0.0.1:0'", "non-zero port")]
    [InlineData("'mode':'sideways'", "is not one of socks5, transparent-tcp, transparent-udp, stun")]
    [InlineData("'mode':'stun','turn':{'listenaddr':'127.0.0.1:0','realm':'r','users':{'u':'p'}}", "needs \"mode\": \"socks5\"")]
    public void A_client_s_target_and_mode_are_checked(string fragment, string problem)
    {
        var e = Refused("{" + Client + "," + fragment + "}");
        Assert.Contains(e.Key, new[] { "target", "mode", "turn" });
        Assert.Contains(problem, e.Message);
    }

    [Theory]
    [InlineData("transparent-tcp", ClientMode.TransparentTcp)]
    [InlineData("transparent-udp", ClientMode.TransparentUdp)]
    [InlineData("stun", ClientMode.Stun)]
    [InlineData("socks5", ClientMode.Socks5)]
    public void A_transparent_client_takes_its_server_as_target(string mode, ClientMode expected)
    {
        string target = mode == "socks5" ? "" : ",'target':'192.0.2.1:443'";
        var config = Parse("{" + Client + ",'mode':'" + mode + "'" + target + "}");
        Assert.Equal(expected, config.Mode);
        Assert.Equal(mode == "socks5" ? null : "192.0.2.1:443", config.Target?.ToString());
        Assert.Equal("mode", Refused("{" + BoundServer + ",'mode':'" + (mode == "socks5" ? "stun" : mode) + "'}").Key);
    }

    [Theory]
    [InlineData("'proxylistenaddr':'127.0.0.1:0'")]
    [InlineData("'proxylistenaddr':{'plain':'127.0.0.1:1080'}")]
    public void Client_only_keys_are_refused_for_a_server(string fragment)
    {
        var e = Refused("{" + BoundServer + "," + fragment + "}");
        Assert.Equal("proxylistenaddr", e.Key);
        Assert.Contains("role \"client\" only", e.Message);
    }

    [Fact]
    public void Proxylistenaddr_string_is_shared_by_all_transports_when_the_port_is_0()
    {
        var c = Parse("{'role':'client','transports':['a','b'],'proxylistenaddr':'0.0.0.0:0','public-frontends':true}");
        Assert.Equal(new IPEndPoint(IPAddress.Any, 0), c.ProxyListenAddresses["a"]);
        Assert.Equal(new IPEndPoint(IPAddress.Any, 0), c.ProxyListenAddresses["b"]);
    }

    [Fact]
    public void Proxylistenaddr_string_with_fixed_port_serves_one_transport()
    {
        var c = Parse("{" + Client + ",'proxylistenaddr':'[::1]:1080'}");
        Assert.Equal(new IPEndPoint(IPAddress.IPv6Loopback, 1080), c.ProxyListenAddresses["plain"]);
    }

    [Fact]
    public void Proxylistenaddr_string_with_fixed_port_and_two_transports_is_refused()
    {
        var e = Refused("{'role':'client','transports':['a','b'],'proxylistenaddr':'127.0.0.1:1080'}");
        Assert.Equal("proxylistenaddr", e.Key);
        Assert.Contains("one transport", e.Message);
    }

    [Fact]
    public void Proxylistenaddr_object_gives_each_transport_its_address_and_defaults_the_rest()
    {
        var c = Parse("{'role':'client','transports':['a','b','c'],'proxylistenaddr':{'a':'127.0.0.1:1080','b':'[::1]:1081'}}");
        Assert.Equal(new IPEndPoint(IPAddress.Loopback, 1080), c.ProxyListenAddresses["a"]);
        Assert.Equal(new IPEndPoint(IPAddress.IPv6Loopback, 1081), c.ProxyListenAddresses["b"]);
        Assert.Equal(new IPEndPoint(IPAddress.Loopback, 0), c.ProxyListenAddresses["c"]);
        Assert.Equal(3, c.ProxyListenAddresses.Count);
    }

    [Theory]
    [InlineData("'proxylistenaddr':{'other':'127.0.0.1:1'}")]
    [InlineData("'proxylistenaddr':{'plain':1080}")]
    [InlineData("'proxylistenaddr':{'plain':'localhost:1080'}")]
    [InlineData("'proxylistenaddr':1080")]
    [InlineData("'proxylistenaddr':['127.0.0.1:1']")]
    [InlineData("'proxylistenaddr':null")]
    [InlineData("'proxylistenaddr':'localhost:1080'")]
    [InlineData("'proxylistenaddr':'127.0.0.1'")]
    [InlineData("'proxylistenaddr':'::1:1080'")]
    [InlineData("'proxylistenaddr':'127.0.0.1:65536'")]
    public void Proxylistenaddr_must_be_ip_port_or_object_of_listed_transports(string fragment) =>
        Assert.Matches(@"^proxylistenaddr(\.\w+)?$", Refused("{" + Client + "," + fragment + "}").Key);

    [Fact]
    public void Bindaddr_object_gives_each_transport_its_address_and_defaults_the_rest()
    {
        var c = Parse("{'role':'server','transports':['a','b'],'target':'example.org:443','bindaddr':{'a':'0.0.0.0:443'}}");
        Assert.Equal(new IPEndPoint(IPAddress.Any, 443), c.BindAddresses["a"]);
        Assert.Equal(new IPEndPoint(IPAddress.Loopback, 0), c.BindAddresses["b"]);
    }

    [Theory]
    [InlineData("'bindaddr':'0.0.0.0:443'")]
    [InlineData("'bindaddr':{'other':'0.0.0.0:443'}")]
    [InlineData("'bindaddr':{'plain':443}")]
    [InlineData("'bindaddr':{'plain':'example.org:443'}")]
    [InlineData("'bindaddr':{'plain':'0.0.0.0'}")]
    public void Bindaddr_must_be_an_object_of_listed_transports_to_ip_port(string fragment) =>
        Assert.Matches(@"^bindaddr(\.\w+)?$", Refused("{" + BoundServer + "," + fragment + "}").Key);

    [Theory]
    [InlineData("example.org:443")]
    [InlineData("[2001:db8::1]:443")]
    [InlineData("192.0.2.1:1")]
    public void Target_is_host_port(string target) =>
        Assert.Equal(target, Parse("{'role':'server','transports':['plain'],'target':'" + target + "'}").Target!.ToString());

    [Theory]
    [InlineData("'example.org:0'")]
    [InlineData("'example.org'")]
    [InlineData("'[::1]'")]
    [InlineData("''")]
    [InlineData("443")]
    [InlineData("null")]
    public void Target_without_a_non_zero_port_is_refused(string value) =>
        Assert.Equal("target", Refused("{'role':'server','transports':['plain'],'target':" + value + "}").Key);

    [Theory]
    [InlineData("'allow':'10.0.0.0/8'")]
    [InlineData("'allow':[8]")]
    [InlineData("'allow':[null]")]
    [InlineData("'allow':['example.org']")]
    [InlineData("'allow':['10.0.0.0/8','10.0.0.0/33']")]
    public void Allow_must_be_an_array_of_ip_or_cidr_strings(string fragment) =>
        Assert.Matches(@"^allow(\[\d+\])?$", Refused("{'role':'server','transports':['plain']," + fragment + "}").Key);

    [Fact]
    public void Allow_error_carries_the_entry()
    {
        var e = Refused("{'role':'server','transports':['plain'],'allow':['300.1.1.1']}");
        Assert.Contains("300.1.1.1", e.Message);
    }

    [Theory]
    [InlineData("127.0.0.1:0", "127.0.0.1", 0)]
    [InlineData("[::]:9", "::", 9)]
    public void Proxylistenaddr_reads_ip_port(string text, string ip, int port) =>
        Assert.Equal(new IPEndPoint(IPAddress.Parse(ip), port), Parse("{" + Client + ",'proxylistenaddr':'" + text + "','public-frontends':true}").ProxyListenAddresses["plain"]);

    /// <summary>spec/ipc.md §3.2 <c>public-frontends</c>: non-loopback front-end addresses need the opt-in.</summary>
    [Theory]
    [InlineData("'proxylistenaddr':'0.0.0.0:0'", "proxylistenaddr")]
    [InlineData("'proxylistenaddr':'[::]:0'", "proxylistenaddr")]
    [InlineData("'proxylistenaddr':'192.0.2.1:0'", "proxylistenaddr")]
    [InlineData("'proxylistenaddr':{'plain':'[::ffff:192.0.2.1]:1080'}", "proxylistenaddr.plain")]
    [InlineData("'turn':{'listenaddr':'0.0.0.0:0','realm':'r','users':{'u':'p'}}", "turn.listenaddr")]
    [InlineData("'public-frontends':false,'turn':{'listenaddr':'[2001:db8::1]:3478','realm':'r','users':{'u':'p'}}", "turn.listenaddr")]
    public void A_non_loopback_front_end_is_refused_without_public_frontends(string fragment, string key)
    {
        var e = Refused("{" + Client + "," + fragment + "}");
        Assert.Equal(key, e.Key);
        Assert.Contains("not a loopback address", e.Message);
        Assert.Contains("\"public-frontends\": true", e.Message);
        Assert.NotNull(Parse("{" + Client + "," + fragment.Replace("'public-frontends':false,", "") + ",'public-frontends':true}"));
    }

    [Theory]
    [InlineData("127.0.0.1:0")]
    [InlineData("127.5.6.7:1080")]
    [InlineData("[::1]:0")]
    [InlineData("[::ffff:127.0.0.1]:0")]
    public void Loopback_front_ends_need_no_opt_in(string address)
    {
        Assert.NotNull(Parse("{" + Client + ",'proxylistenaddr':'" + address + "'}"));
        Assert.NotNull(Parse("{" + Client + ",'turn':{'listenaddr':'" + address + "','realm':'r','users':{'u':'p'}}}"));
    }

    [Fact]
    public void Public_frontends_is_a_client_key() =>
        Assert.Equal("public-frontends", Refused("{" + BoundServer + ",'public-frontends':true}").Key);

    [Theory]
    [InlineData("'proxylistenaddr':'example.org:1'", "proxylistenaddr")]
    [InlineData("'proxylistenaddr':'127.0.0.1'", "proxylistenaddr")]
    [InlineData("'proxylistenaddr':''", "proxylistenaddr")]
    [InlineData("'proxylistenaddr':{'plain':'127.0.0.1'}", "proxylistenaddr.plain")]
    [InlineData("'proxylistenaddr':{'plain':1080}", "proxylistenaddr.plain")]
    public void Anything_but_ip_port_is_refused_naming_the_key_path(string fragment, string key) =>
        Assert.Equal(key, Refused("{" + Client + "," + fragment + "}").Key);

    [Fact]
    public void Proxy_is_a_client_key_checked_like_TOR_PT_PROXY()
    {
        var c = PtConfig.FromObject(JObject.Parse("{\"role\":\"client\",\"transports\":[\"plain\"],\"proxy\":\"http://u:p@127.0.0.1:3128\"}"));
        Assert.Equal("http://u:p@127.0.0.1:3128", c.UpstreamProxy);
        var bad = Assert.Throws<ConfigException>(() => PtConfig.FromObject(JObject.Parse("{\"role\":\"client\",\"transports\":[\"plain\"],\"proxy\":\"socks5://localhost:1080\"}")));
        Assert.Equal("proxy", bad.Key);
        var server = Assert.Throws<ConfigException>(() => PtConfig.FromObject(JObject.Parse("{\"role\":\"server\",\"transports\":[\"plain\"],\"allow\":[],\"proxy\":\"socks5://127.0.0.1:1080\"}")));
        Assert.Equal("proxy", server.Key);
    }

    [Theory]
    [InlineData("metrics", "\"localhost:9100\"", "metrics")]
    [InlineData("instance", "\"has space\"", "instance")]
    [InlineData("instance", "\"\"", "instance")]
    public void A_bad_metrics_address_or_instance_id_names_its_key(string key, string value, string named)
    {
        var e = Assert.Throws<ConfigException>(() => PtConfig.FromObject(JObject.Parse($"{{\"role\":\"client\",\"transports\":[\"plain\"],\"{key}\":{value}}}")));
        Assert.Equal(named, e.Key);
    }

    [Fact]
    public void Metrics_are_off_unless_asked_for_and_the_instance_id_is_kept()
    {
        var off = PtConfig.FromObject(JObject.Parse("{\"role\":\"client\",\"transports\":[\"plain\"]}"));
        Assert.Null(off.Metrics);
        Assert.StartsWith("pthost-", off.Instance, StringComparison.Ordinal);
        var on = PtConfig.FromObject(JObject.Parse("{\"role\":\"server\",\"transports\":[\"plain\"],\"target\":\"a.example:1\",\"metrics\":\"127.0.0.1:9100\",\"instance\":\"edge-2\"}"));
        Assert.Equal("127.0.0.1:9100", on.Metrics!.ToString());
        Assert.Equal("edge-2", on.Instance);
    }

    [Fact]
    public void Every_documented_key_is_accepted_somewhere()
    {
        string dir = Directory.CreateTempSubdirectory("pthost-unit-").FullName;
        try
        {
            var client = JObject.Parse("{\"ptversion\":\"2\",\"role\":\"client\",\"transports\":[\"plain\"],\"proxylistenaddr\":\"127.0.0.1:0\",\"options\":{\"plain\":{}},\"state\":\"s\",\"exit-on-stdin-close\":true,\"loglevel\":\"debug\",\"unsafe-logging\":false,\"proxy\":\"socks5://127.0.0.1:1080\",\"public-frontends\":false}");
            client["plugindir"] = dir;
            client["turn"] = JObject.Parse("{\"realm\":\"r\",\"users\":{\"u\":\"p\"}}");
            client["metrics"] = "127.0.0.1:0"; // spec/ipc.md §4.12
            client["instance"] = "edge-1";
            PtConfig.FromObject(client);
            PtConfig.FromObject(JObject.Parse("{\"role\":\"server\",\"transports\":[\"plain\"],\"bindaddr\":{},\"target\":\"a.example:1\"}"));
            PtConfig.FromObject(JObject.Parse("{\"role\":\"server\",\"transports\":[\"plain\"],\"allow\":[]}"));
            var routed = PtConfig.FromObject(JObject.Parse("{\"role\":\"server\",\"transports\":[\"plain\"],\"allow\":[],\"signals\":{\"rendezvous\":\"https://127.0.0.1:7520\",\"secret\":\"n6G4ZgWPVrBdW_7V9iskzg\",\"pin\":\"" + new string('a', 64) + "\"}}"));
            Assert.Equal("https://127.0.0.1:7520/", routed.SignalRoutes["plain"].Url.AbsoluteUri);
                        PtConfig.FromObject(JObject.Parse("{\"role\":\"client\",\"transports\":[\"plain\"],\"mode\":\"transparent-udp\",\"target\":\"a.example:1\"}"));
            Assert.Equal(20, PtConfig.Keys.Length);
        }
        finally { Directory.Delete(dir, true); }
    }
}

public class PtConfigSignalsTests
{
    [Theory]
    [InlineData("{\"rendezvous\":\"ftp://x:1\",\"secret\":\"n6G4ZgWPVrBdW_7V9iskzg\"}", "signals.rendezvous")]
    [InlineData("{\"rendezvous\":\"http://127.0.0.1:1\",\"secret\":\"AAAA\"}", "signals.secret")]
    [InlineData("{\"rendezvous\":\"http://127.0.0.1:1\"}", "signals.secret")]
    [InlineData("{\"rendezvous\":\"http://127.0.0.1:1\",\"secret\":\"n6G4ZgWPVrBdW_7V9iskzg\",\"pin\":\"00\"}", "signals.pin")]
    [InlineData("{\"rendezvous\":\"http://127.0.0.1:1\",\"secret\":\"n6G4ZgWPVrBdW_7V9iskzg\",\"channel\":\"x\"}", "signals.channel")]
    public void A_bad_signals_object_names_the_key(string signals, string key)
    {
        var e = Assert.Throws<ConfigException>(() => PtConfig.Parse("{\"role\":\"client\",\"transports\":[\"plain\"],\"signals\":" + signals + "}"));
        Assert.Equal(key, e.Key);
    }

    [Fact]
    public void Tor_server_options_with_a_route_lose_its_keys_and_route_the_transport()
    {
        var env = new System.Collections.Hashtable
        {
            ["TOR_PT_MANAGED_TRANSPORT_VER"] = "1",
            ["TOR_PT_STATE_LOCATION"] = "/tmp/pthost-state",
            ["TOR_PT_SERVER_TRANSPORTS"] = "zephyr",
            ["TOR_PT_ORPORT"] = "127.0.0.1:9001",
            ["TOR_PT_SERVER_TRANSPORT_OPTIONS"] = "zephyr:rendezvous=http\\://127.0.0.1\\:7520;zephyr:secret=n6G4ZgWPVrBdW_7V9iskzg;zephyr:relay=127.0.0.1\\:7600",
        };
        var config = PtConfig.FromTorEnvironment(env, ["zephyr"], out _);
        Assert.Equal("http://127.0.0.1:7520/", config.SignalRoutes["zephyr"].Url.AbsoluteUri);
        Assert.Equal("{\"relay\":\"127.0.0.1:7600\"}", StrictJson.Write(config.Options["zephyr"]));
        env["TOR_PT_SERVER_TRANSPORT_OPTIONS"] = "zephyr:secret=n6G4ZgWPVrBdW_7V9iskzg";
        Assert.Throws<EnvironmentException>(() => PtConfig.FromTorEnvironment(env, ["zephyr"], out _));
    }
}

internal static class JObjectExtensions
{
    public static JObject Also(this JObject o, Action<JObject> change)
    {
        change(o);
        return o;
    }
}
