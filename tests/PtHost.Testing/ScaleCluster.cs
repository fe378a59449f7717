using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Newtonsoft.Json.Linq;

namespace PtHost.Testing;

/// <summary>One <c>pthost relay jet</c> instance of a scaled-out relay tier (docs/deploy.md): fixed ports so it can be restarted where HAProxy expects it.</summary>
public sealed class JetInstance : IAsyncDisposable
{
    private JetInstance(string id, PtProcess process, IPEndPoint http, IPEndPoint tcp, IPEndPoint metrics, string configFile)
    {
        Id = id;
        Process = process;
        Http = http;
        Tcp = tcp;
        Metrics = metrics;
        ConfigFile = configFile;
    }

    public string Id { get; }
    public PtProcess Process { get; private set; }
    public IPEndPoint Http { get; }
    public IPEndPoint Tcp { get; }
    public IPEndPoint Metrics { get; }
    private string ConfigFile { get; }

    /// <summary>Starts instance <paramref name="id"/> on system-chosen ports (REST and tcp candidates; tls and wss off), with metrics.</summary>
    public static async Task<JetInstance> StartAsync(string id)
    {
        string dir = Directory.CreateTempSubdirectory("pthost-jet-scale-").FullName;
        string file = Path.Combine(dir, "relay.json");
        await File.WriteAllTextAsync(file, new JObject { ["instance"] = id, ["tcp"] = "127.0.0.1:0", ["tls"] = false, ["wss"] = false, ["maxPerSource"] = 100_000,
            ["maxAssociationsPerSource"] = 100_000, ["maxConnections"] = 100_000, ["maxAssociations"] = 100_000 }.ToString());
        var (process, fields) = await StartProcessAsync(file, "127.0.0.1:0", "127.0.0.1:0");
        return new JetInstance(id, process, fields["http"], fields["tcp"], fields["metrics"], file);
    }

    /// <summary>After a <c>kill -9</c>: the same instance again, on the same ports (HAProxy's server line names them).</summary>
    public async Task RestartAsync()
    {
        await Process.DisposeAsync();
        var config = JObject.Parse(await File.ReadAllTextAsync(ConfigFile));
        config["tcp"] = Tcp.ToString();
        await File.WriteAllTextAsync(ConfigFile, config.ToString());
        (Process, _) = await StartProcessAsync(ConfigFile, Http.ToString(), Metrics.ToString());
    }

    private static Task<(PtProcess, Dictionary<string, IPEndPoint>)> StartProcessAsync(string config, string listen, string metrics) =>
        RelayListen.StartAsync("jet", ["relay", "jet", "--listen", listen, "--config", config, "--metrics", metrics, "--loglevel", "warning"]);

    public ValueTask DisposeAsync() => Process.DisposeAsync();
}

/// <summary>One <c>pthost relay zephyr</c> instance of a cluster (spec/zephyr.md §8).</summary>
public sealed class ZephyrInstance : IAsyncDisposable
{
    private readonly string[] _args;

    private ZephyrInstance(int number, PtProcess process, IPEndPoint endPoint, IPEndPoint link, IPEndPoint metrics, string[] args)
    {
        Number = number;
        Process = process;
        EndPoint = endPoint;
        Link = link;
        Metrics = metrics;
        _args = args;
    }

    public int Number { get; }
    public PtProcess Process { get; private set; }
    public IPEndPoint EndPoint { get; }
    public IPEndPoint Link { get; }
    public IPEndPoint Metrics { get; }

