using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace PtHost.Benchmarks;

public static class Program
{
    private const string Usage = """
        usage: dotnet run -c Release --project tests/PtHost.Benchmarks -- [options]
          --quick          one repetition of each measurement, shorter runs
          --json FILE      where to write the results (default bench-results.json)
          --pthost PATH    use this pthost executable instead of publishing src/PtHost
          --only LIST      comma-separated subset of: throughput,connrate,memory,startup,jet
          --strict         exit 3 when a target is missed
          --pthost-env K=V add an environment variable to every pthost started (repeatable; for experiments)
          --micro          run only the in-process BenchmarkDotNet micro-benchmark of the SOCKS5 request parser
        """;

    public static async Task<int> Main(string[] args)
    {
        bool quick = false, strict = false, micro = false;
        string jsonPath = "bench-results.json";
        string? pthost = null;
        HashSet<string>? only = null;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--quick": quick = true; break;
                case "--strict": strict = true; break;
                case "--micro": micro = true; break;
                case "--json" when i + 1 < args.Length: jsonPath = args[++i]; break;
                case "--pthost" when i + 1 < args.Length: pthost = Path.GetFullPath(args[++i]); break;
                case "--only" when i + 1 < args.Length: only = [.. args[++i].Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)]; break;
                case "--pthost-env" when i + 1 < args.Length && args[i + 1].Contains('='):
                    var kv = args[++i].Split('=', 2);
                    Chain.ExtraEnv[kv[0]] = kv[1];
                    break;
                case "--help" or "-h": Console.WriteLine(Usage); return 0;
                default: Console.Error.WriteLine($"unknown or incomplete argument \"{args[i]}\"\n{Usage}"); return 64;
            }
        }
        string? repo = Sys.FindRepoRoot();

        if (micro)
        {
            string artifacts = Path.Combine(repo ?? Directory.GetCurrentDirectory(), "artifacts", "bench", "BenchmarkDotNet.Artifacts");
            return Socks5RequestParserBench.Run(artifacts, quick);
        }

        // Children never outlive the harness: exit, Ctrl-C, SIGTERM, and a watchdog.
        AppDomain.CurrentDomain.ProcessExit += (_, _) => Child.KillAll();
        Console.CancelKeyPress += (_, e) =>
        {
            e.Cancel = true;
            Console.Error.WriteLine("bench: interrupted; killing children");
            Child.KillAll();
            Environment.Exit(130);
        };
        using var sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, c =>
        {
            c.Cancel = true;
            Console.Error.WriteLine("bench: terminated; killing children");
            Child.KillAll();
            Environment.Exit(143);
        });
        var budget = quick ? TimeSpan.FromMinutes(15) : TimeSpan.FromMinutes(45);
        using var watchdog = new Timer(_ =>
        {
            Console.Error.WriteLine($"bench: watchdog: still running after {budget.TotalMinutes:0} min; killing children and exiting");
            Child.KillAll();
            Environment.Exit(2);
        }, null, budget, Timeout.InfiniteTimeSpan);

        var total = Stopwatch.StartNew();
        void Say(string s) => Console.Error.WriteLine($"bench [{total.Elapsed.TotalSeconds,6:0.0}s] {s}");
        string work = Path.Combine(Path.GetTempPath(), "pthost-bench-" + Environment.ProcessId.ToString(CultureInfo.InvariantCulture));
        Directory.CreateDirectory(work);
        try
        {
            if (pthost is null)
            {
                if (repo is null) { Console.Error.WriteLine("bench: cannot find PtHost.sln above the working directory; give --pthost PATH"); return 66; }
                pthost = await Sys.PublishPtHostAsync(repo, Path.Combine(repo, "artifacts", "bench", "pthost"), Say).ConfigureAwait(false);
            }
            else if (!File.Exists(pthost)) { Console.Error.WriteLine($"bench: {pthost} does not exist"); return 66; }

            var ctx = new Context
            {
                PtHost = pthost,
                WorkDir = work,
                Say = Say,
                Repetitions = quick ? 1 : 3,
                IperfSeconds = quick ? 3 : 5,
                ConnTotal = quick ? 2000 : 5000,
                ConnConcurrency = 64,
                IdleSessions = 1000,
                StartupRuns = quick ? 5 : 10,
            };
            var (figures, details) = await RunAllAsync(ctx, only ?? ["throughput", "connrate", "memory", "startup", "jet"]).ConfigureAwait(false);

            string header = $"PtHost benchmarks ({(quick ? "quick" : "full")}: {ctx.Repetitions} repetition(s), medians) on {Environment.ProcessorCount} CPUs, " +
                            $"Linux {Sys.KernelRelease()}, .NET {Environment.Version}";
            string table = Table.Render(figures);
            Console.WriteLine();
            Console.WriteLine(header);
            Console.WriteLine(table);

            var json = new JsonObject
            {
                ["generated_utc"] = DateTime.UtcNow.ToString("o", CultureInfo.InvariantCulture),
                ["mode"] = quick ? "quick" : "full",
                ["repetitions"] = ctx.Repetitions,
                ["machine"] = new JsonObject
                {
                    ["cpus"] = Environment.ProcessorCount,
                    ["cpu_model"] = Sys.CpuModel(),
                    ["kernel"] = Sys.KernelRelease(),
                    ["dotnet"] = Environment.Version.ToString(),
                    ["open_file_limit"] = Sys.OpenFileLimit(),
                },
                ["pthost"] = pthost,
                ["pthost_env"] = new JsonObject(Chain.ExtraEnv.Select(kv => KeyValuePair.Create(kv.Key, (JsonNode?)kv.Value))),
                ["git_commit"] = repo is null ? null : await GitCommitAsync(repo).ConfigureAwait(false),
                ["parameters"] = new JsonObject
                {
                    ["iperf_seconds"] = ctx.IperfSeconds,
                    ["conn_total"] = ctx.ConnTotal,
                    ["conn_concurrency"] = ctx.ConnConcurrency,
                    ["idle_sessions"] = ctx.IdleSessions,
                    ["startup_runs"] = ctx.StartupRuns,
                },
                ["figures"] = new JsonObject(figures.Select(f => KeyValuePair.Create(f.Key, (JsonNode?)f.ToJson()))),
                ["details"] = details,
                ["table"] = header + "\n" + table,
            };
            await File.WriteAllTextAsync(jsonPath, json.ToJsonString(new JsonSerializerOptions { WriteIndented = true })).ConfigureAwait(false);
            Console.WriteLine($"results written to {Path.GetFullPath(jsonPath)}");

            if (figures.Any(f => f.Error is not null)) return 1;
            if (strict && figures.Any(f => f.Pass == false)) return 3;
            return 0;
        }
        catch (Exception e)
        {
            Console.Error.WriteLine($"bench: failed: {e.Message}");
            return 1;
        }
        finally
        {
            Child.KillAll();
            try { Directory.Delete(work, recursive: true); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
        }
    }

    private static async Task<(List<Figure>, JsonObject)> RunAllAsync(Context ctx, HashSet<string> only)
    {
        var figures = new List<Figure>();
        var details = new JsonObject();

        // ------------------------------------------------ 1. throughput
        if (only.Contains("throughput"))
        {
            var direct = new Figure { Key = "throughput_direct_gbps", Label = "Throughput, direct iperf3 (reference)", Unit = "Gbit/s", Format = "0.00" };
            var splice = new Figure { Key = "throughput_chain_splice_gbps", Label = "Throughput via client->plain->server, splice", Unit = "Gbit/s" };
            var spliceRatio = new Figure { Key = "throughput_chain_splice_ratio", Label = "ratio to direct", Unit = "", Indent = 1, Goal = Goal.AtLeast, Target = 0.4 };
            var copy = new Figure { Key = "throughput_chain_nosplice_gbps", Label = "Throughput via client->plain->server, PTHOST_NO_SPLICE=1", Unit = "Gbit/s" };
            var copyRatio = new Figure { Key = "throughput_chain_nosplice_ratio", Label = "ratio to direct", Unit = "", Indent = 1, Goal = Goal.AtLeast, Target = 0.4 };
            figures.AddRange([direct, splice, spliceRatio, copy, copyRatio]);
            var raw = new JsonArray();
            details["throughput"] = raw;
            try
            {
                await Sys.EnsureToolsAsync([("iperf3", "iperf3"), ("proxychains4", "proxychains4")], ctx.Say).ConfigureAwait(false);
                ctx.Iperf3 = Sys.Which("iperf3")!;
                ctx.Proxychains = Sys.Which("proxychains4");
                // Interleaved per repetition, so each ratio compares runs made close together.
                for (int rep = 0; rep < ctx.Repetitions; rep++)
                {
                    ctx.Say($"throughput {rep + 1}/{ctx.Repetitions}: direct");
                    double d = await Attempt(direct, async () => { var r = await Measurements.IperfDirectAsync(ctx).ConfigureAwait(false); raw.Add(Tag(r.Raw, "direct", rep)); return r.Gbps; }).ConfigureAwait(false);
                    foreach (var (noSplice, fig, ratio) in new[] { (false, splice, spliceRatio), (true, copy, copyRatio) })
                    {
                        ctx.Say($"throughput {rep + 1}/{ctx.Repetitions}: chain, {(noSplice ? "no splice" : "splice")}");
                        double g = await Attempt(fig, async () =>
                        {
                            var r = await Measurements.IperfChainAsync(ctx, noSplice).ConfigureAwait(false);
                            raw.Add(Tag(r.Raw, noSplice ? "chain_nosplice" : "chain_splice", rep));
                            return r.Gbps;
                        }).ConfigureAwait(false);
                        if (!double.IsNaN(d) && !double.IsNaN(g) && d > 0) ratio.Samples.Add(g / d);
                        else if (ratio.Samples.Count == 0) ratio.Error ??= fig.Error ?? direct.Error;
                    }
                }
                if (spliceRatio.Samples.Count > 0) spliceRatio.Error = null;
                if (copyRatio.Samples.Count > 0) copyRatio.Error = null;
            }
            catch (Exception e) when (e is InvalidOperationException or TimeoutException or IOException)
            {
                ctx.Say("throughput: " + e.Message);
                foreach (var f in new[] { direct, splice, spliceRatio, copy, copyRatio }) f.Error ??= e.Message;
            }
        }

        // ------------------------------------------------ 2. connection set-up
        if (only.Contains("connrate"))
        {
            var rate = new Figure { Key = "socks_connections_per_second", Label = $"SOCKS sessions set up per second ({ctx.ConnTotal}, {ctx.ConnConcurrency} in flight)", Unit = "conn/s", Format = "0", Goal = Goal.AtLeast, Target = 2000 };
            var p50 = new Figure { Key = "socks_setup_p50_ms", Label = "set-up latency p50", Unit = "ms", Indent = 1 };
            var p99 = new Figure { Key = "socks_setup_p99_ms", Label = "set-up latency p99", Unit = "ms", Indent = 1 };
            var cpu = new Figure { Key = "pthost_cpu_ms_per_connection", Label = "pthost CPU per session (client+server)", Unit = "ms", Indent = 1, Format = "0.000" };
            var selfCpu = new Figure { Key = "harness_cpu_ms_per_connection", Label = "harness CPU per session (load + target)", Unit = "ms", Indent = 1, Format = "0.000" };
            figures.AddRange([rate, p50, p99, cpu, selfCpu]);
            var raw = new JsonArray();
            details["connrate"] = raw;
            for (int rep = 0; rep < ctx.Repetitions; rep++)
            {
                ctx.Say($"connection rate {rep + 1}/{ctx.Repetitions}");
                await Attempt(rate, async () =>
                {
                    var r = await Measurements.ConnRateAsync(ctx).ConfigureAwait(false);
                    p50.Samples.Add(r.P50Ms);
                    p99.Samples.Add(r.P99Ms);
                    cpu.Samples.Add(r.PtHostCpuMsPerConn);
                    selfCpu.Samples.Add(r.HarnessCpuMsPerConn);
                    raw.Add(Tag(r.Raw, "connrate", rep));
                    if (r.Failures > 0) rate.Note = $"{r.Failures} failed: {r.FirstError}";
                    return r.PerSecond;
                }).ConfigureAwait(false);
            }
        }

        // ------------------------------------------------ 3. idle session memory
        if (only.Contains("memory"))
        {
            int sessions = ctx.IdleSessions;
            long limit = Sys.OpenFileLimit();
            // The harness holds both ends (SOCKS client side and the target's accepted side) of each session.
            if (limit > 0 && limit < 2L * sessions + 256)
            {
                sessions = (int)Math.Max(100, (limit - 256) / 2);
                ctx.Say($"memory: open-file limit {limit} is low; measuring {sessions} sessions instead of {ctx.IdleSessions}");
            }
            var total = new Figure { Key = "idle_session_kib_total", Label = $"RSS per idle session, client+server ({sessions} sessions)", Unit = "KiB", Format = "0.0", Goal = Goal.AtMost, Target = 40 };
            var client = new Figure { Key = "idle_session_kib_client", Label = "client", Unit = "KiB", Format = "0.0", Indent = 1 };
            var server = new Figure { Key = "idle_session_kib_server", Label = "server", Unit = "KiB", Format = "0.0", Indent = 1 };
            figures.AddRange([total, client, server]);
            var raw = new JsonArray();
            details["memory"] = raw;
            for (int rep = 0; rep < ctx.Repetitions; rep++)
            {
                ctx.Say($"idle memory {rep + 1}/{ctx.Repetitions}: {sessions} sessions");
                await Attempt(total, async () =>
                {
                    var r = await Measurements.IdleMemoryAsync(ctx, sessions).ConfigureAwait(false);
                    client.Samples.Add(r.ClientPerSession);
                    server.Samples.Add(r.ServerPerSession);
                    r.Raw["rep"] = rep;
                    raw.Add(r.Raw);
                    return r.TotalPerSession;
                }).ConfigureAwait(false);
            }
        }

        // ------------------------------------------------ 4. start-up
        if (only.Contains("startup"))
        {
            var client = new Figure { Key = "startup_client_ms", Label = $"Start-up to CMETHODS DONE (client, {ctx.StartupRuns} runs)", Unit = "ms", Format = "0", Goal = Goal.AtMost, Target = 200 };
            var server = new Figure { Key = "startup_server_ms", Label = $"Start-up to SMETHODS DONE (server, {ctx.StartupRuns} runs)", Unit = "ms", Format = "0" };
            var floor = new Figure { Key = "startup_version_ms", Label = "runtime floor: pthost --version start to exit", Unit = "ms", Format = "0", Indent = 1 };
            figures.AddRange([client, server, floor]);
            ctx.Say($"start-up: {ctx.StartupRuns} runs each (after one unmeasured run)");
            try
            {
                await Measurements.StartupOnceAsync(ctx, server: false).ConfigureAwait(false);
                for (int i = 0; i < ctx.StartupRuns; i++)
                {
                    await Attempt(client, () => Measurements.StartupOnceAsync(ctx, server: false)).ConfigureAwait(false);
                    await Attempt(server, () => Measurements.StartupOnceAsync(ctx, server: true)).ConfigureAwait(false);
                    await Attempt(floor, () => Measurements.VersionRunAsync(ctx)).ConfigureAwait(false);
                }
            }
            catch (Exception e) when (e is InvalidOperationException or TimeoutException or IOException)
            {
                client.Error ??= e.Message;
                server.Error ??= e.Message;
                floor.Error ??= e.Message;
            }
        }
        // ------------------------------------------------ 5. jet (spec/jet.md; JetBench.cs)
        if (only.Contains("jet")) await JetBench.RunAsync(ctx, figures, details).ConfigureAwait(false);
        return (figures, details);
    }

    /// <summary>Runs one measurement; a failure is recorded on the figure (first error kept) and yields NaN.</summary>
    private static async Task<double> Attempt(Figure figure, Func<Task<double>> run)
    {
        try
        {
            double v = await run().ConfigureAwait(false);
            figure.Samples.Add(v);
            if (figure.Error is not null)
            {
                figure.Note = "some repetitions failed: " + figure.Error;
                figure.Error = null;
            }
            return v;
        }
        catch (Exception e) when (e is InvalidOperationException or TimeoutException or IOException or System.Net.Sockets.SocketException or UnauthorizedAccessException or FormatException)
        {
            Console.Error.WriteLine($"bench: {figure.Label}: {e.Message}");
            if (figure.Samples.Count == 0) figure.Error ??= e.Message;
            else figure.Note = "some repetitions failed: " + e.Message;
            return double.NaN;
        }
    }

    private static JsonObject Tag(JsonObject o, string kind, int rep)
    {
        o["kind"] = kind;
        o["rep"] = rep;
        return o;
    }

    private static async Task<string?> GitCommitAsync(string repo)
    {
        if (Sys.Which("git") is not { } git) return null;
        try
        {
            var r = await Child.RunAsync(git, ["-C", repo, "rev-parse", "HEAD"], TimeSpan.FromSeconds(10)).ConfigureAwait(false);
            return r.ExitCode == 0 ? r.Stdout.Trim() : null;
        }
        catch (TimeoutException) { return null; }
    }
}
