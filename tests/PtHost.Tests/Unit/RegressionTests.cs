using System.Buffers;
using System.Buffers.Binary;
using System.Net;
using System.Text;
using Microsoft.Extensions.Logging.Abstractions;
using PtHost.Configuration;
using PtHost.Contract;
using PtHost.Ipc;
using PtHost.Net;
using PtHost.Socks;

namespace PtHost.Tests.Unit;

/// <summary>Regression cases for bugs the unit tests found (envelope overflow, lenient JSON, inet_aton forms, unchecked lengths).</summary>
public class RegressionTests
{
    // BUG 1
    [Theory]
    [InlineData("{\"v\":99999999999999999999,\"mid\":1,\"cid\":\"c\",\"kind\":\"k\"}")]
    [InlineData("{\"v\":1,\"mid\":99999999999999999999,\"cid\":\"c\",\"kind\":\"k\"}")]
    [InlineData("{\"v\":1,\"mid\":1,\"cid\":\"c\",\"kind\":\"k\",\"re\":99999999999999999999}")]
    [InlineData("{\"v\":1,\"mid\":1,\"cid\":\"c\",\"kind\":\"k\",\"exp\":99999999999999999999}")]
    public void Envelope_with_integer_beyond_Int64_is_dropped_not_thrown(string payload)
    {
        var r = new SignalRouter(Role.Server, new IpcWriter(TextWriter.Null), NullLogger<SignalRouter>.Instance);
        r.For("plain");
        Assert.NotNull(r.Deliver("plain", payload));
    }

    [Fact]
    public void Stdin_line_with_integer_beyond_Int64_does_not_stop_the_reader()
    {
        var r = new SignalRouter(Role.Server, new IpcWriter(TextWriter.Null), NullLogger<SignalRouter>.Instance);
        var ch = r.For("plain");
        string input = "CMESSAGE plain {\"v\":1,\"mid\":99999999999999999999,\"cid\":\"c\",\"kind\":\"k\"}\n" +
                       "CMESSAGE plain {\"v\":1,\"mid\":2,\"cid\":\"c\",\"kind\":\"k\"}\n";
        new StdinReader(new MemoryStream(Encoding.UTF8.GetBytes(input)), r, NullLogger<StdinReader>.Instance).Run();
        Assert.True(ch.Incoming.TryRead(out var s));
        Assert.Equal(2, s!.MessageId);
    }

    // BUG 2
    [Theory]
    [InlineData("\"\"")]
    [InlineData("\"a\\u0000b\"")]
    public void State_that_is_not_a_usable_path_is_refused_naming_state(string value)
    {
        var e = Assert.Throws<ConfigException>(() => PtConfig.Parse("{\"role\":\"client\",\"transports\":[\"plain\"],\"state\":" + value + "}"));
        Assert.Equal("state", e.Key);
    }

    // BUG 3
    [Theory]
    [InlineData("010.0.0.1")]   // read as octal: 8.0.0.1
    [InlineData("10.1")]        // read as 10.0.0.1
    [InlineData("127.1")]       // read as 127.0.0.1
    [InlineData("0x7f.0.0.1")]  // read as 127.0.0.1
    [InlineData("10.1:443")]
    public void Allow_entry_that_is_not_a_dotted_quad_is_refused(string entry) =>
        Assert.Throws<FormatException>(() => AllowList.Parse([entry]));

    // BUG 4
    [Theory]
    [InlineData("{'a':1}")]
    [InlineData("{a:1}")]
    [InlineData("{\"a\":1,}")]
    [InlineData("{\"a\":NaN}")]
    [InlineData("{\"a\":Infinity}")]
    [InlineData("{\"a\":undefined}")]
    [InlineData("{\"a\":[1,,2]}")]
    [InlineData("{\"a\":new Date(1)}")]
    [InlineData("{\"a\":0x10}")]
    [InlineData("{\"a\":01}")]
    [InlineData("{} // comment")]
    public void Settings_that_are_not_RFC_8259_JSON_are_refused_with_12(string text)
    {
        AssertSettingsRefusedAsBadJson(text);
    }

    // LATENT 6
    [Fact]
    public void BuildRequest_refuses_a_destination_too_long_for_the_header()
    {
        // A host name is at most 255 characters, so no Destination overflows the 262-byte field.
        Assert.ThrowsAny<ArgumentException>(() => new Destination(new string('a', 70_000), 80));
        Assert.Equal(SessionPreamble.HeaderLength + 261, SessionPreamble.BuildRequest(new Destination(new string('a', 255), 65535)).Length);
    }

    // Related, contract (out of scope for this branch)
    [Fact]
    public void Destination_domain_with_leading_zero_is_not_an_octal_address() =>
        Assert.False(Destination.TryParse("010.0.0.1:80", out _));

    [Fact]
    public void A_lone_surrogate_escape_is_bad_JSON_not_an_exception()
    {
        Assert.Equal("a", Assert.Throws<StrictJsonException>(() => StrictJson.Parse("{\"a\":\"\\ud800\"}")).Path);
        AssertSettingsRefusedAsBadJson("{\"a\":\"\\ud800\"}");
        var e = Assert.Throws<ConfigException>(() => PtConfig.Parse("{\"role\":\"client\",\"transports\":[\"plain\"],\"state\":\"\\ud800\"}"));
        Assert.Equal("state", e.Key); // where the bad text is
        Assert.Contains("not valid JSON", e.Message);
    }

    private static void AssertSettingsRefusedAsBadJson(string text)
    {
        byte[] body = Encoding.UTF8.GetBytes(text);
        byte[] message = new byte[4 + body.Length];
        BinaryPrimitives.WriteInt32BigEndian(message, body.Length);
        body.CopyTo(message, 4);
        var buffer = new ReadOnlySequence<byte>(message);
        Assert.Equal(ParseStatus.Invalid, Socks5Parser.TryParseSettings(ref buffer, out _, out var error));
        Assert.Equal(Socks5.ReplySettingsBadJson, error.Reply);
    }
}
