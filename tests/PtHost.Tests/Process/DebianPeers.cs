using System.Net;
using System.Net.Sockets;

namespace PtHost.Tests.Process;

/// <summary>
/// Real proxy servers from Debian (microsocks, danted, tinyproxy), started on loopback for one test.
/// None prints its address. microsocks binds port 0 and its port is read from its own sockets in /proc;
/// danted and tinyproxy refuse port 0, so they are given a <see cref="PresetPort"/> candidate and started
/// again on a fresh one when they did not come to listen on it themselves.
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

    /// <summary>microsocks, its outgoing connections bound to <paramref name="outbound"/>; with credentials when given. It listens on port 0.</summary>
    public static async Task<DebianProxy> MicrosocksAsync(string outbound, string? user = null, string? password = null)
    {
        var args = new List<string> { "-i", "127.0.0.1", "-p", "0", "-b", outbound };
        if (user is not null) args.AddRange(["-u", user, "-P", password!]);
        return await StartAsync(0, (DebianPrograms.Require("/usr/bin/microsocks"), args, null))
            ?? throw new InvalidOperationException("microsocks did not start listening");
    }

    /// <summary>danted (SOCKS4 and SOCKS5, no authentication; runs as the test's own user), its outgoing connections from <paramref name="external"/>, logging every connect to stderr.</summary>
    public static Task<DebianProxy> DanteAsync(string external) =>
        PresetPort.StartAsync(port => StartAsync(port, (DebianPrograms.Require("/usr/sbin/danted"), ["-f", "{dir}/danted.conf", "-N", "1", "-p", "{dir}/danted.pid"],
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
                """))), "danted");

    /// <summary>tinyproxy (HTTP CONNECT), bound to <paramref name="outbound"/>, Basic authentication when given.</summary>
    public static Task<DebianProxy> TinyproxyAsync(string outbound, string? user = null, string? password = null) =>
        PresetPort.StartAsync(port => StartAsync(port, (DebianPrograms.Require("/usr/bin/tinyproxy"), ["-d", "-c", "{dir}/tinyproxy.conf"],
            ("tinyproxy.conf", $"""
                Port {port}
                Listen 127.0.0.1
                Bind {outbound}
                Timeout 30
                LogLevel Connect
                MaxClients 64
                Allow 127.0.0.1
                {(user is null ? "" : $"BasicAuth {user} {password}")}
                """))), "tinyproxy");

    /// <summary>
    /// Starts the program and waits until it listens itself, on <paramref name="port"/> (0: on whatever port it
    /// bound); null (the program stopped) if it exits or does not listen within 20 s, e.g. the port was taken.
    /// </summary>
    private static async Task<DebianProxy?> StartAsync(int port, (string File, IEnumerable<string> Args, (string Name, string Text)? Config) program)
    {
        string dir = Directory.CreateTempSubdirectory("pthost-proxy-").FullName;
        var (file, args, config) = program;
        if (config is { } c) await File.WriteAllTextAsync(Path.Combine(dir, c.Name), c.Text + "\n");
        var process = PtProcess.Start(file, args.Select(a => a.Replace("{dir}", dir)), null, dir);
        if (await ProcessSockets.WaitTcpListenerAsync(process.Pid, TimeSpan.FromSeconds(20), port == 0 ? null : port) is { } ep)
            return new DebianProxy(process, new IPEndPoint(IPAddress.Loopback, ep.Port), dir);
        await process.DisposeAsync();
        Directory.Delete(dir, true);
        return null;
    }

    public async ValueTask DisposeAsync()
    {
        await _process.DisposeAsync();
        try { Directory.Delete(_scratch, true); } catch (IOException) { }
    }
}
