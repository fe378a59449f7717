using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text.Json.Nodes;
using System.Threading.Channels;
using PtHost.Testing;

namespace PtHost.Benchmarks;

/// <summary>
/// The Python adapter (src/adapters/python, spec/adapters.md §3) against the same chain without it.
/// A Python process (adapters/python_adapter_bench.py, Debian's python3, the package from the source
/// tree) runs a TransportFactory whose pthost client goes through plain to a free pthost server
/// (allow 127.0.0.1). Throughput: streams each way through a makeSocket socket, and the same
/// streams through the very same pthost client by a plain SOCKS5 client in the harness, in
/// back-to-back pairs alternating who goes first; uploads are timed at the harness's sink (first
/// byte to end of stream), downloads by each receiver the same way. Start-up: adapter start (TransportFactory()) to
/// its first connection (connect() returned, end to end for plain), against pthost's own start to
/// CMETHODS DONE with the same configuration, measured by the harness; pairs interleaved; both
/// pthosts in sessions of their own (the adapter starts pthost with setsid, spec/adapters.md §2.3).
/// </summary>
public sealed class PythonAdapterScenario : IScenario
{
    private const int SendBlock = 128 * 1024;
    private const int ReceiveBlock = 256 * 1024;
    private const int Pairs = 9;
    private static readonly TimeSpan StreamTimeout = TimeSpan.FromSeconds(180);

    public string Name => "adapter-python";
    public string Title => "Python adapter: throughput through makeSocket, start to first connection";

