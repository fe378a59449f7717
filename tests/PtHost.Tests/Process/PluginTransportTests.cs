using System.Net;
using System.Net.Sockets;
using Newtonsoft.Json.Linq;

namespace PtHost.Tests.Process;

/// <summary>
/// End to end through real processes: a transport plugin built outside the solution
/// (tests/fixtures/XorTransport) is loaded from <c>plugindir</c> by a published pthost, client and
/// server, and carries traffic between them. They run the framework-dependent build, the one that
/// loads plugins (spec/ipc.md §8.5); the NativeAOT build's refusal is in NativeBuildTests.
/// </summary>
[Collection("process")]
public class PluginTransportTests
{
    private const byte Key = 0xA5;
    private static readonly TimeSpan TransferTimeout = TimeSpan.FromSeconds(60);

    [Fact]
    public async Task Plugin_directory_holds_only_the_plugin_the_contract_comes_from_the_host()
    {
        string dir = await PluginBuild.PluginDirectory;
        var files = Directory.GetFiles(dir).Select(Path.GetFileName).ToArray();
        Assert.Contains("PtHost.Fixtures.XorTransport.dll", files);
        Assert.DoesNotContain("PtHost.Contract.dll", files);
        Assert.DoesNotContain("Newtonsoft.Json.dll", files);
        Assert.DoesNotContain("Microsoft.Extensions.Logging.Abstractions.dll", files);
        Assert.DoesNotContain(files, f => f!.EndsWith(".dll", StringComparison.Ordinal) && f != "PtHost.Fixtures.XorTransport.dll");
    }

    [Fact]
    public async Task The_plugin_is_built_against_the_contract_package_packed_from_src_PtHost_Contract()
    {
        string dir = await PluginBuild.PluginDirectory;
        Assert.Single(Directory.GetFiles(PluginBuild.ContractFeed, "PtHost.Contract." + PluginBuild.ContractVersion + ".nupkg"));
        Assert.Contains("PtHost.Fixtures.XorTransport.dll", Directory.GetFiles(dir).Select(Path.GetFileName));
        // The restore's assets file names what the plugin compiled against: the package this run packed, not a project.
        var libraries = (JObject)JObject.Parse(await File.ReadAllTextAsync(Path.Combine(PluginBuild.PluginIntermediates, "project.assets.json")))["libraries"]!;
        var contract = Assert.Single(libraries.Properties(), p => p.Name.StartsWith("PtHost.Contract/", StringComparison.Ordinal));
        Assert.Equal("PtHost.Contract/" + PluginBuild.ContractVersion, contract.Name);
        Assert.Equal("package", (string?)contract.Value["type"]);
    }

    [Fact]
    public async Task The_plugins_own_tests_pass_against_the_contract_package() =>
        // tests/fixtures/XorTransport.Tests (docs/writing-a-transport.md §9): dotnet test fails this test with their output.
        await PluginBuild.RunPluginOwnTestsAsync();

    [Fact]
    public async Task One_MiB_echoes_through_client_and_server_processes()
    {
        await using var pair = await XorPair.StartAsync(Key);
        using var cts = new CancellationTokenSource(TransferTimeout);
        byte[] data = RandomBytes(1 << 20);

        // Bridge semantics: the SOCKS destination is the server process's SMETHOD address.
        using (var socks = await PluginSocks5.ConnectAsync(pair.SocksEndPoint, pair.ServerEndPoint, cts.Token))
        {
            byte[] back = await PluginSocks5.ExchangeAsync(socks, data, cts.Token);
            Assert.Equal(data.Length, back.Length);
            Assert.True(data.AsSpan().SequenceEqual(back), "echoed bytes differ");
        }
        Assert.Contains(pair.Client.Stderr.Split('\n'), l => l.Contains("plugin transport \"xor\" loaded", StringComparison.Ordinal));
        Assert.Contains(pair.Server.Stderr.Split('\n'), l => l.Contains("plugin transport \"xor\" loaded", StringComparison.Ordinal));
        await pair.StopAndAssertCleanExitAsync();
    }

