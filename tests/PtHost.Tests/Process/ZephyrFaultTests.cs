using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using Newtonsoft.Json.Linq;
using Xunit.Abstractions;

namespace PtHost.Tests.Process;

/// <summary>
/// Zephyr under faults (issue 8): a relay killed or dropping connections mid-transfer, uploads,
/// the relay's STATUS lines (spec/zephyr.md §4.7), and the server's relay list (§7.1).
/// </summary>
[Collection("process")]
public class ZephyrFaultTests(ITestOutputHelper output)
{
    private static readonly TimeSpan ErrorWithin = TimeSpan.FromSeconds(30);

    [Fact]
    public async Task A_relay_killed_mid_transfer_ends_the_session_with_an_error_and_the_hosts_keep_serving_without_leaking_descriptors()
    {
        await using var echo = new EchoServer();
        var doomed = await ZephyrRelayProcess.StartAsync();
        await using var spare = await ZephyrRelayProcess.StartAsync();
        try
        {
            // Sessions try the doomed relay first and fall back to the spare once it is gone.
            await using var chain = await ZephyrChain.StartAsync(new JArray(doomed.EndPoint.ToString(), spare.EndPoint.ToString()));
            await EchoOnceAsync(chain, echo, "warm-up");
            var before = await SettledDescriptorsAsync(chain, null);

            var transfer = await StartEndlessTransferAsync(chain, echo);
            await transfer.WaitForEchoedAsync(4 << 20);
            doomed.Process.Signal(9); // SIGKILL: the kernel closes the relay's sockets
            var outcome = await transfer.WaitForEndAsync(ErrorWithin);
            output.WriteLine($"after SIGKILL: {outcome}; echoed {transfer.Echoed} bytes");
            Assert.NotEqual(TransferEnd.StillRunning, outcome);

            await EchoOnceAsync(chain, echo, "after the relay died");
            await EchoOnceAsync(chain, echo, "and again");
            var after = await SettledDescriptorsAsync(chain, before);
            Assert.True(after.Client <= before.Client && after.Server <= before.Server,
                $"descriptors before {before}, after {after}; client: {Kinds(chain.Client.Pid)}; server: {Kinds(chain.Server.Pid)}");
        }
        finally { await doomed.DisposeAsync(); }
    }

    [Fact]
    public async Task A_relay_resetting_the_pair_mid_transfer_ends_the_session_with_an_error_and_the_hosts_keep_serving_without_leaking_descriptors()
    {
        await using var echo = new EchoServer();
        await using var relay = await ZephyrRelayProcess.StartAsync();
        await using var dropper = new DroppingForwarder(relay.EndPoint);
        await using var chain = await ZephyrChain.StartAsync(dropper.EndPoint.ToString());
        await EchoOnceAsync(chain, echo, "warm-up");
        var before = await SettledDescriptorsAsync(chain, null);

        var transfer = await StartEndlessTransferAsync(chain, echo);
        await transfer.WaitForEchoedAsync(4 << 20);
        int dropped = dropper.ResetAll();
        Assert.True(dropped >= 2, $"only {dropped} connections were open through the forwarder");
        var outcome = await transfer.WaitForEndAsync(ErrorWithin);
        output.WriteLine($"after the reset: {outcome}; echoed {transfer.Echoed} bytes");
        Assert.NotEqual(TransferEnd.StillRunning, outcome);

        await EchoOnceAsync(chain, echo, "after the drop");
        var after = await SettledDescriptorsAsync(chain, before);
        Assert.True(after.Client <= before.Client && after.Server <= before.Server,
            $"descriptors before {before}, after {after}; client: {Kinds(chain.Client.Pid)}; server: {Kinds(chain.Server.Pid)}");
    }

    [Fact]
    public async Task A_relay_closing_the_pair_mid_transfer_with_a_FIN_ends_the_session_and_the_hosts_keep_serving()
    {
        await using var echo = new EchoServer();
        await using var relay = await ZephyrRelayProcess.StartAsync();
        await using var dropper = new DroppingForwarder(relay.EndPoint);
        await using var chain = await ZephyrChain.StartAsync(dropper.EndPoint.ToString());
        var transfer = await StartEndlessTransferAsync(chain, echo);
        await transfer.WaitForEchoedAsync(2 << 20);
        Assert.True(dropper.CloseAll() >= 2);
        // TLS sees the stream end without close_notify: an error for the session, not a clean end.
        var outcome = await transfer.WaitForEndAsync(ErrorWithin);
        output.WriteLine($"after the FIN: {outcome}; echoed {transfer.Echoed} bytes");
        Assert.NotEqual(TransferEnd.StillRunning, outcome);
        await EchoOnceAsync(chain, echo, "after the close");
    }

