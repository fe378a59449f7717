using System.Diagnostics;

namespace PtHost.Tests.Process;

/// <summary>
/// A real tor 0.4.x client and bridge from Debian, with pthost as their managed transport plugin.
/// Every tor runs inside a network namespace of its own with only loopback (tor reaches out to the
/// internet otherwise), together with everything it talks to.
/// </summary>
[Collection("process")]
public class TorTests
{
    private static readonly TimeSpan Bootstrap = TimeSpan.FromSeconds(120);

    [Fact]
    public async Task Tor_client_and_bridge_connect_through_pthost_plain_and_the_bridge_authenticates_it_on_the_ExtORPort()
    {
        await using var net = await LoopbackNamespace.CreateAsync();
        await using var bridge = await TorBridge.StartAsync(net);
        await using var client = net.Tor("client", $"""
            SocksPort 127.0.0.1:9050
            UseBridges 1
            Bridge plain 127.0.0.1:{TorBridge.TransportPort}
            ClientTransportPlugin plain exec {PtHostExecutable.Path}
            """);
        await client.WaitForLogAsync("Bootstrapped 15% (handshake_done)", Bootstrap);
        await client.WaitForLogAsync("new bridge descriptor", Bootstrap);
        // The bridge got the connection through the ExtORPort with SAFE_COOKIE (its debug log).
        await bridge.Tor.WaitForFileAsync("Got client's hash and it was legit", Bootstrap);
        await bridge.Tor.WaitForFileAsync("connection_ext_or_process_inbuf(): Received DONE.", Bootstrap);
        await bridge.Tor.WaitForFileAsync("Received USERADDR.", Bootstrap);
        Assert.Contains("Registered server transport 'plain'", bridge.Tor.Output);
    }

    [Fact]
    public async Task With_Socks5Proxy_tor_hands_pthost_TOR_PT_PROXY_and_the_bridge_connection_comes_through_microsocks()
    {
        await using var net = await LoopbackNamespace.CreateAsync();
        await using var bridge = await TorBridge.StartAsync(net);
        // microsocks binds its outgoing connections to 127.0.0.5: the bridge's ExtORPort learns that
        // address through USERADDR only if pthost really went through the proxy.
        string microsocks = File.Exists("/usr/bin/microsocks") ? "/usr/bin/microsocks"
            : throw new InvalidOperationException("microsocks is missing: run the README's test command (bash test.sh), which installs it");
        net.Start(microsocks, ["-i", "127.0.0.1", "-p", "1080", "-b", "127.0.0.5"]);
        await using var client = net.Tor("client", $"""
            SocksPort 127.0.0.1:9050
            UseBridges 1
            Bridge plain 127.0.0.1:{TorBridge.TransportPort}
            ClientTransportPlugin plain exec {PtHostExecutable.Path}
            Socks5Proxy 127.0.0.1:1080
            """);
        await client.WaitForLogAsync("Bootstrapped 15% (handshake_done)", Bootstrap);
        await client.WaitForFileAsync("(PROXY DONE)", Bootstrap);
        await bridge.Tor.WaitForFileAsync("Got client's hash and it was legit", Bootstrap);
        await bridge.Tor.WaitForFileAsync("to '127.0.0.5:", Bootstrap);
    }

    /// <summary>A tor bridge serving plain through pthost, ExtORPort on, debug log to a file.</summary>
    internal sealed class TorBridge : IAsyncDisposable
    {
        public const int TransportPort = 9100;
        public required TorProcess Tor { get; init; }

        public static async Task<TorBridge> StartAsync(LoopbackNamespace net)
        {
            var tor = net.Tor("bridge", $"""
                SocksPort 0
                ORPort 127.0.0.1:9001
                BridgeRelay 1
                ExtORPort auto
                ServerTransportPlugin plain exec {PtHostExecutable.Path}
                ServerTransportListenAddr plain 127.0.0.1:{TransportPort}
                AssumeReachable 1
                PublishServerDescriptor 0
                SafeLogging 0
                """, debugLog: true);
            await tor.WaitForLogAsync("Registered server transport 'plain'", Bootstrap);
            await tor.WaitForLogAsync("Bootstrapped 0%", Bootstrap);
            return new TorBridge { Tor = tor };
        }

        public ValueTask DisposeAsync() => Tor.DisposeAsync();
    }
}

/// <summary>A network namespace with only <c>lo</c> up, deleted on dispose.</summary>
public sealed class LoopbackNamespace : IAsyncDisposable
{
    private static int s_count;
    private readonly List<IAsyncDisposable> _processes = [];

    private LoopbackNamespace(string name, string dir)
    {
        Name = name;
        Directory = dir;
    }

    public string Name { get; }
    public string Directory { get; }

