using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using Newtonsoft.Json.Linq;
using PtHost.Transports.Jet;
using PtHost.Transports.Zephyr;
using Xunit.Abstractions;

namespace PtHost.Tests.Process;

/// <summary>
/// Relays at scale (docs/deploy.md): three JET and three Zephyr instances behind a real HAProxy 2.6, a real
/// Prometheus 2.42 scraping each, kill -9 of one instance under load, and hostile input on Zephyr's internal link
/// (spec/zephyr.md §8). The haproxy.cfg of docs/deploy.md is <see cref="HaproxyConfig"/>.
/// </summary>
[Collection("process")]
public class ScaleOutTests(ITestOutputHelper output)
{
    private const int Bulk = 10_000;
    private const int Workers = 32;

    /// <summary>The configuration docs/deploy.md shows (servers filled in): JET REST hashed by the association id, Zephyr round-robin.</summary>
    public static string HaproxyConfig(IEnumerable<(string Name, IPEndPoint Address)> jet, IEnumerable<(string Name, IPEndPoint Address)> zephyr) => $"""
        global
            maxconn 8000
            # Zephyr's backend splices (below): each spliced connection holds a pipe (2 descriptors); bound them.
            maxpipes 1000
            tune.pipesize 524288
            stats socket @STATS@ mode 600 level admin
        defaults
            timeout connect 2s
            timeout client 60s
            timeout server 60s
            timeout tunnel 1h
            timeout check 1s
        frontend jet_rest
            mode http
            bind @LISTENER0@
            default_backend jet
        backend jet
            mode http
            # Every REST call of one association (/jet/association/ID, /jet/gather/ID) names the id in the 3rd path segment:
            # hashing it sends them all to one instance; consistent hashing moves only a dead instance's ids.
            balance hash path,field(4,/)
            hash-type consistent
            default-server check inter 300ms fall 2 rise 2
        {string.Join("\n", jet.Select(s => $"    server {s.Name} {s.Address}"))}
        frontend zephyr
            mode tcp
            bind @LISTENER1@
            default_backend zephyr
        backend zephyr
            mode tcp
            # A zid is not visible before the instance is picked: the instances forward binds among themselves (spec/zephyr.md §8).
            balance roundrobin
            # Zephyr bytes are opaque: let the kernel move them (a third of the CPU per byte of copying them, docs/deploy.md §5).
            option splice-request
            option splice-response
            default-server check inter 300ms fall 2 rise 2
        {string.Join("\n", zephyr.Select(s => $"    server {s.Name} {s.Address}"))}

        """;

    // ---- JET ----

    [Fact]
    public async Task Ten_thousand_JET_associations_through_haproxy_each_reach_one_instance_and_prometheus_counts_them()
    {
        var jets = await StartJetAsync();
        await using var _ = new Disposer(jets);
        await using var haproxy = await HaproxyProcess.StartAsync(HaproxyConfig(jets.Select(j => (j.Id, j.Http)), []), 2);
        await using var prometheus = await PrometheusProcess.StartAsync(new Dictionary<string, IPEndPoint[]> { ["jet"] = [.. jets.Select(j => j.Metrics)] });
        using var rest = Rest(haproxy.Listeners[0]);

        var clock = Stopwatch.StartNew();
        var perInstance = new ConcurrentDictionary<string, int>();
        int wrongInstanceRefusals = 0;
        await RunAsync(Bulk, async i =>
        {
            var owner = await AssociationAsync(rest, jets, i % 100 == 0);
            perInstance.AddOrUpdate(owner.Instance, 1, (_, n) => n + 1);
            if (owner.WrongInstanceRefused) Interlocked.Increment(ref wrongInstanceRefusals);
        });
        output.WriteLine($"{Bulk} JET associations through haproxy in {clock.Elapsed.TotalSeconds:F1} s; per instance: {string.Join(", ", perInstance.OrderBy(p => p.Key).Select(p => $"{p.Key}={p.Value}"))}");
        Assert.Equal(Bulk, perInstance.Values.Sum());
        Assert.All(jets, j => Assert.True(perInstance.GetValueOrDefault(j.Id) > Bulk / 6, $"{j.Id} took {perInstance.GetValueOrDefault(j.Id)}"));
        Assert.Equal(Bulk / 100, wrongInstanceRefusals);

        // Prometheus scraped every instance: its sums are the test's own counts.
        await prometheus.WaitForValueAsync("sum(pthost_sessions_opened_total{job=\"jet\"})", Bulk);
        await prometheus.WaitForValueAsync("sum(pthost_sessions_failed_total{job=\"jet\",reason=\"connect-404\"})", Bulk / 100);
        foreach (var j in jets)
            await prometheus.WaitForValueAsync($"sum(pthost_sessions_opened_total{{job=\"jet\",instance=\"{j.Metrics}\"}})", perInstance[j.Id]);
        await prometheus.WaitForValueAsync("count(pthost_instance_info{job=\"jet\",process=\"relay jet\"})", 3);
        await prometheus.WaitForValueAsync("sum(pthost_relay_pairs{job=\"jet\",state=\"bound\"})", 0);
        await prometheus.WaitForValueAsync("sum(pthost_relay_pair_setup_seconds_count{job=\"jet\"})", Bulk);
        await prometheus.WaitForValueAsync("sum(pthost_bytes_total{job=\"jet\",direction=\"connector-to-acceptor\"})", Bulk * 32.0);
    }