    [Fact]
    public async Task Curl_uploads_100_MB_through_zephyr_with_the_SHA256_intact()
    {
        var body = RandomNumberGenerator.GetBytes(100 * 1024 * 1024);
        string file = Path.Combine(Path.GetTempPath(), $"pthost-zephyr-up-{Guid.NewGuid():N}");
        await File.WriteAllBytesAsync(file, body);
        try
        {
            await using var sink = new HashingUploadServer();
            await using var relay = await ZephyrRelayProcess.StartAsync();
            await using var chain = await ZephyrChain.StartAsync(relay.EndPoint.ToString());
            var watch = Stopwatch.StartNew();
            var (exit, stdout, err) = await PtProcess.RunAsync("/usr/bin/curl", "-sS", "--max-time", "90", "-H", "Expect:", "--socks5-hostname", chain.SocksEndPoint.ToString(),
                "-T", file, $"http://localhost:{sink.Port}/upload.bin");
            output.WriteLine($"100 MB up through zephyr in {watch.Elapsed.TotalSeconds:0.00} s");
            Assert.True(exit == 0, $"curl exit {exit}: {err}\nclient stderr:\n{chain.Client.Stderr}\nserver stderr:\n{chain.Server.Stderr}");
            Assert.Equal($"{body.Length} {Convert.ToHexStringLower(SHA256.HashData(body))}", stdout.Trim());
        }
        finally { File.Delete(file); }
    }

    [Fact]
    public async Task The_relay_prints_STATUS_lines_with_its_counters_periodically_and_at_shutdown()
    {
        await using var relay = await ZephyrRelayProcess.StartAsync("--stats-interval", "0.3");
        using (var a = await ZephyrPeer.ConnectAsync(relay.EndPoint))
        using (var b = await ZephyrPeer.ConnectAsync(relay.EndPoint))
        {
            await a.BindAsync(b.Zid);
            await b.BindAsync(a.Zid);
            await a.SendAsync(new byte[1000]);
            await b.SendAsync(new byte[500]);
            Assert.Equal(500, (await ReadAtLeastAsync(a.Socket, 500)).Length);
            Assert.Equal(1000, (await ReadAtLeastAsync(b.Socket, 1000)).Length);
            var live = await WaitForStatusAsync(relay, s => s["BINDINGS"] == 1 && s["BYTES"] == 1500);
            Assert.Equal(2, live["CONNECTIONS"]);
            Assert.Equal(1, live["BOUND-PAIRS"]);
            Assert.Equal(2, live["ACCEPTED"]);
        }
        using (var lone = await ZephyrPeer.ConnectAsync(relay.EndPoint))
        {
            await lone.BindAsync(lone.Zid); // self-bind: refused and closed (§4.3)
            await WaitForStatusAsync(relay, s => s["BIND-FAILURES"] == 1);
        }
        int seen = relay.Process.StdoutLines.Count(l => l.StartsWith("STATUS ", StringComparison.Ordinal));
        relay.Process.Signal(15);
        Assert.Equal(0, await relay.Process.WaitForExitAsync());
        var lines = relay.Process.StdoutLines;
        Assert.StartsWith("LISTEN zephyr ", lines[0], StringComparison.Ordinal);
        Assert.All(lines.Skip(1), l => Assert.StartsWith("STATUS TRANSPORT=zephyr CONNECTIONS=", l, StringComparison.Ordinal));
        Assert.True(lines.Count > seen, "no STATUS line at shutdown");
        var last = ParseStatus(lines[^1]);
        Assert.Equal(0, last["CONNECTIONS"]);
        Assert.Equal(0, last["BOUND-PAIRS"]);
        Assert.Equal(3, last["ACCEPTED"]);
        Assert.Equal(1, last["BINDINGS"]);
        Assert.Equal(1500, last["BYTES"]);
        Assert.Equal(
            ["TRANSPORT", "CONNECTIONS", "BOUND-PAIRS", "ACCEPTED", "REFUSED-BY-LIMITS", "BINDINGS", "BIND-FAILURES", "TIMEOUTS", "BYTES", "IDLE-CLOSED", "LIFETIME-CLOSED"],
            lines[^1].Split(' ').Skip(1).Select(kv => kv.Split('=')[0]));
    }

