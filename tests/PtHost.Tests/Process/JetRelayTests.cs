using System.Net;
using System.Net.Sockets;
using System.Net.WebSockets;
using System.Security.Cryptography;
using System.Text;
using Newtonsoft.Json.Linq;
using PtHost.Transports.Jet;

namespace PtHost.Tests.Process;

/// <summary>
/// The real <c>pthost relay jet</c> process (spec/jet.md §5–6): its command line, every REST
/// endpoint, the binary protocol v1 and v2 over TCP and TLS, each malformed request, WebSocket.
/// </summary>
[Collection("process")]
public class JetRelayTests
{
    // ---- §5.1 the command ----

    [Fact]
    public async Task Prints_one_LISTEN_line_with_every_listener_and_exits_0_on_SIGTERM()
    {
        await using var relay = await JetRelayProcess.StartAsync();
        Assert.NotNull(relay.Tcp);
        Assert.NotNull(relay.Tls);
        Assert.NotNull(relay.Wss);
        Assert.Equal(IPAddress.Loopback, relay.Http.Address);
        relay.Process.Signal(15);
        Assert.Equal(0, await relay.Process.WaitForExitAsync());
        Assert.Single(relay.Process.StdoutLines);
    }

    [Theory]
    [InlineData("--listen", "nowhere")]
    [InlineData("--loglevel", "loud")]
    [InlineData("--colour", "blue")]
    [InlineData("--listen")]
    public async Task Bad_arguments_exit_64(params string[] args)
    {
        await using var p = PtProcess.StartPthost(["relay", "jet", .. args]);
        Assert.Equal(64, await p.WaitForExitAsync());
        Assert.Empty(p.StdoutLines);
    }

