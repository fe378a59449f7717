using System.Net;
using System.Text;
using Newtonsoft.Json;
using Xunit.Abstractions;

namespace PtHost.Tests.Process;

/// <summary>
/// A parent that reads pthost's stdout up to <c>SMETHODS DONE</c> and then never again (spec/ipc.md §4.1): the
/// metrics endpoint goes on answering and SIGTERM still ends the process.
/// </summary>
[Collection("process")]
public sealed class UnreadStdoutTests(ITestOutputHelper output)
{
    [Fact]
    public async Task A_server_whose_stdout_nobody_reads_after_DONE_keeps_its_metrics_and_shuts_down_on_SIGTERM()
    {
        await using var fifo = await HeldFifo.CreateAsync();
        var pipe = fifo.Stream;
        var config = PtChain.FreeServer();
        config["metrics"] = "127.0.0.1:0";
        await using var server = fifo.StartPthost(1, config.ToString(Formatting.None));

        // The start-up lines, read as a parent does; then stdout is never read again.
        var text = new StringBuilder();
        byte[] buffer = new byte[4096];
        using (var startup = new CancellationTokenSource(TimeSpan.FromSeconds(20)))
            while (!(text.ToString().Contains("SMETHODS DONE\n", StringComparison.Ordinal) && text.ToString().Contains("STATUS TYPE=metrics ADDRESS=", StringComparison.Ordinal)))
            {
                int n = await pipe.ReadAsync(buffer, startup.Token);
                text.Append(Encoding.UTF8.GetString(buffer, 0, n));
            }
        string metricsLine = text.ToString().Split('\n').Single(l => l.StartsWith("STATUS TYPE=metrics ADDRESS=", StringComparison.Ordinal));
        var metrics = IPEndPoint.Parse(metricsLine["STATUS TYPE=metrics ADDRESS=".Length..]);

        // STATUS requests until the pipe is full: each answer is a line, and the answers wait (the parent asked).
        for (int i = 0; i < 1000; i++) await server.WriteLineAsync("STATUS");
        await Eventually.TrueAsync(() => fifo.Queued() >= 60_000, "stdout's pipe full", TimeSpan.FromSeconds(20));
        output.WriteLine($"{fifo.Queued()} bytes wait in stdout's pipe");

        // The counters behind STATUS are not held while a line waits: the metrics endpoint answers.
        using (var http = new HttpClient { Timeout = TimeSpan.FromSeconds(10) })
        {
            string page = await http.GetStringAsync($"http://{metrics}/metrics");
            Assert.Contains("pthost_instance_info", page, StringComparison.Ordinal);
        }

        // SIGTERM: the shutdown LOG and STATUS lines find stdout full, are dropped after their wait, and the process ends.
        server.Signal(15);
        Assert.Equal(0, await server.WaitForExitAsync(TimeSpan.FromSeconds(20)));
        Assert.DoesNotContain("Unhandled exception", server.Stderr, StringComparison.Ordinal);
    }
}
