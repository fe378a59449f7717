using Newtonsoft.Json.Linq;

namespace PtHost.Tests.Unit;

/// <summary>The dispatcher command line's syntax and mapping (spec/ipc.md §12.1).</summary>
public class DispatcherCommandLineTests
{
    private static JObject Map(params string[] args) => DispatcherCommandLine.Map(DispatcherCommandLine.Parse(args)).Document;

    [Theory]
    [InlineData(new[] { "-transparent" }, true)]
    [InlineData(new[] { "-client=true" }, true)]
    [InlineData(new[] { "-h" }, false)]
    [InlineData(new[] { "--transparent" }, false)]
    [InlineData(new[] { "{\"role\":\"client\"}" }, false)]
    [InlineData(new[] { "relay" }, false)]
    [InlineData(new[] { "-config" }, false)]
    public void The_form_is_chosen_by_a_first_argument_with_one_dash_naming_a_flag(string[] args, bool dispatcher) =>
        Assert.Equal(dispatcher, DispatcherCommandLine.IsDispatcherForm(args));

    [Fact]
    public void Go_flag_syntax_is_read_as_Go_reads_it()
    {
        var given = DispatcherCommandLine.Parse(["-client", "--state=a", "-state", "b", "-transparent=F", "-udp=1", "-options", "-x"]);
        Assert.Equal("true", given["client"]);
        Assert.Equal("b", given["state"]); // the last value counts
        Assert.Equal("false", given["transparent"]);
        Assert.Equal("true", given["udp"]);
        Assert.Equal("-x", given["options"]); // a text flag takes the next argument whatever it looks like
        Assert.Throws<FormatException>(() => DispatcherCommandLine.Parse(["-client", "true"])); // a boolean takes no separate value
        Assert.Throws<FormatException>(() => DispatcherCommandLine.Parse(["---client"]));
    }

    [Theory]
    [InlineData(new[] { "-transparent" }, "transparent-tcp")]
    [InlineData(new[] { "-transparent", "-udp" }, "transparent-udp")]
    [InlineData(new[] { "-udp" }, "stun")]
    [InlineData(new[] { "-udp", "-mode", "transparent-TCP" }, "transparent-tcp")]
    [InlineData(new string[0], null)]
    public void The_mode_follows_determineMode(string[] flags, string? mode)
    {
        var doc = Map([.. flags, "-client", "-transports", "plain"]);
        Assert.Equal(mode, (string?)doc["mode"]);
        Assert.Equal("client", (string?)doc["role"]);
    }

    [Fact]
    public void A_server_line_maps_onto_the_configuration()
    {
        var doc = Map("-transparent", "-server", "-state", "st", "-orport", "127.0.0.1:3333", "-transports", "plain,rud",
            "-bindaddr", "plain-0.0.0.0:443,other-127.0.0.1:1,rud-127.0.0.1:2", "-options", "{\"k\":1}", "-logLevel", "warn");
        Assert.Equal("server", (string?)doc["role"]);
        Assert.Equal("127.0.0.1:3333", (string?)doc["target"]);
        Assert.Equal("st", (string?)doc["state"]);
        Assert.Equal("warning", (string?)doc["loglevel"]);
        Assert.Equal(JObject.Parse("{\"plain\":\"0.0.0.0:443\",\"rud\":\"127.0.0.1:2\"}"), doc["bindaddr"]);
        Assert.Equal(1, (int)doc["options"]!["rud"]!["k"]!);
        Assert.Null(doc["mode"]);
    }

    [Fact]
    public void Defaults_are_the_dispatcher_s()
    {
        var mapping = DispatcherCommandLine.Map(DispatcherCommandLine.Parse(["-client", "-transport", "plain", "-proxylistenhost", "::1", "-proxylistenport", "5"]));
        Assert.Equal("state", (string?)mapping.Document["state"]);
        Assert.Equal("error", (string?)mapping.Document["loglevel"]);
        Assert.Equal("[::1]:5", (string?)mapping.Document["proxylistenaddr"]);
        Assert.Equal("2", mapping.AnnouncedVersion);
        Assert.Equal("3.0", DispatcherCommandLine.Map(DispatcherCommandLine.Parse(["-client", "-transports", "plain", "-ptversion", "3.0"])).AnnouncedVersion);
    }

    [Theory]
    [InlineData("-client", "-transports", "plain", "-bindaddr", "plain-127.0.0.1:1")]
    [InlineData("-server", "-transports", "plain")]
    [InlineData("-server", "-transports", "plain", "-target", "a:1", "-proxylistenaddr", "127.0.0.1:0")]
    [InlineData("-server", "-transports", "plain", "-target", "a:1", "-extorport", "127.0.0.1:9")]
    [InlineData("-client", "-transports", "*")]
    [InlineData("-client", "-transports", "plain", "-ptversion", "1")]
    [InlineData("-client", "-transports", "plain", "-ipcLogLevel", "debug")]
    [InlineData("-client", "-transports", "plain", "-options", "{'a':1}")]
    [InlineData("-client", "-transports", "plain", "-serverIP", "1.2.3.4:5")]
    public void Combinations_the_mapping_cannot_honour_are_usage_errors(params string[] args) =>
        Assert.Throws<FormatException>(() => Map(args));
}

/// <summary>SOCKS5 UDP ASSOCIATE's request (spec/ipc.md §5.12) and the STUN mode's message check (§12.5).</summary>
public class UdpFrontEndParsingTests
{
    [Fact]
    public void Udp_associate_is_read_where_the_transport_carries_udp_and_its_address_is_a_hint()
    {
        byte[] request = [0x05, 0x03, 0x00, 0x03, 0x01, (byte)'0', 0x1F, 0x90];
        var buffer = new System.Buffers.ReadOnlySequence<byte>(request);
        Assert.Equal(PtHost.Socks.ParseStatus.Done, PtHost.Socks.Socks5Parser.TryParseRequest(ref buffer, out var destination, out byte command, udpAssociate: true, out _));
        Assert.Equal(PtHost.Socks.Socks5.CmdUdpAssociate, command);
        Assert.Equal("0.0.0.0:8080", destination!.ToString());
        // Without UDP (the transport cannot carry it): 07, as any command PtHost does not serve.
        var refused = new System.Buffers.ReadOnlySequence<byte>(new byte[] { 0x05, 0x03, 0x00, 0x01, 0, 0, 0, 0, 0x1F, 0x90 });
        Assert.Equal(PtHost.Socks.ParseStatus.Invalid, PtHost.Socks.Socks5Parser.TryParseRequest(ref refused, out _, out var error));
        Assert.Equal(0x07, error.Reply);
    }

    [Theory]
    [InlineData("000100002112A442000102030405060708090A0B", true)]
    [InlineData("000100042112A442000102030405060708090A0B00000000", true)]
    [InlineData("000100002112A443000102030405060708090A0B", false)] // not the magic cookie
    [InlineData("400100002112A442000102030405060708090A0B", false)] // top bits set (ChannelData)
    [InlineData("000100082112A442000102030405060708090A0B00000000", false)] // length beyond the datagram
    [InlineData("000100022112A442000102030405060708090A0B0000", false)] // length not a multiple of 4
    [InlineData("0001", false)]
    public void Stun_mode_carries_whole_stun_messages_only(string hex, bool stun) =>
        Assert.Equal(stun, PtHost.Transparent.TransparentUdpListener.IsStunMessage(Convert.FromHexString(hex)));
}