    [Fact]
    public async Task Kill_9_of_a_JET_instance_ends_only_its_sessions_haproxy_routes_around_it_and_it_serves_again_after_a_restart()
    {
        var jets = await StartJetAsync();
        await using var _ = new Disposer(jets);
        await using var haproxy = await HaproxyProcess.StartAsync(HaproxyConfig(jets.Select(j => (j.Id, j.Http)), []), 2);
        using var rest = Rest(haproxy.Listeners[0]);

        // Sessions in flight on every instance.
        var held = new List<HeldJet>();
        for (int i = 0; i < 60; i++) held.Add(await OpenJetAsync(rest, jets));
        var victim = jets[1];
        int onVictim = held.Count(h => h.Instance == victim.Id);
        Assert.True(onVictim > 0, "no session landed on the victim");
        victim.Process.Signal(9);

        int ended = 0, alive = 0;
        foreach (var h in held)
        {
            if (await h.StillRelaysAsync()) alive++;
            else
            {
                ended++;
                Assert.Equal(victim.Id, h.Instance); // only the dead instance's sessions end
            }
            await h.DisposeAsync();
        }
        output.WriteLine($"kill -9 {victim.Id}: {ended} sessions ended (it held {onVictim}), {alive} kept relaying");
        Assert.Equal(onVictim, ended);
        Assert.Equal(held.Count - onVictim, alive);

        await haproxy.WaitForStatusAsync("jet", victim.Id, "DOWN");
        for (int i = 0; i < 100; i++) Assert.NotEqual(victim.Id, (await AssociationAsync(rest, jets, false)).Instance);

        await victim.RestartAsync();
        await haproxy.WaitForStatusAsync("jet", victim.Id, "UP");
        int back = 0;
        for (int i = 0; i < 100; i++) if ((await AssociationAsync(rest, jets, false)).Instance == victim.Id) back++;
        output.WriteLine($"after the restart {victim.Id} took {back} of 100 new associations");
        Assert.True(back > 0);
    }

    private static async Task<JetInstance[]> StartJetAsync()
    {
        var list = new List<JetInstance>();
        for (int n = 1; n <= 3; n++) list.Add(await JetInstance.StartAsync($"jet{n}"));
        return [.. list];
    }

    private static HttpClient Rest(IPEndPoint haproxy) =>
        new(new SocketsHttpHandler { MaxConnectionsPerServer = Workers }) { BaseAddress = new Uri($"http://{haproxy}"), Timeout = TimeSpan.FromSeconds(20) };

    private sealed record Owner(string Instance, bool WrongInstanceRefused);

    /// <summary>
    /// One association through haproxy: create, gather, get (each answered by the same instance, by Jet-Instance), the
    /// acceptor and connector on that instance's own tcp candidate, 32 checked bytes each way, delete. With
    /// <paramref name="tryWrongInstance"/>, a connect sent to another instance first gets that instance's 404 at once.
    /// </summary>
    private static async Task<Owner> AssociationAsync(HttpClient rest, JetInstance[] jets, bool tryWrongInstance)
    {
        await using var h = await OpenJetAsync(rest, jets, tryWrongInstance);
        Assert.True(await h.StillRelaysAsync(), "the new session did not relay");
        var delete = await rest.DeleteAsync($"/jet/association/{h.Aid}");
        Assert.Equal(HttpStatusCode.OK, delete.StatusCode);
        Assert.Equal(h.Instance, Instance(delete)); // misrouted otherwise
        return new Owner(h.Instance, h.WrongInstanceRefused);
    }

