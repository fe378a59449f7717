using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Threading.Channels;

namespace PtHost.Tests.Process;

/// <summary>
/// Builds what the plugin process tests need, once per test run: a published pthost and the
/// XorTransport fixture plugin (tests/fixtures/XorTransport), built outside the solution.
/// </summary>
internal static class PluginBuild
{
    public static readonly TimeSpan BuildTimeout = TimeSpan.FromMinutes(5);

    private static readonly string Scratch = CreateScratch();

    /// <summary>The directory holding PtHost.sln.</summary>
    public static string RepoRoot { get; } = FindRepoRoot();

    /// <summary><c>dotnet publish src/PtHost -c Release -o &lt;temp&gt;</c>, once.</summary>
    private static readonly Lazy<Task<string>> s_published = new(PublishAsync);

    /// <summary><c>dotnet build tests/fixtures/XorTransport -c Release -o &lt;temp&gt;</c>, once, after the publish
    /// (both build src/PtHost.Contract in Release; running them one after the other keeps them off each other's files).</summary>
    private static readonly Lazy<Task<string>> s_plugin = new(BuildPluginAsync);

    public static Task<string> PublishedHostDirectory => s_published.Value;

    public static Task<string> PluginDirectory => s_plugin.Value;

    /// <summary>A fresh empty directory under this run's scratch directory.</summary>
    public static string NewTempDirectory(string prefix)
    {
        string dir = Path.Combine(Scratch, prefix + "-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(dir);
        return dir;
    }

    private static string CreateScratch()
    {
        RemoveStaleScratch();
        string dir = Path.Combine(Path.GetTempPath(), "pthost-plugin-tests-" + Environment.ProcessId + "-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(dir);
        AppDomain.CurrentDomain.ProcessExit += (_, _) =>
        {
            try { Directory.Delete(dir, recursive: true); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
        };
        return dir;
    }

    /// <summary>The test host is sometimes ended before ProcessExit handlers finish: remove leftovers of runs whose process is gone.</summary>
    private static void RemoveStaleScratch()
    {
        foreach (string dir in Directory.EnumerateDirectories(Path.GetTempPath(), "pthost-plugin-tests-*"))
        {
            string[] parts = Path.GetFileName(dir).Split('-');
            if (parts.Length < 5 || !int.TryParse(parts[3], out int pid) || pid == Environment.ProcessId) continue;
            try
            {
                using var owner = System.Diagnostics.Process.GetProcessById(pid);
                continue; // still running (or the pid was reused): leave it
            }
            catch (ArgumentException) { }
            try { Directory.Delete(dir, recursive: true); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
        }
    }

    private static string FindRepoRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "PtHost.sln"))) return dir.FullName;
        throw new InvalidOperationException($"no PtHost.sln above {AppContext.BaseDirectory}");
    }

    private static async Task<string> PublishAsync()
    {
        string output = NewTempDirectory("pthost");
        await DotnetAsync("publish", Path.Combine(RepoRoot, "src", "PtHost"), output).ConfigureAwait(false);
        if (!File.Exists(Path.Combine(output, "pthost.dll"))) throw new InvalidOperationException($"publish produced no pthost.dll in {output}");
        return output;
    }

    private static async Task<string> BuildPluginAsync()
    {
        await s_published.Value.ConfigureAwait(false);
        string output = NewTempDirectory("plugins");
        await DotnetAsync("build", Path.Combine(RepoRoot, "tests", "fixtures", "XorTransport"), output).ConfigureAwait(false);
        return output;
    }

    private static async Task DotnetAsync(string verb, string project, string output)
    {
        var psi = new ProcessStartInfo(DotnetExecutable())
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
            WorkingDirectory = RepoRoot,
        };
        foreach (string a in new[] { verb, project, "-c", "Release", "-o", output, "--disable-build-servers", "-nologo", "-clp:NoSummary" })
            psi.ArgumentList.Add(a);
        // The test host may run under MSBuild-set variables; a nested build must not inherit them.
        foreach (string key in psi.Environment.Keys.Where(k => k.StartsWith("MSBuild", StringComparison.OrdinalIgnoreCase)).ToList())
            psi.Environment.Remove(key);
        psi.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        psi.Environment["DOTNET_NOLOGO"] = "1";

