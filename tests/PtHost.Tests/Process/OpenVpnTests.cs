using System.Net;
using System.Security.Cryptography;
using Newtonsoft.Json.Linq;
using Xunit.Abstractions;

namespace PtHost.Tests.Process;

/// <summary>
/// OpenVPN over pthost (issue 21, spec/ipc.md §12): Debian's openvpn with a static key in two network namespaces joined
/// by a veth pair; the pthost client in A (transparent front end on its loopback), the pthost server in B (bound to
/// B's openvpn). Through the tunnel: a ping, and a 10 MiB file served in B and fetched from A, checked with SHA-256.
/// </summary>
[Collection("process")]
public class OpenVpnTests(ITestOutputHelper output)
{
    [Theory]
    [InlineData("tcp", "plain")]
    [InlineData("tcp", "rud")]
    [InlineData("udp", "plain")]
    [InlineData("udp", "asport")]
    public async Task OpenVpn_through_a_transparent_front_end_pings_and_carries_10_MiB(string proto, string transport)
    {
        await using var net = await OpenVpnNet.StartAsync(proto, transport);
        var (exit, text, _) = await PtProcess.RunAsync("/usr/sbin/ip", ["netns", "exec", net.A.Name, "ping", "-c", "3", "-W", "2", OpenVpnNet.TunnelB]);
        output.WriteLine(text);
        Assert.Equal(0, exit);
        var body = RandomNumberGenerator.GetBytes(10 << 20);
        var got = await net.FetchThroughTunnelAsync(body);
        Assert.Equal(Convert.ToHexString(SHA256.HashData(body)), Convert.ToHexString(SHA256.HashData(got)));
        var status = await net.Client.QueryStatusAsync(transport);
        output.WriteLine($"client STATUS: {string.Join(' ', status.Select(kv => $"{kv.Key}={kv.Value}"))}");
        Assert.True(status["BYTES-IN"] > 10 << 20 || status["BYTES-OUT"] > 10 << 20, "the file went through pthost");
    }
}

/// <summary>Two namespaces, pthost server and client, and openvpn on both sides (round2.md's verified static-key commands).</summary>
public sealed class OpenVpnNet : IAsyncDisposable
{
    public const string VethA = "10.99.0.1", VethB = "10.99.0.2", TunnelA = "10.8.0.1", TunnelB = "10.8.0.2";
    public const int OpenVpnPort = 1194, WebPort = 8080;
    private readonly List<IAsyncDisposable> _owned = [];
    public NetworkNamespace A { get; private set; } = null!;
    public NetworkNamespace B { get; private set; } = null!;
    public PtProcess Client { get; private set; } = null!;
    public PtProcess Server { get; private set; } = null!;
    public string Directory { get; } = System.IO.Directory.CreateTempSubdirectory("pthost-openvpn-").FullName;

    private static string OpenVpn => DebianPrograms.Require("/usr/sbin/openvpn");

    /// <summary>The namespaces and the veth pair only: openvpn directly between them is <see cref="StartOpenVpnAsync"/> with B's veth address.</summary>
    public static async Task<OpenVpnNet> CreateAsync()
    {
        var net = new OpenVpnNet();
        try
        {
            net.A = await NetworkNamespace.CreateAsync("ovpn-a");
            net._owned.Add(net.A);
            net.B = await NetworkNamespace.CreateAsync("ovpn-b");
            net._owned.Add(net.B);
            await net.A.IpAsync("link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", net.B.Name);
            await net.A.IpAsync("addr", "add", VethA + "/24", "dev", "va");
            await net.B.IpAsync("addr", "add", VethB + "/24", "dev", "vb");
            await net.A.IpAsync("link", "set", "va", "up");
            await net.B.IpAsync("link", "set", "vb", "up");
            var (exit, _, err) = await PtProcess.RunAsync(OpenVpn, "--genkey", "secret", Path.Combine(net.Directory, "static.key"));
            Assert.True(exit == 0, "openvpn --genkey: " + err);
            return net;
        }
        catch
        {
            await net.DisposeAsync();
            throw;
        }
    }

