using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;

namespace PtHost.Testing;

/// <summary>
/// A fresh Linux network namespace with its loopback up (needs root and <c>ip</c>, as CI has): programs
/// run inside it with <c>ip netns exec</c>, and the test's own sockets are created inside it by
/// <see cref="Run{T}"/>. Used where a test needs addresses the machine does not have, e.g. many
/// sources in one IPv6 /64. Disposal kills what it started and deletes the namespace.
/// </summary>
public sealed partial class NetworkNamespace : IAsyncDisposable
{
    private static int s_count;
    private readonly List<PtProcess> _processes = [];

    private NetworkNamespace(string name) => Name = name;

    public string Name { get; }

    public static async Task<NetworkNamespace> CreateAsync(string tag)
    {
        if (!OperatingSystem.IsLinux()) throw new PlatformNotSupportedException("network namespaces are Linux only");
        string name = $"pthost-{tag}-{Environment.ProcessId}-{Interlocked.Increment(ref s_count)}";
        var (exit, _, err) = await PtProcess.RunAsync(Ip, "netns", "add", name);
        Assert.True(exit == 0, $"ip netns add {name}: {err} (the tests run as root, as CI does)");
        var ns = new NetworkNamespace(name);
        await ns.IpAsync("link", "set", "lo", "up");
        return ns;
    }

    private static string Ip => File.Exists("/usr/sbin/ip") ? "/usr/sbin/ip" : File.Exists("/sbin/ip") ? "/sbin/ip"
        : throw new InvalidOperationException("ip (iproute2) is missing: run the README's test command (bash test.sh), which installs it");

    /// <summary>Runs <c>ip -n NAME ARGS</c> and fails the test when it fails.</summary>
    public async Task IpAsync(params string[] args)
    {
        string[] all = ["-n", Name, .. args];
        var (exit, _, err) = await PtProcess.RunAsync(Ip, all);
        Assert.True(exit == 0, $"ip -n {Name} {string.Join(' ', args)}: {err}");
    }

    /// <summary>Starts a program inside the namespace (<c>ip netns exec</c> execs it: the pid is the program's).</summary>
    public PtProcess Start(string file, IEnumerable<string> args, IDictionary<string, string>? env = null)
    {
        var p = PtProcess.Start(Ip, ["netns", "exec", Name, file, .. args], env);
        lock (_processes) _processes.Add(p);
        return p;
    }

    /// <summary>
    /// Runs <paramref name="create"/> on a thread that joined the namespace (setns(2)), so sockets it creates
    /// live there (a socket keeps its namespace for life); the thread leaves again before it ends.
    /// </summary>
    public T Run<T>(Func<T> create)
    {
        T? result = default;
        Exception? failure = null;
        var thread = new Thread(() =>
        {
            try
            {
                using var self = File.OpenHandle("/proc/thread-self/ns/net");
                using var target = File.OpenHandle("/run/netns/" + Name);
                if (setns((int)target.DangerousGetHandle(), CloneNewNet) != 0) throw new InvalidOperationException($"setns {Name}: errno {Marshal.GetLastPInvokeError()}");
                try { result = create(); }
                finally
                {
                    if (setns((int)self.DangerousGetHandle(), CloneNewNet) != 0) Environment.FailFast("cannot leave network namespace " + Name);
                }
            }
            catch (Exception e) { failure = e; }
        }) { IsBackground = true, Name = "netns " + Name };
        thread.Start();
        thread.Join();
        if (failure is not null) throw new InvalidOperationException(failure.Message, failure);
        return result!;
    }

    /// <summary>
    /// A TCP socket inside the namespace bound to <paramref name="source"/> (port 0), with IPV6_FREEBIND/IP_FREEBIND so
    /// that any address of a local route (<c>ip route add local PREFIX dev lo</c>) can be the source.
    /// </summary>
    public Socket TcpSocketFrom(IPAddress source) => Run(() => FreeBound(source));

    /// <summary><see cref="TcpSocketFrom"/> for many sources, made on one thread.</summary>
    public List<Socket> TcpSocketsFrom(IEnumerable<IPAddress> sources) => Run(() =>
    {
        var made = new List<Socket>();
        try
        {
            foreach (var source in sources) made.Add(FreeBound(source));
            return made;
        }
        catch
        {
            foreach (var s in made) s.Dispose();
            throw;
        }
    });

    private static Socket FreeBound(IPAddress source)
    {
        var s = new Socket(source.AddressFamily, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        try
        {
            if (source.AddressFamily == AddressFamily.InterNetworkV6) s.SetRawSocketOption(IpProtoIPv6, Ipv6FreeBind, BitConverter.GetBytes(1));
            else s.SetRawSocketOption(IpProtoIP, IpFreeBind, BitConverter.GetBytes(1));
            s.Bind(new IPEndPoint(source, 0));
            return s;
        }
        catch
        {
            s.Dispose();
            throw;
        }
    }

    public async ValueTask DisposeAsync()
    {
        List<PtProcess> all;
        lock (_processes) all = [.. _processes];
        foreach (var p in all) await p.DisposeAsync();
        await PtProcess.RunAsync(Ip, "netns", "delete", Name);
    }

    private const int CloneNewNet = 0x40000000, IpProtoIP = 0, IpFreeBind = 15, IpProtoIPv6 = 41, Ipv6FreeBind = 78;

    [LibraryImport("libc", SetLastError = true)]
    private static partial int setns(int fd, int nstype);
}
