using System.Diagnostics;
using System.Net;
using System.Security.Cryptography;
using Newtonsoft.Json.Linq;

namespace PtHost.Tests.Process;

/// <summary>Real pthost processes: client → plain → server, driven by curl and by raw SOCKS5 bytes.</summary>
[Collection("process")]
public class ChainTests
{
    private static string Curl => DebianPrograms.Curl;

    [Fact]
    public async Task Curl_fetches_10_MB_through_client_plain_server_with_the_server_address_learned_by_SMESSAGE()
    {
        var body = RandomNumberGenerator.GetBytes(10 * 1024 * 1024);
        await using var http = new HttpFileServer(body);
        // The client knows nothing of the server: it learns the address from the relayed SMESSAGE.
        await using var chain = await PtChain.StartAsync(PtChain.FreeServer(), _ => PtChain.ClientWith(new JObject { ["discover"] = true }));
        Assert.Contains(chain.ClientStartup, l => l.StartsWith("CMESSAGE plain {", StringComparison.Ordinal));
        Assert.Contains(chain.ServerStartup, l => l.StartsWith("SMESSAGE plain {", StringComparison.Ordinal));

        string file = Path.Combine(Path.GetTempPath(), $"pthost-curl-{Guid.NewGuid():N}");
        try
        {
            var (exit, _, err) = await PtProcess.RunAsync(Curl, "-sS", "--max-time", "60", "--socks5-hostname", chain.SocksEndPoint.ToString(),
                "-o", file, $"http://localhost:{http.Port}/file.bin");
            Assert.True(exit == 0, $"curl exit {exit}: {err}\nclient stderr:\n{chain.Client.Stderr}");
            Assert.Equal(SHA256.HashData(body), SHA256.HashData(await File.ReadAllBytesAsync(file)));
        }
        finally { File.Delete(file); }

        var (s, c) = await chain.StopAsync();
        Assert.Equal(0, s);
        Assert.Equal(0, c);
        chain.Server.AssertOnlyProtocolLinesOnStdout();
        chain.Client.AssertOnlyProtocolLinesOnStdout();
        // The shutdown STATUS line counts the session and the bytes.
        var status = chain.Client.StdoutLines.Last(l => l.StartsWith("STATUS ", StringComparison.Ordinal));
        Assert.Contains("OPENED=1 ", status);
    }

    [Fact]
    public async Task A_STATUS_line_on_stdin_is_answered_at_once_with_current_counters()
    {
        await using var echo = new EchoServer();
        // No message relay: this test reads the processes' stdout itself.
        await using var chain = await PtChain.StartAsync(PtChain.FreeServer(), ep => PtChain.ClientWith(new JObject { ["serverAddress"] = ep.ToString() }), relayMessages: false);
        await using (var socks = await SocksClient.ConnectAsync(chain.SocksEndPoint))
        {
            await socks.SendAsync([.. SocksClient.Greeting(0x00), .. SocksClient.ConnectIPv4(IPAddress.Loopback, echo.Port)]);
            Assert.Equal(new byte[] { 5, 0 }, await socks.ReadExactlyAsync(2));
            Assert.Equal(0x00, await socks.ReadReplyAsync());
            await socks.SendAsync("12345"u8.ToArray());
            Assert.Equal("12345"u8.ToArray(), await socks.ReadExactlyAsync(5));
            // spec/ipc.md §4.7: the counters are read when the line is written; the session is open now.
            // The relay counts a chunk once it is written on, so the echo may reach us a moment before its count.
            Assert.Equal("STATUS TRANSPORT=plain CONNECTIONS=1 OPENED=1 FAILED=0 BYTES-IN=5 BYTES-OUT=5 SPLICE-FALLBACKS=0 DATAGRAMS-DROPPED=0",
                await RequestStatusUntilAsync(chain.Client, l => l.Contains(" BYTES-OUT=5 ", StringComparison.Ordinal)));
        }
        string server = await RequestStatusUntilAsync(chain.Server, l => l.Contains(" CONNECTIONS=0 ", StringComparison.Ordinal));
        Assert.Equal("STATUS TRANSPORT=plain CONNECTIONS=0 OPENED=1 FAILED=0 BYTES-IN=5 BYTES-OUT=5 SPLICE-FALLBACKS=0 DATAGRAMS-DROPPED=0", server);
        chain.Client.AssertOnlyProtocolLinesOnStdout();
        Assert.DoesNotContain("stdin line ignored", chain.Client.Stderr);
    }

