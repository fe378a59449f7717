using System.Net;
using System.Text;
using Newtonsoft.Json;
using PtHost.Net.Native;
using Xunit.Abstractions;

namespace PtHost.Tests.Process;

/// <summary>
/// A parent that reads pthost's stdout up to <c>SMETHODS DONE</c> and then never again (spec/ipc.md §4.1): the
/// metrics endpoint goes on answering and SIGTERM still ends the process.
/// </summary>
[Collection("process")]
public sealed class UnreadStdoutTests(ITestOutputHelper output)
{
    private const uint Fionread = 0x541B;

    [Fact]
    public async Task A_server_whose_stdout_nobody_reads_after_DONE_keeps_its_metrics_and_shuts_down_on_SIGTERM()
    {
        string dir = Directory.CreateTempSubdirectory("pthost-stdout-").FullName;
        try
        {
            string fifo = Path.Combine(dir, "stdout");
            var (made, _, mkfifoError) = await PtProcess.RunAsync(DebianPrograms.Require("/usr/bin/mkfifo"), fifo);
            Assert.True(made == 0, mkfifoError);
            // Open for reading and writing, so pthost's open for writing does not wait for a reader.
            await using var pipe = new FileStream(fifo, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite, 1, FileOptions.None);
            var config = PtChain.FreeServer();
            config["metrics"] = "127.0.0.1:0";
            await using var server = PtProcess.Start("/bin/sh", ["-c", "exec \"$0\" \"$1\" >\"$2\"", PtHostExecutable.Path, config.ToString(Formatting.None), fifo], null);

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
            await Eventually.TrueAsync(() => Queued(pipe) >= 60_000, "stdout's pipe full", TimeSpan.FromSeconds(20));
            output.WriteLine($"{Queued(pipe)} bytes wait in stdout's pipe");

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
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    /// <summary>Bytes waiting in the FIFO (FIONREAD).</summary>
    private static int Queued(FileStream pipe)
    {
        int result = Libc.Ioctl((int)pipe.SafeFileHandle.DangerousGetHandle(), Fionread, out int queued);
        return result == 0 ? queued : -1;
    }
}