    [Fact]
    public async Task Bytes_between_the_processes_are_xored_with_the_key()
    {
        await using var pair = await XorPair.StartAsync(Key);
        await using var tap = new PluginWireTap(pair.ServerEndPoint);
        using var cts = new CancellationTokenSource(TransferTimeout);
        byte[] data = RandomBytes(256 * 1024);

        // Through a recording forwarder standing in front of the server process.
        using (var socks = await PluginSocks5.ConnectAsync(pair.SocksEndPoint, tap.EndPoint, cts.Token))
        {
            byte[] back = await PluginSocks5.ExchangeAsync(socks, data, cts.Token);
            Assert.True(data.AsSpan().SequenceEqual(back), "echoed bytes differ");
        }
        var (toServer, toClient) = await DequeueAsync(tap.Recorded, cts.Token);
        byte[] wire = Xor(data, Key);
        Assert.True(wire.AsSpan().SequenceEqual(toServer), "client → server bytes on the wire are not the data XOR key");
        Assert.True(wire.AsSpan().SequenceEqual(toClient), "server → client bytes on the wire are not the data XOR key");
        Assert.False(data.AsSpan().SequenceEqual(toServer));
        byte[] seenByTarget = await DequeueAsync(pair.Echo.Received, cts.Token);
        Assert.True(data.AsSpan().SequenceEqual(seenByTarget), "the target did not receive the plain data");

        // A raw socket speaking the wire format to the server process directly.
        byte[] message = RandomBytes(4096);
        using (var raw = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp))
        {
            await raw.ConnectAsync(pair.ServerEndPoint, cts.Token);
            byte[] rawBack = await PluginSocks5.ExchangeAsync(raw, Xor(message, Key), cts.Token);
            Assert.True(Xor(message, Key).AsSpan().SequenceEqual(rawBack), "raw echo is not the message XOR key");
        }
        byte[] rawSeenByTarget = await DequeueAsync(pair.Echo.Received, cts.Token);
        Assert.True(message.AsSpan().SequenceEqual(rawSeenByTarget), "the server process did not un-XOR the raw bytes for the target");
        await pair.StopAndAssertCleanExitAsync();
    }

    [Theory]
    [InlineData(null)]
    [InlineData("{}")]
    [InlineData("{\"key\": 256}")]
    [InlineData("{\"key\": -1}")]
    [InlineData("{\"key\": \"7\"}")]
    [InlineData("{\"key\": 7, \"colour\": \"red\"}")]
    public async Task Client_with_missing_or_invalid_key_reports_CMETHOD_ERROR_and_exits_69(string? options)
    {
        string plugins = await PluginBuild.PluginDirectory;
        var config = new JObject
        {
            ["role"] = "client",
            ["transports"] = new JArray("xor"),
            ["plugindir"] = plugins,
            ["state"] = PluginBuild.NewTempDirectory("state"),
            ["exit-on-stdin-close"] = true,
        };
        if (options is not null) config["options"] = new JObject { ["xor"] = JToken.Parse(options) };
        await using var client = PtProcess.StartFrameworkDependent(config.ToString(Newtonsoft.Json.Formatting.None));
        var lines = await client.ReadUntilDoneAsync();
        Assert.Equal("VERSION 2", lines[0]);
        Assert.Contains(lines, l => l.StartsWith("CMETHOD-ERROR xor ", StringComparison.Ordinal));
        Assert.DoesNotContain(lines, l => l.StartsWith("CMETHOD xor ", StringComparison.Ordinal));
        // No transport started: the process exits by itself (stdin stays open).
        Assert.Equal(69, await client.WaitForExitAsync());
        client.AssertOnlyProtocolLinesOnStdout();
        var all = client.StdoutLines;
        int done = all.ToList().IndexOf("CMETHODS DONE");
        int error = all.ToList().FindIndex(l => l.StartsWith("CMETHOD-ERROR xor ", StringComparison.Ordinal));
        Assert.True(error >= 0 && error < done, client.Stderr);
    }

    [Fact]
    public async Task Server_without_key_reports_SMETHOD_ERROR_and_exits_69()
    {
        string plugins = await PluginBuild.PluginDirectory;
        var config = new JObject
        {
            ["role"] = "server",
            ["transports"] = new JArray("xor"),
            ["plugindir"] = plugins,
            ["target"] = "127.0.0.1:9",
            ["state"] = PluginBuild.NewTempDirectory("state"),
            ["exit-on-stdin-close"] = true,
        };
        await using var server = PtProcess.StartFrameworkDependent(config.ToString(Newtonsoft.Json.Formatting.None));
        var lines = await server.ReadUntilDoneAsync();
        Assert.Contains(lines, l => l.StartsWith("SMETHOD-ERROR xor ", StringComparison.Ordinal) && l.Contains("key", StringComparison.Ordinal));
        Assert.DoesNotContain(lines, l => l.StartsWith("SMETHOD xor ", StringComparison.Ordinal));
        Assert.Equal(69, await server.WaitForExitAsync());
        server.AssertOnlyProtocolLinesOnStdout();
    }

    [Fact]
    public async Task Without_plugindir_the_transport_is_unknown()
    {
        var config = new JObject
        {
            ["role"] = "client",
            ["transports"] = new JArray("xor"),
            ["options"] = new JObject { ["xor"] = new JObject { ["key"] = 1 } },
            ["state"] = PluginBuild.NewTempDirectory("state"),
            ["exit-on-stdin-close"] = true,
        };
        await using var client = PtProcess.StartFrameworkDependent(config.ToString(Newtonsoft.Json.Formatting.None));
        var lines = await client.ReadUntilDoneAsync();
        Assert.Contains(lines, l => l.StartsWith("CMETHOD-ERROR xor ", StringComparison.Ordinal));
        Assert.Equal(69, await client.WaitForExitAsync());
        client.AssertOnlyProtocolLinesOnStdout();
    }

    private static byte[] RandomBytes(int n)
    {
        byte[] b = new byte[n];
        Random.Shared.NextBytes(b);
        return b;
    }

    private static byte[] Xor(byte[] data, byte key)
    {
        byte[] r = new byte[data.Length];
        for (int i = 0; i < data.Length; i++) r[i] = (byte)(data[i] ^ key);
        return r;
    }

    /// <summary>Waits for the recorder to finish a connection (the far side may still be closing) and takes what it recorded.</summary>
    private static async Task<T> DequeueAsync<T>(System.Collections.Concurrent.ConcurrentQueue<T> queue, CancellationToken ct)
    {
        T? item = default;
        await Eventually.TrueAsync(() => { ct.ThrowIfCancellationRequested(); return queue.TryDequeue(out item); }, "a finished connection's record");
        return item!;
    }

    /// <summary>An echo target, a server pthost bound to it, and a client pthost; all with the xor plugin.</summary>
    private sealed class XorPair : IAsyncDisposable
    {
        private XorPair(EchoServer echo) => Echo = echo;

        public EchoServer Echo { get; }
        public PtProcess Server { get; private set; } = null!;
        public PtProcess Client { get; private set; } = null!;
        public IPEndPoint ServerEndPoint { get; private set; } = null!;
        public IPEndPoint SocksEndPoint { get; private set; } = null!;

        public static async Task<XorPair> StartAsync(byte key)
        {
            string plugins = await PluginBuild.PluginDirectory;
            var pair = new XorPair(new EchoServer());
            try
            {
                var options = new JObject { ["xor"] = new JObject { ["key"] = key } };
                pair.Server = PtProcess.StartFrameworkDependent(new JObject
                {
                    ["role"] = "server",
                    ["transports"] = new JArray("xor"),
                    ["plugindir"] = plugins,
                    ["options"] = options,
                    ["target"] = $"127.0.0.1:{pair.Echo.Port}",
                    ["state"] = PluginBuild.NewTempDirectory("state"),
                    ["exit-on-stdin-close"] = true,
                }.ToString(Newtonsoft.Json.Formatting.None));
                var serverLines = await pair.Server.ReadUntilDoneAsync();
                string smethod = Assert.Single(serverLines, l => l.StartsWith("SMETHOD xor ", StringComparison.Ordinal));
                pair.ServerEndPoint = IPEndPoint.Parse(smethod.Split(' ')[2]);

                pair.Client = PtProcess.StartFrameworkDependent(new JObject
                {
                    ["role"] = "client",
                    ["transports"] = new JArray("xor"),
                    ["plugindir"] = plugins,
                    ["options"] = options,
                    ["state"] = PluginBuild.NewTempDirectory("state"),
                    ["exit-on-stdin-close"] = true,
                }.ToString(Newtonsoft.Json.Formatting.None));
                var clientLines = await pair.Client.ReadUntilDoneAsync();
                Assert.Equal("VERSION 2", clientLines[0]);
                string cmethod = Assert.Single(clientLines, l => l.StartsWith("CMETHOD xor ", StringComparison.Ordinal));
                string[] parts = cmethod.Split(' ');
                Assert.Equal("socks5", parts[2]);
                pair.SocksEndPoint = IPEndPoint.Parse(parts[3]);
                return pair;
            }
            catch
            {
                await pair.DisposeAsync();
                throw;
            }
        }

        /// <summary>Closes both processes' stdin; each must exit 0 having printed protocol lines only.</summary>
        public async Task StopAndAssertCleanExitAsync()
        {
            Client.CloseStdin();
            Server.CloseStdin();
            Assert.True(await Client.WaitForExitAsync() == 0, "client exit code\n" + Client.Stderr);
            Assert.True(await Server.WaitForExitAsync() == 0, "server exit code\n" + Server.Stderr);
            Client.AssertOnlyProtocolLinesOnStdout();
            Server.AssertOnlyProtocolLinesOnStdout();
        }

        public async ValueTask DisposeAsync()
        {
            if (Client is not null) await Client.DisposeAsync();
            if (Server is not null) await Server.DisposeAsync();
            await Echo.DisposeAsync();
        }
    }
}
