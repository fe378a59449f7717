using System.Collections.Concurrent;
using System.Net.Sockets;
using System.Security.Cryptography;
using PtHost.Reliability.Support;
using Xunit.Abstractions;

namespace PtHost.Reliability;

/// <summary>Many concurrent sessions through client pthost → plain → server pthost → echo, every byte checked.</summary>
public class LoadTests(ITestOutputHelper output)
{
    public const int Sessions = 2000;
    private static readonly TimeSpan RoundLimit = TimeSpan.FromSeconds(150);

    internal sealed record RoundResult(int Opened, int Verified, int Mismatches, List<string> Errors, long Bytes, int ClientFdsAtPeak, int ServerFdsAtPeak);

    [Fact]
    public async Task Two_rounds_of_2000_concurrent_sessions_lose_no_byte_leak_no_fd_and_do_not_grow_memory()
    {
        ulong limit = ProcStats.RaiseFdLimit();
        Assert.True(limit >= 3 * Sessions + 1000, $"RLIMIT_NOFILE {limit} is too low for {Sessions} sessions");
        await using var echo = new EchoServer();
        await using var chain = await Support.Sessions.StartPlainChainAsync();
        int client = chain.Client.Pid, server = chain.Server.Pid;

        // Warm-up (JIT, pools), then the baseline.
        var warm = await RunRoundAsync(chain, echo, 50, seed: 1);
        Assert.Equal(50, warm.Verified);
        var sock0 = await chain.SocketsAtRestAsync();
        var fd0 = await ProcStats.FdsAtRestAsync(client, server);
        int clientFd0 = fd0[0], serverFd0 = fd0[1];
        int clientSock0 = sock0[0], serverSock0 = sock0[1];
        long clientRss0 = ProcStats.RssBytes(client), serverRss0 = ProcStats.RssBytes(server);
        output.WriteLine($"baseline: client {clientFd0} fds ({clientSock0} sockets/pipes) {clientRss0 >> 20} MiB, server {serverFd0} fds ({serverSock0} sockets/pipes) {serverRss0 >> 20} MiB");

        var rss = new List<(long Client, long Server)>();
        for (int round = 1; round <= 2; round++)
        {
            var r = await RunRoundAsync(chain, echo, Sessions, seed: 100 + round);
            output.WriteLine($"round {round}: {r.Opened} opened, {r.Verified} verified, {r.Mismatches} mismatches, {r.Errors.Count} errors, {r.Bytes} bytes each way; fds at peak client {r.ClientFdsAtPeak}, server {r.ServerFdsAtPeak}");
            Assert.True(r.Errors.Count == 0, $"{r.Errors.Count} sessions failed, e.g.:\n{string.Join("\n", r.Errors.Take(5))}\nclient stderr:\n{Tail(chain.Client.Stderr)}");
            Assert.Equal(0, r.Mismatches);
            Assert.Equal(Sessions, r.Verified);
            // All the sessions were open at once: each holds an accepted and an outbound socket in each process.
            Assert.True(r.ClientFdsAtPeak >= clientFd0 + 2 * Sessions, $"client had {r.ClientFdsAtPeak} fds at the peak");
            Assert.True(r.ServerFdsAtPeak >= serverFd0 + 2 * Sessions, $"server had {r.ServerFdsAtPeak} fds at the peak");

            // Every socket is released once the sessions have closed (a couple of spare ones tolerated),
            // and the fd total is back near the baseline (the runtime may open a few more assembly files).
            int cs = await ProcStats.WaitForSocketsAtMostAsync(client, clientSock0 + 2, TimeSpan.FromSeconds(30));
            int ss = await ProcStats.WaitForSocketsAtMostAsync(server, serverSock0 + 2, TimeSpan.FromSeconds(30));
            var fds = await ProcStats.FdsAtRestAsync(client, server);
            int cf = fds[0], sf = fds[1];
            rss.Add((ProcStats.RssBytes(client), ProcStats.RssBytes(server)));
            output.WriteLine($"after round {round}: client {cf} fds ({cs} sockets/pipes) {rss[^1].Client >> 20} MiB, server {sf} fds ({ss} sockets/pipes) {rss[^1].Server >> 20} MiB");
            Assert.True(cs <= clientSock0 + 2, $"client: {clientSock0} → {cs} sockets/pipes: {ProcStats.FdSummary(client)}");
            Assert.True(ss <= serverSock0 + 2, $"server: {serverSock0} → {ss} sockets/pipes: {ProcStats.FdSummary(server)}");
            Assert.InRange(cf, 0, clientFd0 + 32);
            Assert.InRange(sf, 0, serverFd0 + 32);
        }
        // Memory does not keep growing: the second round ends within a generous bound of the first.
        Assert.True(rss[1].Client <= rss[0].Client * 3 / 2 + (64L << 20), $"client RSS grew {rss[0].Client >> 20} → {rss[1].Client >> 20} MiB");
        Assert.True(rss[1].Server <= rss[0].Server * 3 / 2 + (64L << 20), $"server RSS grew {rss[0].Server >> 20} → {rss[1].Server >> 20} MiB");
        // And stays within a bound of the baseline (a few hundred bytes per session would show as tens of MiB).
        Assert.True(rss[1].Client <= clientRss0 + (512L << 20), $"client RSS {clientRss0 >> 20} → {rss[1].Client >> 20} MiB");
        Assert.True(rss[1].Server <= serverRss0 + (512L << 20), $"server RSS {serverRss0 >> 20} → {rss[1].Server >> 20} MiB");

        var (s, c) = await chain.StopAsync();
        Assert.Equal(0, s);
        Assert.Equal(0, c);
    }