    public async Task RunAsync(Context ctx, ScenarioRun run)
    {
        var upAdapter = new Figure { Key = "adapter_python_upload_gbps", Label = "Upload through the Python adapter's socket (sendall 128 KiB)", Unit = "Gbit/s" };
        var upSocks = new Figure { Key = "adapter_python_upload_socks_gbps", Label = "Upload, same pthost client, harness SOCKS5 client (no adapter)", Unit = "Gbit/s" };
        var upRatio = new Figure { Key = "adapter_python_upload_ratio", Label = "adapter / no adapter", Unit = "", Indent = 1, Goal = Goal.AtLeast, Target = 0.95 };
        var downAdapter = new Figure { Key = "adapter_python_download_gbps", Label = "Download through the Python adapter's socket (recv_into 256 KiB)", Unit = "Gbit/s" };
        var downSocks = new Figure { Key = "adapter_python_download_socks_gbps", Label = "Download, same pthost client, harness SOCKS5 client (no adapter)", Unit = "Gbit/s" };
        var downRatio = new Figure { Key = "adapter_python_download_ratio", Label = "adapter / no adapter", Unit = "", Indent = 1, Goal = Goal.AtLeast, Target = 0.95 };
        var started = new Figure { Key = "adapter_python_startup_ms", Label = $"Adapter start to CMETHODS DONE (TransportFactory returns, {ctx.StartupRuns} runs/rep)", Unit = "ms", Format = "0.0" };
        var firstConn = new Figure { Key = "adapter_python_first_connection_ms", Label = "Adapter start to first connection (connect() returns)", Unit = "ms", Format = "0.0" };
        var own = new Figure { Key = "adapter_python_pthost_startup_ms", Label = "pthost's own start to CMETHODS DONE, same configuration", Unit = "ms", Format = "0.0" };
        var over = new Figure { Key = "adapter_python_first_connection_over_pthost_ms", Label = "first connection minus pthost's own start-up", Unit = "ms", Format = "0.0", Indent = 1, Goal = Goal.AtMost, Target = 50 };
        var ownFirst = new Figure { Key = "adapter_python_pthost_first_connection_ms", Label = "pthost's own start to first connection (harness SOCKS5 client)", Unit = "ms", Format = "0.0" };
        var share = new Figure { Key = "adapter_python_share_ms", Label = "the adapter's share: its first connection minus pthost's own", Unit = "ms", Format = "0.0", Indent = 1 };
        run.Add(upAdapter, upSocks, upRatio, downAdapter, downSocks, downRatio, started, firstConn, own, over, ownFirst, share);
        var raw = run.Raw("adapter_python");

        string? repo = Sys.FindRepoRoot();
        string? python = File.Exists("/usr/bin/python3") ? "/usr/bin/python3" : Sys.Which("python3");
        if (repo is null || python is null)
        {
            run.FailRemaining(new InvalidOperationException(repo is null
                ? "cannot find the repository (src/adapters/python) above the working directory"
                : "python3 not found"));
            return;
        }
        string script = Path.Combine(repo, "tests", "PtHost.Benchmarks", "adapters", "python_adapter_bench.py");
        var pythonEnv = new Dictionary<string, string?>
        {
            ["PTHOST_EXE"] = ctx.PtHost,
            ["PYTHONPATH"] = Path.Combine(repo, "src", "adapters", "python"),
            ["PYTHONDONTWRITEBYTECODE"] = "1",
        };
        long bytes = ctx.StreamBytes / 16;

        try
        {
            await using var sink = new BulkSink();
            await using var source = new BulkSource(bytes);
            await using var echo = new EchoServer(recordLimit: 0);
            string state = ctx.NewStateDir();
            var (server, serverPort, _) = await Chain.StartFreeServerAsync(ctx.PtHost, state, ["127.0.0.1"], null).ConfigureAwait(false);
            await using var serverChild = server;
            await using var app = Child.Start("python adapter", python, [script, $"127.0.0.1:{serverPort}"], pythonEnv);
            var ready = await ReplyAsync(app, TimeSpan.FromSeconds(30)).ConfigureAwait(false);
            ctx.Say($"adapter-python: Python {ready["python"]}, import pthost {ready["import_ms"]!.GetValue<double>():0.0} ms");
            await app.WriteLineAsync("open").ConfigureAwait(false);
            var opened = await ReplyAsync(app, Chain.StartTimeout).ConfigureAwait(false);
            var socks = IPEndPoint.Parse(opened["socks"]!.GetValue<string>());

            // One unmeasured start-up pair: the first run of each program pays for cold caches.
            await StartupPairAsync(ctx, app, echo.EndPoint, state, serverPort).ConfigureAwait(false);
            for (int rep = 0; rep < ctx.Repetitions; rep++)
            {
                string step = $"adapter-python {rep + 1}/{ctx.Repetitions}";
                ctx.Say($"{step}: upload, {Pairs} pairs of {bytes >> 20} MiB streams");
                await PairsAsync(upAdapter, upSocks, upRatio, raw, rep, "upload",
                    async () =>
                    {
                        await app.WriteLineAsync($"upload {sink.EndPoint} {bytes}").ConfigureAwait(false);
                        double seconds = await sink.NextAsync(bytes, StreamTimeout).ConfigureAwait(false);
                        await ReplyAsync(app, StreamTimeout).ConfigureAwait(false);
                        return seconds;
                    },
                    async () =>
                    {
                        var send = Task.Factory.StartNew(() => SocksUpload(socks, sink.EndPoint, bytes), TaskCreationOptions.LongRunning);
                        double seconds = await sink.NextAsync(bytes, StreamTimeout).ConfigureAwait(false);
                        await send.ConfigureAwait(false);
                        return seconds;
                    }, bytes).ConfigureAwait(false);

                ctx.Say($"{step}: download, {Pairs} pairs of {bytes >> 20} MiB streams");
                await PairsAsync(downAdapter, downSocks, downRatio, raw, rep, "download",
                    async () =>
                    {
                        await app.WriteLineAsync($"download {source.EndPoint}").ConfigureAwait(false);
                        var r = await ReplyAsync(app, StreamTimeout).ConfigureAwait(false);
                        long received = r["received"]!.GetValue<long>();
                        if (received != bytes) throw new IOException($"the adapter received {received} of {bytes} bytes");
                        return r["seconds"]!.GetValue<double>();
                    },
                    async () =>
                    {
                        var receive = Task.Factory.StartNew(() => SocksDownload(socks, source.EndPoint), TaskCreationOptions.LongRunning);
                        if (!await Eventually.CompletesWithinAsync(receive, StreamTimeout).ConfigureAwait(false))
                            throw new TimeoutException($"download not done within {StreamTimeout.TotalSeconds:0} s");
                        var (received, seconds) = await receive.ConfigureAwait(false);
                        if (received != bytes) throw new IOException($"the harness received {received} of {bytes} bytes");
                        return seconds;
                    }, bytes).ConfigureAwait(false);

                ctx.Say($"{step}: start-up, {ctx.StartupRuns} pairs");
                for (int i = 0; i < ctx.StartupRuns; i++)
                {
                    try
                    {
                        var (adapterStart, adapterFirstConn, pthostStart, pthostFirstConn) = await StartupPairAsync(ctx, app, echo.EndPoint, state, serverPort).ConfigureAwait(false);
                        started.Samples.Add(adapterStart);
                        firstConn.Samples.Add(adapterFirstConn);
                        own.Samples.Add(pthostStart);
                        over.Samples.Add(adapterFirstConn - pthostStart);
                        ownFirst.Samples.Add(pthostFirstConn);
                        share.Samples.Add(adapterFirstConn - pthostFirstConn);
                        raw.Add(ScenarioRun.Tag(new JsonObject
                        {
                            ["adapter_startup_ms"] = adapterStart,
                            ["adapter_first_connection_ms"] = adapterFirstConn,
                            ["pthost_startup_ms"] = pthostStart,
                            ["pthost_first_connection_ms"] = pthostFirstConn,
                        }, "startup", rep));
                    }
                    catch (Exception e) when (ScenarioRun.IsMeasurementFailure(e))
                    {
                        ctx.Say($"adapter-python: start-up pair failed: {e.Message}");
                        foreach (var f in new[] { started, firstConn, own, over, ownFirst, share })
                            if (f.Samples.Count == 0) f.Error ??= e.Message;
                    }
                }
            }
        }
        catch (Exception e) when (ScenarioRun.IsMeasurementFailure(e))
        {
            run.FailRemaining(e);
        }
    }

