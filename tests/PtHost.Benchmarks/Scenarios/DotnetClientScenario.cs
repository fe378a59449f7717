using System.Buffers.Binary;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text.Json.Nodes;
using PtHost.Client;
using PtHost.Embedded;

namespace PtHost.Benchmarks;

/// <summary>
/// The .NET packages (spec/adapters.md §5): the in-process host (PtHost.Embedded) against the SOCKS chain
/// (PtHost.Client launching a pthost client process), in the same repetition, alternating which goes first, both
/// through one bound plain server process in front of an acknowledging sink. Throughput: one stream of
/// StreamBytes / 4, timed to the sink's acknowledgement of the last byte. Sessions per second: sequential
/// sessions, each connect, one request to the sink, its acknowledgement, close. CPU per GiB: the CPU time that the
/// harness (writer and sink), the pthost server and, on the SOCKS path, the pthost client spent during each timed
/// stream, per GiB carried; it shows the hop saved even when the machine's other work makes Gbit/s unsteady.
/// </summary>
public sealed class DotnetClientScenario : IScenario
{
    public string Name => "dotnet-client";
    public string Title => ".NET client: in-process ConnectAsync against the SOCKS chain (throughput, sessions/s)";

    public async Task RunAsync(Context ctx, ScenarioRun run)
    {
        var socksGbps = new Figure { Key = "dotnet_socks_gbps", Label = "PtHost.Client ConnectAsync via a pthost client (SOCKS chain)", Unit = "Gbit/s" };
        var embeddedGbps = new Figure { Key = "dotnet_embedded_gbps", Label = "PtHost.Embedded ConnectAsync in process, same server", Unit = "Gbit/s" };
        var gbpsRatio = new Figure { Key = "dotnet_gbps_ratio", Label = "in process / SOCKS chain", Unit = "", Indent = 1, Goal = Goal.AtLeast, Target = 1.2 };
        int sessions = Math.Max(1000, ctx.ConnTotal / 5);
        var socksRate = new Figure { Key = "dotnet_socks_sessions_per_s", Label = $"PtHost.Client sessions/s via a pthost client ({sessions} sequential)", Unit = "/s", Format = "0" };
        var embeddedRate = new Figure { Key = "dotnet_embedded_sessions_per_s", Label = $"PtHost.Embedded sessions/s in process ({sessions} sequential)", Unit = "/s", Format = "0" };
        var rateRatio = new Figure { Key = "dotnet_sessions_ratio", Label = "in process / SOCKS chain", Unit = "", Indent = 1, Goal = Goal.AtLeast, Target = 1.5 };
        var socksCpu = new Figure { Key = "dotnet_socks_cpu_s_per_gib", Label = "CPU per GiB streamed via the SOCKS chain (harness + pthost client + server)", Unit = "s/GiB" };
        var embeddedCpu = new Figure { Key = "dotnet_embedded_cpu_s_per_gib", Label = "CPU per GiB streamed in process (harness + pthost server)", Unit = "s/GiB" };
        var cpuRatio = new Figure { Key = "dotnet_cpu_ratio", Label = "SOCKS chain / in process", Unit = "", Indent = 1 };
        var serverGbps = new Figure { Key = "dotnet_embedded_server_gbps", Label = "a pthost client into an EmbeddedServer sink in process (no server process)", Unit = "Gbit/s" };
        var serverRatio = new Figure { Key = "dotnet_embedded_server_ratio", Label = "in-process server / pthost server process (the SOCKS chain above)", Unit = "", Indent = 1 };
        var serverCpu = new Figure { Key = "dotnet_embedded_server_cpu_s_per_gib", Label = "CPU per GiB into the in-process server (harness + pthost client)", Unit = "s/GiB" };
        run.Add(socksGbps, embeddedGbps, gbpsRatio, socksCpu, embeddedCpu, cpuRatio, serverGbps, serverRatio, serverCpu, socksRate, embeddedRate, rateRatio);
        var records = run.Raw("dotnet-client");

        long bytes = ctx.StreamBytes / 4;
        await using var sink = new AckSink();
        for (int rep = 0; rep < ctx.Repetitions; rep++)
        {
            string step = $"dotnet-client {rep + 1}/{ctx.Repetitions}";
            var (server, serverPort, _) = await Chain.StartServerAsync(ctx.PtHost, ctx.NewStateDir(), $"127.0.0.1:{sink.EndPoint.Port}", null).ConfigureAwait(false);
            await using (server.ConfigureAwait(false))
            {
                var config = new JsonObject
                {
                    ["transports"] = new JsonArray("plain"),
                    ["options"] = new JsonObject { ["plain"] = new JsonObject { ["serverAddress"] = $"127.0.0.1:{serverPort}" } },
                    ["turn"] = false,
                };
                await using var socks = await PtHostClient.StartAsync(config, new PtHostOptions { Executable = ctx.PtHost }).ConfigureAwait(false);
                await using var embedded = await EmbeddedClient.StartAsync(Newtonsoft.Json.Linq.JObject.Parse(config.ToJsonString())).ConfigureAwait(false);
                var dest = sink.EndPoint;
                Func<CancellationToken, Task<Stream>> viaSocks = ct => socks.ConnectAsync("plain", null, dest, ct);
                Func<CancellationToken, Task<Stream>> inProcess = ct => embedded.ConnectAsync("plain", null, dest.Address.ToString(), dest.Port, ct);

                // Warm-up: both paths, a short stream and a few sessions each.
                await StreamAsync(viaSocks, 64L << 20).ConfigureAwait(false);
                await StreamAsync(inProcess, 64L << 20).ConfigureAwait(false);
                await InterleavedRatesAsync(viaSocks, inProcess, 2 * Block, 0).ConfigureAwait(false);

                ctx.Say($"{step}: throughput, in process and through SOCKS");
                int[] socksPids = [Environment.ProcessId, server.Pid, socks.ProcessId], embeddedPids = [Environment.ProcessId, server.Pid];
                double sCpu = double.NaN, eCpu = double.NaN;
                Task<double> S() => ScenarioRun.AttemptAsync(socksGbps, () => CpuPerGibAsync(socksPids, bytes, () => StreamAsync(viaSocks, bytes), c => sCpu = c));
                Task<double> E() => ScenarioRun.AttemptAsync(embeddedGbps, () => CpuPerGibAsync(embeddedPids, bytes, () => StreamAsync(inProcess, bytes), c => eCpu = c));
                double s, e;
                if (rep % 2 == 0) { s = await S().ConfigureAwait(false); e = await E().ConfigureAwait(false); }
                else { e = await E().ConfigureAwait(false); s = await S().ConfigureAwait(false); }
                ScenarioRun.AddRatio(gbpsRatio, e, s, embeddedGbps, socksGbps);
                if (!double.IsNaN(sCpu)) socksCpu.Samples.Add(sCpu);
                if (!double.IsNaN(eCpu)) embeddedCpu.Samples.Add(eCpu);
                ScenarioRun.AddRatio(cpuRatio, sCpu, eCpu, socksCpu, embeddedCpu);

                // The in-process server: sessions handed to the application as the transport's own streams (spec/adapters.md §5.8).
                ctx.Say($"{step}: throughput into an in-process server");
                await using (var inProcessServer = await EmbeddedServer.StartAsync("plain", null).ConfigureAwait(false))
                {
                    var serving = Task.Run(async () =>
                    {
                        try
                        {
                            while (true)
                            {
                                var session = await inProcessServer.AcceptAsync().ConfigureAwait(false);
                                _ = Task.Run(async () => { await using (session.Stream.ConfigureAwait(false)) await AckSink.ServeAsync(session.Stream).ConfigureAwait(false); });
                            }
                        }
                        catch (System.Threading.Channels.ChannelClosedException) { }
                    });
                    var toServer = (JsonObject)config.DeepClone();
                    toServer["options"]!["plain"]!["serverAddress"] = inProcessServer.EndPoint.ToString();
                    await using var client2 = await PtHostClient.StartAsync(toServer, new PtHostOptions { Executable = ctx.PtHost }).ConfigureAwait(false);
                    Func<CancellationToken, Task<Stream>> intoServer = ct => client2.ConnectAsync("plain", null, "sink.invalid", 9, ct);
                    await StreamAsync(intoServer, 64L << 20).ConfigureAwait(false);
                    double vCpu = double.NaN;
                    double v = await ScenarioRun.AttemptAsync(serverGbps, () => CpuPerGibAsync([Environment.ProcessId, client2.ProcessId], bytes, () => StreamAsync(intoServer, bytes), c => vCpu = c)).ConfigureAwait(false);
                    ScenarioRun.AddRatio(serverRatio, v, s, serverGbps, socksGbps);
                    if (!double.IsNaN(vCpu)) serverCpu.Samples.Add(vCpu);
                    await inProcessServer.DisposeAsync().ConfigureAwait(false);
                    await serving.ConfigureAwait(false);
                }

                ctx.Say($"{step}: sessions per second, in process and through SOCKS, interleaved in blocks of {Block}");
                double sr = double.NaN, er = double.NaN;
                await ScenarioRun.AttemptAsync(socksRate, async () =>
                {
                    (sr, er) = await InterleavedRatesAsync(viaSocks, inProcess, sessions, rep).ConfigureAwait(false);
                    return sr;
                }).ConfigureAwait(false);
                if (!double.IsNaN(er)) embeddedRate.Samples.Add(er);
                else embeddedRate.Error ??= socksRate.Error;
                ScenarioRun.AddRatio(rateRatio, er, sr, embeddedRate, socksRate);
                records.Add(new JsonObject { ["rep"] = rep, ["socks_gbps"] = s, ["embedded_gbps"] = e, ["socks_cpu_s_per_gib"] = sCpu, ["embedded_cpu_s_per_gib"] = eCpu, ["socks_per_s"] = sr, ["embedded_per_s"] = er });
            }
        }
    }

