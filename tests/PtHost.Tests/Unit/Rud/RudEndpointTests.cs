using System.Net;
using System.Security.Cryptography;
using PtHost.Transports.Rud;
using Xunit.Abstractions;

namespace PtHost.Tests.Unit.Rud;

/// <summary>RUD endpoints on loopback (spec/rud.md §4–§9): handshakes, streams, bad packets, a lossy link.</summary>
public class RudEndpointTests(ITestOutputHelper output)
{
    private static readonly TimeSpan Generous = TimeSpan.FromSeconds(60);

    internal sealed class Pair : IAsyncDisposable
    {
        public required RudEndpoint Server;
        public required RudEndpoint Client;
        public byte[] ServerPublic => Server.StaticPublicKey!;
        public LossyUdpRelay? Relay;

        public static Pair Start(RudEndpointOptions? server = null, RudEndpointOptions? client = null, int? relaySeed = null)
        {
            var key = X25519.GeneratePrivateKey();
            server ??= new RudEndpointOptions();
            var s = RudEndpoint.Bind(new IPEndPoint(IPAddress.Loopback, 0), new RudEndpointOptions
            {
                StaticPrivateKey = key, Challenge = server.Challenge, AllowFirstContact = server.AllowFirstContact,
                TokenLifetime = server.TokenLifetime, RekeyInterval = server.RekeyInterval, HandshakeTimeout = server.HandshakeTimeout,
                PathMtuProbe = server.PathMtuProbe, CongestionControl = server.CongestionControl, AuthorizedKeys = server.AuthorizedKeys,
            });
            var c = RudEndpoint.Bind(new IPEndPoint(IPAddress.Loopback, 0), client ?? new RudEndpointOptions());
            var pair = new Pair { Server = s, Client = c };
            if (relaySeed is { } seed) pair.Relay = new LossyUdpRelay(s.LocalEndPoint, seed);
            return pair;
        }

        public IPEndPoint Target => Relay?.EndPoint ?? Server.LocalEndPoint;

        public async Task<(RudConnection Client, RudConnection Server)> ConnectAsync(byte[]? key)
        {
            using var cts = new CancellationTokenSource(Generous);
            var c = await Client.ConnectAsync(Target, key, cts.Token);
            var s = await Server.AcceptConnectionAsync(cts.Token);
            return (c, s);
        }

        public async ValueTask DisposeAsync()
        {
            await Client.DisposeAsync();
            await Server.DisposeAsync();
            if (Relay is not null) await Relay.DisposeAsync();
        }
    }

    /// <summary>Sends <paramref name="up"/> client→server and <paramref name="down"/> server→client on one stream at once; checks SHA-256 both ways.</summary>
    internal static async Task TransferBothWaysAsync(RudConnection client, RudConnection server, byte[] up, byte[] down, TimeSpan timeout, Func<long, Task>? onProgress = null)
    {
        using var cts = new CancellationTokenSource(timeout);
        var cs = client.OpenStream();
        LastStreams = [cs];
        // The server learns of the stream from its first frame.
        await cs.WriteAsync(up.AsMemory(0, 1), cts.Token);
        var ss = await server.AcceptStreamAsync(cts.Token);
        LastStreams = [cs, ss];
        var sendUp = Task.Run(async () =>
        {
            for (int at = 1; at < up.Length; at += 64 * 1024)
            {
                await cs.WriteAsync(up.AsMemory(at, Math.Min(64 * 1024, up.Length - at)), cts.Token);
                if (onProgress is not null) await onProgress(at);
            }
            cs.ShutdownWrite();
        });
        var sendDown = Task.Run(async () =>
        {
            for (int at = 0; at < down.Length; at += 64 * 1024)
                await ss.WriteAsync(down.AsMemory(at, Math.Min(64 * 1024, down.Length - at)), cts.Token);
            ss.ShutdownWrite();
        });
        var readUp = ReadAllAsync(ss, cts.Token);
        var readDown = ReadAllAsync(cs, cts.Token);
        await Task.WhenAll(sendUp, sendDown, readUp, readDown);
        Assert.Equal(SHA256.HashData(up), SHA256.HashData(await readUp));
        Assert.Equal(SHA256.HashData(down), SHA256.HashData(await readDown));
        await cs.DisposeAsync();
        await ss.DisposeAsync();
    }

    internal static RudStream[] LastStreams = [];