    private static async Task<HeldJet> OpenJetAsync(HttpClient rest, JetInstance[] jets, bool tryWrongInstance = false)
    {
        var aid = Guid.NewGuid();
        var created = await rest.PostAsync($"/jet/association/{aid}", null);
        Assert.Equal(HttpStatusCode.OK, created.StatusCode);
        string instance = Instance(created);
        var gathered = await rest.PostAsync($"/jet/gather/{aid}", null);
        Assert.Equal(HttpStatusCode.OK, gathered.StatusCode);
        Assert.Equal(instance, Instance(gathered));
        var owner = jets.Single(j => j.Id == instance);
        var tcp = ((JArray)JObject.Parse(await gathered.Content.ReadAsStringAsync())["candidates"]!).Single(c => ((string)c["url"]!).StartsWith("tcp://", StringComparison.Ordinal));
        var cid = Guid.Parse((string)tcp["id"]!);
        // The candidate names the owner's own reachable address: the binary connects go straight to it.
        Assert.Equal($"tcp://{owner.Tcp}", ((string)tcp["url"]!).TrimEnd('/'));
        var got = await rest.GetAsync($"/jet/association/{aid}");
        Assert.Equal(HttpStatusCode.OK, got.StatusCode);
        Assert.Equal(instance, Instance(got));

        var acceptor = await JetPeer.ConnectAsync(owner.Tcp);
        JetPeer? connector = null;
        try
        {
            var accepted = await acceptor.AcceptAsync(aid, cid, owner.Tcp.ToString());
            Assert.Equal(instance, accepted.Header("Jet-Instance"));
            bool wrongRefused = false;
            if (tryWrongInstance)
            {
                // spec/jet.md §5.4: an instance that does not hold the association answers 404 at once and closes.
                var other = jets.First(j => j.Id != instance);
                await using var stray = await JetPeer.ConnectAsync(other.Tcp);
                var clock = Stopwatch.StartNew();
                await stray.SendRequestAsync(JetWire.BuildRequest(JetMethod.Connect, aid, cid, other.Tcp.ToString()));
                Assert.Equal(404, (await stray.ReadResponseAsync()).Status);
                Assert.True(await stray.IsClosedAsync());
                Assert.True(clock.Elapsed < TimeSpan.FromSeconds(5), $"the wrong instance took {clock.Elapsed}");
                wrongRefused = true;
            }
            connector = await JetPeer.ConnectAsync(owner.Tcp);
            await connector.SendRequestAsync(JetWire.BuildRequest(JetMethod.Connect, aid, cid, owner.Tcp.ToString()));
            Assert.Equal(200, (await connector.ReadResponseAsync()).Status);
            return new HeldJet(aid, instance, acceptor, connector, wrongRefused);
        }
        catch
        {
            await acceptor.DisposeAsync();
            if (connector is not null) await connector.DisposeAsync();
            throw;
        }
    }

    private static string Instance(HttpResponseMessage r) => r.Headers.GetValues("Jet-Instance").Single();

    private sealed record HeldJet(Guid Aid, string Instance, JetPeer Acceptor, JetPeer Connector, bool WrongInstanceRefused) : IAsyncDisposable
    {
        public Task<bool> StillRelaysAsync() => RoundTripAsync(b => Connector.SendAsync(b), Acceptor.ReadExactlyAsync, b => Acceptor.SendAsync(b), Connector.ReadExactlyAsync);

        public async ValueTask DisposeAsync()
        {
            await Connector.DisposeAsync();
            await Acceptor.DisposeAsync();
        }
    }

    // ---- Zephyr ----

    [Fact]
    public async Task Ten_thousand_Zephyr_pairs_through_haproxy_meet_across_instances_and_prometheus_counts_them()
    {
        string dir = Directory.CreateTempSubdirectory("pthost-zephyr-cluster-").FullName;
        var zephyrs = await ZephyrInstance.StartClusterAsync(3, dir);
        await using var _ = new Disposer(zephyrs);
        await using var haproxy = await HaproxyProcess.StartAsync(HaproxyConfig([], zephyrs.Select(z => ($"zephyr{z.Number}", z.EndPoint))), 2);
        await using var prometheus = await PrometheusProcess.StartAsync(new Dictionary<string, IPEndPoint[]> { ["zephyr"] = [.. zephyrs.Select(z => z.Metrics)] });

        var clock = Stopwatch.StartNew();
        long forwards = 0, crossPairs = 0;
        await RunAsync(Bulk, async _ =>
        {
            using var pair = await OpenPairAsync(haproxy.Listeners[1]);
            Assert.True(await pair.StillRelaysAsync(), "a new pair did not relay");
            Interlocked.Add(ref forwards, pair.Forwards);
            if (pair.Forwards > 0) Interlocked.Increment(ref crossPairs);
        });
        output.WriteLine($"{Bulk} Zephyr pairs through haproxy in {clock.Elapsed.TotalSeconds:F1} s; {crossPairs} met across instances ({forwards} forwarded binds)");
        Assert.True(crossPairs > Bulk / 3, $"only {crossPairs} pairs crossed instances");

        await prometheus.WaitForValueAsync("sum(pthost_sessions_opened_total{job=\"zephyr\"})", Bulk);
        await prometheus.WaitForValueAsync("sum(pthost_zephyr_forwarded_total{job=\"zephyr\"})", forwards);
        await prometheus.WaitForValueAsync("sum(pthost_zephyr_linked_total{job=\"zephyr\"})", forwards);
        await prometheus.WaitForValueAsync("sum(pthost_relay_pairs{job=\"zephyr\",state=\"bound\"})", 0);
        await prometheus.WaitForValueAsync("sum(pthost_bytes_total{job=\"zephyr\",direction=~\"waiter-to-joiner|joiner-to-waiter\"})", Bulk * 64.0);
        await prometheus.WaitForValueAsync("sum(pthost_zephyr_link_refused_total{job=\"zephyr\"})", 0);
        await prometheus.WaitForValueAsync("count(pthost_instance_info{job=\"zephyr\"})", 3);
    }