    [Fact]
    public async Task A_bad_stats_interval_is_a_usage_error()
    {
        await using var p = PtProcess.StartPthost("relay", "zephyr", "--listen", "127.0.0.1:0", "--stats-interval", "0");
        Assert.Equal(64, await p.WaitForExitAsync());
        Assert.Contains("--stats-interval", p.Stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_server_with_neither_relays_nor_anyRelay_fails_with_SMETHOD_ERROR()
    {
        var generated = await ZephyrChain.GenerateAsync();
        var config = PtChain.FreeServer("zephyr");
        config["options"] = new JObject { ["zephyr"] = generated["server"] };
        await using var server = PtProcess.StartPthost(config.ToString(Newtonsoft.Json.Formatting.None));
        var lines = await server.ReadUntilDoneAsync();
        var error = Assert.Single(lines, l => l.StartsWith("SMETHOD-ERROR zephyr ", StringComparison.Ordinal));
        Assert.Contains("anyRelay", error, StringComparison.Ordinal);
        Assert.DoesNotContain(lines, l => l.StartsWith("SMETHOD zephyr ", StringComparison.Ordinal));
    }

    [Fact]
    public async Task A_server_with_anyRelay_true_joins_a_relay_it_was_not_told_about()
    {
        await using var echo = new EchoServer();
        await using var relay = await ZephyrRelayProcess.StartAsync();
        await using var chain = await ZephyrChain.StartAsync(relay.EndPoint.ToString(), editServer: s =>
        {
            s.Remove("relay");
            s["anyRelay"] = true;
        });
        await EchoOnceAsync(chain, echo, "any relay");
    }

    // ------------------------------------------------------------------ helpers

    private static async Task EchoOnceAsync(PtChain chain, EchoServer echo, string text)
    {
        byte[] payload = Encoding.ASCII.GetBytes(text);
        await using var socks = await SocksClient.ConnectAsync(chain.SocksEndPoint);
        await socks.SendAsync([.. SocksClient.Greeting(0x00), .. SocksClient.ConnectIPv4(IPAddress.Loopback, echo.Port), .. payload]);
        await socks.ReadExactlyAsync(2);
        Assert.Equal(0x00, await socks.ReadReplyAsync());
        Assert.Equal(payload, await socks.ReadExactlyAsync(payload.Length, TimeSpan.FromSeconds(30)));
        socks.Socket.Shutdown(SocketShutdown.Send);
        Assert.Empty(await socks.ReadToEndAsync(TimeSpan.FromSeconds(30)));
    }

    private readonly record struct Descriptors(int Client, int Server)
    {
        public override string ToString() => $"client {Client}, server {Server}";
    }

    private static string Kinds(int pid) => ProcStats.FdSummary(pid);

    /// <summary>
    /// The sockets and pipes of both processes (what a session holds and could leak) once they are at rest
    /// (sessions are torn down asynchronously); with <paramref name="target"/>, once both are at or below it.
    /// Bounded: returns the last counts.
    /// </summary>
    private static async Task<Descriptors> SettledDescriptorsAsync(PtChain chain, Descriptors? target)
    {
        if (target is not { } t)
        {
            var n = await ProcStats.SocketsAtRestAsync(chain.Client.Pid, chain.Server.Pid);
            return new(n[0], n[1]);
        }
        return new(await ProcStats.WaitForSocketsAtMostAsync(chain.Client.Pid, t.Client, TimeSpan.FromSeconds(20)),
            await ProcStats.WaitForSocketsAtMostAsync(chain.Server.Pid, t.Server, TimeSpan.FromSeconds(20)));
    }

    private enum TransferEnd { StillRunning, Reset, EndOfStream, Failed }

    /// <summary>A SOCKS session to the echo server that writes without end and counts what comes back.</summary>
    private sealed class EndlessTransfer
    {
        private long _echoed;
        public required SocksClient Socks { get; init; }
        public Task<TransferEnd> Reader { get; set; } = null!;
        public Task Writer { get; set; } = null!;
        public long Echoed => Interlocked.Read(ref _echoed);
        public void Add(long n) => Interlocked.Add(ref _echoed, n);

        public async Task WaitForEchoedAsync(long bytes)
        {
            if (!await Eventually.HoldsWithinAsync(() => Echoed >= bytes || Reader.IsCompleted, TimeSpan.FromSeconds(60)))
                throw new TimeoutException($"only {Echoed} of {bytes} bytes echoed in 60 s");
            if (Echoed < bytes) throw new InvalidOperationException($"the transfer ended early ({await Reader}) after {Echoed} bytes");
        }

        /// <summary>How the transfer ended, or <see cref="TransferEnd.StillRunning"/> if it had not within <paramref name="within"/> (the limit under test).</summary>
        public async Task<TransferEnd> WaitForEndAsync(TimeSpan within)
        {
            var end = await Eventually.CompletesWithinAsync(Reader, within) ? await Reader : TransferEnd.StillRunning;
            await Socks.DisposeAsync();
            try { await Writer.WaitAsync(TimeSpan.FromSeconds(10)); }
            catch (Exception) { /* the writer fails once the session is gone: expected */ }
            return end;
        }
    }

    private static async Task<EndlessTransfer> StartEndlessTransferAsync(PtChain chain, EchoServer echo)
    {
        var socks = await SocksClient.ConnectAsync(chain.SocksEndPoint);
        await socks.SendAsync([.. SocksClient.Greeting(0x00), .. SocksClient.ConnectIPv4(IPAddress.Loopback, echo.Port)]);
        await socks.ReadExactlyAsync(2);
        Assert.Equal(0x00, await socks.ReadReplyAsync());
        var transfer = new EndlessTransfer { Socks = socks };
        transfer.Writer = Task.Run(async () =>
        {
            var block = RandomNumberGenerator.GetBytes(64 * 1024);
            while (true) await socks.Stream.WriteAsync(block);
        });
        transfer.Reader = Task.Run(async () =>
        {
            var buffer = new byte[64 * 1024];
            try
            {
                while (true)
                {
                    int n = await socks.Socket.ReceiveAsync(buffer);
                    if (n == 0) return TransferEnd.EndOfStream;
                    transfer.Add(n);
                }
            }
            catch (SocketException e) when (e.SocketErrorCode is SocketError.ConnectionReset) { return TransferEnd.Reset; }
            catch (Exception) { return TransferEnd.Failed; }
        });
        return transfer;
    }

    private static async Task<byte[]> ReadAtLeastAsync(Socket s, int n)
    {
        var buffer = new byte[n];
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(20));
        int got = 0;
        while (got < n)
        {
            int k = await s.ReceiveAsync(buffer.AsMemory(got), SocketFlags.None, cts.Token);
            if (k == 0) break;
            got += k;
        }
        return buffer[..got];
    }

    private static Dictionary<string, long> ParseStatus(string line) => PtProcess.ParseStatus(line);

    /// <summary>Waits for a STATUS line of the relay (every --stats-interval) whose counters <paramref name="match"/> accepts.</summary>
    private static async Task<Dictionary<string, long>> WaitForStatusAsync(ZephyrRelayProcess relay, Func<Dictionary<string, long>, bool> match)
    {
        Dictionary<string, long>? found = null;
        if (!await Eventually.HoldsWithinAsync(() =>
            {
                found = relay.Process.StdoutLines.Where(l => l.StartsWith("STATUS TRANSPORT=zephyr ", StringComparison.Ordinal)).Reverse().Select(ParseStatus).FirstOrDefault(match);
                return found is not null;
            }, TimeSpan.FromSeconds(20)))
            throw new TimeoutException("no matching STATUS line; stdout:\n" + string.Join("\n", relay.Process.StdoutLines));
        return found!;
    }
}

/// <summary>A TCP forwarder in front of the relay that can reset or close every connection it carries, on demand.</summary>
internal sealed class DroppingForwarder : IAsyncDisposable
{
    private readonly TcpListener _listener = new(IPAddress.Loopback, 0);
    private readonly IPEndPoint _target;
    private readonly CancellationTokenSource _cts = new();
    private readonly List<(Socket Inbound, Socket Outbound)> _open = [];
    private readonly Task _loop;

