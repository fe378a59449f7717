using Newtonsoft.Json.Linq;
using PtHost.Socks;

namespace PtHost.Tests.Unit;

public class PtArgsTests
{
    private static Dictionary<string, string> Dict(JObject o) => o.Properties().ToDictionary(p => p.Name, p => (string)p.Value!);

    [Fact]
    public void Parse_reads_the_pt_spec_example()
    {
        var args = PtArgs.Parse("shared-secret=rahasia;secrets-file=/tmp/blob");
        Assert.Equal(new Dictionary<string, string> { ["shared-secret"] = "rahasia", ["secrets-file"] = "/tmp/blob" }, Dict(args));
    }

    [Theory]
    [InlineData(@"a\=b=c", "a=b", "c")]
    [InlineData(@"a=b\;c", "a", "b;c")]
    [InlineData(@"a=b\\c", "a", @"b\c")]
    [InlineData(@"a\\=b", @"a\", "b")]
    [InlineData(@"k\;k=v", "k;k", "v")]
    [InlineData(@"k=\=\;\\", "k", @"=;\")]
    [InlineData(@"k=\x", "k", "x")] // backslash escapes any character
    [InlineData("k=a=b", "k", "a=b")] // after the first '=', '=' is part of the value
    [InlineData("k=", "k", "")]
    [InlineData("cert=AAAA+/bb==", "cert", "AAAA+/bb==")]
    public void Parse_applies_backslash_escapes_of_pt_spec_3_5(string text, string key, string value)
    {
        var args = PtArgs.Parse(text);
        Assert.Equal(new Dictionary<string, string> { [key] = value }, Dict(args));
    }

    [Fact]
    public void Parse_of_empty_text_is_empty()
    {
        Assert.Empty(PtArgs.Parse(""));
    }

    [Theory]
    [InlineData("a=1;")]
    [InlineData("a=1;b=2;")]
    public void Parse_tolerates_one_trailing_semicolon(string text)
    {
        var args = PtArgs.Parse(text);
        Assert.Equal("1", (string)args["a"]!);
    }

    [Theory]
    [InlineData("a")]
    [InlineData("a=1;b")]
    [InlineData(@"a\=1")]
    public void Parse_rejects_argument_without_equals(string text)
    {
        var e = Assert.Throws<FormatException>(() => PtArgs.Parse(text));
        Assert.Contains("has no '='", e.Message);
    }

    [Theory]
    [InlineData("=v")]
    [InlineData("a=1;=v")]
    public void Parse_rejects_empty_key(string text)
    {
        var e = Assert.Throws<FormatException>(() => PtArgs.Parse(text));
        Assert.Contains("empty key", e.Message);
    }

    [Theory]
    [InlineData(";")]
    [InlineData("a=1;;b=2")]
    [InlineData(";a=1")]
    [InlineData("a=1;;")]
    public void Parse_rejects_empty_argument_between_semicolons(string text)
    {
        var e = Assert.Throws<FormatException>(() => PtArgs.Parse(text));
        Assert.Contains("empty argument", e.Message);
    }

    [Theory]
    [InlineData("a=1;a=2")]
    [InlineData("a=1;b=2;a=1")]
    [InlineData(@"a=1;\a=2")]
    public void Parse_rejects_duplicate_key(string text)
    {
        var e = Assert.Throws<FormatException>(() => PtArgs.Parse(text));
        Assert.Contains("appears twice", e.Message);
    }

    [Theory]
    [InlineData(@"\")]
    [InlineData(@"a=b\")]
    [InlineData(@"a\")]
    [InlineData(@"a=b\\\")]
    public void Parse_rejects_dangling_backslash(string text)
    {
        var e = Assert.Throws<FormatException>(() => PtArgs.Parse(text));
        Assert.Contains("unfinished escape", e.Message);
    }

    [Theory]
    [InlineData("plain", "plain")]
    [InlineData("a=b", @"a\=b")]
    [InlineData("a;b", @"a\;b")]
    [InlineData(@"a\b", @"a\\b")]
    [InlineData(@"=;\", @"\=\;\\")]
    [InlineData("a,b c", "a,b c")]
    [InlineData("", "")]
    public void Escape_backslashes_backslash_equals_and_semicolon(string raw, string escaped) =>
        Assert.Equal(escaped, PtArgs.Escape(raw));

    [Fact]
    public void Format_joins_escaped_pairs_with_semicolons()
    {
        Assert.Equal(@"shared-secret=rahasia;k\=\;=v\\",
            PtArgs.Format([new("shared-secret", "rahasia"), new("k=;", @"v\")]));
        Assert.Equal("", PtArgs.Format([]));
    }

    [Theory]
    [InlineData("k", "v")]
    [InlineData("k=;\\", "=;\\v")]
    [InlineData("ключ", "значение 😀")]
    [InlineData("a", "")]
    [InlineData("\\", "\\\\")]
    [InlineData("k", "a=b=c;;;")]
    public void Format_then_Parse_round_trips(string key, string value)
    {
        var pairs = new List<KeyValuePair<string, string>> { new(key, value), new("other", value + key) };
        var parsed = PtArgs.Parse(PtArgs.Format(pairs));
        Assert.Equal(pairs.ToDictionary(p => p.Key, p => p.Value), Dict(parsed));
    }

    [Fact]
    public void Format_then_Parse_round_trips_random_pairs()
    {
        var random = new Random(20240611);
        const string alphabet = "ab=;\\ ,é\0\n";
        for (int round = 0; round < 500; round++)
        {
            var pairs = new Dictionary<string, string>();
            int count = random.Next(0, 5);
            for (int i = 0; i < count; i++)
            {
                string key = new(Enumerable.Range(0, random.Next(1, 6)).Select(_ => alphabet[random.Next(alphabet.Length)]).ToArray());
                string value = new(Enumerable.Range(0, random.Next(0, 6)).Select(_ => alphabet[random.Next(alphabet.Length)]).ToArray());
                pairs[key] = value;
            }
            Assert.Equal(pairs, Dict(PtArgs.Parse(PtArgs.Format(pairs))));
        }
    }
}
