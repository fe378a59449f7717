using System.Net;
using PtHost.Socks;

namespace PtHost.Tests.Unit;

public class Socks5Tests
{
    [Theory]
    [InlineData(new byte[] { 0x00, 0x02, 0x80, 0x09 }, 0x09)]
    [InlineData(new byte[] { 0x09, 0x80, 0x02, 0x00 }, 0x09)]
    [InlineData(new byte[] { 0x00, 0x02, 0x80 }, 0x80)]
    [InlineData(new byte[] { 0x80, 0x00 }, 0x80)]
    [InlineData(new byte[] { 0x00, 0x02 }, 0x02)]
    [InlineData(new byte[] { 0x02, 0x00, 0x02 }, 0x02)]
    [InlineData(new byte[] { 0x00 }, 0x00)]
    [InlineData(new byte[] { 0x00, 0x00 }, 0x00)]
    [InlineData(new byte[] { 0x01, 0x03, 0x08, 0x0A, 0x81, 0xFE }, 0xFF)]
    [InlineData(new byte[] { 0xFF }, 0xFF)]
    [InlineData(new byte[0], 0xFF)]
    public void ChooseMethod_prefers_09_then_80_then_02_then_00_else_FF(byte[] offered, byte expected) =>
        Assert.Equal(expected, Socks5.ChooseMethod(offered));

    [Fact]
    public void WriteReply_without_bound_address_is_IPv4_zero_in_10_bytes()
    {
        var buffer = Enumerable.Repeat((byte)0xCC, 32).ToArray();
        int n = Socks5.WriteReply(buffer, 0x05);
        Assert.Equal(10, n);
        Assert.Equal(new byte[] { 0x05, 0x05, 0x00, 0x01, 0, 0, 0, 0, 0, 0 }, buffer[..10]);
        Assert.All(buffer[10..], b => Assert.Equal(0xCC, b));
    }

    [Fact]
    public void WriteReply_with_IPv4_bound_address_writes_address_and_big_endian_port()
    {
        var buffer = new byte[32];
        int n = Socks5.WriteReply(buffer, Socks5.ReplySucceeded, new IPEndPoint(IPAddress.Parse("192.0.2.1"), 0x1F90));
        Assert.Equal(10, n);
        Assert.Equal(new byte[] { 0x05, 0x00, 0x00, 0x01, 192, 0, 2, 1, 0x1F, 0x90 }, buffer[..10]);
    }

    [Fact]
    public void WriteReply_with_IPv6_bound_address_writes_22_bytes()
    {
        var buffer = new byte[32];
        var ip = IPAddress.Parse("2001:db8::1");
        int n = Socks5.WriteReply(buffer, Socks5.ReplySucceeded, new IPEndPoint(ip, 65535));
        Assert.Equal(22, n);
        Assert.Equal(new byte[] { 0x05, 0x00, 0x00, 0x04 }, buffer[..4]);
        Assert.Equal(ip.GetAddressBytes(), buffer[4..20]);
        Assert.Equal(new byte[] { 0xFF, 0xFF }, buffer[20..22]);
    }

    [Fact]
    public void WriteReply_with_IPv4_mapped_IPv6_bound_address_writes_IPv4()
    {
        var buffer = new byte[32];
        int n = Socks5.WriteReply(buffer, Socks5.ReplySucceeded, new IPEndPoint(IPAddress.Parse("::ffff:10.1.2.3"), 443));
        Assert.Equal(10, n);
        Assert.Equal(new byte[] { 0x05, 0x00, 0x00, 0x01, 10, 1, 2, 3, 0x01, 0xBB }, buffer[..10]);
    }

    [Theory]
    [InlineData(Socks5.ReplySettingsTooLarge)]
    [InlineData(Socks5.ReplySettingsTimeout)]
    [InlineData(Socks5.ReplySettingsBadJson)]
    [InlineData(Socks5.ReplySettingsInvalidKeys)]
    [InlineData(0x07)]
    public void WriteReply_carries_the_reply_code(byte reply)
    {
        var buffer = new byte[10];
        Socks5.WriteReply(buffer, reply);
        Assert.Equal(reply, buffer[1]);
    }

    [Fact]
    public void WriteReply_into_too_small_IPv6_buffer_throws_rather_than_truncating()
    {
        var buffer = new byte[10];
        Assert.ThrowsAny<ArgumentException>(() => Socks5.WriteReply(buffer, 0, new IPEndPoint(IPAddress.IPv6Loopback, 1)));
    }

    [Fact]
    public void Settings_reply_codes_follow_the_PT3_JSON_parameter_block()
    {
        Assert.Equal(0x10, Socks5.ReplySettingsTooLarge);
        Assert.Equal(0x11, Socks5.ReplySettingsTimeout);
        Assert.Equal(0x12, Socks5.ReplySettingsBadJson);
        Assert.Equal(0x13, Socks5.ReplySettingsInvalidKeys);
        Assert.Equal(65536, Socks5.MaxSettingsBytes);
    }
}
