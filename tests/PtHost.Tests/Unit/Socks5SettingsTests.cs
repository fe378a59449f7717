using System.Buffers;
using System.Buffers.Binary;
using System.Text;
using Newtonsoft.Json.Linq;
using PtHost.Socks;
using PtHost.Tests.Unit.Support;

namespace PtHost.Tests.Unit;

public class Socks5SettingsTests
{
    private static byte[] Block(byte[] body, int? declaredLength = null)
    {
        var result = new byte[4 + body.Length];
        BinaryPrimitives.WriteInt32BigEndian(result, declaredLength ?? body.Length);
        body.CopyTo(result, 4);
        return result;
    }

    internal static byte[] Block(string json) => Block(Encoding.UTF8.GetBytes(json));

    private static (ParseStatus Status, JObject? Settings, Socks5Error Error, byte[] Left) Parse(ReadOnlySequence<byte> sequence)
    {
        var buffer = sequence;
        var status = Socks5Parser.TryParseSettings(ref buffer, out var settings, out var error);
        return (status, settings, error, buffer.ToArray());
    }

    private static (ParseStatus Status, JObject? Settings, Socks5Error Error, byte[] Left) Parse(byte[] bytes) =>
        Parse(new ReadOnlySequence<byte>(bytes));

    private static readonly ParseStep Step = (ref ReadOnlySequence<byte> b) => Socks5Parser.TryParseSettings(ref b, out _, out _);

    [Fact]
    public void Settings_length_is_4_byte_big_endian()
    {
        byte[] body = Encoding.UTF8.GetBytes("{\"a\":1}");
        byte[] message = [0x00, 0x00, 0x00, (byte)body.Length, .. body, 0xEE];
        var r = Parse(message);
        Assert.Equal(ParseStatus.Done, r.Status);
        Assert.Equal(1, (int)r.Settings!["a"]!);
        Assert.Equal(new byte[] { 0xEE }, r.Left);
    }

    [Fact]
    public void Settings_length_bytes_are_not_little_endian()
    {
        // 07 00 00 00 is 117 440 512 big-endian: far over the limit, so refused at once.
        var r = Parse([0x07, 0x00, 0x00, 0x00, .. "{\"a\":1}"u8.ToArray()]);
        Assert.Equal(ParseStatus.Invalid, r.Status);
        Assert.Equal(Socks5.ReplySettingsTooLarge, r.Error.Reply);
    }

    [Fact]
    public void Settings_of_zero_length_are_an_empty_object_and_consume_only_the_length()
    {
        var r = Parse([0x00, 0x00, 0x00, 0x00, 0x05, 0x01]);
        Assert.Equal(ParseStatus.Done, r.Status);
        Assert.NotNull(r.Settings);
        Assert.Empty(r.Settings!);
        Assert.Equal(new byte[] { 0x05, 0x01 }, r.Left);
    }

    [Theory]
    [InlineData(Socks5.MaxSettingsBytes + 1)]
    [InlineData(0x00100000)]
    [InlineData(0x7FFFFFFF)]
    [InlineData(unchecked((int)0x80000000))]
    [InlineData(-1)]
    public void Settings_length_over_64KiB_is_refused_with_10_as_soon_as_the_length_is_read(int length)
    {
        byte[] header = new byte[4];
        BinaryPrimitives.WriteInt32BigEndian(header, length);
        foreach (var (shape, sequence) in Sequences.AllShapes(header))
        {
            var r = Parse(sequence);
            Assert.True(r.Status == ParseStatus.Invalid, shape);
            Assert.Equal(Socks5.ReplySettingsTooLarge, r.Error.Reply);
            Assert.Contains(((uint)length).ToString(System.Globalization.CultureInfo.InvariantCulture), r.Error.Message);
        }
    }

    [Fact]
    public void Settings_of_exactly_64KiB_are_accepted()
    {
        string json = "{\"pad\":\"" + new string('x', Socks5.MaxSettingsBytes - 10) + "\"}";
        Assert.Equal(Socks5.MaxSettingsBytes, Encoding.UTF8.GetByteCount(json));
        var r = Parse(Block(json));
        Assert.Equal(ParseStatus.Done, r.Status);
        Assert.Equal(Socks5.MaxSettingsBytes - 10, ((string)r.Settings!["pad"]!).Length);
        Assert.Empty(r.Left);
    }

    [Fact]
    public void Settings_of_64KiB_wait_for_the_whole_block()
    {
        string json = "{\"pad\":\"" + new string('x', Socks5.MaxSettingsBytes - 10) + "\"}";
        byte[] message = Block(json);
        foreach (int cut in new[] { 4, 5, 4096, message.Length - 1 })
        {
            var r = Parse(new ReadOnlySequence<byte>(message, 0, cut));
            Assert.Equal(ParseStatus.Incomplete, r.Status);
            Assert.Equal(cut, r.Left.Length);
        }
    }