    [Theory]
    [InlineData("{\"policy\":\"some\"}")]
    [InlineData("{\"tcp\":\"localhost:1\"}")]
    [InlineData("{\"unknown\":1}")]
    [InlineData("{\"apiKey\":\"short\"}")]
    [InlineData("{\"external\":{\"udp\":\"h:1\"}}")]
    [InlineData("not json")]
    public async Task A_bad_configuration_file_exits_78_naming_the_problem(string json)
    {
        string file = Path.Combine(Directory.CreateTempSubdirectory("pthost-jet-").FullName, "relay.json");
        await File.WriteAllTextAsync(file, json);
        await using var p = PtProcess.StartPthost("relay", "jet", "--listen", "127.0.0.1:0", "--config", file);
        Assert.Equal(78, await p.WaitForExitAsync());
        Assert.Contains("relay.json", p.Stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task An_address_that_cannot_be_bound_exits_69()
    {
        using var taken = new TcpListener(IPAddress.Loopback, 0);
        taken.Start();
        await using var p = PtProcess.StartPthost("relay", "jet", "--listen", taken.LocalEndpoint.ToString()!);
        Assert.Equal(69, await p.WaitForExitAsync());
        Assert.Empty(p.StdoutLines);
    }

    [Fact]
    public async Task The_tls_and_wss_listeners_use_the_configured_certificate()
    {
        using var cert = Net.Tls.PinnedTls.Generate("relay.example.net");
        string dir = Directory.CreateTempSubdirectory("pthost-jet-cert-").FullName;
        await File.WriteAllTextAsync(Path.Combine(dir, "relay.pem"), Net.Tls.PinnedTls.CertificatePem(cert));
        await File.WriteAllTextAsync(Path.Combine(dir, "relay.key"), Net.Tls.PinnedTls.KeyPem(cert));
        if (!OperatingSystem.IsWindows()) File.SetUnixFileMode(Path.Combine(dir, "relay.key"), UnixFileMode.UserRead | UnixFileMode.UserWrite); // spec/ipc.md §3.7: key files are private
        string config = Path.Combine(dir, "relay.json");
        await File.WriteAllTextAsync(config, """{"listen": "127.0.0.1:0", "certificateFile": "relay.pem", "keyFile": "relay.key"}""");
        await using var p = PtProcess.StartPthost("relay", "jet", "--config", config);
        string line = await p.ReadLineAsync();
        var tls = IPEndPoint.Parse(line.Split(' ').Single(f => f.StartsWith("tls=", StringComparison.Ordinal))[4..]);
        var wss = IPEndPoint.Parse(line.Split(' ').Single(f => f.StartsWith("wss=", StringComparison.Ordinal))[4..]);
        foreach (var ep in new[] { tls, wss })
        {
            using var client = new TcpClient();
            await client.ConnectAsync(ep);
            byte[]? seen = null;
            await using var ssl = new System.Net.Security.SslStream(client.GetStream(), false, (_, c, _, _) => { seen = c?.GetRawCertData(); return true; });
            await ssl.AuthenticateAsClientAsync("relay.example.net");
            Assert.Equal(cert.RawData, seen);
        }
    }

    // ---- §5.2 REST ----

    [Fact]
    public async Task Association_create_get_delete_and_their_errors()
    {
        await using var relay = await JetRelayProcess.StartAsync(new JObject { ["instance"] = "relay-a" });
        var aid = Guid.NewGuid();
        var created = await relay.Rest.PostAsync($"/jet/association/{aid}", null);
        Assert.Equal(HttpStatusCode.OK, created.StatusCode);
        Assert.Equal("relay-a", created.Headers.GetValues("Jet-Instance").Single());
        Assert.Equal(HttpStatusCode.BadRequest, (await relay.Rest.PostAsync($"/jet/association/{aid}", null)).StatusCode); // exists
        Assert.Equal(HttpStatusCode.BadRequest, (await relay.Rest.PostAsync("/jet/association/not-a-uuid", null)).StatusCode);
        Assert.Equal(HttpStatusCode.BadRequest, (await relay.Rest.GetAsync("/jet/association/12345")).StatusCode);

        var got = JObject.Parse(await (await relay.Rest.GetAsync($"/jet/association/{aid}")).EnsureSuccessStatusCode().Content.ReadAsStringAsync());
        Assert.Equal(aid.ToString("D"), (string?)got["id"]);
        Assert.Empty((JArray)got["candidates"]!);

        Assert.Equal(HttpStatusCode.OK, (await relay.Rest.DeleteAsync($"/jet/association/{aid}")).StatusCode);
        Assert.Equal(HttpStatusCode.NotFound, (await relay.Rest.GetAsync($"/jet/association/{aid}")).StatusCode);
        Assert.Equal(HttpStatusCode.NotFound, (await relay.Rest.DeleteAsync($"/jet/association/{aid}")).StatusCode);
        Assert.Equal(HttpStatusCode.MethodNotAllowed, (await relay.Rest.PutAsync($"/jet/association/{aid}", null)).StatusCode);
        Assert.Equal(HttpStatusCode.NotFound, (await relay.Rest.GetAsync("/jet/elsewhere")).StatusCode);
    }

    [Fact]
    public async Task Gather_returns_one_candidate_per_kind_with_unique_ids_and_working_urls()
    {
        await using var relay = await JetRelayProcess.StartAsync();
        var (aid, candidates) = await relay.CreateAndGatherAsync();
        Assert.Equal(["tcp", "tls", "ws", "wss"], candidates.Keys.Order());
        Assert.Equal(4, candidates.Values.Select(c => c.Id).Distinct().Count());
        Assert.Equal(relay.Tcp!.Port, candidates["tcp"].Url.Port);
        Assert.Equal(relay.Http.Port, candidates["ws"].Url.Port);
        // Gathering again gives the same list; an unknown or malformed id is refused.
        var again = JObject.Parse(await (await relay.Rest.PostAsync($"/jet/gather/{aid}", null)).Content.ReadAsStringAsync());
        Assert.Equal(candidates.Values.Select(c => c.Id.ToString("D")).Order(), ((JArray)again["candidates"]!).Select(c => (string)c["id"]!).Order());
        Assert.Equal(HttpStatusCode.NotFound, (await relay.Rest.PostAsync($"/jet/gather/{Guid.NewGuid()}", null)).StatusCode);
        Assert.Equal(HttpStatusCode.BadRequest, (await relay.Rest.PostAsync("/jet/gather/xyz", null)).StatusCode);
        Assert.Equal(HttpStatusCode.MethodNotAllowed, (await relay.Rest.GetAsync($"/jet/gather/{aid}")).StatusCode);
    }

    [Fact]
    public async Task External_names_and_ports_go_into_the_candidate_urls()
    {
        await using var relay = await JetRelayProcess.StartAsync(new JObject
        {
            ["externalHost"] = "relay.example.net",
            ["external"] = new JObject { ["wss"] = "edge.example.net:443" },
            ["tls"] = false,
        });
        var (_, candidates) = await relay.CreateAndGatherAsync();
        Assert.Equal(["tcp", "ws", "wss"], candidates.Keys.Order());
        Assert.Equal($"tcp://relay.example.net:{relay.Tcp!.Port}", candidates["tcp"].Url.ToString().TrimEnd('/'));
        Assert.Equal("wss://edge.example.net", candidates["wss"].Url.ToString().TrimEnd('/'));
    }

    [Fact]
    public async Task With_an_API_key_every_REST_endpoint_needs_the_bearer_key()
    {
        const string Key = "0123456789abcdef-secret";
        await using var relay = await JetRelayProcess.StartAsync(new JObject { ["apiKey"] = Key });
        using var anonymous = new HttpClient { BaseAddress = relay.Rest.BaseAddress };
        var aid = Guid.NewGuid();
        var refused = await anonymous.PostAsync($"/jet/association/{aid}", null);
        Assert.Equal(HttpStatusCode.Unauthorized, refused.StatusCode);
        Assert.Equal("Bearer", refused.Headers.WwwAuthenticate.Single().Scheme);
        anonymous.DefaultRequestHeaders.Authorization = new("Bearer", Key + "x");
        Assert.Equal(HttpStatusCode.Unauthorized, (await anonymous.PostAsync($"/jet/association/{aid}", null)).StatusCode);
        Assert.Equal(HttpStatusCode.Unauthorized, (await anonymous.PostAsync($"/jet/gather/{aid}", null)).StatusCode);
        Assert.Equal(HttpStatusCode.Unauthorized, (await anonymous.GetAsync($"/jet/association/{aid}")).StatusCode);
        Assert.Equal(HttpStatusCode.Unauthorized, (await anonymous.DeleteAsync($"/jet/association/{aid}")).StatusCode);

        await using var keyed = await JetRelayProcess.StartAsync(new JObject { ["apiKey"] = Key }, apiKey: Key);
        var (aid2, candidates) = await keyed.CreateAndGatherAsync();
        Assert.Equal(4, candidates.Count);
        Assert.Equal(HttpStatusCode.OK, (await keyed.Rest.DeleteAsync($"/jet/association/{aid2}")).StatusCode);
    }

    [Fact]
    public async Task Instances_share_nothing_each_candidate_names_the_instance_that_issued_it()
    {
        await using var a = await JetRelayProcess.StartAsync(new JObject { ["instance"] = "relay-a" });
        await using var b = await JetRelayProcess.StartAsync(new JObject { ["instance"] = "relay-b" });
        var (aid, candidates) = await a.CreateAndGatherAsync();
        Assert.Equal(a.Tcp!.Port, candidates["tcp"].Url.Port);
        Assert.Equal(HttpStatusCode.NotFound, (await b.Rest.GetAsync($"/jet/association/{aid}")).StatusCode);
        // Accepting A's candidate at B fails: the association lives in A only.
        await using var wrong = await JetPeer.ConnectAsync(b.Tcp!);
        await wrong.SendRequestAsync(JetWire.BuildRequest(JetMethod.Accept, aid, candidates["tcp"].Id, candidates["tcp"].Url.Authority));
        var refused = await wrong.ReadResponseAsync();
        Assert.Equal(400, refused.Status);
        Assert.Equal("relay-b", refused.Header("Jet-Instance"));
        await AssertPairsAsync(a, aid, candidates["tcp"].Id, candidates["tcp"].Url.Authority);
    }

    // ---- §5.4 binary protocol v2 ----

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task V2_accept_and_connect_relay_bytes_both_ways_including_bytes_sent_with_the_request(bool tls)
    {
        await using var relay = await JetRelayProcess.StartAsync();
        var (aid, candidates) = await relay.CreateAndGatherAsync();
        var (cid, url) = candidates[tls ? "tls" : "tcp"];
        var ep = tls ? relay.Tls! : relay.Tcp!;
        await using var acceptor = await JetPeer.ConnectAsync(ep, tls);
        await acceptor.AcceptAsync(aid, cid, url.Authority, "early-from-acceptor"u8.ToArray());
        await relay.WaitForCandidateStateAsync(aid, cid, "accepted");
        await using var connector = await JetPeer.ConnectAsync(ep, tls);
        await connector.SendRequestAsync(JetWire.BuildRequest(JetMethod.Connect, aid, cid, url.Authority), "early-from-connector"u8.ToArray());
        var response = await connector.ReadResponseAsync();
        Assert.Equal(200, response.Status);
        Assert.Equal(cid.ToString("D"), response.Header("Jet-Candidate"));
        Assert.Equal("early-from-acceptor", JetWebSockets.Text(await connector.ReadExactlyAsync(19)));
        Assert.Equal("early-from-connector", JetWebSockets.Text(await acceptor.ReadExactlyAsync(20)));

        var big = RandomNumberGenerator.GetBytes(4 * 1024 * 1024);
        var send = connector.SendAsync(big);
        Assert.Equal(SHA256.HashData(big), SHA256.HashData(await acceptor.ReadExactlyAsync(big.Length)));
        await send;
        // Half-close: the connector's FIN reaches the acceptor, which still answers.
        connector.ShutdownSend();
        Assert.True(await acceptor.IsClosedAsync());
        await acceptor.SendAsync("after-fin"u8.ToArray());
        Assert.Equal("after-fin", JetWebSockets.Text(await connector.ReadExactlyAsync(9)));
        acceptor.ShutdownSend();
        Assert.True(await connector.IsClosedAsync());

        // §5.5: the finished session removed its candidate.
        await Eventually.TrueAsync(async () => !(await CandidateIdsAsync(relay, aid)).Contains(cid), "the finished session's candidate to go");
    }

    [Fact]
    public async Task Test_requests_answer_200_for_a_known_candidate_and_404_otherwise_then_close()
    {
        await using var relay = await JetRelayProcess.StartAsync();
        var (aid, candidates) = await relay.CreateAndGatherAsync();
        var (cid, url) = candidates["tcp"];
        await using (var p = await JetPeer.ConnectAsync(relay.Tcp!))
        {
            await p.SendRequestAsync(JetWire.BuildRequest(JetMethod.Test, aid, cid, url.Authority));
            Assert.Equal(200, (await p.ReadResponseAsync()).Status);
            Assert.True(await p.IsClosedAsync());
        }
        await using (var p = await JetPeer.ConnectAsync(relay.Tcp!))
        {
            await p.SendRequestAsync(JetWire.BuildRequest(JetMethod.Test, aid, Guid.NewGuid(), url.Authority));
            Assert.Equal(404, (await p.ReadResponseAsync()).Status);
            Assert.True(await p.IsClosedAsync());
        }
    }

    // ---- §3.3 v1 ----

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task V1_accept_gets_a_new_association_that_a_v1_connect_joins(bool tls)
    {
        await using var relay = await JetRelayProcess.StartAsync(new JObject { ["instance"] = "relay-v1" });
        var ep = tls ? relay.Tls! : relay.Tcp!;
        await using var acceptor = await JetPeer.ConnectAsync(ep, tls);
        await acceptor.SendRequestAsync(JetWire.BuildV1Accept(ep.ToString()));
        var accepted = await acceptor.ReadResponseAsync();
        Assert.Equal(200, accepted.Status);
        Assert.Equal("1", accepted.Header("Jet-Version"));
        Assert.Equal("relay-v1", accepted.Header("Jet-Instance"));
        Assert.Equal("300", accepted.Header("Jet-Timeout"));
        var aid = Guid.Parse(accepted.Header("Jet-Association")!);

        await using var connector = await JetPeer.ConnectAsync(ep, tls);
        await connector.SendRequestAsync(JetWire.BuildV1Connect(ep.ToString(), aid));
        Assert.Equal(200, (await connector.ReadResponseAsync()).Status);
        await connector.SendAsync("v1 bytes"u8.ToArray());
        Assert.Equal("v1 bytes", JetWebSockets.Text(await acceptor.ReadExactlyAsync(8)));
        await acceptor.SendAsync("back"u8.ToArray());
        Assert.Equal("back", JetWebSockets.Text(await connector.ReadExactlyAsync(4)));

        // The association was single-use: a second v1 connect finds nothing.
        await using var late = await JetPeer.ConnectAsync(ep, tls);
        await late.SendRequestAsync(JetWire.BuildV1Connect(ep.ToString(), aid));
        Assert.Equal(400, (await late.ReadResponseAsync()).Status); // connected already
    }

    // ---- §5.6 every error: its status, a close, and the relay keeps serving ----

    public static TheoryData<string, int> Malformed => new()
    {
        { "size-below-8", 400 },
        { "size-beyond-data", 400 },
        { "bad-signature", 400 },
        { "not-get", 405 },
        { "17-headers", 431 },
        { "no-jet-version", 400 },
        { "no-host", 400 },
        { "accept-unknown-association", 400 },
        { "accept-unknown-candidate", 404 },
        { "accept-wrong-kind", 400 },
        { "connect-unknown-association", 404 },
        { "connect-unknown-candidate", 404 },
        { "connect-not-accepted", 400 },
        { "unknown-path", 404 },
    };

    [Theory]
    [MemberData(nameof(Malformed))]
    public async Task Each_bad_request_gets_its_status_and_a_close_and_the_relay_keeps_serving(string bad, int status)
    {
        await using var relay = await JetRelayProcess.StartAsync();
        var (aid, candidates) = await relay.CreateAndGatherAsync();
        var (cid, url) = candidates["tcp"];
        string host = url.Authority;
        await using (var p = await JetPeer.ConnectAsync(relay.Tcp!))
        {
            switch (bad)
            {
                case "size-below-8": await p.SendAsync(0x4A, 0x45, 0x54, 0x00, 0x00, 0x05, 0x00, 0x73); break;
                case "size-beyond-data":
                    {
                        byte[] packet = JetWire.BuildPacket(JetWire.BuildRequest(JetMethod.Accept, aid, cid, host));
                        packet[5] += 50; // claims 50 bytes more than are sent
                        await p.SendAsync(packet);
                        p.Socket.Shutdown(SocketShutdown.Send);
                        break;
                    }
                case "bad-signature": await p.SendAsync("GET / HTTP/1.1\r\n\r\n"u8.ToArray()); break;
                case "not-get": await p.SendRequestAsync($"POST /jet/accept/{aid}/{cid} HTTP/1.1\r\nHost: {host}\r\nJet-Version: 2\r\n\r\n"); break;
                case "17-headers":
                    await p.SendRequestAsync($"GET /jet/accept/{aid}/{cid} HTTP/1.1\r\nHost: {host}\r\nJet-Version: 2\r\n"
                        + string.Concat(Enumerable.Range(0, 15).Select(i => $"X-{i}: v\r\n")) + "\r\n");
                    break;
                case "no-jet-version": await p.SendRequestAsync($"GET /jet/accept/{aid}/{cid} HTTP/1.1\r\nHost: {host}\r\n\r\n"); break;
                case "no-host": await p.SendRequestAsync($"GET /jet/accept/{aid}/{cid} HTTP/1.1\r\nJet-Version: 2\r\n\r\n"); break;
                case "accept-unknown-association": await p.SendRequestAsync(JetWire.BuildRequest(JetMethod.Accept, Guid.NewGuid(), cid, host)); break;
                case "accept-unknown-candidate": await p.SendRequestAsync(JetWire.BuildRequest(JetMethod.Accept, aid, Guid.NewGuid(), host)); break;
                case "accept-wrong-kind": await p.SendRequestAsync(JetWire.BuildRequest(JetMethod.Accept, aid, candidates["ws"].Id, host)); break;
                case "connect-unknown-association": await p.SendRequestAsync(JetWire.BuildRequest(JetMethod.Connect, Guid.NewGuid(), cid, host)); break;
                case "connect-unknown-candidate": await p.SendRequestAsync(JetWire.BuildRequest(JetMethod.Connect, aid, Guid.NewGuid(), host)); break;
                case "connect-not-accepted": await p.SendRequestAsync(JetWire.BuildRequest(JetMethod.Connect, aid, cid, host)); break;
                case "unknown-path": await p.SendRequestAsync($"GET /index.html HTTP/1.1\r\nHost: {host}\r\nJet-Version: 2\r\n\r\n"); break;
            }
            Assert.Equal(status, (await p.ReadResponseAsync()).Status);
            Assert.True(await p.IsClosedAsync());
        }
        // Still serving: the same candidate pairs normally afterwards.
        await AssertPairsAsync(relay, aid, cid, host);
    }

    [Fact]
    public async Task A_client_that_never_finishes_its_packet_gets_408_after_the_handshake_timeout()
    {
        await using var relay = await JetRelayProcess.StartAsync(new JObject { ["handshakeTimeout"] = 1 });
        await using var slow = await JetPeer.ConnectAsync(relay.Tcp!);
        await slow.SendAsync(0x4A, 0x45, 0x54);
        Assert.Equal(408, (await slow.ReadResponseAsync()).Status);
        Assert.True(await slow.IsClosedAsync());
    }

    [Fact]
    public async Task Random_bytes_on_every_listener_never_stop_the_relay()
    {
        await using var relay = await JetRelayProcess.StartAsync(new JObject { ["handshakeTimeout"] = 2 });
        var rng = new Random(9);
        var endpoints = new[] { relay.Tcp!, relay.Tls!, relay.Http, relay.Wss! };
        var attacks = Enumerable.Range(0, 80).Select(async i =>
        {
            byte[] junk = new byte[rng.Next(1, 3000)];
            lock (rng) rng.NextBytes(junk);
            if (i % 4 == 0) JetWire.Signature.CopyTo(junk); // a valid signature, then garbage
            using var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            await s.ConnectAsync(endpoints[i % endpoints.Length]);
            try
            {
                await s.SendAsync(junk);
                if (i % 3 == 0) s.Shutdown(SocketShutdown.Send);
                using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(20));
                var buffer = new byte[4096];
                while (await s.ReceiveAsync(buffer, SocketFlags.None, cts.Token) > 0) { }
            }
            catch (SocketException) { } // a reset is an acceptable end
        });
        await Task.WhenAll(attacks);
        Assert.False(relay.Process.StdoutLines.Count > 1);
        var (aid, candidates) = await relay.CreateAndGatherAsync();
        await AssertPairsAsync(relay, aid, candidates["tcp"].Id, candidates["tcp"].Url.Authority);
    }

    [Theory]
    [InlineData("maxConnections")]
    [InlineData("maxPerSource")]
    public async Task Connections_over_a_limit_are_closed_at_once_and_the_relay_recovers(string limit)
    {
        await using var relay = await JetRelayProcess.StartAsync(new JObject { [limit] = 2 });
        var (aid, candidates) = await relay.CreateAndGatherAsync();
        var (cid, url) = candidates["tcp"];
        await using var a = await JetPeer.ConnectAsync(relay.Tcp!);
        await using var b = await JetPeer.ConnectAsync(relay.Tcp!);
        await a.SendAsync(0x4A); // both held, waiting for the rest of a packet
        await b.SendAsync(0x4A);
        await using (var over = await JetPeer.ConnectAsync(relay.Tcp!))
            Assert.True(await over.IsClosedAsync());
        Assert.Equal(503, await JetWebSockets.RefusedStatusAsync(candidates["ws"].Url, JetMethod.Accept, aid, candidates["ws"].Id));
        await a.DisposeAsync();
        await b.DisposeAsync();
        // Once they are gone, pairs are served again.
        await Eventually.TrueAsync(async () =>
        {
            await using var probe = await JetPeer.ConnectAsync(relay.Tcp!);
            await probe.SendRequestAsync(JetWire.BuildRequest(JetMethod.Test, aid, cid, url.Authority));
            try { return (await probe.ReadResponseAsync()).Status == 200; }
            catch (Exception e) when (e is IOException or EndOfStreamException) { return false; }
        }, "a test request answered 200 once the held connections are gone");
        // And whole pairs again. A pair takes both slots of maxPerSource = 2, and the relay releases a
        // closed probe's slot a moment after the probe sees its close: retry with a fresh association.
        await Eventually.TrueAsync(async () =>
        {
            var (freshAid, fresh) = await relay.CreateAndGatherAsync();
            var (freshCid, freshUrl) = fresh["tcp"];
            try
            {
                await AssertPairsAsync(relay, freshAid, freshCid, freshUrl.Authority).WaitAsync(TimeSpan.FromSeconds(5));
                return true;
            }
            catch (Exception e) when (e is TimeoutException or IOException or EndOfStreamException or System.Net.Sockets.SocketException or Xunit.Sdk.XunitException)
            {
                return false;
            }
        }, "a pair through the relay once the held connections are gone");
    }

    // ---- §5.5 policy ----

    [Fact]
    public async Task Unused_associations_expire_after_the_association_timeout()
    {
        await using var relay = await JetRelayProcess.StartAsync(new JObject { ["associationTimeout"] = 1 });
        var (aid, _) = await relay.CreateAndGatherAsync();
        Assert.Equal(HttpStatusCode.OK, (await relay.Rest.GetAsync($"/jet/association/{aid}")).StatusCode);
        await Eventually.TrueAsync(async () => (await relay.Rest.GetAsync($"/jet/association/{aid}")).StatusCode == HttpStatusCode.NotFound, "the unused association to expire");
    }

    [Fact]
    public async Task With_policy_any_an_accept_may_name_an_association_nobody_created()
    {
        await using var relay = await JetRelayProcess.StartAsync(new JObject { ["policy"] = "any" });
        await AssertPairsAsync(relay, Guid.NewGuid(), Guid.NewGuid(), relay.Tcp!.ToString());
    }

    [Fact]
    public async Task A_candidate_takes_one_acceptor_a_second_accept_is_refused()
    {
        await using var relay = await JetRelayProcess.StartAsync();
        var (aid, candidates) = await relay.CreateAndGatherAsync();
        var (cid, url) = candidates["tcp"];
        await using var first = await JetPeer.ConnectAsync(relay.Tcp!);
        await first.SendRequestAsync(JetWire.BuildRequest(JetMethod.Accept, aid, cid, url.Authority));
        await relay.WaitForCandidateStateAsync(aid, cid, "accepted");
        await using var second = await JetPeer.ConnectAsync(relay.Tcp!);
        await second.SendRequestAsync(JetWire.BuildRequest(JetMethod.Accept, aid, cid, url.Authority));
        Assert.Equal(400, (await second.ReadResponseAsync()).Status);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task An_acceptor_that_hangs_up_frees_its_candidate_for_a_new_accept(bool tls)
    {
        await using var relay = await JetRelayProcess.StartAsync();
        var (aid, candidates) = await relay.CreateAndGatherAsync();
        var (cid, url) = candidates[tls ? "tls" : "tcp"];
        var ep = tls ? relay.Tls! : relay.Tcp!;
        await using (var first = await JetPeer.ConnectAsync(ep, tls))
        {
            await first.SendRequestAsync(JetWire.BuildRequest(JetMethod.Accept, aid, cid, url.Authority));
            await relay.WaitForCandidateStateAsync(aid, cid, "accepted");
        }
        await relay.WaitForCandidateStateAsync(aid, cid, "gathered");
        // Accepted again, by someone who stays: it pairs.
        await using var acceptor = await JetPeer.ConnectAsync(ep, tls);
        await acceptor.AcceptAsync(aid, cid, url.Authority);
        await relay.WaitForCandidateStateAsync(aid, cid, "accepted");
        await using var connector = await JetPeer.ConnectAsync(ep, tls);
        await connector.SendRequestAsync(JetWire.BuildRequest(JetMethod.Connect, aid, cid, url.Authority), "ping"u8.ToArray());
        Assert.Equal(200, (await connector.ReadResponseAsync()).Status);
        Assert.Equal("ping", JetWebSockets.Text(await acceptor.ReadExactlyAsync(4)));
    }

    // ---- §6 WebSocket ----

    [Fact]
    public async Task A_WebSocket_acceptor_that_goes_away_frees_its_candidate()
    {
        await using var relay = await JetRelayProcess.StartAsync();
        var (aid, candidates) = await relay.CreateAndGatherAsync();
        var (cid, url) = candidates["ws"];
        var gone = await JetWebSockets.ConnectAsync(url, JetMethod.Accept, aid, cid);
        await relay.WaitForCandidateStateAsync(aid, cid, "accepted");
        gone.Abort(); // the TCP connection closes without a Close frame
        gone.Dispose();
        await relay.WaitForCandidateStateAsync(aid, cid, "gathered");
        using var acceptor = await JetWebSockets.ConnectAsync(url, JetMethod.Accept, aid, cid);
        await relay.WaitForCandidateStateAsync(aid, cid, "accepted");
        using var connector = await JetWebSockets.ConnectAsync(url, JetMethod.Connect, aid, cid);
        await JetWebSockets.SendAsync(connector, "again"u8.ToArray());
        Assert.Equal("again", JetWebSockets.Text(await JetWebSockets.ReceiveAsync(acceptor, 5)));
    }

    [Theory]
    [InlineData("ws")]
    [InlineData("wss")]
    public async Task WebSocket_accept_and_connect_relay_binary_messages_both_ways(string scheme)
    {
        await using var relay = await JetRelayProcess.StartAsync();
        var (aid, candidates) = await relay.CreateAndGatherAsync();
        var (cid, url) = candidates[scheme];
        using var acceptor = await JetWebSockets.ConnectAsync(url, JetMethod.Accept, aid, cid);
        await relay.WaitForCandidateStateAsync(aid, cid, "accepted");
        using var connector = await JetWebSockets.ConnectAsync(url, JetMethod.Connect, aid, cid);
        await JetWebSockets.SendAsync(connector, "hello acceptor"u8.ToArray());
        Assert.Equal("hello acceptor", JetWebSockets.Text(await JetWebSockets.ReceiveAsync(acceptor, 14)));
        var big = RandomNumberGenerator.GetBytes(1024 * 1024);
        var send = JetWebSockets.SendAsync(acceptor, big);
        Assert.Equal(SHA256.HashData(big), SHA256.HashData(await JetWebSockets.ReceiveAsync(connector, big.Length)));
        await send;
        // A Close is passed on as the end of that direction.
        using var cts = new CancellationTokenSource(JetPeer.Wait);
        await connector.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, "", cts.Token);
        var end = await acceptor.ReceiveAsync(new byte[16], cts.Token);
        Assert.Equal(WebSocketMessageType.Close, end.MessageType);
        await acceptor.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, "", cts.Token);
        Assert.Equal(WebSocketMessageType.Close, (await connector.ReceiveAsync(new byte[16], cts.Token)).MessageType);
    }

