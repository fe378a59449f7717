using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using PtHost.Transports.Zephyr;

namespace PtHost.Tests.Process;

/// <summary>
/// The real <c>pthost relay zephyr</c> process driven by raw sockets: one test per rule of
/// spec/zephyr.md §4, then bulk transfers and the connection limits.
/// </summary>
[Collection("process")]
public class ZephyrRelayTests
{
    private static readonly TimeSpan Wait = TimeSpan.FromSeconds(10);

    // ---- §5 the command ----

    [Fact]
    public async Task Prints_one_LISTEN_line_with_the_bound_address_one_STATUS_line_at_shutdown_and_exits_0_on_SIGTERM()
    {
        await using var relay = await ZephyrRelayProcess.StartAsync();
        Assert.NotEqual(0, relay.EndPoint.Port);
        Assert.Equal(IPAddress.Loopback, relay.EndPoint.Address);
        using var peer = await ZephyrPeer.ConnectAsync(relay.EndPoint); // it really listens there
        relay.Process.Signal(15);
        Assert.Equal(0, await relay.Process.WaitForExitAsync());
        // §5: the LISTEN line, then (the default interval being 60 s) only the shutdown STATUS line (§4.7).
        Assert.Collection(relay.Process.StdoutLines,
            l => Assert.Equal($"LISTEN zephyr {relay.EndPoint}", l),
            l => Assert.StartsWith("STATUS TRANSPORT=zephyr CONNECTIONS=0 BOUND-PAIRS=0 ACCEPTED=1 ", l, StringComparison.Ordinal));
    }

    [Fact]
    public async Task Exits_0_on_SIGINT()
    {
        await using var relay = await ZephyrRelayProcess.StartAsync();
        relay.Process.Signal(2);
        Assert.Equal(0, await relay.Process.WaitForExitAsync());
    }

