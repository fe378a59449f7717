using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using PtHost.Reliability.Support;
using Xunit.Abstractions;

namespace PtHost.Reliability;

/// <summary>Slowloris: connections that send one byte and then nothing are cut by the 10 s handshake/preamble limit.</summary>
public class SlowlorisTests(ITestOutputHelper output)
{
    private const int Attackers = 200;

    private async Task AttackAsync(Func<PtChain, IPEndPoint> target, Func<PtChain, PtProcess> attacked, byte firstByte)
    {
        await using var echo = new EchoServer();
        await using var chain = await Sessions.StartPlainChainAsync();
        var port = target(chain);
        int clientSock0 = ProcStats.SocketCount(chain.Client.Pid), serverSock0 = ProcStats.SocketCount(chain.Server.Pid);
        var clock = Stopwatch.StartNew();
        var attackers = await Task.WhenAll(Enumerable.Range(0, Attackers).Select(async _ =>
        {
            var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            var started = clock.Elapsed;
            await s.ConnectAsync(port);
            await s.SendAsync(new[] { firstByte }, SocketFlags.None);
            return (Socket: s, Started: started);
        }));
        var closes = attackers.Select(async a =>
        {
            bool ended = await Sessions.EndsWithinAsync(a.Socket, TimeSpan.FromSeconds(30));
            var held = clock.Elapsed - a.Started;
            a.Socket.Dispose();
            return (ended, held);
        }).ToList();

        // The attacked process holds all of them (accepted, not only queued by the kernel); meanwhile normal sessions still work.
        int pid = attacked(chain).Pid, before = pid == chain.Client.Pid ? clientSock0 : serverSock0;
        // (2 spare, as in the leak checks: the baseline was taken just after start-up.)
        int holding = await ProcStats.WaitForSocketsAtLeastAsync(pid, before + Attackers - 2, TimeSpan.FromSeconds(8));
        Assert.True(holding >= before + Attackers - 2, $"the attacked process accepted only {holding - before} of {Attackers} connections");
        for (int i = 0; i < 3; i++) await Sessions.EchoRoundTripAsync(chain.SocksEndPoint, echo.Port, 256 * 1024);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(9) || closes.Any(c => !c.IsCompleted), "the normal sessions are meant to run while the attack is on");

        var results = await Task.WhenAll(closes);
        var held = results.Select(r => r.held.TotalSeconds).Order().ToList();
        output.WriteLine($"{Attackers} one-byte connections to {port}: closed after {held[0]:F1}–{held[^1]:F1} s (median {held[held.Count / 2]:F1} s)");
        Assert.All(results, r => Assert.True(r.ended, "a one-byte connection was still open after 30 s"));
        // Cut by the 10 s timer (started at accept, after our clock), within ~20 s.
        Assert.All(results, r => Assert.InRange(r.held.TotalSeconds, 9.5, 25));
        await Sessions.EchoRoundTripAsync(chain.SocksEndPoint, echo.Port, 256 * 1024);
        // Nothing of the 200 is left behind.
        Assert.InRange(await ProcStats.WaitForSocketsAtMostAsync(chain.Client.Pid, clientSock0 + 2, TimeSpan.FromSeconds(10)), 0, clientSock0 + 2);
        Assert.InRange(await ProcStats.WaitForSocketsAtMostAsync(chain.Server.Pid, serverSock0 + 2, TimeSpan.FromSeconds(10)), 0, serverSock0 + 2);
    }

    [Fact]
    public Task One_byte_SOCKS_connections_are_cut_by_the_handshake_timeout() => AttackAsync(c => c.SocksEndPoint, c => c.Client, 0x05);

    [Fact]
    public Task One_byte_plain_connections_are_cut_by_the_preamble_timeout() => AttackAsync(c => c.ServerEndPoint, c => c.Server, (byte)'P');
}