    [Fact]
    public async Task Without_the_SMESSAGE_a_discovering_client_cannot_reach_the_server()
    {
        await using var echo = new EchoServer();
        await using var chain = await PtChain.StartAsync(PtChain.FreeServer(), _ => PtChain.ClientWith(new JObject { ["discover"] = true }), relayMessages: false);
        // The session waits for the address until the 30 s connect timeout, then gets "host unreachable".
        Assert.Equal(0x04, await ConnectReply(chain, SocksClient.ConnectIPv4(IPAddress.Loopback, echo.Port)));
        Assert.Equal(0, echo.Accepted);
    }

    [Theory]
    [InlineData(0x09)]
    [InlineData(0x80)]
    public async Task Settings_block_names_the_destination_for_a_free_server(byte method)
    {
        await using var echo = new EchoServer();
        await using var chain = await PtChain.StartAsync(PtChain.FreeServer(), ep => PtChain.ClientWith(new JObject { ["serverAddress"] = ep.ToString() }));
        await using var socks = await SocksClient.ConnectAsync(chain.SocksEndPoint);
        await socks.SendAsync(SocksClient.Greeting(0x00, method));
        Assert.Equal(new byte[] { 5, method }, await socks.ReadExactlyAsync(2));
        // No status reply follows the block: the request comes straight after it ([::0]:0 as PT 2.0 clients send).
        await socks.SendAsync([.. SocksClient.SettingsBlock($"{{\"destination\":\"127.0.0.1:{echo.Port}\"}}"), .. SocksClient.ConnectIPv6(IPAddress.IPv6Any, 0)]);
        Assert.Equal(0x00, await socks.ReadReplyAsync());
        var data = RandomNumberGenerator.GetBytes(256 * 1024);
        await socks.SendAsync(data);
        Assert.Equal(data, await socks.ReadExactlyAsync(data.Length));
        Assert.Equal(1, echo.Accepted);
    }

    [Theory]
    [InlineData("{\"destination\":", 0x12)]
    [InlineData("[1,2]", 0x12)]
    [InlineData("{\"colour\":\"blue\"}", 0x13)]
    [InlineData("{\"destination\":\"no-port\"}", 0x13)]
    public async Task A_bad_settings_block_is_answered_in_the_CONNECT_reply(string json, byte reply)
    {
        await using var echo = new EchoServer();
        await using var chain = await PtChain.StartAsync(PtChain.FreeServer(), ep => PtChain.ClientWith(new JObject { ["serverAddress"] = ep.ToString() }));
        await using var socks = await SocksClient.ConnectAsync(chain.SocksEndPoint);
        await socks.SendAsync([.. SocksClient.Greeting(0x09), .. SocksClient.SettingsBlock(json), .. SocksClient.ConnectIPv4(IPAddress.Loopback, echo.Port)]);
        Assert.Equal(new byte[] { 5, 9 }, await socks.ReadExactlyAsync(2));
        Assert.Equal(reply, await socks.ReadReplyAsync());
        Assert.Empty(await socks.ReadToEndAsync());
        Assert.Equal(0, echo.Accepted);
        await AssertStillServes(chain, echo);
    }

    [Fact]
    public async Task An_oversized_settings_block_is_refused_with_0x10_before_it_is_read()
    {
        await using var echo = new EchoServer();
        await using var chain = await PtChain.StartAsync(PtChain.FreeServer(), ep => PtChain.ClientWith(new JObject { ["serverAddress"] = ep.ToString() }));
        await using var socks = await SocksClient.ConnectAsync(chain.SocksEndPoint);
        await socks.SendAsync([.. SocksClient.Greeting(0x09), 0x7f, 0xff, 0xff, 0xff, .. new byte[1000]]);
        Assert.Equal(new byte[] { 5, 9 }, await socks.ReadExactlyAsync(2));
        Assert.Equal(0x10, await socks.ReadReplyAsync());
        await AssertStillServes(chain, echo);
    }

    [Fact]
    public async Task A_settings_block_that_never_completes_is_answered_0x11_after_the_handshake_timeout()
    {
        await using var chain = await PtChain.StartAsync(PtChain.FreeServer(), ep => PtChain.ClientWith(new JObject { ["serverAddress"] = ep.ToString() }));
        await using var socks = await SocksClient.ConnectAsync(chain.SocksEndPoint);
        await socks.SendAsync([.. SocksClient.Greeting(0x09), 0, 0, 0, 10, (byte)'{']);
        Assert.Equal(new byte[] { 5, 9 }, await socks.ReadExactlyAsync(2));
        Assert.Equal(0x11, await socks.ReadReplyAsync());
    }

