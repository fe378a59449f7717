using System.Buffers;
using System.Net;
using System.Text;
using PtHost.Contract;
using PtHost.Socks;
using PtHost.Tests.Unit.Support;

namespace PtHost.Tests.Unit;

public class Socks5RequestTests
{
    private static byte[] Request(byte atyp, byte[] address, ushort port, byte cmd = 0x01, byte version = 0x05, byte rsv = 0x00) =>
        [version, cmd, rsv, atyp, .. address, (byte)(port >> 8), (byte)port];

    private static byte[] IPv4(string ip, ushort port, byte cmd = 0x01) => Request(0x01, IPAddress.Parse(ip).GetAddressBytes(), port, cmd);
    private static byte[] IPv6(string ip, ushort port, byte cmd = 0x01) => Request(0x04, IPAddress.Parse(ip).GetAddressBytes(), port, cmd);
    private static byte[] Domain(byte[] name, ushort port, byte cmd = 0x01) => Request(0x03, [(byte)name.Length, .. name], port, cmd);
    private static byte[] Domain(string name, ushort port, byte cmd = 0x01) => Domain(Encoding.UTF8.GetBytes(name), port, cmd);

    private static (ParseStatus Status, Destination? Destination, Socks5Error Error, byte[] Left) Parse(ReadOnlySequence<byte> sequence)
    {
        var buffer = sequence;
        var status = Socks5Parser.TryParseRequest(ref buffer, out var destination, out var error);
        return (status, destination, error, buffer.ToArray());
    }

    private static (ParseStatus Status, Destination? Destination, Socks5Error Error, byte[] Left) Parse(byte[] bytes) =>
        Parse(new ReadOnlySequence<byte>(bytes));

    private static readonly ParseStep Step = (ref ReadOnlySequence<byte> b) => Socks5Parser.TryParseRequest(ref b, out _, out _);

    [Theory]
    [InlineData("127.0.0.1", 80)]
    [InlineData("0.0.0.0", 0)]
    [InlineData("192.0.2.255", 443)]
    [InlineData("255.255.255.255", 65535)]
    public void Request_with_IPv4_address_gives_dotted_quad_and_port(string ip, int port)
    {
        var r = Parse(IPv4(ip, (ushort)port));
        Assert.Equal(ParseStatus.Done, r.Status);
        Assert.Equal(ip, r.Destination!.Host);
        Assert.Equal(port, r.Destination.Port);
        Assert.Equal(IPAddress.Parse(ip), r.Destination.Address);
        Assert.Empty(r.Left);
    }

    [Theory]
    [InlineData(0x8000, 32768)]
    [InlineData(0xFFFF, 65535)]
    [InlineData(0x0102, 258)]
    public void Request_port_is_big_endian_and_unsigned(int wire, int expected)
    {
        var r = Parse(Request(0x01, [10, 0, 0, 1], (ushort)wire));
        Assert.Equal(ParseStatus.Done, r.Status);
        Assert.Equal(expected, r.Destination!.Port);
    }

    [Theory]
    [InlineData("::1", "::1")]
    [InlineData("2001:db8::1", "2001:db8::1")]
    [InlineData("2001:0db8:0000:0000:0000:ff00:0042:8329", "2001:db8::ff00:42:8329")]
    [InlineData("::", "::")]
    public void Request_with_IPv6_address_gives_canonical_IPv6_text(string ip, string host)
    {
        var r = Parse(IPv6(ip, 443));
        Assert.Equal(ParseStatus.Done, r.Status);
        Assert.Equal(host, r.Destination!.Host);
        Assert.Equal(443, r.Destination.Port);
        Assert.Equal(System.Net.Sockets.AddressFamily.InterNetworkV6, r.Destination.Address!.AddressFamily);
        Assert.Equal($"[{host}]:443", r.Destination.ToString());
    }

