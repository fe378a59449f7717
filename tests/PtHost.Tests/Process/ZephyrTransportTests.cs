using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using Newtonsoft.Json.Linq;
using Xunit.Abstractions;

namespace PtHost.Tests.Process;

/// <summary>
/// The zephyr transport end to end (spec/zephyr.md §7): a real relay process, a real server and
/// client pthost with a generated configuration, CMESSAGE/SMESSAGE carried by the test.
/// </summary>
[Collection("process")]
public class ZephyrTransportTests(ITestOutputHelper output)
{
    private static string Curl => DebianPrograms.Curl;

    [Fact]
    public async Task Curl_fetches_100_MB_through_zephyr_with_the_SHA256_intact()
    {
        var body = RandomNumberGenerator.GetBytes(100 * 1024 * 1024);
        await using var http = new HttpFileServer(body);
        await using var relay = await ZephyrRelayProcess.StartAsync();
        await using var chain = await ZephyrChain.StartAsync(relay.EndPoint.ToString());

        string file = Path.Combine(Path.GetTempPath(), $"pthost-zephyr-{Guid.NewGuid():N}");
        try
        {
            var watch = Stopwatch.StartNew();
            var (exit, _, err) = await PtProcess.RunAsync(Curl, "-sS", "--max-time", "60", "--socks5-hostname", chain.SocksEndPoint.ToString(),
                "-o", file, $"http://localhost:{http.Port}/file.bin");
            output.WriteLine($"100 MB through zephyr in {watch.Elapsed.TotalSeconds:0.00} s");
            Assert.True(exit == 0, $"curl exit {exit}: {err}\nclient stderr:\n{chain.Client.Stderr}\nserver stderr:\n{chain.Server.Stderr}");
            Assert.Equal(SHA256.HashData(body), SHA256.HashData(await File.ReadAllBytesAsync(file)));
        }
        finally { File.Delete(file); }

        Assert.Contains(chain.Client.StdoutLines, l => l.StartsWith("CMESSAGE zephyr {", StringComparison.Ordinal) && l.Contains("\"kind\":\"zephyr.offer\"", StringComparison.Ordinal));
        Assert.Contains(chain.Server.StdoutLines, l => l.StartsWith("SMESSAGE zephyr {", StringComparison.Ordinal) && l.Contains("\"kind\":\"zephyr.answer\"", StringComparison.Ordinal));
        var (s, c) = await chain.StopAsync();
        Assert.Equal(0, s);
        Assert.Equal(0, c);
        chain.Server.AssertOnlyProtocolLinesOnStdout();
        chain.Client.AssertOnlyProtocolLinesOnStdout();
    }

    [Fact]
    public async Task Hundred_MB_go_up_and_come_back_through_an_echo_server()
    {
        var data = RandomNumberGenerator.GetBytes(100 * 1024 * 1024);
        await using var echo = new EchoServer();
        await using var relay = await ZephyrRelayProcess.StartAsync();
        await using var chain = await ZephyrChain.StartAsync(relay.EndPoint.ToString());
        await using var socks = await SocksClient.ConnectAsync(chain.SocksEndPoint);
        await socks.SendAsync([.. SocksClient.Greeting(0x00), .. SocksClient.ConnectIPv4(IPAddress.Loopback, echo.Port)]);
        await socks.ReadExactlyAsync(2);
        Assert.Equal(0x00, await socks.ReadReplyAsync());
        var watch = Stopwatch.StartNew();
        var send = Task.Run(async () =>
        {
            await socks.Stream.WriteAsync(data);
            socks.Socket.Shutdown(SocketShutdown.Send);
        });
        var back = await socks.ReadToEndAsync(TimeSpan.FromSeconds(90));
        await send;
        output.WriteLine($"100 MB up and back through zephyr in {watch.Elapsed.TotalSeconds:0.00} s");
        Assert.Equal(SHA256.HashData(data), SHA256.HashData(back));
    }

    [Fact]
    public async Task Twenty_sessions_at_once_each_get_their_own_bytes_back()
    {
        await using var echo = new EchoServer();
        await using var relay = await ZephyrRelayProcess.StartAsync();
        await using var chain = await ZephyrChain.StartAsync(relay.EndPoint.ToString());
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
    }

