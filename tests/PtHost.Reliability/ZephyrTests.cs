using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using Newtonsoft.Json.Linq;
using PtHost.Reliability.Support;
using Xunit.Abstractions;

namespace PtHost.Reliability;

/// <summary>
/// The zephyr transport and relay under load, faults and slow clients: a real relay process, a
/// real client and server pthost with generated credentials, CMESSAGE/SMESSAGE carried by the test.
/// </summary>
public class ZephyrTests(ITestOutputHelper output)
{
    // Each session holds two relay connections from 127.0.0.1: above the default per-source limit.
    private static readonly string[] RelayLimits = ["--max-per-source", "20000", "--max-connections", "20000"];

    [Fact]
    public async Task Two_rounds_of_2000_concurrent_sessions_through_zephyr_lose_no_byte_leak_nothing_and_do_not_grow_memory()
    {
        ulong limit = ProcStats.RaiseFdLimit();
        Assert.True(limit >= 3 * LoadTests.Sessions + 1000, $"RLIMIT_NOFILE {limit} is too low for {LoadTests.Sessions} sessions");
        await using var echo = new EchoServer();
        await using var relay = await ZephyrRelayProcess.StartAsync(["--loglevel", "warning", .. RelayLimits]);
        await using var chain = await ZephyrChain.StartAsync(relay.EndPoint.ToString());
        int client = chain.Client.Pid, server = chain.Server.Pid, relayPid = relay.Process.Pid;

        var warm = await LoadTests.RunRoundAsync(chain, echo, 50, seed: 7);
        Assert.True(warm.Verified == 50, $"warm-up: {string.Join("\n", warm.Errors.Take(5))}");
        var rest = await chain.SocketsAtRestAsync(relayPid);
        int c0 = rest[0], s0 = rest[1], r0 = rest[2];
        long crss0 = ProcStats.RssBytes(client), srss0 = ProcStats.RssBytes(server), rrss0 = ProcStats.RssBytes(relayPid);

        var rss = new List<(long Client, long Server, long Relay)>();
        for (int round = 1; round <= 2; round++)
        {
            var watch = Stopwatch.StartNew();
            var r = await LoadTests.RunRoundAsync(chain, echo, LoadTests.Sessions, seed: 8 + round);
            output.WriteLine($"round {round}: {r.Opened} opened, {r.Verified} verified, {r.Mismatches} mismatches, {r.Errors.Count} errors, {r.Bytes} bytes each way in {watch.Elapsed.TotalSeconds:0.0} s; fds at peak client {r.ClientFdsAtPeak}, server {r.ServerFdsAtPeak}");
            Assert.True(r.Errors.Count == 0, $"{r.Errors.Count} sessions failed, e.g.:\n{string.Join("\n", r.Errors.Take(5))}");
            Assert.Equal(0, r.Mismatches);
            Assert.Equal(LoadTests.Sessions, r.Verified);
            // All were open at once: the client holds a SOCKS and a relay socket per session, the server a relay and a target socket.
            Assert.True(r.ClientFdsAtPeak >= 2 * LoadTests.Sessions, $"client had {r.ClientFdsAtPeak} fds at the peak");
            Assert.True(r.ServerFdsAtPeak >= 2 * LoadTests.Sessions, $"server had {r.ServerFdsAtPeak} fds at the peak");

            int c1 = await ProcStats.WaitForSocketsAtMostAsync(client, c0 + 2, TimeSpan.FromSeconds(30));
            int s1 = await ProcStats.WaitForSocketsAtMostAsync(server, s0 + 2, TimeSpan.FromSeconds(30));
            int r1 = await ProcStats.WaitForSocketsAtMostAsync(relayPid, r0 + 2, TimeSpan.FromSeconds(30));
            await ProcStats.SocketsAtRestAsync(client, server, relayPid); // the round's teardown has ended before RSS is read
            rss.Add((ProcStats.RssBytes(client), ProcStats.RssBytes(server), ProcStats.RssBytes(relayPid)));
            output.WriteLine($"after round {round}: sockets/pipes client {c0} → {c1}, server {s0} → {s1}, relay {r0} → {r1}; RSS MiB client {crss0 >> 20} → {rss[^1].Client >> 20}, server {srss0 >> 20} → {rss[^1].Server >> 20}, relay {rrss0 >> 20} → {rss[^1].Relay >> 20}");
            Assert.True(c1 <= c0 + 2, $"client: {ProcStats.FdSummary(client)}");
            Assert.True(s1 <= s0 + 2, $"server: {ProcStats.FdSummary(server)}");
            Assert.True(r1 <= r0 + 2, $"relay: {ProcStats.FdSummary(relayPid)}");
        }
        // Memory does not keep growing: round 2 ends within a generous bound of round 1, and of the baseline.
        Assert.True(rss[1].Client <= rss[0].Client * 3 / 2 + (64L << 20), $"client RSS grew {rss[0].Client >> 20} → {rss[1].Client >> 20} MiB");
        Assert.True(rss[1].Server <= rss[0].Server * 3 / 2 + (64L << 20), $"server RSS grew {rss[0].Server >> 20} → {rss[1].Server >> 20} MiB");
        Assert.True(rss[1].Relay <= rss[0].Relay * 3 / 2 + (64L << 20), $"relay RSS grew {rss[0].Relay >> 20} → {rss[1].Relay >> 20} MiB");
        Assert.True(rss[1].Client <= crss0 + (512L << 20));
        Assert.True(rss[1].Server <= srss0 + (512L << 20));
        Assert.True(rss[1].Relay <= rrss0 + (256L << 20));
    }

