using System.Buffers.Binary;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text.Json.Nodes;
using PtHost.Testing;
using PtHost.Transports.Jet;

namespace PtHost.Benchmarks;

/// <summary>
/// Relays at scale (issue 20, docs/deploy.md), all in one run and interleaved per repetition:
/// Zephyr pair set-up rate through three cluster instances behind HAProxy against one lone instance
/// directly; one stream through a pair that meets on one instance against one that crosses the
/// internal link (spec/zephyr.md §8.3: the cost of the hop); and a lone relay with metrics on
/// (scraped every second) against one with metrics off; aggregate throughput of <see cref="Streams"/> concurrent
/// bulk streams through HAProxy to the three instances against one instance directly; and the same for JET
/// (three instances behind HAProxy hashing the association id, docs/deploy.md §1): associations set up per
/// second and the aggregate of concurrent streams, against one instance directly.
/// </summary>
public sealed class ScaleScenario : IScenario
{
    private const int InFlight = 32;

    /// <summary>Concurrent bulk streams in the aggregate throughput figures.</summary>
    private const int Streams = 6;

    public string Name => "scale";
    public string Title => "Relays at scale: three Zephyr instances behind HAProxy (link-only and direct joins), the cross-instance hop, metrics on vs off (relay and plain chain)";

    public async Task RunAsync(Context ctx, ScenarioRun run)
    {
        int pairs = ctx.ConnTotal;
        long bytes = Math.Min(ctx.StreamBytes, 1L << 30);
        var lone = new Figure { Key = "scale_zephyr_lone_pairs_per_second", Label = $"Zephyr pairs set up per second, one instance directly ({pairs}, {InFlight} in flight)", Unit = "pairs/s", Format = "0" };
        var cluster = new Figure { Key = "scale_zephyr_cluster_pairs_per_second", Label = "the same through HAProxy to three cluster instances (2 of 3 pairs cross)", Unit = "pairs/s", Format = "0" };
        var clusterRatio = new Figure { Key = "scale_zephyr_cluster_ratio", Label = "ratio to one instance (2 cores shared by all)", Unit = "", Indent = 1 };
        var same = new Figure { Key = "scale_zephyr_same_gbps", Label = $"Stream through a pair on one cluster instance ({bytes >> 20} MiB)", Unit = "Gbit/s" };
        var cross = new Figure { Key = "scale_zephyr_cross_gbps", Label = "Stream through a pair across two instances (internal link hop)", Unit = "Gbit/s" };
        var crossRatio = new Figure { Key = "scale_zephyr_cross_ratio", Label = "cross / same: the cost of the hop", Unit = "", Indent = 1 };
        var crossSetup = new Figure { Key = "scale_zephyr_cross_pairs_per_second", Label = "Pairs set up per second, every pair across two instances (direct, no HAProxy)", Unit = "pairs/s", Format = "0" };
        var sameSetup = new Figure { Key = "scale_zephyr_same_pairs_per_second", Label = "Pairs set up per second, every pair on one cluster instance", Unit = "pairs/s", Format = "0" };
        var crossSetupRatio = new Figure { Key = "scale_zephyr_cross_setup_ratio", Label = "cross / same", Unit = "", Indent = 1 };
        var metricsOff = new Figure { Key = "scale_zephyr_metrics_off_pairs_per_second", Label = "Pairs set up per second, lone relay, metrics off", Unit = "pairs/s", Format = "0" };
        var metricsOn = new Figure { Key = "scale_zephyr_metrics_on_pairs_per_second", Label = "the same with --metrics, scraped every second", Unit = "pairs/s", Format = "0" };
        var metricsRatio = new Figure { Key = "scale_zephyr_metrics_ratio", Label = "on / off", Unit = "", Indent = 1, Goal = Goal.AtLeast, Target = 0.9 };
        var offGbps = new Figure { Key = "scale_zephyr_metrics_off_gbps", Label = "Stream through the lone relay, metrics off", Unit = "Gbit/s" };
        var onGbps = new Figure { Key = "scale_zephyr_metrics_on_gbps", Label = "the same with --metrics, scraped every second", Unit = "Gbit/s" };
        var onGbpsRatio = new Figure { Key = "scale_zephyr_metrics_gbps_ratio", Label = "on / off", Unit = "", Indent = 1, Goal = Goal.AtLeast, Target = 0.9 };
        var chainOff = new Figure { Key = "scale_chain_metrics_off_per_second", Label = $"SOCKS sessions per second through the plain chain, metrics off ({ctx.ConnTotal}, {ctx.ConnConcurrency} in flight)", Unit = "conn/s", Format = "0" };
        var chainOn = new Figure { Key = "scale_chain_metrics_on_per_second", Label = "the same with \"metrics\" on client and server, each scraped every second", Unit = "conn/s", Format = "0" };
        var chainRatio = new Figure { Key = "scale_chain_metrics_ratio", Label = "on / off", Unit = "", Indent = 1, Goal = Goal.AtLeast, Target = 0.9 };
        long each = Math.Max(bytes / Streams, 16L << 20);
        var multiLone = new Figure { Key = "scale_zephyr_lone_multi_gbps", Label = $"{Streams} concurrent streams through one Zephyr instance directly ({each >> 20} MiB each), aggregate", Unit = "Gbit/s" };
        var multiCluster = new Figure { Key = "scale_zephyr_cluster_multi_gbps", Label = $"the same through HAProxy to three cluster instances", Unit = "Gbit/s" };
        var multiRatio = new Figure { Key = "scale_zephyr_multi_ratio", Label = "ratio to one instance (2 cores shared by all)", Unit = "", Indent = 1 };
        // spec/zephyr.md §8.6 (direct joins): the client's peer through HAProxy, the server's at the instance the client's zid names.
        var direct = new Figure { Key = "scale_zephyr_direct_pairs_per_second", Label = "the same with direct joins (§8.6): one peer through HAProxy, the other at the instance its zid names (no link)", Unit = "pairs/s", Format = "0" };
        var directRatio = new Figure { Key = "scale_zephyr_direct_ratio", Label = "ratio to one instance", Unit = "", Indent = 1 };
        var multiDirect = new Figure { Key = "scale_zephyr_direct_multi_gbps", Label = "the same with direct joins (client side through HAProxy, server side at its instance)", Unit = "Gbit/s" };
        var multiDirectRatio = new Figure { Key = "scale_zephyr_direct_multi_ratio", Label = "ratio to one instance", Unit = "", Indent = 1 };
        var cpuLone = new Figure { Key = "scale_zephyr_lone_cpu_per_gib", Label = $"Relay-tier CPU per GiB relayed, {Streams} streams: one instance (user+system, /proc/PID/stat)", Unit = "CPU s/GiB" };
        var cpuCluster = new Figure { Key = "scale_zephyr_cluster_cpu_per_gib", Label = "three instances + HAProxy, link-only cluster", Unit = "CPU s/GiB" };
        var cpuDirect = new Figure { Key = "scale_zephyr_direct_cpu_per_gib", Label = "three instances + HAProxy, direct joins", Unit = "CPU s/GiB" };
        var cpuDirectHaproxy = new Figure { Key = "scale_zephyr_direct_haproxy_cpu_per_gib", Label = "of which HAProxy", Unit = "CPU s/GiB", Indent = 1 };
        // The same direct joins with HAProxy splicing both ways (option splice-request/-response, tune.pipesize 512 KiB).
        var multiSplice = new Figure { Key = "scale_zephyr_direct_splice_multi_gbps", Label = $"{Streams} streams, direct joins, HAProxy splicing (splice-request/-response, pipesize 512 KiB)", Unit = "Gbit/s" };
        var multiSpliceRatio = new Figure { Key = "scale_zephyr_direct_splice_multi_ratio", Label = "ratio to one instance", Unit = "", Indent = 1 };
        var cpuSplice = new Figure { Key = "scale_zephyr_direct_splice_cpu_per_gib", Label = "relay-tier CPU per GiB, direct joins, HAProxy splicing", Unit = "CPU s/GiB" };
        var cpuSpliceHaproxy = new Figure { Key = "scale_zephyr_direct_splice_haproxy_cpu_per_gib", Label = "of which HAProxy", Unit = "CPU s/GiB", Indent = 1 };
        // Issue 20's "no regression per core": aggregate Gbit/s over the relay tier's cores busy (its CPU seconds / wall seconds).
        var coreLone = new Figure { Key = "scale_zephyr_lone_gbps_per_core", Label = $"Throughput per relay-tier core, {Streams} streams: one instance (aggregate / (tier CPU s / wall s); clients, servers and HAProxy share the 2 cores)", Unit = "Gbit/s/core" };
        var coreCluster = new Figure { Key = "scale_zephyr_cluster_gbps_per_core", Label = "three instances + HAProxy, link-only cluster", Unit = "Gbit/s/core" };
        var coreClusterRatio = new Figure { Key = "scale_zephyr_cluster_per_core_ratio", Label = "ratio to one instance", Unit = "", Indent = 1 };
        var coreDirect = new Figure { Key = "scale_zephyr_direct_gbps_per_core", Label = "three instances + HAProxy, direct joins", Unit = "Gbit/s/core" };
        var coreDirectRatio = new Figure { Key = "scale_zephyr_direct_per_core_ratio", Label = "ratio to one instance", Unit = "", Indent = 1 };
        var coreSplice = new Figure { Key = "scale_zephyr_direct_splice_gbps_per_core", Label = "three instances + HAProxy, direct joins, HAProxy splicing", Unit = "Gbit/s/core" };
        var coreSpliceRatio = new Figure { Key = "scale_zephyr_direct_splice_per_core_ratio", Label = "ratio to one instance (issue 20: no regression per core)", Unit = "", Indent = 1, Goal = Goal.AtLeast, Target = 1.0 };
        var coreSpliceInstances = new Figure { Key = "scale_zephyr_direct_splice_instances_gbps_per_core", Label = "the instances alone (HAProxy's CPU left out)", Unit = "Gbit/s/core", Indent = 1 };
        var coreSpliceInstancesRatio = new Figure { Key = "scale_zephyr_direct_splice_instances_per_core_ratio", Label = "ratio to one instance", Unit = "", Indent = 1 };
        var jetLone = new Figure { Key = "scale_jet_lone_associations_per_second", Label = $"JET associations set up per second, one instance directly ({pairs}, {InFlight} in flight; create, gather, accept, connect, 32 B checked, delete)", Unit = "assoc/s", Format = "0" };
        var jetCluster = new Figure { Key = "scale_jet_cluster_associations_per_second", Label = "the same, REST through HAProxy (hash of the association id) to three instances", Unit = "assoc/s", Format = "0" };
        var jetRatio = new Figure { Key = "scale_jet_cluster_ratio", Label = "ratio to one instance", Unit = "", Indent = 1 };
        var jetMultiLone = new Figure { Key = "scale_jet_lone_multi_gbps", Label = $"{Streams} concurrent streams through JET associations on one instance ({each >> 20} MiB each), aggregate", Unit = "Gbit/s" };
        var jetMultiCluster = new Figure { Key = "scale_jet_cluster_multi_gbps", Label = "the same, associations made through HAProxy (spread over three instances)", Unit = "Gbit/s" };
        var jetMultiRatio = new Figure { Key = "scale_jet_multi_ratio", Label = "ratio to one instance", Unit = "", Indent = 1 };
        run.Add(chainOff, chainOn, chainRatio);
        run.Add(multiLone, multiCluster, multiRatio, multiDirect, multiDirectRatio, cpuLone, cpuCluster, cpuDirect, cpuDirectHaproxy, multiSplice, multiSpliceRatio, cpuSplice, cpuSpliceHaproxy,
            coreLone, coreCluster, coreClusterRatio, coreDirect, coreDirectRatio, coreSplice, coreSpliceRatio, coreSpliceInstances, coreSpliceInstancesRatio, jetLone, jetCluster, jetRatio, jetMultiLone, jetMultiCluster, jetMultiRatio);
        run.Add(lone, cluster, clusterRatio, direct, directRatio, sameSetup, crossSetup, crossSetupRatio, same, cross, crossRatio, metricsOff, metricsOn, metricsRatio, offGbps, onGbps, onGbpsRatio);
        var raw = run.Raw("scale");
        try
        {
            if (Environment.GetEnvironmentVariable("PTHOST_EXE") is null) Environment.SetEnvironmentVariable("PTHOST_EXE", ctx.PtHost); // PtHost.Testing's instances
            string dir = Directory.CreateTempSubdirectory("pthost-bench-scale-").FullName;
            var instances = await ZephyrInstance.StartClusterAsync(3, dir).ConfigureAwait(false);
            try
            {
                string servers = string.Join("\n", instances.Select(i => $"    server zephyr{i.Number} {i.EndPoint} check inter 1s"));
                await using var haproxy = await HaproxyProcess.StartAsync(ZephyrHaproxyConfig(servers, 8000, splice: false), 1).ConfigureAwait(false);
                // The same backends behind a splicing HAProxy (fewer connections: each spliced one holds a pipe, 2 more descriptors).
                await using var splicing = await HaproxyProcess.StartAsync(ZephyrHaproxyConfig(servers, 4000, splice: true), 1).ConfigureAwait(false);
                // JET: three instances behind HAProxy hashing the association id (docs/deploy.md §1), and a lone instance.
                var jets = new List<JetInstance>();
                for (int n = 1; n <= 4; n++) jets.Add(await JetInstance.StartAsync(n <= 3 ? $"jet{n}" : "jet-lone").ConfigureAwait(false));
                await using var jetsGone = new AsyncDisposables(jets);
                string jetServers = string.Join("\n", jets.Take(3).Select(j => $"    server {j.Id} {j.Http} check inter 1s"));
                await using var jetProxy = await HaproxyProcess.StartAsync($"""
                    global
                        maxconn 8000
                        stats socket @STATS@ mode 600 level admin
                    defaults
                        mode http
                        timeout connect 2s
                        timeout client 60s
                        timeout server 60s
                    frontend jet_rest
                        bind @LISTENER0@
                        default_backend jet
                    backend jet
                        balance hash path,field(4,/)
                        hash-type consistent
                    {jetServers}

                    """, 1).ConfigureAwait(false);
                using var jetLoneRest = JetRest(jets[3].Http);
                using var jetClusterRest = JetRest(jetProxy.Listeners[0]);
                await using var off = await ZephyrRelayChild.StartAsync(ctx.PtHost, ["--max-per-source", "100000"]).ConfigureAwait(false);
                await using var on = await ZephyrRelayChild.StartAsync(ctx.PtHost, ["--max-per-source", "100000", "--metrics", "127.0.0.1:0"]).ConfigureAwait(false);
                string onLine = on.ListenLine;
                string scrapeUrl = $"http://{onLine[(onLine.IndexOf("metrics=", StringComparison.Ordinal) + 8)..]}/metrics";
                using var scraper = new HttpClient();
                using var stopScraping = new CancellationTokenSource();
                var scraping = Task.Run(async () =>
                {
                    while (!stopScraping.IsCancellationRequested)
                    {
                        try { await scraper.GetStringAsync(scrapeUrl, stopScraping.Token).ConfigureAwait(false); }
                        catch (Exception e) when (e is HttpRequestException or OperationCanceledException) { }
                        try { await Task.Delay(1000, stopScraping.Token).ConfigureAwait(false); } catch (OperationCanceledException) { }
                    }
                });
                var timeout = TimeSpan.FromSeconds(120);
                for (int rep = 0; rep < ctx.Repetitions; rep++)
                {
                    string step = $"scale {rep + 1}/{ctx.Repetitions}";
                    async Task<double> Rate(Figure f, string kind, IPEndPoint a, IPEndPoint? b, Func<uint, IPEndPoint>? direct = null)
                    {
                        ctx.Say($"{step}: {kind}");
                        return await ScenarioRun.AttemptAsync(f, async () =>
                        {
                            var r = await PairRateAsync(a, direct ?? (_ => b!), pairs).ConfigureAwait(false);
                            raw.Add(ScenarioRun.Tag(new JsonObject { ["pairs_per_second"] = r }, kind, rep));
                            return r;
                        }).ConfigureAwait(false);
                    }
                    async Task<double> Stream(Figure f, string kind, IPEndPoint a, IPEndPoint b)
                    {
                        ctx.Say($"{step}: {kind}");
                        return await ScenarioRun.AttemptAsync(f, async () =>
                        {
                            var (x, y) = await PairAsync(a, b).ConfigureAwait(false);
                            using var _x = x;
                            using var _y = y;
                            var r = await StreamPump.RunAsync(x, y, bytes, timeout).ConfigureAwait(false);
                            raw.Add(ScenarioRun.Tag(new JsonObject { ["gbps"] = r.Gbps, ["bytes"] = r.Received }, kind, rep));
                            return r.Gbps;
                        }).ConfigureAwait(false);
                    }
                    double l = await Rate(lone, "lone", off.EndPoint, off.EndPoint).ConfigureAwait(false);
                    double c = await Rate(cluster, "cluster_haproxy", haproxy.Listeners[0], haproxy.Listeners[0]).ConfigureAwait(false);
                    ScenarioRun.AddRatio(clusterRatio, c, l, cluster, lone);
                    IPEndPoint InstanceOf(uint zid) => instances[Tag(zid) - 1].EndPoint;
                    double d = await Rate(direct, "direct_haproxy", haproxy.Listeners[0], null, InstanceOf).ConfigureAwait(false);
                    ScenarioRun.AddRatio(directRatio, d, l, direct, lone);
                    double ss = await Rate(sameSetup, "same_instance", instances[0].EndPoint, instances[0].EndPoint).ConfigureAwait(false);
                    double cs = await Rate(crossSetup, "cross_instance", instances[0].EndPoint, instances[1].EndPoint).ConfigureAwait(false);
                    ScenarioRun.AddRatio(crossSetupRatio, cs, ss, crossSetup, sameSetup);
                    double sg = await Stream(same, "same_stream", instances[0].EndPoint, instances[0].EndPoint).ConfigureAwait(false);
                    double cg = await Stream(cross, "cross_stream", instances[0].EndPoint, instances[1].EndPoint).ConfigureAwait(false);
                    ScenarioRun.AddRatio(crossRatio, cg, sg, cross, same);
                    double mo = await Rate(metricsOff, "metrics_off", off.EndPoint, off.EndPoint).ConfigureAwait(false);
                    double mn = await Rate(metricsOn, "metrics_on", on.EndPoint, on.EndPoint).ConfigureAwait(false);
                    ScenarioRun.AddRatio(metricsRatio, mn, mo, metricsOn, metricsOff);
                    double go = await Stream(offGbps, "metrics_off_stream", off.EndPoint, off.EndPoint).ConfigureAwait(false);
                    double gn = await Stream(onGbps, "metrics_on_stream", on.EndPoint, on.EndPoint).ConfigureAwait(false);
                    ScenarioRun.AddRatio(onGbpsRatio, gn, go, onGbps, offGbps);
                    async Task<double> ChainRate(Figure f, string kind, bool metrics)
                    {
                        ctx.Say($"{step}: {kind}");
                        return await ScenarioRun.AttemptAsync(f, async () =>
                        {
                            await using var echo = new EchoServer(recordLimit: 0);
                            await using var chain = await Chain.StartAsync(ctx.PtHost, ctx.NewStateDir(), echo.EndPoint.Port, noSplice: false, metrics).ConfigureAwait(false);
                            using var stop = new CancellationTokenSource();
                            var scrapes = chain.Metrics.Select(ep => Task.Run(async () =>
                            {
                                while (!stop.IsCancellationRequested)
                                {
                                    try { await scraper.GetStringAsync($"http://{ep}/metrics", stop.Token).ConfigureAwait(false); }
                                    catch (Exception e) when (e is HttpRequestException or OperationCanceledException) { }
                                    try { await Task.Delay(1000, stop.Token).ConfigureAwait(false); } catch (OperationCanceledException) { }
                                }
                            })).ToArray();
                            var r = await Measurements.ConnRateAsync(chain.Socks, echo.EndPoint, [chain.Client.Pid, chain.Server.Pid], ctx.ConnTotal, ctx.ConnConcurrency, Math.Min(500, ctx.ConnTotal)).ConfigureAwait(false);
                            await stop.CancelAsync().ConfigureAwait(false);
                            await Task.WhenAll(scrapes).ConfigureAwait(false);
                            raw.Add(ScenarioRun.Tag(r.Raw, kind, rep));
                            if (r.Failures > 0) f.Note = $"{r.Failures} failed: {r.FirstError}";
                            return r.PerSecond;
                        }).ConfigureAwait(false);
                    }
                    var perCoreNow = new Dictionary<Figure, double>();
                    async Task<double> Multi(Figure f, string kind, Func<Task<(Socket A, Socket B, IAsyncDisposable Held)>> open, int[]? tier = null, Figure? cpuFigure = null, Figure? perCore = null)
                    {
                        ctx.Say($"{step}: {kind}");
                        return await ScenarioRun.AttemptAsync(f, async () =>
                        {
                            var (r, cpu, seconds) = await MultiStreamAsync(open, each, timeout, tier ?? []).ConfigureAwait(false);
                            // Cores the tier kept busy on average; the aggregate per such core (= 8.59 / tier CPU s per GiB).
                            double gib = r * 1e9 / 8 * seconds / (1L << 30), cores = cpu.Sum() * gib / seconds;
                            raw.Add(ScenarioRun.Tag(new JsonObject
                            {
                                ["gbps"] = r, ["streams"] = Streams, ["bytes_each"] = each, ["tier_cpu_seconds_per_gib"] = cpu.Sum(),
                                ["cpu_seconds_per_gib_by_pid"] = new JsonArray([.. cpu.Select(c => JsonValue.Create(c))]),
                                ["wall_seconds"] = seconds, ["tier_cores_busy"] = cores, ["gbps_per_tier_core"] = cores > 0 ? r / cores : null,
                            }, kind, rep));
                            if (perCore is not null && cores > 0) perCoreNow[perCore] = r / cores;
                            // The instances alone: every pid of the splicing tier but the last (HAProxy).
                            if (perCore == coreSplice && cpu[..^1].Sum() > 0) perCoreNow[coreSpliceInstances] = r / (cpu[..^1].Sum() * gib / seconds);
                            cpuFigure?.Samples.Add(cpu.Sum());
                            // The last pid of a cluster tier is HAProxy.
                            if (cpuFigure == cpuDirect) cpuDirectHaproxy.Samples.Add(cpu[^1]);
                            if (cpuFigure == cpuSplice) cpuSpliceHaproxy.Samples.Add(cpu[^1]);
                            return r;
                        }).ConfigureAwait(false);
                    }
                    async Task<(Socket, Socket, IAsyncDisposable)> ZephyrStream(IPEndPoint relay, Func<uint, IPEndPoint>? other = null)
                    {
                        var (x, y) = await PairAsync(relay, other ?? (_ => relay)).ConfigureAwait(false);
                        return (x, y, new AsyncDisposables([x, y]));
                    }
                    int[] clusterTier = [.. instances.Select(i => i.Process.Pid), haproxy.Process.Pid];
                    double ml = await Multi(multiLone, "multi_lone", () => ZephyrStream(off.EndPoint), [off.Child.Pid], cpuLone, coreLone).ConfigureAwait(false);
                    double mc = await Multi(multiCluster, "multi_cluster_haproxy", () => ZephyrStream(haproxy.Listeners[0]), clusterTier, cpuCluster, coreCluster).ConfigureAwait(false);
                    ScenarioRun.AddRatio(multiRatio, mc, ml, multiCluster, multiLone);
                    double md = await Multi(multiDirect, "multi_direct_haproxy", () => ZephyrStream(haproxy.Listeners[0], InstanceOf), clusterTier, cpuDirect, coreDirect).ConfigureAwait(false);
                    ScenarioRun.AddRatio(multiDirectRatio, md, ml, multiDirect, multiLone);
                    int[] splicingTier = [.. instances.Select(i => i.Process.Pid), splicing.Process.Pid];
                    double msp = await Multi(multiSplice, "multi_direct_haproxy_splice", () => ZephyrStream(splicing.Listeners[0], InstanceOf), splicingTier, cpuSplice, coreSplice).ConfigureAwait(false);
                    ScenarioRun.AddRatio(multiSpliceRatio, msp, ml, multiSplice, multiLone);
                    double LastOf(Figure f)
                    {
                        if (!perCoreNow.TryGetValue(f, out double v)) return double.NaN;
                        f.Samples.Add(v);
                        return v;
                    }
                    double perCoreLone = LastOf(coreLone);
                    ScenarioRun.AddRatio(coreClusterRatio, LastOf(coreCluster), perCoreLone, coreCluster, coreLone);
                    ScenarioRun.AddRatio(coreDirectRatio, LastOf(coreDirect), perCoreLone, coreDirect, coreLone);
                    ScenarioRun.AddRatio(coreSpliceRatio, LastOf(coreSplice), perCoreLone, coreSplice, coreLone);
                    ScenarioRun.AddRatio(coreSpliceInstancesRatio, LastOf(coreSpliceInstances), perCoreLone, coreSpliceInstances, coreLone);
                    async Task<double> JetRate(Figure f, string kind, HttpClient rest)
                    {
                        ctx.Say($"{step}: {kind}");
                        return await ScenarioRun.AttemptAsync(f, async () =>
                        {
                            var r = await JetAssociationRateAsync(rest, pairs).ConfigureAwait(false);
                            raw.Add(ScenarioRun.Tag(new JsonObject { ["associations_per_second"] = r }, kind, rep));
                            return r;
                        }).ConfigureAwait(false);
                    }
                    async Task<(Socket, Socket, IAsyncDisposable)> JetStream(HttpClient rest)
                    {
                        var h = await OpenJetAsync(rest).ConfigureAwait(false);
                        return (h.Connector.Socket, h.Acceptor.Socket, h);
                    }
                    double jl = await JetRate(jetLone, "jet_lone", jetLoneRest).ConfigureAwait(false);
                    double jc = await JetRate(jetCluster, "jet_cluster_haproxy", jetClusterRest).ConfigureAwait(false);
                    ScenarioRun.AddRatio(jetRatio, jc, jl, jetCluster, jetLone);
                    double jml = await Multi(jetMultiLone, "jet_multi_lone", () => JetStream(jetLoneRest)).ConfigureAwait(false);
                    double jmc = await Multi(jetMultiCluster, "jet_multi_cluster_haproxy", () => JetStream(jetClusterRest)).ConfigureAwait(false);
                    ScenarioRun.AddRatio(jetMultiRatio, jmc, jml, jetMultiCluster, jetMultiLone);
                    double co = await ChainRate(chainOff, "chain_metrics_off", false).ConfigureAwait(false);
                    double cn = await ChainRate(chainOn, "chain_metrics_on", true).ConfigureAwait(false);
                    ScenarioRun.AddRatio(chainRatio, cn, co, chainOn, chainOff);
                }
                await stopScraping.CancelAsync().ConfigureAwait(false);
                await scraping.ConfigureAwait(false);
            }
            finally
            {
                foreach (var i in instances) await i.DisposeAsync().ConfigureAwait(false);
            }
        }
        catch (Exception e) when (ScenarioRun.IsMeasurementFailure(e))
        {
            run.FailRemaining(e);
        }
    }