    [Fact]
    public async Task PT1_arguments_in_RFC1929_username_and_NUL_password_reach_the_transport()
    {
        await using var echo = new EchoServer();
        await using var chain = await PtChain.StartAsync(PtChain.FreeServer(), ep => PtChain.ClientWith(new JObject { ["serverAddress"] = ep.ToString() }));
        await using var socks = await SocksClient.ConnectAsync(chain.SocksEndPoint);
        await socks.SendAsync(SocksClient.Greeting(0x00, 0x02));
        Assert.Equal(new byte[] { 5, 2 }, await socks.ReadExactlyAsync(2));
        // pt-spec §3.5: '\' escapes ':'-free values too; "127.0.0.1:port" needs no escape. The password is a lone NUL.
        await socks.SendAsync(SocksClient.UserPass($"destination=127.0.0.1:{echo.Port}", "\0"));
        Assert.Equal(new byte[] { 1, 0 }, await socks.ReadExactlyAsync(2));
        await socks.SendAsync(SocksClient.ConnectIPv4(IPAddress.Any, 0));
        Assert.Equal(0x00, await socks.ReadReplyAsync());
        await socks.SendAsync("ping"u8.ToArray());
        Assert.Equal("ping"u8.ToArray(), await socks.ReadExactlyAsync(4));
    }

    [Fact]
    public async Task Malformed_PT1_arguments_fail_RFC1929_authentication_and_close()
    {
        await using var echo = new EchoServer();
        await using var chain = await PtChain.StartAsync(PtChain.FreeServer(), ep => PtChain.ClientWith(new JObject { ["serverAddress"] = ep.ToString() }));
        await using var socks = await SocksClient.ConnectAsync(chain.SocksEndPoint);
        await socks.SendAsync([.. SocksClient.Greeting(0x02), .. SocksClient.UserPass("novalue", "\0")]);
        Assert.Equal(new byte[] { 5, 2, 1, 1 }, await socks.ReadExactlyAsync(4));
        Assert.Empty(await socks.ReadToEndAsync());
        await AssertStillServes(chain, echo);
    }

    [Fact]
    public async Task Bytes_pipelined_after_the_request_are_forwarded_not_dropped()
    {
        await using var echo = new EchoServer();
        await using var chain = await PtChain.StartAsync(PtChain.FreeServer(), ep => PtChain.ClientWith(new JObject { ["serverAddress"] = ep.ToString() }));
        await using var socks = await SocksClient.ConnectAsync(chain.SocksEndPoint);
        var data = RandomNumberGenerator.GetBytes(3000);
        await socks.SendAsync([.. SocksClient.Greeting(0x00), .. SocksClient.ConnectIPv4(IPAddress.Loopback, echo.Port), .. data]);
        Assert.Equal(new byte[] { 5, 0 }, await socks.ReadExactlyAsync(2));
        Assert.Equal(0x00, await socks.ReadReplyAsync());
        Assert.Equal(data, await socks.ReadExactlyAsync(data.Length));
    }

    [Fact]
    public async Task Half_close_is_passed_through_the_chain()
    {
        await using var echo = new EchoServer();
        await using var chain = await PtChain.StartAsync(PtChain.FreeServer(), ep => PtChain.ClientWith(new JObject { ["serverAddress"] = ep.ToString() }));
        await using var socks = await SocksClient.ConnectAsync(chain.SocksEndPoint);
        await socks.SendAsync([.. SocksClient.Greeting(0x00), .. SocksClient.ConnectIPv4(IPAddress.Loopback, echo.Port)]);
        await socks.ReadExactlyAsync(2);
        Assert.Equal(0x00, await socks.ReadReplyAsync());
        var data = RandomNumberGenerator.GetBytes(1 << 20);
        await socks.SendAsync(data);
        socks.Socket.Shutdown(System.Net.Sockets.SocketShutdown.Send);
        // The echo server sees our FIN only through the chain, then finishes its echo and closes.
        Assert.Equal(data, await socks.ReadToEndAsync());
    }

    [Fact]
    public async Task Failures_at_the_far_end_map_to_SOCKS_reply_codes()
    {
        using var closed = new RefusingPort();
        int closedPort = closed.Port;
        await using var echo = new EchoServer();
        await using var chain = await PtChain.StartAsync(PtChain.FreeServer("plain", "127.0.0.1"), ep => PtChain.ClientWith(new JObject { ["serverAddress"] = ep.ToString() }));
        Assert.Equal(0x05, await ConnectReply(chain, SocksClient.ConnectIPv4(IPAddress.Loopback, closedPort)));           // refused
        Assert.Equal(0x02, await ConnectReply(chain, SocksClient.ConnectIPv4(IPAddress.Parse("127.0.0.2"), echo.Port)));   // not in allow
        Assert.Equal(0x04, await ConnectReply(chain, SocksClient.ConnectDomain("does-not-exist.invalid", 80)));              // no such name
        Assert.Equal(0x07, await ConnectReply(chain, SocksClient.ConnectDomain("localhost", echo.Port, command: 2)));        // BIND (UDP ASSOCIATE: DispatcherTests)
        Assert.Equal(0x08, await ConnectReply(chain, [5, 1, 0, 9, 1, 2, 3, 4, 0, 80]));                                      // ATYP 9
        Assert.Equal(0, echo.Accepted);
        await AssertStillServes(chain, echo);
    }

