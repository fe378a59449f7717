using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using Newtonsoft.Json.Linq;
using Xunit.Abstractions;

namespace PtHost.Tests.Process;

/// <summary>
/// The rud transport end to end (spec/rud.md §12): a real server and client pthost configured by
/// <c>pthost generate-config rud</c>, curl and an echo server behind them, and a seeded lossy UDP
/// relay between them where a test needs one.
/// </summary>
[Collection("process")]
public class RudTransportTests(ITestOutputHelper output)
{
    private static string Curl => DebianPrograms.Curl;

    [Fact]
    public async Task Curl_fetches_20_MB_through_rud_with_the_SHA256_intact()
    {
        var body = RandomNumberGenerator.GetBytes(20 * 1024 * 1024);
        await using var http = new HttpFileServer(body);
        await using var chain = await RudChain.StartAsync();
        Assert.Contains(chain.ServerStartup, l => l.StartsWith("SMETHOD rud 127.0.0.1:", StringComparison.Ordinal) && l.Contains("ARGS:key=", StringComparison.Ordinal));
        await FetchAsync(chain, http, body, "20 MB");
        var (s, c) = await chain.StopAsync();
        Assert.Equal(0, s);
        Assert.Equal(0, c);
        chain.Server.AssertOnlyProtocolLinesOnStdout();
        chain.Client.AssertOnlyProtocolLinesOnStdout();
    }

    [Fact]
    public async Task Curl_fetches_through_rud_over_a_lossy_link_and_the_wire_never_shows_the_plaintext()
    {
        byte[] marker = Encoding.ASCII.GetBytes("RUD-PLAINTEXT-MARKER-0123456789");
        var body = Enumerable.Repeat(marker, 100_000).SelectMany(b => b).ToArray(); // 3 MB
        await using var http = new HttpFileServer(body);
        LossyUdpRelay? relay = null;
        await using var chain = await RudChain.StartAsync(editClient: null, relayFor: server =>
        {
            relay = new LossyUdpRelay(server, seed: 42) { Loss = 0.05, Duplicate = 0.05, Delay = TimeSpan.FromMilliseconds(20), Jitter = TimeSpan.FromMilliseconds(5), FromClient = [] };
            return relay.EndPoint;
        });
        await using var _ = relay!;
        await FetchAsync(chain, http, body, "3 MB over 5 % loss");
        Assert.True(relay!.Dropped > 0 && relay.Duplicated > 0);
        byte[][] seen = relay.ClientPackets();
        var all = seen.SelectMany(p => p).ToArray();
        Assert.Equal(-1, all.AsSpan().IndexOf("GET /file.bin"u8));
        Assert.Equal(-1, all.AsSpan().IndexOf(Encoding.ASCII.GetBytes($"127.0.0.1:{http.Port}")));
    }