    [Fact]
    public async Task Kill_9_of_a_Zephyr_instance_ends_only_the_pairs_it_carried_and_it_serves_again_after_a_restart()
    {
        string dir = Directory.CreateTempSubdirectory("pthost-zephyr-cluster-").FullName;
        var zephyrs = await ZephyrInstance.StartClusterAsync(3, dir);
        await using var _ = new Disposer(zephyrs);
        await using var haproxy = await HaproxyProcess.StartAsync(HaproxyConfig([], zephyrs.Select(z => ($"zephyr{z.Number}", z.EndPoint))), 2);

        var held = new List<ZephyrPair>();
        for (int i = 0; i < 60; i++)
        {
            var p = await OpenPairAsync(haproxy.Listeners[1]);
            Assert.True(await p.StillRelaysAsync());
            held.Add(p);
        }
        var victim = zephyrs[1];
        int carried = held.Count(p => p.Instances.Contains(victim.Number));
        Assert.True(carried > 0);
        victim.Process.Signal(9);
        int ended = 0, alive = 0;
        foreach (var p in held)
        {
            if (await p.StillRelaysAsync()) alive++;
            else
            {
                ended++;
                Assert.Contains(victim.Number, p.Instances); // only pairs the dead instance carried end
            }
            p.Dispose();
        }
        output.WriteLine($"kill -9 zephyr{victim.Number}: {ended} pairs ended (it carried {carried}), {alive} kept relaying");
        Assert.Equal(carried, ended);

        await haproxy.WaitForStatusAsync("zephyr", $"zephyr{victim.Number}", "DOWN");
        for (int i = 0; i < 60; i++)
        {
            using var p = await OpenPairAsync(haproxy.Listeners[1]);
            Assert.DoesNotContain(victim.Number, p.Instances);
            Assert.True(await p.StillRelaysAsync());
        }
        await victim.RestartAsync();
        await haproxy.WaitForStatusAsync("zephyr", $"zephyr{victim.Number}", "UP");
        int involving = 0;
        for (int i = 0; i < 60; i++)
        {
            using var p = await OpenPairAsync(haproxy.Listeners[1]);
            Assert.True(await p.StillRelaysAsync());
            if (p.Instances.Contains(victim.Number)) involving++;
        }
        output.WriteLine($"after the restart zephyr{victim.Number} carried {involving} of 60 new pairs");
        Assert.True(involving > 0);
    }

