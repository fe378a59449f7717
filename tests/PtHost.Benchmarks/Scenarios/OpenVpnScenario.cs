using System.Globalization;
using System.Net;
using System.Text.Json.Nodes;
using PtHost.Testing;

namespace PtHost.Benchmarks;

/// <summary>
/// OpenVPN (proto udp, static key) between two network namespaces (spec/ipc.md §12.4, issue 21): iperf3 (one TCP
/// stream) through the tunnel, once with openvpn directly across the veth pair, once through pthost's transparent
/// UDP front end over plain (client in A, bound server in B). Same run, same namespaces; the ratio is the figure.
/// </summary>
public sealed class OpenVpnScenario : IScenario
{
    private const string VethA = "10.99.0.1", VethB = "10.99.0.2", TunnelA = "10.8.0.1", TunnelB = "10.8.0.2";
    private const int OpenVpnPort = 1194, IperfPort = 5201;

    public string Name => "openvpn";
    public string Title => "OpenVPN (UDP) through transparent UDP over plain vs OpenVPN direct, iperf3 in the tunnel";

    public async Task RunAsync(Context ctx, ScenarioRun run)
    {
        var direct = new Figure { Key = "openvpn_direct_mbps", Label = "OpenVPN udp direct between namespaces, iperf3 (reference)", Unit = "Mbit/s", Format = "0" };
        var via = new Figure { Key = "openvpn_transparent_udp_plain_mbps", Label = "OpenVPN udp through pthost transparent UDP + plain", Unit = "Mbit/s", Format = "0" };
        var ratio = new Figure { Key = "openvpn_transparent_udp_plain_ratio", Label = "ratio to direct", Unit = "", Indent = 1, Goal = Goal.AtLeast, Target = 0.7 };
        run.Add(direct, via, ratio);
        var raw = run.Raw("openvpn");
        string openvpn, iperf3;
        try
        {
            await Sys.EnsureToolsAsync([("iperf3", "iperf3"), ("openvpn", "openvpn"), ("ip", "iproute2"), ("ping", "iputils-ping")], ctx.Say).ConfigureAwait(false);
            openvpn = Sys.Which("openvpn")!;
            iperf3 = Sys.Which("iperf3")!;
        }
        catch (Exception e) when (ScenarioRun.IsMeasurementFailure(e))
        {
            run.FailRemaining(e);
            return;
        }
        for (int rep = 0; rep < ctx.Repetitions; rep++)
        {
            ctx.Say($"openvpn {rep + 1}/{ctx.Repetitions}: direct");
            double d = await ScenarioRun.AttemptAsync(direct, () => MeasureAsync(ctx, openvpn, iperf3, throughPthost: false, raw, rep)).ConfigureAwait(false);
            ctx.Say($"openvpn {rep + 1}/{ctx.Repetitions}: transparent UDP + plain");
            double v = await ScenarioRun.AttemptAsync(via, () => MeasureAsync(ctx, openvpn, iperf3, throughPthost: true, raw, rep)).ConfigureAwait(false);
            ScenarioRun.AddRatio(ratio, v, d, via, direct);
        }
    }

