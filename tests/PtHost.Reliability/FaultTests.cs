using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using Newtonsoft.Json.Linq;
using PtHost.Reliability.Support;
using Xunit.Abstractions;

namespace PtHost.Reliability;

/// <summary>Faults on the path: a killed server process, a refusing target, a far end that never reads, half-closes.</summary>
public class FaultTests(ITestOutputHelper output)
{
    private const int SIGKILL = 9;

    [Fact]
    public async Task Server_killed_mid_transfer_ends_the_stream_and_the_client_keeps_serving()
    {
        await using var echo = new EchoServer();
        var chain = await Sessions.StartPlainChainAsync();
        await using var _ = chain;
        int serverPort = chain.ServerEndPoint.Port;

        // Three sessions streaming through the server when it is killed.
        var streams = new List<(SocksClient Client, Task Writer, Task<bool> Ended)>();
        long moved = 0;
        using var stop = new CancellationTokenSource();
        for (int i = 0; i < 3; i++)
        {
            var (reply, c) = await Sessions.ConnectAsync(chain.SocksEndPoint, echo.Port);
            Assert.Equal(0, reply);
            var writer = Task.Run(async () =>
            {
                var chunk = RandomNumberGenerator.GetBytes(16 * 1024);
                try { while (!stop.IsCancellationRequested) { await c.Stream.WriteAsync(chunk, stop.Token); Interlocked.Add(ref moved, chunk.Length); } }
                catch (Exception) { } // broken pipe / reset once the path is gone, or our cancel
            });
            streams.Add((c, writer, Sessions.EndsWithinAsync(c.Socket, TimeSpan.FromSeconds(30))));
        }
        await Eventually.HoldsWithinAsync(() => Interlocked.Read(ref moved) >= 3 * 1024 * 1024, TimeSpan.FromSeconds(20));
        Assert.True(Interlocked.Read(ref moved) > 0, "no data moved before the kill");
        output.WriteLine($"{Interlocked.Read(ref moved)} bytes written before SIGKILL");

        chain.Server.Signal(SIGKILL);
        Assert.NotEqual(0, await chain.Server.WaitForExitAsync(TimeSpan.FromSeconds(15)));
        foreach (var (c, writer, ended) in streams)
        {
            // The SOCKS client sees its stream end (EOF or reset) within a bounded time.
            Assert.True(await ended, "a SOCKS session stayed open after its server process was killed");
        }
        stop.Cancel();
        foreach (var (c, writer, _) in streams)
        {
            await writer.WaitAsync(TimeSpan.FromSeconds(15));
            await c.DisposeAsync();
        }

        // The client pthost still answers: with no server behind it, "connection refused".
        for (int i = 0; i < 5; i++)
        {
            var (reply, c) = await Sessions.ConnectAsync(chain.SocksEndPoint, echo.Port, TimeSpan.FromSeconds(20));
            await c.DisposeAsync();
            Assert.Equal(0x05, reply);
        }

        // A new server on the same port (the client's serverAddress names it; the killed server's port was
        // given back by the kernel a moment ago): the same client carries sessions again.
        var config = PtChain.FreeServer();
        config["bindaddr"] = new JObject { ["plain"] = $"127.0.0.1:{serverPort}" };
        await using var restarted = PtProcess.StartPthost(config.ToString(Newtonsoft.Json.Formatting.None));
        var lines = await restarted.ReadUntilDoneAsync();
        Assert.Contains(lines, l => l.StartsWith($"SMETHOD plain 127.0.0.1:{serverPort}", StringComparison.Ordinal));
        for (int i = 0; i < 5; i++) await Sessions.EchoRoundTripAsync(chain.SocksEndPoint, echo.Port, 512 * 1024);
    }