    /// <summary>
    /// Issue 20: Prometheus scrapes the pthost client and server processes too (their <c>metrics</c> key, spec/ipc.md §4.12),
    /// beside the relays they use: a zephyr client and server whose relay is the three-instance cluster behind HAProxy.
    /// </summary>
    [Fact]
    public async Task Prometheus_scrapes_a_pthost_client_and_server_beside_the_zephyr_instances_and_counts_their_sessions()
    {
        const int Sessions = 40;
        string dir = Directory.CreateTempSubdirectory("pthost-zephyr-cluster-").FullName;
        var zephyrs = await ZephyrInstance.StartClusterAsync(3, dir);
        await using var _ = new Disposer(zephyrs);
        await using var haproxy = await HaproxyProcess.StartAsync(HaproxyConfig([], zephyrs.Select(z => ($"zephyr{z.Number}", z.EndPoint))), 2);
        await using var echo = new EchoServer();
        var generated = await ZephyrChain.GenerateAsync();
        var clientOptions = (JObject)generated["client"]!;
        var serverOptions = (JObject)generated["server"]!;
        clientOptions["relay"] = haproxy.Listeners[1].ToString();
        serverOptions["relay"] = haproxy.Listeners[1].ToString();
        var serverConfig = PtChain.FreeServerOf("zephyr", serverOptions);
        serverConfig["metrics"] = "127.0.0.1:0";
        serverConfig["instance"] = "edge-server";
        await using var chain = await PtChain.StartAsync(serverConfig, ep =>
        {
            var client = PtChain.ClientOf("zephyr", clientOptions);
            client["metrics"] = "127.0.0.1:0";
            client["instance"] = "edge-client";
            return client;
        });
        // The chain's pump reads both processes' stdout (it carries CMESSAGE/SMESSAGE lines): look for the line among those seen.
        const string MetricsLine = "STATUS TYPE=metrics ADDRESS=";
        static async Task<IPEndPoint> MetricsAddressAsync(PtProcess p) => IPEndPoint.Parse((await Eventually.ValueAsync(
            () => p.StdoutLines.FirstOrDefault(l => l.StartsWith(MetricsLine, StringComparison.Ordinal)), l => l is not null, TimeSpan.FromSeconds(30))
            ?? throw new TimeoutException("no metrics line:\n" + string.Join('\n', p.StdoutLines)))[MetricsLine.Length..]);
        var clientMetrics = await MetricsAddressAsync(chain.Client);
        var serverMetrics = await MetricsAddressAsync(chain.Server);
        await using var prometheus = await PrometheusProcess.StartAsync(new Dictionary<string, IPEndPoint[]>
        {
            ["zephyr"] = [.. zephyrs.Select(z => z.Metrics)],
            ["client"] = [clientMetrics],
            ["server"] = [serverMetrics],
        });

        byte[] payload = RandomNumberGenerator.GetBytes(1000);
        int relayed = 0;
        for (int i = 0; i < Sessions; i++)
        {
            await EchoThroughSocksAsync(chain.SocksEndPoint, echo.Port, payload);
            relayed++;
        }
        await chain.SessionsClosedAsync();
        output.WriteLine($"{relayed} SOCKS sessions through a zephyr client and server over the 3-instance cluster");

        // The test's own count, as each process reports it to Prometheus.
        await prometheus.WaitForValueAsync("sum(pthost_sessions_opened_total{job=\"client\",transport=\"zephyr\",role=\"client\"})", relayed);
        await prometheus.WaitForValueAsync("sum(pthost_sessions_opened_total{job=\"server\",transport=\"zephyr\",role=\"server\"})", relayed);
        await prometheus.WaitForValueAsync("sum(pthost_sessions_open{job=~\"client|server\"})", 0);
        await prometheus.WaitForValueAsync("sum(pthost_bytes_total{job=\"client\",direction=\"in\"})", relayed * (double)payload.Length);
        await prometheus.WaitForValueAsync("sum(pthost_bytes_total{job=\"server\",direction=\"out\"})", relayed * (double)payload.Length);
        await prometheus.WaitForValueAsync("sum(pthost_handshake_seconds_count{job=\"client\"})", relayed);
        await prometheus.WaitForValueAsync("count(pthost_instance_info{job=\"client\",id=\"edge-client\",process=\"client\"})", 1);
        await prometheus.WaitForValueAsync("count(pthost_instance_info{job=\"server\",id=\"edge-server\",process=\"server\"})", 1);
        // Every session was one zephyr pair on the cluster: the relays opened as many as the client did.
        await prometheus.WaitForValueAsync("sum(pthost_sessions_opened_total{job=\"zephyr\"})", relayed);
        await prometheus.WaitForValueAsync("sum(pthost_relay_pairs{job=\"zephyr\",state=\"bound\"})", 0);
        await prometheus.WaitForValueAsync("count(up{job=~\"client|server|zephyr\"} == 1)", 5);
    }

    // ---- spec/zephyr.md §8.6: direct joins ----

    /// <summary>
    /// §8.6: the server joins the instance its client landed on (the zid's tag) directly, so no bind is forwarded: the
    /// client's connection still passes HAProxy, the server's does not, and every pair meets locally.
    /// </summary>
    [Fact]
    public async Task With_relayInstances_the_server_joins_its_clients_instance_directly_and_no_bind_is_forwarded()
    {
        const int Sessions = 60;
        await using var cluster = await ZephyrCluster.StartAsync();
        var (zephyrs, haproxy) = (cluster.Instances, cluster.Haproxy);
        var map = new JObject();
        foreach (var z in zephyrs) map[z.Number.ToString(CultureInfo.InvariantCulture)] = z.EndPoint.ToString();
        int relayed = await DirectJoinSessionsAsync(haproxy.Listeners[1], map, Sessions);

        var opened = await SumPerInstanceAsync(zephyrs, "pthost_sessions_opened_total");
        output.WriteLine($"{relayed} sessions through HAProxy with direct joins; pairs per instance {string.Join(", ", opened)}; " +
            $"forwarded binds {(await SumPerInstanceAsync(zephyrs, "pthost_zephyr_forwarded_total")).Sum()}");
        Assert.Equal(Sessions, relayed);
        Assert.Equal(Sessions, opened.Sum());
        Assert.All(opened, n => Assert.True(n > 0, "an instance met no pair: the client's connections did not pass the balancer"));
        Assert.Equal(0, (await SumPerInstanceAsync(zephyrs, "pthost_zephyr_forwarded_total")).Sum());
        Assert.Equal(0, (await SumPerInstanceAsync(zephyrs, "pthost_zephyr_linked_total")).Sum());
    }