    /// <summary>A cluster of <paramref name="count"/> instances: one secret, and a peers file written once every link is bound.</summary>
    public static async Task<ZephyrInstance[]> StartClusterAsync(int count, string dir)
    {
        string secret = Path.Combine(dir, "link.key");
        PtHost.Net.PrivateFile.WriteNew(secret, Convert.ToBase64String(System.Security.Cryptography.RandomNumberGenerator.GetBytes(32)) + "\n");
        string peers = Path.Combine(dir, "peers.json");
        await File.WriteAllTextAsync(peers, "{}");
        var list = new List<ZephyrInstance>();
        try
        {
            for (int n = 1; n <= count; n++)
            {
                string[] args = ["relay", "zephyr", "--instance-number", n.ToString(CultureInfo.InvariantCulture), "--link-secret", secret, "--peers", peers,
                    "--max-per-source", "100000", "--max-connections", "100000", "--loglevel", "warning"];
                var (process, fields) = await StartProcessAsync([.. args, "--listen", "127.0.0.1:0", "--link", "127.0.0.1:0", "--metrics", "127.0.0.1:0"]);
                list.Add(new ZephyrInstance(n, process, fields["listen"], fields["link"], fields["metrics"], args));
            }
            await File.WriteAllTextAsync(peers + ".new", new JObject(list.Select(i => new JProperty(i.Number.ToString(CultureInfo.InvariantCulture), i.Link.ToString()))).ToString());
            File.Move(peers + ".new", peers, overwrite: true);
            return [.. list];
        }
        catch
        {
            foreach (var i in list) await i.DisposeAsync();
            throw;
        }
    }

    public async Task RestartAsync()
    {
        await Process.DisposeAsync();
        (Process, _) = await StartProcessAsync([.. _args, "--listen", EndPoint.ToString(), "--link", Link.ToString(), "--metrics", Metrics.ToString()]);
    }

    private static Task<(PtProcess, Dictionary<string, IPEndPoint>)> StartProcessAsync(string[] args) => RelayListen.StartAsync("zephyr", args);

    public ValueTask DisposeAsync() => Process.DisposeAsync();
}

/// <summary>Starts a relay and reads its LISTEN line: the address as <c>http</c> (jet) or <c>listen</c> (zephyr), then every <c>key=IP:PORT</c> field.</summary>
internal static class RelayListen
{
    public static async Task<(PtProcess, Dictionary<string, IPEndPoint>)> StartAsync(string relay, string[] args)
    {
        var process = PtProcess.StartPthost(args);
        try
        {
            string line = await process.ReadLineAsync();
            Assert.StartsWith($"LISTEN {relay} ", line, StringComparison.Ordinal);
            var parts = line.Split(' ');
            var fields = new Dictionary<string, IPEndPoint> { [relay == "jet" ? "http" : "listen"] = IPEndPoint.Parse(parts[2]) };
            foreach (var f in parts.Skip(3)) fields[f[..f.IndexOf('=')]] = IPEndPoint.Parse(f[(f.IndexOf('=') + 1)..]);
            return (process, fields);
        }
        catch
        {
            await process.DisposeAsync();
            throw;
        }
    }
}

/// <summary>
/// Debian's haproxy (2.6) in front of relay instances. Its listeners are bound by a small python3 launcher on port 0
/// and handed over as inherited descriptors (<c>bind fd@N</c>), so no port is guessed; the stats socket (admin level)
/// tells when a health check has marked a server down or up.
/// </summary>
public sealed class HaproxyProcess : IAsyncDisposable
{
    private const string Launcher = """
        import os, socket, sys
        template, out, count = open(sys.argv[1]).read(), sys.argv[2], int(sys.argv[3])
        socks = []
        for i in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", 0))
            s.listen(4096)
            os.set_inheritable(s.fileno(), True)
            socks.append(s)
            template = template.replace("@LISTENER%d@" % i, "fd@%d" % s.fileno())
        open(out, "w").write(template)
        print("PORTS " + " ".join(str(s.getsockname()[1]) for s in socks), flush=True)
        os.execvp("haproxy", ["haproxy", "-db", "-f", out])
        """;

    private HaproxyProcess(PtProcess process, IPEndPoint[] listeners, string statsSocket, string config)
    {
        Process = process;
        Listeners = listeners;
        StatsSocket = statsSocket;
        Config = config;
    }

    public PtProcess Process { get; }
    /// <summary>The frontends' addresses, in the order of <c>@LISTENER0@</c>, <c>@LISTENER1@</c>, ... in the configuration.</summary>
    public IPEndPoint[] Listeners { get; }
    public string StatsSocket { get; }
    /// <summary>The configuration as haproxy read it.</summary>
    public string Config { get; }