        using var p = System.Diagnostics.Process.Start(psi) ?? throw new InvalidOperationException("cannot start dotnet");
        p.StandardInput.Close();
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        using var timeout = new CancellationTokenSource(BuildTimeout);
        try
        {
            await p.WaitForExitAsync(timeout.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            Kill(p);
            throw new TimeoutException($"dotnet {verb} {project} took longer than {BuildTimeout}");
        }
        // Output ends when every process holding the pipes has gone; do not wait forever for stray nodes.
        var both = Task.WhenAll(stdout, stderr);
        string text = await both.WaitAsync(TimeSpan.FromSeconds(30)).ConfigureAwait(false) is var r ? r[0] + r[1] : "";
        if (p.ExitCode != 0) throw new InvalidOperationException($"dotnet {verb} {project} exited {p.ExitCode}:\n{text}");
    }

    private static string DotnetExecutable()
    {
        string? host = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH");
        return !string.IsNullOrEmpty(host) && File.Exists(host) ? host : "dotnet";
    }

    internal static void Kill(System.Diagnostics.Process p)
    {
        try { if (!p.HasExited) p.Kill(entireProcessTree: true); }
        catch (Exception e) when (e is InvalidOperationException or System.ComponentModel.Win32Exception) { }
    }
}

/// <summary>
/// A running pthost process: stdout lines are collected (and checked to be protocol lines only),
/// stderr kept for failure messages. Dispose kills it if it is still running.
/// </summary>
internal sealed class PtProcess : IAsyncDisposable
{
    public static readonly TimeSpan LineTimeout = TimeSpan.FromSeconds(30);
    public static readonly TimeSpan ExitTimeout = TimeSpan.FromSeconds(20);

    /// <summary>The keywords a line on pthost's stdout may begin with (spec/ipc.md §4).</summary>
    public static readonly string[] ProtocolKeywords =
    [
        "VERSION", "CMETHOD", "CMETHOD-ERROR", "CMETHODS", "SMETHOD", "SMETHOD-ERROR", "SMETHODS",
        "CMESSAGE", "SMESSAGE", "LOG", "STATUS", "ENV-ERROR",
    ];

    private readonly System.Diagnostics.Process _process;
    private readonly Channel<string> _lines = Channel.CreateUnbounded<string>();
    private readonly List<string> _stdout = [];
    private readonly ConcurrentQueue<string> _stderr = new();
    private readonly Task _stdoutPump;
    private readonly Task _stderrPump;

    private PtProcess(System.Diagnostics.Process process)
    {
        _process = process;
        _stdoutPump = PumpStdoutAsync();
        _stderrPump = PumpStderrAsync();
    }

    public static async Task<PtProcess> StartAsync(string configJson)
    {
        string dir = await PluginBuild.PublishedHostDirectory.ConfigureAwait(false);
        string apphost = Path.Combine(dir, "pthost");
        var psi = File.Exists(apphost) && !OperatingSystem.IsWindows()
            ? new ProcessStartInfo(apphost)
            : new ProcessStartInfo("dotnet") { ArgumentList = { Path.Combine(dir, "pthost.dll") } };
        psi.ArgumentList.Add(configJson);
        psi.RedirectStandardInput = true;
        psi.RedirectStandardOutput = true;
        psi.RedirectStandardError = true;
        psi.UseShellExecute = false;
        psi.WorkingDirectory = dir;
        psi.StandardOutputEncoding = new UTF8Encoding(false);
        var process = System.Diagnostics.Process.Start(psi) ?? throw new InvalidOperationException("cannot start pthost");
        return new PtProcess(process);
    }

    public int Id => _process.Id;

    /// <summary>Every stdout line so far.</summary>
    public IReadOnlyList<string> StdoutLines { get { lock (_stdout) return [.. _stdout]; } }

    /// <summary>Everything on stderr so far (logs).</summary>
    public string Stderr => string.Join("\n", _stderr);

    private async Task PumpStdoutAsync()
    {
        try
        {
            while (await _process.StandardOutput.ReadLineAsync().ConfigureAwait(false) is { } line)
            {
                lock (_stdout) _stdout.Add(line);
                _lines.Writer.TryWrite(line);
            }
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException or InvalidOperationException) { }
        finally { _lines.Writer.TryComplete(); }
    }