    [Fact]
    public async Task A_refusing_target_is_answered_05_and_leaves_nothing_behind()
    {
        await using var echo = new EchoServer();
        await using var chain = await Sessions.StartPlainChainAsync();
        await Sessions.EchoRoundTripAsync(chain.SocksEndPoint, echo.Port, 1024);
        var (clientFd0, serverFd0) = await BaselineAsync(chain);
        using var closed = new RefusingPort();

        var replies = await Task.WhenAll(Enumerable.Range(0, 50).Select(async _ =>
        {
            var (reply, c) = await Sessions.ConnectAsync(chain.SocksEndPoint, closed.Port, TimeSpan.FromSeconds(30));
            // After a failure reply the proxy closes its side (spec/ipc.md §5.8).
            bool ended = await Sessions.EndsWithinAsync(c.Socket, TimeSpan.FromSeconds(15));
            await c.DisposeAsync();
            return (reply, ended);
        }));
        Assert.All(replies, r => Assert.Equal(0x05, r.reply));
        Assert.All(replies, r => Assert.True(r.ended, "the session was not closed after its failure reply"));
        await Sessions.EchoRoundTripAsync(chain.SocksEndPoint, echo.Port, 256 * 1024);
        Assert.InRange(await ProcStats.WaitForSocketsAtMostAsync(chain.Client.Pid, clientFd0 + 2, TimeSpan.FromSeconds(20)), 0, clientFd0 + 2);
        Assert.InRange(await ProcStats.WaitForSocketsAtMostAsync(chain.Server.Pid, serverFd0 + 2, TimeSpan.FromSeconds(20)), 0, serverFd0 + 2);
    }

    [Fact]
    public async Task A_far_end_that_never_reads_blocks_only_its_own_session()
    {
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        long drained = 0;
        await using var stall = new ScriptServer(async (s, ct) =>
        {
            await release.Task.WaitAsync(ct);          // accepts, never reads until released
            Interlocked.Add(ref drained, await ScriptServer.DrainAsync(s, ct));
        });
        await using var echo = new EchoServer();
        await using var chain = await Sessions.StartPlainChainAsync();
        await Sessions.EchoRoundTripAsync(chain.SocksEndPoint, echo.Port, 1024);
        var (clientFd0, serverFd0) = await BaselineAsync(chain);
        output.WriteLine($"baseline fds: client {ProcStats.FdSummary(chain.Client.Pid)}; server {ProcStats.FdSummary(chain.Server.Pid)}");
        long clientRss0 = ProcStats.RssBytes(chain.Client.Pid), serverRss0 = ProcStats.RssBytes(chain.Server.Pid);

        var (reply, stalled) = await Sessions.ConnectAsync(chain.SocksEndPoint, stall.Port);
        Assert.Equal(0, reply);
        long written = 0;
        using var stopWriting = new CancellationTokenSource();
        var writer = Task.Run(async () =>
        {
            var chunk = RandomNumberGenerator.GetBytes(64 * 1024);
            try { while (true) { await stalled.Stream.WriteAsync(chunk, stopWriting.Token); Interlocked.Add(ref written, chunk.Length); } }
            catch (Exception) { }
        });
        // Let the writer fill every buffer on the path and block: no progress for 500 ms.
        await Eventually.StableAsync(() => Interlocked.Read(ref written), TimeSpan.FromMilliseconds(500), TimeSpan.FromSeconds(20), "the bytes the stalled session accepted");

        // Meanwhile other sessions on the same client work.
        await Task.WhenAll(Enumerable.Range(0, 8).Select(_ => Sessions.EchoRoundTripAsync(chain.SocksEndPoint, echo.Port, 1024 * 1024)));
        long blockedAt = Interlocked.Read(ref written);
        long clientGrowth = ProcStats.RssBytes(chain.Client.Pid) - clientRss0, serverGrowth = ProcStats.RssBytes(chain.Server.Pid) - serverRss0;
        output.WriteLine($"stalled session accepted {blockedAt} bytes before blocking; RSS growth client {clientGrowth >> 20} MiB, server {serverGrowth >> 20} MiB");
        Assert.False(writer.IsCompleted, "the writer should be blocked by the far end, not failed");
        // Back-pressure: what the path holds is bounded by socket buffers, not the amount offered.
        Assert.True(blockedAt < 256L << 20, $"{blockedAt} bytes were accepted for a far end that reads nothing");

        // The application gives up (reset): the whole path is torn down.
        Sessions.Abort(stalled.Socket);
        stopWriting.Cancel();
        await writer.WaitAsync(TimeSpan.FromSeconds(15));
        release.SetResult();
        Assert.True(await stall.WaitFinishedAsync(1, TimeSpan.FromSeconds(30)), "the far end's connection stayed open after the application reset its session");
        output.WriteLine($"far end drained {Interlocked.Read(ref drained)} bytes after release");
        int cf = await ProcStats.WaitForSocketsAtMostAsync(chain.Client.Pid, clientFd0 + 2, TimeSpan.FromSeconds(20));
        int sf = await ProcStats.WaitForSocketsAtMostAsync(chain.Server.Pid, serverFd0 + 2, TimeSpan.FromSeconds(20));
        output.WriteLine($"sockets and pipes: client {clientFd0} → {cf} ({ProcStats.FdSummary(chain.Client.Pid)}); server {serverFd0} → {sf} ({ProcStats.FdSummary(chain.Server.Pid)})");
        Assert.InRange(cf, 0, clientFd0 + 2);
        Assert.InRange(sf, 0, serverFd0 + 2);
        await Sessions.EchoRoundTripAsync(chain.SocksEndPoint, echo.Port, 256 * 1024);
    }

