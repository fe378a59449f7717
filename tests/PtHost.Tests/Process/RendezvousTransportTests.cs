using System.Net;
using System.Security.Cryptography;
using Newtonsoft.Json.Linq;
using Xunit.Abstractions;

namespace PtHost.Tests.Process;

/// <summary>
/// zephyr, jet and asport between two pthost processes whose only signal path is a real
/// <c>pthost relay rendezvous</c> (spec/rendezvous.md §7): nothing carries CMESSAGE/SMESSAGE lines,
/// and none is written.
/// </summary>
[Collection("process")]
public sealed class RendezvousTransportTests(ITestOutputHelper output)
{
    private const int Size = 10 << 20;

    private static JObject Routed(JObject config, RendezvousProcess rendezvous, string secret)
    {
        config["signals"] = rendezvous.Signals(secret);
        config["loglevel"] = "debug";
        return config;
    }

    private static async Task<PtChain> ZephyrChainAsync(RendezvousProcess rendezvous, string secret, IPEndPoint relay, int signalTimeout = 20)
    {
        var generated = await ZephyrChain.GenerateAsync();
        var client = (JObject)generated["client"]!;
        var server = (JObject)generated["server"]!;
        client["relay"] = relay.ToString();
        server["relay"] = relay.ToString();
        client["signalTimeout"] = signalTimeout;
        server["signalTimeout"] = signalTimeout;
        return await PtChain.StartAsync(Routed(PtChain.FreeServerOf("zephyr", server), rendezvous, secret),
            _ => Routed(PtChain.ClientOf("zephyr", client), rendezvous, secret), relayMessages: false);
    }

    /// <summary>curl fetches <see cref="Size"/> bytes through the chain; SHA-256 compared; then no signal line on either stdout.</summary>
    private async Task FetchAndCheckAsync(PtChain chain, HttpFileServer web, byte[] body, string transport)
    {
        string file = Path.Combine(Path.GetTempPath(), $"pthost-rv-{Guid.NewGuid():N}");
        try
        {
            var watch = System.Diagnostics.Stopwatch.StartNew();
            var (rc, _, err) = await PtProcess.RunAsync("curl", "-sS", "--max-time", "90", "--socks5-hostname", chain.SocksEndPoint.ToString(),
                "-o", file, $"http://127.0.0.1:{web.Port}/f");
            output.WriteLine($"{transport}: 10 MiB through the rendezvous-signalled chain in {watch.Elapsed.TotalSeconds:0.00} s");
            Assert.True(rc == 0, $"curl: {err}\nserver:\n{chain.Server.Stderr}\nclient:\n{chain.Client.Stderr}");
            Assert.Equal(SHA256.HashData(body), SHA256.HashData(await File.ReadAllBytesAsync(file)));
        }
        finally { File.Delete(file); }
        // The rendezvous was the only path: no CMESSAGE/SMESSAGE written (and the test fed none).
        Assert.DoesNotContain(chain.Client.StdoutLines, l => l.StartsWith("CMESSAGE", StringComparison.Ordinal) || l.StartsWith("SMESSAGE", StringComparison.Ordinal));
        Assert.DoesNotContain(chain.Server.StdoutLines, l => l.StartsWith("CMESSAGE", StringComparison.Ordinal) || l.StartsWith("SMESSAGE", StringComparison.Ordinal));
        Assert.Contains("signals through the rendezvous", chain.Client.Stderr, StringComparison.Ordinal);
        var (s, c) = await chain.StopAsync();
        Assert.Equal(0, s);
        Assert.Equal(0, c);
        chain.Server.AssertOnlyProtocolLinesOnStdout();
        chain.Client.AssertOnlyProtocolLinesOnStdout();
    }