    private async Task PumpStderrAsync()
    {
        try
        {
            while (await _process.StandardError.ReadLineAsync().ConfigureAwait(false) is { } line) _stderr.Enqueue(line);
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException or InvalidOperationException) { }
    }

    /// <summary>The next stdout line; null at end of stdout. Throws <see cref="TimeoutException"/>.</summary>
    public async Task<string?> ReadLineAsync(TimeSpan? timeout = null)
    {
        using var cts = new CancellationTokenSource(timeout ?? LineTimeout);
        try
        {
            return await _lines.Reader.WaitToReadAsync(cts.Token).ConfigureAwait(false) && _lines.Reader.TryRead(out var line) ? line : null;
        }
        catch (OperationCanceledException)
        {
            throw new TimeoutException($"pthost {Id}: no stdout line within {(timeout ?? LineTimeout).TotalSeconds} s\n{Describe()}");
        }
    }

    /// <summary>Reads lines up to and including <paramref name="last"/> (e.g. "CMETHODS DONE").</summary>
    public async Task<List<string>> ReadUntilAsync(string last)
    {
        var lines = new List<string>();
        while (true)
        {
            string? line = await ReadLineAsync().ConfigureAwait(false)
                ?? throw new InvalidOperationException($"pthost {Id}: stdout ended before \"{last}\"\n{Describe()}");
            lines.Add(line);
            if (line == last) return lines;
        }
    }

    /// <summary>Waits for the process to exit by itself; returns its exit code.</summary>
    public async Task<int> WaitForExitAsync(TimeSpan? timeout = null)
    {
        using var cts = new CancellationTokenSource(timeout ?? ExitTimeout);
        try { await _process.WaitForExitAsync(cts.Token).ConfigureAwait(false); }
        catch (OperationCanceledException)
        {
            throw new TimeoutException($"pthost {Id} did not exit within {(timeout ?? ExitTimeout).TotalSeconds} s\n{Describe()}");
        }
        // Let the pumps reach end of stream (the pipes close with the process).
        await Task.WhenAll(_stdoutPump, _stderrPump).WaitAsync(TimeSpan.FromSeconds(10)).ConfigureAwait(false);
        return _process.ExitCode;
    }

    /// <summary>Closes stdin (with <c>exit-on-stdin-close</c> the process shuts down) and waits for the exit code.</summary>
    public Task<int> CloseStdinAndWaitAsync()
    {
        try { _process.StandardInput.Close(); }
        catch (IOException) { }
        return WaitForExitAsync();
    }

    /// <summary>Asserts that every stdout line so far is a protocol line.</summary>
    public void AssertOnlyProtocolLinesOnStdout()
    {
        foreach (string line in StdoutLines)
        {
            string keyword = line.Split(' ', 2)[0];
            Assert.True(Array.IndexOf(ProtocolKeywords, keyword) >= 0, $"pthost {Id}: not a protocol line on stdout: \"{line}\"\n{Describe()}");
        }
    }

    public string Describe() =>
        $"--- stdout ---\n{string.Join("\n", StdoutLines)}\n--- stderr ---\n{Stderr}";

    public async ValueTask DisposeAsync()
    {
        PluginBuild.Kill(_process);
        try { await _process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(10)).ConfigureAwait(false); }
        catch (TimeoutException) { }
        try { await Task.WhenAll(_stdoutPump, _stderrPump).WaitAsync(TimeSpan.FromSeconds(5)).ConfigureAwait(false); }
        catch (TimeoutException) { }
        _process.Dispose();
    }
}

/// <summary>A TCP echo server on 127.0.0.1 that also records what each connection sent it.</summary>
internal sealed class PluginEchoServer : IAsyncDisposable
{
    private const int RecordLimit = 4 << 20;
    private readonly TcpListener _listener = new(IPAddress.Loopback, 0);
    private readonly CancellationTokenSource _stop = new();
    private readonly ConcurrentBag<Task> _connections = [];
    private readonly Task _acceptLoop;

    public PluginEchoServer()
    {
        _listener.Start();
        EndPoint = (IPEndPoint)_listener.LocalEndpoint;
        _acceptLoop = AcceptLoopAsync();
    }

