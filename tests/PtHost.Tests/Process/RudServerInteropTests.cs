using System.Net;
using System.Text;
using Newtonsoft.Json.Linq;
using PtHost.Contract;
using PtHost.Transports.Rud;

namespace PtHost.Tests.Process;

/// <summary>
/// The real pthost rud server against an in-test RUD endpoint (spec/rud.md §4, §12): each key
/// exchange mode the server's options allow, and a stream that does not start with plain's preamble.
/// </summary>
[Collection("process")]
public class RudServerInteropTests
{
    private static async Task<(PtProcess Server, IPEndPoint EndPoint, byte[] PublicKey)> StartServerAsync(JObject extraOptions)
    {
        var key = X25519.GeneratePrivateKey();
        var pub = new byte[32];
        X25519.PublicKey(key, pub);
        var options = new JObject { ["key"] = Convert.ToBase64String(key) };
        options.Merge(extraOptions);
        var config = PtChain.FreeServer("rud");
        config["options"] = new JObject { ["rud"] = options };
        var server = PtProcess.StartPthost(config.ToString(Newtonsoft.Json.Formatting.None));
        var lines = await server.ReadUntilDoneAsync();
        var smethod = lines.Single(l => l.StartsWith("SMETHOD rud ", StringComparison.Ordinal));
        Assert.Contains("ARGS:key=" + Convert.ToBase64String(pub).Replace("=", "\\=", StringComparison.Ordinal), smethod, StringComparison.Ordinal);
        return (server, IPEndPoint.Parse(smethod.Split(' ')[2]), pub);
    }

    private static async Task EchoThroughAsync(RudConnection conn, EchoServer echo)
    {
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        await using var stream = conn.OpenStream();
        await SessionPreamble.RequestAsync(stream, new Destination("127.0.0.1", echo.Port), "pthost", cts.Token);
        await stream.WriteAsync("hello through rud"u8.ToArray(), cts.Token);
        var back = new byte[17];
        await stream.ReadExactlyAsync(back, cts.Token);
        Assert.Equal("hello through rud", Encoding.ASCII.GetString(back));
    }

    [Fact]
    public async Task A_server_that_always_challenges_completes_a_deferred_exchange()
    {
        await using var echo = new EchoServer();
        var (server, ep, pub) = await StartServerAsync(new JObject { ["challenge"] = "always" });
        await using var _ = server;
        await using var client = RudEndpoint.Bind(new IPEndPoint(IPAddress.Loopback, 0), new RudEndpointOptions());
        var conn = await client.ConnectAsync(ep, pub, new CancellationTokenSource(TimeSpan.FromSeconds(30)).Token);
        Assert.Equal(ExchangeMode.Deferred, conn.Mode);
        await EchoThroughAsync(conn, echo);
    }

    [Fact]
    public async Task First_contact_works_only_when_the_server_allows_it()
    {
        await using var echo = new EchoServer();
        var (open, openEp, openPub) = await StartServerAsync(new JObject { ["firstContact"] = true });
        await using var _ = open;
        await using var client = RudEndpoint.Bind(new IPEndPoint(IPAddress.Loopback, 0), new RudEndpointOptions { HandshakeTimeout = TimeSpan.FromSeconds(3) });
        var conn = await client.ConnectAsync(openEp, null, new CancellationTokenSource(TimeSpan.FromSeconds(30)).Token);
        Assert.Equal(ExchangeMode.FirstContact, conn.Mode);
        await EchoThroughAsync(conn, echo);

        var (closed, closedEp, _) = await StartServerAsync(new JObject());
        await using var __ = closed;
        await Assert.ThrowsAsync<TimeoutException>(() => client.ConnectAsync(closedEp, null, CancellationToken.None));
    }

    [Fact]
    public async Task A_stream_that_does_not_start_with_plains_preamble_is_reset_and_the_connection_goes_on()
    {
        await using var echo = new EchoServer();
        var (server, ep, pub) = await StartServerAsync(new JObject());
        await using var _ = server;
        await using var client = RudEndpoint.Bind(new IPEndPoint(IPAddress.Loopback, 0), new RudEndpointOptions());
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        var conn = await client.ConnectAsync(ep, pub, cts.Token);
        Assert.Equal(ExchangeMode.Immediate, conn.Mode);
        var junk = conn.OpenStream();
        await junk.WriteAsync("GET / HTTP/1.1\r\n\r\n"u8.ToArray(), cts.Token);
        var error = await Assert.ThrowsAsync<IOException>(async () => await junk.ReadExactlyAsync(new byte[16], cts.Token));
        Assert.Contains("reset by the peer (code 1)", error.Message, StringComparison.Ordinal);
        await EchoThroughAsync(conn, echo);
    }
}
