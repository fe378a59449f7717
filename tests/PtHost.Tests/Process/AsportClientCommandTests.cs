using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text.RegularExpressions;
using Newtonsoft.Json.Linq;
using PtHost.Transports.Asport;

namespace PtHost.Tests.Process;

/// <summary>
/// <c>pthost asport-client --config FILE</c> (spec/asport.md §4.4), the real process between the real
/// <c>pthost relay asport</c> and a local service: curl through the public port to a local HTTP server, UDP
/// echo in native and QUIC modes, a relay killed and restarted (the client registers again after its
/// back-off and serves again), and a refusal at the first registration (exit 78).
/// </summary>
[Collection("process")]
public sealed partial class AsportClientCommandTests
{
    private static readonly TimeSpan Wait = TimeSpan.FromSeconds(30);

    private static string WriteConfig(string dir, IPEndPoint relay, IPEndPoint local, ForwardMode mode, string password = AsportRelayProcess.Password)
    {
        var path = Path.Combine(dir, "asport-client.json");
        File.WriteAllText(path, new JObject
        {
            ["server"] = relay.ToString(),
            ["pin"] = Convert.ToHexString(AsportRelayProcess.Cert.Sha256).ToLowerInvariant(),
            ["user"] = AsportRelayProcess.User.ToString(),
            ["password"] = password,
            ["mode"] = (int)mode,
            ["ports"] = "20000-60000",
            ["local"] = local.ToString(),
        }.ToString());
        return path;
    }

    /// <summary>Starts the command; returns it with the public address of its LISTEN line.</summary>
    private static async Task<(PtProcess Process, IPEndPoint Public)> StartAsync(string config, params string[] more)
    {
        var p = PtProcess.StartPthost(["asport-client", "--config", config, "--loglevel", "info", .. more]);
        try
        {
            var line = await p.ReadLineAsync(Wait);
            var m = ListenLine().Match(line);
            Assert.True(m.Success, $"unexpected first line \"{line}\":\n{p.Stderr}");
            return (p, IPEndPoint.Parse(m.Groups[1].Value));
        }
        catch
        {
            await p.DisposeAsync();
            throw;
        }
    }

    [GeneratedRegex(@"^LISTEN asport-client (\S+) mode=\d( metrics=\S+)?$")]
    private static partial Regex ListenLine();

    [GeneratedRegex(@"registered; public port (\d+)")]
    private static partial Regex Registered();

    private static async Task CurlAsync(int port, byte[] body, string dir)
    {
        var file = Path.Combine(dir, "got-" + Guid.NewGuid().ToString("N"));
        var (rc, _, err) = await PtProcess.RunAsync("curl", "-sS", "--max-time", "60", "-o", file, $"http://127.0.0.1:{port}/f");
        Assert.True(rc == 0, "curl: " + err);
        Assert.Equal(SHA256.HashData(body), SHA256.HashData(File.ReadAllBytes(file)));
    }

    [Fact]
    public async Task Curl_reaches_a_local_web_server_through_the_public_port_and_again_after_the_relay_restarts()
    {
        var body = RandomNumberGenerator.GetBytes(2 << 20);
        await using var web = new HttpFileServer(body);
        var relay = await AsportRelayProcess.StartAsync();
        AsportRelayProcess? again = null;
        try
        {
            var config = WriteConfig(relay.Directory, relay.EndPoint, new IPEndPoint(IPAddress.Loopback, web.Port), ForwardMode.Tcp);
            var (client, pub) = await StartAsync(config);
            await using (client)
            {
                Assert.Equal(relay.EndPoint.Address, pub.Address);
                await CurlAsync(pub.Port, body, relay.Directory);
                await Task.WhenAll(Enumerable.Range(0, 4).Select(_ => CurlAsync(pub.Port, body, relay.Directory)));

                // The relay dies and comes back on the same UDP port: the client notices (QUIC idle timeout),
                // reconnects with back-off (§4.3), registers again and the public port serves again.
                relay.Process.Signal(9);
                Assert.NotEqual(0, await relay.Process.WaitForExitAsync(Wait));
                again = await AsportRelayProcess.StartAsync(relay.EndPoint.ToString());
                await client.WaitForStderrAsync("registered; public port", count: 2, within: TimeSpan.FromSeconds(90));
                var port = int.Parse(Registered().Matches(client.Stderr)[^1].Groups[1].Value);
                await CurlAsync(port, body, relay.Directory);

                client.Signal(15);
                Assert.Equal(0, await client.WaitForExitAsync(Wait));
                Assert.Single(client.StdoutLines);
            }
        }
        finally
        {
            await relay.DisposeAsync();
            if (again is not null) await again.DisposeAsync();
        }
    }

