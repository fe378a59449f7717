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
            if (throughPthost)
            {
                string server = $$"""{"role":"server","transports":["plain"],"target":"127.0.0.1:{{OpenVpnPort}}","bindaddr":{"plain":"{{VethB}}:0"},"state":"{{Path.Combine(dir, "s")}}","exit-on-stdin-close":true,"loglevel":"warning"}""";
                var s = b.Start(ctx.PtHost, [server]);
                var serverEp = (await s.ReadUntilDoneAsync().ConfigureAwait(false)).Single(l => l.StartsWith("SMETHOD plain ", StringComparison.Ordinal)).Split(' ')[2];
                string client = $$"""{"role":"client","transports":["plain"],"mode":"transparent-udp","target":"{{serverEp}}","state":"{{Path.Combine(dir, "c")}}","exit-on-stdin-close":true,"loglevel":"warning"}""";
                var c = a.Start(ctx.PtHost, [client]);
                var listen = IPEndPoint.Parse((await c.ReadUntilDoneAsync().ConfigureAwait(false)).Single(l => l.StartsWith("CMETHOD plain transparent-UDP ", StringComparison.Ordinal)).Split(' ')[3]);
                (remote, remotePort) = ("127.0.0.1", listen.Port);
            }
            string[] common = ["--dev", "tun", "--cipher", "AES-256-CBC", "--data-ciphers", "AES-256-CBC", "--verb", "1", "--proto", "udp"];
            b.Start(openvpn, [.. common, "--ifconfig", TunnelB, TunnelA, "--secret", key, "1", "--lport", OpenVpnPort.ToString(CultureInfo.InvariantCulture)]);
            a.Start(openvpn, [.. common, "--ifconfig", TunnelA, TunnelB, "--secret", key, "0", "--remote", remote, remotePort.ToString(CultureInfo.InvariantCulture), "--nobind"]);
            var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(60);
            while ((await PtProcess.RunAsync("/usr/sbin/ip", ["netns", "exec", a.Name, "ping", "-c", "1", "-W", "1", TunnelB]).ConfigureAwait(false)).Exit != 0)
                if (DateTime.UtcNow > deadline) throw new TimeoutException("no ping through the OpenVPN tunnel within 60 s");
            b.Start(iperf3, ["-s", "-1", "-B", TunnelB, "-p", IperfPort.ToString(CultureInfo.InvariantCulture)]);
            JsonNode? result = null;
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
            raw.Add(new JsonObject { ["kind"] = throughPthost ? "transparent_udp_plain" : "direct", ["rep"] = rep, ["mbps"] = bps / 1e6 });
            return bps / 1e6;
        }
        catch (Exception e) when (!ScenarioRun.IsMeasurementFailure(e) && e is not OutOfMemoryException)
        {
            throw new InvalidOperationException(e.Message, e); // an assertion of the test library: a failed measurement, not a crash
        }
    }
}
