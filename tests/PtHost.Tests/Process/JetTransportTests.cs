using System.Diagnostics;
using System.Net;
using System.Security.Cryptography;
using Newtonsoft.Json.Linq;
using Xunit.Abstractions;

namespace PtHost.Tests.Process;

/// <summary>
/// The jet transport end to end (spec/jet.md §7): a real relay process, a real server and client
/// pthost with a generated configuration, CMESSAGE/SMESSAGE carried by the test, curl as the application.
/// </summary>
[Collection("process")]
public class JetTransportTests(ITestOutputHelper output)
{
    private static string Curl => DebianPrograms.Curl;

    /// <summary>
    /// spec/jet.md §7.3 step 3: with <c>directInterfaces</c> a server listening on 0.0.0.0 also offers its interfaces'
    /// addresses as direct candidates. The configured <c>directAddress</c> points nowhere, so only an interface's
    /// candidate can carry the session.
    /// </summary>
    [Fact]
    public async Task With_directInterfaces_a_wildcard_listener_offers_each_interface_address()
    {
        var address = System.Net.NetworkInformation.NetworkInterface.GetAllNetworkInterfaces()
            .Where(n => n.OperationalStatus == System.Net.NetworkInformation.OperationalStatus.Up)
            .SelectMany(n => n.GetIPProperties().UnicastAddresses).Select(u => u.Address)
            .FirstOrDefault(a => a.AddressFamily == System.Net.Sockets.AddressFamily.InterNetwork && !System.Net.IPAddress.IsLoopback(a));
        Assert.True(address is not null, "this machine has no non-loopback IPv4 address");
        var body = RandomNumberGenerator.GetBytes(300_000);
        await using var http = new HttpFileServer(body);
        var generated = await JetChain.GenerateAsync();
        var server = (JObject)generated["server"]!;
        server["kinds"] = new JArray("direct", "direct-tls");
        server["directInterfaces"] = true;
        server["directAddress"] = "127.0.0.1:9";
        var serverConfig = PtChain.FreeServerOf("jet", server);
        serverConfig["bindaddr"] = new JObject { ["jet"] = "0.0.0.0:0" };
        serverConfig["loglevel"] = "debug";
        var clientConfig = PtChain.ClientOf("jet", (JObject)generated["client"]!);
        clientConfig["loglevel"] = "debug";
        await using var chain = await PtChain.StartAsync(serverConfig, _ => clientConfig);
        await AssertCurlAsync(chain, http, body);
        string answer = chain.Server.StdoutLines.Last(l => l.Contains("\"kind\":\"jet.answer\"", StringComparison.Ordinal));
        Assert.Contains($"tcp://{address}:{chain.ServerEndPoint.Port}", answer, StringComparison.Ordinal);
        Assert.Contains($"tls://{address}:{chain.ServerEndPoint.Port}", answer, StringComparison.Ordinal);
    }

    /// <summary>
    /// spec/jet.md §7.1, §7.4: a client given <c>relayPins</c> checks the relay's certificate on tls candidates: the
    /// relay's own pin carries the session; a wrong pin makes the candidate fail (skipped, the request refused).
    /// </summary>
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task A_client_with_relayPins_checks_the_relay_certificate(bool rightPin)
    {
        var body = RandomNumberGenerator.GetBytes(100_000);
        await using var http = new HttpFileServer(body);
        await using var relay = await JetRelayProcess.StartAsync();
        string pin = rightPin ? (await relay.CertificatePinAsync())! : new string('0', 64);
        await using var chain = await JetChain.StartAsync(relay,
            editClient: o => o["relayPins"] = new JObject { [relay.Http.Address.ToString()] = pin },
            editServer: o => o["kinds"] = new JArray("tls"));
        if (rightPin)
        {
            await AssertCurlAsync(chain, http, body);
            return;
        }
        var (exit, _, _) = await PtProcess.RunAsync(Curl, "-sS", "--max-time", "60", "--socks5-hostname", chain.SocksEndPoint.ToString(), "-o", "/dev/null", $"http://localhost:{http.Port}/file.bin");
        Assert.NotEqual(0, exit);
        await chain.Client.WaitForStderrAsync("candidate");
        Assert.Contains("skipped", chain.Client.Stderr, StringComparison.Ordinal);
    }

