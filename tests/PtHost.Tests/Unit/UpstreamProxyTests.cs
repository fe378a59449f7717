using System.Net;
using System.Net.Sockets;
using System.Text;
using PtHost.Contract;
using PtHost.Net;

namespace PtHost.Tests.Unit;

/// <summary>TOR_PT_PROXY parsing (spec/external.md §2.1) and the handshake bytes (§2.3).</summary>
public class UpstreamProxyParseTests
{
    [Theory]
    [InlineData("socks5://198.51.100.1:8000", UpstreamProxyKind.Socks5, "198.51.100.1:8000", null, null)]
    [InlineData("socks5://tor:test1234@198.51.100.1:8000", UpstreamProxyKind.Socks5, "198.51.100.1:8000", "tor", "test1234")]
    [InlineData("socks4a://198.51.100.2:8001", UpstreamProxyKind.Socks4a, "198.51.100.2:8001", null, null)]
    [InlineData("socks4a://someone@198.51.100.2:8001", UpstreamProxyKind.Socks4a, "198.51.100.2:8001", "someone", null)]
    [InlineData("http://198.51.100.3:443", UpstreamProxyKind.Http, "198.51.100.3:443", null, null)]
    [InlineData("http://alice:p%40ss%3Aword@198.51.100.3:443/", UpstreamProxyKind.Http, "198.51.100.3:443", "alice", "p@ss:word")]
    [InlineData("http://alice@198.51.100.3:443", UpstreamProxyKind.Http, "198.51.100.3:443", "alice", "")]
    [InlineData("SOCKS5://[2001:db8::1]:1080", UpstreamProxyKind.Socks5, "[2001:db8::1]:1080", null, null)]
    public void Valid_URIs_parse(string uri, UpstreamProxyKind kind, string server, string? user, string? password)
    {
        var p = UpstreamProxy.Parse(uri);
        Assert.Equal(kind, p.Kind);
        Assert.Equal(IPEndPoint.Parse(server), p.Server);
        Assert.Equal(user, p.User is null ? null : Encoding.UTF8.GetString(p.User));
        Assert.Equal(password, p.Password is null ? null : Encoding.UTF8.GetString(p.Password));
    }

    [Theory]
    [InlineData("", "proxy URI is empty")]
    [InlineData("198.51.100.1:8000", "has no scheme")]
    [InlineData("ftp://198.51.100.1:21", "scheme \"ftp\" is not supported (supported: socks5, socks4a, http)")]
    [InlineData("https://198.51.100.1:443", "scheme \"https\" is not supported")]
    [InlineData("socks5://proxy.example:1080", "proxy host \"proxy.example\" is not an IP address")]
    [InlineData("socks5://127.1:1080", "proxy host \"127.1\" is not an IP address")]
    [InlineData("socks5://198.51.100.1", "has no port")]
    [InlineData("socks5://198.51.100.1:0", "proxy port 0 is out of range 1-65535")]
    [InlineData("socks5://198.51.100.1:65536", "proxy port 65536 is out of range")]
    [InlineData("socks5://198.51.100.1:http", "proxy port \"http\" is not a number")]
    [InlineData("socks5://2001:db8::1:1080", "must be in brackets")]
    [InlineData("socks5://[2001:db8::1:1080", "unterminated IPv6 literal")]
    [InlineData("socks5://[198.51.100.1]:1080", "is not an IPv6 address")]
    [InlineData("socks5://198.51.100.1:1080/path", "must not have a path, a query or a fragment")]
    [InlineData("socks5://198.51.100.1:1080?x=1", "must not have a path")]
    [InlineData("socks5://user@198.51.100.1:1080", "need a password as well as a user name")]
    [InlineData("socks5://:pw@198.51.100.1:1080", "user name must be 1 to 255 bytes, not 0")]
    [InlineData("socks5://user:@198.51.100.1:1080", "password must be 1 to 255 bytes, not 0")]
    [InlineData("socks4a://user:pw@198.51.100.1:1080", "socks4a proxy takes a user id only")]
    [InlineData("socks4a://us%00er@198.51.100.1:1080", "must not contain NUL")]
    [InlineData("http://a%3Ab:c@198.51.100.1:80", "user name must not contain ':'")]
    [InlineData("http://a%0Ab:c@198.51.100.1:80", "must not contain control characters")]
    [InlineData("http://%zz:c@198.51.100.1:80", "bad percent-escape")]
    [InlineData("http://a b@198.51.100.1:80", "contains a space")]
    public void Bad_URIs_are_rejected_with_a_precise_message(string uri, string message)
    {
        Assert.False(UpstreamProxy.TryParse(uri, out _, out string? error));
        Assert.Contains(message, error);
        Assert.DoesNotContain('\n', error);
    }

