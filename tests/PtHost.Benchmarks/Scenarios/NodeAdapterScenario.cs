using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text.Json.Nodes;

namespace PtHost.Benchmarks;

/// <summary>
/// The Node adapter (src/adapters/node, spec/adapters.md §4). Throughput: one stream from a node
/// process through client → plain → server to a discarding sink, sent on the adapter's socket
/// (createConnection, its own pthost client) and, in the same repetition (alternating which goes
/// first), on a hand-written SOCKS5 client in node through a harness-started pthost client (the
/// same chain without the adapter); each after a 256 MiB warm-up stream; plus iperf3 via
/// proxychains through a chain as the C reference. Start-up, in one node process, alternating:
/// createConnector to the first 'connect', against pthost's own start (spawn → CMETHODS DONE →
/// SOCKS5 success reply by hand).
/// </summary>
public sealed class NodeAdapterScenario : IScenario
{
    public string Name => "adapter-node";
    public string Title => "Node adapter: throughput through its socket, start to first connection";

    public async Task RunAsync(Context ctx, ScenarioRun run)
    {
        var raw = new Figure { Key = "adapter_node_raw_gbps", Label = "Node, plain SOCKS5 client, through client->plain->server (reference)", Unit = "Gbit/s" };
        var adapter = new Figure { Key = "adapter_node_gbps", Label = "Node, adapter's createConnection socket, same chain", Unit = "Gbit/s" };
        var ratio = new Figure { Key = "adapter_node_ratio", Label = "ratio to the plain SOCKS5 client", Unit = "", Indent = 1, Goal = Goal.AtLeast, Target = 0.95 };
        var iperf = new Figure { Key = "adapter_node_iperf_gbps", Label = "iperf3 via proxychains, same chain (C reference)", Unit = "Gbit/s" };
        var iperfRatio = new Figure { Key = "adapter_node_iperf_ratio", Label = "adapter socket / iperf3", Unit = "", Indent = 1 };
        var own = new Figure { Key = "adapter_node_startup_pthost_ms", Label = $"pthost alone: spawn -> CMETHODS DONE -> first SOCKS reply ({ctx.StartupRuns} runs)", Unit = "ms", Format = "0" };
        var start = new Figure { Key = "adapter_node_startup_ms", Label = $"adapter: createConnector -> first 'connect' ({ctx.StartupRuns} runs)", Unit = "ms", Format = "0" };
        var delta = new Figure { Key = "adapter_node_startup_delta_ms", Label = "adapter start-up minus pthost's own", Unit = "ms", Format = "0", Indent = 1, Goal = Goal.AtMost, Target = 50 };
        var ownAfter = new Figure { Key = "adapter_node_after_done_pthost_ms", Label = "pthost alone: CMETHODS DONE read -> SOCKS reply (two round trips)", Unit = "ms", Format = "0.0", Indent = 1 };
        var startAfter = new Figure { Key = "adapter_node_after_done_ms", Label = "adapter: CMETHODS DONE read -> 'connect' (one round trip)", Unit = "ms", Format = "0.0", Indent = 1 };
        run.Add(raw, adapter, ratio, iperf, iperfRatio, own, start, delta, ownAfter, startAfter);
        var records = run.Raw("adapter-node");

        string? node = Sys.Which("node");
        string? repo = Sys.FindRepoRoot();
        string? script = repo is null ? null : Path.Combine(repo, "tests", "PtHost.Benchmarks", "node", "adapter-bench.js");
        string? adapterDir = repo is null ? null : Path.Combine(repo, "src", "adapters", "node");
        try
        {
            if (node is null) throw new InvalidOperationException("node is not installed (Node.js 20 or newer is needed)");
            if (script is null || !File.Exists(script) || adapterDir is null) throw new InvalidOperationException("cannot find the repository's src/adapters/node");
            await Sys.EnsureToolsAsync([("iperf3", "iperf3"), ("proxychains4", "proxychains4")], ctx.Say).ConfigureAwait(false);
            ctx.Iperf3 = Sys.Which("iperf3")!;
            ctx.Proxychains = Sys.Which("proxychains4");
        }
        catch (Exception e) when (ScenarioRun.IsMeasurementFailure(e))
        {
            run.FailRemaining(e);
            return;
        }

        long bytes = ctx.StreamBytes / 2;
        await using var sink = new DiscardServer();
        for (int rep = 0; rep < ctx.Repetitions; rep++)
        {
            string step = $"adapter-node {rep + 1}/{ctx.Repetitions}";
            // One bound plain server in front of the sink serves both node clients of this repetition.
            var (server, serverPort, _) = await Chain.StartServerAsync(ctx.PtHost, ctx.NewStateDir(), $"127.0.0.1:{sink.EndPoint.Port}", null).ConfigureAwait(false);
            await using (server.ConfigureAwait(false))
            {
                Task<double> MeasureRaw() => ScenarioRun.AttemptAsync(raw, async () =>
                {
                    ctx.Say($"{step}: node through the chain, plain SOCKS5 client");
                    var (client, socksPort, _) = await Chain.StartClientAsync(ctx.PtHost, ctx.NewStateDir(), serverPort, null).ConfigureAwait(false);
                    await using (client.ConfigureAwait(false))
                    {
                        var o = await RunNodeAsync(node!, script!, adapterDir!, "stream-raw", new JsonObject { ["socksPort"] = socksPort, ["sinkPort"] = sink.EndPoint.Port, ["bytes"] = bytes }).ConfigureAwait(false);
                        records.Add(ScenarioRun.Tag(o, "stream_raw", rep));
                        return (double)o["gbps"]!;
                    }
                });
                Task<double> MeasureAdapter() => ScenarioRun.AttemptAsync(adapter, async () =>
                {
                    ctx.Say($"{step}: node through the chain, adapter socket");
                    var o = await RunNodeAsync(node!, script!, adapterDir!, "stream-adapter", new JsonObject { ["serverPort"] = serverPort, ["sinkPort"] = sink.EndPoint.Port, ["bytes"] = bytes, ["pthost"] = ctx.PtHost }).ConfigureAwait(false);
                    records.Add(ScenarioRun.Tag(o, "stream_adapter", rep));
                    return (double)o["gbps"]!;
                });
                // Alternate the order, so that neither side always runs on a warmer server.
                double r, a;
                if (rep % 2 == 0) { r = await MeasureRaw().ConfigureAwait(false); a = await MeasureAdapter().ConfigureAwait(false); }
                else { a = await MeasureAdapter().ConfigureAwait(false); r = await MeasureRaw().ConfigureAwait(false); }
                ScenarioRun.AddRatio(ratio, a, r, adapter, raw);

                ctx.Say($"{step}: start-up, pthost alone and through the adapter");
                JsonObject? startup = null;
                await ScenarioRun.AttemptAsync(own, async () =>
                {
                    startup = await RunNodeAsync(node!, script!, adapterDir!, "startup", new JsonObject
                    {
                        ["serverPort"] = serverPort, ["sinkPort"] = sink.EndPoint.Port, ["runs"] = ctx.StartupRuns, ["pthost"] = ctx.PtHost, ["state"] = ctx.NewStateDir(),
                    }).ConfigureAwait(false);
                    records.Add(ScenarioRun.Tag(startup, "startup", rep));
                    return Median(startup, "own", "ms");
                }).ConfigureAwait(false);
                Task<double> Part(string side, string field) => startup is null
                    ? throw new InvalidOperationException(own.Error ?? "start-up not measured")
                    : Task.FromResult(Median(startup, side, field));
                await ScenarioRun.AttemptAsync(start, () => Part("adapter", "ms")).ConfigureAwait(false);
                await ScenarioRun.AttemptAsync(ownAfter, () => Part("own", "afterDone")).ConfigureAwait(false);
                await ScenarioRun.AttemptAsync(startAfter, () => Part("adapter", "afterDone")).ConfigureAwait(false);
            }
            if (own.Samples.Count > rep && start.Samples.Count > rep) delta.Samples.Add(start.Samples[rep] - own.Samples[rep]);
            else if (delta.Samples.Count == 0) delta.Error ??= start.Error ?? own.Error ?? "not measured";

            ctx.Say($"{step}: iperf3 via proxychains through the chain");
            double ip = await ScenarioRun.AttemptAsync(iperf, async () =>
            {
                var (gbps, o) = await Measurements.IperfChainAsync(ctx, noSplice: false).ConfigureAwait(false);
                records.Add(ScenarioRun.Tag(o, "iperf_chain", rep));
                return gbps;
            }).ConfigureAwait(false);
            double last = adapter.Samples.Count > 0 ? adapter.Samples[^1] : double.NaN;
            ScenarioRun.AddRatio(iperfRatio, last, ip, adapter, iperf);
        }
    }

