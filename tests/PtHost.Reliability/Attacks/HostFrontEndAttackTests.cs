using System.Net;
using System.Net.NetworkInformation;
using System.Net.Sockets;
using System.Security.Cryptography;
using Newtonsoft.Json.Linq;
using PtHost.Contract;
using PtHost.Turn;
using Xunit.Abstractions;

namespace PtHost.Reliability.Attacks;

/// <summary>
/// Issue 24, point 7, the client's front ends: a SOCKS5 or TURN listener on a non-loopback address is an
/// open proxy into the transport (SOCKS) or an amplifier for spoofed UDP (TURN's unauthenticated 401s are
/// 5–11× the 20-byte request). pthost refuses such addresses unless the configuration opts in
/// (<c>"public-frontends": true</c>, spec/ipc.md §3.2), and rate-limits unauthenticated TURN replies over UDP
/// per source prefix and in all (spec/turn.md §4).
/// </summary>
public class HostFrontEndAttackTests(ITestOutputHelper output)
{
    /// <summary>A local address other than loopback (this machine's own interface), or null.</summary>
    private static IPAddress? NonLoopbackAddress() =>
        NetworkInterface.GetAllNetworkInterfaces().Where(i => i.OperationalStatus == OperationalStatus.Up)
            .SelectMany(i => i.GetIPProperties().UnicastAddresses).Select(u => u.Address)
            .FirstOrDefault(a => a.AddressFamily == AddressFamily.InterNetwork && !IPAddress.IsLoopback(a));

    [Theory]
    [InlineData("proxylistenaddr", "0.0.0.0:0")]
    [InlineData("proxylistenaddr", "[::]:0")]
    [InlineData("turn.listenaddr", "0.0.0.0:0")]
    public async Task A_public_front_end_address_is_refused_unless_the_configuration_opts_in(string key, string address)
    {
        JObject Config(bool optIn)
        {
            var c = TurnChain.ClientConfig(new IPEndPoint(IPAddress.Loopback, 9));
            if (key == "proxylistenaddr") c["proxylistenaddr"] = address;
            else c["turn"]!["listenaddr"] = address;
            if (optIn) c["public-frontends"] = true;
            return c;
        }

        // Without the opt-in: exit 78 naming the key, nothing listens.
        await using (var p = PtProcess.StartPthost(Config(optIn: false).ToString(Newtonsoft.Json.Formatting.None)))
        {
            int exit = await p.WaitForExitAsync(TimeSpan.FromSeconds(20)).ContinueWith(t => t.IsCompletedSuccessfully ? t.Result : -1);
            string stdout = string.Join(" | ", p.StdoutLines);
            output.WriteLine($"{key} {address} without opt-in: exit {exit}; stdout: {stdout}; stderr: {p.Stderr.Trim()}");
            if (exit == -1 && NonLoopbackAddress() is { } outside && p.StdoutLines.FirstOrDefault(l => l.StartsWith("CMETHOD plain socks5 ", StringComparison.Ordinal)) is { } line)
            {
                // Still running: show that the SOCKS port answers on the machine's public address.
                int port = IPEndPoint.Parse(line.Split(' ')[3]).Port;
                using var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
                await s.ConnectAsync(new IPEndPoint(outside, port));
                await s.SendAsync(new byte[] { 5, 1, 0 }, SocketFlags.None);
                var answer = new byte[2];
                int n = await s.ReceiveAsync(answer, SocketFlags.None);
                output.WriteLine($"  a SOCKS5 greeting to {outside}:{port} was answered {Convert.ToHexString(answer, 0, n)}");
            }
            Assert.Equal(78, exit);
            Assert.StartsWith($"ENV-ERROR config key '{key}': ", Assert.Single(p.StdoutLines));
            Assert.Contains("\"public-frontends\"", p.Stderr);
        }

        // With it: pthost starts, listens there, and says so on stderr and in a LOG line.
        await using (var p = PtProcess.StartPthost(Config(optIn: true).ToString(Newtonsoft.Json.Formatting.None)))
        {
            var lines = await p.ReadUntilDoneAsync();
            output.WriteLine($"with \"public-frontends\": true: {string.Join(" | ", lines)}");
            string kind = key == "proxylistenaddr" ? "socks5" : "turn";
            var method = lines.Single(l => l.StartsWith($"CMETHOD plain {kind} ", StringComparison.Ordinal));
            Assert.False(IPAddress.IsLoopback(IPEndPoint.Parse(method.Split(' ')[3]).Address));
            Assert.Contains(lines, l => l.StartsWith("LOG SEVERITY=warning MESSAGE=\"transport plain: ", StringComparison.Ordinal) && l.Contains("not a loopback address"));
            await p.WaitForStderrAsync("not a loopback address"); // stderr is read apart from stdout: it may lag CMETHODS DONE
        }
    }

