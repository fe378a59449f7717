using System.Collections.Concurrent;
using System.Net.Sockets;
using PtHost.Reliability.Support;
using Xunit.Abstractions;

namespace PtHost.Reliability.Attacks;

/// <summary>
/// Issue 24, "sessions reset beyond 3,300": 9,000 sessions through client → plain → server → echo (and through
/// client → <c>pthost relay zephyr</c> → server → echo), all open at once, then each carrying data both ways while
/// all stay open, with every pthost process held at RLIMIT_NOFILE 20,000 (soft and hard, the issue's machine):
/// 18,000 sockets per process leave room for only a few hundred splice pipes. Every byte is checked and no session
/// may be reset (spec/ipc.md §7: a session that cannot get a pipe relays through pooled buffers; STATUS counts it in
/// SPLICE-FALLBACKS).
/// </summary>
public class HostDescriptorAttackTests(ITestOutputHelper output)
{
    public const int Sessions = 9000;
    public const ulong ChildFdLimit = 20000;

    [Fact]
    public async Task Nine_thousand_sessions_carry_data_at_a_20000_descriptor_limit_with_none_reset()
    {
        // The test holds 9,000 SOCKS sockets and the echo server's 9,000: it needs the same budget itself.
        ulong own = ProcStats.RaiseFdLimit();
        Assert.True(own >= 2 * Sessions + 1000, $"this process's RLIMIT_NOFILE is {own}; {2 * Sessions + 1000} needed (the hard limit cannot be raised here)");
        await using var echo = new EchoServer(recordLimit: 0);
        await using var chain = await PtChain.StartAsync(PtChain.FreeServer(), ep => PtChain.ClientWith(new Newtonsoft.Json.Linq.JObject { ["serverAddress"] = ep.ToString() }), fdLimit: ChildFdLimit);
        await NineThousandSessionsAsync(chain, echo, "plain", null, TimeSpan.FromSeconds(300));
    }

    /// <summary>
    /// The same through the Zephyr relay (spec/zephyr.md): the relay holds two sockets per session (18,000) and splices
    /// each pair with the same pooled pipes, at RLIMIT_NOFILE 20,000 too.
    /// </summary>
    [Fact]
    public async Task Nine_thousand_sessions_carry_data_through_the_zephyr_relay_at_a_20000_descriptor_limit_with_none_reset()
    {
        ulong own = ProcStats.RaiseFdLimit();
        Assert.True(own >= 2 * Sessions + 1000, $"this process's RLIMIT_NOFILE is {own}; {2 * Sessions + 1000} needed (the hard limit cannot be raised here)");
        await using var echo = new EchoServer(recordLimit: 0);
        await using var relay = await ZephyrRelayProcess.StartAsync(ChildFdLimit, ["--loglevel", "warning", "--max-per-source", "20000", "--max-connections", "20000"]);
        await using var chain = await ZephyrChain.StartAsync(relay.EndPoint.ToString(), fdLimit: ChildFdLimit);
        await NineThousandSessionsAsync(chain, echo, "zephyr", relay.Process, TimeSpan.FromSeconds(300));
    }