    /// <summary>Runs <paramref name="stream"/> and reports, through <paramref name="cpu"/>, the CPU seconds <paramref name="pids"/> spent on it per GiB.</summary>
    private static async Task<double> CpuPerGibAsync(int[] pids, long bytes, Func<Task<double>> stream, Action<double> cpu)
    {
        double before = pids.Sum(Sys.CpuSeconds);
        double gbps = await stream().ConfigureAwait(false);
        cpu((pids.Sum(Sys.CpuSeconds) - before) / (bytes / (double)(1L << 30)));
        return gbps;
    }

    /// <summary>One stream: an 8-byte length, that many bytes, then the sink's 1-byte acknowledgement. Gbit/s.</summary>
    private static async Task<double> StreamAsync(Func<CancellationToken, Task<Stream>> connect, long bytes)
    {
        using var cts = new CancellationTokenSource(TimeSpan.FromMinutes(5));
        var buffer = new byte[256 * 1024];
        var sw = Stopwatch.StartNew();
        await using var stream = await connect(cts.Token).ConfigureAwait(false);
        BinaryPrimitives.WriteInt64BigEndian(buffer, bytes);
        await stream.WriteAsync(buffer.AsMemory(0, 8), cts.Token).ConfigureAwait(false);
        for (long left = bytes; left > 0; left -= buffer.Length)
            await stream.WriteAsync(buffer.AsMemory(0, (int)Math.Min(left, buffer.Length)), cts.Token).ConfigureAwait(false);
        await stream.ReadExactlyAsync(buffer.AsMemory(0, 1), cts.Token).ConfigureAwait(false);
        return bytes * 8 / sw.Elapsed.TotalSeconds / 1e9;
    }