    internal static async Task<byte[]> ReadAllAsync(Stream s, CancellationToken ct)
    {
        var ms = new MemoryStream();
        var buffer = new byte[64 * 1024];
        int n;
        while ((n = await s.ReadAsync(buffer, ct)) > 0) ms.Write(buffer, 0, n);
        return ms.ToArray();
    }

    [Fact]
    public async Task Immediate_exchange_connects_in_one_round_trip_and_carries_bytes_both_ways()
    {
        await using var pair = Pair.Start();
        var (c, s) = await pair.ConnectAsync(pair.ServerPublic);
        Assert.Equal(ExchangeMode.Immediate, c.Mode);
        Assert.Equal(ExchangeMode.Immediate, s.Mode);
        Assert.Equal(0, pair.Server.Counters.DefersSent + pair.Server.Counters.ChallengesSent);
        await TransferBothWaysAsync(c, s, RandomNumberGenerator.GetBytes(1 << 20), RandomNumberGenerator.GetBytes(1 << 20), Generous);
        Assert.Equal(0, pair.Server.Counters.Dropped);
        Assert.Equal(0, pair.Client.Counters.Dropped);
    }

    [Fact]
    public async Task Deferred_exchange_answers_with_a_stateless_challenge_then_completes()
    {
        await using var pair = Pair.Start(new RudEndpointOptions { Challenge = ChallengePolicy.Always });
        var (c, s) = await pair.ConnectAsync(pair.ServerPublic);
        Assert.Equal(ExchangeMode.Deferred, c.Mode);
        Assert.Equal(ExchangeMode.Deferred, s.Mode);
        Assert.Equal(1, pair.Server.Counters.DefersSent);
        await TransferBothWaysAsync(c, s, RandomNumberGenerator.GetBytes(100_000), RandomNumberGenerator.GetBytes(100_000), Generous);
    }

    [Fact]
    public async Task First_contact_learns_the_server_key_from_the_challenge()
    {
        await using var pair = Pair.Start(new RudEndpointOptions { AllowFirstContact = true });
        var (c, s) = await pair.ConnectAsync(null);
        Assert.Equal(ExchangeMode.FirstContact, c.Mode);
        // One Challenge per Hello: on a loaded machine a Hello repeated after 500 ms (§4.5) draws another.
        Assert.InRange(pair.Server.Counters.ChallengesSent, 1, 3);
        await TransferBothWaysAsync(c, s, RandomNumberGenerator.GetBytes(100_000), RandomNumberGenerator.GetBytes(100_000), Generous);
    }

    [Fact]
    public async Task A_server_that_does_not_allow_first_contact_never_answers_a_hello()
    {
        await using var pair = Pair.Start(client: new RudEndpointOptions { HandshakeTimeout = TimeSpan.FromSeconds(2) });
        await Assert.ThrowsAsync<TimeoutException>(() => pair.Client.ConnectAsync(pair.Server.LocalEndPoint, null, CancellationToken.None));
        Assert.True(pair.Server.Counters.UnknownId >= 1); // without first contact the server does not try its well-known key (§3.3)
        Assert.Equal(0, pair.Server.ConnectionCount);
    }

    [Fact]
    public async Task A_client_with_the_wrong_server_key_gets_no_answer_and_the_server_counts_the_failure()
    {
        await using var pair = Pair.Start(client: new RudEndpointOptions { HandshakeTimeout = TimeSpan.FromSeconds(2) });
        var wrong = new byte[32];
        X25519.PublicKey(X25519.GeneratePrivateKey(), wrong);
        await Assert.ThrowsAsync<TimeoutException>(() => pair.Client.ConnectAsync(pair.Server.LocalEndPoint, wrong, CancellationToken.None));
        // Protected with another key's obfuscation (§3.3), the Exchange is random bytes to the server: no connection it knows.
        Assert.True(pair.Server.Counters.UnknownId >= 1, "the server could not read the Exchange's header");
        Assert.Equal(0, pair.Server.Counters.HandshakesAccepted);
        Assert.Equal(1, pair.Client.Counters.HandshakesFailed);
    }

    private static (byte[] Private, byte[] Public) KeyPair()
    {
        var k = X25519.GeneratePrivateKey();
        var pub = new byte[32];
        X25519.PublicKey(k, pub);
        return (k, pub);
    }