    /// <summary>
    /// <see cref="Pairs"/> pairs of streams, adapter and harness back to back, alternating who goes
    /// first. Each throughput figure's sample for the repetition is its bytes over its summed
    /// seconds; the ratio's is the median of the pairs' ratios, so that load from other work on a
    /// shared machine, which moves single streams by tens of per cent, hits both sides of a pair.
    /// </summary>
    private static async Task PairsAsync(Figure adapter, Figure socks, Figure ratio, JsonArray raw, int rep, string kind,
        Func<Task<double>> viaAdapter, Func<Task<double>> viaSocks, long bytes)
    {
        double adapterSeconds = 0, socksSeconds = 0;
        var ratios = new List<double>();
        try
        {
            await RunPairsAsync().ConfigureAwait(false);
        }
        catch (Exception e) when (ScenarioRun.IsMeasurementFailure(e))
        {
            // Recorded on the three figures; the repetition adds no sample.
            foreach (var f in new[] { adapter, socks, ratio })
                await ScenarioRun.AttemptAsync(f, () => Task.FromException<double>(e)).ConfigureAwait(false);
            return;
        }
        await ScenarioRun.AttemptAsync(adapter, () => Task.FromResult(Pairs * bytes * 8 / adapterSeconds / 1e9)).ConfigureAwait(false);
        await ScenarioRun.AttemptAsync(socks, () => Task.FromResult(Pairs * bytes * 8 / socksSeconds / 1e9)).ConfigureAwait(false);
        await ScenarioRun.AttemptAsync(ratio, () => Task.FromResult(Stats.Median(ratios))).ConfigureAwait(false);

        async Task RunPairsAsync()
        {
            for (int i = 0; i < Pairs; i++)
            {
                bool adapterFirst = (rep + i) % 2 == 0;
                double pairAdapter = 0, pairSocks = 0;
                for (int turn = 0; turn < 2; turn++)
                {
                    bool isAdapter = (turn == 0) == adapterFirst;
                    double seconds = await (isAdapter ? viaAdapter() : viaSocks()).ConfigureAwait(false);
                    if (isAdapter) pairAdapter = seconds;
                    else pairSocks = seconds;
                    raw.Add(ScenarioRun.Tag(new JsonObject { ["gbps"] = bytes * 8 / seconds / 1e9, ["seconds"] = seconds, ["pair"] = i },
                        $"{kind}_{(isAdapter ? "adapter" : "socks")}", rep));
                }
                adapterSeconds += pairAdapter;
                socksSeconds += pairSocks;
                ratios.Add(pairSocks / pairAdapter); // throughput ratio: the same bytes, so seconds inverted
            }
        }
    }