    public DroppingForwarder(IPEndPoint target)
    {
        _target = target;
        _listener.Start();
        _loop = Task.Run(LoopAsync);
    }

    public IPEndPoint EndPoint => (IPEndPoint)_listener.LocalEndpoint;

    /// <summary>Resets (RST) both sides of every open connection; returns how many sockets.</summary>
    public int ResetAll() => DropAll(reset: true);

    /// <summary>Closes (FIN) both sides of every open connection; returns how many sockets.</summary>
    public int CloseAll() => DropAll(reset: false);

    private int DropAll(bool reset)
    {
        List<(Socket, Socket)> all;
        lock (_open)
        {
            all = [.. _open];
            _open.Clear();
        }
        foreach (var (a, b) in all)
            foreach (var s in new[] { a, b })
            {
                try
                {
                    if (reset) s.LingerState = new LingerOption(true, 0);
                    else s.Shutdown(SocketShutdown.Both);
                }
                catch (Exception) { }
                s.Dispose();
            }
        return all.Count * 2;
    }

    private async Task LoopAsync()
    {
        while (!_cts.IsCancellationRequested)
        {
            Socket inbound;
            try { inbound = await _listener.AcceptSocketAsync(_cts.Token); }
            catch (Exception) { return; }
            _ = Task.Run(async () =>
            {
                var outbound = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
                try
                {
                    await outbound.ConnectAsync(_target, _cts.Token);
                    lock (_open) _open.Add((inbound, outbound));
                    await Task.WhenAll(Pump(inbound, outbound), Pump(outbound, inbound));
                }
                catch (Exception) { }
                finally
                {
                    lock (_open) _open.Remove((inbound, outbound));
                    inbound.Dispose();
                    outbound.Dispose();
                }
            });
        }
    }