    [Theory]
    [InlineData(new byte[] { 0xFF })]
    [InlineData(new byte[] { 0x7B, 0x22, 0x61, 0x22, 0x3A, 0x22, 0xC3, 0x22, 0x7D })] // {"a":"<lone lead byte>"}
    [InlineData(new byte[] { 0x7B, 0x22, 0x61, 0x22, 0x3A, 0x22, 0xED, 0xA0, 0x80, 0x22, 0x7D })] // UTF-16 surrogate encoded in UTF-8
    [InlineData(new byte[] { 0x7B, 0x22, 0x61, 0x22, 0x3A, 0x22, 0xC0, 0xAF, 0x22, 0x7D })] // overlong '/'
    [InlineData(new byte[] { 0x7B, 0x7D, 0xE2, 0x82 })] // truncated 3-byte sequence at the end
    public void Settings_that_are_not_UTF8_are_refused_with_12_after_consuming_the_block(byte[] body)
    {
        var r = Parse([.. Block(body), 0x42]);
        Assert.Equal(ParseStatus.Invalid, r.Status);
        Assert.Equal(Socks5.ReplySettingsBadJson, r.Error.Reply);
        Assert.Contains("UTF-8", r.Error.Message);
        Assert.Equal(new byte[] { 0x42 }, r.Left);
    }

    [Theory]
    [InlineData("{")]
    [InlineData("}")]
    [InlineData("{\"a\":}")]
    [InlineData("{\"a\" 1}")]
    [InlineData("nope")]
    [InlineData(" ")]
    [InlineData("\"unterminated")]
    public void Settings_that_are_not_JSON_are_refused_with_12_after_consuming_the_block(string text)
    {
        var r = Parse([.. Block(text), 0x42]);
        Assert.Equal(ParseStatus.Invalid, r.Status);
        Assert.Equal(Socks5.ReplySettingsBadJson, r.Error.Reply);
        Assert.Equal(new byte[] { 0x42 }, r.Left);
    }

    [Theory]
    [InlineData("{} x")]
    [InlineData("{}{}")]
    [InlineData("{} {\"a\":1}")]
    [InlineData("{}}")]
    [InlineData("{}]")]
    [InlineData("{} 1")]
    [InlineData("{}\"s\"")]
    public void Settings_with_text_after_the_object_are_refused_with_12(string text)
    {
        var r = Parse(Block(text));
        Assert.Equal(ParseStatus.Invalid, r.Status);
        Assert.Equal(Socks5.ReplySettingsBadJson, r.Error.Reply);
        Assert.Empty(r.Left);
    }

    [Theory]
    [InlineData("{} ")]
    [InlineData(" {}\r\n\t")]
    public void Settings_with_surrounding_whitespace_are_accepted(string text)
    {
        var r = Parse(Block(text));
        Assert.Equal(ParseStatus.Done, r.Status);
        Assert.Empty(r.Settings!);
    }

    [Theory]
    [InlineData("[]", "Array")]
    [InlineData("[{\"a\":1}]", "Array")]
    [InlineData("1", "Integer")]
    [InlineData("1.5", "Float")]
    [InlineData("\"text\"", "String")]
    [InlineData("true", "Boolean")]
    [InlineData("null", "Null")]
    public void Settings_that_are_a_JSON_value_other_than_an_object_are_refused_with_12(string text, string type)
    {
        var r = Parse(Block(text));
        Assert.Equal(ParseStatus.Invalid, r.Status);
        Assert.Equal(Socks5.ReplySettingsBadJson, r.Error.Reply);
        Assert.Contains(type, r.Error.Message);
        Assert.Null(r.Settings);
        Assert.Empty(r.Left);
    }

    [Fact]
    public void Settings_nested_deeper_than_32_are_refused_with_12()
    {
        string deep = string.Concat(Enumerable.Repeat("{\"a\":", 40)) + "1" + new string('}', 40);
        var r = Parse(Block(deep));
        Assert.Equal(ParseStatus.Invalid, r.Status);
        Assert.Equal(Socks5.ReplySettingsBadJson, r.Error.Reply);
    }

    [Fact]
    public void Settings_object_is_returned_with_nested_values_and_dates_kept_as_strings()
    {
        var r = Parse(Block("{\"cert\":\"abc\",\"iat-mode\":0,\"list\":[1,2],\"o\":{\"x\":null},\"when\":\"2024-01-01T00:00:00Z\"}"));
        Assert.Equal(ParseStatus.Done, r.Status);
        var s = r.Settings!;
        Assert.Equal("abc", (string)s["cert"]!);
        Assert.Equal(0, (int)s["iat-mode"]!);
        Assert.Equal(new[] { 1, 2 }, s["list"]!.Values<int>());
        Assert.Equal(JTokenType.Null, s["o"]!["x"]!.Type);
        Assert.Equal(JTokenType.String, s["when"]!.Type);
        Assert.Equal("2024-01-01T00:00:00Z", (string)s["when"]!);
    }

    [Fact]
    public void Settings_with_multibyte_UTF8_parse_across_every_segment_boundary()
    {
        byte[] message = [.. Block("{\"k\":\"é€😀\"}"), 0x01];
        ParserHarness.ForEveryShape(message, (ref ReadOnlySequence<byte> b) =>
        {
            var status = Socks5Parser.TryParseSettings(ref b, out var s, out _);
            if (status == ParseStatus.Done) Assert.Equal("é€😀", (string)s!["k"]!);
            return status;
        }, (shape, status, rest) =>
        {
            Assert.True(status == ParseStatus.Done, shape);
            Assert.Equal(new byte[] { 0x01 }, rest);
        });
    }

    [Fact]
    public void Every_truncated_settings_block_is_Incomplete_and_consumes_nothing()
    {
        ParserHarness.AssertEveryProperPrefixIsIncomplete(Block("{\"k\":\"é\",\"n\":[1]}"), Step);
        ParserHarness.AssertEveryProperPrefixIsIncomplete([0, 0, 0, 0], Step);
    }
}
