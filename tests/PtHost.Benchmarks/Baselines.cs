using System.Globalization;
using PtHost.Testing;

namespace PtHost.Benchmarks;

/// <summary>A child process listening on a port of 127.0.0.1 (a forwarder or a proxy).</summary>
public sealed class Listening(Child child, int port) : IAsyncDisposable
{
    public Child Child { get; } = child;
    public int Port { get; } = port;

    public async ValueTask DisposeAsync()
    {
        Child.Kill();
        await Child.DisposeAsync().ConfigureAwait(false);
    }
}

/// <summary>The real Debian programs the figures are compared with: socat and dante.</summary>
public static class Baselines
{
    public const int SocatBuffer = 262_144;

    /// <summary><c>socat -b 262144 TCP-LISTEN:0,fork TCP:127.0.0.1:target</c>: a TCP forwarder with large buffers; its port is read from its own listening socket.</summary>
    public static async Task<Listening> StartSocatAsync(int targetPort)
    {
        string socat = Sys.Which("socat") ?? throw new InvalidOperationException("socat is not installed");
        var child = Child.Start("socat", socat,
            ["-b", SocatBuffer.ToString(CultureInfo.InvariantCulture), "TCP-LISTEN:0,bind=127.0.0.1,reuseaddr,fork", $"TCP:127.0.0.1:{targetPort}"]);
        if (await ProcessSockets.WaitTcpListenerAsync(child.Pid, TimeSpan.FromSeconds(10)).ConfigureAwait(false) is { } listening)
            return new Listening(child, listening.Port);
        child.Kill();
        await child.DisposeAsync().ConfigureAwait(false);
        throw new TimeoutException($"socat did not listen within 10 s: {child.StderrTail}");
    }

    /// <summary>
    /// danted (dante-server) as a SOCKS5 server without authentication on 127.0.0.1. It cannot listen on port 0:
    /// a <see cref="PresetPort"/> candidate, and a fresh one when it did not come to listen there itself.
    /// </summary>
    public static async Task<Listening> StartDanteAsync(string dir)
    {
        string danted = Sys.Which("danted") ?? throw new InvalidOperationException("danted (dante-server) is not installed");
        return await PresetPort.StartAsync(async port =>
        {
            string conf = Path.Combine(dir, "danted.conf");
            await File.WriteAllTextAsync(conf, $$"""
                logoutput: stderr
                errorlog: stderr
                internal: 127.0.0.1 port = {{port}}
                external: 127.0.0.1
                clientmethod: none
                socksmethod: none
                user.privileged: root
                user.unprivileged: nobody
                client pass {
                  from: 127.0.0.0/8 to: 0.0.0.0/0
                }
                socks pass {
                  from: 127.0.0.0/8 to: 0.0.0.0/0
                }

                """).ConfigureAwait(false);
            var child = Child.Start("danted", danted, ["-f", conf, "-N", "1", "-p", Path.Combine(dir, "danted.pid")]);
            if (await ProcessSockets.WaitTcpListenerAsync(child.Pid, TimeSpan.FromSeconds(15), port).ConfigureAwait(false) is not null)
                return new Listening(child, port);
            child.Kill();
            await child.DisposeAsync().ConfigureAwait(false);
            return null;
        }, "danted").ConfigureAwait(false);
    }

    /// <summary>A proxychains4 configuration sending every connection through SOCKS5 at 127.0.0.1:<paramref name="socksPort"/>.</summary>
    public static string WriteProxychainsConf(string dir, int socksPort)
    {
        string conf = Path.Combine(dir, "proxychains.conf");
        File.WriteAllText(conf, $"""
            strict_chain
            quiet_mode
            tcp_read_time_out 15000
            tcp_connect_time_out 8000
            [ProxyList]
            socks5 127.0.0.1 {socksPort}

            """);
        return conf;
    }
}