    [Theory]
    [InlineData("::ffff:192.0.2.1", "192.0.2.1")]
    [InlineData("::ffff:127.0.0.1", "127.0.0.1")]
    [InlineData("::ffff:0.0.0.0", "0.0.0.0")]
    public void Request_with_IPv4_mapped_IPv6_address_gives_IPv4_text(string ip, string host)
    {
        var r = Parse(IPv6(ip, 8080));
        Assert.Equal(ParseStatus.Done, r.Status);
        Assert.Equal(host, r.Destination!.Host);
        Assert.Equal(System.Net.Sockets.AddressFamily.InterNetwork, r.Destination.Address!.AddressFamily);
        Assert.Equal($"{host}:8080", r.Destination.ToString());
    }

    [Fact]
    public void Request_with_IPv4_compatible_IPv6_address_stays_IPv6()
    {
        var r = Parse(IPv6("::192.0.2.1", 1));
        Assert.Equal(ParseStatus.Done, r.Status);
        Assert.Equal(System.Net.Sockets.AddressFamily.InterNetworkV6, r.Destination!.Address!.AddressFamily);
    }

    [Theory]
    [InlineData("example.org")]
    [InlineData("a")]
    [InlineData("xn--bcher-kva.example")]
    [InlineData("under_score.example")]
    [InlineData("192.0.2.1")]
    public void Request_with_domain_gives_the_name(string name)
    {
        var r = Parse(Domain(name, 443));
        Assert.Equal(ParseStatus.Done, r.Status);
        Assert.Equal(name, r.Destination!.Host);
        Assert.Equal(443, r.Destination.Port);
    }

    [Fact]
    public void Request_with_255_byte_domain_is_accepted()
    {
        string name = string.Join('.', Enumerable.Repeat(new string('a', 63), 4))[..255];
        var r = Parse(Domain(name, 1));
        Assert.Equal(ParseStatus.Done, r.Status);
        Assert.Equal(name, r.Destination!.Host);
    }

    [Fact]
    public void Request_with_empty_domain_is_refused_with_04_after_consuming_the_request()
    {
        var r = Parse([.. Domain("", 80), 0x99]);
        Assert.Equal(ParseStatus.Invalid, r.Status);
        Assert.Equal(0x04, r.Error.Reply);
        Assert.Equal(new byte[] { 0x99 }, r.Left);
    }

    [Theory]
    [InlineData("a b")]
    [InlineData("host:80")]
    [InlineData("::1")]
    [InlineData("[::1]")]
    [InlineData("a/b")]
    [InlineData("a\\b")]
    [InlineData("user@host")]
    [InlineData("tab\there")]
    [InlineData("nul\0")]
    [InlineData("del\u007f")]
    [InlineData("bücher.example")]
    public void Request_with_invalid_domain_is_refused_with_04_after_consuming_the_request(string name)
    {
        var r = Parse([.. Domain(name, 80), 0x99]);
        Assert.Equal(ParseStatus.Invalid, r.Status);
        Assert.Equal(0x04, r.Error.Reply);
        Assert.Null(r.Destination);
        Assert.Equal(new byte[] { 0x99 }, r.Left);
    }

    [Theory]
    [InlineData(new byte[] { 0xFF })]
    [InlineData(new byte[] { 0x61, 0xC3 })]
    [InlineData(new byte[] { 0xC0, 0xAE })]
    public void Request_with_non_UTF8_domain_is_refused_with_04_after_consuming_the_request(byte[] name)
    {
        var r = Parse([.. Domain(name, 80), 0x99]);
        Assert.Equal(ParseStatus.Invalid, r.Status);
        Assert.Equal(0x04, r.Error.Reply);
        Assert.Equal(new byte[] { 0x99 }, r.Left);
    }

    [Theory]
    [InlineData(0x00)]
    [InlineData(0x02)]
    [InlineData(0x05)]
    [InlineData(0xFF)]
    public void Request_with_unknown_address_type_is_refused_with_08_from_the_header_alone(byte atyp)
    {
        var r = Parse([0x05, 0x01, 0x00, atyp]);
        Assert.Equal(ParseStatus.Invalid, r.Status);
        Assert.Equal(0x08, r.Error.Reply);
        Assert.Contains($"address type {atyp}", r.Error.Message);
    }

