using System.Net;
using System.Net.Sockets;
using System.Text;
using Newtonsoft.Json.Linq;

namespace PtHost.Tests.Process;

/// <summary>spec/ipc.md §4.12: the Prometheus endpoint of the client and server processes and of a relay, read with curl.</summary>
[Collection("process")]
public class MetricsEndpointTests
{
    [Fact]
    public async Task Client_and_server_count_sessions_failures_and_bytes_and_name_their_instance()
    {
        await using var echo = new EchoServer();
        var server = PtChain.FreeServer();
        server["metrics"] = "127.0.0.1:0";
        server["instance"] = "edge-server-1";
        await using var chain = await PtChain.StartAsync(server, ep =>
        {
            var client = PtChain.ClientWith(new JObject { ["serverAddress"] = ep.ToString() });
            client["metrics"] = "127.0.0.1:0";
            client["instance"] = "edge-client-1";
            return client;
        }, relayMessages: false);
        string clientMetrics = (await chain.Client.WaitForLineAsync("STATUS TYPE=metrics ADDRESS="))["STATUS TYPE=metrics ADDRESS=".Length..];
        string serverMetrics = (await chain.Server.WaitForLineAsync("STATUS TYPE=metrics ADDRESS="))["STATUS TYPE=metrics ADDRESS=".Length..];

        for (int i = 0; i < 20; i++)
        {
            await using var socks = await SocksClient.ConnectAsync(chain.SocksEndPoint);
            await socks.SendAsync([.. SocksClient.Greeting(0x00), .. SocksClient.ConnectIPv4(IPAddress.Loopback, echo.Port)]);
            Assert.Equal(new byte[] { 5, 0 }, await socks.ReadExactlyAsync(2));
            Assert.Equal(0x00, await socks.ReadReplyAsync());
            await socks.SendAsync("12345"u8.ToArray());
            Assert.Equal("12345"u8.ToArray(), await socks.ReadExactlyAsync(5));
        }
        for (int i = 0; i < 3; i++)
        {
            await using var socks = await SocksClient.ConnectAsync(chain.SocksEndPoint);
            await socks.SendAsync(SocksClient.Greeting(0x03)); // no acceptable method: 05 FF
            Assert.Equal(new byte[] { 5, 0xFF }, await socks.ReadExactlyAsync(2));
        }
        await chain.SessionsClosedAsync();

        string c = await CurlAsync($"http://{clientMetrics}/metrics");
        Assert.Contains("pthost_instance_info{id=\"edge-client-1\",process=\"client\",", c, StringComparison.Ordinal);
        Assert.Contains("pthost_sessions_opened_total{transport=\"plain\",role=\"client\"} 20\n", c, StringComparison.Ordinal);
        Assert.Contains("pthost_sessions_open{transport=\"plain\",role=\"client\"} 0\n", c, StringComparison.Ordinal);
        Assert.Contains("pthost_sessions_failed_total{transport=\"plain\",role=\"client\",reason=\"auth\"} 3\n", c, StringComparison.Ordinal);
        Assert.Contains("pthost_bytes_total{transport=\"plain\",role=\"client\",direction=\"in\"} 100\n", c, StringComparison.Ordinal);
        Assert.Contains("pthost_handshake_seconds_count{transport=\"plain\",role=\"client\"} 20\n", c, StringComparison.Ordinal);
        string s = await CurlAsync($"http://{serverMetrics}/metrics");
        Assert.Contains("pthost_instance_info{id=\"edge-server-1\",process=\"server\",", s, StringComparison.Ordinal);
        Assert.Contains("pthost_sessions_opened_total{transport=\"plain\",role=\"server\"} 20\n", s, StringComparison.Ordinal);
        Assert.Contains("pthost_bytes_total{transport=\"plain\",role=\"server\",direction=\"out\"} 100\n", s, StringComparison.Ordinal);
        chain.Client.AssertOnlyProtocolLinesOnStdout();
    }