    [Fact]
    public async Task A_WebSocket_connector_reaches_a_TCP_acceptor()
    {
        await using var relay = await JetRelayProcess.StartAsync();
        var (aid, candidates) = await relay.CreateAndGatherAsync();
        var (cid, url) = candidates["tcp"];
        await using var acceptor = await JetPeer.ConnectAsync(relay.Tcp!);
        await acceptor.AcceptAsync(aid, cid, url.Authority);
        await relay.WaitForCandidateStateAsync(aid, cid, "accepted");
        using var connector = await JetWebSockets.ConnectAsync(candidates["ws"].Url, JetMethod.Connect, aid, cid);
        await JetWebSockets.SendAsync(connector, "mixed"u8.ToArray());
        Assert.Equal("mixed", JetWebSockets.Text(await acceptor.ReadExactlyAsync(5)));
        await acceptor.SendAsync("ok"u8.ToArray());
        Assert.Equal("ok", JetWebSockets.Text(await JetWebSockets.ReceiveAsync(connector, 2)));
    }

    [Fact]
    public async Task WebSocket_refusals_are_403_for_accept_400_for_connect_404_for_test()
    {
        await using var relay = await JetRelayProcess.StartAsync();
        var (aid, candidates) = await relay.CreateAndGatherAsync();
        var (cid, url) = candidates["ws"];
        Assert.Equal(403, await JetWebSockets.RefusedStatusAsync(url, JetMethod.Accept, Guid.NewGuid(), cid));
        Assert.Equal(403, await JetWebSockets.RefusedStatusAsync(url, JetMethod.Accept, aid, candidates["tcp"].Id)); // wrong kind
        Assert.Equal(400, await JetWebSockets.RefusedStatusAsync(url, JetMethod.Connect, aid, cid)); // not accepted yet
        Assert.Equal(400, await JetWebSockets.RefusedStatusAsync(url, JetMethod.Connect, Guid.NewGuid(), cid));
        Assert.Equal(HttpStatusCode.NotFound, (await relay.Rest.GetAsync($"/jet/test/{aid}/{Guid.NewGuid()}")).StatusCode);
        Assert.Equal(HttpStatusCode.OK, (await relay.Rest.GetAsync($"/jet/test/{aid}/{cid}")).StatusCode);
        // And the candidate still works.
        using var acceptor = await JetWebSockets.ConnectAsync(url, JetMethod.Accept, aid, cid);
        await relay.WaitForCandidateStateAsync(aid, cid, "accepted");
        using var connector = await JetWebSockets.ConnectAsync(url, JetMethod.Connect, aid, cid);
        await JetWebSockets.SendAsync(connector, "x"u8.ToArray());
        Assert.Equal("x", JetWebSockets.Text(await JetWebSockets.ReceiveAsync(acceptor, 1)));
    }