    [Theory]
    [InlineData(ChallengePolicy.Never)]
    [InlineData(ChallengePolicy.Always)]
    public async Task An_authorized_initiator_proves_its_key_immediate_or_deferred(ChallengePolicy challenge)
    {
        var (priv, pub) = KeyPair();
        await using var pair = Pair.Start(new RudEndpointOptions { Challenge = challenge, AuthorizedKeys = [KeyPair().Public, pub] },
            new RudEndpointOptions { InitiatorStaticPrivateKey = priv });
        var (c, s) = await pair.ConnectAsync(pair.ServerPublic);
        await TransferBothWaysAsync(c, s, RandomNumberGenerator.GetBytes(100_000), RandomNumberGenerator.GetBytes(100_000), Generous);
        Assert.Equal(0, pair.Server.Counters.Unauthorized);
        Assert.Equal(0, pair.Server.Counters.Dropped);
    }

    [Fact]
    public async Task Unauthorized_and_anonymous_initiators_get_no_answer_and_are_counted()
    {
        var (_, pub) = KeyPair();
        await using var server = Pair.Start(new RudEndpointOptions { AuthorizedKeys = [pub] });
        var target = server.Server.LocalEndPoint;
        foreach (var client in new[] { new RudEndpointOptions { HandshakeTimeout = TimeSpan.FromSeconds(2), InitiatorStaticPrivateKey = KeyPair().Private },
                                       new RudEndpointOptions { HandshakeTimeout = TimeSpan.FromSeconds(2) } })
        {
            await using var c = RudEndpoint.Bind(new IPEndPoint(IPAddress.Loopback, 0), client);
            await Assert.ThrowsAsync<TimeoutException>(() => c.ConnectAsync(target, server.ServerPublic, CancellationToken.None));
            Assert.Equal(0, c.Counters.Dropped); // nothing came back to be dropped
        }
        Assert.True(server.Server.Counters.Unauthorized >= 2, $"unauthorized {server.Server.Counters.Unauthorized}");
        Assert.Equal(0, server.Server.Counters.HandshakesAccepted);
    }

    /// <summary>
    /// An Exchange that names an authorized public key in its mezzanine but proves the agreement of another
    /// private key (what someone who knows the authorized public key, not its private key, can send) is
    /// refused (§5.5); the same Exchange built with the authorized private key is accepted (the control).
    /// </summary>
    [Fact]
    public async Task A_proof_by_another_private_key_under_an_authorized_public_key_is_refused()
    {
        var (authorizedPriv, authorizedPub) = KeyPair();
        await using var pair = Pair.Start(new RudEndpointOptions { AuthorizedKeys = [authorizedPub], Challenge = ChallengePolicy.Never });
        using var sock = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.InterNetwork, System.Net.Sockets.SocketType.Dgram, System.Net.Sockets.ProtocolType.Udp);
        sock.Bind(new IPEndPoint(IPAddress.Loopback, 0));

        byte[] Exchange(byte[] provingKey)
        {
            byte[] ephPriv = new byte[32], ephPub = new byte[32], representative = new byte[32];
            Elligator2.GenerateKey(ephPriv, ephPub, representative);
            var es = new byte[32];
            Assert.True(X25519.Agree(ephPriv, pair.ServerPublic, es));
            var packet = new byte[RudWire.HandshakeSize];
            int at = RudWire.WriteExchangePlaintext(packet, complete: false, 7, representative, []);
            var aad = new byte[RudWire.MezzanineAadSize];
            RudWire.MezzanineAad(packet, aad);
            var plain = new byte[RudWire.MezzaninePlainSize];
            System.Buffers.Binary.BinaryPrimitives.WriteInt64BigEndian(plain, DateTimeOffset.UtcNow.ToUnixTimeMilliseconds());
            plain[8] = RudWire.MezzanineInitiatorKey;
            authorizedPub.CopyTo(plain, 9);
            using (var aead = new AesGcm(RudKeys.MezzanineKey(es, ephPub, pair.ServerPublic), 16))
                aead.Encrypt(new byte[12], plain, packet.AsSpan(at, plain.Length), packet.AsSpan(at + plain.Length, 16), aad);
            var ss = new byte[32];
            Assert.True(X25519.Agree(provingKey, pair.ServerPublic, ss));
            RudKeys.InitiatorProof(RudKeys.InitiatorProofKey(es, ss, ephPub, pair.ServerPublic, authorizedPub), 0,
                packet.AsSpan(at, RudWire.MezzanineSize), packet.AsSpan(at + RudWire.MezzanineSize, RudWire.InitiatorProofSize));
            using var hp = new HeaderProtection(pair.ServerPublic);
            RudEndpoint.ProtectHandshake(hp, packet, fromInitiator: true);
            return packet;
        }

