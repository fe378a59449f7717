using System.Net;
using System.Security.Cryptography;
using System.Text.Json.Nodes;

[assembly: CollectionBehavior(DisableTestParallelization = true)]

namespace PtHost.Client.Tests;

internal static class Support
{
    public static readonly byte[] Body = RandomNumberGenerator.GetBytes(1 << 20);
    public static readonly string BodySha = Convert.ToHexStringLower(SHA256.HashData(Body));

    public static PtHostOptions Options() => new() { Executable = PtHostExecutable.Path };

    public static JsonObject PlainClient(IPEndPoint server) => new()
    {
        ["transports"] = new JsonArray("plain"),
        ["options"] = new JsonObject { ["plain"] = new JsonObject { ["serverAddress"] = server.ToString() } },
    };

    public static Task<PtHostServer> FreePlainServerAsync() => PtHostServer.ProxyAsync("plain", null, ["127.0.0.1"], options: Options());

    public static bool Gone(int pid) => !File.Exists($"/proc/{pid}/stat") || File.ReadAllText($"/proc/{pid}/stat").Split(") ")[1].StartsWith('Z');

    /// <summary>The pthost processes whose parent is this test process (/proc/PID/stat: comm and ppid).</summary>
    public static int[] ChildPthosts()
    {
        var found = new List<int>();
        foreach (var dir in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), out int pid)) continue;
            string stat;
            try { stat = File.ReadAllText(Path.Combine(dir, "stat")); }
            catch (IOException) { continue; }
            int close = stat.LastIndexOf(')');
            string comm = stat[(stat.IndexOf('(') + 1)..close];
            var fields = stat[(close + 2)..].Split(' ');
            if (comm == "pthost" && fields[0] != "Z" && int.Parse(fields[1]) == Environment.ProcessId) found.Add(pid);
        }
        return [.. found];
    }

    public static async Task<(int Status, string Sha, int Length)> FetchAsync(HttpClient http, string url)
    {
        using var response = await http.GetAsync(url);
        byte[] body = await response.Content.ReadAsByteArrayAsync();
        return ((int)response.StatusCode, Convert.ToHexStringLower(SHA256.HashData(body)), body.Length);
    }

    /// <summary>curl through a SOCKS5 front end (the host name goes to the proxy); fails the test unless curl exits 0; returns stdout.</summary>
    public static async Task<string> CurlAsync(IPEndPoint socks, string url, params string[] extra)
    {
        var (exit, stdout, stderr) = await RunCurlAsync(socks, url, extra);
        Assert.True(exit == 0, $"curl exited {exit}: {stderr}");
        return stdout;
    }

    /// <summary>curl through a SOCKS5 front end: its exit code, stdout and stderr.</summary>
    public static async Task<(int Exit, string Stdout, string Stderr)> RunCurlAsync(IPEndPoint socks, string url, params string[] extra)
    {
        var psi = new System.Diagnostics.ProcessStartInfo("curl") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in (string[])["-sS", "--max-time", "60", "--socks5-hostname", socks.ToString(), url, .. extra]) psi.ArgumentList.Add(a);
        using var p = System.Diagnostics.Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        await p.WaitForExitAsync();
        return (p.ExitCode, await stdout, await stderr);
    }

    /// <summary>
    /// Echoes <paramref name="count"/> numbered datagrams (200 bytes, the number in the first four) off
    /// <paramref name="echo"/>: each sent once, then those still missing again (UDP may lose some), up to 20 rounds;
    /// every answer must come from <paramref name="echo"/>. Returns how many distinct numbers came back.
    /// </summary>
    public static async Task<int> EchoDatagramsAsync(int count, IPEndPoint echo,
        Func<ReadOnlyMemory<byte>, ValueTask> send, Func<CancellationToken, ValueTask<System.Net.Sockets.UdpReceiveResult>> receive)
    {
        var seen = new HashSet<int>();
        using var stop = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        var receiving = Task.Run(async () =>
        {
            while (true)
            {
                lock (seen) if (seen.Count == count) return;
                var r = await receive(stop.Token);
                Assert.Equal(echo, r.RemoteEndPoint);
                lock (seen) seen.Add(System.Buffers.Binary.BinaryPrimitives.ReadInt32BigEndian(r.Buffer));
            }
        });
        byte[] datagram = new byte[200];
        for (int round = 0; round < 20 && !receiving.IsCompleted; round++)
        {
            for (int i = 0; i < count; i++)
            {
                lock (seen) if (seen.Contains(i)) continue;
                System.Buffers.Binary.BinaryPrimitives.WriteInt32BigEndian(datagram, i);
                await send(datagram);
                if (i % 100 == 99) await Task.Yield();
            }
            await Task.WhenAny(receiving, Task.Delay(500));
        }
        await receiving;
        lock (seen) return seen.Count;
    }
}