    [Fact]
    public async Task With_congestion_newreno_on_both_sides_curl_fetches_through_rud_and_both_logs_name_newreno()
    {
        var body = RandomNumberGenerator.GetBytes(5 * 1024 * 1024);
        await using var http = new HttpFileServer(body);
        await using var chain = await RudChain.StartAsync(editClient: o => o["congestion"] = "newreno", editServer: o => o["congestion"] = "newreno");
        await FetchAsync(chain, http, body, "5 MB with newreno");
        var (s, c) = await chain.StopAsync();
        Assert.Equal(0, s);
        Assert.Equal(0, c);
        Assert.Contains("exchange, congestion newreno)", chain.Server.Stderr, StringComparison.Ordinal);
        Assert.Contains("congestion newreno)", chain.Client.Stderr, StringComparison.Ordinal);
        Assert.DoesNotContain("congestion bbr", chain.Server.Stderr + chain.Client.Stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Ten_MB_go_up_and_come_back_through_an_echo_server()
    {
        var data = RandomNumberGenerator.GetBytes(10 * 1024 * 1024);
        await using var echo = new EchoServer();
        await using var chain = await RudChain.StartAsync();
        await using var socks = await SocksClient.ConnectAsync(chain.SocksEndPoint);
        await socks.SendAsync([.. SocksClient.Greeting(0x00), .. SocksClient.ConnectIPv4(IPAddress.Loopback, echo.Port)]);
        await socks.ReadExactlyAsync(2);
        Assert.Equal(0x00, await socks.ReadReplyAsync());
        var send = Task.Run(async () =>
        {
            await socks.Stream.WriteAsync(data);
            socks.Socket.Shutdown(SocketShutdown.Send);
        });
        var back = await socks.ReadToEndAsync(TimeSpan.FromSeconds(90));
        await send;
        Assert.Equal(SHA256.HashData(data), SHA256.HashData(back));
    }

    [Fact]
    public async Task Twenty_sessions_at_once_share_one_connection_and_each_gets_its_own_bytes()
    {
        await using var echo = new EchoServer();
        await using var chain = await RudChain.StartAsync();
        var sessions = Enumerable.Range(0, 20).Select(async i =>
        {
            byte[] payload = Encoding.ASCII.GetBytes($"session {i:00} " + new string('x', 1000 + i));
            await using var socks = await SocksClient.ConnectAsync(chain.SocksEndPoint);
            await socks.SendAsync([.. SocksClient.Greeting(0x00), .. SocksClient.ConnectIPv4(IPAddress.Loopback, echo.Port), .. payload]);
            await socks.ReadExactlyAsync(2);
            Assert.Equal(0x00, await socks.ReadReplyAsync());
            Assert.Equal(payload, await socks.ReadExactlyAsync(payload.Length, TimeSpan.FromSeconds(30)));
        });
        await Task.WhenAll(sessions);
        Assert.Equal(20, echo.Accepted);
        Assert.Equal(1, CountOccurrences(chain.Server.Stderr, "rud: connection from"));
    }

    [Fact]
    public async Task A_wrong_server_key_fails_the_request_with_0x06_and_the_client_keeps_serving()
    {
        await using var echo = new EchoServer();
        var other = new byte[32];
        PtHost.Transports.Rud.X25519.PublicKey(PtHost.Transports.Rud.X25519.GeneratePrivateKey(), other);
        await using var chain = await RudChain.StartAsync(editClient: o =>
        {
            o["serverKey"] = Convert.ToBase64String(other);
            o["handshakeTimeout"] = 2;
        });
        var watch = Stopwatch.StartNew();
        Assert.Equal(0x06, await ConnectReply(chain, SocksClient.ConnectIPv4(IPAddress.Loopback, echo.Port)));
        Assert.Equal(0x06, await ConnectReply(chain, SocksClient.ConnectIPv4(IPAddress.Loopback, echo.Port)));
        Assert.True(watch.Elapsed < TimeSpan.FromSeconds(20), $"took {watch.Elapsed}");
        Assert.Equal(0, echo.Accepted);
    }

    /// <summary>
    /// Initiator authentication (spec/rud.md §5.5, issue 23): generate-config gives the server
    /// <c>authorizedKeys</c> with the client's public key and the client its <c>clientKey</c>. The authorised
    /// client fetches with curl; a client with another clientKey and a client without one get no datagram at
    /// all from the server (counted on the UDP forwarder between them), as with a wrong serverKey, and fail
    /// with 0x06. Without authorizedKeys the server takes any initiator, as before.
    /// </summary>
    [Fact]
    public async Task Only_a_client_whose_key_is_in_authorizedKeys_gets_any_answer()
    {
        var body = RandomNumberGenerator.GetBytes(1 << 20);
        await using var http = new HttpFileServer(body);
        await using var echo = new EchoServer();
        var generated = await PtChain.GenerateConfigAsync("rud");
        Assert.Equal(32, Convert.FromBase64String((string)generated["client"]!["clientKey"]!).Length);
        Assert.Single((JArray)generated["server"]!["authorizedKeys"]!);

        async Task<(PtChain Chain, LossyUdpRelay Relay)> Start(Action<JObject>? editClient, Action<JObject>? editServer = null)
        {
            LossyUdpRelay? relay = null;
            var chain = await RudChain.StartAsync(editClient: editClient, relayFor: server =>
            {
                relay = new LossyUdpRelay(server, seed: 1) { FromClient = [], FromServer = [] };
                return relay.EndPoint;
            }, editServer: editServer);
            return (chain, relay!);
        }

        var (authorized, relay) = await Start(null);
        await using (authorized)
        await using (relay)
        {
            await FetchAsync(authorized, http, body, "1 MB, authorised client");
            Assert.NotEmpty(relay.ServerPackets());
        }

        var other = Convert.ToBase64String(PtHost.Transports.Rud.X25519.GeneratePrivateKey());
        foreach (var (what, edit) in new (string, Action<JObject>)[]
        {
            // A short handshake timeout: these clients are never answered.
            ("another clientKey", o => { o["clientKey"] = other; o["handshakeTimeout"] = 2; }),
            ("no clientKey", o => { o.Remove("clientKey"); o["handshakeTimeout"] = 2; }),
        })
        {
            var (chain, r) = await Start(edit);
            await using (chain)
            await using (r)
            {
                Assert.Equal(0x06, await ConnectReply(chain, SocksClient.ConnectIPv4(IPAddress.Loopback, echo.Port)));
                int sent = r.ClientPackets().Length, answered = r.ServerPackets().Length;
                output.WriteLine($"{what}: the client sent {sent} datagrams, the server answered {answered}");
                Assert.True(sent >= 3, $"{what}: the client sent only {sent} datagrams"); // the Exchange and its repeats (§4.5)
                Assert.Equal(0, answered);
            }
        }
        Assert.Equal(0, echo.Accepted);

        // Without authorizedKeys: any initiator, with or without a clientKey.
        foreach (var (what, edit) in new (string, Action<JObject>)[] { ("a clientKey", _ => { }), ("no clientKey", o => o.Remove("clientKey")) })
        {
            var (open, r) = await Start(edit, o => o.Remove("authorizedKeys"));
            await using (open)
            await using (r)
                await FetchAsync(open, http, body, $"1 MB, server without authorizedKeys, client with {what}");
        }
    }

    [Fact]
    public async Task A_destination_outside_the_allow_list_gets_0x02_through_the_stream()
    {
        await using var echo = new EchoServer();
        await using var chain = await RudChain.StartAsync();
        Assert.Equal(0x02, await ConnectReply(chain, SocksClient.ConnectIPv4(IPAddress.Parse("127.0.0.2"), echo.Port)));
        // The connection is still good for the next session.
        Assert.Equal(0x00, await ConnectReply(chain, SocksClient.ConnectIPv4(IPAddress.Loopback, echo.Port)));
    }

    [Fact]
    public async Task A_client_without_serverKey_is_refused_at_start_up()
    {
        var config = new JObject
        {
            ["role"] = "client",
            ["transports"] = new JArray("rud"),
            ["options"] = new JObject { ["rud"] = new JObject { ["serverAddress"] = "127.0.0.1:1" } },
            ["exit-on-stdin-close"] = true,
        };
        await using var client = PtProcess.StartPthost(config.ToString(Newtonsoft.Json.Formatting.None));
        var lines = await client.ReadUntilDoneAsync();
        Assert.Contains(lines, l => l.StartsWith("CMETHOD-ERROR rud ", StringComparison.Ordinal) && l.Contains("serverKey", StringComparison.Ordinal));
    }

    private async Task FetchAsync(PtChain chain, HttpFileServer http, byte[] body, string what)
    {
        string file = Path.Combine(Path.GetTempPath(), $"pthost-rud-{Guid.NewGuid():N}");
        try
        {
            var watch = Stopwatch.StartNew();
            var (exit, _, err) = await PtProcess.RunAsync(Curl, "-sS", "--max-time", "120", "--socks5-hostname", chain.SocksEndPoint.ToString(),
                "-o", file, $"http://127.0.0.1:{http.Port}/file.bin");
            output.WriteLine($"{what} through rud in {watch.Elapsed.TotalSeconds:0.00} s");
            Assert.True(exit == 0, $"curl exit {exit}: {err}\nclient stderr:\n{chain.Client.Stderr}\nserver stderr:\n{chain.Server.Stderr}");
            Assert.Equal(SHA256.HashData(body), SHA256.HashData(await File.ReadAllBytesAsync(file)));
        }
        finally { File.Delete(file); }
    }

    private static int CountOccurrences(string text, string what)
    {
        int n = 0, at = 0;
        while ((at = text.IndexOf(what, at, StringComparison.Ordinal)) >= 0) { n++; at += what.Length; }
        return n;
    }

    private static async Task<byte> ConnectReply(PtChain chain, byte[] request)
    {
        await using var socks = await SocksClient.ConnectAsync(chain.SocksEndPoint);
        await socks.SendAsync([.. SocksClient.Greeting(0x00), .. request]);
        Assert.Equal(new byte[] { 5, 0 }, await socks.ReadExactlyAsync(2));
        return await socks.ReadReplyAsync();
    }
}