    /// <summary>
    /// A flood of 20-byte Allocate requests without credentials (RFC 5766 §6.2: answered 401 with REALM and NONCE)
    /// from 64 source addresses in 64 /24 prefixes (127.64.k.1, what spoofed sources would look like) and, apart,
    /// from one source (a single victim): the bytes answered per byte received is the amplification factor.
    /// An allocation made before the flood keeps relaying datagrams during it, and a new one works after it.
    /// </summary>
    [Fact]
    public async Task Unauthenticated_turn_replies_are_rate_limited_so_a_spoofed_flood_is_not_amplified()
    {
        await using var echo = new UdpEcho();
        await using var turn = await TurnChain.StartAsync(PtChain.FreeServer("plain", "127.0.0.1"));
        var server = turn.TurnEndPoint;
        await using var legit = await UdpTurnClient.ConnectAsync(server);
        Assert.Equal(0, await legit.AllocateAsync());
        var peer = PeerAddress.From(echo.EndPoint);
        Assert.Equal(0, await legit.CreatePermissionAsync(peer));

        byte[] request = new byte[20]; // Allocate request, no attributes: the smallest message that draws a 401
        request[1] = 0x03;
        request[4] = 0x21; request[5] = 0x12; request[6] = 0xA4; request[7] = 0x42;
        RandomNumberGenerator.Fill(request.AsSpan(8, 12));

        // The spread flood: 64 prefixes × 400 requests, all sockets reading what comes back.
        var spread = await FloodAsync(server, Enumerable.Range(0, 64).Select(k => IPAddress.Parse($"127.64.{k}.1")).ToArray(), 400, request, legit, peer);
        output.WriteLine($"spread flood: {spread}");
        // One victim: 2,000 requests from one source.
        var single = await FloodAsync(server, [IPAddress.Parse("127.65.0.1")], 2000, request, null, peer);
        output.WriteLine($"one source: {single}");

        // A new allocation after the flood (a prefix the flood did not use).
        await using (var after = new UdpTurnClient(server, local: IPAddress.Parse("127.66.0.1")))
            Assert.Equal(0, await after.AllocateAsync());

        Assert.True(spread.LegitimateEchoes > 0, "the allocation made before the flood relayed nothing during it");
        Assert.True(spread.Factor <= 1.0, $"spread flood amplified {spread.Factor:0.00}×");
        Assert.True(single.Factor <= 1.0, $"one source amplified {single.Factor:0.00}×");
        // spec/turn.md §4: 64 at once and 16/s per /24; 1,024 at once and 512/s for the listener.
        Assert.True(single.Replies <= 64 + 16 * single.Seconds + 16, $"one source got {single.Replies} replies in {single.Seconds:0.0} s");
        Assert.True(spread.Replies <= 1024 + 512 * spread.Seconds + 64, $"the listener sent {spread.Replies} replies in {spread.Seconds:0.0} s");
        Assert.All(spread.Codes, c => Assert.Equal(401, c));
    }

    private sealed record FloodResult(long Requests, long RequestBytes, long Replies, long ReplyBytes, double Seconds, int LegitimateEchoes, HashSet<int> Codes)
    {
        public double Factor => (double)ReplyBytes / RequestBytes;
        public override string ToString() =>
            $"{Requests} requests ({RequestBytes} bytes) in {Seconds:0.0} s drew {Replies} replies ({ReplyBytes} bytes): amplification {Factor:0.00}×; codes {string.Join(",", Codes)}; {LegitimateEchoes} legitimate echoes meanwhile";
    }

    private static async Task<FloodResult> FloodAsync(IPEndPoint server, IPAddress[] sources, int perSource, byte[] request, UdpTurnClient? legit, PeerAddress peer)
    {
        long replies = 0, replyBytes = 0;
        var codes = new HashSet<int>();
        var sockets = sources.Select(a =>
        {
            var s = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
            s.Bind(new IPEndPoint(a, 0));
            s.Connect(server);
            return s;
        }).ToArray();
        using var stopReading = new CancellationTokenSource();
        var readers = sockets.Select(s => Task.Run(async () =>
        {
            var buf = new byte[2048];
            try
            {
                while (true)
                {
                    int n = await s.ReceiveAsync(buf, SocketFlags.None, stopReading.Token);
                    Interlocked.Increment(ref replies);
                    Interlocked.Add(ref replyBytes, n);
                    if (Stun.TryParse(buf.AsSpan(0, n), out var m) == StunParseError.None && m.TryGet(StunAttribute.ErrorCode, out var e))
                        lock (codes) codes.Add(e[2] * 100 + e[3]);
                }
            }
            catch (Exception e) when (e is OperationCanceledException or SocketException or ObjectDisposedException) { }
        })).ToArray();
        int echoes = 0;
        var started = DateTime.UtcNow;
        var senders = sockets.Select(s => Task.Run(async () =>
        {
            byte[] mine = (byte[])request.Clone();
            for (int i = 0; i < perSource; i++)
            {
                mine[8] = (byte)i; // a new transaction each time
                await s.SendAsync(mine, SocketFlags.None);
                if (i % 50 == 49) await Task.Delay(1);
            }
        })).ToList();
        if (legit is not null)
            senders.Add(Task.Run(async () =>
            {
                // The allocation made before the flood relays datagrams through it (authenticated: never limited).
                while (senders.Take(sources.Length).Any(t => !t.IsCompleted))
                {
                    legit.SendIndication(peer, "during the flood"u8.ToArray());
                    var receive = legit.ReceiveDataAsync();
                    if (await Eventually.CompletesWithinAsync(receive, TimeSpan.FromSeconds(2))) Interlocked.Increment(ref echoes);
                }
            }));
        await Task.WhenAll(senders);
        double seconds = (DateTime.UtcNow - started).TotalSeconds;
        // Late replies: wait until nothing more arrives for 300 ms.
        await Eventually.StableAsync(() => Interlocked.Read(ref replies), TimeSpan.FromMilliseconds(300), TimeSpan.FromSeconds(10), "replies");
        stopReading.Cancel();
        foreach (var s in sockets) s.Dispose();
        await Task.WhenAll(readers);
        long requests = (long)sources.Length * perSource;
        return new FloodResult(requests, requests * request.Length, replies, replyBytes, seconds, echoes, codes);
    }
}
