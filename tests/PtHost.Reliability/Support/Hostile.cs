using System.Buffers.Binary;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using PtHost.Turn;
using Xunit.Abstractions;

namespace PtHost.Reliability.Support;

/// <summary>Slow and hostile connections: open them, and measure when the listener cuts each.</summary>
public static class Hostile
{
    /// <summary>Opens <paramref name="count"/> TCP connections to <paramref name="target"/> (at most 64 connecting at once) and sends <paramref name="first"/> on each.</summary>
    public static async Task<List<(Socket Socket, TimeSpan Started)>> OpenAsync(IPEndPoint target, int count, byte[] first, Stopwatch clock)
    {
        using var gate = new SemaphoreSlim(64);
        return [.. await Task.WhenAll(Enumerable.Range(0, count).Select(async i =>
        {
            await gate.WaitAsync();
            var s = new Socket(target.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
            var started = clock.Elapsed;
            try
            {
                using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30));
                await s.ConnectAsync(target, cts.Token);
                if (first.Length > 0) await s.SendAsync(first, SocketFlags.None);
                return (s, started);
            }
            catch (SocketException e)
            {
                s.Dispose();
                throw new IOException($"connection {i + 1} of {count} to {target}: {e.SocketErrorCode} {(clock.Elapsed - started).TotalSeconds:0.00} s after it started", e);
            }
            finally { gate.Release(); }
        }))];
    }

    /// <summary>What one attacking connection saw: whether the far end ended it, after how long, and the first bytes it got.</summary>
    public readonly record struct Cut(bool Ended, double HeldSeconds, byte[] Received);

    /// <summary>
    /// Opens <paramref name="count"/> connections that the listener is expected to cut at once (over a
    /// limit), and waits for each cut. A reset that arrives before the connect or the first send has
    /// completed is that cut, seen early: on a fast machine the listener's RST can beat the client.
    /// </summary>
    public static async Task<List<Cut>> OpenOverLimitAsync(IPEndPoint target, int count, byte[] first, Stopwatch clock, TimeSpan within)
    {
        return [.. await Task.WhenAll(Enumerable.Range(0, count).Select(async _ =>
        {
            var started = clock.Elapsed;
            try
            {
                var opened = await OpenAsync(target, 1, first, clock);
                return (await AwaitCutsAsync(opened, clock, within))[0];
            }
            catch (IOException e) when (e.InnerException is SocketException { SocketErrorCode: SocketError.ConnectionReset or SocketError.ConnectionAborted or SocketError.Shutdown })
            {
                return new Cut(true, (clock.Elapsed - started).TotalSeconds, []);
            }
        }))];
    }

    /// <summary>Reads each connection until the far end ends it (EOF or reset) or <paramref name="within"/> passes; disposes it.</summary>
    public static async Task<List<Cut>> AwaitCutsAsync(IEnumerable<(Socket Socket, TimeSpan Started)> attackers, Stopwatch clock, TimeSpan within)
    {
        return [.. await Task.WhenAll(attackers.Select(async a =>
        {
            using var cts = new CancellationTokenSource(within);
            var received = new MemoryStream();
            var buf = new byte[4096];
            bool ended;
            try
            {
                int n;
                while ((n = await a.Socket.ReceiveAsync(buf, SocketFlags.None, cts.Token)) > 0)
                    if (received.Length < 4096) received.Write(buf, 0, n);
                ended = true;
            }
            catch (OperationCanceledException) { ended = false; }
            catch (SocketException) { ended = true; }
            var held = (clock.Elapsed - a.Started).TotalSeconds;
            a.Socket.Dispose();
            return new Cut(ended, held, received.ToArray());
        }))];
    }

    /// <summary>Asserts every connection was cut, between <paramref name="min"/> and <paramref name="max"/> seconds; writes the range.</summary>
    public static string Check(List<Cut> cuts, double min, double max, string what, ITestOutputHelper output)
    {
        var held = cuts.Select(c => c.HeldSeconds).Order().ToList();
        string line = $"{cuts.Count} {what}: {cuts.Count(c => c.Ended)} cut, after {held[0]:F1}–{held[^1]:F1} s (median {held[held.Count / 2]:F1} s)";
        output.WriteLine(line);
        Assert.All(cuts, c => Assert.True(c.Ended, $"{what}: a connection was still open after {c.HeldSeconds:F0} s"));
        Assert.All(cuts, c => Assert.InRange(c.HeldSeconds, min, max));
        return line;
    }
}