    [Fact]
    public async Task Without_the_messages_the_SOCKS_request_fails_with_0x06_within_the_signal_timeout()
    {
        await using var echo = new EchoServer();
        await using var relay = await ZephyrRelayProcess.StartAsync();
        await using var chain = await ZephyrChain.StartAsync(relay.EndPoint.ToString(), signalTimeout: 3, relayMessages: false);
        var watch = Stopwatch.StartNew();
        Assert.Equal(0x06, await ConnectReply(chain, SocksClient.ConnectIPv4(IPAddress.Loopback, echo.Port)));
        Assert.InRange(watch.Elapsed.TotalSeconds, 2.5, 8);
        Assert.Equal(0, echo.Accepted);
        // The offer was sent (more than once: unanswered offers are repeated).
        Assert.True(chain.Client.StdoutLines.Count(l => l.Contains("\"kind\":\"zephyr.offer\"", StringComparison.Ordinal)) >= 2);
    }

    [Fact]
    public async Task With_no_relay_running_the_request_fails_with_0x04_and_the_client_keeps_serving()
    {
        await using var echo = new EchoServer();
        using var dead = new RefusingPort();
        await using var chain = await ZephyrChain.StartAsync(dead.EndPoint.ToString(), signalTimeout: 3);
        var watch = Stopwatch.StartNew();
        Assert.Equal(0x04, await ConnectReply(chain, SocksClient.ConnectIPv4(IPAddress.Loopback, echo.Port)));
        Assert.Equal(0x04, await ConnectReply(chain, SocksClient.ConnectIPv4(IPAddress.Loopback, echo.Port)));
        Assert.True(watch.Elapsed < TimeSpan.FromSeconds(10), $"took {watch.Elapsed}");
        // Still running and answering: a third request gets its reply too.
        Assert.Equal(0x04, await ConnectReply(chain, SocksClient.ConnectIPv4(IPAddress.Loopback, echo.Port)));
    }

    [Fact]
    public async Task Relays_are_tried_in_order_a_dead_first_relay_falls_back_to_the_next()
    {
        await using var echo = new EchoServer();
        await using var relay = await ZephyrRelayProcess.StartAsync();
        using var dead = new RefusingPort();
        var relays = new JArray(dead.EndPoint.ToString(), relay.EndPoint.ToString());
        await using var chain = await ZephyrChain.StartAsync(relays);
        await AssertEchoes(chain, echo, "fallback");
    }