    public IPEndPoint EndPoint { get; }

    /// <summary>What each finished connection sent (up to 4 MiB each), in order of completion.</summary>
    public ConcurrentQueue<byte[]> Received { get; } = new();

    private async Task AcceptLoopAsync()
    {
        while (!_stop.IsCancellationRequested)
        {
            Socket s;
            try { s = await _listener.AcceptSocketAsync(_stop.Token).ConfigureAwait(false); }
            catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException or SocketException) { return; }
            _connections.Add(EchoAsync(s));
        }
    }

    private async Task EchoAsync(Socket s)
    {
        var seen = new MemoryStream();
        byte[] buffer = new byte[64 * 1024];
        try
        {
            while (true)
            {
                int n = await s.ReceiveAsync(buffer, SocketFlags.None, _stop.Token).ConfigureAwait(false);
                if (n == 0) break;
                if (seen.Length < RecordLimit) seen.Write(buffer, 0, (int)Math.Min(n, RecordLimit - seen.Length));
                await s.SendAsync(buffer.AsMemory(0, n), SocketFlags.None, _stop.Token).ConfigureAwait(false);
            }
            s.Shutdown(SocketShutdown.Send);
        }
        catch (Exception e) when (e is OperationCanceledException or SocketException or ObjectDisposedException) { }
        finally
        {
            Received.Enqueue(seen.ToArray());
            s.Dispose();
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync().ConfigureAwait(false);
        _listener.Stop();
        await _acceptLoop.WaitAsync(TimeSpan.FromSeconds(5)).ConfigureAwait(false);
        await Task.WhenAll(_connections).WaitAsync(TimeSpan.FromSeconds(5)).ConfigureAwait(false);
        _stop.Dispose();
    }
}

/// <summary>
/// A recording TCP forwarder on 127.0.0.1: put between the client and server processes, it shows
/// the bytes on the wire. Passes half-closes on.
/// </summary>
internal sealed class PluginWireTap : IAsyncDisposable
{
    private const int RecordLimit = 4 << 20;
    private readonly TcpListener _listener = new(IPAddress.Loopback, 0);
    private readonly IPEndPoint _upstream;
    private readonly CancellationTokenSource _stop = new();
    private readonly ConcurrentBag<Task> _connections = [];
    private readonly Task _acceptLoop;

    public PluginWireTap(IPEndPoint upstream)
    {
        _upstream = upstream;
        _listener.Start();
        EndPoint = (IPEndPoint)_listener.LocalEndpoint;
        _acceptLoop = AcceptLoopAsync();
    }

    public IPEndPoint EndPoint { get; }

    /// <summary>Per finished connection: bytes towards the server process, and back.</summary>
    public ConcurrentQueue<(byte[] ToServer, byte[] ToClient)> Recorded { get; } = new();

    private async Task AcceptLoopAsync()
    {
        while (!_stop.IsCancellationRequested)
        {
            Socket s;
            try { s = await _listener.AcceptSocketAsync(_stop.Token).ConfigureAwait(false); }
            catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException or SocketException) { return; }
            _connections.Add(ForwardAsync(s));
        }
    }

    private async Task ForwardAsync(Socket down)
    {
        using var up = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        var toServer = new MemoryStream();
        var toClient = new MemoryStream();
        try
        {
            await up.ConnectAsync(_upstream, _stop.Token).ConfigureAwait(false);
            await Task.WhenAll(PumpAsync(down, up, toServer), PumpAsync(up, down, toClient)).ConfigureAwait(false);
        }
        catch (Exception e) when (e is OperationCanceledException or SocketException or ObjectDisposedException) { }
        finally
        {
            Recorded.Enqueue((toServer.ToArray(), toClient.ToArray()));
            down.Dispose();
        }
    }

    private async Task PumpAsync(Socket from, Socket to, MemoryStream record)
    {
        byte[] buffer = new byte[64 * 1024];
        while (true)
        {
            int n = await from.ReceiveAsync(buffer, SocketFlags.None, _stop.Token).ConfigureAwait(false);
            if (n == 0) { to.Shutdown(SocketShutdown.Send); return; }
            lock (record) if (record.Length < RecordLimit) record.Write(buffer, 0, (int)Math.Min(n, RecordLimit - record.Length));
            await to.SendAsync(buffer.AsMemory(0, n), SocketFlags.None, _stop.Token).ConfigureAwait(false);
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync().ConfigureAwait(false);
        _listener.Stop();
        await _acceptLoop.WaitAsync(TimeSpan.FromSeconds(5)).ConfigureAwait(false);
        await Task.WhenAll(_connections).WaitAsync(TimeSpan.FromSeconds(5)).ConfigureAwait(false);
        _stop.Dispose();
    }
}