    [Theory]
    [InlineData("--listen", "nowhere")]
    [InlineData("--listen", "127.0.0.1")]
    [InlineData("--bind-timeout", "0")]
    [InlineData("--peer-timeout", "soon")]
    [InlineData("--max-connections", "-1")]
    [InlineData("--max-per-source", "0")]
    [InlineData("--idle-timeout", "0")]
    [InlineData("--max-lifetime", "forever")]
    [InlineData("--ipv6-source-prefix", "0")]
    [InlineData("--loglevel", "loud")]
    [InlineData("--colour", "blue")]
    [InlineData("--listen")]
    public async Task Bad_arguments_exit_64_with_one_stderr_line(params string[] args)
    {
        await using var p = PtProcess.StartPthost(["relay", "zephyr", .. args]);
        Assert.Equal(64, await p.WaitForExitAsync());
        Assert.Empty(p.StdoutLines);
        Assert.Single(p.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
    }

    /// <summary>§5: a prefix length above 128 is a count the executable accepts but the relay cannot use: a configuration error.</summary>
    [Fact]
    public async Task An_ipv6_source_prefix_above_128_exits_78_naming_the_option()
    {
        await using var p = PtProcess.StartPthost("relay", "zephyr", "--listen", "127.0.0.1:0", "--ipv6-source-prefix", "129");
        Assert.Equal(78, await p.WaitForExitAsync());
        Assert.Empty(p.StdoutLines);
        Assert.Contains("--ipv6-source-prefix", p.Stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task An_address_that_cannot_be_bound_exits_69()
    {
        using var taken = new TcpListener(IPAddress.Loopback, 0);
        taken.Start();
        await using var p = PtProcess.StartPthost("relay", "zephyr", "--listen", taken.LocalEndpoint.ToString()!);
        Assert.Equal(69, await p.WaitForExitAsync());
        Assert.Empty(p.StdoutLines);
    }

    // ---- §4.1 assignment ----

    [Fact]
    public async Task Each_connection_is_assigned_a_distinct_non_negative_zid_in_12_bytes()
    {
        await using var relay = await ZephyrRelayProcess.StartAsync();
        var peers = new List<ZephyrPeer>();
        try
        {
            for (int i = 0; i < 100; i++)
            {
                var socket = await ZephyrPeer.ConnectRawAsync(relay.EndPoint);
                var assignment = await ZephyrPeer.ReadExactlyAsync(socket, 12);
                Assert.Equal(new byte[] { 0x82, 0x96, 0x44, 0xa1, 0, 0, 0, 4 }, assignment[..8]);
                Assert.True(assignment[8] < 0x80, "zid is negative as a signed 32-bit integer");
                Assert.Equal(BindRequestError.None, ZephyrWire.ParseAssignment(assignment, out uint zid));
                peers.Add(new ZephyrPeer(socket, zid));
            }
            Assert.Equal(100, peers.Select(p => p.Zid).Distinct().Count());
            // The assignment is all: nothing else arrives before a bind.
            Assert.Equal(End.Timeout, (await ReadToEndAsync(peers[0].Socket, TimeSpan.FromMilliseconds(300))).End);
        }
        finally { foreach (var p in peers) p.Dispose(); }
    }

    // ---- §4.2 bind request ----

    [Fact]
    public async Task A_bind_request_with_the_wrong_magic_is_closed()
    {
        await using var relay = await ZephyrRelayProcess.StartAsync();
        using var a = await ZephyrPeer.ConnectAsync(relay.EndPoint);
        using var b = await ZephyrPeer.ConnectAsync(relay.EndPoint);
        var request = ZephyrWire.BuildBindRequest(b.Zid);
        request[0] = 0x83;
        await a.SendAsync(request);
        await AssertClosedSoonAsync(a);
    }

    [Fact]
    public async Task A_bind_request_with_a_length_field_other_than_4_is_closed()
    {
        await using var relay = await ZephyrRelayProcess.StartAsync();
        using var a = await ZephyrPeer.ConnectAsync(relay.EndPoint);
        using var b = await ZephyrPeer.ConnectAsync(relay.EndPoint);
        var request = ZephyrWire.BuildBindRequest(b.Zid);
        request[7] = 5;
        await a.SendAsync(request);
        await AssertClosedSoonAsync(a);
    }

    [Fact]
    public async Task A_short_bind_request_then_silence_is_closed_after_the_bind_timeout()
    {
        await using var relay = await ZephyrRelayProcess.StartAsync("--bind-timeout", "2");
        using var silent = await ZephyrPeer.ConnectAsync(relay.EndPoint);
        using var a = await ZephyrPeer.ConnectAsync(relay.EndPoint);
        var clock = Stopwatch.StartNew();
        await a.SendAsync(ZephyrWire.BuildBindRequest(silent.Zid).AsSpan(0, 6).ToArray());
        var result = await ReadToEndAsync(a.Socket, Wait);
        Assert.NotEqual(End.Timeout, result.End);
        Assert.InRange(clock.Elapsed, TimeSpan.FromSeconds(1.5), TimeSpan.FromSeconds(6));
        // A connection that sends nothing at all goes the same way.
        Assert.NotEqual(End.Timeout, (await ReadToEndAsync(silent.Socket, Wait)).End);
    }

    // ---- §4.3 bind rules ----

    [Fact]
    public async Task A_bind_to_itself_is_closed()
    {
        await using var relay = await ZephyrRelayProcess.StartAsync();
        using var a = await ZephyrPeer.ConnectAsync(relay.EndPoint);
        await a.BindAsync(a.Zid);
        await AssertClosedSoonAsync(a);
    }

    [Fact]
    public async Task A_bind_to_an_unknown_zid_is_closed()
    {
        await using var relay = await ZephyrRelayProcess.StartAsync();
        using var a = await ZephyrPeer.ConnectAsync(relay.EndPoint);
        using var b = await ZephyrPeer.ConnectAsync(relay.EndPoint);
        uint unknown = (a.Zid + 1) & 0x7fffffff;
        if (unknown == b.Zid) unknown = (unknown + 1) & 0x7fffffff;
        await a.BindAsync(unknown);
        await AssertClosedSoonAsync(a);
        // A zid above 2^31 - 1 is never assigned: unknown too.
        var request = ZephyrWire.BuildBindRequest(a.Zid);
        request[8] |= 0x80;
        await b.SendAsync(request);
        await AssertClosedSoonAsync(b);
    }

    [Fact]
    public async Task A_bind_to_a_peer_bound_to_someone_else_is_closed_and_the_pair_is_untouched()
    {
        await using var relay = await ZephyrRelayProcess.StartAsync();
        var (a, b) = await BindPairAsync(relay.EndPoint);
        using (a)
        using (b)
        {
            using var c = await ZephyrPeer.ConnectAsync(relay.EndPoint);
            await c.BindAsync(a.Zid);
            await AssertClosedSoonAsync(c);

            // A peer that is waiting for another one is taken as well.
            using var waiting = await ZephyrPeer.ConnectAsync(relay.EndPoint);
            using var awaited = await ZephyrPeer.ConnectAsync(relay.EndPoint);
            await waiting.BindAsync(awaited.Zid);
            using var d = await ZephyrPeer.ConnectAsync(relay.EndPoint);
            await d.BindAsync(waiting.Zid);
            await AssertClosedSoonAsync(d);

            await a.SendAsync([1, 2, 3]);
            Assert.Equal(new byte[] { 1, 2, 3 }, await b.ReadExactlyAsync(3));
            await b.SendAsync([4, 5]);
            Assert.Equal(new byte[] { 4, 5 }, await a.ReadExactlyAsync(2));
        }
    }

    [Fact]
    public async Task A_bind_the_peer_does_not_return_is_closed_after_the_peer_timeout()
    {
        await using var relay = await ZephyrRelayProcess.StartAsync("--peer-timeout", "2");
        using var a = await ZephyrPeer.ConnectAsync(relay.EndPoint);
        using var silent = await ZephyrPeer.ConnectAsync(relay.EndPoint);
        var clock = Stopwatch.StartNew();
        await a.BindAsync(silent.Zid);
        var result = await ReadToEndAsync(a.Socket, Wait);
        Assert.NotEqual(End.Timeout, result.End);
        Assert.Equal(0, result.Bytes);
        Assert.InRange(clock.Elapsed, TimeSpan.FromSeconds(1.5), TimeSpan.FromSeconds(6));
    }

    [Fact]
    public async Task A_bind_whose_peer_goes_away_is_closed_at_once()
    {
        await using var relay = await ZephyrRelayProcess.StartAsync();
        using var a = await ZephyrPeer.ConnectAsync(relay.EndPoint);
        var b = await ZephyrPeer.ConnectAsync(relay.EndPoint);
        await a.BindAsync(b.Zid);
        // The relay has read a's bind request (nothing of it left in the relay's receive queue): b goes away while a waits for it.
        await Eventually.TrueAsync(() => ProcessSockets.ReceiveQueue(relay.EndPoint, (IPEndPoint)a.Socket.LocalEndPoint!) == 0, "the relay to read the bind request", Wait);
        b.Dispose();
        await AssertClosedSoonAsync(a);
    }

    // ---- §4.4 early data ----

    [Fact]
    public async Task Nothing_is_forwarded_before_both_binds_and_bytes_sent_with_the_bind_request_are_delivered()
    {
        await using var relay = await ZephyrRelayProcess.StartAsync();
        using var a = await ZephyrPeer.ConnectAsync(relay.EndPoint);
        using var b = await ZephyrPeer.ConnectAsync(relay.EndPoint);
        var fromA = RandomNumberGenerator.GetBytes(100_000);
        var fromB = RandomNumberGenerator.GetBytes(3);
        // Bind request and data in one write each.
        await a.SendAsync([.. ZephyrWire.BuildBindRequest(b.Zid), .. fromA]);
        Assert.Equal(End.Timeout, (await ReadToEndAsync(b.Socket, TimeSpan.FromMilliseconds(500))).End);
        await b.SendAsync([.. ZephyrWire.BuildBindRequest(a.Zid), .. fromB]);
        Assert.Equal(fromA, await b.ReadExactlyAsync(fromA.Length));
        Assert.Equal(fromB, await a.ReadExactlyAsync(fromB.Length));
    }

    // ---- §4.5 close rules ----

    [Fact]
    public async Task A_close_is_passed_on_as_FIN_after_every_byte_of_the_tail()
    {
        await using var relay = await ZephyrRelayProcess.StartAsync();
        for (int round = 0; round < 20; round++)
        {
            var (a, b) = await BindPairAsync(relay.EndPoint);
            using (a)
            using (b)
            {
                var tail = RandomNumberGenerator.GetBytes(1 << 20);
                var reading = ReadToEndAsync(b.Socket, Wait, keep: true);
                await a.SendAsync(tail);
                a.Socket.Close(); // a full close right after the last write
                var result = await reading;
                Assert.Equal(End.Eof, result.End);
                Assert.Equal(tail.Length, result.Bytes);
                Assert.Equal(SHA256.HashData(tail), SHA256.HashData(result.Data!));
            }
        }
    }

    [Fact]
    public async Task A_half_close_is_passed_on_and_the_other_direction_keeps_flowing()
    {
        await using var relay = await ZephyrRelayProcess.StartAsync();
        var (a, b) = await BindPairAsync(relay.EndPoint);
        using (a)
        using (b)
        {
            await a.SendAsync([1, 2, 3]);
            a.Socket.Shutdown(SocketShutdown.Send);
            var atB = await ReadToEndAsync(b.Socket, Wait, keep: true);
            Assert.Equal(End.Eof, atB.End);
            Assert.Equal(new byte[] { 1, 2, 3 }, atB.Data);
            // The reply still reaches the half-closed side, then its FIN.
            var reply = RandomNumberGenerator.GetBytes(500_000);
            var reading = ReadToEndAsync(a.Socket, Wait, keep: true);
            await b.SendAsync(reply);
            b.Socket.Shutdown(SocketShutdown.Send);
            var atA = await reading;
            Assert.Equal(End.Eof, atA.End);
            Assert.Equal(reply, atA.Data);
        }
    }

    [Fact]
    public async Task A_reset_aborts_the_peer()
    {
        await using var relay = await ZephyrRelayProcess.StartAsync();
        var (a, b) = await BindPairAsync(relay.EndPoint);
        using (a)
        using (b)
        {
            await a.SendAsync([9]);
            Assert.Equal(new byte[] { 9 }, await b.ReadExactlyAsync(1));
            a.Socket.LingerState = new LingerOption(true, 0);
            a.Socket.Close();
            Assert.Equal(End.Reset, (await ReadToEndAsync(b.Socket, Wait)).End);
        }
    }

    [Fact]
    public async Task A_thousand_bulk_transfers_each_ended_by_a_half_close_arrive_whole()
    {
        const int Transfers = 1000, Parallel = 32, Size = 256 * 1024;
        await using var relay = await ZephyrRelayProcess.StartAsync();
        int next = -1, done = 0;
        var failures = new System.Collections.Concurrent.ConcurrentQueue<string>();
        var clock = Stopwatch.StartNew();
        var workers = Enumerable.Range(0, Parallel).Select(_ => Task.Run(async () =>
        {
            int i;
            while ((i = Interlocked.Increment(ref next)) < Transfers)
            {
                try
                {
                    var (a, b) = await BindPairAsync(relay.EndPoint);
                    using (a)
                    using (b)
                    {
                        var (sender, receiver) = i % 2 == 0 ? (a, b) : (b, a);
                        var data = new byte[Size];
                        Random.Shared.NextBytes(data);
                        var received = ReadToEndAsync(receiver.Socket, TimeSpan.FromSeconds(60), hash: true);
                        await sender.SendAsync(data);
                        sender.Socket.Shutdown(SocketShutdown.Send);
                        var result = await received;
                        if (result.End != End.Eof || result.Bytes != Size || !result.Hash!.AsSpan().SequenceEqual(SHA256.HashData(data)))
                            failures.Enqueue($"transfer {i}: {result.End}, {result.Bytes} of {Size} bytes");
                        receiver.Socket.Shutdown(SocketShutdown.Send);
                        var back = await ReadToEndAsync(sender.Socket, TimeSpan.FromSeconds(60));
                        if (back.End != End.Eof || back.Bytes != 0) failures.Enqueue($"transfer {i}: sender saw {back.End} after {back.Bytes} bytes");
                    }
                    Interlocked.Increment(ref done);
                }
                catch (Exception e) when (e is SocketException or IOException or TimeoutException)
                {
                    failures.Enqueue($"transfer {i}: {e.GetType().Name} {e.Message}");
                }
            }
        })).ToArray();
        await Task.WhenAll(workers).WaitAsync(TimeSpan.FromMinutes(4));
        Assert.True(failures.IsEmpty, $"{failures.Count} failed, e.g.:\n{string.Join('\n', failures.Take(10))}\nrelay stderr:\n{relay.Process.Stderr}");
        Assert.Equal(Transfers, done);
        Console.WriteLine($"{Transfers} x {Size / 1024} KiB through the relay in {clock.Elapsed.TotalSeconds:F1} s");
    }

    /// <summary>
    /// spec/zephyr.md §4.4 (how the relay waits): a pair whose bytes come in bursts makes the relay wait for readability
    /// after each burst. The wake-up continues on the socket event thread that saw it (socket completions inline),
    /// not on a thread-pool worker it would have to wake first: the event threads do the splicing.
    /// </summary>
    [Fact]
    public async Task Bursts_are_spliced_on_the_socket_event_threads_not_handed_to_thread_pool_workers()
    {
        if (!OperatingSystem.IsLinux()) return; // splice(2) and /proc: Linux only
        const int Bursts = 16000, Burst = 64 * 1024;
        await using var relay = await ZephyrRelayProcess.StartAsync();
        var (a, b) = await BindPairAsync(relay.EndPoint);
        using (a)
        using (b)
        {
            var data = new byte[Burst];
            Random.Shared.NextBytes(data);
            var before = CpuTicksByThreadName(relay.Process.Pid);
            // One burst at a time: the relay has drained each before the next is sent, so it waits between bursts.
            for (int i = 0; i < Bursts; i++)
            {
                await a.SendAsync(data);
                Assert.True((await b.ReadExactlyAsync(Burst)).AsSpan().SequenceEqual(data));
            }
            var after = CpuTicksByThreadName(relay.Process.Pid);
            long Used(string name) => after.GetValueOrDefault(name) - before.GetValueOrDefault(name);
            long events = Used(".NET Sockets"), workers = Used(".NET TP Worker");
            Assert.True(events > workers, $"{Bursts} bursts: socket event threads used {events} ticks, thread-pool workers {workers}");
        }
    }

    /// <summary>CPU ticks (user + system) of a process's threads, summed by thread name (/proc/PID/task/TID/stat).</summary>
    private static Dictionary<string, long> CpuTicksByThreadName(int pid)
    {
        var ticks = new Dictionary<string, long>(StringComparer.Ordinal);
        foreach (var task in Directory.EnumerateDirectories($"/proc/{pid}/task"))
        {
            string stat;
            try { stat = File.ReadAllText(Path.Combine(task, "stat")); }
            catch (IOException) { continue; } // the thread ended meanwhile
            int open = stat.IndexOf('('), close = stat.LastIndexOf(')');
            string name = stat[(open + 1)..close];
            var fields = stat[(close + 2)..].Split(' ');
            // Fields 14 and 15 of stat(5) (utime, stime): 12 and 13 after the name.
            ticks[name] = ticks.GetValueOrDefault(name) + long.Parse(fields[11], System.Globalization.CultureInfo.InvariantCulture) + long.Parse(fields[12], System.Globalization.CultureInfo.InvariantCulture);
        }
        return ticks;
    }

    // ---- §4.6 limits ----

    [Fact]
    public async Task Connections_over_the_per_source_limit_are_closed_at_once_with_a_log_line()
    {
        await using var relay = await ZephyrRelayProcess.StartAsync("--max-per-source", "5");
        var held = new List<ZephyrPeer>();
        try
        {
            for (int i = 0; i < 5; i++) held.Add(await ZephyrPeer.ConnectAsync(relay.EndPoint));
            using (var over = await ZephyrPeer.ConnectRawAsync(relay.EndPoint))
            {
                var result = await ReadToEndAsync(over, Wait);
                Assert.NotEqual(End.Timeout, result.End);
                Assert.Equal(0, result.Bytes); // no assignment
            }
            await relay.Process.WaitForStderrAsync("connection limit hit (max-per-source 5)", within: Wait);

            // Room again once one of them is gone (the relay notices the close on its own time).
            held[0].Dispose();
            held.RemoveAt(0);
            await Eventually.TrueAsync(async () =>
            {
                using var again = await ZephyrPeer.ConnectRawAsync(relay.EndPoint);
                // Accepted: the 12-byte assignment, and the connection still open 300 ms later (a refused one is closed at once).
                var first = await ReadToEndAsync(again, TimeSpan.FromMilliseconds(300));
                return first.End == End.Timeout && first.Bytes == 12;
            }, "a connection accepted after one was closed", Wait);
        }
        finally { foreach (var p in held) p.Dispose(); }
    }

    [Fact]
    public async Task Connections_over_the_total_limit_are_closed_at_once()
    {
        await using var relay = await ZephyrRelayProcess.StartAsync("--max-connections", "3");
        using var a = await ZephyrPeer.ConnectAsync(relay.EndPoint);
        using var b = await ZephyrPeer.ConnectAsync(relay.EndPoint);
        using var c = await ZephyrPeer.ConnectAsync(relay.EndPoint);
        using var over = await ZephyrPeer.ConnectRawAsync(relay.EndPoint);
        var result = await ReadToEndAsync(over, Wait);
        Assert.NotEqual(End.Timeout, result.End);
        Assert.Equal(0, result.Bytes);
        await relay.Process.WaitForStderrAsync("connection limit hit (max-connections 3)", within: Wait);
    }

    // ---- helpers ----

    private static async Task<(ZephyrPeer, ZephyrPeer)> BindPairAsync(IPEndPoint relay)
    {
        var a = await ZephyrPeer.ConnectAsync(relay);
        var b = await ZephyrPeer.ConnectAsync(relay);
        await a.BindAsync(b.Zid);
        await b.BindAsync(a.Zid);
        return (a, b);
    }

    private static async Task AssertClosedSoonAsync(ZephyrPeer peer)
    {
        // Well before the 15 s bind timeout: the refusal is immediate.
        var clock = Stopwatch.StartNew();
        var result = await ReadToEndAsync(peer.Socket, TimeSpan.FromSeconds(5));
        Assert.NotEqual(End.Timeout, result.End);
        Assert.Equal(0, result.Bytes);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(3), $"closed after {clock.Elapsed}");
    }

    internal enum End { Eof, Reset, Timeout }

    internal sealed record ReadResult(End End, long Bytes, byte[]? Data, byte[]? Hash);

    /// <summary>Reads until EOF, a reset or the timeout; counts (and optionally keeps or hashes) the bytes.</summary>
    internal static async Task<ReadResult> ReadToEndAsync(Socket socket, TimeSpan timeout, bool keep = false, bool hash = false)
    {
        var buffer = new byte[64 * 1024];
        using var kept = keep ? new MemoryStream() : null;
        using var sha = hash ? IncrementalHash.CreateHash(HashAlgorithmName.SHA256) : null;
        using var cts = new CancellationTokenSource(timeout);
        long total = 0;
        End end;
        try
        {
            while (true)
            {
                int n = await socket.ReceiveAsync(buffer, SocketFlags.None, cts.Token);
                if (n == 0) { end = End.Eof; break; }
                total += n;
                kept?.Write(buffer, 0, n);
                sha?.AppendData(buffer, 0, n);
            }
        }
        catch (OperationCanceledException) { end = End.Timeout; }
        catch (SocketException e) when (e.SocketErrorCode is SocketError.ConnectionReset or SocketError.ConnectionAborted) { end = End.Reset; }
        return new ReadResult(end, total, kept?.ToArray(), sha?.GetHashAndReset());
    }
}
