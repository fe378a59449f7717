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
          --svg FILE       where to write the chart (default: the JSON file's name with .svg)
          --reps N         repetitions of each measurement (default 3, --quick 1); medians are reported
          --pthost PATH    use this pthost executable instead of publishing src/PtHost
          --pthost-aot PATH the NativeAOT pthost for the startup scenario (default: publish one with -p:PublishAot=true)
          --only LIST      comma-separated scenario names (see below; default all)
          --strict         exit 3 when a target is missed
          --pthost-env K=V add an environment variable to every pthost started (repeatable; for experiments)
          --micro          run only the in-process BenchmarkDotNet micro-benchmark of the SOCKS5 request parser
          --rud            run only the in-process RUD figures: handshake p50 per mode, throughput at 0/1/5 % loss
        """;

    private static string FullUsage => Usage.TrimEnd() + "\nscenarios:\n" + string.Join("\n", Scenarios.All.Select(sc => $"  {sc.Name,-16} {sc.Title}"));

    public static async Task<int> Main(string[] args)
    {
        bool quick = false, strict = false, micro = false, rud = false;
        int? reps = null;
        string jsonPath = "bench-results.json";
        string? svgPath = null;
        string? pthost = null, pthostAot = null;
        HashSet<string>? only = null;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--quick": quick = true; break;
                case "--strict": strict = true; break;
                case "--micro": micro = true; break;
                case "--rud": rud = true; break;
                case "--json" when i + 1 < args.Length: jsonPath = args[++i]; break;
                case "--svg" when i + 1 < args.Length: svgPath = args[++i]; break;
                case "--reps" when i + 1 < args.Length && int.TryParse(args[i + 1], NumberStyles.None, CultureInfo.InvariantCulture, out int r) && r > 0:
                    reps = r;
                    i++;
                    break;
                case "--pthost" when i + 1 < args.Length: pthost = Path.GetFullPath(args[++i]); break;
                case "--pthost-aot" when i + 1 < args.Length: pthostAot = Path.GetFullPath(args[++i]); break;
                case "--only" when i + 1 < args.Length: only = [.. args[++i].Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)]; break;
                case "--pthost-env" when i + 1 < args.Length && args[i + 1].Contains('='):
                    var kv = args[++i].Split('=', 2);
                    Chain.ExtraEnv[kv[0]] = kv[1];
                    break;
                case "--help" or "-h": Console.WriteLine(FullUsage); return 0;
                default: Console.Error.WriteLine($"unknown or incomplete argument \"{args[i]}\"\n{FullUsage}"); return 64;
            }
        }
        if (only is not null && only.FirstOrDefault(n => Scenarios.All.All(sc => sc.Name != n)) is { } unknown)
        {
            Console.Error.WriteLine($"no scenario named \"{unknown}\"\n{FullUsage}");
            return 64;
        }
        svgPath ??= Path.ChangeExtension(jsonPath, ".svg");
        string? repo = Sys.FindRepoRoot();

        if (rud) return await RudBench.RunAsync(quick).ConfigureAwait(false);
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
            if (pthostAot is not null && !File.Exists(pthostAot)) { Console.Error.WriteLine($"bench: {pthostAot} does not exist"); return 66; }

            var ctx = new Context
            {
                PtHost = pthost,
                PtHostAot = pthostAot,
                RepoRoot = repo,
                WorkDir = work,
                Say = Say,
                Repetitions = reps ?? (quick ? 1 : 3),
                IperfSeconds = quick ? 3 : 5,
                ConnTotal = quick ? 2000 : 5000,
                StreamBytes = quick ? 2L << 30 : 4L << 30,
                RelayIdleConnections = 10_000,
                ConnConcurrency = 64,
                IdleSessions = 1000,
                StartupRuns = quick ? 5 : 10,
            };
            var runs = new List<ScenarioRun>();
            foreach (var scenario in Scenarios.All.Where(sc => only is null || only.Contains(sc.Name)))
            {
                var run = new ScenarioRun(scenario);
                runs.Add(run);
                Say($"scenario {scenario.Name}: {scenario.Title}");
                try { await scenario.RunAsync(ctx, run).ConfigureAwait(false); }
                catch (Exception e) when (ScenarioRun.IsMeasurementFailure(e)) { run.FailRemaining(e); }
            }
            var figures = runs.SelectMany(r => r.Figures).ToList();
            var details = new JsonObject(runs.SelectMany(r => r.Details.Select(kv => KeyValuePair.Create(kv.Key, kv.Value?.DeepClone()))));

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
                    ["stream_bytes"] = ctx.StreamBytes,
                    ["relay_idle_connections"] = ctx.RelayIdleConnections,
                },
                ["scenarios"] = new JsonArray([.. runs.Select(r => (JsonNode?)JsonValue.Create(r.Scenario.Name))]),
                ["figures"] = new JsonObject(figures.Select(f => KeyValuePair.Create(f.Key, (JsonNode?)f.ToJson()))),
                ["details"] = details,
                ["table"] = header + "\n" + table,
            };
            await File.WriteAllTextAsync(jsonPath, json.ToJsonString(new JsonSerializerOptions { WriteIndented = true })).ConfigureAwait(false);
            Console.WriteLine($"results written to {Path.GetFullPath(jsonPath)}");
            await File.WriteAllTextAsync(svgPath, Chart.Render(header, [.. runs.Select(r => (r.Scenario, (IReadOnlyList<Figure>)r.Figures))])).ConfigureAwait(false);
            Console.WriteLine($"chart written to {Path.GetFullPath(svgPath)}");

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