        sock.SendTo(Exchange(KeyPair().Private), pair.Server.LocalEndPoint);
        await Eventually.TrueAsync(() => pair.Server.Counters.Unauthorized == 1, "the forged proof refused");
        Assert.Equal(0, pair.Server.Counters.HandshakesAccepted);
        sock.SendTo(Exchange(authorizedPriv), pair.Server.LocalEndPoint);
        await Eventually.TrueAsync(() => pair.Server.Counters.HandshakesAccepted == 1, "the genuine proof accepted");
        Assert.Equal(1, pair.Server.Counters.Unauthorized);
    }

    [Fact]
    public async Task A_server_without_authorized_keys_takes_initiators_with_and_without_a_key()
    {
        await using var pair = Pair.Start(client: new RudEndpointOptions { InitiatorStaticPrivateKey = KeyPair().Private });
        var (c, s) = await pair.ConnectAsync(pair.ServerPublic);
        await TransferBothWaysAsync(c, s, RandomNumberGenerator.GetBytes(10_000), RandomNumberGenerator.GetBytes(10_000), Generous);
        await using var anonymous = RudEndpoint.Bind(new IPEndPoint(IPAddress.Loopback, 0), new RudEndpointOptions());
        using var cts = new CancellationTokenSource(Generous);
        var c2 = await anonymous.ConnectAsync(pair.Server.LocalEndPoint, pair.ServerPublic, cts.Token);
        var s2 = await pair.Server.AcceptConnectionAsync(cts.Token);
        await TransferBothWaysAsync(c2, s2, RandomNumberGenerator.GetBytes(10_000), RandomNumberGenerator.GetBytes(10_000), Generous);
    }

    [Fact]
    public async Task An_expired_challenge_token_is_refused_and_the_handshake_fails()
    {
        // Every token is already expired when it comes back (lifetime 0): the server answers
        // each Complete with a fresh Defer and never creates a connection.
        await using var pair = Pair.Start(new RudEndpointOptions { Challenge = ChallengePolicy.Always, TokenLifetime = TimeSpan.Zero },
            new RudEndpointOptions { HandshakeTimeout = TimeSpan.FromSeconds(2) });
        await Assert.ThrowsAsync<TimeoutException>(() => pair.Client.ConnectAsync(pair.Server.LocalEndPoint, pair.ServerPublic, CancellationToken.None));
        Assert.True(pair.Server.Counters.TokenExpired >= 1);
        Assert.Equal(0, pair.Server.Counters.HandshakesAccepted);
    }

    [Fact]
    public async Task Tampered_packets_fail_authentication_are_dropped_and_counted_and_the_stream_is_intact()
    {
        await using var pair = Pair.Start(relaySeed: 11);
        var (c, s) = await pair.ConnectAsync(pair.ServerPublic);
        int n = 0;
        pair.Relay!.Tamper = (_, _) => Interlocked.Increment(ref n) % 7 == 0;
        await TransferBothWaysAsync(c, s, RandomNumberGenerator.GetBytes(500_000), RandomNumberGenerator.GetBytes(500_000), Generous);
        Assert.True(pair.Relay.Tampered > 10);
        // A flipped byte in the stream identifier makes the id unknown; anywhere else authentication fails.
        long seen = pair.Server.Counters.AuthFailed + pair.Server.Counters.UnknownId + pair.Server.Counters.Malformed
            + pair.Client.Counters.AuthFailed + pair.Client.Counters.UnknownId + pair.Client.Counters.Malformed;
        Assert.True(seen >= pair.Relay.Tampered * 9 / 10, $"tampered {pair.Relay.Tampered}, dropped {seen}");
    }

    [Fact]
    public async Task Replayed_data_packets_and_a_replayed_exchange_are_dropped_and_counted()
    {
        await using var pair = Pair.Start(relaySeed: 12);
        pair.Relay!.FromClient = [];
        var (c, s) = await pair.ConnectAsync(pair.ServerPublic);
        await TransferBothWaysAsync(c, s, RandomNumberGenerator.GetBytes(200_000), RandomNumberGenerator.GetBytes(1000), Generous);
        byte[][] sent = pair.Relay.ClientPackets();
        long before = pair.Server.Counters.Replayed;
        foreach (var p in sent.Skip(1)) pair.Relay.Inject(p);   // every data packet again
        pair.Relay.Inject(sent[0]);                              // the Exchange again, after confirmation
        await Eventually.HoldsWithinAsync(() => pair.Server.Counters.Replayed - before >= sent.Length, Generous);
        Assert.Equal(sent.Length, pair.Server.Counters.Replayed - before);
        Assert.Equal(1, pair.Server.Counters.HandshakesAccepted);
        // The connection still works.
        await TransferBothWaysAsync(c, s, RandomNumberGenerator.GetBytes(10_000), RandomNumberGenerator.GetBytes(10_000), Generous);
    }

    [Fact]
    public async Task Ten_MB_each_way_over_a_lossy_link_arrive_with_the_SHA256_intact()
    {
        // 5 % loss, 5 % duplication, 50 ms delay plus up to 10 ms jitter (reordering), seeded.
        await using var pair = Pair.Start(relaySeed: 20261130);
        pair.Relay!.Loss = 0.05;
        pair.Relay.Duplicate = 0.05;
        pair.Relay.Delay = TimeSpan.FromMilliseconds(50);
        pair.Relay.Jitter = TimeSpan.FromMilliseconds(10);
        var (c, s) = await pair.ConnectAsync(pair.ServerPublic);
        var rng = new Random(7);
        var up = new byte[10 << 20];
        var down = new byte[10 << 20];
        rng.NextBytes(up);
        rng.NextBytes(down);
        var watch = System.Diagnostics.Stopwatch.StartNew();
        await TransferBothWaysAsync(c, s, up, down, TimeSpan.FromMinutes(8));
        output.WriteLine($"10 MB each way in {watch.Elapsed.TotalSeconds:0.0} s; relay dropped {pair.Relay.Dropped}, duplicated {pair.Relay.Duplicated}; " +
            $"client lost {pair.Client.Counters.PacketsLost}, server lost {pair.Server.Counters.PacketsLost}, replays dropped {pair.Server.Counters.Replayed + pair.Client.Counters.Replayed}");
        // The loss was applied: 5 % of what crossed (acknowledgements go once per receive batch, §9.4, so the
        // count of packets, and of drops, depends on batching; ≥ 15,000 data packets cross in all).
        Assert.True(pair.Relay.Dropped > 500 && pair.Relay.Dropped > 0.03 * (pair.Relay.Forwarded + pair.Relay.Dropped),
            $"relay dropped {pair.Relay.Dropped} of {pair.Relay.Forwarded + pair.Relay.Dropped}");
        Assert.True(pair.Server.Counters.Replayed + pair.Client.Counters.Replayed > 500, "duplicates are dropped as replays");
        Assert.True(pair.Client.Counters.PacketsLost > 0 && pair.Server.Counters.PacketsLost > 0);
    }

    [Fact]
    public async Task Loss_above_the_tolerance_is_taken_as_congestion_and_the_window_shrinks()
    {
        // §9.3: at 25 % loss the moving loss rate passes the 15 % tolerance, so NewReno backs off; the bytes still arrive.
        await using var pair = Pair.Start(client: new RudEndpointOptions { CongestionControl = CongestionControl.NewReno }, relaySeed: 25);
        pair.Relay!.Loss = 0.25;
        pair.Relay.Delay = TimeSpan.FromMilliseconds(5);
        var (c, s) = await pair.ConnectAsync(pair.ServerPublic);
        // The window is sampled during the transfer: after the last back-off it may grow again
        // before the transfer ends, so its final value proves nothing either way.
        long smallest = long.MaxValue;
        using var sampling = new CancellationTokenSource();
        var sampler = Task.Run(async () =>
        {
            while (!sampling.IsCancellationRequested)
            {
                smallest = Math.Min(smallest, (long)c.CongestionState.Cwnd);
                // The sampling period (2 ms), not a wait for anything.
                try { await Task.Delay(2, sampling.Token); } catch (OperationCanceledException) { }
            }
        });
        await TransferBothWaysAsync(c, s, RandomNumberGenerator.GetBytes(150_000), RandomNumberGenerator.GetBytes(1000), Generous);
        await sampling.CancelAsync();
        await sampler;
        smallest = Math.Min(smallest, (long)c.CongestionState.Cwnd);
        Assert.True(pair.Client.Counters.CongestionEvents > 0, "no congestion event at 25 % loss");
        Assert.True(smallest < 10 * RudWire.MaxPacketSize, $"window never went below the initial window (smallest {smallest})");
    }

    [Fact]
    public async Task Packets_grow_to_1452_bytes_once_a_probe_of_that_size_is_acknowledged()
    {
        // §9.5: loopback carries anything, so the probe is answered and both sides send 1452-byte packets.
        await using var pair = Pair.Start(relaySeed: 7);
        pair.Relay!.FromClient = [];
        var (c, s) = await pair.ConnectAsync(pair.ServerPublic);
        await TransferBothWaysAsync(c, s, RandomNumberGenerator.GetBytes(2_000_000), RandomNumberGenerator.GetBytes(2_000_000), Generous);
        output.WriteLine($"client probes {pair.Client.Counters.PathMtuProbes} raised {pair.Client.Counters.PathMtuRaised}; server probes {pair.Server.Counters.PathMtuProbes} raised {pair.Server.Counters.PathMtuRaised}");
        Assert.Equal(RudWire.ProbedPacketSize, c.MaxPacketSize);
        Assert.Equal(RudWire.ProbedPacketSize, s.MaxPacketSize);
        Assert.Equal(1, pair.Client.Counters.PathMtuRaised);
        Assert.Equal(1, pair.Server.Counters.PathMtuRaised);
        var sizes = pair.Relay.ClientPackets().Select(p => p.Length).ToArray();
        Assert.Equal(RudWire.ProbedPacketSize, sizes.Max());
        Assert.True(sizes.Count(n => n == RudWire.ProbedPacketSize) > 1000, "the bulk of the transfer used the larger size");
    }

    [Fact]
    public async Task A_path_that_drops_large_datagrams_keeps_1350_byte_packets_and_loses_no_data()
    {
        // §9.5: the probe (and its retries) vanish; nothing else is lost and the size stays 1350.
        await using var pair = Pair.Start(relaySeed: 8);
        pair.Relay!.MaxDatagram = 1400;
        var (c, s) = await pair.ConnectAsync(pair.ServerPublic);
        await TransferBothWaysAsync(c, s, RandomNumberGenerator.GetBytes(3_000_000), RandomNumberGenerator.GetBytes(1_000_000), Generous);
        output.WriteLine($"client probes {pair.Client.Counters.PathMtuProbes}, lost {pair.Client.Counters.PacketsLost}; relay dropped {pair.Relay.TooBig} too big; {c.DebugState}");
        Assert.Equal(RudWire.MaxPacketSize, c.MaxPacketSize);
        Assert.Equal(RudWire.MaxPacketSize, s.MaxPacketSize);
        Assert.True(pair.Client.Counters.PathMtuProbes >= 1);
        Assert.Equal(0, pair.Client.Counters.PathMtuRaised);
        Assert.Equal(0, pair.Server.Counters.PathMtuRaised);
        Assert.True(pair.Relay.TooBig >= 1, "the relay saw the probe");
        Assert.Equal(0, pair.Client.Counters.PacketsLost);
        Assert.Equal(0, pair.Client.Counters.CongestionEvents);
    }

    [Fact]
    public async Task The_connection_survives_the_client_moving_to_a_new_port_mid_transfer()
    {
        await using var pair = Pair.Start();
        var (c, s) = await pair.ConnectAsync(pair.ServerPublic);
        int before = pair.Client.LocalEndPoint.Port;
        bool moved = false;
        try
        {
            await TransferBothWaysAsync(c, s, RandomNumberGenerator.GetBytes(4 << 20), RandomNumberGenerator.GetBytes(4 << 20), TimeSpan.FromSeconds(20), at =>
            {
                if (!moved && at > (2 << 20)) { pair.Client.Rebind(); moved = true; }
                return Task.CompletedTask;
            });
        }
        finally
        {
            output.WriteLine("client " + string.Join(", ", pair.Client.Counters.Snapshot().Where(kv => kv.Value != 0)));
            output.WriteLine("server " + string.Join(", ", pair.Server.Counters.Snapshot().Where(kv => kv.Value != 0)));
            foreach (var st in LastStreams) output.WriteLine(st.DebugState);
            output.WriteLine(c.DebugState);
            output.WriteLine(s.DebugState);
            output.WriteLine($"client cc {c.CongestionState}, server cc {s.CongestionState}, server peer {s.RemoteEndPoint}, client local {pair.Client.LocalEndPoint}");
        }
        Assert.True(moved);
        Assert.NotEqual(before, pair.Client.LocalEndPoint.Port);
        Assert.True(pair.Server.Counters.Migrations >= 1);
        Assert.Equal(pair.Client.LocalEndPoint.Port, s.RemoteEndPoint.Port);
    }

    /// <summary>
    /// §7.1: an authenticated packet from another address (the client's own keys, sent from a third
    /// socket) does not move the server's side; that address gets a PATH_CHALLENGE, within 3 × what it
    /// sent, and the connection moves only when the challenge is answered: here the third socket passes
    /// the challenge to the client, whose PATH_RESPONSE validates it.
    /// </summary>
    [Fact]
    public async Task A_packet_from_another_address_moves_the_connection_only_after_the_challenge_is_answered()
    {
        await using var pair = Pair.Start(new RudEndpointOptions { PathMtuProbe = false }, new RudEndpointOptions { PathMtuProbe = false });
        var (c, s) = await pair.ConnectAsync(pair.ServerPublic);
        var home = s.RemoteEndPoint;
        using var other = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.InterNetwork, System.Net.Sockets.SocketType.Dgram, System.Net.Sockets.ProtocolType.Udp);
        other.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        var packet = new byte[RudWire.MaxReceiveSize];
        int n = c.SealRawPacket([FrameType.Ping], packet);
        other.SendTo(packet.AsSpan(0, n), pair.Server.LocalEndPoint);

        using var cts = new CancellationTokenSource(Generous);
        var buf = new byte[2048];
        int got = await other.ReceiveAsync(buf, System.Net.Sockets.SocketFlags.None, cts.Token);
        Assert.InRange(got, 1, 3 * n);
        Assert.Equal(home, s.RemoteEndPoint); // not moved
        Assert.Equal(1, pair.Server.Counters.PathChallengesSent);

        // The challenge reaches the client (as if its path had changed to the other socket): it answers.
        var serverAddress = pair.Server.LocalEndPoint.Serialize();
        pair.Client.HandlePacket(buf.AsSpan(0, got), serverAddress);
        var moved = (IPEndPoint)other.LocalEndPoint!;
        await Eventually.TrueAsync(() => s.RemoteEndPoint.Equals(moved), "the server following the validated address", Generous);
        Assert.Equal(1, pair.Server.Counters.Migrations);
    }

    [Fact]
    public async Task Keys_are_updated_during_a_transfer_and_the_bytes_survive()
    {
        await using var pair = Pair.Start(new RudEndpointOptions { RekeyInterval = 300 }, new RudEndpointOptions { RekeyInterval = 300 });
        var (c, s) = await pair.ConnectAsync(pair.ServerPublic);
        await TransferBothWaysAsync(c, s, RandomNumberGenerator.GetBytes(3 << 20), RandomNumberGenerator.GetBytes(3 << 20), Generous);
        Assert.True(c.KeyUpdatesSent >= 3, $"client sent {c.KeyUpdatesSent} key updates");
        Assert.True(s.KeyUpdatesReceived >= 3);
        Assert.True(s.KeyUpdatesSent >= 3);
        Assert.True(c.KeyUpdatesReceived >= 3);
    }

    [Fact]
    public async Task Many_streams_on_one_connection_each_keep_their_own_bytes()
    {
        await using var pair = Pair.Start();
        var (c, s) = await pair.ConnectAsync(pair.ServerPublic);
        using var cts = new CancellationTokenSource(Generous);
        var echo = Task.Run(async () =>
        {
            var tasks = new List<Task>();
            for (int i = 0; i < 50; i++)
            {
                var st = await s.AcceptStreamAsync(cts.Token);
                tasks.Add(Task.Run(async () =>
                {
                    var data = await ReadAllAsync(st, cts.Token);
                    await st.WriteAsync(data, cts.Token);
                    st.ShutdownWrite();
                }));
            }
            await Task.WhenAll(tasks);
        });
        var clients = Enumerable.Range(0, 50).Select(async i =>
        {
            var payload = RandomNumberGenerator.GetBytes(1000 + i * 997);
            await using var st = c.OpenStream();
            await st.WriteAsync(payload, cts.Token);
            st.ShutdownWrite();
            Assert.Equal(payload, await ReadAllAsync(st, cts.Token));
        });
        await Task.WhenAll(clients);
        await echo;
    }
}
