using System.Net;
using Newtonsoft.Json.Linq;
using PtHost.Contract;
using PtHost.Transports.Jet;

namespace PtHost.Tests.Unit;

/// <summary>spec/jet.md §5.1 (relay configuration), §7.1 (transport options) and §7.2 (answers), without processes.</summary>
public class JetOptionsTests
{
    private static readonly Lazy<(JObject Client, JObject Server)> s_generated = new(() =>
    {
        var g = new JetServer(null!, JetServerOptions.Parse(null)).GenerateConfiguration();
        return (g.Client, g.Server);
    });

    private static readonly JetRelayOptions Defaults = JetRelayOptions.ForListen(new IPEndPoint(IPAddress.Loopback, 8080));

    [Fact]
    public void Listen_alone_turns_on_tcp_tls_and_wss_on_the_same_address_with_free_ports()
    {
        Assert.Equal(new IPEndPoint(IPAddress.Loopback, 0), Defaults.Tcp);
        Assert.Equal(new IPEndPoint(IPAddress.Loopback, 0), Defaults.Tls);
        Assert.Equal(new IPEndPoint(IPAddress.Loopback, 0), Defaults.Wss);
        Assert.Equal(AssociationPolicy.Api, Defaults.Policy);
        Assert.Equal(TimeSpan.FromSeconds(300), Defaults.AssociationTimeout);
        Assert.Null(Defaults.ApiKey);
    }

    [Fact]
    public void A_configuration_file_sets_every_key()
    {
        var o = JetRelayOptions.Parse("""
            {"listen": "127.0.0.1:9000", "tcp": "127.0.0.1:9001", "tls": false, "wss": "127.0.0.1:9443",
             "instance": "relay-7", "externalHost": "relay.example.net", "external": {"tcp": "edge.example.net:4000"},
             "apiKey": "0123456789abcdef0123", "policy": "any", "associationTimeout": 30, "handshakeTimeout": 2.5,
             "maxConnections": 100, "maxAssociations": 50, "statsInterval": 5}
            """, Defaults, "/");
        Assert.Equal(IPEndPoint.Parse("127.0.0.1:9000"), o.Listen);
        Assert.Equal(IPEndPoint.Parse("127.0.0.1:9001"), o.Tcp);
        Assert.Null(o.Tls);
        Assert.Equal("relay-7", o.Instance);
        Assert.Equal("relay.example.net", o.ExternalHost);
        Assert.Equal(new Destination("edge.example.net", 4000), o.External[CandidateKind.Tcp]);
        Assert.Equal(AssociationPolicy.Any, o.Policy);
        Assert.Equal(TimeSpan.FromSeconds(2.5), o.HandshakeTimeout);
        Assert.Equal(100, o.MaxConnections);
    }

    [Fact]
    public void Listeners_left_at_their_defaults_follow_the_configured_listen_address()
    {
        var o = JetRelayOptions.Parse("""{"listen": "127.0.0.2:9000", "tls": "127.0.0.1:9443"}""", Defaults, "/");
        Assert.Equal(new IPEndPoint(IPAddress.Parse("127.0.0.2"), 0), o.Tcp);
        Assert.Equal(new IPEndPoint(IPAddress.Parse("127.0.0.2"), 0), o.Wss);
        Assert.Equal(IPEndPoint.Parse("127.0.0.1:9443"), o.Tls);
    }

    [Theory]
    [InlineData("""{"listen": false}""", "listen")]
    [InlineData("""{"tcp": "relay:1"}""", "tcp")]
    [InlineData("""{"certificateFile": "c.pem"}""", "keyFile")]
    [InlineData("""{"certificateFile": "missing.pem", "keyFile": "missing.key"}""", "keyFile")]
    [InlineData("""{"instance": "two words"}""", "instance")]
    [InlineData("""{"externalHost": "127.1"}""", "externalHost")]
    [InlineData("""{"external": {"TCP": "h:1"}}""", "external.TCP")]
    [InlineData("""{"external": {"tcp": "h"}}""", "external.tcp")]
    [InlineData("""{"apiKey": "short"}""", "apiKey")]
    [InlineData("""{"policy": "open"}""", "policy")]
    [InlineData("""{"associationTimeout": 0}""", "associationTimeout")]
    [InlineData("""{"maxConnections": 1.5}""", "maxConnections")]
    [InlineData("""{"extra": true}""", "extra")]
    [InlineData("""[1]""", "(document)")]
    [InlineData("""{"policy": "api", "policy": "any"}""", "policy")]
    [InlineData("""{"external": {"tcp": "h:1", "tcp": "h:2"}}""", "external.tcp")]
    [InlineData("""{"policy": "api" /* a comment */}""", "(document)")]
    [InlineData("{\"external\": {\"tcp\": \"h:1\" // a comment\n}}", "external")]
    [InlineData("""{"policy": 'api'}""", "policy")]
    public void Bad_relay_configuration_is_refused_naming_the_key(string json, string key)
    {
        Assert.Equal(key, Assert.Throws<OptionsException>(() => JetRelayOptions.Parse(json, Defaults, Path.GetTempPath())).Path);
    }

