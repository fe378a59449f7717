using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Diagnosers;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Running;
using BenchmarkDotNet.Toolchains.InProcess.Emit;

namespace PtHost.MicroBenchmarks;

/// <summary>
/// <c>dotnet run -c Release --project tests/PtHost.MicroBenchmarks -- --filter '*'</c>: every benchmark
/// with BenchmarkDotNet's ShortRun job (3 warm-ups, 3 iterations) and the memory diagnoser (allocated
/// bytes per operation), in process (the in-process emit toolchain: no boilerplate project is generated
/// and built per run, which took more than BenchmarkDotNet's 2-minute build limit on a loaded 2-core
/// machine). Any BenchmarkDotNet option may follow (<c>--filter *Stun*</c>).
/// </summary>
public static class Program
{
    public static void Main(string[] args)
    {
        var config = DefaultConfig.Instance.AddDiagnoser(MemoryDiagnoser.Default);
        config = config.AddJob(Job.ShortRun.WithToolchain(InProcessEmitToolchain.Instance));
        BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args, config);
    }
}
