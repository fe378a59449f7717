using System.Net;
using System.Net.NetworkInformation;
using System.Net.Sockets;
using System.Text;
using PtHost.Contract;
using PtHost.Net;

namespace PtHost.Tests.Process;

/// <summary>
/// <see cref="ProxyDialer"/> against real proxies from Debian (spec/external.md §2). Each proxy binds
/// its outgoing connections to its own loopback address (127.0.0.2, .3, .4), so the target seeing
/// that address proves the connection went through the proxy and not around it.
/// </summary>
[Collection("process")]
public class UpstreamProxyTests
{
    private static async Task AssertEchoesAsync(Stream stream)
    {
        var data = Encoding.ASCII.GetBytes("ping through the upstream proxy");
        await stream.WriteAsync(data);
        var back = new byte[data.Length];
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(20));
        await stream.ReadExactlyAsync(back, cts.Token);
        Assert.Equal(data, back);
    }

    private static async Task<TransportConnectException> FailsAsync(INetworkDialer dialer, Destination destination)
    {
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        return await Assert.ThrowsAsync<TransportConnectException>(async () => await dialer.ConnectTcpAsync(destination, cts.Token));
    }

    private static async Task<Stream> ConnectAsync(INetworkDialer dialer, Destination destination)
    {
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        return await dialer.ConnectTcpAsync(destination, cts.Token);
    }

    [Fact]
    public async Task Socks5_without_auth_through_microsocks_reaches_the_target_from_the_proxys_address()
    {
        await using var target = new EchoServer();
        await using var proxy = await DebianProxy.MicrosocksAsync("127.0.0.3");
        var dialer = ProxyDialer.Create(UpstreamProxy.Parse($"socks5://{proxy.EndPoint}"));
        await using (var s = await ConnectAsync(dialer, new Destination(target.EndPoint))) await AssertEchoesAsync(s);
        await using (var s = await ConnectAsync(dialer, new Destination("localhost", target.EndPoint.Port))) await AssertEchoesAsync(s);
        Assert.Equal(2, target.Remotes.Count);
        Assert.All(target.Remotes, r => Assert.Equal(IPAddress.Parse("127.0.0.3"), r.Address));
    }

    [Fact]
    public async Task Socks5_with_RFC1929_credentials_through_microsocks_and_wrong_ones_are_not_allowed()
    {
        await using var target = new EchoServer();
        await using var proxy = await DebianProxy.MicrosocksAsync("127.0.0.3", "alice", "s3cret");
        var good = ProxyDialer.Create(UpstreamProxy.Parse($"socks5://alice:s3cret@{proxy.EndPoint}"));
        await using (var s = await ConnectAsync(good, new Destination(target.EndPoint))) await AssertEchoesAsync(s);
        Assert.Equal(IPAddress.Parse("127.0.0.3"), Assert.Single(target.Remotes).Address);

        var wrong = await FailsAsync(ProxyDialer.Create(UpstreamProxy.Parse($"socks5://alice:wrong@{proxy.EndPoint}")), new Destination(target.EndPoint));
        Assert.Equal(ConnectFailure.NotAllowed, wrong.Failure);
        Assert.Contains("rejected the username/password", wrong.Message);
        var none = await FailsAsync(ProxyDialer.Create(UpstreamProxy.Parse($"socks5://{proxy.EndPoint}")), new Destination(target.EndPoint));
        Assert.Equal(ConnectFailure.NotAllowed, none.Failure);
        Assert.Contains("requires authentication", none.Message);
        Assert.Single(target.Remotes);
    }

    [Fact]
    public async Task Socks5_through_dante_is_logged_by_dante_and_a_refusal_comes_back_as_connection_refused()
    {
        await using var target = new EchoServer();
        await using var proxy = await DebianProxy.DanteAsync("127.0.0.2");
        var dialer = ProxyDialer.Create(UpstreamProxy.Parse($"socks5://{proxy.EndPoint}"));
        await using (var s = await ConnectAsync(dialer, new Destination("localhost", target.EndPoint.Port))) await AssertEchoesAsync(s);
        Assert.Equal(IPAddress.Parse("127.0.0.2"), Assert.Single(target.Remotes).Address);
        Assert.Contains($"127.0.0.1.{target.EndPoint.Port}", proxy.Log); // dante's "pass(1): tcp/connect" line names the target

        using var closed = new RefusingPort();
        var refused = await FailsAsync(dialer, new Destination("127.0.0.1", closed.Port));
        Assert.Equal(ConnectFailure.ConnectionRefused, refused.Failure);
    }

    [Fact]
    public async Task Socks4a_through_dante_carries_an_IPv4_destination_and_reports_a_refusal_as_general_failure()
    {
        // dante speaks SOCKS4 but not the 4a host-name form; Debian has no SOCKS 4a server that does,
        // so the host-name encoding is checked byte by byte in Unit/ProxyHandshakeTests.
        await using var target = new EchoServer();
        await using var proxy = await DebianProxy.DanteAsync("127.0.0.2");
        var dialer = ProxyDialer.Create(UpstreamProxy.Parse($"socks4a://pthost@{proxy.EndPoint}"));
        await using (var s = await ConnectAsync(dialer, new Destination(target.EndPoint))) await AssertEchoesAsync(s);
        Assert.Equal(IPAddress.Parse("127.0.0.2"), Assert.Single(target.Remotes).Address);

        using var closed = new RefusingPort();
        var refused = await FailsAsync(dialer, new Destination("127.0.0.1", closed.Port));
        Assert.Equal(ConnectFailure.General, refused.Failure);
        Assert.Contains("(5b)", refused.Message);
        var v6 = await FailsAsync(dialer, new Destination("::1", 80));
        Assert.Equal(ConnectFailure.AddressTypeNotSupported, v6.Failure);
    }

    [Fact]
    public async Task Http_CONNECT_through_tinyproxy_with_Basic_auth_and_wrong_credentials_are_not_allowed()
    {
        await using var target = new EchoServer();
        await using var proxy = await DebianProxy.TinyproxyAsync("127.0.0.4", "alice", "s3cret");
        var dialer = ProxyDialer.Create(UpstreamProxy.Parse($"http://alice:s3cret@{proxy.EndPoint}"));
        await using (var s = await ConnectAsync(dialer, new Destination(target.EndPoint))) await AssertEchoesAsync(s);
        Assert.Equal(IPAddress.Parse("127.0.0.4"), Assert.Single(target.Remotes).Address);
        Assert.Contains($"CONNECT 127.0.0.1:{target.EndPoint.Port} HTTP/1.1", proxy.Log);

        var wrong = await FailsAsync(ProxyDialer.Create(UpstreamProxy.Parse($"http://alice:nope@{proxy.EndPoint}")), new Destination(target.EndPoint));
        Assert.Equal(ConnectFailure.NotAllowed, wrong.Failure);
        var none = await FailsAsync(ProxyDialer.Create(UpstreamProxy.Parse($"http://{proxy.EndPoint}")), new Destination(target.EndPoint));
        Assert.Equal(ConnectFailure.NotAllowed, none.Failure);
        Assert.Contains("407", none.Message);
        using var closed = new RefusingPort();
        var refused = await FailsAsync(dialer, new Destination("127.0.0.1", closed.Port));
        Assert.Equal(ConnectFailure.General, refused.Failure);
        Assert.Contains("500", refused.Message);
        Assert.Single(target.Remotes);
    }

    [Fact]
    public async Task A_proxy_that_is_not_listening_is_a_general_failure_naming_the_proxy()
    {
        using var notListening = new RefusingPort();
        var dialer = ProxyDialer.Create(UpstreamProxy.Parse($"socks5://{notListening.EndPoint}"));
        var e = await FailsAsync(dialer, new Destination("127.0.0.1", 80));
        Assert.Equal(ConnectFailure.General, e.Failure);
        Assert.Contains("is unreachable", e.Message);
    }

    [Fact]
    public async Task A_proxy_that_never_answers_times_out_and_cancellation_is_honoured()
    {
        using var silent = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        silent.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        silent.Listen(16); // accepts into the backlog, never reads or writes
        var proxy = UpstreamProxy.Parse($"http://{silent.LocalEndPoint}");
        var dialer = ProxyDialer.Create(proxy, timeout: TimeSpan.FromSeconds(1));
        var e = await FailsAsync(dialer, new Destination("127.0.0.1", 80));
        Assert.Equal(ConnectFailure.TimedOut, e.Failure);

        using var cts = new CancellationTokenSource();
        var slow = ProxyDialer.Create(proxy, timeout: TimeSpan.FromMinutes(5));
        var attempt = slow.ConnectTcpAsync(new Destination("127.0.0.1", 80), cts.Token).AsTask();
        cts.Cancel();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => attempt.WaitAsync(TimeSpan.FromSeconds(30)));
    }

    /// <summary>A local non-loopback IPv4 address of this machine (eth0 and the like).</summary>
    private static IPAddress LocalNonLoopbackV4() =>
        NetworkInterface.GetAllNetworkInterfaces()
            .Where(i => i.OperationalStatus == OperationalStatus.Up && i.NetworkInterfaceType != NetworkInterfaceType.Loopback)
            .SelectMany(i => i.GetIPProperties().UnicastAddresses)
            .Select(u => u.Address)
            .FirstOrDefault(a => a.AddressFamily == AddressFamily.InterNetwork && !IPAddress.IsLoopback(a))
        ?? throw new InvalidOperationException("this machine has no non-loopback IPv4 address to test outbound binding with");

    [Fact]
    public async Task Outbound_bind_address_is_applied_to_non_loopback_destinations_only()
    {
        var local = LocalNonLoopbackV4();
        await using var target = new EchoServer(IPAddress.Any);
        // An address this machine does not have (TEST-NET-2): binding it fails, so a connect that
        // succeeds proves the bind was not attempted.
        var foreign = new DirectDialer(bind: new OutboundBindAddresses(IPAddress.Parse("198.51.100.77"), null));
        await using (var s = await ConnectAsync(foreign, new Destination("127.0.0.1", target.EndPoint.Port))) await AssertEchoesAsync(s);
        var e = await FailsAsync(foreign, new Destination(local.ToString(), target.EndPoint.Port));
        Assert.Contains("cannot bind the outbound address 198.51.100.77", e.Message);

        var bound = new DirectDialer(bind: new OutboundBindAddresses(local, null));
        await using (var s = await ConnectAsync(bound, new Destination(local.ToString(), target.EndPoint.Port)))
        {
            await AssertEchoesAsync(s);
            Assert.Equal(local, ((IPEndPoint)((NetworkStream)s).Socket.LocalEndPoint!).Address);
        }
        // The proxy connection itself obeys the bind address; a loopback proxy is exempt.
        await using var proxy = await DebianProxy.MicrosocksAsync("127.0.0.3");
        var viaProxy = ProxyDialer.Create(UpstreamProxy.Parse($"socks5://{proxy.EndPoint}"), new OutboundBindAddresses(IPAddress.Parse("198.51.100.77"), null));
        await using (var s = await ConnectAsync(viaProxy, new Destination("127.0.0.1", target.EndPoint.Port))) await AssertEchoesAsync(s);
        Assert.Equal(IPAddress.Parse("127.0.0.3"), target.Remotes.Last().Address);
    }
}
