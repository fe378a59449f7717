using System.Buffers;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Running;
using BenchmarkDotNet.Toolchains.InProcess.Emit;
using PtHost.Contract;
using PtHost.Socks;

namespace PtHost.Benchmarks;

/// <summary>In-process micro-benchmark of the SOCKS5 request parser (run with --micro).</summary>
[MemoryDiagnoser]
public class Socks5RequestParserBench
{
    private ReadOnlySequence<byte> _ipv4;
    private ReadOnlySequence<byte> _domain;
    private ReadOnlySequence<byte> _ipv6;

    [GlobalSetup]
    public void Setup()
    {
        _ipv4 = new ReadOnlySequence<byte>([5, 1, 0, 1, 127, 0, 0, 1, 0x1F, 0x90]);
        byte[] name = "bridge.example.org"u8.ToArray();
        _domain = new ReadOnlySequence<byte>([5, 1, 0, 3, (byte)name.Length, .. name, 0x01, 0xBB]);
        _ipv6 = new ReadOnlySequence<byte>([5, 1, 0, 4, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 80]);
    }

    [Benchmark(Baseline = true)]
    public Destination? IPv4() => Parse(_ipv4);

    [Benchmark]
    public Destination? Domain() => Parse(_domain);

    [Benchmark]
    public Destination? IPv6() => Parse(_ipv6);

    private static Destination? Parse(ReadOnlySequence<byte> input)
    {
        var buffer = input;
        return Socks5Parser.TryParseRequest(ref buffer, out var destination, out _) == ParseStatus.Done ? destination : null;
    }

    public static int Run(string artifacts, bool quick)
    {
        var job = (quick ? Job.ShortRun : Job.Default).WithToolchain(InProcessEmitToolchain.Instance);
        var config = ManualConfig.Create(DefaultConfig.Instance)
            .AddJob(job)
            .WithArtifactsPath(artifacts)
            .WithOptions(ConfigOptions.DisableOptimizationsValidator);
        var summary = BenchmarkRunner.Run<Socks5RequestParserBench>(config);
        return summary.HasCriticalValidationErrors || summary.Reports.Any(r => !r.Success) ? 1 : 0;
    }
}
