using System.Text;
using PtHost.Contract;

namespace PtHost.Tests.Unit;

public class SessionPreambleTests
{
    [Fact]
    public void Magic_is_PTP_then_version_1()
    {
        Assert.Equal(new byte[] { (byte)'P', (byte)'T', (byte)'P', 0x01 }, SessionPreamble.Magic.ToArray());
        Assert.Equal(6, SessionPreamble.HeaderLength);
    }

    [Fact]
    public void Request_without_destination_is_the_bare_header_with_length_0()
    {
        Assert.Equal(new byte[] { (byte)'P', (byte)'T', (byte)'P', 0x01, 0x00, 0x00 }, SessionPreamble.BuildRequest(null));
    }

    [Fact]
    public void Request_carries_host_port_after_a_big_endian_length()
    {
        byte[] request = SessionPreamble.BuildRequest(new Destination("example.org", 443));
        Assert.Equal("PTP\x01"u8.ToArray(), request[..4]);
        Assert.Equal(new byte[] { 0x00, 15 }, request[4..6]);
        Assert.Equal("example.org:443", Encoding.ASCII.GetString(request, 6, request.Length - 6));
    }

    [Theory]
    [InlineData("example.org:443")]
    [InlineData("192.0.2.1:80")]
    [InlineData("[2001:db8::1]:8443")]
    [InlineData("[::1]:1")]
    [InlineData("a:65535")]
    public void Request_round_trips_through_ParseHeader_and_ParseDestination(string text)
    {
        var destination = Destination.Parse(text);
        byte[] request = SessionPreamble.BuildRequest(destination);
        int length = SessionPreamble.ParseHeader(request);
        Assert.Equal(request.Length - SessionPreamble.HeaderLength, length);
        Assert.Equal(destination, SessionPreamble.ParseDestination(request.AsSpan(SessionPreamble.HeaderLength, length)));
    }

    [Fact]
    public void Request_with_longest_domain_round_trips()
    {
        var destination = new Destination(new string('a', 255), 65535);
        byte[] request = SessionPreamble.BuildRequest(destination);
        int length = SessionPreamble.ParseHeader(request);
        Assert.Equal(261, length);
        Assert.Equal(destination, SessionPreamble.ParseDestination(request.AsSpan(SessionPreamble.HeaderLength)));
    }

    [Fact]
    public void Request_without_destination_round_trips_to_null()
    {
        byte[] request = SessionPreamble.BuildRequest(null);
        Assert.Equal(0, SessionPreamble.ParseHeader(request));
        Assert.Null(SessionPreamble.ParseDestination(request.AsSpan(SessionPreamble.HeaderLength)));
    }

    [Fact]
    public void ParseHeader_reads_only_the_first_six_bytes()
    {
        byte[] header = [.. "PTP\x01"u8, 0x00, 0x03, .. "a:1"u8, 0xEE, 0xFF];
        Assert.Equal(3, SessionPreamble.ParseHeader(header));
    }

    [Theory]
    [InlineData(new byte[0])]
    [InlineData(new byte[] { (byte)'P', (byte)'T', (byte)'P', 0x01, 0x00 })]
    [InlineData(new byte[] { (byte)'P', (byte)'T', (byte)'P', 0x02, 0x00, 0x00 })]
    [InlineData(new byte[] { (byte)'P', (byte)'T', (byte)'X', 0x01, 0x00, 0x00 })]
    [InlineData(new byte[] { (byte)'p', (byte)'t', (byte)'p', 0x01, 0x00, 0x00 })]
    [InlineData(new byte[] { 0x05, 0x01, 0x00, 0x01, 0x00, 0x00 })]
    [InlineData(new byte[] { 0x16, 0x03, 0x01, 0x02, 0x00, 0x01 })]
    public void ParseHeader_refuses_short_or_foreign_headers(byte[] header) =>
        Assert.Equal(-1, SessionPreamble.ParseHeader(header));

    [Theory]
    [InlineData(262, 262)]
    [InlineData(263, -1)]
    [InlineData(0x0100, 256)]
    [InlineData(0xFFFF, -1)]
    public void ParseHeader_refuses_destination_longer_than_262(int length, int expected)
    {
        byte[] header = [.. "PTP\x01"u8, (byte)(length >> 8), (byte)length];
        Assert.Equal(expected, SessionPreamble.ParseHeader(header));
    }

    [Theory]
    [InlineData("example.org")]
    [InlineData("example.org:0")]
    [InlineData("example.org:")]
    [InlineData("example.org:65536")]
    [InlineData(":80")]
    [InlineData("::1:80")]
    [InlineData("[::1]")]
    [InlineData("a b:80")]
    [InlineData("bücher.example:80")]
    [InlineData(" example.org:80")]
    public void ParseDestination_refuses_anything_but_host_and_non_zero_port(string text)
    {
        var e = Assert.Throws<FormatException>(() => SessionPreamble.ParseDestination(Encoding.UTF8.GetBytes(text)));
        Assert.Contains("not host:port", e.Message);
    }

    [Theory]
    [InlineData(new byte[] { 0xFF, (byte)':', (byte)'1' })]
    [InlineData(new byte[] { (byte)'a', 0xC3, (byte)':', (byte)'1' })]
    public void ParseDestination_refuses_non_UTF8(byte[] bytes)
    {
        var e = Assert.Throws<FormatException>(() => SessionPreamble.ParseDestination(bytes));
        Assert.Contains("not UTF-8", e.Message);
    }
}