    [Fact]
    public async Task A_bound_server_ignores_the_requested_destination_and_reports_its_targets_refusal()
    {
        await using var echo = new EchoServer();
        await using (var chain = await PtChain.StartAsync(PtChain.BoundServer($"127.0.0.1:{echo.Port}"), _ => PtChain.ClientWith(null)))
        {
            // Tor-style: the SOCKS destination is the server itself (a bridge address).
            await using var socks = await SocksClient.ConnectAsync(chain.SocksEndPoint);
            await socks.SendAsync([.. SocksClient.Greeting(0x00), .. SocksClient.ConnectIPv4(chain.ServerEndPoint.Address, chain.ServerEndPoint.Port)]);
            await socks.ReadExactlyAsync(2);
            Assert.Equal(0x00, await socks.ReadReplyAsync());
            await socks.SendAsync("hello"u8.ToArray());
            Assert.Equal("hello"u8.ToArray(), await socks.ReadExactlyAsync(5));
        }
        using var refusingTarget = new RefusingPort();
        await using var refused = await PtChain.StartAsync(PtChain.BoundServer(refusingTarget.EndPoint.ToString()), _ => PtChain.ClientWith(null));
        Assert.Equal(0x05, await ConnectReply(refused, SocksClient.ConnectIPv4(refused.ServerEndPoint.Address, refused.ServerEndPoint.Port)));
    }

    [Fact]
    public async Task A_malformed_greeting_gets_05_FF_and_the_listener_keeps_serving()
    {
        await using var echo = new EchoServer();
        await using var chain = await PtChain.StartAsync(PtChain.FreeServer(), ep => PtChain.ClientWith(new JObject { ["serverAddress"] = ep.ToString() }));
        // Version 4 is SOCKS4 (spec/ipc.md §5.11, its own tests); any other version is no greeting.
        foreach (var bad in new[] { new byte[] { 6, 1, 0 }, [0, 1, 0], [5, 0], [5, 1, 0x03] })
        {
            await using var socks = await SocksClient.ConnectAsync(chain.SocksEndPoint);
            await socks.SendAsync(bad);
            Assert.Equal(new byte[] { 5, 0xff }, await socks.ReadToEndAsync());
        }
        await AssertStillServes(chain, echo);
    }

    [Fact]
    public async Task A_silent_client_is_cut_by_the_handshake_timeout()
    {
        await using var chain = await PtChain.StartAsync(PtChain.FreeServer(), ep => PtChain.ClientWith(new JObject { ["serverAddress"] = ep.ToString() }));
        await using var socks = await SocksClient.ConnectAsync(chain.SocksEndPoint);
        await socks.SendAsync(5); // half a greeting, then nothing
        var sw = Stopwatch.StartNew();
        Assert.Empty(await socks.ReadToEndAsync(TimeSpan.FromSeconds(30)));
        Assert.InRange(sw.Elapsed, TimeSpan.FromSeconds(8), TimeSpan.FromSeconds(20));
    }

    /// <summary>Writes STATUS on stdin and reads the answer until one satisfies <paramref name="done"/> (10 s at most).</summary>
    private static async Task<string> RequestStatusUntilAsync(PtProcess process, Func<string, bool> done)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while (true)
        {
            await process.WriteLineAsync("STATUS");
            string line = await process.WaitForLineAsync("STATUS TRANSPORT=plain ", TimeSpan.FromSeconds(5));
            if (done(line) || DateTime.UtcNow > deadline) return line;
        }
    }

    private static async Task<byte> ConnectReply(PtChain chain, byte[] request)
    {
        await using var socks = await SocksClient.ConnectAsync(chain.SocksEndPoint);
        await socks.SendAsync([.. SocksClient.Greeting(0x00), .. request]);
        Assert.Equal(new byte[] { 5, 0 }, await socks.ReadExactlyAsync(2));
        return await socks.ReadReplyAsync();
    }

    private static async Task AssertStillServes(PtChain chain, EchoServer echo)
    {
        await using var socks = await SocksClient.ConnectAsync(chain.SocksEndPoint);
        await socks.SendAsync([.. SocksClient.Greeting(0x00), .. SocksClient.ConnectIPv4(IPAddress.Loopback, echo.Port), .. "still here"u8.ToArray()]);
        await socks.ReadExactlyAsync(2);
        Assert.Equal(0x00, await socks.ReadReplyAsync());
        Assert.Equal("still here"u8.ToArray(), await socks.ReadExactlyAsync(10));
    }
}
