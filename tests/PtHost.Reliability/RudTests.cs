using Newtonsoft.Json.Linq;
using PtHost.Reliability.Support;
using Xunit.Abstractions;

namespace PtHost.Reliability;

/// <summary>
/// The rud transport under load and faults: client pthost → UDP (RUD connections, one stream per
/// session) → server pthost (free, allow 127.0.0.1) → target, real processes (spec/rud.md §12).
/// </summary>
public class RudTests(ITestOutputHelper output)
{
    private const int SIGKILL = 9;

    /// <summary>The chain, and the server's configuration (to start it again on the same port with the same key).</summary>
    internal static async Task<(PtChain Chain, JObject ServerConfig)> StartChainAsync(string clientLogLevel = "warning")
    {
        await using var p = PtProcess.StartPthost("generate-config", "rud");
        Assert.Equal(0, await p.WaitForExitAsync());
        var generated = JObject.Parse(string.Join("\n", p.StdoutLines));
        var serverConfig = PtChain.FreeServer("rud");
        serverConfig["loglevel"] = "warning";
        serverConfig["options"] = new JObject { ["rud"] = generated["server"] };
        var chain = await PtChain.StartAsync(serverConfig, serverEp =>
        {
            var client = (JObject)generated["client"]!;
            client["serverAddress"] = serverEp.ToString();
            return new JObject
            {
                ["role"] = "client",
                ["transports"] = new JArray("rud"),
                ["options"] = new JObject { ["rud"] = client },
                ["exit-on-stdin-close"] = true,
                ["loglevel"] = clientLogLevel,
            };
        });
        return (chain, serverConfig);
    }

    [Fact]
    public async Task Two_rounds_of_2000_concurrent_sessions_through_rud_lose_no_byte_leak_nothing_and_do_not_grow_memory()
    {
        await using var echo = new EchoServer();
        var (chain, _) = await StartChainAsync(clientLogLevel: "info");
        await using var _ = chain;
        int n = LoadTests.Sessions;
        // 2,000 streams at once need 8 RUD connections (256 streams each); the sessions ride UDP, so the
        // client holds one SOCKS socket per session and the server one target socket.
        await TransportScenarios.LoadAsync(output, chain, echo,
            [new("client", chain.Client.Pid, n), new("server", chain.Server.Pid, n)],
            rounds: 2, seed: 500);
        int connections = chain.Client.Stderr.Split('\n').Count(l => l.Contains("rud: connected to", StringComparison.Ordinal));
        output.WriteLine($"the client made {connections} rud connections");
        Assert.True(connections >= (n + 255) / 256, $"{connections} rud connections for {n} concurrent streams");
        var (s, c) = await chain.StopAsync();
        Assert.Equal(0, s);
        Assert.Equal(0, c);
    }

    [Fact]
    public async Task Killing_the_server_under_streaming_sessions_ends_each_within_the_idle_timeout_and_a_restarted_server_carries_new_sessions()
    {
        await using var echo = new EchoServer();
        var (chain, serverConfig) = await StartChainAsync();
        await using var _ = chain;
        await Sessions.EchoRoundTripAsync(chain.SocksEndPoint, echo.Port, 64 * 1024);
        int c0 = (await chain.SocketsAtRestAsync())[0];

        // Over UDP nothing tells the client that the server died: its connection closes after 30 s without an
        // authenticated packet (the idle timeout, spec/rud.md §7.4), failing its streams; the test allows 60 s.
        var ends = await TransportScenarios.KillUnderStreamsAsync(output, chain, echo.Port, 10, async () =>
        {
            chain.Server.Signal(SIGKILL);
            Assert.NotEqual(0, await chain.Server.WaitForExitAsync(TimeSpan.FromSeconds(15)));
        }, TimeSpan.FromSeconds(60));
        Assert.All(ends, e => Assert.InRange(e, 0, 60));

        // Without a server a new session fails (no handshake within handshakeTimeout: 06), it does not hang.
        var (reply, down) = await Sessions.ConnectAsync(chain.SocksEndPoint, echo.Port, TimeSpan.FromSeconds(60));
        await down.DisposeAsync();
        output.WriteLine($"with the server down a new session is answered {reply:x2}");
        Assert.NotEqual(0, reply);
        int cs = await ProcStats.WaitForSocketsAtMostAsync(chain.Client.Pid, c0 + 2, TimeSpan.FromSeconds(30));
        output.WriteLine($"client sockets/pipes after the kill: {c0} → {cs}");
        Assert.True(cs <= c0 + 2, $"client: {ProcStats.FdSummary(chain.Client.Pid)}");

        // A server restarted on the same UDP port with the same key: the same client carries sessions again.
        serverConfig["bindaddr"] = new JObject { ["rud"] = chain.ServerEndPoint.ToString() };
        await using var restarted = PtProcess.StartPthost(serverConfig.ToString(Newtonsoft.Json.Formatting.None));
        var lines = await restarted.ReadUntilDoneAsync();
        Assert.Contains(lines, l => l.StartsWith($"SMETHOD rud {chain.ServerEndPoint}", StringComparison.Ordinal));
        var took = await TransportScenarios.EchoWorksAgainAsync(chain, echo.Port, TimeSpan.FromSeconds(60));
        output.WriteLine($"first session through the restarted server after {took.TotalSeconds:0.0} s");
        await Task.WhenAll(Enumerable.Range(0, 20).Select(_ => Sessions.EchoRoundTripAsync(chain.SocksEndPoint, echo.Port, 128 * 1024)));
    }

    [Fact]
    public async Task A_refusing_target_is_answered_05_and_leaves_nothing_behind()
    {
        await using var echo = new EchoServer();
        var (chain, _) = await StartChainAsync();
        await using var _ = chain;
        await TransportScenarios.RefusingTargetAsync(output, chain, echo, [new("client", chain.Client.Pid), new("server", chain.Server.Pid)]);
    }

    [Fact]
    public async Task A_far_end_that_never_reads_blocks_only_its_own_session()
    {
        await using var echo = new EchoServer();
        var (chain, _) = await StartChainAsync();
        await using var _ = chain;
        await TransportScenarios.StalledFarEndAsync(output, chain, echo, [new("client", chain.Client.Pid), new("server", chain.Server.Pid)]);
    }

    [Fact]
    public async Task Half_close_in_either_direction_still_carries_the_other()
    {
        var (chain, _) = await StartChainAsync();
        await using var _ = chain;
        await TransportScenarios.HalfCloseFromApplicationAsync(chain);
        await TransportScenarios.HalfCloseFromFarEndAsync(chain);
    }
}