    /// <summary>
    /// spec/jet.md §7.1, §7.3: with <c>relays</c> the server creates the same association at each relay at once and offers
    /// every relay's candidates; the client races them all. A relay that is down leaves only its candidates out.
    /// </summary>
    [Fact]
    public async Task Several_relays_are_offered_together_and_a_dead_one_leaves_the_others()
    {
        var body = RandomNumberGenerator.GetBytes(300_000);
        await using var http = new HttpFileServer(body);
        await using var a = await JetRelayProcess.StartAsync();
        await using var b = await JetRelayProcess.StartAsync();
        await using var chain = await JetChain.StartAsync(a, editServer: o =>
        {
            o.Remove("relay");
            o["relays"] = new JArray($"http://{a.Http}", $"http://{b.Http}");
            o["kinds"] = new JArray("tcp");
        });
        await AssertCurlAsync(chain, http, body);
        string answer = chain.Server.StdoutLines.Last(l => l.Contains("\"kind\":\"jet.answer\"", StringComparison.Ordinal));
        Assert.Contains($"tcp://{a.Tcp}", answer, StringComparison.Ordinal);
        Assert.Contains($"tcp://{b.Tcp}", answer, StringComparison.Ordinal);

        a.Process.Signal(9); // SIGKILL: relay a is gone
        await a.Process.WaitForExitAsync();
        await AssertCurlAsync(chain, http, body); // only relay b's candidate can carry it
    }

    /// <summary>
    /// spec/jet.md §4, §7.3 step 5: a relay that answers the v2 accept with the seed's 200 (reading its Jet-Instance) and
    /// one that sends nothing (answerV2Accept false, as earlier builds) both carry the session, on tcp and tls candidates.
    /// </summary>
    [Theory]
    [InlineData(true, "tcp")]
    [InlineData(true, "tls")]
    [InlineData(false, "tcp")]
    [InlineData(false, "tls")]
    public async Task A_relay_that_answers_the_v2_accept_and_one_that_does_not_both_carry_the_session(bool answers, string kind)
    {
        var body = RandomNumberGenerator.GetBytes(300_000);
        await using var http = new HttpFileServer(body);
        await using var relay = await JetRelayProcess.StartAsync(new JObject { ["answerV2Accept"] = answers, ["instance"] = "relay-answering" });
        await using var chain = await JetChain.StartAsync(relay, editServer: o => o["kinds"] = new JArray(kind));
        await AssertCurlAsync(chain, http, body);
        await chain.Client.WaitForStderrAsync($"through the {kind} candidate");
        if (answers) await chain.Server.WaitForStderrAsync($"the {kind} accept answered 200 by relay instance relay-answering");
        else Assert.DoesNotContain("accept answered 200", chain.Server.Stderr, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("tcp")]
    [InlineData("tls")]
    [InlineData("ws")]
    [InlineData("wss")]
    [InlineData("direct")]
    [InlineData("direct-tls")]
    public async Task Curl_fetches_through_each_candidate_kind(string kind)
    {
        var body = RandomNumberGenerator.GetBytes(300_000);
        await using var http = new HttpFileServer(body);
        await using var relay = await JetRelayProcess.StartAsync();
        await using var chain = await JetChain.StartAsync(relay, editServer: o => o["kinds"] = new JArray(kind));
        await AssertCurlAsync(chain, http, body);
        await chain.Client.WaitForStderrAsync($"through the {kind} candidate"); // the log may reach stderr after curl is done
        Assert.Contains(chain.Client.StdoutLines, l => l.StartsWith("CMESSAGE jet {", StringComparison.Ordinal) && l.Contains("\"kind\":\"jet.offer\"", StringComparison.Ordinal));
        Assert.Contains(chain.Server.StdoutLines, l => l.StartsWith("SMESSAGE jet {", StringComparison.Ordinal) && l.Contains("\"kind\":\"jet.answer\"", StringComparison.Ordinal));
        var (s, c) = await chain.StopAsync();
        Assert.Equal(0, s);
        Assert.Equal(0, c);
        chain.Server.AssertOnlyProtocolLinesOnStdout();
        chain.Client.AssertOnlyProtocolLinesOnStdout();
    }

    [Fact]
    public async Task Curl_fetches_100_MB_with_every_candidate_raced_and_the_SHA256_intact()
    {
        var body = RandomNumberGenerator.GetBytes(100 * 1024 * 1024);
        await using var http = new HttpFileServer(body);
        await using var relay = await JetRelayProcess.StartAsync();
        await using var chain = await JetChain.StartAsync(relay, editServer: o => o["kinds"] = new JArray("tcp", "tls", "ws", "wss", "direct"));
        var watch = Stopwatch.StartNew();
        await AssertCurlAsync(chain, http, body);
        output.WriteLine($"100 MB through jet in {watch.Elapsed.TotalSeconds:0.00} s");
        // The candidates that lost the race were closed, and the relay removed the finished session's candidate.
        await relay.Process.WaitForStderrAsync("session finished, candidate removed");
    }

    [Fact]
    public async Task A_candidate_that_cannot_connect_is_skipped_and_another_carries_the_session()
    {
        var body = RandomNumberGenerator.GetBytes(10_000);
        await using var http = new HttpFileServer(body);
        await using var relay = await JetRelayProcess.StartAsync();
        using var refusing = new RefusingPort();
        int dead = refusing.Port;
        await using var chain = await JetChain.StartAsync(relay, editServer: o =>
        {
            o["kinds"] = new JArray("direct", "ws");
            o["directAddress"] = $"127.0.0.1:{dead}"; // advertised, but nothing listens there
        });
        await AssertCurlAsync(chain, http, body);
        // The log may reach stderr after curl is done. The one direct candidate is the dead address, scrubbed in the log (spec/ipc.md §4.11).
        await chain.Client.WaitForStderrAsync("direct candidate [scrubbed] skipped");
        await chain.Client.WaitForStderrAsync("through the ws candidate");
    }

    [Fact]
    public async Task With_no_usable_candidate_the_request_fails_with_0x04_and_the_client_keeps_serving()
    {
        await using var relay = await JetRelayProcess.StartAsync();
        using var refusing = new RefusingPort();
        int dead = refusing.Port;
        await using var chain = await JetChain.StartAsync(relay, editServer: o =>
        {
            o["kinds"] = new JArray("direct");
            o.Remove("relay");
            o["directAddress"] = $"127.0.0.1:{dead}";
        });
        await using var echo = new EchoServer();
        for (int i = 0; i < 2; i++)
        {
            await using var socks = await SocksClient.ConnectAsync(chain.SocksEndPoint);
            await socks.SendAsync([.. SocksClient.Greeting(0x00), .. SocksClient.ConnectIPv4(IPAddress.Loopback, echo.Port)]);
            Assert.Equal(new byte[] { 5, 0 }, await socks.ReadExactlyAsync(2));
            Assert.Equal(0x04, await socks.ReadReplyAsync());
        }
        Assert.Equal(0, echo.Accepted);
    }

    [Fact]
    public async Task A_wrong_server_pin_fails_every_candidate_and_the_request_gets_a_failure_reply()
    {
        await using var relay = await JetRelayProcess.StartAsync();
        await using var echo = new EchoServer();
        string otherPin = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(32));
        await using var chain = await JetChain.StartAsync(relay, editClient: o => o["serverPin"] = otherPin);
        await using var socks = await SocksClient.ConnectAsync(chain.SocksEndPoint);
        await socks.SendAsync([.. SocksClient.Greeting(0x00), .. SocksClient.ConnectIPv4(IPAddress.Loopback, echo.Port)]);
        await socks.ReadExactlyAsync(2);
        Assert.NotEqual(0x00, await socks.ReadReplyAsync());
        Assert.Equal(0, echo.Accepted);
    }

