using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Threading.Channels;

namespace PtHost.Tests.Process;

/// <summary>
/// Builds what the plugin process tests need, once per test run: a published framework-dependent pthost and the
/// XorTransport fixture plugin (tests/fixtures/XorTransport), built outside the solution.
/// </summary>
internal static class PluginBuild
{
    private static readonly string Scratch = CreateScratch();

    private static string RepoRoot => PtHostExecutable.RepoRoot;

    /// <summary>
    /// The fixture plugin built as a plugin written elsewhere would be: <c>dotnet pack src/PtHost.Contract</c>
    /// into a folder, then <c>dotnet build tests/fixtures/XorTransport -c Release -o &lt;temp&gt;</c> against that
    /// package (docs/writing-a-transport.md); once, after pthost is published (all three build
    /// src/PtHost.Contract in Release; one after the other keeps them off each other's files).
    /// </summary>
    private static readonly Lazy<Task<string>> s_plugin = new(BuildPluginAsync);

    /// <summary>The package version this run packs the contract as: unique, so no package cache can hand back an older contract.</summary>
    public static readonly string ContractVersion = "0.0.0-plugintest." + Guid.NewGuid().ToString("N")[..12];

    /// <summary>The folder the contract package is packed into (the plugin build's package source).</summary>
    public static readonly string ContractFeed = NewTempDirectory("feed");

    /// <summary>The plugin build's intermediate directory (its <c>project.assets.json</c> names what it compiled against).</summary>
    public static readonly string PluginIntermediates = NewTempDirectory("obj");

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

    private static async Task<string> BuildPluginAsync()
    {
        _ = PtHostExecutable.FrameworkDependentPath;
        await DotnetCommand.RunAsync("pack", Path.Combine(RepoRoot, "src", "PtHost.Contract"), ContractFeed, "-p:PackageVersion=" + ContractVersion).ConfigureAwait(false);
        string output = NewTempDirectory("plugins");
        // Packages restored for this build, and its obj/, go to the scratch directory (the run's unique contract
        // version would otherwise pile up in the user's package cache); the other packages come from that cache.
        await DotnetCommand.RunAsync("build", Path.Combine(RepoRoot, "tests", "fixtures", "XorTransport"), output,
            [.. PackageProperties(), "-p:BaseIntermediateOutputPath=" + PluginIntermediates + Path.DirectorySeparatorChar]).ConfigureAwait(false);
        return output;
    }

    /// <summary>
    /// <c>dotnet test tests/fixtures/XorTransport.Tests</c>: the plugin's own tests, built against the contract
    /// package this run packed (after <see cref="PluginDirectory"/>, which packs it); throws with their output when any fails.
    /// </summary>
    public static async Task RunPluginOwnTestsAsync()
    {
        await PluginDirectory.ConfigureAwait(false);
        await DotnetCommand.RunAsync("test", Path.Combine(RepoRoot, "tests", "fixtures", "XorTransport.Tests"), NewTempDirectory("plugin-tests"),
            PackageProperties()).ConfigureAwait(false);
    }

    /// <summary>The contract package of this run, as the fixtures' project files take it; other packages from the user's cache.</summary>
    private static string[] PackageProperties()
    {
        string cache = Environment.GetEnvironmentVariable("NUGET_PACKAGES") is { Length: > 0 } set
            ? set
            : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");
        return ["-p:PtHostContractFeed=" + ContractFeed, "-p:PtHostContractVersion=" + ContractVersion,
            "-p:RestorePackagesPath=" + Path.Combine(Scratch, "packages"), "-p:RestoreFallbackFolders=" + cache];
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
