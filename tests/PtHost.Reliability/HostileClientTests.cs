using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using PtHost.Contract;
using PtHost.Reliability.Support;
using PtHost.Tests.Process;
using PtHost.Turn;
using Xunit.Abstractions;

namespace PtHost.Reliability;

/// <summary>
/// Slow and hostile clients on the listeners of the relay transports (issue 7): each attack runs
/// against the real processes while a legitimate session works, and ends cut by the timeout or
/// limit the spec names; memory stays bounded and sockets go back to the baseline.
/// </summary>
public class HostileClientTests(ITestOutputHelper output)
{
    // ---- TURN (spec/turn.md §3.6, §4) ----------------------------------------------------------------

    /// <summary>A UDP allocation to an in-process echo peer, a datagram there and back: the legitimate session.</summary>
    private static async Task TurnRoundTripAsync(IPEndPoint turn, UdpEcho echo)
    {
        await using var client = await RawTurnClient.ConnectAsync(turn);
        Assert.Equal(0, await client.AllocateAsync());
        var peer = PeerAddress.From(echo.EndPoint);
        Assert.Equal(0, await client.CreatePermissionAsync(peer));
        var data = RandomNumberGenerator.GetBytes(1000);
        for (int attempt = 0; ; attempt++) // UDP: resend until the echo arrives
        {
            client.SendIndication(peer, data);
            var receive = client.ReceiveDataAsync();
            if (await Task.WhenAny(receive, Task.Delay(3000)) == receive)
            {
                var (from, back) = await receive;
                Assert.Equal(peer, from);
                Assert.Equal(data, back);
                return;
            }
            Assert.True(attempt < 5, "no echo through the TURN allocation");
        }
    }

    /// <summary>
    /// TCP side: 1,024 connections (the listener's limit, §4) each send half a STUN header and stop.
    /// More connections are closed at accept; the held ones are closed by the 60 s rule for TCP
    /// connections without an allocation (§3.6); a UDP allocation carries datagrams meanwhile.
    /// </summary>
    [Fact]
    public async Task Turn_tcp_partial_frames_fill_the_connection_limit_and_are_cut_at_60_s_while_udp_allocations_work()
    {
        const int Limit = 1024;
        ulong fdLimit = ProcStats.RaiseFdLimit();
        Assert.True(fdLimit >= 4 * Limit, $"RLIMIT_NOFILE {fdLimit}");
        await using var echo = new UdpEcho();
        await using var turn = await TurnChain.StartAsync(PtChain.FreeServer("plain", "127.0.0.1"));
        int pid = turn.Chain.Client.Pid;
        await TurnRoundTripAsync(turn.TurnEndPoint, echo); // warm-up: the allocation's association stays (600 s lifetime)
        await Task.Delay(500);
        int sock0 = ProcStats.SocketCount(pid);
        long rss0 = ProcStats.RssBytes(pid);

        var clock = Stopwatch.StartNew();
        byte[] half = TransportParserFuzzTests.BuildStun(StunMethod.Binding, StunClass.Request, TransportParserFuzzTests.Tid, [])[..10];
        var attackers = await Hostile.OpenAsync(turn.TurnEndPoint, Limit, half, clock);
        int held = await WaitForSocketsAtLeastAsync(pid, sock0 + Limit, TimeSpan.FromSeconds(30));
        Assert.True(held >= sock0 + Limit, $"the listener holds {held - sock0} of {Limit} connections");
        // Over the limit: closed at accept, without a byte.
        var extra = await Hostile.OpenAsync(turn.TurnEndPoint, 8, half, clock);
        var extraCuts = await Hostile.AwaitCutsAsync(extra, clock, TimeSpan.FromSeconds(20));
        output.WriteLine($"8 connections over the limit: cut after {extraCuts.Min(c => c.HeldSeconds):F2}–{extraCuts.Max(c => c.HeldSeconds):F2} s");
        Assert.All(extraCuts, c => Assert.True(c.Ended && c.HeldSeconds < 15 && c.Received.Length == 0));
        var cutting = Hostile.AwaitCutsAsync(attackers, clock, TimeSpan.FromSeconds(120));

        // Meanwhile UDP allocations carry datagrams.
        for (int i = 0; i < 3; i++) await TurnRoundTripAsync(turn.TurnEndPoint, echo);
        long rssPeak = ProcStats.RssBytes(pid);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(55), "the legitimate sessions are meant to run during the attack");