    [Fact]
    public async Task Killing_the_relay_under_forty_transfers_ends_each_within_the_timeout_and_the_hosts_serve_on_through_the_next_relay()
    {
        const int Transfers = 40;
        await using var echo = new EchoServer();
        var doomed = await ZephyrRelayProcess.StartAsync(["--loglevel", "warning", .. RelayLimits]);
        await using var spare = await ZephyrRelayProcess.StartAsync(["--loglevel", "warning", .. RelayLimits]);
        try
        {
            await using var chain = await ZephyrChain.StartAsync(new JArray(doomed.EndPoint.ToString(), spare.EndPoint.ToString()));
            await Sessions.EchoRoundTripAsync(chain.SocksEndPoint, echo.Port, 64 * 1024);
            var rest = await chain.SocketsAtRestAsync();
            int c0 = rest[0], s0 = rest[1];

            var phase = Stopwatch.StartNew();
            // Forty sessions each streaming without end through the doomed relay.
            using var stop = new CancellationTokenSource();
            // All are set up first, then each streams 16 KiB every few milliseconds (a transfer in
            // progress, without starving the machine the way forty flat-out streams would).
            var clients = new List<SocksClient>();
            for (int i = 0; i < Transfers; i++)
            {
                var (reply, c) = await Sessions.ConnectAsync(chain.SocksEndPoint, echo.Port, TimeSpan.FromSeconds(60));
                Assert.Equal(0, reply);
                clients.Add(c);
            }
            var sessions = clients.Select(c =>
            {
                var block = new byte[16 * 1024];
                var writer = Task.Run(async () =>
                {
                    while (!stop.IsCancellationRequested)
                    {
                        await c.Stream.WriteAsync(block, stop.Token);
                        await Task.Delay(5, stop.Token); // the pace of the load (see above), not a wait for anything
                    }
                });
                var echoed = new StrongBox<long>();
                var reader = Task.Run(async () =>
                {
                    var buffer = new byte[64 * 1024];
                    try
                    {
                        int k;
                        while ((k = await c.Socket.ReceiveAsync(buffer, SocketFlags.None)) > 0) Interlocked.Add(ref echoed.Value, k);
                    }
                    catch (SocketException) { }
                    catch (ObjectDisposedException) { }
                    return Interlocked.Read(ref echoed.Value);
                });
                return (Client: c, Reader: reader, Writer: writer, Echoed: echoed);
            }).ToList();
            // Every transfer under way: its bytes come back through the doomed relay.
            await Eventually.HoldsWithinAsync(() => sessions.All(s => Interlocked.Read(ref s.Echoed.Value) > 0 || s.Reader.IsCompleted), TimeSpan.FromSeconds(30));
            output.WriteLine($"{Transfers} transfers running after {phase.Elapsed.TotalSeconds:0.0} s");
            Assert.All(sessions, s => Assert.False(s.Reader.IsCompleted, "a session ended before the relay was killed"));

            doomed.Process.Signal(9);
            var watch = Stopwatch.StartNew();
            var ended = await Task.WhenAll(sessions.Select(s => Sessions.EndsWithinAsync(s.Client.Socket, TimeSpan.FromSeconds(30))));
            output.WriteLine($"{ended.Count(e => e)} of {Transfers} sessions ended within {watch.Elapsed.TotalSeconds:0.0} s of the SIGKILL");
            Assert.All(ended, Assert.True);
            await stop.CancelAsync();
            foreach (var s in sessions)
            {
                await s.Client.DisposeAsync();
                try { await s.Writer.WaitAsync(TimeSpan.FromSeconds(10)); } catch (Exception) { /* ended by the fault: expected */ }
                await s.Reader.WaitAsync(TimeSpan.FromSeconds(10));
            }

            output.WriteLine($"cleaned up after {phase.Elapsed.TotalSeconds:0.0} s");
            // New sessions go through the spare relay, every byte intact.
            await Task.WhenAll(Enumerable.Range(0, 20).Select(_ => Sessions.EchoRoundTripAsync(chain.SocksEndPoint, echo.Port, 128 * 1024)));
            output.WriteLine($"20 new sessions verified after {phase.Elapsed.TotalSeconds:0.0} s");
            int c1 = await ProcStats.WaitForSocketsAtMostAsync(chain.Client.Pid, c0 + 2, TimeSpan.FromSeconds(30));
            int s1 = await ProcStats.WaitForSocketsAtMostAsync(chain.Server.Pid, s0 + 2, TimeSpan.FromSeconds(30));
            output.WriteLine($"sockets/pipes client {c0} → {c1}, server {s0} → {s1} after {phase.Elapsed.TotalSeconds:0.0} s");
            Assert.True(c1 <= c0 + 2, $"client {c0} → {c1}: {ProcStats.FdSummary(chain.Client.Pid)}");
            Assert.True(s1 <= s0 + 2, $"server {s0} → {s1}: {ProcStats.FdSummary(chain.Server.Pid)}");
        }
        finally { await doomed.DisposeAsync(); }
    }

