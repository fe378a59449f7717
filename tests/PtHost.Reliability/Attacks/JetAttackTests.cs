using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using Newtonsoft.Json.Linq;
using PtHost.Net.Tls;
using PtHost.Reliability.Support;
using PtHost.Transports.Jet;
using Xunit.Abstractions;

namespace PtHost.Reliability.Attacks;

/// <summary>
/// Issue 24, points 4 and 5 (JET) and point 8 (the relay's key file): the jet transport's REST calls and
/// gathered candidates, and the limits of <c>pthost relay jet</c>, attacked through the real processes on
/// loopback (spec/jet.md §5.1, §5.5, §7.1, §7.3).
/// </summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public class JetAttackTests(ITestOutputHelper output)
{
    private const string Key = "attack-test-api-key-0123456789";

    /// <summary>
    /// An attacker who sits where the relay's REST API is expected (on the path, or behind a certificate
    /// nobody checks) reads the server's bearer key. Plain http: the server must refuse the configuration;
    /// https with a certificate no CA vouches for and no pin: the handshake must fail before any header.
    /// </summary>
    [Theory]
    [InlineData("http")]
    [InlineData("https")]
    public async Task The_api_key_never_reaches_an_unchecked_relay(string scheme)
    {
        await using var capture = new FakeRestServer(IPAddress.Loopback, scheme == "https" ? PinnedTls.Generate("relay.example") : null, FakeRestServer.EmptyRelay);
        var generated = await JetChain.GenerateAsync();
        var server = (JObject)generated["server"]!;
        server["relay"] = $"{scheme}://{capture.EndPoint}";
        server["apiKey"] = Key;
        server["kinds"] = new JArray("tcp");
        server["signalTimeout"] = 5;

        // First the server alone: a configuration that would send the key in clear is refused at start-up.
        await using (var alone = PtProcess.StartPthost(PtChain.FreeServerOf("jet", server).ToString(Newtonsoft.Json.Formatting.None)))
        {
            var lines = await alone.ReadUntilDoneAsync();
            string line = lines.Single(l => l.StartsWith("SMETHOD jet ", StringComparison.Ordinal) || l.StartsWith("SMETHOD-ERROR jet ", StringComparison.Ordinal));
            output.WriteLine($"{scheme}: {line}");
            if (line.StartsWith("SMETHOD-ERROR jet ", StringComparison.Ordinal))
            {
                Assert.Equal("http", scheme);
                Assert.Contains("https", line, StringComparison.Ordinal);
                Assert.Empty(capture.Requests);
                return;
            }
        }

        var client = (JObject)generated["client"]!;
        client["signalTimeout"] = 5;
        await using var chain = await PtChain.StartAsync(PtChain.FreeServerOf("jet", server), _ => PtChain.ClientOf("jet", client));
        var (reply, socks) = await Sessions.ConnectAsync(chain.SocksEndPoint, 9, TimeSpan.FromSeconds(30));
        await socks.DisposeAsync();
        output.WriteLine($"{scheme}: SOCKS reply {reply:x2}; the fake relay saw {capture.Connections} connections, {capture.Requests.Count} requests, TLS failures {capture.TlsFailures}");
        foreach (string request in capture.Requests) output.WriteLine("  " + request.Split("\r\n")[0] + (request.Contains(Key, StringComparison.Ordinal) ? "  [carries the API key]" : ""));
        Assert.DoesNotContain(capture.Requests, r => r.Contains(Key, StringComparison.Ordinal));
        Assert.NotEqual(0x00, reply);
        if (scheme == "https") Assert.True(capture.Connections > 0, "the server never tried the relay");
    }

    /// <summary>
    /// A relay (or whoever answers for it) lists candidates on another host: the jet server would open a
    /// TCP connection and write a JET accept there, and a WebSocket upgrade to a ws:// one — a connection
    /// to any host:port the answer names. Only the relay's own host is dialled unless <c>candidateHosts</c>
    /// lists more.
    /// </summary>
    [Fact]
    public async Task Gathered_candidates_on_another_host_are_not_dialled()
    {
        using var victim = new TcpListener(IPAddress.Parse("127.0.0.2"), 0);
        victim.Start();
        var victimEp = (IPEndPoint)victim.LocalEndpoint;
        var reached = new ConcurrentQueue<string>();
        using var stop = new CancellationTokenSource();
        var accepting = Task.Run(async () =>
        {
            while (!stop.IsCancellationRequested)
            {
                Socket s;
                try { s = await victim.AcceptSocketAsync(stop.Token); }
                catch (OperationCanceledException) { return; }
                byte[] first = new byte[64];
                int n;
                try { n = await s.ReceiveAsync(first, SocketFlags.None, new CancellationTokenSource(2000).Token); }
                catch (Exception e) when (e is OperationCanceledException or SocketException) { n = 0; }
                reached.Enqueue(Convert.ToHexString(first, 0, n));
                s.Dispose();
            }
        });
        var candidates = new JArray(
            new JObject { ["id"] = Guid.NewGuid().ToString("D"), ["url"] = $"tcp://{victimEp}" },
            new JObject { ["id"] = Guid.NewGuid().ToString("D"), ["url"] = $"ws://{victimEp}" });
        await using var relay = new FakeRestServer(IPAddress.Loopback, null, FakeRestServer.RelayGathering(candidates));

        var generated = await JetChain.GenerateAsync();
        var server = (JObject)generated["server"]!;
        server["relay"] = $"http://{relay.EndPoint}";
        server["signalTimeout"] = 5;
        var client = (JObject)generated["client"]!;
        client["signalTimeout"] = 5;
        await using var chain = await PtChain.StartAsync(PtChain.FreeServerOf("jet", server), _ => PtChain.ClientOf("jet", client));
        var (reply, socks) = await Sessions.ConnectAsync(chain.SocksEndPoint, 9, TimeSpan.FromSeconds(30));
        await socks.DisposeAsync();
        await Eventually.TrueAsync(() => Task.FromResult(relay.Requests.Any(r => r.StartsWith("DELETE ", StringComparison.Ordinal))), "the server to delete its association", TimeSpan.FromSeconds(60));
        await stop.CancelAsync();
        victim.Stop();
        await accepting;
        output.WriteLine($"SOCKS reply {reply:x2}; the victim {victimEp} was reached {reached.Count} times: {string.Join(", ", reached.Select(h => h.Length > 24 ? h[..24] + "…" : h))}");
        Assert.Empty(reached);
        Assert.Equal(0x04, reply);
    }

    /// <summary><c>Jet-Instance</c> and the relay certificate's subject name the machine by default; they must not.</summary>
    [Fact]
    public async Task Neither_the_instance_nor_the_certificate_names_the_machine()
    {
        string host = Environment.MachineName;
        await using var relay = await JetRelayProcess.StartAsync();
        using var created = await relay.Rest.PostAsync($"/jet/association/{Guid.NewGuid()}", null);
        string instance = created.Headers.GetValues("Jet-Instance").Single();
        using var tcp = new TcpClient();
        await tcp.ConnectAsync(relay.Tls!);
        await using var ssl = new SslStream(tcp.GetStream(), false, (_, _, _, _) => true);
        await ssl.AuthenticateAsClientAsync(new SslClientAuthenticationOptions { TargetHost = "relay" });
        string subject = ssl.RemoteCertificate!.Subject;
        await using var other = await JetRelayProcess.StartAsync();
        using var second = await other.Rest.PostAsync($"/jet/association/{Guid.NewGuid()}", null);
        string otherInstance = second.Headers.GetValues("Jet-Instance").Single();
        output.WriteLine($"host name \"{host}\"; Jet-Instance \"{instance}\", another relay \"{otherInstance}\"; certificate subject \"{subject}\"");
        Assert.DoesNotContain(host, instance, StringComparison.OrdinalIgnoreCase);
        Assert.DoesNotContain(host, subject, StringComparison.OrdinalIgnoreCase);
        Assert.NotEqual(instance, otherInstance);
    }

    /// <summary>
    /// One source creates associations until the relay refuses: with only a total limit it takes all of them
    /// and everyone else gets 503. Per source (default 1,000, spec/jet.md §5.5) another source still creates.
    /// </summary>
    [Fact]
    public async Task One_source_cannot_take_every_association()
    {
        const int Total = 2000;
        await using var relay = await JetRelayProcess.StartAsync(new JObject { ["maxAssociations"] = Total }, loglevel: "info");
        int created = 0, refusedWith = 0;
        var sw = Stopwatch.StartNew();
        for (int i = 0; i < Total + 10; i++)
        {
            using var r = await relay.Rest.PostAsync($"/jet/association/{Guid.NewGuid()}", null);
            if (r.IsSuccessStatusCode) created++;
            else
            {
                refusedWith = (int)r.StatusCode;
                break;
            }
        }
        using var other = FromAddress(IPAddress.Parse("127.0.0.2"), relay.Http);
        using var legit = await other.PostAsync($"/jet/association/{Guid.NewGuid()}", null);
        output.WriteLine($"attacker 127.0.0.1: {created} associations in {sw.Elapsed.TotalSeconds:0.0} s, then {refusedWith}; another source 127.0.0.2: {(int)legit.StatusCode}");
        Assert.Equal(200, (int)legit.StatusCode);
        Assert.Equal(429, refusedWith);
        Assert.Equal(1000, created);
    }

    /// <summary>A v1 accept creates an association; with <c>apiKey</c> set it must carry the key (spec/jet.md §3.3).</summary>
    [Fact]
    public async Task A_v1_accept_needs_the_api_key_when_one_is_set()
    {
        await using var relay = await JetRelayProcess.StartAsync(new JObject { ["apiKey"] = Key }, apiKey: Key);
        await using var anonymous = await JetPeer.ConnectAsync(relay.Tcp!);
        await anonymous.SendRequestAsync(JetWire.BuildV1Accept(relay.Tcp!.ToString()));
        var refused = await anonymous.ReadResponseAsync();
        await using var keyed = await JetPeer.ConnectAsync(relay.Tcp!);
        await keyed.SendRequestAsync($"GET / HTTP/1.1\r\nHost: {relay.Tcp}\r\nJet-Method: Accept\r\nJet-Version: 1\r\nAuthorization: Bearer {Key}\r\n\r\n");
        var accepted = await keyed.ReadResponseAsync();
        output.WriteLine($"v1 accept without the key: {refused.Status} {refused.Header("Jet-Association")}; with it: {accepted.Status} {accepted.Header("Jet-Association")}");
        Assert.Equal(401, refused.Status);
        Assert.Null(refused.Header("Jet-Association"));
        Assert.Equal(200, accepted.Status);
        Assert.True(await anonymous.IsClosedAsync());
    }

    /// <summary>
    /// One IPv6 /64 is one source: 50 connections from 50 addresses of fd00:24:4a::/64 (a local route on lo,
    /// IPV6_FREEBIND) against <c>maxPerSource</c> 10. Counted per address, every one is held.
    /// </summary>
    [Fact]
    public async Task Addresses_of_one_ipv6_64_share_the_per_source_limit()
    {
        const string Prefix = "fd00:24:4a::";
        var (added, problem) = await AddLocalRouteAsync(Prefix + "/64");
        Assert.True(added, "cannot add a local IPv6 route on lo (run as root): " + problem);
        try
        {
            await using var relay = await JetRelayProcess.StartAsync(new JObject { ["maxPerSource"] = 10, ["handshakeTimeout"] = 30 }, listen: "[::1]:0", loglevel: "info");
            var held = new List<Socket>();
            try
            {
                for (int i = 1; i <= 50; i++)
                {
                    var s = new Socket(AddressFamily.InterNetworkV6, SocketType.Stream, ProtocolType.Tcp);
                    s.SetRawSocketOption(41, 78, BitConverter.GetBytes(1)); // IPPROTO_IPV6, IPV6_FREEBIND
                    s.Bind(new IPEndPoint(IPAddress.Parse($"{Prefix}{i:x}"), 0));
                    await s.ConnectAsync(relay.Tcp!);
                    held.Add(s);
                }
                // Each connection at once: closed by the relay (end of stream or reset) within 3 s, or held.
                using var wait = new CancellationTokenSource(TimeSpan.FromSeconds(3));
                var ended = await Task.WhenAll(held.Select(async s =>
                {
                    try { return await s.ReceiveAsync(new byte[1], SocketFlags.None, wait.Token) == 0; }
                    catch (SocketException) { return true; }
                    catch (OperationCanceledException) { return false; }
                }));
                int closed = ended.Count(e => e);
                await using var legit = await JetPeer.ConnectAsync(relay.Tcp!);
                await legit.SendRequestAsync(JetWire.BuildRequest(JetMethod.Test, Guid.NewGuid(), Guid.NewGuid(), relay.Tcp!.ToString()));
                var answer = await legit.ReadResponseAsync();
                output.WriteLine($"50 connections from one /64 against maxPerSource 10: {closed} closed at once, {50 - closed} held; ::1 still answered {answer.Status}");
                Assert.Equal(40, closed);
                Assert.Equal(404, answer.Status);
            }
            finally
            {
                foreach (var s in held) s.Dispose();
            }
        }
        finally
        {
            await PtProcess.RunAsync("ip", "-6", "route", "del", "local", Prefix + "/64", "dev", "lo");
        }
    }

    /// <summary>
    /// Relayed sessions hold a slot each: 20 silent pairs must go at <c>sessionIdleTimeout</c>, and a pair
    /// that keeps talking at <c>sessionLifetime</c> (spec/jet.md §5.5).
    /// </summary>
    [Fact]
    public async Task Idle_and_overlong_relayed_sessions_are_cut()
    {
        await using var relay = await JetRelayProcess.StartAsync(new JObject { ["sessionIdleTimeout"] = 3, ["sessionLifetime"] = 8 }, loglevel: "info");
        var pairs = new List<(JetPeer A, JetPeer C)>();
        try
        {
            for (int i = 0; i < 21; i++) pairs.Add(await PairAsync(relay));
            var sw = Stopwatch.StartNew();
            // The last pair keeps talking: one byte each way every 500 ms.
            var (ta, tc) = pairs[^1];
            var talking = Task.Run(async () =>
            {
                try
                {
                    while (true)
                    {
                        await ta.SendAsync(1);
                        await tc.ReadExactlyAsync(1);
                        await Task.Delay(500);
                    }
                }
                catch (Exception e) when (e is IOException or EndOfStreamException or ObjectDisposedException or OperationCanceledException or SocketException) { }
                return sw.Elapsed;
            });
            var idleEnds = await Task.WhenAll(pairs.Take(20).Select(async p =>
            {
                Assert.True(await p.A.IsClosedAsync() && await p.C.IsClosedAsync());
                return sw.Elapsed;
            }));
            var talkingEnd = await talking.WaitAsync(TimeSpan.FromSeconds(30));
            output.WriteLine($"20 silent pairs cut at {idleEnds.Min().TotalSeconds:0.0}–{idleEnds.Max().TotalSeconds:0.0} s (idle 3 s); the talking pair at {talkingEnd.TotalSeconds:0.0} s (lifetime 8 s, paired {pairs.Count} in all)");
            Assert.All(idleEnds, t => Assert.InRange(t.TotalSeconds, 2.5, 10));
            Assert.InRange(talkingEnd.TotalSeconds, 6.5, 15);
            await using var fresh = await PairAsyncDisposable(relay);
        }
        finally
        {
            foreach (var (a, c) in pairs)
            {
                await a.DisposeAsync();
                await c.DisposeAsync();
            }
        }
    }

    /// <summary>The relay's TLS key in a file others can read: refused at start-up with exit 78 (spec/ipc.md §3.7).</summary>
    [Fact]
    public async Task A_relay_key_file_open_to_others_is_refused()
    {
        string dir = Directory.CreateTempSubdirectory("pthost-jetkey-").FullName;
        try
        {
            using var cert = PinnedTls.Generate("relay.example");
            await File.WriteAllTextAsync(Path.Combine(dir, "cert.pem"), PinnedTls.CertificatePem(cert));
            string key = Path.Combine(dir, "key.pem");
            await File.WriteAllTextAsync(key, PinnedTls.KeyPem(cert));
            File.SetUnixFileMode(key, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead | UnixFileMode.OtherRead);
            string config = Path.Combine(dir, "relay.json");
            await File.WriteAllTextAsync(config, new JObject { ["certificateFile"] = "cert.pem", ["keyFile"] = "key.pem" }.ToString());
            await using var p = PtProcess.StartPthost("relay", "jet", "--listen", "127.0.0.1:0", "--config", config);
            int exit = await p.WaitForExitAsync(TimeSpan.FromSeconds(20));
            output.WriteLine($"key.pem 0644: exit {exit}; stdout [{string.Join(" | ", p.StdoutLines)}]; stderr: {p.Stderr.Trim()}");
            Assert.Equal(78, exit);
            Assert.Contains("keyFile", p.Stderr, StringComparison.Ordinal);
            Assert.Contains("mode 0644", p.Stderr, StringComparison.Ordinal);

            File.SetUnixFileMode(key, UnixFileMode.UserRead | UnixFileMode.UserWrite);
            await using var ok = PtProcess.StartPthost("relay", "jet", "--listen", "127.0.0.1:0", "--config", config);
            Assert.StartsWith("LISTEN jet ", await ok.ReadLineAsync(), StringComparison.Ordinal);
        }
        finally { Directory.Delete(dir, true); }
    }

    // ---- helpers ----

    private static async Task<(JetPeer, JetPeer)> PairAsync(JetRelayProcess relay)
    {
        var (aid, candidates) = await relay.CreateAndGatherAsync();
        var (cid, _) = candidates["tcp"];
        var acceptor = await JetPeer.ConnectAsync(relay.Tcp!);
        await acceptor.SendRequestAsync(JetWire.BuildRequest(JetMethod.Accept, aid, cid, relay.Tcp!.ToString()));
        await relay.WaitForCandidateStateAsync(aid, cid, "accepted");
        var connector = await JetPeer.ConnectAsync(relay.Tcp!);
        await connector.SendRequestAsync(JetWire.BuildRequest(JetMethod.Connect, aid, cid, relay.Tcp!.ToString()));
        Assert.Equal(200, (await connector.ReadResponseAsync()).Status);
        // A relay that answers the v2 accept (spec/jet.md §4) sends its 200 first: read past it.
        await connector.SendAsync(0x5A);
        byte[] b = await acceptor.ReadExactlyAsync(1);
        if (b[0] == JetWire.Signature[0])
        {
            byte[] rest = await acceptor.ReadExactlyAsync(7);
            int size = (rest[3] << 8) | rest[4];
            await acceptor.ReadExactlyAsync(size - 8 + 1);
        }
        return (acceptor, connector);
    }

    private sealed class PairHolder(JetPeer a, JetPeer c) : IAsyncDisposable
    {
        public async ValueTask DisposeAsync()
        {
            await a.DisposeAsync();
            await c.DisposeAsync();
        }
    }

    private static async Task<PairHolder> PairAsyncDisposable(JetRelayProcess relay)
    {
        var (a, c) = await PairAsync(relay);
        return new PairHolder(a, c);
    }

    private static HttpClient FromAddress(IPAddress local, IPEndPoint relay) => new(new SocketsHttpHandler
    {
        ConnectCallback = async (ctx, ct) =>
        {
            var s = new Socket(local.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
            s.Bind(new IPEndPoint(local, 0));
            await s.ConnectAsync(ctx.DnsEndPoint, ct);
            return new NetworkStream(s, ownsSocket: true);
        },
    })
    { BaseAddress = new Uri($"http://{relay}"), Timeout = TimeSpan.FromSeconds(20) };

    private static async Task<(bool, string)> AddLocalRouteAsync(string prefix)
    {
        var (exit, _, err) = await PtProcess.RunAsync("ip", "-6", "route", "replace", "local", prefix, "dev", "lo");
        return (exit == 0, err.Trim());
    }

    /// <summary>
    /// A minimal HTTP/1.1 server standing where a relay's REST API is expected (plain or TLS with any certificate):
    /// records every request head and answers as <c>respond</c> says.
    /// </summary>
    private sealed class FakeRestServer : IAsyncDisposable
    {
        private readonly TcpListener _listener;
        private readonly CancellationTokenSource _stop = new();
        private readonly Task _loop;
        private readonly X509Certificate2? _certificate;
        private readonly Func<string, string, (int, string)> _respond;
        private int _connections, _tlsFailures;

        public FakeRestServer(IPAddress address, X509Certificate2? certificate, Func<string, string, (int, string)> respond)
        {
            _certificate = certificate;
            _respond = respond;
            _listener = new TcpListener(address, 0);
            _listener.Start();
            _loop = Task.Run(AcceptLoopAsync);
        }

        public IPEndPoint EndPoint => (IPEndPoint)_listener.LocalEndpoint;
        public ConcurrentQueue<string> Requests { get; } = new();
        public int Connections => Volatile.Read(ref _connections);
        public int TlsFailures => Volatile.Read(ref _tlsFailures);

        /// <summary>Answers association and gather with no candidates.</summary>
        public static (int, string) EmptyRelay(string method, string path) => RelayGathering([])(method, path);

        public static Func<string, string, (int, string)> RelayGathering(JArray candidates) => (method, path) =>
        {
            string id = path.Split('/')[^1];
            return path.StartsWith("/jet/gather/", StringComparison.Ordinal)
                ? (200, new JObject { ["id"] = id, ["candidates"] = candidates }.ToString(Newtonsoft.Json.Formatting.None))
                : (200, new JObject { ["id"] = id, ["version"] = 2, ["candidates"] = new JArray() }.ToString(Newtonsoft.Json.Formatting.None));
        };

        private async Task AcceptLoopAsync()
        {
            while (!_stop.IsCancellationRequested)
            {
                TcpClient c;
                try { c = await _listener.AcceptTcpClientAsync(_stop.Token); }
                catch (Exception e) when (e is OperationCanceledException or SocketException or ObjectDisposedException) { return; }
                Interlocked.Increment(ref _connections);
                _ = Task.Run(() => ServeAsync(c));
            }
        }

        private async Task ServeAsync(TcpClient c)
        {
            using (c)
            {
                Stream stream = c.GetStream();
                try
                {
                    if (_certificate is not null)
                    {
                        var ssl = new SslStream(stream);
                        try { await ssl.AuthenticateAsServerAsync(new SslServerAuthenticationOptions { ServerCertificate = _certificate }, _stop.Token); }
                        catch (Exception e) when (e is AuthenticationException or IOException)
                        {
                            Interlocked.Increment(ref _tlsFailures);
                            return;
                        }
                        stream = ssl;
                    }
                    var buffer = new byte[16384];
                    int got = 0;
                    while (true)
                    {
                        int end = Encoding.ASCII.GetString(buffer, 0, got).IndexOf("\r\n\r\n", StringComparison.Ordinal);
                        if (end >= 0)
                        {
                            string head = Encoding.ASCII.GetString(buffer, 0, end);
                            Requests.Enqueue(head);
                            string[] start = head.Split("\r\n")[0].Split(' ');
                            var (status, body) = _respond(start[0], start[1]);
                            byte[] bytes = Encoding.UTF8.GetBytes(body);
                            byte[] response = Encoding.ASCII.GetBytes($"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {bytes.Length}\r\n\r\n");
                            await stream.WriteAsync(response, _stop.Token);
                            await stream.WriteAsync(bytes, _stop.Token);
                            got -= end + 4;
                            Array.Copy(buffer, end + 4, buffer, 0, got);
                            continue;
                        }
                        int n = await stream.ReadAsync(buffer.AsMemory(got), _stop.Token);
                        if (n == 0) return;
                        got += n;
                    }
                }
                catch (Exception e) when (e is IOException or OperationCanceledException or SocketException or ObjectDisposedException) { }
            }
        }

        public async ValueTask DisposeAsync()
        {
            await _stop.CancelAsync();
            _listener.Stop();
            await _loop;
            _certificate?.Dispose();
            _stop.Dispose();
        }
    }
}