    /// <summary>Starts haproxy with <paramref name="template"/>: <c>@LISTENERi@</c> become bound descriptors, <c>@STATS@</c> the stats socket path.</summary>
    public static async Task<HaproxyProcess> StartAsync(string template, int listeners)
    {
        DebianPrograms.Require("/usr/sbin/haproxy");
        string dir = Directory.CreateTempSubdirectory("pthost-haproxy-").FullName;
        string stats = Path.Combine(dir, "stats.sock");
        string launcher = Path.Combine(dir, "launch.py"), templateFile = Path.Combine(dir, "haproxy.cfg.in"), config = Path.Combine(dir, "haproxy.cfg");
        await File.WriteAllTextAsync(launcher, Launcher);
        await File.WriteAllTextAsync(templateFile, template.Replace("@STATS@", stats, StringComparison.Ordinal));
        var process = PtProcess.Start("/usr/bin/python3", [launcher, templateFile, config, listeners.ToString(CultureInfo.InvariantCulture)], null);
        try
        {
            string line = await process.ReadLineAsync();
            Assert.StartsWith("PORTS ", line, StringComparison.Ordinal);
            var ports = line[6..].Split(' ').Select(p => new IPEndPoint(IPAddress.Loopback, int.Parse(p, CultureInfo.InvariantCulture))).ToArray();
            var h = new HaproxyProcess(process, ports, stats, await File.ReadAllTextAsync(config));
            await Eventually.TrueAsync(() => File.Exists(stats) || process.HasExited, "haproxy's stats socket");
            if (!File.Exists(stats)) throw new InvalidOperationException("haproxy did not start:\n" + process.Stderr);
            return h;
        }
        catch
        {
            await process.DisposeAsync();
            throw;
        }
    }

    /// <summary>One command on the stats socket (e.g. <c>show stat</c>), its whole answer.</summary>
    public async Task<string> CommandAsync(string command)
    {
        using var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        await s.ConnectAsync(new UnixDomainSocketEndPoint(StatsSocket));
        await s.SendAsync(Encoding.ASCII.GetBytes(command + "\n"), SocketFlags.None);
        var text = new StringBuilder();
        var buffer = new byte[8192];
        int n;
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        while ((n = await s.ReceiveAsync(buffer, SocketFlags.None, cts.Token)) > 0) text.Append(Encoding.ASCII.GetString(buffer, 0, n));
        return text.ToString();
    }

    /// <summary>The status column of <c>show stat</c> for one server (UP, DOWN, "UP 1/2", ...).</summary>
    public async Task<string> ServerStatusAsync(string backend, string server)
    {
        string csv = await CommandAsync("show stat");
        var lines = csv.Split('\n');
        var header = lines[0].TrimStart('#', ' ').Split(',');
        int status = Array.IndexOf(header, "status");
        foreach (var l in lines.Skip(1))
        {
            var f = l.Split(',');
            if (f.Length > status && f[0] == backend && f[1] == server) return f[status];
        }
        throw new InvalidOperationException($"haproxy has no server {backend}/{server}:\n{csv}");
    }

    /// <summary>Waits until haproxy's health check reports <paramref name="server"/> as exactly <paramref name="status"/>.</summary>
    public Task WaitForStatusAsync(string backend, string server, string status, TimeSpan? within = null) =>
        Eventually.TrueAsync(async () => await ServerStatusAsync(backend, server) == status, $"haproxy to mark {backend}/{server} {status}", within ?? TimeSpan.FromSeconds(30));

    public ValueTask DisposeAsync() => Process.DisposeAsync();
}

/// <summary>Debian's prometheus (2.42) scraping static targets every second; its HTTP API answers instant queries.</summary>
public sealed class PrometheusProcess : IAsyncDisposable
{
    private readonly HttpClient _http;