    /// <summary>pthost server in B (bound to B's openvpn), client in A (transparent front end), openvpn on both sides through them.</summary>
    public static async Task<OpenVpnNet> StartAsync(string proto, string transport)
    {
        var net = await CreateAsync();
        try
        {
            JObject serverOptions = [], clientOptions = [];
            if (transport == "rud")
            {
                var g = await PtChain.GenerateConfigAsync("rud");
                serverOptions = (JObject)g["server"]!;
                clientOptions = (JObject)g["client"]!;
            }
            if (transport == "asport")
            {
                // The relay runs in B, where both the server (its client) and A (its public ports) reach it.
                var relay = await AsportRelayProcess.StartInAsync(net.B, VethB + ":0", "0.0.0.0/0");
                net._owned.Add(relay);
                serverOptions = (JObject)AsportTransportTests.ServerConfig(relay.EndPoint, "127.0.0.1:1")["options"]!["asport"]!;
            }
            var serverConfig = new JObject
            {
                ["role"] = "server",
                ["transports"] = new JArray(transport),
                ["target"] = $"127.0.0.1:{OpenVpnPort}",
                ["bindaddr"] = new JObject { [transport] = VethB + ":0" },
                ["options"] = new JObject { [transport] = serverOptions },
                ["state"] = Path.Combine(net.Directory, "server"),
                ["exit-on-stdin-close"] = true,
            };
            net.Server = net.B.Start(PtHostExecutable.Path, [serverConfig.ToString(Newtonsoft.Json.Formatting.None)]);
            var serverLines = await net.Server.ReadUntilDoneAsync();
            var serverEp = serverLines.Single(l => l.StartsWith($"SMETHOD {transport} ", StringComparison.Ordinal)).Split(' ')[2];
            var clientConfig = new JObject
            {
                ["role"] = "client",
                ["transports"] = new JArray(transport),
                ["mode"] = proto == "tcp" ? "transparent-tcp" : "transparent-udp",
                ["options"] = new JObject { [transport] = clientOptions },
                ["state"] = Path.Combine(net.Directory, "client"),
                ["exit-on-stdin-close"] = true,
            };
            if (transport != "asport") clientConfig["target"] = serverEp;
            net.Client = net.A.Start(PtHostExecutable.Path, [clientConfig.ToString(Newtonsoft.Json.Formatting.None)]);
            var clientLines = await net.Client.ReadUntilDoneAsync();
            var listen = IPEndPoint.Parse(clientLines.Single(l => l.StartsWith($"CMETHOD {transport} transparent-", StringComparison.Ordinal)).Split(' ')[3]);
            if (transport == "asport")
            {
                // The server's asport.address signal tells the client the relay's public port (spec/asport.md §6.2).
                foreach (var l in serverLines.Where(l => l.StartsWith("SMESSAGE ", StringComparison.Ordinal))) await net.Client.WriteLineAsync("SMESSAGE" + l["SMESSAGE".Length..]);
                await net.Client.WaitForStderrAsync("learned from SMESSAGE");
            }
            await net.StartOpenVpnAsync(proto, "127.0.0.1", listen.Port);
            return net;
        }
        catch
        {
            await net.DisposeAsync();
            throw;
        }
    }

    /// <summary>openvpn in B (listening on <see cref="OpenVpnPort"/>) and in A (towards <paramref name="remote"/>:<paramref name="port"/>); waits for a ping through.</summary>
    public async Task StartOpenVpnAsync(string proto, string remote, int port)
    {
        string key = Path.Combine(Directory, "static.key");
        string[] common = ["--dev", "tun", "--cipher", "AES-256-CBC", "--data-ciphers", "AES-256-CBC", "--verb", "3", "--ping", "2"];
        var b = B.Start(OpenVpn, [.. common, "--ifconfig", TunnelB, TunnelA, "--secret", key, "1", "--proto", proto == "tcp" ? "tcp-server" : "udp", "--lport", OpenVpnPort.ToString()]);
        await SaidAsync(b, proto == "tcp" ? "Listening for incoming TCP connection" : "UDPv4 link local");
        A.Start(OpenVpn, [.. common, "--ifconfig", TunnelA, TunnelB, "--secret", key, "0", "--proto", proto == "tcp" ? "tcp-client" : "udp", "--remote", remote, port.ToString(), "--nobind"]);
        await Eventually.TrueAsync(async () =>
        {
            var (exit, _, _) = await PtProcess.RunAsync("/usr/sbin/ip", ["netns", "exec", A.Name, "ping", "-c", "1", "-W", "1", TunnelB]);
            return exit == 0;
        }, "a ping through the tunnel", TimeSpan.FromSeconds(60));
    }

    /// <summary>Serves <paramref name="body"/> from B's tunnel address (python3 -m http.server) and fetches it in A with curl.</summary>
    public async Task<byte[]> FetchThroughTunnelAsync(byte[] body)
    {
        string web = System.IO.Directory.CreateDirectory(Path.Combine(Directory, "web")).FullName;
        File.WriteAllBytes(Path.Combine(web, "file.bin"), body);
        var server = B.Start("/usr/bin/python3", ["-u", "-m", "http.server", WebPort.ToString(), "--bind", TunnelB, "--directory", web]);
        await SaidAsync(server, "Serving HTTP");
        string output = Path.Combine(Directory, "got.bin");
        var (exit, _, err) = await PtProcess.RunAsync("/usr/sbin/ip", ["netns", "exec", A.Name, DebianPrograms.Curl, "-sS", "--max-time", "120", "-o", output, $"http://{TunnelB}:{WebPort}/file.bin"], TimeSpan.FromSeconds(150));
        Assert.True(exit == 0, "curl through the tunnel: " + err);
        return File.ReadAllBytes(output);
    }

    /// <summary>Waits until <paramref name="p"/> has written <paramref name="text"/> on stdout or stderr.</summary>
    private static Task SaidAsync(PtProcess p, string text) =>
        Eventually.TrueAsync(() => p.Stderr.Contains(text, StringComparison.Ordinal) || p.StdoutLines.Any(l => l.Contains(text, StringComparison.Ordinal)),
            $"\"{text}\" from pid {p.Pid}", TimeSpan.FromSeconds(30));

    public async ValueTask DisposeAsync()
    {
        for (int i = _owned.Count - 1; i >= 0; i--) await _owned[i].DisposeAsync();
        try { System.IO.Directory.Delete(Directory, true); } catch (IOException) { }
    }
}