    /// <summary>§8.6: an entry whose instance cannot be joined falls back to the balancer, and the link carries those pairs.</summary>
    [Fact]
    public async Task A_relayInstances_entry_that_cannot_be_joined_falls_back_to_the_balancer_and_the_pair_still_meets()
    {
        const int Sessions = 30;
        await using var cluster = await ZephyrCluster.StartAsync();
        var (zephyrs, haproxy) = (cluster.Instances, cluster.Haproxy);
        // Instance 1's entry names a port that is bound but not listening: connecting is refused, as with a dead instance.
        using var dead = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        dead.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        var map = new JObject { ["1"] = dead.LocalEndPoint!.ToString(), ["2"] = zephyrs[1].EndPoint.ToString(), ["3"] = zephyrs[2].EndPoint.ToString() };
        int relayed = await DirectJoinSessionsAsync(haproxy.Listeners[1], map, Sessions);

        long forwarded = (await SumPerInstanceAsync(zephyrs, "pthost_zephyr_forwarded_total")).Sum();
        var opened = await SumPerInstanceAsync(zephyrs, "pthost_sessions_opened_total");
        output.WriteLine($"{relayed} sessions; pairs per instance {string.Join(", ", opened)}; forwarded binds {forwarded}");
        Assert.Equal(Sessions, relayed);
        Assert.Equal(Sessions, opened.Sum());
        // The clients that landed on instance 1 were joined through HAProxy; those that met elsewhere crossed the link.
        Assert.True(forwarded > 0, "no fallback pair was forwarded: the dead entry was not tried through the balancer");
        Assert.True(forwarded < Sessions, $"{forwarded} forwards: the live entries were not joined directly");
    }

    [Fact]
    public async Task A_bad_relayInstances_map_fails_with_SMETHOD_ERROR_naming_the_key()
    {
        var generated = await ZephyrChain.GenerateAsync();
        var options = (JObject)generated["server"]!;
        options["relay"] = "127.0.0.1:7000";
        options["relayInstances"] = JObject.Parse("""{"127.0.0.1:7000": {"16": "127.0.0.1:7001"}}""");
        await using var server = PtProcess.StartPthost(PtChain.FreeServerOf("zephyr", options).ToString(Newtonsoft.Json.Formatting.None));
        var lines = await server.ReadUntilDoneAsync();
        var error = Assert.Single(lines, l => l.StartsWith("SMETHOD-ERROR zephyr ", StringComparison.Ordinal));
        Assert.Contains("relayInstances", error, StringComparison.Ordinal);
        Assert.Contains("16", error, StringComparison.Ordinal);
        Assert.DoesNotContain(lines, l => l.StartsWith("SMETHOD zephyr ", StringComparison.Ordinal));
    }

    /// <summary><paramref name="sessions"/> SOCKS sessions, 8 at once, through a zephyr client and server whose relay is <paramref name="balancer"/> and whose server maps it with <paramref name="map"/>; 1000 random bytes echoed and checked in each.</summary>
    private async Task<int> DirectJoinSessionsAsync(IPEndPoint balancer, JObject map, int sessions)
    {
        await using var echo = new EchoServer();
        var generated = await ZephyrChain.GenerateAsync();
        var clientOptions = (JObject)generated["client"]!;
        var serverOptions = (JObject)generated["server"]!;
        clientOptions["relay"] = balancer.ToString();
        serverOptions["relay"] = balancer.ToString();
        serverOptions["relayInstances"] = new JObject { [balancer.ToString()] = map };
        await using var chain = await PtChain.StartAsync(PtChain.FreeServerOf("zephyr", serverOptions), ep => PtChain.ClientOf("zephyr", clientOptions));
        int relayed = 0;
        int next = -1;
        await Task.WhenAll(Enumerable.Range(0, 8).Select(_ => Task.Run(async () =>
        {
            byte[] payload = RandomNumberGenerator.GetBytes(1000);
            while (Interlocked.Increment(ref next) < sessions)
            {
                await EchoThroughSocksAsync(chain.SocksEndPoint, echo.Port, payload);
                Interlocked.Increment(ref relayed);
            }
        })));
        await chain.SessionsClosedAsync();
        return relayed;
    }

    /// <summary>One SOCKS CONNECT to the echo server through <paramref name="socks"/>, <paramref name="payload"/> echoed and checked.</summary>
    private static async Task EchoThroughSocksAsync(IPEndPoint socks, int echoPort, byte[] payload)
    {
        await using var c = await SocksClient.ConnectAsync(socks);
        await c.SendAsync([.. SocksClient.Greeting(0x00), .. SocksClient.ConnectIPv4(IPAddress.Loopback, echoPort)]);
        Assert.Equal(new byte[] { 5, 0 }, await c.ReadExactlyAsync(2));
        Assert.Equal(0x00, await c.ReadReplyAsync());
        await c.SendAsync(payload);
        Assert.Equal(payload, await c.ReadExactlyAsync(payload.Length));
    }

    /// <summary>Three Zephyr cluster instances behind HAProxy (<see cref="HaproxyConfig"/>; the Zephyr frontend is listener 1).</summary>
    private sealed record ZephyrCluster(ZephyrInstance[] Instances, HaproxyProcess Haproxy) : IAsyncDisposable
    {
        public static async Task<ZephyrCluster> StartAsync()
        {
            var zephyrs = await ZephyrInstance.StartClusterAsync(3, Directory.CreateTempSubdirectory("pthost-zephyr-cluster-").FullName);
            try
            {
                return new(zephyrs, await HaproxyProcess.StartAsync(HaproxyConfig([], zephyrs.Select(z => ($"zephyr{z.Number}", z.EndPoint))), 2));
            }
            catch
            {
                await new Disposer(zephyrs).DisposeAsync();
                throw;
            }
        }