    private static double Median(JsonObject o, string side, string field) =>
        Stats.Median([.. o[side]!.AsArray().Select(x => (double)x![field]!)]);

    /// <summary>Runs the node side once; returns its JSON line.</summary>
    private static async Task<JsonObject> RunNodeAsync(string node, string script, string adapterDir, string mode, JsonObject args)
    {
        var r = await Child.RunAsync(node, [script, adapterDir, mode, args.ToJsonString()], TimeSpan.FromMinutes(3)).ConfigureAwait(false);
        if (r.ExitCode != 0) throw new InvalidOperationException($"node {mode} exited {r.ExitCode}: {r.StderrTail}");
        string line = r.Stdout.Trim().Split('\n')[^1];
        return JsonNode.Parse(line) as JsonObject ?? throw new FormatException($"node {mode} printed \"{line}\"");
    }
}

/// <summary>A TCP sink on 127.0.0.1: reads each connection to its end, discarding, then closes it.</summary>
public sealed class DiscardServer : IAsyncDisposable
{
    private readonly Socket _listener;
    private readonly Task _acceptLoop;

    public DiscardServer()
    {
        _listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        _listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        _listener.Listen(512);
        EndPoint = (IPEndPoint)_listener.LocalEndPoint!;
        _acceptLoop = Task.Factory.StartNew(AcceptLoop, TaskCreationOptions.LongRunning);
    }

    public IPEndPoint EndPoint { get; }

    private void AcceptLoop()
    {
        while (true)
        {
            Socket s;
            try { s = _listener.Accept(); }
            catch (Exception e) when (e is SocketException or ObjectDisposedException) { return; }
            // Blocking receives on a thread of its own, as StreamPump's receiver: no epoll emulation.
            _ = Task.Factory.StartNew(() =>
            {
                using (s)
                {
                    var buffer = new byte[256 * 1024];
                    try { while (s.Receive(buffer) > 0) { } }
                    catch (SocketException) { }
                }
            }, TaskCreationOptions.LongRunning);
        }
    }

    public async ValueTask DisposeAsync()
    {
        _listener.Dispose();
        await _acceptLoop.ConfigureAwait(false);
    }
}