    /// <summary>
    /// One adapter start (in the Python process) and one start of pthost by the harness with the same
    /// configuration, each followed at once by a first connection to the echo server.
    /// </summary>
    private static async Task<(double AdapterStart, double AdapterFirstConnection, double PthostStart, double PthostFirstConnection)> StartupPairAsync(
        Context ctx, Child app, IPEndPoint echo, string state, int serverPort)
    {
        await app.WriteLineAsync($"startup {echo}").ConfigureAwait(false);
        var r = await ReplyAsync(app, Chain.StartTimeout).ConfigureAwait(false);
        var (client, socksPort, startup) = await Chain.StartClientAsync(ctx.PtHost, state, serverPort, null, ownSession: true).ConfigureAwait(false);
        await using (client.ConfigureAwait(false))
        {
            var first = await Task.Factory.StartNew(() =>
            {
                using var s = SocksConnect(new IPEndPoint(IPAddress.Loopback, socksPort), echo, settingsBlock: true);
                return Stopwatch.GetElapsedTime(client.StartTimestamp);
            }, TaskCreationOptions.LongRunning).ConfigureAwait(false);
            return (r["startup_ms"]!.GetValue<double>(), r["first_connection_ms"]!.GetValue<double>(), startup.TotalMilliseconds, first.TotalMilliseconds);
        }
    }

    /// <summary>The Python process's next JSON line; an <c>error</c> member or a traceback fails the measurement.</summary>
    private static async Task<JsonObject> ReplyAsync(Child app, TimeSpan timeout)
    {
        var (_, line) = await app.WaitForLineAsync(l => l.StartsWith('{'), timeout).ConfigureAwait(false);
        var o = JsonNode.Parse(line)?.AsObject() ?? throw new FormatException($"not a JSON object: {line}");
        if (o["error"] is { } err) throw new InvalidOperationException($"python adapter bench: {err}");
        return o;
    }

