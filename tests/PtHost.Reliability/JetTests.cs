using Newtonsoft.Json.Linq;
using PtHost.Reliability.Support;
using Xunit.Abstractions;

namespace PtHost.Reliability;

/// <summary>
/// The jet transport under load and faults: client pthost → `pthost relay jet` (tcp candidates) → server pthost,
/// real processes, CMESSAGE/SMESSAGE carried by the test (spec/jet.md §7).
/// </summary>
public class JetTests(ITestOutputHelper output)
{
    private const int SIGKILL = 9;

    // Each session holds two relay connections from 127.0.0.1 (acceptor and connector): above the default limits.
    private static JObject RelayConfig() => new() { ["maxPerSource"] = 20000, ["maxConnections"] = 20000, ["maxAssociationsPerSource"] = 20000 };

    /// <summary>A jet server (free, allow 127.0.0.1, offering only the relay's tcp candidate) and client, from <c>generate-config jet</c>.</summary>
    internal static async Task<PtChain> StartChainAsync(JetRelayProcess relay)
    {
        var generated = await JetChain.GenerateAsync();
        var client = (JObject)generated["client"]!;
        var server = (JObject)generated["server"]!;
        server["relay"] = $"http://{relay.Http}";
        server["kinds"] = new JArray("tcp");
        client["signalTimeout"] = 30;
        server["signalTimeout"] = 30;
        var serverConfig = PtChain.FreeServer("jet");
        serverConfig["options"] = new JObject { ["jet"] = server };
        serverConfig["loglevel"] = "info";
        var clientConfig = new JObject
        {
            ["role"] = "client",
            ["transports"] = new JArray("jet"),
            ["options"] = new JObject { ["jet"] = client },
            ["exit-on-stdin-close"] = true,
            ["loglevel"] = "info", // refusals are logged at info: a failed session shows why
        };
        return await PtChain.StartAsync(serverConfig, _ => clientConfig);
    }

    // This test found a relay defect (fixed 2026-11-30): a waiting acceptor's zero-byte receive
    // sometimes completed with nothing on the socket, the relay took it for a hang-up and dropped
    // the accept, and the client's connect got "400 not accepted yet" until its timeout.
    [Fact]
    public async Task Two_rounds_of_2000_concurrent_sessions_through_jet_lose_no_byte_leak_nothing_and_do_not_grow_memory()
    {
        await using var echo = new EchoServer();
        await using var relay = await JetRelayProcess.StartAsync(RelayConfig(), loglevel: "warning");
        await using var chain = await StartChainAsync(relay);
        int n = LoadTests.Sessions;
        // At the peak the client holds a SOCKS and a relay socket per session, the server a relay and a
        // target socket, the relay both ends of each pair.
        await TransportScenarios.LoadAsync(output, chain, echo,
            [new("client", chain.Client.Pid, 2 * n), new("server", chain.Server.Pid, 2 * n, relay.Http.Port), new("relay", relay.Process.Pid, 2 * n, relay.Http.Port)],
            rounds: 2, seed: 300);
        var (s, c) = await chain.StopAsync();
        Assert.Equal(0, s);
        Assert.Equal(0, c);
    }

    [Fact]
    public async Task Killing_the_relay_under_streaming_sessions_ends_each_and_a_relay_restarted_on_its_port_carries_new_sessions()
    {
        await using var echo = new EchoServer();
        var relay = await JetRelayProcess.StartAsync(RelayConfig(), loglevel: "warning");
        JetRelayProcess? again = null;
        try
        {
            await using var chain = await StartChainAsync(relay);
            await Sessions.EchoRoundTripAsync(chain.SocksEndPoint, echo.Port, 64 * 1024);
            var rest = await chain.SocketsAtRestAsync();
            int c0 = rest[0], s0 = rest[1];

            // The relay's death closes every TCP connection it held: the hosts see EOF or a reset at once
            // (no timeout is involved); the test allows 30 s.
            var ends = await TransportScenarios.KillUnderStreamsAsync(output, chain, echo.Port, 10, async () =>
            {
                relay.Process.Signal(SIGKILL);
                Assert.NotEqual(0, await relay.Process.WaitForExitAsync(TimeSpan.FromSeconds(15)));
            }, TimeSpan.FromSeconds(30));

            // With no relay the server cannot gather candidates: a new session gets a failure reply, not a hang.
            var (reply, down) = await Sessions.ConnectAsync(chain.SocksEndPoint, echo.Port, TimeSpan.FromSeconds(60));
            await down.DisposeAsync();
            output.WriteLine($"with the relay down a new session is answered {reply:x2}");
            Assert.NotEqual(0, reply);

            int cs = await ProcStats.WaitForSocketsAtMostAsync(chain.Client.Pid, c0 + 2, TimeSpan.FromSeconds(30));
            int ss = await ProcStats.WaitForSocketsAtMostAsync(chain.Server.Pid, s0 + 2, TimeSpan.FromSeconds(30));
            output.WriteLine($"sockets/pipes after the kill: client {c0} → {cs}, server {s0} → {ss}");
            Assert.True(cs <= c0 + 2, $"client: {ProcStats.FdSummary(chain.Client.Pid)}");
            Assert.True(ss <= s0 + 2, $"server: {ProcStats.FdSummary(chain.Server.Pid)}");

            // A relay restarted on the same REST port: the same client and server carry sessions again.
            again = await JetRelayProcess.StartAsync(RelayConfig(), listen: relay.Http.ToString(), loglevel: "warning");
            var took = await TransportScenarios.EchoWorksAgainAsync(chain, echo.Port, TimeSpan.FromSeconds(60));
            output.WriteLine($"first session through the restarted relay after {took.TotalSeconds:0.0} s");
            await Task.WhenAll(Enumerable.Range(0, 20).Select(_ => Sessions.EchoRoundTripAsync(chain.SocksEndPoint, echo.Port, 128 * 1024)));
            Assert.All(ends, e => Assert.InRange(e, 0, 30));
        }
        finally
        {
            await relay.DisposeAsync();
            if (again is not null) await again.DisposeAsync();
        }
    }

    /// <summary>Client, server and relay; the REST connections between server and relay are a keep-alive pool.</summary>
    private static Watched[] Watch(PtChain chain, JetRelayProcess relay) =>
        [new("client", chain.Client.Pid), new("server", chain.Server.Pid, 0, relay.Http.Port), new("relay", relay.Process.Pid, 0, relay.Http.Port)];

    [Fact]
    public async Task A_refusing_target_is_answered_05_and_leaves_nothing_behind()
    {
        await using var echo = new EchoServer();
        await using var relay = await JetRelayProcess.StartAsync(RelayConfig(), loglevel: "warning");
        await using var chain = await StartChainAsync(relay);
        await TransportScenarios.RefusingTargetAsync(output, chain, echo,
            Watch(chain, relay));
    }

    [Fact]
    public async Task A_far_end_that_never_reads_blocks_only_its_own_session()
    {
        await using var echo = new EchoServer();
        await using var relay = await JetRelayProcess.StartAsync(RelayConfig(), loglevel: "warning");
        await using var chain = await StartChainAsync(relay);
        await TransportScenarios.StalledFarEndAsync(output, chain, echo,
            Watch(chain, relay));
    }

    [Fact]
    public async Task Half_close_in_either_direction_still_carries_the_other()
    {
        await using var relay = await JetRelayProcess.StartAsync(RelayConfig(), loglevel: "warning");
        await using var chain = await StartChainAsync(relay);
        await TransportScenarios.HalfCloseFromApplicationAsync(chain);
        await TransportScenarios.HalfCloseFromFarEndAsync(chain);
    }
}