    private static string Tail(string s) => s.Length > 4000 ? s[^4000..] : s;

    /// <summary>Opens <paramref name="n"/> sessions, all at once, each echoing 32–64 KiB checked at both ends (also used by the zephyr load test).</summary>
    internal static async Task<RoundResult> RunRoundAsync(PtChain chain, EchoServer echo, int n, int seed, Action? atPeak = null)
    {
        using var cts = new CancellationTokenSource(RoundLimit);
        var rng = new Random(seed);
        var payloads = new byte[n][];
        for (int i = 0; i < n; i++)
        {
            payloads[i] = new byte[32 * 1024 + rng.Next(32 * 1024 + 1)];
            rng.NextBytes(payloads[i]);
        }
        var errors = new ConcurrentQueue<string>();
        int receivedBefore = echo.Received.Count;

        // Open every session (at most 64 handshakes in flight) and keep them all open.
        using var gate = new SemaphoreSlim(64);
        var opens = Enumerable.Range(0, n).Select(async i =>
        {
            await gate.WaitAsync(cts.Token);
            try
            {
                var (reply, c) = await Support.Sessions.ConnectAsync(chain.SocksEndPoint, echo.Port, TimeSpan.FromSeconds(60));
                if (reply != 0) { errors.Enqueue($"session {i}: reply {reply}"); await c.DisposeAsync(); return null; }
                return c;
            }
            catch (Exception e) { errors.Enqueue($"session {i} open: {e.GetType().Name}: {e.Message}"); return null; }
            finally { gate.Release(); }
        }).ToList();
        var clients = await Task.WhenAll(opens);
        int opened = clients.Count(c => c is not null);
        int clientPeak = ProcStats.FdCount(chain.Client.Pid), serverPeak = ProcStats.FdCount(chain.Server.Pid);
        atPeak?.Invoke();

        // Then every session moves its data at once, half-closes, and reads the echo to the end.
        int verified = 0, mismatches = 0;
        long bytes = 0;
        var transfers = clients.Select(async (c, i) =>
        {
            if (c is null) return;
            await using (c)
            {
                try
                {
                    var reader = Support.Sessions.ReadAllAsync(c.Socket, cts.Token);
                    await c.Stream.WriteAsync(payloads[i], cts.Token);
                    c.Socket.Shutdown(SocketShutdown.Send);
                    var back = await reader;
                    if (back.AsSpan().SequenceEqual(payloads[i])) Interlocked.Increment(ref verified);
                    else { Interlocked.Increment(ref mismatches); errors.Enqueue($"session {i}: echo of {back.Length} bytes differs from the {payloads[i].Length} sent"); }
                    Interlocked.Add(ref bytes, payloads[i].Length);
                }
                catch (Exception e) { errors.Enqueue($"session {i} transfer: {e.GetType().Name}: {e.Message}"); }
            }
        });
        await Task.WhenAll(transfers);

        // The far end saw exactly what each session sent (by SHA-256).
        await Eventually.HoldsWithinAsync(() => echo.Received.Count >= receivedBefore + opened, TimeSpan.FromSeconds(30));
        var farHashes = new HashSet<string>(echo.Received.Skip(receivedBefore).Select(b => Convert.ToHexString(SHA256.HashData(b))));
        for (int i = 0; i < n; i++)
            if (clients[i] is not null && !farHashes.Contains(Convert.ToHexString(SHA256.HashData(payloads[i]))))
            {
                mismatches++;
                errors.Enqueue($"session {i}: the far end did not receive its bytes intact");
            }
        return new RoundResult(opened, verified, mismatches, [.. errors], bytes, clientPeak, serverPeak);
    }
}