    /// <summary>The sockets and pipes of client and server with no session open, at rest: the baseline of a leak check.</summary>
    private static async Task<(int Client, int Server)> BaselineAsync(PtChain chain)
    {
        var n = await chain.SocketsAtRestAsync();
        return (n[0], n[1]);
    }

    [Fact]
    public async Task Half_close_from_the_application_side_still_carries_the_answer()
    {
        // The far end reads to EOF, then answers with what it read, reversed, then closes.
        await using var far = new ScriptServer(async (s, ct) =>
        {
            var got = await Sessions.ReadAllAsync(s, ct);
            Array.Reverse(got);
            await s.SendAsync(got, SocketFlags.None, ct);
            s.Shutdown(SocketShutdown.Send);
        });
        await using var chain = await Sessions.StartPlainChainAsync();
        for (int i = 0; i < 4; i++)
        {
            var (reply, c) = await Sessions.ConnectAsync(chain.SocksEndPoint, far.Port);
            await using (c)
            {
                Assert.Equal(0, reply);
                var data = RandomNumberGenerator.GetBytes(768 * 1024 + i);
                await c.Stream.WriteAsync(data);
                c.Socket.Shutdown(SocketShutdown.Send);   // FIN towards the far end; the other direction stays open
                using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(60));
                var back = await Sessions.ReadAllAsync(c.Socket, cts.Token);
                Array.Reverse(data);
                Assert.Equal(SHA256.HashData(data), SHA256.HashData(back));
            }
        }
        Assert.Empty(far.Errors);
    }

    [Fact]
    public async Task Half_close_from_the_far_side_still_carries_the_application_data()
    {
        var farGot = new ConcurrentQueue<byte[]>();
        var payload = RandomNumberGenerator.GetBytes(640 * 1024);
        // The far end sends everything and FINs first, then reads what the application sends afterwards.
        await using var far = new ScriptServer(async (s, ct) =>
        {
            await s.SendAsync(payload, SocketFlags.None, ct);
            s.Shutdown(SocketShutdown.Send);
            farGot.Enqueue(SHA256.HashData(await Sessions.ReadAllAsync(s, ct)));
        });
        await using var chain = await Sessions.StartPlainChainAsync();
        var sent = new List<byte[]>();
        for (int i = 0; i < 4; i++)
        {
            var (reply, c) = await Sessions.ConnectAsync(chain.SocksEndPoint, far.Port);
            await using (c)
            {
                Assert.Equal(0, reply);
                using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(60));
                var got = await Sessions.ReadAllAsync(c.Socket, cts.Token);   // until the far end's FIN arrives
                Assert.Equal(SHA256.HashData(payload), SHA256.HashData(got));
                var data = RandomNumberGenerator.GetBytes(512 * 1024 + i);   // only now the application writes
                await c.Stream.WriteAsync(data, cts.Token);
                c.Socket.Shutdown(SocketShutdown.Send);
                sent.Add(SHA256.HashData(data));
                Assert.True(await Sessions.EndsWithinAsync(c.Socket, TimeSpan.FromSeconds(30)));
            }
        }
        Assert.True(await far.WaitFinishedAsync(4, TimeSpan.FromSeconds(30)));
        Assert.Empty(far.Errors);
        Assert.Equal(sent.Select(Convert.ToHexString).Order(), farGot.Select(Convert.ToHexString).Order());
    }
}
