using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Diagnosers;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Running;

namespace PtHost.MicroBenchmarks;

/// <summary>
/// <c>dotnet run -c Release --project tests/PtHost.MicroBenchmarks -- --filter '*'</c>: every benchmark
/// with BenchmarkDotNet's ShortRun job (3 warm-ups, 3 iterations) and the memory diagnoser (allocated
/// bytes per operation). Any BenchmarkDotNet option may follow (<c>--job medium</c>, <c>--filter *Stun*</c>).
/// </summary>
public static class Program
{
    public static void Main(string[] args)
    {
        var config = DefaultConfig.Instance.AddDiagnoser(MemoryDiagnoser.Default);
        if (!args.Contains("--job") && !args.Contains("-j")) config = config.AddJob(Job.ShortRun);
        BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args, config);
    }
}