    [Fact]
    public async Task Without_the_key_there_is_no_endpoint_and_no_line()
    {
        await using var chain = await PtChain.StartAsync(PtChain.FreeServer(), ep => PtChain.ClientWith(new JObject { ["serverAddress"] = ep.ToString() }), relayMessages: false);
        Assert.DoesNotContain(chain.ClientStartup.Concat(chain.Client.StdoutLines), l => l.Contains("TYPE=metrics", StringComparison.Ordinal));
    }

    [Fact]
    public async Task A_relay_endpoint_answers_only_GET_metrics_and_survives_garbage()
    {
        var relay = PtProcess.StartPthost("relay", "zephyr", "--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0", "--instance", "z-test");
        await using var _ = relay;
        string line = await relay.ReadLineAsync();
        Assert.Matches(@"^LISTEN zephyr 127\.0\.0\.1:\d+ metrics=127\.0\.0\.1:\d+$", line);
        var metrics = IPEndPoint.Parse(line[(line.IndexOf("metrics=", StringComparison.Ordinal) + 8)..]);

        Assert.Contains("404", await CurlAsync($"http://{metrics}/other", "-s", "-o", "/dev/null", "-w", "%{http_code}"));
        Assert.Contains("405", await CurlAsync($"http://{metrics}/metrics", "-s", "-X", "POST", "-o", "/dev/null", "-w", "%{http_code}"));
        using (var garbage = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp))
        {
            await garbage.ConnectAsync(metrics);
            await garbage.SendAsync(Encoding.ASCII.GetBytes(new string('x', 9000)), SocketFlags.None);
            var buffer = new byte[64];
            int n = await garbage.ReceiveAsync(buffer, SocketFlags.None);
            Assert.StartsWith("HTTP/1.1 400", Encoding.ASCII.GetString(buffer, 0, n), StringComparison.Ordinal);
        }
        string text = await CurlAsync($"http://{metrics}/metrics");
        Assert.Contains("pthost_instance_info{id=\"z-test\",process=\"relay zephyr\",", text, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_relay_whose_metrics_address_cannot_be_bound_exits_69()
    {
        var (exit, stdout, stderr) = await PtProcess.RunAsync(PtHostExecutable.Path, ["relay", "zephyr", "--listen", "127.0.0.1:0", "--metrics", "192.0.2.1:9100"], TimeSpan.FromSeconds(30));
        Assert.Equal(69, exit);
        Assert.Empty(stdout);
        Assert.Contains("cannot listen: metrics", stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task The_options_file_takes_metrics_and_a_partial_cluster_exits_78_naming_the_missing_option()
    {
        string dir = Directory.CreateTempSubdirectory("pthost-metrics-config-").FullName;
        string file = Path.Combine(dir, "zephyr.json");
        await File.WriteAllTextAsync(file, "{\"listen\": \"127.0.0.1:0\", \"metrics\": \"127.0.0.1:0\", \"instance\": \"from-file\"}");
        var relay = PtProcess.StartPthost("relay", "zephyr", "--config", file);
        await using (relay)
        {
            string line = await relay.ReadLineAsync();
            Assert.Matches(@"^LISTEN zephyr 127\.0\.0\.1:\d+ metrics=127\.0\.0\.1:\d+$", line);
            string text = await CurlAsync($"http://{line[(line.IndexOf("metrics=", StringComparison.Ordinal) + 8)..]}/metrics");
            Assert.Contains("id=\"from-file\"", text, StringComparison.Ordinal);
        }
        var (exit, stdout, stderr) = await PtProcess.RunAsync(PtHostExecutable.Path, ["relay", "zephyr", "--listen", "127.0.0.1:0", "--instance-number", "1", "--link", "127.0.0.1:0"], TimeSpan.FromSeconds(30));
        Assert.Equal(78, exit);
        Assert.Empty(stdout);
        Assert.Contains("--link-secret", stderr, StringComparison.Ordinal);
    }

    private static async Task<string> CurlAsync(string url, params string[] options)
    {
        var (exit, stdout, stderr) = await PtProcess.RunAsync(DebianPrograms.Curl, [.. (options.Length == 0 ? ["-sf"] : options), url], TimeSpan.FromSeconds(20));
        Assert.True(exit == 0, $"curl {url}: {exit} {stderr}");
        return stdout;
    }
}
