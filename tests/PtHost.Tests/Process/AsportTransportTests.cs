using System.Net;
using System.Security.Cryptography;
using Newtonsoft.Json.Linq;

namespace PtHost.Tests.Process;

/// <summary>
/// The asport transport end to end (spec/asport.md §6): a real ASPORT relay process, a server
/// pthost that registers with it as the ASPORT client and announces its public address
/// (SMETHOD and SMESSAGE), and a client pthost that reaches that address over TCP.
/// </summary>
[Collection("process")]
public sealed class AsportTransportTests
{
    internal static JObject ServerConfig(IPEndPoint relay, string target, string? password = null) => new()
    {
        ["role"] = "server",
        ["transports"] = new JArray("asport"),
        ["target"] = target,
        ["exit-on-stdin-close"] = true,
        ["options"] = new JObject
        {
            ["asport"] = new JObject
            {
                ["server"] = relay.ToString(),
                ["pin"] = Convert.ToHexString(AsportRelayProcess.Cert.Sha256).ToLowerInvariant(),
                ["user"] = "6f0d0f5e-2b4c-4d6a-9c11-0123456789ab",
                ["password"] = password ?? "correct horse",
                ["ports"] = "20000-60000",
            },
        },
    };

    internal static JObject ClientConfig() => new()
    {
        ["role"] = "client",
        ["transports"] = new JArray("asport"),
        ["exit-on-stdin-close"] = true,
    };

    /// <summary>
    /// A bound asport server for <paramref name="target"/> and a client, once the client has learned the
    /// public address from the server's <c>asport.address</c> signal (the chain carries it asynchronously;
    /// a session started before would take its SOCKS destination as the server address, spec/asport.md §6.2).
    /// </summary>
    internal static Task<PtChain> StartChainAsync(IPEndPoint relay, string target) =>
        PtChain.AnnouncedAsync(PtChain.StartAsync(ServerConfig(relay, target), _ => ClientConfig()));

    [Fact]
    public async Task Curl_through_the_asport_transport_reaches_the_bound_target()
    {
        var body = RandomNumberGenerator.GetBytes(4 << 20);
        await using var web = new HttpFileServer(body);
        await using var relay = await AsportRelayProcess.StartAsync();
        await using var chain = await StartChainAsync(relay.EndPoint, $"127.0.0.1:{web.Port}");
        // SMETHOD names the relay's address with the public port it assigned.
        Assert.Equal(relay.EndPoint.Address, chain.ServerEndPoint.Address);
        Assert.InRange(chain.ServerEndPoint.Port, 20000, 60000);
        Assert.Contains(chain.ServerStartup, l => l.StartsWith("SMESSAGE asport {", StringComparison.Ordinal)
            && l.Contains("\"kind\":\"asport.address\"", StringComparison.Ordinal) && l.Contains(chain.ServerEndPoint.ToString(), StringComparison.Ordinal));
        var file = Path.Combine(relay.Directory, "got");
        var (rc, _, err) = await PtProcess.RunAsync("curl", "-sS", "--max-time", "60", "--socks5-hostname", chain.SocksEndPoint.ToString(),
            "-o", file, $"http://127.0.0.1:{web.Port}/f");
        Assert.True(rc == 0, $"curl: {err}\nserver:\n{chain.Server.Stderr}\nclient:\n{chain.Client.Stderr}");
        Assert.Equal(SHA256.HashData(body), SHA256.HashData(File.ReadAllBytes(file)));
        var (s, c) = await chain.StopAsync();
        Assert.Equal(0, s);
        Assert.Equal(0, c);
        chain.Server.AssertOnlyProtocolLinesOnStdout();
        chain.Client.AssertOnlyProtocolLinesOnStdout();
    }

    [Fact]
    public async Task A_libngtcp2_that_is_not_the_real_one_gives_SMETHOD_ERROR_naming_QUIC()
    {
        // A stand-in libngtcp2.so.9 without ngtcp2_version, found first through LD_LIBRARY_PATH:
        // the start-up check refuses it, the asport server says why, the process keeps its other lines.
        string dir = Directory.CreateTempSubdirectory("pthost-fake-ngtcp2-").FullName;
        try
        {
            string source = Path.Combine(dir, "fake.c");
            await File.WriteAllTextAsync(source, "int not_ngtcp2 = 1;\n");
            var (rc, _, err) = await PtProcess.RunAsync("/usr/bin/gcc", "-shared", "-fPIC", "-o", Path.Combine(dir, "libngtcp2.so.9"), source);
            Assert.True(rc == 0, "gcc: " + err);
            var config = ServerConfig(new IPEndPoint(IPAddress.Loopback, 1), "127.0.0.1:9");
            await using var p = PtProcess.Start(PtHostExecutable.Path, [config.ToString(Newtonsoft.Json.Formatting.None)],
                new Dictionary<string, string> { ["LD_LIBRARY_PATH"] = dir });
            var lines = await p.ReadUntilDoneAsync();
            Assert.Contains(lines, l => l.StartsWith("SMETHOD-ERROR asport QUIC unavailable: ", StringComparison.Ordinal) && l.Contains("ngtcp2_version", StringComparison.Ordinal));
            Assert.Equal("SMETHODS DONE", lines[^1]);
            Assert.Equal(69, await p.WaitForExitAsync()); // no transport started
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public async Task Bad_server_options_give_SMETHOD_ERROR()
    {
        var config = ServerConfig(new IPEndPoint(IPAddress.Loopback, 1), "127.0.0.1:9");
        ((JObject)config["options"]!["asport"]!)["pin"] = "abcd";
        await using var p = PtProcess.StartPthost(config.ToString(Newtonsoft.Json.Formatting.None));
        var lines = await p.ReadUntilDoneAsync();
        Assert.Contains(lines, l => l.StartsWith("SMETHOD-ERROR asport ", StringComparison.Ordinal) && l.Contains("pin", StringComparison.Ordinal));
    }
}