    [Fact]
    public void Socks5_credentials_of_255_bytes_are_accepted_and_256_rejected()
    {
        string u255 = new('u', 255), p255 = new('p', 255);
        var p = UpstreamProxy.Parse($"socks5://{u255}:{p255}@127.0.0.1:1080");
        Assert.Equal(255, p.User!.Length);
        Assert.Equal(255, p.Password!.Length);
        Assert.Contains("user name must be 1 to 255 bytes, not 256", Assert.Throws<FormatException>(() => UpstreamProxy.Parse($"socks5://{u255}u:x@127.0.0.1:1080")).Message);
        Assert.Contains("password must be 1 to 255 bytes, not 256", Assert.Throws<FormatException>(() => UpstreamProxy.Parse($"socks5://x:{p255}p@127.0.0.1:1080")).Message);
    }

    [Fact]
    public void The_password_never_appears_in_ToString_or_in_errors()
    {
        Assert.Equal("socks5://tor:***@198.51.100.1:8000", UpstreamProxy.Parse("socks5://tor:test1234@198.51.100.1:8000").ToString());
        Assert.False(UpstreamProxy.TryParse("socks5:/tor:test1234@198.51.100.1:8000", out _, out var e));
        Assert.DoesNotContain("test1234", e);
    }

    [Fact]
    public void Mutated_URIs_either_parse_and_round_trip_or_fail_with_a_FormatException()
    {
        // Seeded, so a failure can be repeated.
        var random = new Random(0x9A0C);
        string[] seeds = ["socks5://tor:test1234@198.51.100.1:8000", "socks4a://id@198.51.100.2:8001", "http://a%3Ab@[2001:db8::3]:443/", "http://u:p@127.0.0.1:1"];
        const string alphabet = ":/@[]%.0123456789abcfhkosptx?#;=-_~ \u00e9";
        int parsed = 0;
        for (int i = 0; i < 5000; i++)
        {
            var chars = seeds[i % seeds.Length].ToCharArray().ToList();
            for (int k = random.Next(1, 4); k > 0; k--)
            {
                int at = random.Next(chars.Count + 1);
                switch (random.Next(3))
                {
                    case 0 when chars.Count > 0 && at < chars.Count: chars.RemoveAt(at); break;
                    case 1 when at < chars.Count: chars[at] = alphabet[random.Next(alphabet.Length)]; break;
                    default: chars.Insert(at, alphabet[random.Next(alphabet.Length)]); break;
                }
            }
            string uri = new(chars.ToArray());
            if (!UpstreamProxy.TryParse(uri, out var proxy, out var error))
            {
                Assert.False(string.IsNullOrEmpty(error));
                continue;
            }
            parsed++;
            var again = UpstreamProxy.Parse(proxy.ToUri());
            Assert.Equal((proxy.Kind, proxy.Server), (again.Kind, again.Server));
            Assert.Equal(proxy.User, again.User);
            Assert.Equal(proxy.Password, again.Password);
        }
        Assert.InRange(parsed, 1, 4999);
    }

    [Theory]
    [InlineData("203.0.113.4", null, "203.0.113.4")]
    [InlineData(null, "[2001:db8::4]", "2001:db8::4")]
    [InlineData(null, "2001:db8::4", "2001:db8::4")]
    public void Outbound_bind_addresses_parse(string? v4, string? v6, string expected)
    {
        var a = v4 is not null ? OutboundBindAddresses.ParseV4(v4) : OutboundBindAddresses.ParseV6(v6);
        Assert.Equal(IPAddress.Parse(expected), a);
    }

    [Theory]
    [InlineData("203.0.113", true)]
    [InlineData("[2001:db8::4]", true)]
    [InlineData("203.0.113.4", false)]
    [InlineData("[2001:db8::4", false)]
    public void Bad_outbound_bind_addresses_are_rejected(string text, bool asV4)
    {
        var e = Assert.Throws<FormatException>(() => asV4 ? OutboundBindAddresses.ParseV4(text) : OutboundBindAddresses.ParseV6(text));
        Assert.Contains($"outbound bind address \"{text}\"", e.Message);
    }

    [Fact]
    public void Outbound_bind_is_never_applied_to_loopback_and_follows_the_family()
    {
        var b = new OutboundBindAddresses(IPAddress.Parse("203.0.113.4"), IPAddress.Parse("2001:db8::4"));
        Assert.Null(b.For(IPAddress.Loopback));
        Assert.Null(b.For(IPAddress.Parse("127.5.6.7")));
        Assert.Null(b.For(IPAddress.IPv6Loopback));
        Assert.Equal(IPAddress.Parse("203.0.113.4"), b.For(IPAddress.Parse("198.51.100.9")));
        Assert.Equal(IPAddress.Parse("2001:db8::4"), b.For(IPAddress.Parse("2001:db8::9")));
        Assert.Null(new OutboundBindAddresses(null, null).For(IPAddress.Parse("198.51.100.9")));
    }
}

