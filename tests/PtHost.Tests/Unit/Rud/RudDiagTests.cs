using System.Net;
using PtHost.Transports.Rud;
using Xunit.Abstractions;

namespace PtHost.Tests.Unit.Rud;

public class RudDiagTests(ITestOutputHelper output)
{
    [Theory]
    [InlineData(0.0, 0.0, 0)]
    [InlineData(0.05, 0.05, 10)]
    public async Task Diag(double loss, double dup, int jitter)
    {
        await using var pair = RudEndpointTests.Pair.Start(relaySeed: 5);
        pair.Relay!.Loss = loss;
        pair.Relay.Duplicate = dup;
        pair.Relay.Delay = TimeSpan.FromMilliseconds(50);
        pair.Relay.Jitter = TimeSpan.FromMilliseconds(jitter);
        var (c, s) = await pair.ConnectAsync(pair.ServerPublic);
        var up = new byte[2 << 20];
        var watch = System.Diagnostics.Stopwatch.StartNew();
        using var cts = new CancellationTokenSource();
        var sampler = Task.Run(async () =>
        {
            while (!cts.IsCancellationRequested)
            {
                await Task.Delay(1000);
                output.WriteLine($"{watch.Elapsed.TotalSeconds:0.0}s client {c.CongestionState} server {s.CongestionState}");
            }
        });
        await RudEndpointTests.TransferBothWaysAsync(c, s, up, new byte[1000], TimeSpan.FromMinutes(5));
        cts.Cancel();
        output.WriteLine($"2 MB up in {watch.Elapsed.TotalSeconds:0.0} s");
        output.WriteLine("client " + string.Join(", ", pair.Client.Counters.Snapshot().Where(kv => kv.Value != 0)));
        output.WriteLine("server " + string.Join(", ", pair.Server.Counters.Snapshot().Where(kv => kv.Value != 0)));
    }
}