    [Theory]
    [InlineData(ForwardMode.UdpNative)]
    [InlineData(ForwardMode.UdpQuic)]
    public async Task Udp_echo_through_the_public_port(ForwardMode mode)
    {
        await using var echo = new UdpEcho();
        await using var relay = await AsportRelayProcess.StartAsync();
        var (client, pub) = await StartAsync(WriteConfig(relay.Directory, relay.EndPoint, echo.EndPoint, mode));
        await using (client)
        {
            using var udp = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
            udp.Bind(new IPEndPoint(IPAddress.Loopback, 0));
            var buf = new byte[65536];
            foreach (var size in new[] { 1, 1200, 5000 })
            {
                var payload = RandomNumberGenerator.GetBytes(size);
                using var cts = new CancellationTokenSource(Wait);
                while (true)
                {
                    // UDP is lossy: send again until the echo comes back.
                    await udp.SendToAsync(payload, SocketFlags.None, pub, cts.Token);
                    var recv = udp.ReceiveAsync(buf, SocketFlags.None, cts.Token).AsTask();
                    if (!await Eventually.CompletesWithinAsync(recv, TimeSpan.FromSeconds(2))) continue;
                    Assert.Equal(payload, buf.AsSpan(0, await recv).ToArray());
                    break;
                }
            }
        }
    }