    private const int Block = 50;

    /// <summary>
    /// Sessions per second of both paths, measured in alternating blocks of <see cref="Block"/> sessions (the first
    /// path alternates with the repetition) so that both see the same load from the machine's other work.
    /// </summary>
    private static async Task<(double A, double B)> InterleavedRatesAsync(Func<CancellationToken, Task<Stream>> a, Func<CancellationToken, Task<Stream>> b, int count, int rep)
    {
        double ta = 0, tb = 0;
        for (int done = 0; done < count; done += Block)
        {
            bool aFirst = (done / Block + rep) % 2 == 0;
            if (aFirst) { ta += await SessionsAsync(a, Block).ConfigureAwait(false); tb += await SessionsAsync(b, Block).ConfigureAwait(false); }
            else { tb += await SessionsAsync(b, Block).ConfigureAwait(false); ta += await SessionsAsync(a, Block).ConfigureAwait(false); }
        }
        int total = (count + Block - 1) / Block * Block;
        return (total / ta, total / tb);
    }

    /// <summary>Sequential sessions, each with a zero-length request and its acknowledgement. Seconds taken.</summary>
    private static async Task<double> SessionsAsync(Func<CancellationToken, Task<Stream>> connect, int count)
    {
        using var cts = new CancellationTokenSource(TimeSpan.FromMinutes(5));
        var buffer = new byte[8];
        var sw = Stopwatch.StartNew();
        for (int i = 0; i < count; i++)
        {
            await using var stream = await connect(cts.Token).ConfigureAwait(false);
            BinaryPrimitives.WriteInt64BigEndian(buffer, 0);
            await stream.WriteAsync(buffer, cts.Token).ConfigureAwait(false);
            await stream.ReadExactlyAsync(buffer.AsMemory(0, 1), cts.Token).ConfigureAwait(false);
        }
        return sw.Elapsed.TotalSeconds;
    }