    /// <summary>HAProxy in front of the Zephyr instances, round-robin; <paramref name="splice"/>: the kernel moves the bytes both ways (docs/deploy.md §1).</summary>
    private static string ZephyrHaproxyConfig(string servers, int maxconn, bool splice) => $"""
        global
            maxconn {maxconn}
            stats socket @STATS@ mode 600 level admin
        {(splice ? "    tune.pipesize 524288\n" : "")}defaults
            mode tcp
        {(splice ? "    option splice-request\n    option splice-response\n" : "")}    timeout connect 2s
            timeout client 60s
            timeout server 60s
        frontend zephyr
            bind @LISTENER0@
            default_backend zephyr
        backend zephyr
            balance roundrobin
        {servers}

        """;

    /// <summary>
    /// <see cref="Streams"/> streams opened with <paramref name="open"/>, then <paramref name="each"/> bytes through every one
    /// at once; the aggregate in Gbit/s (all bytes over the wall time of the slowest), and the CPU seconds per GiB each
    /// process of <paramref name="tier"/> spent meanwhile.
    /// </summary>
    private static async Task<(double Gbps, double[] CpuPerGiB, double Seconds)> MultiStreamAsync(Func<Task<(Socket A, Socket B, IAsyncDisposable Held)>> open, long each, TimeSpan timeout, int[] tier)
    {
        var held = new List<(Socket A, Socket B, IAsyncDisposable Held)>();
        try
        {
            for (int i = 0; i < Streams; i++) held.Add(await open().ConfigureAwait(false));
            double[] cpu0 = [.. tier.Select(Sys.CpuSeconds)];
            var clock = Stopwatch.StartNew();
            var results = await Task.WhenAll(held.Select(h => StreamPump.RunAsync(h.A, h.B, each, timeout))).ConfigureAwait(false);
            double seconds = clock.Elapsed.TotalSeconds;
            long received = results.Sum(r => r.Received);
            double gib = received / (double)(1L << 30);
            return (received * 8 / seconds / 1e9, [.. tier.Select((pid, i) => (Sys.CpuSeconds(pid) - cpu0[i]) / gib)], seconds);
        }
        finally
        {
            foreach (var h in held) await h.Held.DisposeAsync().ConfigureAwait(false);
        }
    }