    /// <summary>
    /// spec/asport.md §4.4: <c>--metrics</c> serves what an operator of the client watches: the forwarded
    /// connections as sessions with their bytes, a local service that refused (reason local-connect), and the
    /// link to the relay (registrations, reconnects, registered now) across a relay's kill -9 and restart.
    /// </summary>
    [Fact]
    public async Task Metrics_count_forwarded_sessions_bytes_local_refusals_and_reconnects()
    {
        var echo = new EchoServer();
        var relay = await AsportRelayProcess.StartAsync();
        AsportRelayProcess? again = null;
        try
        {
            var config = WriteConfig(relay.Directory, relay.EndPoint, echo.EndPoint, ForwardMode.Tcp);
            var (client, pub) = await StartAsync(config, "--metrics", "127.0.0.1:0", "--instance", "edge-asport");
            await using (client)
            {
                string listen = client.StdoutLines[0];
                string metrics = listen[(listen.IndexOf(" metrics=", StringComparison.Ordinal) + 9)..];
                using var http = new HttpClient();
                async Task<string> ScrapeAsync() => await http.GetStringAsync($"http://{metrics}/metrics");
                async Task WaitForAsync(string line) => await Eventually.TrueAsync(async () => (await ScrapeAsync()).Contains(line + "\n", StringComparison.Ordinal),
                    $"metrics line {line}", Wait);

                var payload = RandomNumberGenerator.GetBytes(1000);
                for (int i = 0; i < 3; i++)
                {
                    using var tcp = new TcpClient();
                    await tcp.ConnectAsync(pub);
                    await tcp.GetStream().WriteAsync(payload);
                    var back = new byte[payload.Length];
                    await tcp.GetStream().ReadExactlyAsync(back);
                    Assert.Equal(payload, back);
                }
                const string S = "{transport=\"asport\",role=\"asport-client\"";
                await WaitForAsync($"pthost_sessions_open{S}}} 0");
                string page = await ScrapeAsync();
                Assert.Contains("pthost_instance_info{id=\"edge-asport\",process=\"asport-client\",", page, StringComparison.Ordinal);
                Assert.Contains($"pthost_sessions_opened_total{S}}} 3\n", page, StringComparison.Ordinal);
                Assert.Contains($"pthost_bytes_total{S},direction=\"in\"}} 3000\n", page, StringComparison.Ordinal);
                Assert.Contains($"pthost_bytes_total{S},direction=\"out\"}} 3000\n", page, StringComparison.Ordinal);
                Assert.Contains("pthost_asport_client_registrations_total 1\n", page, StringComparison.Ordinal);
                Assert.Contains("pthost_asport_client_reconnects_total 0\n", page, StringComparison.Ordinal);
                Assert.Contains("pthost_asport_client_registered 1\n", page, StringComparison.Ordinal);

                // The local service is gone: the relay still accepts on the public port, the client's connect is refused.
                await echo.DisposeAsync();
                using (var tcp = new TcpClient())
                {
                    await tcp.ConnectAsync(pub);
                    using var cts = new CancellationTokenSource(Wait);
                    try { Assert.Equal(0, await tcp.GetStream().ReadAsync(new byte[1], cts.Token)); }
                    catch (IOException) { } // reset rather than closed: refused all the same
                }
                await WaitForAsync($"pthost_sessions_failed_total{S},reason=\"local-connect\"}} 1");

                // The relay dies and comes back: the client registers again after a reconnect.
                relay.Process.Signal(9);
                Assert.NotEqual(0, await relay.Process.WaitForExitAsync(Wait));
                again = await AsportRelayProcess.StartAsync(relay.EndPoint.ToString());
                await client.WaitForStderrAsync("registered; public port", count: 2, within: TimeSpan.FromSeconds(90));
                await WaitForAsync("pthost_asport_client_registrations_total 2");
                await WaitForAsync("pthost_asport_client_registered 1");
                page = await ScrapeAsync();
                var reconnects = Regex.Match(page, @"pthost_asport_client_reconnects_total (\d+)\n");
                Assert.True(reconnects.Success && int.Parse(reconnects.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture) >= 1, page);
                Assert.Contains($"pthost_sessions_opened_total{S}}} 3\n", page, StringComparison.Ordinal);
            }
        }
        finally
        {
            await echo.DisposeAsync();
            await relay.DisposeAsync();
            if (again is not null) await again.DisposeAsync();
        }
    }

    [Fact]
    public async Task A_refused_first_registration_exits_78_with_the_reason()
    {
        await using var relay = await AsportRelayProcess.StartAsync(replyAuthFailed: true);
        var config = WriteConfig(relay.Directory, relay.EndPoint, new IPEndPoint(IPAddress.Loopback, 9), ForwardMode.Tcp, password: "wrong");
        await using var p = PtProcess.StartPthost("asport-client", "--config", config);
        Assert.Equal(78, await p.WaitForExitAsync(Wait));
        Assert.Empty(p.StdoutLines);
        Assert.Contains("pthost: asport-client: ", p.Stderr);
        Assert.Contains("AuthFailed", p.Stderr);
    }

    [Fact]
    public async Task An_unknown_key_exits_78_naming_it()
    {
        var dir = Directory.CreateTempSubdirectory("pthost-asport-client-").FullName;
        try
        {
            var path = WriteConfig(dir, new IPEndPoint(IPAddress.Loopback, 1), new IPEndPoint(IPAddress.Loopback, 9), ForwardMode.Tcp);
            var o = JObject.Parse(File.ReadAllText(path));
            o["colour"] = "blue";
            File.WriteAllText(path, o.ToString());
            await using var p = PtProcess.StartPthost("asport-client", "--config", path);
            Assert.Equal(78, await p.WaitForExitAsync(Wait));
            Assert.Contains("colour", p.Stderr);
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }
}