    [Theory]
    [InlineData(false)] // each sends 1 byte of its bind request: cut by the bind timeout (§4.2)
    [InlineData(true)]  // half send nothing, the other half bind to one of them, which never binds back:
                        // cut by the bind timeout and the peer timeout (§4.3)
    public async Task Slowloris_on_the_relay_port_is_cut_by_its_timeouts_while_pairs_keep_working(bool waitForPeer)
    {
        const int Attackers = 200;
        await using var relay = await ZephyrRelayProcess.StartAsync(["--loglevel", "warning", "--bind-timeout", "5", "--peer-timeout", "5", .. RelayLimits]);
        int sock0 = ProcStats.SocketCount(relay.Process.Pid);
        var clock = Stopwatch.StartNew();
        var attackers = await Task.WhenAll(Enumerable.Range(0, Attackers).Select(async _ =>
        {
            var started = clock.Elapsed;
            return (Peer: await ZephyrPeer.ConnectAsync(relay.EndPoint), Started: started);
        }));
        for (int i = 0; i < Attackers; i++)
        {
            byte[] bind = PtHost.Transports.Zephyr.ZephyrWire.BuildBindRequest(attackers[(i + 1) % Attackers].Peer.Zid);
            if (!waitForPeer) await attackers[i].Peer.SendAsync(bind[..1]);
            else if (i % 2 == 0) await attackers[i].Peer.SendAsync(bind); // names an odd one, which stays silent
        }
        var closes = attackers.Select(async a =>
        {
            bool ended = await Sessions.EndsWithinAsync(a.Peer.Socket, TimeSpan.FromSeconds(30));
            var held = clock.Elapsed - a.Started;
            a.Peer.Dispose();
            return (ended, held);
        }).ToList();

        // Meanwhile a real pair binds and carries bytes both ways.
        using (var a = await ZephyrPeer.ConnectAsync(relay.EndPoint))
        using (var b = await ZephyrPeer.ConnectAsync(relay.EndPoint))
        {
            await a.BindAsync(b.Zid);
            await b.BindAsync(a.Zid);
            await a.SendAsync("ping"u8.ToArray());
            Assert.Equal("ping"u8.ToArray(), await b.ReadExactlyAsync(4));
            await b.SendAsync("pong"u8.ToArray());
            Assert.Equal("pong"u8.ToArray(), await a.ReadExactlyAsync(4));
        }

        var results = await Task.WhenAll(closes);
        var held = results.Select(r => r.held.TotalSeconds).Order().ToList();
        output.WriteLine($"{Attackers} connections ({(waitForPeer ? "silent, or bound to a silent one" : "1 byte each")}): closed after {held[0]:F1}–{held[^1]:F1} s (median {held[held.Count / 2]:F1} s)");
        Assert.All(results, r => Assert.True(r.ended, "an attacking connection was still open after 30 s"));
        // A 5 s timer; the sweep runs every 0.625 s; generous above for a loaded machine.
        Assert.All(results, r => Assert.InRange(r.held.TotalSeconds, 4.0, 20));
        Assert.InRange(await ProcStats.WaitForSocketsAtMostAsync(relay.Process.Pid, sock0 + 2, TimeSpan.FromSeconds(10)), 0, sock0 + 2);
    }
}