    private static HttpClient JetRest(IPEndPoint http) =>
        new(new SocketsHttpHandler { MaxConnectionsPerServer = InFlight }) { BaseAddress = new Uri($"http://{http}"), Timeout = TimeSpan.FromSeconds(20) };

    /// <summary><paramref name="count"/> JET associations, <see cref="InFlight"/> at once: each set up, 32 bytes checked across, deleted.</summary>
    private static async Task<double> JetAssociationRateAsync(HttpClient rest, int count)
    {
        int next = -1;
        var clock = Stopwatch.StartNew();
        await Task.WhenAll(Enumerable.Range(0, InFlight).Select(_ => Task.Run(async () =>
        {
            var payload = new byte[32];
            while (Interlocked.Increment(ref next) < count)
            {
                var h = await OpenJetAsync(rest).ConfigureAwait(false);
                await using (h.ConfigureAwait(false))
                {
                    Random.Shared.NextBytes(payload);
                    await h.Connector.SendAsync(payload).ConfigureAwait(false);
                    if (!(await h.Acceptor.ReadExactlyAsync(payload.Length).ConfigureAwait(false)).AsSpan().SequenceEqual(payload))
                        throw new IOException("an association delivered other bytes");
                }
                using var deleted = await rest.DeleteAsync($"/jet/association/{h.Aid}").ConfigureAwait(false);
                deleted.EnsureSuccessStatusCode();
            }
        }))).ConfigureAwait(false);
        return count / clock.Elapsed.TotalSeconds;
    }