    [Fact]
    public async Task A_wrong_server_pin_fails_TLS_and_the_request_gets_a_failure_reply()
    {
        await using var echo = new EchoServer();
        await using var relay = await ZephyrRelayProcess.StartAsync();
        var otherPin = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(32));
        await using var chain = await ZephyrChain.StartAsync(relay.EndPoint.ToString(), editClient: o => o["serverPin"] = otherPin);
        var watch = Stopwatch.StartNew();
        Assert.Equal(0x01, await ConnectReply(chain, SocksClient.ConnectIPv4(IPAddress.Loopback, echo.Port)));
        Assert.True(watch.Elapsed < TimeSpan.FromSeconds(15), $"took {watch.Elapsed}");
        Assert.Equal(0, echo.Accepted);
    }

    [Fact]
    public async Task A_client_certificate_the_server_does_not_pin_is_refused()
    {
        await using var echo = new EchoServer();
        await using var relay = await ZephyrRelayProcess.StartAsync();
        var otherPin = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(32));
        await using var chain = await ZephyrChain.StartAsync(relay.EndPoint.ToString(), editServer: o => o["clientPins"] = new JArray(otherPin));
        Assert.NotEqual(0x00, await ConnectReply(chain, SocksClient.ConnectIPv4(IPAddress.Loopback, echo.Port)));
        Assert.Equal(0, echo.Accepted);
    }

    [Fact]
    public async Task The_bytes_crossing_the_relay_are_not_the_plaintext()
    {
        byte[] marker = Encoding.ASCII.GetBytes("ZEPHYR-PLAINTEXT-MARKER-0123456789");
        var body = Enumerable.Repeat(marker, 20_000).SelectMany(b => b).ToArray();
        await using var http = new HttpFileServer(body);
        await using var relay = await ZephyrRelayProcess.StartAsync();
        await using var recorder = new RecordingForwarder(relay.EndPoint);
        await using var chain = await ZephyrChain.StartAsync(recorder.EndPoint.ToString());

        string file = Path.Combine(Path.GetTempPath(), $"pthost-zephyr-{Guid.NewGuid():N}");
        try
        {
            var (exit, _, err) = await PtProcess.RunAsync(Curl, "-sS", "--max-time", "60", "--socks5-hostname", chain.SocksEndPoint.ToString(),
                "-o", file, $"http://localhost:{http.Port}/file.bin");
            Assert.True(exit == 0, $"curl exit {exit}: {err}");
            Assert.Equal(body, await File.ReadAllBytesAsync(file));
        }
        finally { File.Delete(file); }

        byte[] seen = recorder.Recorded();
        Assert.True(seen.Length > body.Length, $"the recorder saw only {seen.Length} bytes");
        Assert.Equal(-1, seen.AsSpan().IndexOf(marker));
        Assert.Equal(-1, seen.AsSpan().IndexOf("GET /file.bin"u8));
        Assert.Equal(-1, seen.AsSpan().IndexOf(Encoding.ASCII.GetBytes($"127.0.0.1:{http.Port}")));
    }

    [Fact]
    public async Task When_the_first_answer_is_lost_the_resent_offer_s_answer_completes_the_session()
    {
        await using var echo = new EchoServer();
        await using var relay = await ZephyrRelayProcess.StartAsync();
        // signalTimeout 6 s: an unanswered offer is sent again after 2 s.
        await using var chain = await ZephyrChain.StartAsync(relay.EndPoint.ToString(), signalTimeout: 6, relayMessages: false);
        await using var socks = await SocksClient.ConnectAsync(chain.SocksEndPoint);
        await socks.SendAsync([.. SocksClient.Greeting(0x00), .. SocksClient.ConnectIPv4(IPAddress.Loopback, echo.Port), .. "late"u8.ToArray()]);

        string first = await chain.Client.WaitForLineAsync("CMESSAGE zephyr ");
        await chain.Server.WriteLineAsync(first);
        string lost = await chain.Server.WaitForLineAsync("SMESSAGE zephyr "); // not delivered
        string again = await chain.Client.WaitForLineAsync("CMESSAGE zephyr ");
        Assert.NotEqual(first, again);
        await chain.Server.WriteLineAsync(again);
        string answer = await chain.Server.WaitForLineAsync("SMESSAGE zephyr ");
        Assert.Equal(JObject.Parse(lost["SMESSAGE zephyr ".Length..])["body"]!.ToString(), JObject.Parse(answer["SMESSAGE zephyr ".Length..])["body"]!.ToString());
        await chain.Client.WriteLineAsync(answer);

        await socks.ReadExactlyAsync(2);
        Assert.Equal(0x00, await socks.ReadReplyAsync());
        Assert.Equal("late"u8.ToArray(), await socks.ReadExactlyAsync(4));
    }

    [Fact]
    public async Task A_resent_offer_gets_the_same_zid_and_the_server_lets_go_when_the_client_never_binds()
    {
        await using var relay = await ZephyrRelayProcess.StartAsync("--peer-timeout", "2");
        using var client = await ZephyrPeer.ConnectAsync(relay.EndPoint); // joins, but never binds
        var generated = await ZephyrChain.GenerateAsync();
        var config = PtChain.FreeServer("zephyr");
        generated["server"]!["relay"] = relay.EndPoint.ToString();
        config["options"] = new JObject { ["zephyr"] = generated["server"] };
        await using var server = PtProcess.StartPthost(config.ToString(Newtonsoft.Json.Formatting.None));
        var startup = await server.ReadUntilDoneAsync();
        Assert.Contains(startup, l => l.StartsWith("SMETHOD zephyr ", StringComparison.Ordinal) && l.Contains("ARGS:pin=", StringComparison.Ordinal));

        long exp = DateTimeOffset.UtcNow.ToUnixTimeSeconds() + 60;
        var body = new JObject { ["zid"] = client.Zid, ["relay"] = relay.EndPoint.ToString(), ["nonce"] = "0123456789abcdef" };
        var answers = new List<JObject>();
        foreach (int mid in new[] { 7, 8 })
        {
            var envelope = new JObject { ["v"] = 1, ["mid"] = mid, ["cid"] = "00000000000000aa", ["exp"] = exp, ["kind"] = "zephyr.offer", ["body"] = body };
            await server.WriteLineAsync("CMESSAGE zephyr " + envelope.ToString(Newtonsoft.Json.Formatting.None));
            string line = await server.WaitForLineAsync("SMESSAGE zephyr ");
            var answer = JObject.Parse(line["SMESSAGE zephyr ".Length..]);
            Assert.Equal("zephyr.answer", (string?)answer["kind"]);
            Assert.Equal("00000000000000aa", (string?)answer["cid"]);
            Assert.Equal(mid, (long)answer["re"]!);
            Assert.Equal("0123456789abcdef", (string?)answer["body"]!["nonce"]);
            answers.Add(answer);
        }
        long zid = (long)answers[0]["body"]!["zid"]!;
        Assert.Equal(zid, (long)answers[1]["body"]!["zid"]!);
        Assert.NotEqual(client.Zid, zid);
        // The relay drops the server's waiting connection after its peer timeout; the server does not hang on to a second one.
        await relay.Process.WaitForStderrAsync($"zid {zid}: no matching bind", within: TimeSpan.FromSeconds(10));
        Assert.DoesNotContain("bound zid", relay.Process.Stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task An_offer_naming_a_relay_outside_the_servers_relays_gets_an_error_answer()
    {
        var generated = await ZephyrChain.GenerateAsync();
        var options = (JObject)generated["server"]!;
        options["relays"] = new JArray("127.0.0.1:1");
        var config = PtChain.FreeServer("zephyr");
        config["options"] = new JObject { ["zephyr"] = options };
        await using var server = PtProcess.StartPthost(config.ToString(Newtonsoft.Json.Formatting.None));
        await server.ReadUntilDoneAsync();
        var envelope = new JObject
        {
            ["v"] = 1, ["mid"] = 3, ["cid"] = "00000000000000bb", ["exp"] = DateTimeOffset.UtcNow.ToUnixTimeSeconds() + 60, ["kind"] = "zephyr.offer",
            ["body"] = new JObject { ["zid"] = 5, ["relay"] = "127.0.0.1:2", ["nonce"] = "n" },
        };
        await server.WriteLineAsync("CMESSAGE zephyr " + envelope.ToString(Newtonsoft.Json.Formatting.None));
        var answer = JObject.Parse((await server.WaitForLineAsync("SMESSAGE zephyr "))["SMESSAGE zephyr ".Length..]);
        Assert.Equal(3, (long)answer["re"]!);
        Assert.Null(answer["body"]!["zid"]);
        Assert.Contains("127.0.0.1:2", (string?)answer["body"]!["error"]);
    }

    private static async Task<byte> ConnectReply(PtChain chain, byte[] request)
    {
        await using var socks = await SocksClient.ConnectAsync(chain.SocksEndPoint);
        await socks.SendAsync([.. SocksClient.Greeting(0x00), .. request]);
        Assert.Equal(new byte[] { 5, 0 }, await socks.ReadExactlyAsync(2));
        return await socks.ReadReplyAsync();
    }

    private static async Task AssertEchoes(PtChain chain, EchoServer echo, string text)
    {
        byte[] payload = Encoding.ASCII.GetBytes(text);
        await using var socks = await SocksClient.ConnectAsync(chain.SocksEndPoint);
        await socks.SendAsync([.. SocksClient.Greeting(0x00), .. SocksClient.ConnectIPv4(IPAddress.Loopback, echo.Port), .. payload]);
        await socks.ReadExactlyAsync(2);
        Assert.Equal(0x00, await socks.ReadReplyAsync());
        Assert.Equal(payload, await socks.ReadExactlyAsync(payload.Length));
    }
}

/// <summary>A TCP forwarder in front of the relay that keeps every byte it carries, both ways.</summary>
internal sealed class RecordingForwarder : IAsyncDisposable
{
    private readonly TcpListener _listener = new(IPAddress.Loopback, 0);
    private readonly IPEndPoint _target;
    private readonly CancellationTokenSource _cts = new();
    private readonly MemoryStream _recorded = new();
    private readonly Task _loop;

    public RecordingForwarder(IPEndPoint target)
    {
        _target = target;
        _listener.Start();
        _loop = Task.Run(LoopAsync);
    }

    public IPEndPoint EndPoint => (IPEndPoint)_listener.LocalEndpoint;

    public byte[] Recorded()
    {
        lock (_recorded) return _recorded.ToArray();
    }

    private async Task LoopAsync()
    {
        while (!_cts.IsCancellationRequested)
        {
            TcpClient inbound;
            try { inbound = await _listener.AcceptTcpClientAsync(_cts.Token); }
            catch (Exception) { return; }
            _ = Task.Run(async () =>
            {
                using var a = inbound;
                using var b = new TcpClient();
                try
                {
                    await b.ConnectAsync(_target, _cts.Token);
                    await Task.WhenAll(Pump(a.Client, b.Client), Pump(b.Client, a.Client));
                }
                catch (Exception) { }
            });
        }
    }

    private async Task Pump(Socket from, Socket to)
    {
        var buffer = new byte[64 * 1024];
        try
        {
            int n;
            while ((n = await from.ReceiveAsync(buffer, _cts.Token)) > 0)
            {
                lock (_recorded) _recorded.Write(buffer, 0, n);
                await to.SendAsync(buffer.AsMemory(0, n), _cts.Token);
            }
            to.Shutdown(SocketShutdown.Send);
        }
        catch (Exception) { }
    }

    public async ValueTask DisposeAsync()
    {
        _cts.Cancel();
        _listener.Stop();
        await _loop;
    }
}