        public async ValueTask DisposeAsync()
        {
            await Haproxy.DisposeAsync();
            await new Disposer(Instances).DisposeAsync();
        }
    }

    /// <summary>The sum of every sample of <paramref name="metric"/> on each instance's metrics endpoint, in instance order.</summary>
    private static async Task<long[]> SumPerInstanceAsync(ZephyrInstance[] instances, string metric)
    {
        using var http = new HttpClient();
        var sums = new long[instances.Length];
        for (int i = 0; i < instances.Length; i++)
        {
            string text = await http.GetStringAsync($"http://{instances[i].Metrics}/metrics");
            foreach (string line in text.Split('\n'))
                if (line.StartsWith(metric, StringComparison.Ordinal) && (line.Length > metric.Length && line[metric.Length] is ' ' or '{'))
                    sums[i] += (long)double.Parse(line[(line.LastIndexOf(' ') + 1)..], CultureInfo.InvariantCulture);
        }
        return sums;
    }

    private static async Task<ZephyrPair> OpenPairAsync(IPEndPoint relay)
    {
        var a = await ZephyrPeer.ConnectAsync(relay);
        ZephyrPeer? b = null;
        try
        {
            b = await ZephyrPeer.ConnectAsync(relay);
            await a.BindAsync(b.Zid);
            await b.BindAsync(a.Zid);
            return new ZephyrPair(a, b);
        }
        catch
        {
            a.Dispose();
            b?.Dispose();
            throw;
        }
    }

    private sealed class ZephyrPair(ZephyrPeer a, ZephyrPeer b) : IDisposable
    {
        private readonly int _meeting = ZephyrLink.Meeting(a.Zid, b.Zid);

        /// <summary>The instances that carry the pair: each side's (by its zid's tag) and the meeting one (spec/zephyr.md §8.2).</summary>
        public int[] Instances => [ZephyrLink.Tag(a.Zid), ZephyrLink.Tag(b.Zid), _meeting];

        /// <summary>Binds forwarded over the internal link for this pair.</summary>
        public int Forwards => (ZephyrLink.Tag(a.Zid) != _meeting ? 1 : 0) + (ZephyrLink.Tag(b.Zid) != _meeting ? 1 : 0);

        public Task<bool> StillRelaysAsync() => RoundTripAsync(a.SendAsync, b.ReadExactlyAsync, b.SendAsync, a.ReadExactlyAsync);

        public void Dispose()
        {
            a.Dispose();
            b.Dispose();
        }
    }

    // ---- spec/zephyr.md §8.4: the internal link is closed to strangers ----