    private async Task NineThousandSessionsAsync(PtChain chain, EchoServer echo, string transport, PtProcess? relay, TimeSpan limit)
    {
        foreach (var p in relay is null ? new[] { chain.Client, chain.Server } : [chain.Client, chain.Server, relay])
        {
            var (soft, hard) = ProcStats.FdLimits(p.Pid);
            output.WriteLine($"pid {p.Pid}: RLIMIT_NOFILE soft {soft}, hard {hard}");
            Assert.Equal(ChildFdLimit, hard);
        }

        using var cts = new CancellationTokenSource(limit);
        var errors = new ConcurrentQueue<string>();
        int resets = 0, refused = 0;
        var started = DateTime.UtcNow;

        // Open every session (64 handshakes in flight) and keep them all open.
        using var gate = new SemaphoreSlim(64);
        var clients = await Task.WhenAll(Enumerable.Range(0, Sessions).Select(async i =>
        {
            await gate.WaitAsync(cts.Token);
            try
            {
                var (reply, c) = await Support.Sessions.ConnectAsync(chain.SocksEndPoint, echo.Port, TimeSpan.FromSeconds(60));
                if (reply == 0) return c;
                Interlocked.Increment(ref refused);
                errors.Enqueue($"session {i}: reply {reply:x2}");
                await c.DisposeAsync();
                return null;
            }
            catch (Exception e)
            {
                errors.Enqueue($"session {i} open: {e.GetType().Name}: {e.Message}");
                return null;
            }
            finally { gate.Release(); }
        }));
        int opened = clients.Count(c => c is not null);
        string Fds() => $"client {ProcStats.FdCount(chain.Client.Pid)}, server {ProcStats.FdCount(chain.Server.Pid)}" + (relay is null ? "" : $", relay {ProcStats.FdCount(relay.Pid)}");
        output.WriteLine($"{transport}: {opened} of {Sessions} opened in {(DateTime.UtcNow - started).TotalSeconds:0.0} s; fds now: {Fds()}");

        // Then every session sends 1–4 KiB of its own at once and reads its echo back, staying open: every session
        // has carried data in both directions while all 9,000 are held (a splice relay keeps a pipe per direction).
        var rng = new Random(24);
        var payloads = Enumerable.Range(0, Sessions).Select(_ => { var b = new byte[1024 + rng.Next(3 * 1024 + 1)]; rng.NextBytes(b); return b; }).ToArray();
        int verified = 0;
        long bytes = 0;
        var moved = DateTime.UtcNow;
        bool[] echoed = new bool[Sessions];
        await Task.WhenAll(clients.Select(async (c, i) =>
        {
            if (c is null) return;
            try
            {
                await c.Stream.WriteAsync(payloads[i], cts.Token);
                var back = new byte[payloads[i].Length];
                await c.Stream.ReadExactlyAsync(back, cts.Token);
                if (back.AsSpan().SequenceEqual(payloads[i])) echoed[i] = true;
                else errors.Enqueue($"session {i}: echo differs from the {payloads[i].Length} bytes sent");
            }
            catch (Exception e) { Fail(i, "transfer", e); }
        }));
        output.WriteLine($"{echoed.Count(e => e)} echoed while all are held, in {(DateTime.UtcNow - moved).TotalSeconds:0.0} s; fds now: {Fds()}");

        // Finally each half-closes and reads to the end: nothing more arrives, and the session ends cleanly.
        await Task.WhenAll(clients.Select(async (c, i) =>
        {
            if (c is null) return;
            await using (c)
            {
                try
                {
                    c.Socket.Shutdown(SocketShutdown.Send);
                    var rest = await Support.Sessions.ReadAllAsync(c.Socket, cts.Token);
                    if (rest.Length != 0) errors.Enqueue($"session {i}: {rest.Length} bytes after the echo");
                    else if (echoed[i])
                    {
                        Interlocked.Increment(ref verified);
                        Interlocked.Add(ref bytes, payloads[i].Length);
                    }
                }
                catch (Exception e) { Fail(i, "close", e); }
            }
        }));

        void Fail(int i, string phase, Exception e)
        {
            if (e is SocketException { SocketErrorCode: SocketError.ConnectionReset } or IOException { InnerException: SocketException { SocketErrorCode: SocketError.ConnectionReset } })
                Interlocked.Increment(ref resets);
            errors.Enqueue($"session {i} {phase}: {e.GetType().Name}: {e.Message}");
        }
        output.WriteLine($"{verified} of {opened} echoed intact and closed cleanly ({bytes} bytes each way); {resets} reset, {refused} refused, {errors.Count} errors");
        foreach (var e in errors.Take(5)) output.WriteLine("  " + e);

        // STATUS: how many sessions relayed through pooled buffers for want of a pipe (spec/ipc.md §4.7).
        var clientStatus = await chain.Client.QueryStatusAsync(transport);
        var serverStatus = await chain.Server.QueryStatusAsync(transport);
        output.WriteLine($"STATUS client: {string.Join(' ', clientStatus.Select(kv => $"{kv.Key}={kv.Value}"))}");
        output.WriteLine($"STATUS server: {string.Join(' ', serverStatus.Select(kv => $"{kv.Key}={kv.Value}"))}");
        foreach (var p in relay is null ? new[] { chain.Client, chain.Server } : [chain.Client, chain.Server, relay])
            if (p.Stderr.Contains("Too many open files", StringComparison.Ordinal)) output.WriteLine($"pid {p.Pid} stderr mentions EMFILE");

        Assert.True(errors.IsEmpty, $"{errors.Count} sessions failed ({resets} reset), e.g.:\n{string.Join("\n", errors.Take(5))}");
        Assert.Equal(Sessions, opened);
        Assert.Equal(Sessions, verified);
        // A pipe is lent per burst, so these short bursts found one (the count is reported either way).
        Assert.True(clientStatus.ContainsKey("SPLICE-FALLBACKS") && serverStatus.ContainsKey("SPLICE-FALLBACKS"));

        var (s, c2) = await chain.StopAsync();
        Assert.Equal(0, s);
        Assert.Equal(0, c2);
    }