/// <summary>The exact bytes of each handshake, against a scripted peer on a loopback socket.</summary>
public class ProxyHandshakeTests
{
    /// <summary>Runs <paramref name="client"/> against a peer that reads what it sent and answers <paramref name="reply"/>.</summary>
    private static async Task<byte[]> ExchangeAsync(Func<Stream, CancellationToken, ValueTask> client, int expectLength, byte[] reply)
    {
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen(1);
        using var c = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        await c.ConnectAsync(listener.LocalEndPoint!);
        using var server = await listener.AcceptAsync();
        await using var cs = new NetworkStream(c);
        await using var ss = new NetworkStream(server);
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        await ss.WriteAsync(reply, cts.Token);
        await client(cs, cts.Token);
        var seen = new byte[expectLength];
        await ss.ReadExactlyAsync(seen, cts.Token);
        return seen;
    }

    [Fact]
    public async Task Socks5_with_credentials_offers_only_method_02_and_sends_RFC1929_then_a_domain_request()
    {
        byte[] reply = [5, 2, 1, 0, 5, 0, 0, 1, 127, 0, 0, 1, 0, 80];
        var sent = await ExchangeAsync((s, ct) => ProxyHandshake.Socks5Async(s, new Destination("example.org", 443), "u"u8.ToArray(), "pw"u8.ToArray(), "test", ct),
            3 + 6 + 5 + 11 + 2, reply);
        Assert.Equal([5, 1, 2, 1, 1, (byte)'u', 2, (byte)'p', (byte)'w', 5, 1, 0, 3, 11, .. "example.org"u8.ToArray(), 1, 187], sent);
    }

    [Fact]
    public async Task Socks5_failure_codes_map_to_ConnectFailure()
    {
        for (byte rep = 1; rep <= 9; rep++)
        {
            byte code = rep;
            var e = await Assert.ThrowsAsync<TransportConnectException>(() => ExchangeAsync((s, ct) => ProxyHandshake.Socks5Async(s, new Destination("192.0.2.1", 80), null, null, "test", ct),
                3, [5, 0, 5, code, 0, 1, 0, 0, 0, 0, 0, 0]));
            Assert.Equal(code <= 8 ? (ConnectFailure)code : ConnectFailure.General, e.Failure);
        }
    }

    [Fact]
    public async Task Socks4a_sends_a_host_name_after_DSTIP_0_0_0_1_and_the_user_id()
    {
        var sent = await ExchangeAsync((s, ct) => ProxyHandshake.Socks4aAsync(s, new Destination("example.org", 80), "id"u8.ToArray(), "test", ct),
            8 + 3 + 12, [0, 0x5A, 0, 0, 0, 0, 0, 0]);
        Assert.Equal([4, 1, 0, 80, 0, 0, 0, 1, (byte)'i', (byte)'d', 0, .. "example.org"u8.ToArray(), 0], sent);
    }

    [Fact]
    public async Task Http_CONNECT_sends_Basic_credentials_and_leaves_the_bytes_after_the_header_in_the_stream()
    {
        byte[] reply = [.. "HTTP/1.1 200 Connection established\r\nX: y\r\n\r\nearly"u8.ToArray()];
        string expected = "CONNECT [2001:db8::1]:443 HTTP/1.1\r\nHost: [2001:db8::1]:443\r\nProxy-Authorization: Basic YWxpY2U6czNjcmV0\r\n\r\n";
        Stream? kept = null;
        var sent = await ExchangeAsync(async (s, ct) =>
        {
            await ProxyHandshake.HttpConnectAsync(s, new Destination("2001:db8::1", 443), "alice"u8.ToArray(), "s3cret"u8.ToArray(), "test", ct);
            var early = new byte[5];
            await s.ReadExactlyAsync(early, ct);
            Assert.Equal("early"u8.ToArray(), early);
            kept = s;
        }, expected.Length, reply);
        Assert.NotNull(kept);
        Assert.Equal(expected, Encoding.ASCII.GetString(sent));
    }

    [Theory]
    [InlineData("HTTP/1.1 407 Proxy Authentication Required", ConnectFailure.NotAllowed)]
    [InlineData("HTTP/1.0 403 Forbidden", ConnectFailure.NotAllowed)]
    [InlineData("HTTP/1.1 502 Bad Gateway", ConnectFailure.HostUnreachable)]
    [InlineData("HTTP/1.1 504 Gateway Timeout", ConnectFailure.TimedOut)]
    [InlineData("HTTP/1.1 500 Unable to connect", ConnectFailure.General)]
    [InlineData("SSH-2.0-OpenSSH", ConnectFailure.General)]
    public async Task Http_status_codes_map_to_ConnectFailure(string statusLine, ConnectFailure failure)
    {
        var e = await Assert.ThrowsAsync<TransportConnectException>(() => ExchangeAsync(
            (s, ct) => ProxyHandshake.HttpConnectAsync(s, new Destination("192.0.2.1", 80), null, null, "test", ct), 10,
            Encoding.ASCII.GetBytes(statusLine + "\r\n\r\n")));
        Assert.Equal(failure, e.Failure);
    }
}
