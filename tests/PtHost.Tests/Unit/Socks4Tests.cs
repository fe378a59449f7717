using System.Buffers;
using System.Net;
using System.Text;
using PtHost.Socks;
using PtHost.Tests.Unit.Support;

namespace PtHost.Tests.Unit;

/// <summary>SOCKS4 and SOCKS4a requests, as a PT 1.0 client sends them (spec/ipc.md §5.8).</summary>
public class Socks4Tests
{
    private static byte[] Request(string ip, ushort port, string user, string? host = null, byte cmd = 1) =>
        [4, cmd, (byte)(port >> 8), (byte)port, .. IPAddress.Parse(ip).GetAddressBytes(), .. Encoding.UTF8.GetBytes(user), 0,
         .. host is null ? Array.Empty<byte>() : [.. Encoding.UTF8.GetBytes(host), 0]];

    private static readonly ParseStep Step = (ref ReadOnlySequence<byte> b) => Socks4.TryParseRequest(ref b, out _, out _, out _);

    [Fact]
    public void SOCKS4_request_gives_the_IPv4_destination_and_USERID()
    {
        ParserHarness.ForEveryShape([.. Request("192.0.2.7", 443, "cert=abc;iat-mode=0"), 0xAA], (ref ReadOnlySequence<byte> b) =>
        {
            var status = Socks4.TryParseRequest(ref b, out var d, out var user, out _);
            Assert.Equal("192.0.2.7:443", d!.ToString());
            Assert.Equal("cert=abc;iat-mode=0", user);
            return status;
        }, (shape, status, rest) =>
        {
            Assert.Equal(ParseStatus.Done, status);
            Assert.Equal([0xAA], rest); // pipelined bytes stay for the relay
        });
    }

    [Fact]
    public void SOCKS4a_request_with_0_0_0_x_carries_a_host_name()
    {
        var buffer = new ReadOnlySequence<byte>(Request("0.0.0.1", 80, "", "bridge.example"));
        Assert.Equal(ParseStatus.Done, Socks4.TryParseRequest(ref buffer, out var d, out var user, out _));
        Assert.Equal("bridge.example", d!.Host);
        Assert.Equal(80, d.Port);
        Assert.Equal("", user);
        Assert.True(buffer.IsEmpty);
    }

    [Fact]
    public void Every_proper_prefix_is_incomplete()
    {
        ParserHarness.AssertEveryProperPrefixIsIncomplete(Request("10.0.0.1", 1, "k=v"), Step);
        ParserHarness.AssertEveryProperPrefixIsIncomplete(Request("0.0.0.9", 1, "k=v", "example.org"), Step);
    }

    [Theory]
    [InlineData(2, "BIND")]
    [InlineData(3, "command 3")]
    public void Commands_other_than_CONNECT_are_rejected_with_91(byte cmd, string words)
    {
        var buffer = new ReadOnlySequence<byte>(Request("10.0.0.1", 1, "", cmd: cmd));
        Assert.Equal(ParseStatus.Invalid, Socks4.TryParseRequest(ref buffer, out _, out _, out var error));
        Assert.Equal(Socks4.ReplyRejected, error.Reply);
        Assert.Contains(words, error.Message);
    }

    [Fact]
    public void Port_zero_is_rejected()
    {
        var buffer = new ReadOnlySequence<byte>(Request("10.0.0.1", 0, ""));
        Assert.Equal(ParseStatus.Invalid, Socks4.TryParseRequest(ref buffer, out _, out _, out _));
    }

    [Fact]
    public void A_USERID_that_never_ends_is_rejected_once_longer_than_the_limit()
    {
        byte[] head = [4, 1, 0, 80, 10, 0, 0, 1];
        var open = new ReadOnlySequence<byte>([.. head, .. Enumerable.Repeat((byte)'a', Socks4.MaxUserIdBytes)]);
        Assert.Equal(ParseStatus.Incomplete, Socks4.TryParseRequest(ref open, out _, out _, out _));
        var tooLong = new ReadOnlySequence<byte>([.. head, .. Enumerable.Repeat((byte)'a', Socks4.MaxUserIdBytes + 1)]);
        Assert.Equal(ParseStatus.Invalid, Socks4.TryParseRequest(ref tooLong, out _, out _, out var error));
        Assert.Contains("USERID", error.Message);
    }

    [Theory]
    [InlineData("")]
    [InlineData("a b")]
    public void SOCKS4a_host_names_that_are_not_host_names_are_rejected(string host)
    {
        var buffer = new ReadOnlySequence<byte>(Request("0.0.0.1", 80, "", host));
        Assert.Equal(ParseStatus.Invalid, Socks4.TryParseRequest(ref buffer, out _, out _, out _));
    }

    [Fact]
    public void A_USERID_that_is_not_UTF8_is_rejected()
    {
        var buffer = new ReadOnlySequence<byte>([4, 1, 0, 80, 10, 0, 0, 1, 0xC3, 0x28, 0]);
        Assert.Equal(ParseStatus.Invalid, Socks4.TryParseRequest(ref buffer, out _, out _, out var error));
        Assert.Contains("UTF-8", error.Message);
    }

    [Fact]
    public void Version_5_is_not_a_SOCKS4_request()
    {
        var buffer = new ReadOnlySequence<byte>([5, 1, 0]);
        Assert.Equal(ParseStatus.Invalid, Socks4.TryParseRequest(ref buffer, out _, out _, out _));
    }

    [Fact]
    public void Replies_are_eight_bytes_with_the_bound_IPv4_address()
    {
        var reply = new byte[8];
        Assert.Equal(8, Socks4.WriteReply(reply, Socks4.ReplyGranted, new IPEndPoint(IPAddress.Parse("127.0.0.1"), 0x1234)));
        Assert.Equal(new byte[] { 0, 0x5A, 0x12, 0x34, 127, 0, 0, 1 }, reply);
        Assert.Equal(8, Socks4.WriteReply(reply, Socks4.ReplyRejected, new IPEndPoint(IPAddress.IPv6Loopback, 5)));
        Assert.Equal(new byte[] { 0, 0x5B, 0, 0, 0, 0, 0, 0 }, reply);
    }
}
