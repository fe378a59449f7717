using System.Net;
using Newtonsoft.Json.Linq;
using PtHost.Reliability.Support;
using Xunit.Abstractions;

namespace PtHost.Reliability;

/// <summary>
/// The asport transport under load and faults: client pthost → the ASPORT relay's public TCP port
/// (`pthost relay asport`) → QUIC → server pthost (the ASPORT client, a free server) → target
/// (spec/asport.md §6), all real processes.
/// </summary>
public class AsportTests(ITestOutputHelper output)
{
    private const int SIGKILL = 9;

    internal static JObject ServerConfig(IPEndPoint relay)
    {
        var config = PtChain.FreeServer("asport");
        config["loglevel"] = "warning";
        config["options"] = new JObject
        {
            ["asport"] = new JObject
            {
                ["server"] = relay.ToString(),
                ["pin"] = Convert.ToHexString(AsportRelayProcess.Cert.Sha256).ToLowerInvariant(),
                ["user"] = AsportRelayProcess.User.ToString(),
                ["password"] = AsportRelayProcess.Password,
                ["ports"] = "20000-60000",
            },
        };
        return config;
    }

    /// <summary>
    /// The chain, once the client has learned the public address from the server's <c>asport.address</c>
    /// signal: the test carries that SMESSAGE asynchronously, and a session started before it arrives
    /// would take its SOCKS destination as the server address (spec/asport.md §6.2).
    /// </summary>
    internal static Task<PtChain> StartChainAsync(IPEndPoint relay) => PtChain.AnnouncedAsync(PtChain.StartAsync(ServerConfig(relay), _ => new JObject
    {
        ["role"] = "client",
        ["transports"] = new JArray("asport"),
        ["exit-on-stdin-close"] = true,
        ["loglevel"] = "info",
    }));

    [Fact]
    public async Task Two_rounds_of_2000_concurrent_sessions_through_asport_lose_no_byte_leak_nothing_and_do_not_grow_memory()
    {
        await using var echo = new EchoServer();
        await using var relay = await AsportRelayProcess.StartAsync();
        await using var chain = await StartChainAsync(relay.EndPoint);
        int n = LoadTests.Sessions;
        // At the peak: the client holds a SOCKS socket and a TCP connection to the public port per session,
        // the relay the accepted public connection (the QUIC streams need no fd), the server the target socket.
        await TransportScenarios.LoadAsync(output, chain, echo,
            [new("client", chain.Client.Pid, 2 * n), new("server", chain.Server.Pid, n), new("relay", relay.Process.Pid, n)],
            rounds: 2, seed: 400);
        var (s, c) = await chain.StopAsync();
        Assert.Equal(0, s);
        Assert.Equal(0, c);
    }

    [Fact]
    public async Task Killing_the_relay_under_streaming_sessions_ends_each_and_the_hosts_serve_again_once_it_is_back()
    {
        await using var echo = new EchoServer();
        var relay = await AsportRelayProcess.StartAsync();
        AsportRelayProcess? again = null;
        try
        {
            await using var chain = await StartChainAsync(relay.EndPoint);
            await Sessions.EchoRoundTripAsync(chain.SocksEndPoint, echo.Port, 64 * 1024);
            var rest = await chain.SocketsAtRestAsync();
            int c0 = rest[0], s0 = rest[1];
            int announced = Announcements(chain);

            // The client's TCP connections to the public port die with the relay (EOF or reset at once); the
            // server process learns it by the QUIC idle timeout (10 s, AsportRelayClientOptions.IdleTimeout) and
            // then closes its target sockets. The test allows 30 s for the SOCKS streams.
            var ends = await TransportScenarios.KillUnderStreamsAsync(output, chain, echo.Port, 10, async () =>
            {
                relay.Process.Signal(SIGKILL);
                Assert.NotEqual(0, await relay.Process.WaitForExitAsync(TimeSpan.FromSeconds(15)));
            }, TimeSpan.FromSeconds(30));
            Assert.All(ends, e => Assert.InRange(e, 0, 30));

            // With the relay gone the public port refuses: a new session gets a failure reply, not a hang.
            var (reply, down) = await Sessions.ConnectAsync(chain.SocksEndPoint, echo.Port, TimeSpan.FromSeconds(60));
            await down.DisposeAsync();
            output.WriteLine($"with the relay down a new session is answered {reply:x2}");
            Assert.NotEqual(0, reply);

            int cs = await ProcStats.WaitForSocketsAtMostAsync(chain.Client.Pid, c0 + 2, TimeSpan.FromSeconds(30));
            int ss = await ProcStats.WaitForSocketsAtMostAsync(chain.Server.Pid, s0 + 2, TimeSpan.FromSeconds(30));
            output.WriteLine($"sockets/pipes after the kill: client {c0} → {cs}, server {s0} → {ss}");
            Assert.True(cs <= c0 + 2, $"client: {ProcStats.FdSummary(chain.Client.Pid)}");
            Assert.True(ss <= s0 + 2, $"server: {ProcStats.FdSummary(chain.Server.Pid)}");

            // A relay restarted on the same UDP port: the server process registers again, announces its new
            // public address (asport.address), and the same client carries sessions through it.
            again = await AsportRelayProcess.StartAsync(relay.EndPoint.ToString());
            await Eventually.HoldsWithinAsync(() => Announcements(chain) > announced, TimeSpan.FromSeconds(60));
            Assert.True(Announcements(chain) > announced, $"the server did not register again:\n{TransportScenarios.Tail(chain.Server.Stderr)}");
            var took = await TransportScenarios.EchoWorksAgainAsync(chain, echo.Port, TimeSpan.FromSeconds(30));
            output.WriteLine($"registered again; first session through the restarted relay {took.TotalSeconds:0.0} s after the announcement was seen");
            await Task.WhenAll(Enumerable.Range(0, 20).Select(_ => Sessions.EchoRoundTripAsync(chain.SocksEndPoint, echo.Port, 128 * 1024)));
        }
        finally
        {
            await relay.DisposeAsync();
            if (again is not null) await again.DisposeAsync();
        }
    }

    private static int Announcements(PtChain chain) =>
        chain.Server.StdoutLines.Count(l => l.StartsWith("SMESSAGE asport {", StringComparison.Ordinal) && l.Contains("\"kind\":\"asport.address\"", StringComparison.Ordinal));

    [Fact]
    public async Task A_refusing_target_is_answered_05_and_leaves_nothing_behind()
    {
        await using var echo = new EchoServer();
        await using var relay = await AsportRelayProcess.StartAsync();
        await using var chain = await StartChainAsync(relay.EndPoint);
        await TransportScenarios.RefusingTargetAsync(output, chain, echo,
            [new("client", chain.Client.Pid), new("server", chain.Server.Pid), new("relay", relay.Process.Pid)]);
    }

    [Fact]
    public async Task A_far_end_that_never_reads_blocks_only_its_own_session()
    {
        await using var echo = new EchoServer();
        await using var relay = await AsportRelayProcess.StartAsync();
        await using var chain = await StartChainAsync(relay.EndPoint);
        await TransportScenarios.StalledFarEndAsync(output, chain, echo,
            [new("client", chain.Client.Pid), new("server", chain.Server.Pid), new("relay", relay.Process.Pid)]);
    }

    [Fact]
    public async Task Half_close_in_either_direction_still_carries_the_other()
    {
        await using var relay = await AsportRelayProcess.StartAsync();
        await using var chain = await StartChainAsync(relay.EndPoint);
        await TransportScenarios.HalfCloseFromApplicationAsync(chain);
        await TransportScenarios.HalfCloseFromFarEndAsync(chain);
    }
}
