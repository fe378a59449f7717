using System.Net;
using System.Net.Sockets;

namespace PtHost.Tests.Process;

/// <summary>
/// Real proxy servers from Debian (microsocks, danted, tinyproxy), started on loopback for one test.
/// They cannot report a port chosen by the system, so a free port is picked first (bind 0, read back,
/// close) and the start is retried on another port if it was taken in between.
/// </summary>
public sealed class DebianProxy : IAsyncDisposable
{
    private readonly PtProcess _process;
    private readonly string _scratch;

    private DebianProxy(PtProcess process, IPEndPoint endPoint, string scratch)
    {
        _process = process;
        EndPoint = endPoint;
        _scratch = scratch;
    }

    public IPEndPoint EndPoint { get; }

    /// <summary>What the proxy printed on stdout and stderr (dante and tinyproxy log each CONNECT there).</summary>
    public string Log => string.Join('\n', _process.StdoutLines) + "\n" + _process.Stderr;

    public static string Require(string path) => File.Exists(path) ? path
        : throw new InvalidOperationException($"{path} is missing: run the README's test command (bash test.sh), which installs the Debian packages the tests use");

    /// <summary>microsocks, its outgoing connections bound to <paramref name="outbound"/>; with credentials when given.</summary>
    public static Task<DebianProxy> MicrosocksAsync(string outbound, string? user = null, string? password = null) =>
        StartAsync(port =>
        {
            var args = new List<string> { "-i", "127.0.0.1", "-p", port.ToString(), "-b", outbound };
            if (user is not null) args.AddRange(["-u", user, "-P", password!]);
            return (Require("/usr/bin/microsocks"), args, null);
        });

    /// <summary>danted (SOCKS4 and SOCKS5, no authentication; runs as the test's own user), its outgoing connections from <paramref name="external"/>, logging every connect to stderr.</summary>
    public static Task<DebianProxy> DanteAsync(string external) =>
        StartAsync(port => (Require("/usr/sbin/danted"), ["-f", "{dir}/danted.conf", "-N", "1", "-p", "{dir}/danted.pid"],
            ("danted.conf", $$"""
                logoutput: stderr
                internal: 127.0.0.1 port = {{port}}
                external: {{external}}
                clientmethod: none
                socksmethod: none
                client pass {
                  from: 127.0.0.0/8 to: 0.0.0.0/0
                  log: connect disconnect error
                }
                socks pass {
                  from: 127.0.0.0/8 to: 0.0.0.0/0
                  command: connect
                  log: connect disconnect error
                }
                """)));

    /// <summary>tinyproxy (HTTP CONNECT), bound to <paramref name="outbound"/>, Basic authentication when given.</summary>
    public static Task<DebianProxy> TinyproxyAsync(string outbound, string? user = null, string? password = null) =>
        StartAsync(port => (Require("/usr/bin/tinyproxy"), ["-d", "-c", "{dir}/tinyproxy.conf"],
            ("tinyproxy.conf", $"""
                Port {port}
                Listen 127.0.0.1
                Bind {outbound}
                Timeout 30
                LogLevel Connect
                MaxClients 64
                Allow 127.0.0.1
                {(user is null ? "" : $"BasicAuth {user} {password}")}
                """)));

    private static async Task<DebianProxy> StartAsync(Func<int, (string File, IEnumerable<string> Args, (string Name, string Text)? Config)> make)
    {
        for (int attempt = 0; ; attempt++)
        {
            int port = FreePort();
            string dir = Directory.CreateTempSubdirectory("pthost-proxy-").FullName;
            var (file, args, config) = make(port);
            if (config is { } c) await File.WriteAllTextAsync(Path.Combine(dir, c.Name), c.Text + "\n");
            var process = PtProcess.Start(file, args.Select(a => a.Replace("{dir}", dir)), null, dir);
            var ep = new IPEndPoint(IPAddress.Loopback, port);
            if (await WaitListeningAsync(ep, process)) return new DebianProxy(process, ep, dir);
            string log = string.Join('\n', process.StdoutLines) + process.Stderr;
            await process.DisposeAsync();
            Directory.Delete(dir, true);
            if (attempt == 2) throw new InvalidOperationException($"{file} did not start listening on {ep}:\n{log}");
        }
    }

    public static int FreePort()
    {
        using var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        s.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        return ((IPEndPoint)s.LocalEndPoint!).Port;
    }

    /// <summary>Polls until the port accepts a connection (the daemon is ready) or 20 s pass.</summary>
    private static async Task<bool> WaitListeningAsync(IPEndPoint ep, PtProcess process)
    {
        var deadline = DateTime.UtcNow.AddSeconds(20);
        while (DateTime.UtcNow < deadline)
        {
            using var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            try
            {
                await s.ConnectAsync(ep);
                return true;
            }
            catch (SocketException) { }
            try
            {
                // The daemon exited (port taken, bad config): give up on this attempt.
                await process.WaitForExitAsync(TimeSpan.FromMilliseconds(100));
                return false;
            }
            catch (TimeoutException) { }
        }
        return false;
    }

    public async ValueTask DisposeAsync()
    {
        await _process.DisposeAsync();
        try { Directory.Delete(_scratch, true); } catch (IOException) { }
    }
}

/// <summary>A loopback TCP target that records the remote address of every connection and echoes bytes.</summary>
public sealed class RecordingTarget : IAsyncDisposable
{
    private readonly TcpListener _listener;
    private readonly CancellationTokenSource _cts = new();
    private readonly Task _loop;

    public RecordingTarget(IPAddress? address = null)
    {
        _listener = new TcpListener(address ?? IPAddress.Loopback, 0);
        _listener.Start();
        _loop = Task.Run(LoopAsync);
    }

    public IPEndPoint EndPoint => (IPEndPoint)_listener.LocalEndpoint;

    public System.Collections.Concurrent.ConcurrentQueue<IPEndPoint> Remotes { get; } = new();

    private async Task LoopAsync()
    {
        while (!_cts.IsCancellationRequested)
        {
            TcpClient c;
            try { c = await _listener.AcceptTcpClientAsync(_cts.Token); }
            catch (Exception) { return; }
            Remotes.Enqueue((IPEndPoint)c.Client.RemoteEndPoint!);
            _ = Task.Run(async () =>
            {
                using (c)
                {
                    try
                    {
                        var s = c.GetStream();
                        var buffer = new byte[16384];
                        int n;
                        while ((n = await s.ReadAsync(buffer, _cts.Token)) > 0) await s.WriteAsync(buffer.AsMemory(0, n), _cts.Token);
                    }
                    catch (Exception) { }
                }
            });
        }
    }

    public async ValueTask DisposeAsync()
    {
        _cts.Cancel();
        _listener.Stop();
        await _loop;
    }
}