    [Fact]
    public async Task The_internal_link_resets_strangers_bad_macs_stale_and_replayed_headers_with_nothing_written_and_keeps_serving()
    {
        string dir = Directory.CreateTempSubdirectory("pthost-zephyr-cluster-").FullName;
        var zephyrs = await ZephyrInstance.StartClusterAsync(2, dir);
        await using var _ = new Disposer(zephyrs);
        var one = zephyrs[0];
        byte[] secret = System.Text.Encoding.UTF8.GetBytes(File.ReadAllText(Path.Combine(dir, "link.key")).Trim());
        string peers = Path.Combine(dir, "peers.json");
        var asTwo = new ZephyrLink(2, secret, peers);
        // A pair meeting at instance 1: a real connection there (tag 1) and an origin tagged 2 with the same lowest bit
        // (equal lowest bits: the smaller zid's instance, 1, is the meeting instance).
        using var local = await ZephyrPeer.ConnectAsync(one.EndPoint);
        uint target = local.Zid, origin = (2u << ZephyrLink.TagShift) | 0x100 | (target & 1);
        Assert.Equal(1, ZephyrLink.Tag(target));
        Assert.Equal(1, ZephyrLink.Meeting(origin, target));

        async Task<bool> RefusedAsync(byte[] send, bool wait = false)
        {
            using var s = await ZephyrPeer.ConnectRawAsync(one.Link);
            if (send.Length > 0) await s.SendAsync(send, SocketFlags.None);
            var buffer = new byte[256];
            using var cts = new CancellationTokenSource(wait ? TimeSpan.FromSeconds(15) : TimeSpan.FromSeconds(3));
            try { return await s.ReceiveAsync(buffer, SocketFlags.None, cts.Token) == 0; } // closed, nothing written
            catch (SocketException) { return true; } // reset, nothing written
            catch (OperationCanceledException) { return false; } // held open: accepted
        }

        Assert.True(await RefusedAsync("GET / HTTP/1.1\r\nHost: x\r\n\r\n"u8.ToArray().Concat(new byte[72]).ToArray()));
        Assert.True(await RefusedAsync(RandomNumberGenerator.GetBytes(ZephyrLink.HeaderLength)));
        Assert.True(await RefusedAsync(new ZephyrLink(2, RandomNumberGenerator.GetBytes(32), peers).BuildHeader(origin, target))); // another secret
        byte[] stale = asTwo.BuildHeader(origin, target);
        System.Buffers.Binary.BinaryPrimitives.WriteInt64BigEndian(stale.AsSpan(8), DateTimeOffset.UtcNow.AddMinutes(-2).ToUnixTimeMilliseconds());
        HMACSHA256.HashData(secret, stale.AsSpan(0, 40), stale.AsSpan(40));
        Assert.True(await RefusedAsync(stale));
        Assert.True(await RefusedAsync(asTwo.BuildHeader(target, origin))); // a route that does not end here
        Assert.True(await RefusedAsync([], wait: true)); // silence: cut at the header timeout
        // A genuine header is taken (held, waiting for its peer); the same bytes again are a replay.
        byte[] genuine = asTwo.BuildHeader(origin, target);
        Assert.False(await RefusedAsync(genuine));
        Assert.True(await RefusedAsync(genuine));

        // A crowd of silent strangers: beyond 64 pending they are reset at once; none takes a zid; real pairs still bind.
        var crowd = new List<Socket>();
        try
        {
            for (int i = 0; i < 100; i++)
            {
                try { crowd.Add(await ZephyrPeer.ConnectRawAsync(one.Link)); }
                catch (SocketException) { } // reset over the limit before the connect was seen to complete
            }
            using var a = await ZephyrPeer.ConnectAsync(one.EndPoint);
            using var b = await ZephyrPeer.ConnectAsync(one.EndPoint);
            await a.BindAsync(b.Zid);
            await b.BindAsync(a.Zid);
            await a.SendAsync("still serving"u8.ToArray());
            Assert.Equal("still serving"u8.ToArray(), await b.ReadExactlyAsync(13));
        }
        finally
        {
            foreach (var s in crowd) s.Dispose();
        }

        using var http = new HttpClient();
        string metrics = await http.GetStringAsync($"http://{one.Metrics}/metrics");
        output.WriteLine(string.Join("\n", metrics.Split('\n').Where(l => l.StartsWith("pthost_zephyr_link_refused_total", StringComparison.Ordinal))));
        Assert.Contains("pthost_zephyr_link_refused_total{transport=\"zephyr\",reason=\"header\"} 2", metrics, StringComparison.Ordinal); // HTTP, random bytes
        Assert.Contains("reason=\"mac\"} 1", metrics, StringComparison.Ordinal); // another secret
        Assert.Contains("reason=\"timeout\"} 1", metrics, StringComparison.Ordinal);
        Assert.Contains("reason=\"clock\"} 1", metrics, StringComparison.Ordinal);
        Assert.Contains("reason=\"route\"} 1", metrics, StringComparison.Ordinal);
        Assert.Contains("reason=\"replay\"} 1", metrics, StringComparison.Ordinal);
        Assert.Matches("reason=\"limit\"} ([3-9][0-9]|[1-9][0-9][0-9])", metrics);
    }

    // ---- helpers ----

    /// <summary>32 random bytes there and 32 back, checked; false when the relay is gone (end of stream or reset).</summary>
    private static async Task<bool> RoundTripAsync(Func<byte[], Task> sendThere, Func<int, Task<byte[]>> readThere, Func<byte[], Task> sendBack, Func<int, Task<byte[]>> readBack)
    {
        try
        {
            byte[] there = RandomNumberGenerator.GetBytes(32), back = RandomNumberGenerator.GetBytes(32);
            await sendThere(there);
            Assert.Equal(there, await readThere(32));
            await sendBack(back);
            Assert.Equal(back, await readBack(32));
            return true;
        }
        catch (Exception e) when (e is IOException or SocketException or EndOfStreamException)
        {
            return false;
        }
    }

    /// <summary>Runs <paramref name="count"/> jobs on <see cref="Workers"/> workers; the first failure fails the test with its index.</summary>
    private static async Task RunAsync(int count, Func<int, Task> job)
    {
        int next = -1;
        var workers = Enumerable.Range(0, Workers).Select(_ => Task.Run(async () =>
        {
            int i;
            while ((i = Interlocked.Increment(ref next)) < count)
            {
                try { await job(i); }
                catch (Exception e) when (e is not OutOfMemoryException)
                {
                    throw new Xunit.Sdk.XunitException($"job {i} of {count} failed (misrouted or hung): {e}");
                }
            }
        }));
        await Task.WhenAll(workers);
    }

    private sealed class Disposer(IEnumerable<IAsyncDisposable> items) : IAsyncDisposable
    {
        public async ValueTask DisposeAsync()
        {
            foreach (var i in items) await i.DisposeAsync();
        }
    }
}