    private PrometheusProcess(PtProcess process, IPEndPoint web)
    {
        Process = process;
        Web = web;
        _http = new HttpClient { BaseAddress = new Uri($"http://{web}"), Timeout = TimeSpan.FromSeconds(10) };
    }

    public PtProcess Process { get; }
    public IPEndPoint Web { get; }

    /// <summary>
    /// Starts prometheus on 127.0.0.1 port 0 (the port is read from the kernel's socket table for its pid) scraping
    /// <paramref name="targets"/> by job.
    /// </summary>
    public static async Task<PrometheusProcess> StartAsync(IReadOnlyDictionary<string, IPEndPoint[]> targets)
    {
        DebianPrograms.Require("/usr/bin/prometheus");
        string dir = Directory.CreateTempSubdirectory("pthost-prometheus-").FullName;
        var config = new StringBuilder("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n");
        foreach (var (job, eps) in targets)
            config.Append(CultureInfo.InvariantCulture, $"  - job_name: {job}\n    static_configs:\n      - targets: [{string.Join(", ", eps.Select(e => $"'{e}'"))}]\n");
        string file = Path.Combine(dir, "prometheus.yml");
        await File.WriteAllTextAsync(file, config.ToString());
        var process = PtProcess.Start("/usr/bin/prometheus", [$"--config.file={file}", $"--storage.tsdb.path={Path.Combine(dir, "data")}",
            "--web.listen-address=127.0.0.1:0", "--log.level=warn"], null);
        try
        {
            var web = await Eventually.ValueAsync(() => ListeningPort(process.Pid), p => p is not null, TimeSpan.FromSeconds(30))
                ?? throw new TimeoutException("prometheus did not listen:\n" + process.Stderr);
            var p = new PrometheusProcess(process, web);
            await Eventually.TrueAsync(async () =>
            {
                try { return (await p._http.GetAsync("/-/ready")).IsSuccessStatusCode; }
                catch (HttpRequestException) { return false; }
            }, "prometheus to be ready", TimeSpan.FromSeconds(30));
            return p;
        }
        catch
        {
            await process.DisposeAsync();
            throw;
        }
    }

    /// <summary>The TCP port a process listens on, from <c>ss -Hltnp</c> (iproute2).</summary>
    private static IPEndPoint? ListeningPort(int pid)
    {
        var (exit, stdout, _) = PtProcess.RunAsync("/usr/bin/ss", ["-Hltnp"], TimeSpan.FromSeconds(10)).GetAwaiter().GetResult();
        if (exit != 0) return null;
        foreach (var line in stdout.Split('\n'))
            if (line.Contains($"pid={pid},", StringComparison.Ordinal))
            {
                var local = line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[3];
                return IPEndPoint.Parse(local);
            }
        return null;
    }

    /// <summary>An instant query's single value; null when the result is empty.</summary>
    public async Task<double?> QueryAsync(string expression)
    {
        var body = JObject.Parse(await _http.GetStringAsync("/api/v1/query?query=" + Uri.EscapeDataString(expression)));
        Assert.Equal("success", (string?)body["status"]);
        var result = (JArray)body["data"]!["result"]!;
        if (result.Count == 0) return null;
        Assert.Single(result);
        return double.Parse((string)result[0]["value"]![1]!, CultureInfo.InvariantCulture);
    }

    /// <summary>Waits until <paramref name="expression"/> evaluates to <paramref name="expected"/> (the scrapes catch up within seconds).</summary>
    public async Task WaitForValueAsync(string expression, double expected, TimeSpan? within = null)
    {
        double? last = null;
        try
        {
            await Eventually.TrueAsync(async () => (last = await QueryAsync(expression)) == expected, $"prometheus: {expression} == {expected}", within ?? TimeSpan.FromSeconds(30));
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            throw new Xunit.Sdk.XunitException($"prometheus: {expression} is {last?.ToString(CultureInfo.InvariantCulture) ?? "empty"}, expected {expected}: {e.Message}");
        }
    }

    public async ValueTask DisposeAsync()
    {
        _http.Dispose();
        await Process.DisposeAsync();
    }
}