    private static async Task<double> MeasureAsync(Context ctx, string openvpn, string iperf3, bool throughPthost, JsonArray raw, int rep)
    {
        try
        {
            await using var a = await NetworkNamespace.CreateAsync("bench-ovpn-a").ConfigureAwait(false);
            await using var b = await NetworkNamespace.CreateAsync("bench-ovpn-b").ConfigureAwait(false);
            await a.IpAsync("link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", b.Name).ConfigureAwait(false);
            await a.IpAsync("addr", "add", VethA + "/24", "dev", "va").ConfigureAwait(false);
            await b.IpAsync("addr", "add", VethB + "/24", "dev", "vb").ConfigureAwait(false);
            await a.IpAsync("link", "set", "va", "up").ConfigureAwait(false);
            await b.IpAsync("link", "set", "vb", "up").ConfigureAwait(false);
            string dir = ctx.NewStateDir();
            string key = Path.Combine(dir, "static.key");
            var (gen, _, genErr) = await PtProcess.RunAsync(openvpn, "--genkey", "secret", key).ConfigureAwait(false);
            if (gen != 0) throw new InvalidOperationException("openvpn --genkey: " + genErr);
            string remote = VethB;
            int remotePort = OpenVpnPort;
            PtProcess? clientHost = null, serverHost = null;
            if (throughPthost)
            {
                string server = $$"""{"role":"server","transports":["plain"],"target":"127.0.0.1:{{OpenVpnPort}}","bindaddr":{"plain":"{{VethB}}:0"},"state":"{{Path.Combine(dir, "s")}}","exit-on-stdin-close":true,"loglevel":"warning"}""";
                var s = serverHost = b.Start(ctx.PtHost, [server], PthostEnv());
                var serverEp = (await s.ReadUntilDoneAsync().ConfigureAwait(false)).Single(l => l.StartsWith("SMETHOD plain ", StringComparison.Ordinal)).Split(' ')[2];
                string client = $$"""{"role":"client","transports":["plain"],"mode":"transparent-udp","target":"{{serverEp}}","state":"{{Path.Combine(dir, "c")}}","exit-on-stdin-close":true,"loglevel":"warning"}""";
                var c = clientHost = a.Start(ctx.PtHost, [client], PthostEnv());
                var listen = IPEndPoint.Parse((await c.ReadUntilDoneAsync().ConfigureAwait(false)).Single(l => l.StartsWith("CMETHOD plain transparent-UDP ", StringComparison.Ordinal)).Split(' ')[3]);
                (remote, remotePort) = ("127.0.0.1", listen.Port);
            }
            string[] common = ["--dev", "tun", "--cipher", "AES-256-CBC", "--data-ciphers", "AES-256-CBC", "--verb", "1", "--proto", "udp", .. (Environment.GetEnvironmentVariable("PTHOST_BENCH_OPENVPN_ARGS") ?? "").Split(' ', StringSplitOptions.RemoveEmptyEntries)];
            var ovpnB = b.Start(openvpn, [.. common, "--ifconfig", TunnelB, TunnelA, "--secret", key, "1", "--lport", OpenVpnPort.ToString(CultureInfo.InvariantCulture)]);
            var ovpnA = a.Start(openvpn, [.. common, "--ifconfig", TunnelA, TunnelB, "--secret", key, "0", "--remote", remote, remotePort.ToString(CultureInfo.InvariantCulture), "--nobind"]);
            var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(60);
            while ((await PtProcess.RunAsync("/usr/sbin/ip", ["netns", "exec", a.Name, "ping", "-c", "1", "-W", "1", TunnelB]).ConfigureAwait(false)).Exit != 0)
                if (DateTime.UtcNow > deadline) throw new TimeoutException("no ping through the OpenVPN tunnel within 60 s");
            b.Start(iperf3, ["-s", "-1", "-B", TunnelB, "-p", IperfPort.ToString(CultureInfo.InvariantCulture)]);
            JsonNode? result = null;
            PtProcess?[] processes = [clientHost, serverHost, ovpnA, ovpnB];
            double[] cpuBefore = [.. processes.Select(CpuSeconds)];
            long[] switchesBefore = [.. processes.Select(ContextSwitches)];
            for (int attempt = 0; attempt < 50 && result is null; attempt++)
            {
                var (exit, stdout, _) = await PtProcess.RunAsync("/usr/sbin/ip", ["netns", "exec", a.Name, iperf3, "-c", TunnelB, "-p", IperfPort.ToString(CultureInfo.InvariantCulture),
                    "-t", ctx.IperfSeconds.ToString(CultureInfo.InvariantCulture), "-J"], TimeSpan.FromSeconds(ctx.IperfSeconds + 60)).ConfigureAwait(false);
                // A run without a receiver summary (the one-shot server not listening yet) is tried again.
                if (exit == 0 && JsonNode.Parse(stdout)?["end"]?["sum_received"]?["bits_per_second"] is { } measured) result = measured;
                else await Task.Delay(100).ConfigureAwait(false);
            }
            if (result is null) throw new InvalidOperationException("iperf3 through the tunnel failed 50 times");
            double bps = result.GetValue<double>();
            // CPU seconds each process spent during the iperf3 runs, and what each UDP socket's receive queue dropped
            // (/proc/net/udp; in A: pthost's listener and openvpn's client socket, in B: openvpn's server socket and
            // pthost's sockets towards it): where a datagram was lost, per stage.
            double[] cpu = [.. processes.Select((p, i) => Math.Round(CpuSeconds(p) - cpuBefore[i], 2))];
            // What the client dropped inside the host (spec/ipc.md §12.4: association queue full, too many sources, open failed).
            long? hostDropped = null;
            if (clientHost is not null) hostDropped = (await clientHost.QueryStatusAsync("plain").ConfigureAwait(false))["DATAGRAMS-DROPPED"];
            long[] switches = [.. processes.Select((p, i) => ContextSwitches(p) - switchesBefore[i])];
            raw.Add(new JsonObject
            {
                ["kind"] = throughPthost ? "transparent_udp_plain" : "direct", ["rep"] = rep, ["mbps"] = bps / 1e6,
                ["cpu_s"] = new JsonObject { ["pthost_client"] = cpu[0], ["pthost_server"] = cpu[1], ["openvpn_a"] = cpu[2], ["openvpn_b"] = cpu[3] },
                ["context_switches"] = new JsonObject { ["pthost_client"] = switches[0], ["pthost_server"] = switches[1], ["openvpn_a"] = switches[2], ["openvpn_b"] = switches[3] },
                ["pthost_client_datagrams_dropped"] = hostDropped,
                ["udp_drops"] = new JsonObject { ["a"] = await UdpDropsAsync(a.Name).ConfigureAwait(false), ["b"] = await UdpDropsAsync(b.Name).ConfigureAwait(false) },
            });
            return bps / 1e6;
        }
        catch (Exception e) when (!ScenarioRun.IsMeasurementFailure(e) && e is not OutOfMemoryException)
        {
            throw new InvalidOperationException(e.Message, e); // an assertion of the test library: a failed measurement, not a crash
        }
    }