    private async Task Pump(Socket from, Socket to)
    {
        var buffer = new byte[64 * 1024];
        try
        {
            int n;
            while ((n = await from.ReceiveAsync(buffer, _cts.Token)) > 0)
                await to.SendAsync(buffer.AsMemory(0, n), _cts.Token);
            to.Shutdown(SocketShutdown.Send);
        }
        catch (Exception) { }
    }

    public async ValueTask DisposeAsync()
    {
        _cts.Cancel();
        _listener.Stop();
        await _loop;
        DropAll(reset: true);
    }
}

/// <summary>
/// An HTTP/1.1 server for uploads: reads one request with a Content-Length body, hashes the body,
/// and answers <c>200</c> with "LENGTH SHA256HEX" as the body.
/// </summary>
internal sealed class HashingUploadServer : IAsyncDisposable
{
    private readonly ScriptServer _server = new((socket, ct) => ServeAsync(socket, ct));

    public int Port => _server.Port;

    private static async Task ServeAsync(Socket socket, CancellationToken ct)
    {
        using var s = new NetworkStream(socket, ownsSocket: false);
        var head = new List<byte>();
        var one = new byte[1];
        while (head.Count < 16384)
        {
            if (await s.ReadAsync(one, ct) == 0) return;
            head.Add(one[0]);
            if (head.Count >= 4 && head[^4] == '\r' && head[^3] == '\n' && head[^2] == '\r' && head[^1] == '\n') break;
        }
        string text = Encoding.ASCII.GetString([.. head]);
        long length = text.Split("\r\n").Select(l => l.Split(':', 2)).Where(p => p.Length == 2 && p[0].Trim().Equals("Content-Length", StringComparison.OrdinalIgnoreCase))
            .Select(p => long.Parse(p[1].Trim(), CultureInfo.InvariantCulture)).FirstOrDefault(-1);
        if (length < 0)
        {
            await s.WriteAsync("HTTP/1.1 411 Length Required\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"u8.ToArray(), ct);
            return;
        }
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var buffer = new byte[64 * 1024];
        long got = 0;
        while (got < length)
        {
            int n = await s.ReadAsync(buffer.AsMemory(0, (int)Math.Min(buffer.Length, length - got)), ct);
            if (n == 0) break;
            sha.AppendData(buffer, 0, n);
            got += n;
        }
        byte[] body = Encoding.ASCII.GetBytes($"{got} {Convert.ToHexStringLower(sha.GetHashAndReset())}\n");
        await s.WriteAsync(Encoding.ASCII.GetBytes($"HTTP/1.1 200 OK\r\nContent-Length: {body.Length}\r\nConnection: close\r\n\r\n"), ct);
        await s.WriteAsync(body, ct);
    }

    public ValueTask DisposeAsync() => _server.DisposeAsync();
}