    [Fact]
    public async Task Zephyr_fetches_10_MiB_with_signals_only_through_the_rendezvous()
    {
        var body = RandomNumberGenerator.GetBytes(Size);
        await using var web = new HttpFileServer(body);
        await using var rendezvous = await RendezvousProcess.StartAsync();
        await using var relay = await ZephyrRelayProcess.StartAsync();
        string secret = RendezvousProcess.NewSecret();
        await using var chain = await ZephyrChainAsync(rendezvous, secret, relay.EndPoint);
        // SMETHOD ARGS carry the route (spec/rendezvous.md §7.3).
        var smethod = chain.ServerStartup.Single(l => l.StartsWith("SMETHOD zephyr ", StringComparison.Ordinal));
        Assert.Contains($"rendezvous={rendezvous.Url}", smethod, StringComparison.Ordinal);
        Assert.Contains($"secret={secret}", smethod, StringComparison.Ordinal);
        await FetchAndCheckAsync(chain, web, body, "zephyr");
    }

    [Fact]
    public async Task Jet_fetches_10_MiB_with_signals_only_through_an_https_rendezvous()
    {
        var body = RandomNumberGenerator.GetBytes(Size);
        await using var web = new HttpFileServer(body);
        await using var rendezvous = await RendezvousProcess.StartAsync("127.0.0.1:0", "--tls");
        Assert.NotNull(rendezvous.Pin);
        await using var relay = await JetRelayProcess.StartAsync();
        string secret = RendezvousProcess.NewSecret();
        var generated = await JetChain.GenerateAsync();
        var client = (JObject)generated["client"]!;
        var server = (JObject)generated["server"]!;
        server["relay"] = $"http://{relay.Http}";
        if (await relay.CertificatePinAsync() is { } pin) server["relayPins"] = new JObject { [relay.Http.Address.ToString()] = pin };
        await using var chain = await PtChain.StartAsync(Routed(PtChain.FreeServerOf("jet", server), rendezvous, secret),
            _ => Routed(PtChain.ClientOf("jet", client), rendezvous, secret), relayMessages: false);
        await FetchAndCheckAsync(chain, web, body, "jet");
    }

    [Fact]
    public async Task Asport_fetches_10_MiB_with_its_address_announced_only_through_the_rendezvous()
    {
        var body = RandomNumberGenerator.GetBytes(Size);
        await using var web = new HttpFileServer(body);
        await using var rendezvous = await RendezvousProcess.StartAsync();
        await using var relay = await AsportRelayProcess.StartAsync();
        string secret = RendezvousProcess.NewSecret();
        await using var chain = await PtChain.AnnouncedAsync(PtChain.StartAsync(
            Routed(AsportTransportTests.ServerConfig(relay.EndPoint, $"127.0.0.1:{web.Port}"), rendezvous, secret),
            _ => Routed(AsportTransportTests.ClientConfig(), rendezvous, secret), relayMessages: false));
        await FetchAndCheckAsync(chain, web, body, "asport");
    }

    [Fact]
    public async Task A_rendezvous_restarted_while_the_offer_waits_lets_the_session_succeed()
    {
        var body = RandomNumberGenerator.GetBytes(1 << 20);
        await using var web = new HttpFileServer(body);
        var first = await RendezvousProcess.StartAsync();
        var port = first.EndPoint;
        await using var relay = await ZephyrRelayProcess.StartAsync();
        string secret = RendezvousProcess.NewSecret();
        await using var chain = await ZephyrChainAsync(first, secret, relay.EndPoint, signalTimeout: 40);
        await first.DisposeAsync();
        string file = Path.Combine(Path.GetTempPath(), $"pthost-rv-{Guid.NewGuid():N}");
        try
        {
            var curl = PtProcess.RunAsync("curl", ["-sS", "--max-time", "60", "--socks5-hostname", chain.SocksEndPoint.ToString(), "-o", file, $"http://127.0.0.1:{web.Port}/f"], TimeSpan.FromSeconds(70));
            // The offer cannot be posted while the rendezvous is down (the client says so), then a new one comes up on the same port.
            await chain.Client.WaitForStderrAsync("posting a zephyr message failed", within: TimeSpan.FromSeconds(30));
            await using var second = await RendezvousProcess.StartAsync(port.ToString());
            var (rc, _, err) = await curl;
            Assert.True(rc == 0, $"curl: {err}\nserver:\n{chain.Server.Stderr}\nclient:\n{chain.Client.Stderr}");
            Assert.Equal(SHA256.HashData(body), SHA256.HashData(await File.ReadAllBytesAsync(file)));
        }
        finally { File.Delete(file); }
    }
}