    /// <summary>
    /// A blocking SOCKS5 CONNECT, greeting and request in one write (only synchronous calls, see
    /// <see cref="StreamPump"/>): method 00, or with <paramref name="settingsBlock"/> the adapter's own
    /// bytes (methods 09 and 80 offered, an empty settings block, spec/adapters.md §2.2), so that a
    /// first connection takes the same path through pthost as the adapter's.
    /// </summary>
    private static Socket SocksConnect(IPEndPoint socks, IPEndPoint destination, bool settingsBlock = false)
    {
        var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            s.Connect(socks);
            byte[] greeting = settingsBlock ? [5, 2, 9, 0x80, 0, 0, 0, 0] : [5, 1, 0];
            var request = new byte[greeting.Length + 10];
            greeting.CopyTo(request, 0);
            var connect = request.AsSpan(greeting.Length);
            connect[0] = 5; connect[1] = 1; connect[2] = 0; connect[3] = 1;
            destination.Address.MapToIPv4().TryWriteBytes(connect.Slice(4, 4), out _);
            connect[8] = (byte)(destination.Port >> 8); connect[9] = (byte)destination.Port;
            s.Send(request);
            var reply = new byte[2 + 10];
            for (int got = 0; got < reply.Length;)
            {
                int n = s.Receive(reply, got, reply.Length - got, SocketFlags.None);
                if (n == 0) throw new IOException("pthost closed during the SOCKS handshake");
                got += n;
            }
            if (reply[1] != greeting[2] || reply[3] != 0) throw new IOException($"SOCKS reply {reply[1]:x2} {reply[3]:x2}");
            return s;
        }
        catch
        {
            s.Dispose();
            throw;
        }
    }

    private static void SocksUpload(IPEndPoint socks, IPEndPoint sink, long bytes)
    {
        using var s = SocksConnect(socks, sink);
        SendThenDrain(s, bytes);
    }

    private static (long Received, double Seconds) SocksDownload(IPEndPoint socks, IPEndPoint source)
    {
        using var s = SocksConnect(socks, source);
        var (total, elapsed) = ReceiveToEnd(s);
        return (total, elapsed.TotalSeconds);
    }

    /// <summary>Sends <paramref name="bytes"/> in 128 KiB blocks, ends the direction, reads until the peer ends.</summary>
    private static void SendThenDrain(Socket s, long bytes)
    {
        var block = new byte[SendBlock];
        Random.Shared.NextBytes(block);
        for (long left = bytes; left > 0;)
            left -= s.Send(block, 0, (int)Math.Min(left, block.Length), SocketFlags.None);
        s.Shutdown(SocketShutdown.Send);
        var drain = new byte[4096];
        while (s.Receive(drain) > 0) { }
    }

    /// <summary>Reads to the end of the stream; the time runs from the first byte (as the Python side measures).</summary>
    private static (long Bytes, TimeSpan Elapsed) ReceiveToEnd(Socket s)
    {
        var buffer = new byte[ReceiveBlock];
        long total = s.Receive(buffer);
        long start = Stopwatch.GetTimestamp();
        int n;
        while ((n = s.Receive(buffer)) > 0) total += n;
        return (total, Stopwatch.GetElapsedTime(start));
    }

    /// <summary>A loopback listener that serves each accepted stream on its own thread (blocking calls only).</summary>
    private abstract class BulkEnd : IAsyncDisposable
    {
        private readonly Socket _listener = new(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        private Task? _accept;

        protected BulkEnd()
        {
            _listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
            _listener.Listen(16);
            EndPoint = (IPEndPoint)_listener.LocalEndPoint!;
        }

        public IPEndPoint EndPoint { get; }

        /// <summary>Starts accepting; called by the derived constructor once its fields are set.</summary>
        protected void Start() => _accept = Task.Factory.StartNew(AcceptLoop, TaskCreationOptions.LongRunning);

        protected abstract void Serve(Socket s);

        private void AcceptLoop()
        {
            while (true)
            {
                Socket s;
                try { s = _listener.Accept(); }
                catch (Exception e) when (e is SocketException or ObjectDisposedException) { return; }
                Task.Factory.StartNew(() =>
                {
                    using (s)
                    {
                        try { Serve(s); }
                        catch (SocketException) { }
                    }
                }, TaskCreationOptions.LongRunning);
            }
        }

        public async ValueTask DisposeAsync()
        {
            _listener.Dispose();
            if (_accept is not null) await _accept.ConfigureAwait(false);
        }
    }

    /// <summary>Reads each stream to its end, timing first byte to end of stream.</summary>
    private sealed class BulkSink : BulkEnd
    {
        private readonly Channel<(long Bytes, TimeSpan Elapsed)> _done = Channel.CreateUnbounded<(long, TimeSpan)>();

        public BulkSink() => Start();

        protected override void Serve(Socket s)
        {
            try
            {
                _done.Writer.TryWrite(ReceiveToEnd(s));
            }
            catch (SocketException)
            {
                _done.Writer.TryWrite((-1, TimeSpan.Zero));
            }
        }

        /// <summary>Seconds (first byte to end) of the next completed stream, which must have carried <paramref name="bytes"/>.</summary>
        public async Task<double> NextAsync(long bytes, TimeSpan timeout)
        {
            using var cts = new CancellationTokenSource(timeout);
            (long got, TimeSpan elapsed) = await _done.Reader.ReadAsync(cts.Token).ConfigureAwait(false);
            if (got != bytes) throw new IOException($"the sink received {got} of {bytes} bytes");
            return elapsed.TotalSeconds;
        }
    }

    /// <summary>Sends each stream a fixed number of bytes, ends its direction, and waits for the peer's end.</summary>
    private sealed class BulkSource : BulkEnd
    {
        private readonly long _bytes;

        public BulkSource(long bytes)
        {
            _bytes = bytes;
            Start();
        }

        protected override void Serve(Socket s) => SendThenDrain(s, _bytes);
    }
}