    // ---- the seed's v2 accept response (§4), as Devolutions' jetsocat reads it ----

    /// <summary>
    /// A client that behaves as jetsocat does (jetsocat/src/jet.rs): it writes the seed's v2 accept (Host "jetsocat",
    /// Connection: Keep-Alive, Jet-Version: 2, mask 0x73), does one read of at most 1,024 bytes and requires a JET packet
    /// holding a 200 with <c>Jet-Version: 2</c> (jet-proto's JetAcceptRsp); its connector does the same with the connect.
    /// Then the pair relays 1 MiB each way. The packets are built here from the seed's bytes, not with JetWire.
    /// </summary>
    [Fact]
    public async Task A_jetsocat_like_acceptor_gets_the_seeds_200_and_relays()
    {
        await using var relay = await JetRelayProcess.StartAsync(new JObject { ["instance"] = "relay-seed" });
        var (aid, candidates) = await relay.CreateAndGatherAsync();
        var (cid, _) = candidates["tcp"];

        static byte[] SeedPacket(string text)
        {
            byte[] payload = System.Text.Encoding.ASCII.GetBytes(text);
            byte[] packet = new byte[8 + payload.Length];
            "JET\0"u8.CopyTo(packet); // 4A 45 54 00
            packet[4] = (byte)(packet.Length >> 8);
            packet[5] = (byte)packet.Length;
            packet[6] = 0x00; // flags
            packet[7] = 0x73; // jet-proto's default mask
            for (int i = 0; i < payload.Length; i++) packet[8 + i] = (byte)(payload[i] ^ 0x73);
            return packet;
        }

        // jetsocat's read_jet_accept_response: one read, then the packet must be a 200 carrying Jet-Version 2.
        static async Task<Dictionary<string, string>> ReadOnceAsync(Socket s)
        {
            byte[] buffer = new byte[1024];
            using var cts = new CancellationTokenSource(JetPeer.Wait);
            int n = await s.ReceiveAsync(buffer, SocketFlags.None, cts.Token);
            Assert.True(n >= 8, $"read {n} bytes");
            Assert.Equal("JET\0"u8.ToArray(), buffer[..4]);
            int size = (buffer[4] << 8) | buffer[5];
            Assert.Equal(n, size); // nothing but the response in that read
            string text = System.Text.Encoding.ASCII.GetString([.. buffer[8..size].Select(b => (byte)(b ^ buffer[7]))]);
            string[] lines = text.Split("\r\n");
            Assert.StartsWith("HTTP/1.1 200 ", lines[0], StringComparison.Ordinal);
            return lines.Skip(1).Where(l => l.Contains(':', StringComparison.Ordinal))
                .ToDictionary(l => l[..l.IndexOf(':')], l => l[(l.IndexOf(':') + 1)..].Trim(), StringComparer.OrdinalIgnoreCase);
        }

        using var acceptor = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        await acceptor.ConnectAsync(relay.Tcp!);
        await acceptor.SendAsync(SeedPacket($"GET /jet/accept/{aid}/{cid} HTTP/1.1\r\nHost: jetsocat\r\nConnection: Keep-Alive\r\nJet-Version: 2\r\n\r\n"), SocketFlags.None);
        var accepted = await ReadOnceAsync(acceptor);
        Assert.Equal("2", accepted["Jet-Version"]);
        Assert.Equal("relay-seed", accepted["Jet-Instance"]);

        using var connector = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        await connector.ConnectAsync(relay.Tcp!);
        await connector.SendAsync(SeedPacket($"GET /jet/connect/{aid}/{cid} HTTP/1.1\r\nHost: jetsocat\r\nConnection: Keep-Alive\r\nJet-Version: 2\r\n\r\n"), SocketFlags.None);
        Assert.Equal("2", (await ReadOnceAsync(connector))["Jet-Version"]);

        await using var a = new NetworkStream(acceptor, ownsSocket: false);
        await using var c = new NetworkStream(connector, ownsSocket: false);
        byte[] there = RandomNumberGenerator.GetBytes(1 << 20), back = RandomNumberGenerator.GetBytes(1 << 20);
        var s1 = c.WriteAsync(there).AsTask();
        var s2 = a.WriteAsync(back).AsTask();
        byte[] gotThere = new byte[there.Length], gotBack = new byte[back.Length];
        using var wait = new CancellationTokenSource(JetPeer.Wait);
        await Task.WhenAll(a.ReadExactlyAsync(gotThere, wait.Token).AsTask(), c.ReadExactlyAsync(gotBack, wait.Token).AsTask(), s1, s2);
        Assert.Equal(SHA256.HashData(there), SHA256.HashData(gotThere));
        Assert.Equal(SHA256.HashData(back), SHA256.HashData(gotBack));
    }

