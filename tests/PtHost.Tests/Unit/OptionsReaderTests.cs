using System.Buffers;
using System.Net;
using System.Numerics;
using Newtonsoft.Json.Linq;
using PtHost.Configuration;
using PtHost.Contract;
using PtHost.Socks;

namespace PtHost.Tests.Unit;

/// <summary>The one JSON parser (StrictJson, spec/ipc.md §3.1) and the one options reader (§3.3).</summary>
public class OptionsReaderTests
{
    private static OptionsReader Read(string json, string path = "options.t") => OptionsReader.For(JToken.Parse(json), path);

    private static OptionsException Refused(Action read) => Assert.Throws<OptionsException>(read);

    // ---- StrictJson ----

    [Theory]
    [InlineData("""{"a":1,"a":2}""", "a")]
    [InlineData("""{"options":{"plain":{"discover":true,"discover":false}}}""", "options.plain.discover")]
    [InlineData("""{"allow":[{"x":1},{"y":1,"y":2}]}""", "allow[1].y")]
    [InlineData("""{"users":{"a b":"p","a b":"q"}}""", "users[\"a b\"]")]
    public void A_duplicate_member_name_is_refused_naming_its_path(string json, string path)
    {
        var e = Assert.Throws<StrictJsonException>(() => StrictJson.Parse(json));
        Assert.Equal(path, e.Path);
        Assert.Contains("appears twice", e.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("""{"a":1 /* c */}""", "")]
    [InlineData("{\"a\":{\"b\":1, // c\n\"c\":2}}", "a")]
    [InlineData("// c\n{\"a\":1}", "")]
    [InlineData("""{"a":[1,/* c */2]}""", "a")]
    [InlineData("""{"a":[1,{"b":2 /* c */}]}""", "a[1]")]
    public void A_comment_is_refused_naming_where_it_is(string json, string path) =>
        Assert.Equal(path, Assert.Throws<StrictJsonException>(() => StrictJson.Parse(json)).Path);

    [Fact]
    public void Numbers_keep_their_exact_value()
    {
        var o = (JObject)StrictJson.Parse("""{"small":-5,"big":123456789012345678901234567890,"frac":2.5,"exp":1e3}""");
        Assert.Equal(-5L, o["small"]!.Value<long>());
        Assert.Equal(BigInteger.Parse("123456789012345678901234567890"), ((JValue)o["big"]!).Value);
        Assert.False(StrictJson.TryGetInt64(o["big"], out _));
        Assert.Equal(2.5, o["frac"]!.Value<double>());
        Assert.Equal(1000.0, o["exp"]!.Value<double>());
        Assert.Throws<StrictJsonException>(() => StrictJson.Parse("""{"x":1e400}"""));
    }

    [Fact]
    public void Nesting_is_limited_to_32_levels()
    {
        StrictJson.Parse(new string('[', 32) + new string(']', 32));
        Assert.Throws<StrictJsonException>(() => StrictJson.Parse(new string('[', 33) + new string(']', 33)));
    }

    [Theory]
    [InlineData("")]
    [InlineData("{} {}")]
    [InlineData("{}x")]
    [InlineData("\"\\ud800\"")]
    [InlineData("{\"a\":tru}")]
    public void Anything_but_one_JSON_value_is_refused(string json) =>
        Assert.Throws<StrictJsonException>(() => StrictJson.Parse(json));

    [Fact]
    public void A_settings_block_with_a_duplicate_key_is_refused_with_12_naming_the_key()
    {
        var buffer = new ReadOnlySequence<byte>(Socks5SettingsTests.Block("""{"destination":"a:1","destination":"b:1"}"""));
        Assert.Equal(ParseStatus.Invalid, Socks5Parser.TryParseSettings(ref buffer, out _, out var error));
        Assert.Equal(Socks5.ReplySettingsBadJson, error.Reply);
        Assert.Contains("destination: appears twice", error.Message, StringComparison.Ordinal);
    }

    // ---- PtConfig through the reader ----

    [Theory]
    [InlineData("""{"role":"client","role":"server","transports":["plain"]}""", "role")]
    [InlineData("""{"role":"client","transports":["plain"],"options":{"plain":{"discover":true,"discover":true}}}""", "options.plain.discover")]
    [InlineData("""{"role":"client","transports":["plain"] /* c */}""", "(document)")]
    [InlineData("{\"role\":\"client\",\"transports\":[\"plain\"],\"turn\":{\"realm\":\"r\", // c\n\"users\":{\"u\":\"p\"}}}", "turn")]
    public void The_configuration_refuses_duplicates_and_comments_naming_the_key(string json, string key)
    {
        var e = Assert.Throws<ConfigException>(() => PtConfig.Parse(json));
        Assert.Equal(key, e.Key);
        Assert.StartsWith($"config key '{key}': not valid JSON (RFC 8259): ", e.Message, StringComparison.Ordinal);
    }

    // ---- OptionsReader ----

    [Fact]
    public void Absent_or_null_options_read_as_absent_and_other_non_objects_are_refused()
    {
        Assert.True(OptionsReader.For(null, "options.t").IsAbsent);
        Assert.True(OptionsReader.For(JValue.CreateNull(), "options.t").IsAbsent);
        Assert.False(Read("{}").IsAbsent);
        var e = Refused(() => OptionsReader.For(new JArray(), "options.t"));
        Assert.Equal("options.t", e.Path);
        Assert.Equal("options.t: must be an object, not an array", e.Message);
    }

    [Fact]
    public void Paths_name_members_elements_and_odd_names()
    {
        var r = Read("""{"a":{"b c":{"d":1}}}""", "");
        Assert.Equal("a", r.PathOf("a"));
        Assert.Equal("a[\"b c\"]", r.Object("a").PathOf("b c"));
        Assert.Equal("a[\"b c\"].d", r.Object("a").Object("b c").PathOf("d"));
        Assert.Equal("(document)", r.Path);
        Assert.Equal("options.t.x", Read("{}").PathOf("x"));
    }

    [Fact]
    public void Unknown_keys_are_refused_in_document_order_listing_the_known_ones()
    {
        var e = Refused(() => Read("""{"a":1,"zz":2,"yy":3}""").RejectUnknown("a", "b"));
        Assert.Equal("options.t.zz", e.Path);
        Assert.Equal("options.t.zz: unknown key (known: a, b)", e.Message);
    }

    [Theory]
    [InlineData("""{"k":5}""", "must be a string, not the number 5")]
    [InlineData("""{"k":null}""", "must be a string, not null")]
    [InlineData("""{"k":true}""", "must be a string, not true")]
    [InlineData("""{"k":{}}""", "must be a string, not an object")]
    public void A_string_is_only_a_string(string json, string problem)
    {
        var e = Refused(() => Read(json).String("k"));
        Assert.Equal(("options.t.k", problem), (e.Path, e.Problem));
    }

    [Fact]
    public void Getters_return_null_or_the_fallback_for_absent_keys()
    {
        var r = Read("{}");
        Assert.Null(r.String("k"));
        Assert.Equal("f", r.String("k", "f"));
        Assert.True(r.Bool("k", true));
        Assert.Null(r.Integer("k", 0, 9));
        Assert.Equal(7, r.Integer("k", 7, 0, 9));
        Assert.Equal(TimeSpan.FromSeconds(3), r.Seconds("k", TimeSpan.FromSeconds(3), 10));
        Assert.Null(r.Destination("k"));
        Assert.Null(r.Strings("k"));
        Assert.True(r.Object("k").IsAbsent);
    }

    [Theory]
    [InlineData("""{"k":"1"}""")]
    [InlineData("""{"k":1.0}""")]
    [InlineData("""{"k":256}""")]
    [InlineData("""{"k":-1}""")]
    [InlineData("""{"k":99999999999999999999}""")]
    public void An_integer_is_an_integer_in_range(string json) =>
        Assert.StartsWith("must be an integer from 0 to 255", Refused(() => Read(json).Integer("k", 0, 255)).Problem, StringComparison.Ordinal);

    [Fact]
    public void Seconds_take_fractions_above_0_up_to_the_maximum()
    {
        Assert.Equal(TimeSpan.FromSeconds(2.5), Read("""{"k":2.5}""").Seconds("k", TimeSpan.Zero, 3600));
        Assert.Equal(TimeSpan.FromSeconds(3600), Read("""{"k":3600}""").Seconds("k", TimeSpan.Zero, 3600));
        foreach (string bad in new[] { "0", "-1", "3601", "\"5\"", "null" })
            Assert.Equal("options.t.k", Refused(() => Read("{\"k\":" + bad + "}").Seconds("k", TimeSpan.Zero, 3600)).Path);
    }

    [Fact]
    public void OneOf_names_the_allowed_values()
    {
        Assert.Equal("b", Read("""{"k":"b"}""").OneOf("k", "a", "b"));
        Assert.Equal("must be \"a\" or \"b\", not \"c\"", Refused(() => Read("""{"k":"c"}""").OneOf("k", "a", "b")).Problem);
        Assert.Equal("must be one of \"a\", \"b\", \"c\", not the number 1", Refused(() => Read("""{"k":1}""").OneOf("k", "a", "b", "c")).Problem);
    }

    [Fact]
    public void Addresses_are_checked_as_the_spec_says()
    {
        Assert.Equal(new Destination("example.org", 443), Read("""{"k":"example.org:443"}""").Destination("k"));
        Assert.Equal(new IPEndPoint(IPAddress.Loopback, 0), Read("""{"k":"127.0.0.1:0"}""").EndPoint("k"));
        Assert.Equal(IPAddress.IPv6Loopback, Read("""{"k":"::1"}""").Address("k"));
        Assert.Equal("must be \"host:port\", not \"example.org:0\"", Refused(() => Read("""{"k":"example.org:0"}""").Destination("k")).Problem);
        Assert.Equal("must be \"ip:port\", not \"example.org:1\"", Refused(() => Read("""{"k":"example.org:1"}""").EndPoint("k")).Problem);
        Assert.Equal("must be an IP literal, not \"010.0.0.1\"", Refused(() => Read("""{"k":"010.0.0.1"}""").Address("k")).Problem);
    }

    [Fact]
    public void List_elements_are_named_by_index()
    {
        Assert.Equal(["a", "b"], Read("""{"k":["a","b"]}""").Strings("k"));
        Assert.Equal("options.t.k[1]", Refused(() => Read("""{"k":["a",2]}""").Strings("k")).Path);
        Assert.Equal("options.t.k[0]", Refused(() => Read("""{"k":["x"]}""").List("k", s => s == "ok" ? s : null, "must be \"ok\"")).Path);
        Assert.Equal("must not be empty", Refused(() => Read("""{"k":[]}""").Strings("k", nonEmpty: true)).Problem);
        Assert.Equal("must be an array of strings, not a string", Refused(() => Read("""{"k":"a"}""").Strings("k")).Problem);
    }

    [Fact]
    public void Require_names_the_missing_key()
    {
        var e = Refused(() => Read("{}").Require("serverPin", "pthost generate-config t"));
        Assert.Equal("options.t.serverPin: is required: pthost generate-config t", e.Message);
        Assert.Equal("x", Read("""{"serverPin":"x"}""").Require("serverPin").String("serverPin"));
    }

    [Fact]
    public void Parse_reports_bad_JSON_where_it_is()
    {
        Assert.Equal("(document)", Refused(() => OptionsReader.Parse("[1]")).Path);
        Assert.Equal("(document)", Refused(() => OptionsReader.Parse("{")).Path);
        Assert.Equal("a.b", Refused(() => OptionsReader.Parse("""{"a":{"b":1,"b":2}}""")).Path);
        Assert.Equal("relay.a", Refused(() => OptionsReader.Parse("""{"a":1,"a":2}""", "relay")).Path);
    }
}
