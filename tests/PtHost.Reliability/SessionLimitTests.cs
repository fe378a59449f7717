using System.Diagnostics;
using System.Net.Sockets;
using Newtonsoft.Json.Linq;
using PtHost.Reliability.Support;
using Xunit.Abstractions;

namespace PtHost.Reliability;

/// <summary>
/// spec/ipc.md §8 limits: 16,384 sessions per SOCKS listener. A connection accepted while that many
/// are open is reset at once; a session that closes frees its place.
/// </summary>
public class SessionLimitTests(ITestOutputHelper output)
{
    private const int Limit = 16_384;

    [Fact]
    public async Task The_16385th_session_is_reset_at_once_and_the_listener_serves_again_once_places_free()
    {
        // Real sessions with a far end would need two sockets each in the client pthost, above the
        // usual hard RLIMIT_NOFILE of 20,000 (which a container without CAP_SYS_RESOURCE cannot
        // raise). So the client discovers its server by SMESSAGE (spec/plain.md §3) and the test
        // holds that message back: each session has read its CONNECT request and waits, with one
        // socket, for the server's address (up to the 30 s connect limit).
        ulong limit = ProcStats.RaiseFdLimit();
        Assert.True(limit >= Limit + 1000, $"RLIMIT_NOFILE {limit} is too low to hold {Limit} connections");
        await using var echo = new EchoServer();
        await using var chain = await PtChain.StartAsync(PtChain.FreeServer(), _ => PtChain.ClientWith(new JObject { ["discover"] = true }), relayMessages: false);
        string smessage = chain.ServerStartup.Single(l => l.StartsWith("SMESSAGE plain ", StringComparison.Ordinal));
        int sockets0 = (await ProcStats.SocketsAtRestAsync(chain.Client.Pid))[0];
        byte[] request = [.. SocksClient.Greeting(0x00), .. SocksClient.ConnectIPv4(System.Net.IPAddress.Loopback, echo.Port)];

        var held = new Socket?[Limit];
        try
        {
            var watch = Stopwatch.StartNew();
            int next = -1, failures = 0;
            string? firstError = null;
            async Task Opener()
            {
                int i;
                while ((i = Interlocked.Increment(ref next)) < Limit)
                {
                    var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
                    try
                    {
                        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(10));
                        await s.ConnectAsync(chain.SocksEndPoint, cts.Token);
                        await s.SendAsync(request, SocketFlags.None, cts.Token);
                        held[i] = s;
                    }
                    catch (Exception e) when (e is SocketException or OperationCanceledException)
                    {
                        s.Dispose();
                        Interlocked.Increment(ref failures);
                        Interlocked.CompareExchange(ref firstError, e.Message, null);
                    }
                }
            }
            await Task.WhenAll(Enumerable.Range(0, 256).Select(_ => Task.Run(Opener)));
            var opened = watch.Elapsed;
            // Accepted by the host (not just queued in the kernel's backlog).
            int inHost = await ProcStats.WaitForSocketsAtLeastAsync(chain.Client.Pid, sockets0 + Limit, TimeSpan.FromSeconds(5)) - sockets0;
            output.WriteLine($"{Limit - failures} connections opened in {opened.TotalSeconds:0.0} s; the client pthost holds {inHost} more sockets than before");
            Assert.True(failures == 0, $"{failures} connections failed below the limit: {firstError}");
            Assert.True(inHost >= Limit, $"the client pthost accepted only {inHost} of {Limit} connections after {watch.Elapsed.TotalSeconds:0.0} s " +
                "(opening must finish within the 30 s connect limit, which ends the first ones)");

            // The 16,385th: reset at once, not one byte.
            var refusal = Stopwatch.StartNew();
            Assert.Equal(0, await RefusedAsync(chain));
            output.WriteLine($"the 16,385th connection ended after {refusal.Elapsed.TotalMilliseconds:0} ms with no byte");
            Assert.True(refusal.Elapsed < TimeSpan.FromSeconds(5), $"the refusal took {refusal.Elapsed}");

            // Every held session gets its answer when the connect limit ends the wait: 05 00, then reply 04.
            var sample = await Task.WhenAll(held.Take(100).Select(s => ReplyCodeAsync(s!)));
            Assert.All(sample, code => Assert.Equal(0x04, code));
        }
        finally
        {
            foreach (var s in held) s?.Dispose();
        }
        int left = await ProcStats.WaitForSocketsAtMostAsync(chain.Client.Pid, sockets0 + 2, TimeSpan.FromSeconds(60));
        Assert.True(left <= sockets0 + 2, $"client still holds {left} sockets/pipes (before: {sockets0}): {ProcStats.FdSummary(chain.Client.Pid)}");
        // With the server's address delivered, the listener serves a real session, every byte intact.
        await chain.Client.WriteLineAsync(smessage);
        await Sessions.EchoRoundTripAsync(chain.SocksEndPoint, echo.Port, 64 * 1024);
    }

    /// <summary>Reads the method reply and the CONNECT reply of a held session (within the 30 s connect limit and some); returns the reply code.</summary>
    private static async Task<int> ReplyCodeAsync(Socket s)
    {
        var buffer = new byte[12];
        int got = 0;
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        while (got < 4)
        {
            int n = await s.ReceiveAsync(buffer.AsMemory(got), SocketFlags.None, cts.Token);
            if (n == 0) return -1;
            got += n;
        }
        Assert.Equal(new byte[] { 5, 0, 5 }, buffer[..3]);
        return buffer[3];
    }

    /// <summary>Connects to the SOCKS port and sends a greeting; returns how many bytes came back before the end (expected: 0, a reset).</summary>
    private static async Task<int> RefusedAsync(PtChain chain)
    {
        using var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        // The reset can come so soon that the connect itself reports it.
        try { await s.ConnectAsync(chain.SocksEndPoint); }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.ConnectionReset) { return 0; }
        try { await s.SendAsync(new byte[] { 5, 1, 0 }, SocketFlags.None); }
        catch (SocketException) { return 0; }
        var buffer = new byte[16];
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        int total = 0;
        try
        {
            int n;
            while ((n = await s.ReceiveAsync(buffer, SocketFlags.None, cts.Token)) > 0) total += n;
        }
        catch (SocketException) { }
        catch (OperationCanceledException) { return -1; } // still open: not refused
        return total;
    }
}
