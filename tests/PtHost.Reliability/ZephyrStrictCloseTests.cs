using System.Diagnostics;
using System.Net.Sockets;
using System.Security.Cryptography;
using PtHost.Reliability.Support;
using Xunit.Abstractions;

namespace PtHost.Reliability;

/// <summary>
/// Issue 23, point 2 (spec/zephyr.md §7.5, §4.8): zephyr sessions through a relay that reads the seed's "MUST
/// immediately close" literally — <c>pthost relay zephyr --strict-close</c> resets both peers at the first FIN and
/// discards whatever it still holds, as the reference relay valkyrie does in its splice mode. An endpoint sends its
/// FIN only after both TLS close_notify alerts have crossed, so nothing is in flight when that happens.
/// </summary>
public class ZephyrStrictCloseTests(ITestOutputHelper output)
{
    private const int Size = 2 * 1024 * 1024;
    private const int Transfers = 100;
    private const int InFlight = 8;

    [Fact]
    public async Task The_strict_close_relay_resets_both_peers_at_the_first_FIN()
    {
        // The mode itself: B sends 32 MiB and FIN while A reads slowly; the relay sees B's FIN once it has written
        // B's bytes towards A, and resets both at once, dropping what its socket to A still held.
        await using var relay = await ZephyrRelayProcess.StartAsync("--strict-close");
        using var a = await ZephyrPeer.ConnectAsync(relay.EndPoint);
        using var b = await ZephyrPeer.ConnectAsync(relay.EndPoint);
        await a.BindAsync(b.Zid);
        await b.BindAsync(a.Zid);
        byte[] data = RandomNumberGenerator.GetBytes(32 * 1024 * 1024);
        var sending = Task.Run(async () =>
        {
            try
            {
                await b.Socket.SendAsync(data, SocketFlags.None);
                b.Socket.Shutdown(SocketShutdown.Send);
            }
            catch (SocketException) { } // reset by the relay
        });
        long got = 0;
        bool reset = false;
        var buffer = new byte[64 * 1024];
        try
        {
            int n;
            while ((n = await a.Socket.ReceiveAsync(buffer, SocketFlags.None)) > 0)
            {
                got += n;
                await Task.Delay(5); // a slow reader: bytes stay queued on the path
            }
        }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.ConnectionReset) { reset = true; }
        await sending;
        await relay.Process.WaitForStderrAsync("end of stream with --strict-close; resetting both");
        output.WriteLine($"B sent {data.Length} bytes then FIN; A read {got} bytes, then {(reset ? "a reset" : "a clean end")}");
        Assert.True(reset, "A saw a clean end of stream, not the relay's reset");
        Assert.True(got < data.Length, "the strict relay delivered every byte: it dropped nothing it held");
    }

    [Fact]
    public async Task A_hundred_2_MiB_downloads_and_a_hundred_2_MiB_uploads_arrive_whole_through_a_strict_close_relay()
    {
        byte[] payload = RandomNumberGenerator.GetBytes(Size);
        byte[] hash = SHA256.HashData(payload);
        // Download target: sends the payload and ends its direction, then waits for the session to close.
        await using var download = new ScriptServer(async (s, ct) =>
        {
            await s.SendAsync(payload, SocketFlags.None, ct);
            s.Shutdown(SocketShutdown.Send);
            await Sessions.ReadAllAsync(s, ct);
        });
        // Upload target: reads to the client's half-close, answers with the SHA-256 of what arrived, ends.
        await using var upload = new ScriptServer(async (s, ct) =>
        {
            byte[] all = await Sessions.ReadAllAsync(s, ct);
            await s.SendAsync(SHA256.HashData(all), SocketFlags.None, ct);
            s.Shutdown(SocketShutdown.Send);
        });
        await using var relay = await ZephyrRelayProcess.StartAsync("--strict-close");
        await using var chain = await ZephyrChain.StartAsync(relay.EndPoint.ToString());

        async Task<string?> DownloadAsync()
        {
            var (reply, c) = await Sessions.ConnectAsync(chain.SocksEndPoint, download.Port);
            await using (c)
            {
                if (reply != 0) return $"reply {reply:x2}";
                byte[] got = await c.ReadToEndAsync(TimeSpan.FromSeconds(60));
                return SHA256.HashData(got).AsSpan().SequenceEqual(hash) ? null : $"download: {got.Length} of {Size} bytes";
            }
        }

        async Task<string?> UploadAsync()
        {
            var (reply, c) = await Sessions.ConnectAsync(chain.SocksEndPoint, upload.Port);
            await using (c)
            {
                if (reply != 0) return $"reply {reply:x2}";
                try
                {
                    await c.Stream.WriteAsync(payload);
                    c.Socket.Shutdown(SocketShutdown.Send);
                }
                catch (Exception e) when (e is IOException or SocketException) { return "upload: reset while sending"; }
                byte[] answer = await c.ReadToEndAsync(TimeSpan.FromSeconds(60));
                return answer.AsSpan().SequenceEqual(hash) ? null : $"upload: answer of {answer.Length} bytes{(answer.Length == 32 ? " (other hash: bytes lost)" : "")}";
            }
        }

        var failed = new List<string>();
        foreach (var (what, run) in new[] { ("download", (Func<Task<string?>>)DownloadAsync), ("upload", UploadAsync) })
        {
            var clock = Stopwatch.StartNew();
            using var gate = new SemaphoreSlim(InFlight);
            var results = await Task.WhenAll(Enumerable.Range(0, Transfers).Select(async _ =>
            {
                await gate.WaitAsync();
                try { return await run(); }
                catch (Exception e) when (e is IOException or SocketException or OperationCanceledException) { return $"{what}: {e.GetType().Name}: {e.Message}"; }
                finally { gate.Release(); }
            }));
            var failures = results.Where(r => r is not null).ToList();
            output.WriteLine($"{Transfers} {what}s of {Size} bytes, {InFlight} at a time: {Transfers - failures.Count} intact (SHA-256), {failures.Count} failed, in {clock.Elapsed.TotalSeconds:0.0} s");
            foreach (var group in failures.GroupBy(f => f).Take(5)) output.WriteLine($"  {group.Count()} × {group.Key}");
            failed.AddRange(failures!);
        }
        Assert.True(failed.Count == 0, $"{failed.Count} of {2 * Transfers} transfers failed through the strict relay, e.g. {failed.FirstOrDefault()}");
        var stats = relay.Process.Stderr.Split('\n').Count(l => l.Contains("--strict-close; resetting both", StringComparison.Ordinal));
        output.WriteLine($"the relay reset {stats} pairs at their first FIN");
    }
}
