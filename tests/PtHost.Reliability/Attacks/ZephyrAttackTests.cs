using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using PtHost.Transports.Zephyr;
using Xunit.Abstractions;

namespace PtHost.Reliability.Attacks;

/// <summary>
/// Issue 24, point 5, against the real <c>pthost relay zephyr</c>: the per-source limit must not be escaped by
/// taking many addresses of one IPv6 /64 (spec/zephyr.md §4.6), and bound pairs must not hold their slots forever
/// (the idle and lifetime limits of §4.5). The attacker's sockets are raw TCP connections speaking the Zephyr wire
/// (§2); the IPv6 sources live in a network namespace whose loopback has a local route for a /48.
/// </summary>
public class ZephyrAttackTests(ITestOutputHelper output)
{
    private static readonly IPAddress RelayV6 = IPAddress.Parse("2001:db8:24::1");

    /// <summary>A namespace with <see cref="RelayV6"/> on lo and all of 2001:db8:24::/48 usable as source addresses.</summary>
    private static async Task<NetworkNamespace> IPv6NamespaceAsync()
    {
        var ns = await NetworkNamespace.CreateAsync("zv6");
        try
        {
            await ns.IpAsync("-6", "addr", "add", RelayV6 + "/128", "dev", "lo", "nodad");
            await ns.IpAsync("-6", "route", "add", "local", "2001:db8:24::/48", "dev", "lo");
            return ns;
        }
        catch
        {
            await ns.DisposeAsync();
            throw;
        }
    }

    /// <summary>Connects <paramref name="socket"/> and reads its assignment: the zid, or null when the relay closed it first (a limit, §4.6).</summary>
    private static async Task<uint?> AssignmentAsync(Socket socket, IPEndPoint relay)
    {
        using (var cts = new CancellationTokenSource(ZephyrPeer.Wait)) await socket.ConnectAsync(relay, cts.Token);
        try
        {
            var message = await ZephyrPeer.ReadExactlyAsync(socket, ZephyrWire.MessageLength);
            Assert.Equal(BindRequestError.None, ZephyrWire.ParseAssignment(message, out uint zid));
            return zid;
        }
        catch (Exception e) when (e is EndOfStreamException or SocketException) { return null; }
    }

    private async Task<int> AssignedFromAsync(NetworkNamespace ns, IPEndPoint relay, IEnumerable<string> sources, List<Socket> held)
    {
        int assigned = 0;
        foreach (var source in sources)
        {
            var s = ns.TcpSocketFrom(IPAddress.Parse(source));
            held.Add(s);
            if (await AssignmentAsync(s, relay) is not null) assigned++;
        }
        return assigned;
    }

    [Fact]
    public async Task Forty_addresses_of_one_IPv6_64_count_as_one_source()
    {
        await using var ns = await IPv6NamespaceAsync();
        await using var relay = await ZephyrRelayProcess.StartInAsync(ns, $"[{RelayV6}]:0", "--max-per-source", "5");
        var held = new List<Socket>();
        try
        {
            int attacker = await AssignedFromAsync(ns, relay.EndPoint, Enumerable.Range(1, 40).Select(i => $"2001:db8:24:1::{i:x}"), held);
            output.WriteLine($"40 connections from 40 addresses of 2001:db8:24:1::/64 (--max-per-source 5): {attacker} assigned");
            // Another /64 of the same /48 is another source: it still gets in.
            int neighbour = await AssignedFromAsync(ns, relay.EndPoint, ["2001:db8:24:2::1", "2001:db8:24:2::2"], held);
            output.WriteLine($"2 connections from 2001:db8:24:2::/64: {neighbour} assigned");
            Assert.Equal(5, attacker);
            Assert.Equal(2, neighbour);
            await relay.Process.WaitForStderrAsync("connection limit hit (max-per-source 5)");
        }
        finally
        {
            foreach (var s in held) s.Dispose();
        }
    }

    [Fact]
    public async Task With_ipv6_source_prefix_128_each_IPv6_address_is_its_own_source()
    {
        await using var ns = await IPv6NamespaceAsync();
        await using var relay = await ZephyrRelayProcess.StartInAsync(ns, $"[{RelayV6}]:0", "--max-per-source", "5", "--ipv6-source-prefix", "128");
        var held = new List<Socket>();
        try
        {
            int assigned = await AssignedFromAsync(ns, relay.EndPoint, Enumerable.Range(1, 12).Select(i => $"2001:db8:24:1::{i:x}"), held);
            // Two connections from one address: the second and third of a /128 source still count against it.
            assigned += await AssignedFromAsync(ns, relay.EndPoint, Enumerable.Repeat("2001:db8:24:1::1", 5), held);
            output.WriteLine($"12 addresses once, then 5 more from one of them (--ipv6-source-prefix 128, --max-per-source 5): {assigned} assigned");
            Assert.Equal(12 + 4, assigned);
        }
        finally
        {
            foreach (var s in held) s.Dispose();
        }
    }

    /// <summary>Binds peers pairwise (i with i + 1) and proves each pair is joined by one byte each way.</summary>
    private static async Task<List<(ZephyrPeer A, ZephyrPeer B)>> BindPairsAsync(IReadOnlyList<ZephyrPeer> peers)
    {
        var pairs = new List<(ZephyrPeer, ZephyrPeer)>();
        for (int i = 0; i + 1 < peers.Count; i += 2)
        {
            var (a, b) = (peers[i], peers[i + 1]);
            await a.BindAsync(b.Zid);
            await b.BindAsync(a.Zid);
            await a.SendAsync([1]);
            Assert.Equal([1], await b.ReadExactlyAsync(1));
            await b.SendAsync([2]);
            Assert.Equal([2], await a.ReadExactlyAsync(1));
            pairs.Add((a, b));
        }
        return pairs;
    }