    /// <summary>What --pthost-env adds, for the pthost children started in a namespace.</summary>
    private static Dictionary<string, string> PthostEnv() =>
        Chain.ExtraEnvFor(null).Where(kv => kv.Value is not null).ToDictionary(kv => kv.Key, kv => kv.Value!);

    /// <summary>utime + stime of a running process (/proc/PID/stat fields 14 and 15, in clock ticks of 1/100 s); 0 when gone or null.</summary>
    private static double CpuSeconds(PtProcess? p)
    {
        if (p is null) return 0;
        try
        {
            string stat = File.ReadAllText($"/proc/{p.Pid}/stat");
            string[] f = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
            return (long.Parse(f[11], CultureInfo.InvariantCulture) + long.Parse(f[12], CultureInfo.InvariantCulture)) / 100.0;
        }
        catch (IOException) { return 0; }
    }

    /// <summary>Voluntary and involuntary context switches of all a process's threads (/proc/PID/task/*/status); 0 when gone or null.</summary>
    private static long ContextSwitches(PtProcess? p)
    {
        if (p is null) return 0;
        long sum = 0;
        try
        {
            foreach (string task in Directory.GetDirectories($"/proc/{p.Pid}/task"))
                foreach (string line in File.ReadLines(Path.Combine(task, "status")))
                    if (line.Contains("ctxt_switches:", StringComparison.Ordinal)) sum += long.Parse(line[(line.IndexOf(':') + 1)..].Trim(), CultureInfo.InvariantCulture);
        }
        catch (IOException) { }
        return sum;
    }

    /// <summary>The drops column of /proc/net/udp in namespace <paramref name="ns"/>, per local port that dropped any.</summary>
    private static async Task<JsonObject> UdpDropsAsync(string ns)
    {
        var drops = new JsonObject();
        var (exit, stdout, _) = await PtProcess.RunAsync("/usr/sbin/ip", ["netns", "exec", ns, "cat", "/proc/net/udp", "/proc/net/udp6"]).ConfigureAwait(false);
        if (exit != 0) return drops;
        foreach (string line in stdout.Split('\n'))
        {
            string[] f = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            if (f.Length < 13 || !f[0].EndsWith(':') || !long.TryParse(f[^1], CultureInfo.InvariantCulture, out long d)) continue;
            int port = int.Parse(f[1][(f[1].IndexOf(':') + 1)..], NumberStyles.HexNumber, CultureInfo.InvariantCulture);
            if (d > 0) drops[port.ToString(CultureInfo.InvariantCulture)] = d;
        }
        return drops;
    }
}