    [Theory]
    [InlineData(0x02, "BIND")]
    [InlineData(0x03, "UDP ASSOCIATE")]
    [InlineData(0x00, "command 0")]
    [InlineData(0x04, "command 4")]
    [InlineData(0xFF, "command 255")]
    public void Request_with_command_other_than_CONNECT_is_refused_with_07_after_consuming_the_request(byte cmd, string text)
    {
        foreach (var message in new[] { IPv4("10.0.0.1", 1, cmd), IPv6("2001:db8::1", 1, cmd), Domain("example.org", 1, cmd) })
        {
            var r = Parse([.. message, 0x42, 0x43]);
            Assert.Equal(ParseStatus.Invalid, r.Status);
            Assert.Equal(0x07, r.Error.Reply);
            Assert.Contains(text, r.Error.Message);
            Assert.Null(r.Destination);
            Assert.Equal(new byte[] { 0x42, 0x43 }, r.Left);
        }
    }

    [Theory]
    [InlineData(0x02)]
    [InlineData(0x03)]
    public void Truncated_BIND_or_UDP_request_is_Incomplete_not_refused(byte cmd) =>
        ParserHarness.AssertEveryProperPrefixIsIncomplete(IPv4("10.0.0.1", 1, cmd), Step);

    [Theory]
    [InlineData(0x04)]
    [InlineData(0x00)]
    [InlineData(0x01)]
    [InlineData(0xFF)]
    public void Request_with_version_other_than_5_is_refused_with_01(byte version)
    {
        var r = Parse(Request(0x01, [1, 2, 3, 4], 80, version: version));
        Assert.Equal(ParseStatus.Invalid, r.Status);
        Assert.Equal(0x01, r.Error.Reply);
        Assert.Contains($"version {version}", r.Error.Message);
    }

    [Fact]
    public void Request_reserved_byte_is_ignored()
    {
        var r = Parse(Request(0x01, [1, 2, 3, 4], 80, rsv: 0xAB));
        Assert.Equal(ParseStatus.Done, r.Status);
        Assert.Equal("1.2.3.4:80", r.Destination!.ToString());
    }

    [Fact]
    public void Request_consumes_only_its_own_bytes()
    {
        var r = Parse([.. IPv4("1.2.3.4", 80), 0x16, 0x03, 0x01]);
        Assert.Equal(ParseStatus.Done, r.Status);
        Assert.Equal(new byte[] { 0x16, 0x03, 0x01 }, r.Left);
    }

    public static TheoryData<string, byte[]> ValidRequests => new()
    {
        { "ipv4", IPv4("192.0.2.7", 8443) },
        { "ipv6", IPv6("2001:db8::7", 8443) },
        { "mapped", IPv6("::ffff:192.0.2.7", 8443) },
        { "domain", Domain("example.org", 8443) },
    };

    [Theory]
    [MemberData(nameof(ValidRequests))]
    public void Every_truncated_request_is_Incomplete_and_consumes_nothing(string kind, byte[] message)
    {
        _ = kind;
        ParserHarness.AssertEveryProperPrefixIsIncomplete(message, Step);
    }

    [Theory]
    [MemberData(nameof(ValidRequests))]
    public void Request_parses_across_segment_boundaries(string kind, byte[] message)
    {
        string expected = kind switch { "ipv4" or "mapped" => "192.0.2.7:8443", "ipv6" => "[2001:db8::7]:8443", _ => "example.org:8443" };
        ParserHarness.ForEveryShape([.. message, 0xAA], (ref ReadOnlySequence<byte> b) =>
        {
            var status = Socks5Parser.TryParseRequest(ref b, out var d, out _);
            Assert.Equal(expected, d?.ToString());
            return status;
        }, (shape, status, rest) =>
        {
            Assert.True(status == ParseStatus.Done, shape);
            Assert.Equal(new byte[] { 0xAA }, rest);
        });
    }

    [Fact]
    public void Invalid_domain_is_refused_across_segment_boundaries()
    {
        ParserHarness.ForEveryShape([.. Domain("a b", 1), 0xAA], Step, (shape, status, rest) =>
        {
            Assert.True(status == ParseStatus.Invalid, shape);
            Assert.Equal(new byte[] { 0xAA }, rest);
        });
    }
}