    /// <summary>Seconds until the relay ends <paramref name="socket"/> (end of stream or reset), or null if it stays open for <paramref name="limit"/>.</summary>
    private static async Task<double?> EndsWithinAsync(Socket socket, Stopwatch clock, TimeSpan limit)
    {
        var buffer = new byte[256];
        using var cts = new CancellationTokenSource(limit);
        try
        {
            while (await socket.ReceiveAsync(buffer, SocketFlags.None, cts.Token) > 0) { }
        }
        catch (OperationCanceledException) { return null; }
        catch (SocketException) { }
        return clock.Elapsed.TotalSeconds;
    }

    private static async Task<ZephyrPeer> PeerFromAsync(IPEndPoint relay, string source)
    {
        var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        s.Bind(new IPEndPoint(IPAddress.Parse(source), 0));
        var zid = await AssignmentAsync(s, relay);
        if (zid is null)
        {
            s.Dispose();
            throw new EndOfStreamException($"the relay refused a connection from {source}");
        }
        return new ZephyrPeer(s, zid.Value);
    }

    [Fact]
    public async Task Silent_bound_pairs_that_fill_the_relay_are_closed_at_the_idle_timeout()
    {
        // Small limits so that 4 sources (127.0.0.2-5, 10 connections each) fill the relay with 20 bound pairs.
        await using var relay = await ZephyrRelayProcess.StartAsync("--max-connections", "40", "--max-per-source", "10",
            "--idle-timeout", "3", "--stats-interval", "1");
        var peers = new List<ZephyrPeer>();
        try
        {
            for (int i = 0; i < 40; i++) peers.Add(await PeerFromAsync(relay.EndPoint, $"127.0.0.{2 + i / 10}"));
            var pairs = await BindPairsAsync(peers);
            var clock = Stopwatch.StartNew(); // the pairs' last byte moved just now
            // The relay is full: a legitimate peer from another address is refused (§4.6).
            await Assert.ThrowsAsync<EndOfStreamException>(() => PeerFromAsync(relay.EndPoint, "127.0.0.1"));
            var ends = await Task.WhenAll(peers.Select(p => EndsWithinAsync(p.Socket, clock, TimeSpan.FromSeconds(15))));
            output.WriteLine($"20 silent pairs: {ends.Count(e => e is not null)} of 40 connections closed by the relay, at {Range(ends)} s (--idle-timeout 3)");
            Assert.All(ends, e => Assert.InRange(e ?? double.MaxValue, 2.9, 3 + 3));
            await relay.Process.WaitForStderrAsync("no byte either way for 3s", 20);
            // The slots are free again: a legitimate pair binds and carries bytes.
            using var a = await PeerFromAsync(relay.EndPoint, "127.0.0.1");
            using var b = await PeerFromAsync(relay.EndPoint, "127.0.0.1");
            await a.BindAsync(b.Zid);
            await b.BindAsync(a.Zid);
            byte[] data = RandomNumberGenerator.GetBytes(64 * 1024);
            await a.SendAsync(data);
            Assert.Equal(data, await b.ReadExactlyAsync(data.Length));
            await Eventually.TrueAsync(() => relay.Process.StdoutLines.Any(l => l.Contains(" IDLE-CLOSED=20 ", StringComparison.Ordinal)),
                "a STATUS line with IDLE-CLOSED=20", TimeSpan.FromSeconds(10));
        }
        finally
        {
            foreach (var p in peers) p.Dispose();
        }
    }

    [Fact]
    public async Task A_busy_bound_pair_is_closed_at_the_maximum_lifetime()
    {
        await using var relay = await ZephyrRelayProcess.StartAsync("--max-lifetime", "3", "--idle-timeout", "60", "--stats-interval", "1");
        using var a = await PeerFromAsync(relay.EndPoint, "127.0.0.1");
        using var b = await PeerFromAsync(relay.EndPoint, "127.0.0.1");
        var pair = (await BindPairsAsync([a, b])).Single();
        var clock = Stopwatch.StartNew();
        // Keep the pair busy (never idle): a byte every 100 ms from a to b while b's end is watched.
        using var stop = new CancellationTokenSource();
        var trickle = Task.Run(async () =>
        {
            try
            {
                while (!stop.IsCancellationRequested)
                {
                    await a.Socket.SendAsync(new byte[] { 7 }, SocketFlags.None, stop.Token);
                    await Task.Delay(100, stop.Token);
                }
            }
            catch (Exception e) when (e is OperationCanceledException or SocketException) { }
        });
        double? end = await EndsWithinAsync(b.Socket, clock, TimeSpan.FromSeconds(15));
        await stop.CancelAsync();
        await trickle;
        output.WriteLine($"a pair sending a byte every 100 ms: closed by the relay at {end?.ToString("0.00") ?? "never (15 s)"} s (--max-lifetime 3)");
        Assert.InRange(end ?? double.MaxValue, 2.9, 3 + 3);
        await relay.Process.WaitForStderrAsync("the maximum lifetime; closing");
        await Eventually.TrueAsync(() => relay.Process.StdoutLines.Any(l => l.EndsWith(" LIFETIME-CLOSED=1", StringComparison.Ordinal)),
            "a STATUS line with LIFETIME-CLOSED=1", TimeSpan.FromSeconds(10));
    }

    private static string Range(double?[] values)
    {
        var done = values.Where(v => v is not null).Select(v => v!.Value).ToList();
        return done.Count == 0 ? "-" : $"{done.Min():0.00}–{done.Max():0.00}";
    }
}