    [Fact]
    public async Task The_direct_listener_refuses_an_unknown_association_with_404()
    {
        await using var relay = await JetRelayProcess.StartAsync();
        await using var chain = await JetChain.StartAsync(relay, editServer: o => o["kinds"] = new JArray("direct", "tcp"));
        await using var peer = await JetPeer.ConnectAsync(chain.ServerEndPoint);
        await peer.SendRequestAsync(Transports.Jet.JetWire.BuildRequest(Transports.Jet.JetMethod.Connect, Guid.NewGuid(), Guid.NewGuid(), chain.ServerEndPoint.ToString()));
        Assert.Equal(404, (await peer.ReadResponseAsync()).Status);
        Assert.True(await peer.IsClosedAsync());
    }

    private static async Task AssertCurlAsync(PtChain chain, HttpFileServer http, byte[] body)
    {
        string file = Path.Combine(Path.GetTempPath(), $"pthost-jet-{Guid.NewGuid():N}");
        try
        {
            var (exit, _, err) = await PtProcess.RunAsync(Curl, "-sS", "--max-time", "90", "--socks5-hostname", chain.SocksEndPoint.ToString(),
                "-o", file, $"http://localhost:{http.Port}/file.bin");
            Assert.True(exit == 0, $"curl exit {exit}: {err}\nclient stderr:\n{chain.Client.Stderr}\nserver stderr:\n{chain.Server.Stderr}");
            Assert.Equal(SHA256.HashData(body), SHA256.HashData(await File.ReadAllBytesAsync(file)));
        }
        finally { File.Delete(file); }
    }
}
