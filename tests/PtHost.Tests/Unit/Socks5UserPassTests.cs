using System.Buffers;
using System.Text;
using PtHost.Socks;
using PtHost.Tests.Unit.Support;

namespace PtHost.Tests.Unit;

public class Socks5UserPassTests
{
    private static byte[] Message(byte[] user, byte[] pass, byte version = 0x01) =>
        [version, (byte)user.Length, .. user, (byte)pass.Length, .. pass];

    private static byte[] Message(string user, string pass) => Message(Encoding.UTF8.GetBytes(user), Encoding.UTF8.GetBytes(pass));

    private static (ParseStatus Status, string? Args, Socks5Error Error, byte[] Left) Parse(ReadOnlySequence<byte> sequence)
    {
        var buffer = sequence;
        var status = Socks5Parser.TryParseUserPass(ref buffer, out var args, out var error);
        return (status, args, error, buffer.ToArray());
    }

    private static (ParseStatus Status, string? Args, Socks5Error Error, byte[] Left) Parse(byte[] bytes) =>
        Parse(new ReadOnlySequence<byte>(bytes));

    [Fact]
    public void UserPass_concatenates_username_and_password_into_the_argument_string()
    {
        var r = Parse(Message("shared-secret=rahasia;secrets-fi", "le=/tmp/blob"));
        Assert.Equal(ParseStatus.Done, r.Status);
        Assert.Equal("shared-secret=rahasia;secrets-file=/tmp/blob", r.Args);
        Assert.Empty(r.Left);
    }

    [Fact]
    public void UserPass_lone_NUL_password_means_empty()
    {
        var r = Parse(Message(Encoding.UTF8.GetBytes("k=v"), [0x00]));
        Assert.Equal(ParseStatus.Done, r.Status);
        Assert.Equal("k=v", r.Args);
    }

    [Fact]
    public void UserPass_lone_NUL_password_means_empty_across_segment_boundaries()
    {
        byte[] message = [.. Message(Encoding.UTF8.GetBytes("k=v"), [0x00]), 0x05];
        ParserHarness.ForEveryShape(message, (ref ReadOnlySequence<byte> b) =>
        {
            var status = Socks5Parser.TryParseUserPass(ref b, out var args, out _);
            Assert.Equal("k=v", args);
            return status;
        }, (shape, status, rest) =>
        {
            Assert.True(status == ParseStatus.Done, shape);
            Assert.Equal(new byte[] { 0x05 }, rest);
        });
    }

    [Fact]
    public void UserPass_NUL_is_kept_when_it_is_not_the_whole_password()
    {
        var r = Parse(Message(Encoding.UTF8.GetBytes("a=b"), [0x00, 0x00]));
        Assert.Equal(ParseStatus.Done, r.Status);
        Assert.Equal("a=b\0\0", r.Args);
    }

    [Fact]
    public void UserPass_with_empty_password_is_the_username()
    {
        var r = Parse(Message("a=b", ""));
        Assert.Equal(ParseStatus.Done, r.Status);
        Assert.Equal("a=b", r.Args);
    }

    [Fact]
    public void UserPass_with_255_byte_fields_is_parsed()
    {
        string user = new('u', 255), pass = new('p', 255);
        var r = Parse(Message(user, pass));
        Assert.Equal(ParseStatus.Done, r.Status);
        Assert.Equal(user + pass, r.Args);
    }

    [Fact]
    public void UserPass_consumes_only_its_own_bytes()
    {
        var r = Parse([.. Message("a=", "b"), 0x05, 0x01, 0x00]);
        Assert.Equal(ParseStatus.Done, r.Status);
        Assert.Equal("a=b", r.Args);
        Assert.Equal(new byte[] { 0x05, 0x01, 0x00 }, r.Left);
    }

    [Theory]
    [InlineData(0x00)]
    [InlineData(0x02)]
    [InlineData(0x05)]
    public void UserPass_version_other_than_1_is_refused_with_status_01_from_the_first_byte(byte version)
    {
        var r = Parse([version]);
        Assert.Equal(ParseStatus.Invalid, r.Status);
        Assert.Equal(0x01, r.Error.Reply);
        Assert.Contains("version", r.Error.Message);
    }

    [Theory]
    [InlineData(new byte[] { 0xFF }, new byte[] { 0x61 })]
    [InlineData(new byte[] { 0x61 }, new byte[] { 0xC3 })]
    [InlineData(new byte[] { 0xC3 }, new byte[] { 0xA9 })] // é split between the two fields is not UTF-8 in either
    [InlineData(new byte[] { 0x61 }, new byte[] { 0xFF })] // lone non-NUL byte is decoded, not treated as empty
    public void UserPass_that_is_not_UTF8_is_refused_with_status_01_after_consuming_the_message(byte[] user, byte[] pass)
    {
        var r = Parse([.. Message(user, pass), 0x77]);
        Assert.Equal(ParseStatus.Invalid, r.Status);
        Assert.Equal(0x01, r.Error.Reply);
        Assert.Contains("UTF-8", r.Error.Message);
        Assert.Equal(new byte[] { 0x77 }, r.Left);
    }

    [Fact]
    public void UserPass_multibyte_UTF8_parses_across_every_segment_boundary()
    {
        byte[] message = Message("ключ=зна", "чение€😀");
        ParserHarness.ForEveryShape(message, (ref ReadOnlySequence<byte> b) =>
        {
            var status = Socks5Parser.TryParseUserPass(ref b, out var args, out _);
            Assert.Equal("ключ=значение€😀", args);
            return status;
        }, (shape, status, rest) =>
        {
            Assert.True(status == ParseStatus.Done, shape);
            Assert.Empty(rest);
        });
    }

    [Theory]
    [InlineData("k=v", "\0")]
    [InlineData("abc=", "xyz")]
    [InlineData("", "")]
    public void Every_truncated_UserPass_message_is_Incomplete_and_consumes_nothing(string user, string pass) =>
        ParserHarness.AssertEveryProperPrefixIsIncomplete(Message(user, pass),
            (ref ReadOnlySequence<byte> b) => Socks5Parser.TryParseUserPass(ref b, out _, out _));
}