    /// <summary>
    /// The pipe cap (spec/ipc.md §7): with RLIMIT_NOFILE 512 each process lends at most 16 pipes. 40 sessions push
    /// 8 MiB each towards far ends that read nothing yet, so the bursts that fill the path hold their pipes; the
    /// sessions beyond the cap relay through pooled buffers, are counted in SPLICE-FALLBACKS, and lose no byte once
    /// the far ends read.
    /// </summary>
    [Fact]
    public async Task Sessions_beyond_the_pipe_cap_relay_through_buffers_and_lose_nothing()
    {
        const int n = 40, size = 8 << 20;
        var reading = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var hashes = new ConcurrentDictionary<int, string>();
        await using var sink = new ScriptServer(async (socket, ct) =>
        {
            await reading.Task.WaitAsync(ct);
            using var hash = System.Security.Cryptography.IncrementalHash.CreateHash(System.Security.Cryptography.HashAlgorithmName.SHA256);
            var buffer = new byte[64 * 1024];
            int got, total = 0, id = -1;
            while ((got = await socket.ReceiveAsync(buffer, SocketFlags.None, ct)) > 0)
            {
                if (id < 0) id = buffer[0]; // each session's stream starts with its number
                hash.AppendData(buffer, 0, got);
                total += got;
            }
            hashes[id] = $"{total}:{Convert.ToHexString(hash.GetHashAndReset())}";
        });
        await using var chain = await PtChain.StartAsync(PtChain.FreeServer(), ep => PtChain.ClientWith(new Newtonsoft.Json.Linq.JObject { ["serverAddress"] = ep.ToString() }), fdLimit: 512);

        var expected = new string[n];
        var sessions = new List<(SocksClient Client, Task Write)>();
        for (int i = 0; i < n; i++)
        {
            var (reply, c) = await Support.Sessions.ConnectAsync(chain.SocksEndPoint, sink.Port);
            Assert.Equal(0, reply);
            var data = new byte[size];
            new Random(i).NextBytes(data);
            data[0] = (byte)i;
            expected[i] = $"{size}:{Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(data))}";
            sessions.Add((c, c.Stream.WriteAsync(data).AsTask()));
        }
        // The path fills: writes stop completing. Then the far ends read.
        await Eventually.TrueAsync(async () => (await chain.Server.QueryStatusAsync("plain"))["SPLICE-FALLBACKS"] > 0, "a server session relaying through buffers", TimeSpan.FromSeconds(60));
        var fellBack = (await chain.Server.QueryStatusAsync("plain"))["SPLICE-FALLBACKS"];
        reading.SetResult();
        foreach (var (c, write) in sessions)
        {
            await write.WaitAsync(TimeSpan.FromSeconds(60));
            c.Socket.Shutdown(SocketShutdown.Send);
        }
        await Eventually.TrueAsync(() => hashes.Count == n, $"{n} far ends read to the end", TimeSpan.FromSeconds(60));
        foreach (var (c, _) in sessions) await c.DisposeAsync();
        var client = await chain.Client.QueryStatusAsync("plain");
        var server = await chain.Server.QueryStatusAsync("plain");
        output.WriteLine($"SPLICE-FALLBACKS: client {client["SPLICE-FALLBACKS"]}, server {server["SPLICE-FALLBACKS"]} ({fellBack} while the far ends were not reading) of {n} sessions");
        for (int i = 0; i < n; i++) Assert.Equal(expected[i], hashes[i]);
        Assert.InRange(server["SPLICE-FALLBACKS"], 1, n);
        Assert.Equal(0, server["FAILED"]);
        Assert.Equal(0, client["FAILED"]);
        var (s, c2) = await chain.StopAsync();
        Assert.Equal(0, s);
        Assert.Equal(0, c2);
    }

    /// <summary>Every pthost process — client, server, each relay — raises its soft RLIMIT_NOFILE to the hard limit at start-up.</summary>
    [Fact]
    public async Task Every_process_raises_its_soft_descriptor_limit_to_the_hard_limit()
    {
        string prlimit = DebianPrograms.Require("/usr/bin/prlimit");
        var commands = new (string Name, string[] Args, string Ready)[]
        {
            ("client", ["{\"role\":\"client\",\"transports\":[\"plain\"]}"], "CMETHODS DONE"),
            ("server", ["{\"role\":\"server\",\"transports\":[\"plain\"],\"allow\":[\"127.0.0.1\"]}"], "SMETHODS DONE"),
            ("relay zephyr", ["relay", "zephyr", "--listen", "127.0.0.1:0"], "LISTEN "),
            ("relay jet", ["relay", "jet", "--listen", "127.0.0.1:0"], "LISTEN "),
        };
        foreach (var (name, args, ready) in commands)
        {
            await using var p = PtProcess.Start(prlimit, ["--nofile=1024:4096", "--", PtHostExecutable.Path, .. args], null);
            await p.WaitForLineAsync(ready);
            var (soft, hard) = ProcStats.FdLimits(p.Pid);
            output.WriteLine($"{name}: started with 1024/4096, runs with soft {soft}, hard {hard}");
            Assert.Equal(4096UL, hard);
            Assert.Equal(4096UL, soft);
        }
    }
}