    private sealed record JetHeld(Guid Aid, JetPeer Acceptor, JetPeer Connector) : IAsyncDisposable
    {
        public async ValueTask DisposeAsync()
        {
            await Connector.DisposeAsync().ConfigureAwait(false);
            await Acceptor.DisposeAsync().ConfigureAwait(false);
        }
    }

    /// <summary>spec/jet.md §5: create and gather over REST (through whatever <paramref name="rest"/> points at), then accept and connect on the tcp candidate the owner named.</summary>
    private static async Task<JetHeld> OpenJetAsync(HttpClient rest)
    {
        var aid = Guid.NewGuid();
        using (var created = await rest.PostAsync($"/jet/association/{aid}", null).ConfigureAwait(false)) created.EnsureSuccessStatusCode();
        using var gathered = await rest.PostAsync($"/jet/gather/{aid}", null).ConfigureAwait(false);
        gathered.EnsureSuccessStatusCode();
        var candidates = JsonNode.Parse(await gathered.Content.ReadAsStringAsync().ConfigureAwait(false))!["candidates"]!.AsArray();
        var tcp = candidates.First(c => ((string)c!["url"]!).StartsWith("tcp://", StringComparison.Ordinal))!;
        var cid = Guid.Parse((string)tcp["id"]!);
        var url = new Uri((string)tcp["url"]!);
        var owner = new IPEndPoint(IPAddress.Parse(url.Host), url.Port);
        var acceptor = await JetPeer.ConnectAsync(owner).ConfigureAwait(false);
        try
        {
            await acceptor.AcceptAsync(aid, cid, owner.ToString()).ConfigureAwait(false);
            var connector = await JetPeer.ConnectAsync(owner).ConfigureAwait(false);
            try
            {
                await connector.SendRequestAsync(JetWire.BuildRequest(JetMethod.Connect, aid, cid, owner.ToString())).ConfigureAwait(false);
                var response = await connector.ReadResponseAsync().ConfigureAwait(false);
                if (response.Status != 200) throw new IOException($"JET connect answered {response.Status}");
                return new JetHeld(aid, acceptor, connector);
            }
            catch
            {
                await connector.DisposeAsync().ConfigureAwait(false);
                throw;
            }
        }
        catch
        {
            await acceptor.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>Disposes what it holds, in order.</summary>
    private sealed class AsyncDisposables(IEnumerable<object> items) : IAsyncDisposable
    {
        public async ValueTask DisposeAsync()
        {
            foreach (var item in items)
            {
                if (item is IAsyncDisposable a) await a.DisposeAsync().ConfigureAwait(false);
                else if (item is IDisposable d) d.Dispose();
            }
        }
    }

    /// <summary><paramref name="count"/> pairs, <see cref="InFlight"/> at once: one peer joins at <paramref name="a"/>, the other at <paramref name="b"/>, 32 bytes checked across, both closed.</summary>
    private static async Task<double> PairRateAsync(IPEndPoint a, Func<uint, IPEndPoint> b, int count)
    {
        int next = -1;
        var clock = Stopwatch.StartNew();
        await Task.WhenAll(Enumerable.Range(0, InFlight).Select(_ => Task.Run(async () =>
        {
            var payload = new byte[32];
            var got = new byte[32];
            while (Interlocked.Increment(ref next) < count)
            {
                var (x, y) = await PairAsync(a, b).ConfigureAwait(false);
                using var _x = x;
                using var _y = y;
                Random.Shared.NextBytes(payload);
                await x.SendAsync(payload, SocketFlags.None).ConfigureAwait(false);
                await ReadExactlyAsync(y, got).ConfigureAwait(false);
                if (!got.AsSpan().SequenceEqual(payload)) throw new IOException("a pair delivered other bytes");
            }
        }))).ConfigureAwait(false);
        return count / clock.Elapsed.TotalSeconds;
    }

    /// <summary>spec/zephyr.md §8.1: the instance number a cluster zid carries.</summary>
    private static int Tag(uint zid) => (int)(zid >> 27) & 15;

    private static Task<(Socket, Socket)> PairAsync(IPEndPoint a, IPEndPoint b) => PairAsync(a, _ => b);

    /// <summary>One peer joins at <paramref name="a"/>; the other where <paramref name="b"/> says for the first one's zid (a direct join, §8.6).</summary>
    private static async Task<(Socket, Socket)> PairAsync(IPEndPoint a, Func<uint, IPEndPoint> b)
    {
        var (x, zx) = await JoinAsync(a).ConfigureAwait(false);
        try
        {
            var (y, zy) = await JoinAsync(b(zx)).ConfigureAwait(false);
            await x.SendAsync(StreamPump.ZephyrMessage(zy), SocketFlags.None).ConfigureAwait(false);
            await y.SendAsync(StreamPump.ZephyrMessage(zx), SocketFlags.None).ConfigureAwait(false);
            return (x, y);
        }
        catch
        {
            x.Dispose();
            throw;
        }
    }

    private static async Task<(Socket, uint)> JoinAsync(IPEndPoint relay)
    {
        var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        try
        {
            using var limit = new CancellationTokenSource(TimeSpan.FromSeconds(20));
            await s.ConnectAsync(relay, limit.Token).ConfigureAwait(false);
            var m = new byte[12];
            await ReadExactlyAsync(s, m, limit.Token).ConfigureAwait(false);
            return (s, BinaryPrimitives.ReadUInt32BigEndian(m.AsSpan(8)));
        }
        catch
        {
            s.Dispose();
            throw;
        }
    }

    private static async Task ReadExactlyAsync(Socket s, byte[] buffer, CancellationToken ct = default)
    {
        using var limit = ct.CanBeCanceled ? null : new CancellationTokenSource(TimeSpan.FromSeconds(20));
        int got = 0;
        while (got < buffer.Length)
        {
            int n = await s.ReceiveAsync(buffer.AsMemory(got), SocketFlags.None, limit?.Token ?? ct).ConfigureAwait(false);
            if (n == 0) throw new IOException($"closed after {got} of {buffer.Length} bytes");
            got += n;
        }
    }
}