    public static async Task<LoopbackNamespace> CreateAsync()
    {
        string ip = File.Exists("/usr/sbin/ip") ? "/usr/sbin/ip" : File.Exists("/sbin/ip") ? "/sbin/ip"
            : throw new InvalidOperationException("ip (iproute2) is missing: run the README's test command (bash test.sh), which installs it");
        if (!File.Exists("/usr/bin/tor") && !File.Exists("/usr/sbin/tor"))
            throw new InvalidOperationException("tor is missing: run the README's test command (bash test.sh), which installs it");
        string name = $"pthost-{Environment.ProcessId}-{Interlocked.Increment(ref s_count)}";
        var (exit, _, err) = await PtProcess.RunAsync(ip, "netns", "add", name);
        Assert.True(exit == 0, $"ip netns add {name}: {err} (the tests run as root, as CI does)");
        (exit, _, err) = await PtProcess.RunAsync(ip, "netns", "exec", name, ip, "link", "set", "lo", "up");
        Assert.True(exit == 0, $"ip link set lo up in {name}: {err}");
        string dir = System.IO.Directory.CreateTempSubdirectory("pthost-tor-").FullName;
        return new LoopbackNamespace(name, dir);
    }

    /// <summary>Starts a program inside the namespace.</summary>
    public PtProcess Start(string file, IEnumerable<string> args, IDictionary<string, string>? env = null)
    {
        var p = PtProcess.Start("/usr/sbin/ip", ["netns", "exec", Name, file, .. args], env, Directory);
        lock (_processes) _processes.Add(p);
        return p;
    }

    /// <summary>A tor with loopback-only directory settings and the given extra torrc lines.</summary>
    public TorProcess Tor(string role, string torrc, bool debugLog = false)
    {
        string data = Path.Combine(Directory, role);
        if (!OperatingSystem.IsLinux()) throw new PlatformNotSupportedException("tor tests use Linux network namespaces");
        System.IO.Directory.CreateDirectory(data, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute); // tor insists on 0700
        string log = Path.Combine(Directory, role + ".log");
        string conf = Path.Combine(Directory, role + ".torrc");
        File.WriteAllText(conf, $"""
            DataDirectory {data}
            UseDefaultFallbackDirs 0
            Log notice stdout
            Log {(debugLog ? "debug" : "info")} file {log}
            {torrc}

            """);
        string tor = File.Exists("/usr/bin/tor") ? "/usr/bin/tor" : "/usr/sbin/tor";
        var p = PtProcess.Start("/usr/sbin/ip", ["netns", "exec", Name, tor, "-f", conf], new Dictionary<string, string> { ["PTHOST_LOGLEVEL"] = "debug" }, Directory);
        var t = new TorProcess(p, log);
        lock (_processes) _processes.Add(t);
        return t;
    }

    public async ValueTask DisposeAsync()
    {
        List<IAsyncDisposable> all;
        lock (_processes) all = [.. _processes];
        foreach (var p in all) await p.DisposeAsync();
        // pthost children of tor die with their parent (stdin close, parent watch); give them a moment.
        var (_, pids, _) = await PtProcess.RunAsync("/usr/sbin/ip", "netns", "pids", Name);
        await KillAll(pids);
        await PtProcess.RunAsync("/usr/sbin/ip", "netns", "delete", Name);
        try { System.IO.Directory.Delete(Directory, true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }

    private static async Task KillAll(string pids)
    {
        foreach (var pid in pids.Split('\n', StringSplitOptions.RemoveEmptyEntries))
            await PtProcess.RunAsync("/bin/kill", "-9", pid.Trim());
    }
}

/// <summary>A tor process: its stdout (notice log) and its log file.</summary>
public sealed class TorProcess(PtProcess process, string logFile) : IAsyncDisposable
{
    public string Output => string.Join('\n', process.StdoutLines);

    public async Task WaitForLogAsync(string text, TimeSpan timeout)
    {
        if (!await Eventually.HoldsWithinAsync(() => process.StdoutLines.Any(l => l.Contains(text, StringComparison.Ordinal)), timeout))
            throw new TimeoutException($"tor never logged \"{text}\"; its output:\n{Output}\n{Tail()}");
    }

    public async Task WaitForFileAsync(string text, TimeSpan timeout)
    {
        if (!await Eventually.HoldsWithinAsync(() => FileContains(text), timeout))
            throw new TimeoutException($"tor's log file never had \"{text}\"; its output:\n{Output}\n{Tail()}");
    }

    public bool FileContains(string text)
    {
        try { return File.Exists(logFile) && File.ReadAllText(logFile).Contains(text, StringComparison.Ordinal); }
        catch (IOException) { return false; }
    }

    private string Tail()
    {
        try
        {
            var lines = File.ReadAllLines(logFile);
            return "log file tail:\n" + string.Join('\n', lines.TakeLast(40));
        }
        catch (IOException) { return ""; }
    }

    public ValueTask DisposeAsync() => process.DisposeAsync();
}