        var cuts = await cutting;
        Hostile.Check(cuts, 59, 100, "TCP connections holding 10 bytes of a STUN header", output);
        Assert.All(cuts, c => Assert.Empty(c.Received));
        await TurnRoundTripAsync(turn.TurnEndPoint, echo);
        // Two allocations more than at the baseline hold one association socket each (their lifetime is 600 s).
        int sock1 = await ProcStats.WaitForSocketsAtMostAsync(pid, sock0 + 4 + 2, TimeSpan.FromSeconds(15));
        long rss1 = ProcStats.RssBytes(pid);
        output.WriteLine($"client pthost: sockets/pipes {sock0} → {held} → {sock1}; RSS {rss0 >> 20} → {rssPeak >> 20} (during) → {rss1 >> 20} MiB");
        Assert.True(sock1 <= sock0 + 6, ProcStats.FdSummary(pid));
        // Each held TCP connection owns a 128 KiB receive buffer (two STUN frames): bounded by the limit.
        Assert.True(rssPeak <= rss0 + Limit * (160L << 10) + (64L << 20), $"RSS grew {rss0 >> 20} → {rssPeak >> 20} MiB");
    }

    private static async Task<int> WaitForSocketsAtLeastAsync(int pid, int count, TimeSpan within)
    {
        var deadline = DateTime.UtcNow + within;
        int n;
        while ((n = ProcStats.SocketCount(pid)) < count && DateTime.UtcNow < deadline) await Task.Delay(200);
        return n;
    }

    /// <summary>
    /// UDP side: 40,000 unauthenticated Allocate requests from 200 source ports (each answered by a
    /// 401 with a stateless nonce, §3.3: nothing is kept), then one user asking for more than its 128
    /// allocations (486, §4). A legitimate allocation works throughout; memory stays bounded; after
    /// the allocations are deleted (Refresh with LIFETIME 0) the sockets of both processes are back.
    /// </summary>
    [Fact]
    public async Task Turn_udp_unauthenticated_floods_keep_no_state_and_the_user_quota_holds()
    {
        await using var echo = new UdpEcho();
        // A second user for the quota, so that the legitimate allocations (user "test") do not count against it.
        await using var chain = await PtChain.StartAsync(PtChain.FreeServer("plain", "127.0.0.1"), ep =>
        {
            var config = TurnChain.ClientConfig(ep);
            ((Newtonsoft.Json.Linq.JObject)config["turn"]!["users"]!)["quota"] = "pw";
            return config;
        });
        var turn = new TurnChain { Chain = chain, TurnEndPoint = IPEndPoint.Parse(chain.ClientStartup.Single(l => l.StartsWith("CMETHOD plain turn ", StringComparison.Ordinal)).Split(' ')[3]) };
        int client = turn.Chain.Client.Pid, server = turn.Chain.Server.Pid;
        await Task.Delay(500);
        int c0 = ProcStats.SocketCount(client), s0 = ProcStats.SocketCount(server);
        long rss0 = ProcStats.RssBytes(client);

        // The flood: each source sends 200 Allocates without credentials as fast as it can, reading what comes back.
        const int Sources = 200, PerSource = 200;
        byte[] allocate = TransportParserFuzzTests.BuildStun(StunMethod.Allocate, StunClass.Request, TransportParserFuzzTests.Tid,
            [UdpTurnClient.UInt32(StunAttribute.RequestedTransport, 17u << 24)]);
        long answered = 0, unauthorized = 0;
        var flood = Task.WhenAll(Enumerable.Range(0, Sources).Select(_ => Task.Run(async () =>
        {
            using var s = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
            s.Bind(new IPEndPoint(IPAddress.Loopback, 0));
            s.Connect(turn.TurnEndPoint);
            var buf = new byte[2048];
            for (int i = 0; i < PerSource; i++)
            {
                await s.SendAsync(allocate, SocketFlags.None);
                if (i % 20 != 19) continue;
                using var cts = new CancellationTokenSource(TimeSpan.FromMilliseconds(200));
                try
                {
                    while (true)
                    {
                        int n = await s.ReceiveAsync(buf, SocketFlags.None, cts.Token);
                        Interlocked.Increment(ref answered);
                        if (Stun.TryParse(buf.AsSpan(0, n), out var m) == StunParseError.None && m.TryGet(StunAttribute.ErrorCode, out var e) && e[2] * 100 + e[3] == 401)
                            Interlocked.Increment(ref unauthorized);
                    }
                }
                catch (OperationCanceledException) { }
            }
        })));
        var during = Task.Run(async () => { for (int i = 0; i < 3; i++) await TurnRoundTripAsync(turn.TurnEndPoint, echo); });
        await Task.WhenAll(flood, during);
        long rssFlood = ProcStats.RssBytes(client);
        output.WriteLine($"{Sources * PerSource} unauthenticated Allocates from {Sources} ports: {answered} answers read, {unauthorized} of them 401; RSS {rss0 >> 20} → {rssFlood >> 20} MiB");
        Assert.True(unauthorized > 0 && unauthorized == answered, "every answer to an unsigned Allocate is a 401");
        Assert.True(rssFlood <= rss0 + (96L << 20), $"RSS grew {rss0 >> 20} → {rssFlood >> 20} MiB under the flood");

        // The quota: 130 allocations of one user from 130 ports; 128 hold, the others get 486.
        var users = Enumerable.Range(0, 130).Select(_ => new UdpTurnClient(turn.TurnEndPoint, "quota", TurnTests.Realm, "pw")).ToList();
        try
        {
            var codes = new List<int>();
            foreach (var batch in users.Chunk(16)) codes.AddRange(await Task.WhenAll(batch.Select(u => u.AllocateAsync())));
            output.WriteLine($"130 allocations of one user: {codes.Count(c => c == 0)} granted, {codes.Count(c => c == 486)} refused with 486, others: {string.Join(",", codes.Where(c => c is not 0 and not 486))}");
            Assert.Equal(128, codes.Count(c => c == 0));
            Assert.Equal(2, codes.Count(c => c == 486));
            await TurnRoundTripAsync(turn.TurnEndPoint, echo); // another user is not affected by this one's quota
            long rssQuota = ProcStats.RssBytes(client);
            int cPeak = ProcStats.SocketCount(client), sPeak = ProcStats.SocketCount(server);
            var deleted = new List<int>();
            foreach (var (u, i) in users.Select((u, i) => (u, i)).Where(x => codes[x.i] == 0).Select(x => (x.u, x.i)))
                deleted.Add(await u.DeleteAsync());
            Assert.All(deleted, d => Assert.Equal(0, d));
            // The 4 legitimate allocations (3 during the flood, 1 above) keep their associations (600 s lifetime):
            // one socket each in the client process, a TCP and a UDP socket each in the server process.
            int c1 = await ProcStats.WaitForSocketsAtMostAsync(client, c0 + 4 + 2, TimeSpan.FromSeconds(30));
            int s1 = await ProcStats.WaitForSocketsAtMostAsync(server, s0 + 8 + 2, TimeSpan.FromSeconds(30));
            output.WriteLine($"128 allocations held then deleted: sockets/pipes client {c0} → {cPeak} → {c1}, server {s0} → {sPeak} → {s1}; RSS {rssQuota >> 20} MiB with them");
            Assert.True(c1 <= c0 + 6, ProcStats.FdSummary(client));
            Assert.True(s1 <= s0 + 10, ProcStats.FdSummary(server));
            Assert.True(rssQuota <= rss0 + (160L << 20));
        }
        finally
        {
            foreach (var u in users) u.Dispose();
        }
    }
}