    [Fact]
    public void Generated_options_parse_on_both_sides()
    {
        var client = JetClientOptions.Parse(s_generated.Value.Client);
        Assert.Equal(32, client.ServerPin.Length);
        var server = JetServerOptions.Parse(s_generated.Value.Server);
        Assert.Single(server.ClientPins);
        Assert.Equal(["tcp", "tls", "ws", "wss"], server.Kinds.Order());
        Assert.False(server.Direct);
    }

    [Theory]
    [InlineData("relay", "\"ftp://relay:21\"")]
    [InlineData("relay", "\"http://relay:8080/api\"")]
    [InlineData("kinds", "[]")]
    [InlineData("kinds", "[\"udp\"]")]
    [InlineData("directAddress", "\"nowhere\"")]
    [InlineData("clientPins", "[\"abc\"]")]
    [InlineData("tlsTimeout", "0")]
    [InlineData("colour", "\"blue\"")]
    public void Bad_server_options_fail_at_start_up(string key, string json)
    {
        var o = (JObject)s_generated.Value.Server.DeepClone();
        o[key] = JToken.Parse(json);
        Assert.StartsWith("options.jet." + key, Assert.Throws<OptionsException>(() => JetServerOptions.Parse(o)).Path, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("serverPin")]
    [InlineData("certificate")]
    public void Client_options_without_a_required_key_fail_at_start_up(string key)
    {
        var o = (JObject)s_generated.Value.Client.DeepClone();
        o.Remove(key);
        Assert.Equal("options.jet." + key, Assert.Throws<OptionsException>(() => JetClientOptions.Parse(o)).Path);
    }

    [Fact]
    public void An_answer_lists_the_association_and_its_candidates()
    {
        var aid = Guid.NewGuid();
        var cid = Guid.NewGuid();
        var (a, list) = JetClient.ReadAnswer(JObject.Parse($$"""
            {"nonce": "n", "association": "{{aid}}", "candidates": [{"id": "{{cid}}", "url": "ws://relay:8080"}, {"id": "{{cid}}", "url": "tcp://10.0.0.1:9000", "direct": true}]}
            """));
        Assert.Equal(aid, a);
        Assert.Equal(2, list.Count);
        Assert.Equal("ws", list[0].Kind);
        Assert.Equal("direct", list[1].Kind);
    }

    [Theory]
    [InlineData("""{"error": "no relay"}""", ConnectFailure.HostUnreachable)]
    [InlineData("""{"association": "x", "candidates": []}""", ConnectFailure.General)]
    [InlineData("""{"association": "3f2504e0-4f89-11d3-9a0c-0305e82c3301", "candidates": []}""", ConnectFailure.HostUnreachable)]
    [InlineData("""{"association": "3f2504e0-4f89-11d3-9a0c-0305e82c3301", "candidates": [{"id": "3f2504e0-4f89-11d3-9a0c-0305e82c3301", "url": "udp://h:1"}]}""", ConnectFailure.General)]
    [InlineData("""{"association": "3f2504e0-4f89-11d3-9a0c-0305e82c3301", "candidates": [{"id": "3f2504e0-4f89-11d3-9a0c-0305e82c3301", "url": "ws://h:1", "direct": true}]}""", ConnectFailure.General)]
    public void Unusable_answers_fail_the_session_with_their_code(string json, ConnectFailure failure)
    {
        var e = Assert.Throws<TransportConnectException>(() => JetClient.ReadAnswer(JObject.Parse(json)));
        Assert.Equal(failure, e.Failure);
    }
}