    // ---- helpers ----

    private static async Task AssertPairsAsync(JetRelayProcess relay, Guid aid, Guid cid, string host)
    {
        await using var acceptor = await JetPeer.ConnectAsync(relay.Tcp!);
        await acceptor.AcceptAsync(aid, cid, host);
        await relay.WaitForCandidateStateAsync(aid, cid, "accepted");
        await using var connector = await JetPeer.ConnectAsync(relay.Tcp!);
        await connector.SendRequestAsync(JetWire.BuildRequest(JetMethod.Connect, aid, cid, host), "ping"u8.ToArray());
        Assert.Equal(200, (await connector.ReadResponseAsync()).Status);
        Assert.Equal("ping", JetWebSockets.Text(await acceptor.ReadExactlyAsync(4)));
        await acceptor.SendAsync("pong"u8.ToArray());
        Assert.Equal("pong", JetWebSockets.Text(await connector.ReadExactlyAsync(4)));
    }

    private static async Task<List<Guid>> CandidateIdsAsync(JetRelayProcess relay, Guid aid)
    {
        var r = await relay.Rest.GetAsync($"/jet/association/{aid}");
        if (!r.IsSuccessStatusCode) return [];
        return [.. ((JArray)JObject.Parse(await r.Content.ReadAsStringAsync())["candidates"]!).Select(c => Guid.Parse((string)c["id"]!))];
    }
}