/// <summary>A minimal SOCKS5 client (RFC 1928): no authentication, CONNECT to an IPv4 address.</summary>
internal static class PluginSocks5
{
    public static async Task<Socket> ConnectAsync(IPEndPoint proxy, IPEndPoint destination, CancellationToken ct)
    {
        var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        try
        {
            await s.ConnectAsync(proxy, ct).ConfigureAwait(false);
            await s.SendAsync(new byte[] { 0x05, 0x01, 0x00 }, SocketFlags.None, ct).ConfigureAwait(false);
            byte[] method = await ReceiveExactlyAsync(s, 2, ct).ConfigureAwait(false);
            Assert.Equal(new byte[] { 0x05, 0x00 }, method);

            byte[] request = new byte[10];
            request[0] = 0x05; request[1] = 0x01; request[2] = 0x00; request[3] = 0x01;
            Assert.True(destination.Address.TryWriteBytes(request.AsSpan(4, 4), out _));
            request[8] = (byte)(destination.Port >> 8);
            request[9] = (byte)destination.Port;
            await s.SendAsync(request, SocketFlags.None, ct).ConfigureAwait(false);

            byte[] head = await ReceiveExactlyAsync(s, 4, ct).ConfigureAwait(false);
            Assert.Equal(0x05, head[0]);
            Assert.True(head[1] == 0x00, $"SOCKS CONNECT to {destination} via {proxy} refused: reply 0x{head[1]:x2}");
            int rest = head[3] switch
            {
                0x01 => 4 + 2,
                0x04 => 16 + 2,
                0x03 => (await ReceiveExactlyAsync(s, 1, ct).ConfigureAwait(false))[0] + 2,
                _ => throw new InvalidDataException($"SOCKS reply address type 0x{head[3]:x2}"),
            };
            await ReceiveExactlyAsync(s, rest, ct).ConfigureAwait(false);
            return s;
        }
        catch
        {
            s.Dispose();
            throw;
        }
    }

    public static async Task<byte[]> ReceiveExactlyAsync(Socket s, int count, CancellationToken ct)
    {
        byte[] buffer = new byte[count];
        int got = 0;
        while (got < count)
        {
            int n = await s.ReceiveAsync(buffer.AsMemory(got), SocketFlags.None, ct).ConfigureAwait(false);
            if (n == 0) throw new EndOfStreamException($"connection closed after {got} of {count} bytes");
            got += n;
        }
        return buffer;
    }

    /// <summary>Sends <paramref name="data"/>, half-closes, and reads until the peer ends; returns what came back.</summary>
    public static async Task<byte[]> ExchangeAsync(Socket s, byte[] data, CancellationToken ct)
    {
        async Task SendAllAsync()
        {
            for (int offset = 0; offset < data.Length; offset += 16 * 1024)
                await s.SendAsync(data.AsMemory(offset, Math.Min(16 * 1024, data.Length - offset)), SocketFlags.None, ct).ConfigureAwait(false);
            s.Shutdown(SocketShutdown.Send);
        }
        async Task<byte[]> ReceiveAllAsync()
        {
            var received = new MemoryStream();
            byte[] buffer = new byte[64 * 1024];
            while (true)
            {
                int n = await s.ReceiveAsync(buffer, SocketFlags.None, ct).ConfigureAwait(false);
                if (n == 0) return received.ToArray();
                received.Write(buffer, 0, n);
            }
        }
        var send = SendAllAsync();
        var receive = ReceiveAllAsync();
        await send.ConfigureAwait(false);
        return await receive.ConfigureAwait(false);
    }
}