    /// <summary>Reads an 8-byte length, discards that many bytes, writes one byte back; per connection.</summary>
    private sealed class AckSink : IAsyncDisposable
    {
        private readonly Socket _listener = new(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        private readonly Task _loop;

        public AckSink()
        {
            _listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
            _listener.Listen(512);
            EndPoint = (IPEndPoint)_listener.LocalEndPoint!;
            _loop = Task.Run(async () =>
            {
                while (true)
                {
                    Socket s;
                    try { s = await _listener.AcceptAsync().ConfigureAwait(false); }
                    catch (Exception e) when (e is SocketException or ObjectDisposedException) { return; }
                    _ = Task.Run(() => Serve(s));
                }
            });
        }

        public IPEndPoint EndPoint { get; }

        private static async Task Serve(Socket s)
        {
            await using var stream = new NetworkStream(s, ownsSocket: true);
            await ServeAsync(stream).ConfigureAwait(false);
        }

        /// <summary>The sink's side of one connection or in-process session.</summary>
        public static async Task ServeAsync(Stream s)
        {
            var buffer = new byte[256 * 1024];
            try
            {
                await s.ReadExactlyAsync(buffer.AsMemory(0, 8)).ConfigureAwait(false);
                long left = BinaryPrimitives.ReadInt64BigEndian(buffer);
                while (left > 0)
                {
                    int n = await s.ReadAsync(buffer.AsMemory(0, (int)Math.Min(left, buffer.Length))).ConfigureAwait(false);
                    if (n == 0) return;
                    left -= n;
                }
                await s.WriteAsync(new byte[] { 1 }).ConfigureAwait(false);
                while (await s.ReadAsync(buffer).ConfigureAwait(false) > 0) { }
            }
            catch (Exception e) when (e is IOException or SocketException or EndOfStreamException) { }
        }

        public async ValueTask DisposeAsync()
        {
            _listener.Dispose();
            await _loop.ConfigureAwait(false);
        }
    }
}
