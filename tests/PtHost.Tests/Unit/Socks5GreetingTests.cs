using System.Buffers;
using PtHost.Socks;
using PtHost.Tests.Unit.Support;

namespace PtHost.Tests.Unit;

public class Socks5GreetingTests
{
    private static (ParseStatus Status, byte Method, Socks5Error Error, byte[] Left) Parse(ReadOnlySequence<byte> sequence)
    {
        var buffer = sequence;
        var status = Socks5Parser.TryParseGreeting(ref buffer, out byte method, out var error);
        return (status, method, error, buffer.ToArray());
    }

    private static (ParseStatus Status, byte Method, Socks5Error Error, byte[] Left) Parse(params byte[] bytes) =>
        Parse(new ReadOnlySequence<byte>(bytes));

    [Theory]
    [InlineData(new byte[] { 0x00 }, Socks5.MethodNoAuth)]
    [InlineData(new byte[] { 0x02 }, Socks5.MethodUserPass)]
    [InlineData(new byte[] { 0x80 }, Socks5.MethodPtPrivate)]
    [InlineData(new byte[] { 0x09 }, Socks5.MethodJsonParameters)]
    [InlineData(new byte[] { 0x00, 0x02 }, Socks5.MethodUserPass)]
    [InlineData(new byte[] { 0x02, 0x00 }, Socks5.MethodUserPass)]
    [InlineData(new byte[] { 0x00, 0x02, 0x80 }, Socks5.MethodPtPrivate)]
    [InlineData(new byte[] { 0x80, 0x09, 0x02, 0x00 }, Socks5.MethodJsonParameters)]
    [InlineData(new byte[] { 0x00, 0x09 }, Socks5.MethodJsonParameters)]
    [InlineData(new byte[] { 0x01, 0x03, 0x00 }, Socks5.MethodNoAuth)]
    public void Greeting_chooses_09_then_80_then_02_then_00(byte[] methods, byte expected)
    {
        var r = Parse([0x05, (byte)methods.Length, .. methods]);
        Assert.Equal(ParseStatus.Done, r.Status);
        Assert.Equal(expected, r.Method);
        Assert.Empty(r.Left);
    }

    [Theory]
    [InlineData(new byte[] { 0x01 })]
    [InlineData(new byte[] { 0x03, 0x04, 0x7F, 0x81, 0xFE })]
    [InlineData(new byte[] { 0xFF })]
    public void Greeting_without_an_acceptable_method_is_Done_with_FF(byte[] methods)
    {
        var r = Parse([0x05, (byte)methods.Length, .. methods]);
        Assert.Equal(ParseStatus.Done, r.Status);
        Assert.Equal(Socks5.MethodNoneAcceptable, r.Method);
        Assert.Empty(r.Left);
    }

    [Fact]
    public void Greeting_with_zero_methods_is_refused_with_FF()
    {
        var r = Parse(0x05, 0x00);
        Assert.Equal(ParseStatus.Invalid, r.Status);
        Assert.Equal(Socks5.MethodNoneAcceptable, r.Error.Reply);
        Assert.Contains("no methods", r.Error.Message);
    }

    [Theory]
    [InlineData(0x04)]
    [InlineData(0x00)]
    [InlineData(0x01)]
    [InlineData(0x06)]
    [InlineData(0x47)] // 'G' of "GET / HTTP/1.1"
    [InlineData(0xFF)]
    public void Greeting_with_version_other_than_5_is_refused_with_FF_from_the_first_byte(byte version)
    {
        var r = Parse(version);
        Assert.Equal(ParseStatus.Invalid, r.Status);
        Assert.Equal(Socks5.MethodNoneAcceptable, r.Error.Reply);
        Assert.Contains($"version {version}", r.Error.Message);
    }

    [Fact]
    public void Greeting_consumes_only_its_own_bytes()
    {
        var r = Parse(0x05, 0x02, 0x00, 0x02, 0x01, 0x09, 0x00, 0x55);
        Assert.Equal(ParseStatus.Done, r.Status);
        Assert.Equal(Socks5.MethodUserPass, r.Method);
        Assert.Equal(new byte[] { 0x01, 0x09, 0x00, 0x55 }, r.Left);
    }

    [Fact]
    public void Greeting_with_255_methods_is_parsed()
    {
        byte[] methods = Enumerable.Range(0, 255).Select(i => (byte)i).ToArray();
        var r = Parse([0x05, 0xFF, .. methods]);
        Assert.Equal(ParseStatus.Done, r.Status);
        Assert.Equal(Socks5.MethodJsonParameters, r.Method);
        Assert.Empty(r.Left);
    }

    [Fact]
    public void Greeting_with_fewer_methods_than_announced_is_Incomplete()
    {
        var r = Parse(0x05, 0x03, 0x00, 0x02);
        Assert.Equal(ParseStatus.Incomplete, r.Status);
        Assert.Equal(4, r.Left.Length);
    }

    [Theory]
    [InlineData(new byte[] { 0x05, 0x01, 0x00 })]
    [InlineData(new byte[] { 0x05, 0x04, 0x00, 0x02, 0x80, 0x09 })]
    public void Every_truncated_greeting_is_Incomplete_and_consumes_nothing(byte[] message) =>
        ParserHarness.AssertEveryProperPrefixIsIncomplete(message, (ref ReadOnlySequence<byte> b) => Socks5Parser.TryParseGreeting(ref b, out _, out _));

    [Fact]
    public void Greeting_parses_across_segment_boundaries()
    {
        byte[] message = [0x05, 0x04, 0x00, 0x02, 0x80, 0x09, 0xAA, 0xBB];
        foreach (var (shape, sequence) in Sequences.AllShapes(message))
        {
            var r = Parse(sequence);
            Assert.True(r.Status == ParseStatus.Done, shape);
            Assert.Equal(Socks5.MethodJsonParameters, r.Method);
            Assert.Equal(new byte[] { 0xAA, 0xBB }, r.Left);
        }
    }
}
