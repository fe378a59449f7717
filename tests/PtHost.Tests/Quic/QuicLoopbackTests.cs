using System.Net;
using System.Security.Cryptography;
using System.Text;
using PtHost.Quic;

namespace PtHost.Tests.Quic;

/// <summary>Our QUIC client against our QUIC server on loopback: handshake, ALPN, exporter,
/// streams (1 MB with SHA-256), datagrams both ways, pinning, close, idle timeout, stateless reset.</summary>
public sealed class QuicLoopbackTests
{
    private static readonly TimeSpan Wait = TimeSpan.FromSeconds(30);
    internal static readonly QuicCertificate Cert = QuicCertificate.CreateSelfSigned("pthost.test");

    internal static QuicServerOptions ServerOptions(TimeSpan? idle = null, byte[]? secret = null) => new()
    {
        Certificate = Cert,
        ApplicationProtocols = ["test"],
        IdleTimeout = idle ?? TimeSpan.FromSeconds(30),
        StatelessResetSecret = secret,
    };

    internal static QuicClientOptions ClientOptions(byte[]? pin = null, TimeSpan? idle = null) => new()
    {
        Verification = QuicPeerVerification.Pinned(pin ?? Cert.Sha256),
        ApplicationProtocols = ["test"],
        IdleTimeout = idle ?? TimeSpan.FromSeconds(30),
        HandshakeTimeout = TimeSpan.FromSeconds(10),
    };

    private static async Task<(QuicEndpoint Server, QuicEndpoint Client, QuicConnection C, QuicConnection S)> PairAsync(
        QuicServerOptions? so = null, QuicClientOptions? co = null)
    {
        var server = QuicEndpoint.CreateServer(new IPEndPoint(IPAddress.Loopback, 0), so ?? ServerOptions());
        var client = QuicEndpoint.CreateClient(new IPEndPoint(IPAddress.Loopback, 0));
        var accept = server.AcceptAsync().AsTask();
        var c = await client.ConnectAsync(server.LocalEndPoint, co ?? ClientOptions()).WaitAsync(Wait);
        var s = await accept.WaitAsync(Wait);
        return (server, client, c, s);
    }

    [Fact]
    public void Library_version_and_layouts_pass_the_startup_check()
    {
        Assert.Null(QuicLibrary.UnavailableReason);
    }

    [Fact]
    public void A_missing_library_is_reported_with_its_name_and_the_packages_to_install()
    {
        var reason = QuicLibrary.Probe("libngtcp2.so.9", "libngtcp2_crypto_gnutls.so.404", "libgnutls.so.30");
        Assert.NotNull(reason);
        Assert.Contains("libngtcp2_crypto_gnutls.so.404 not found", reason);
        Assert.Contains("libngtcp2-crypto-gnutls2", reason);
    }

    [Fact]
    public async Task Handshake_agrees_on_alpn_and_both_sides_export_the_same_keying_material()
    {
        var (server, client, c, s) = await PairAsync();
        await using (server)
        await using (client)
        {
            Assert.Equal("test", c.NegotiatedApplicationProtocol);
            Assert.Equal("test", s.NegotiatedApplicationProtocol);
            var label = new byte[16];
            RandomNumberGenerator.Fill(label);
            var context = "password"u8.ToArray();
            var a = await c.ExportKeyingMaterialAsync(label, context, 32).WaitAsync(Wait);
            var b = await s.ExportKeyingMaterialAsync(label, context, 32).WaitAsync(Wait);
            Assert.Equal(a, b);
            var other = await s.ExportKeyingMaterialAsync(label, "other"u8.ToArray(), 32).WaitAsync(Wait);
            Assert.NotEqual(a, other);
        }
    }

    [Fact]
    public async Task One_megabyte_each_way_on_a_bidirectional_stream_arrives_intact()
    {
        var (server, client, c, s) = await PairAsync();
        await using (server)
        await using (client)
        {
            var up = RandomNumberGenerator.GetBytes(1 << 20);
            var down = RandomNumberGenerator.GetBytes(1 << 20);
            var cs = await c.OpenBidirectionalStreamAsync().AsTask().WaitAsync(Wait);
            var serverSide = Task.Run(async () =>
            {
                var ss = await s.AcceptStreamAsync();
                Assert.False(ss.IsUnidirectional);
                var write = Task.Run(async () =>
                {
                    for (var i = 0; i < down.Length; i += 10_000) await ss.WriteAsync(down.AsMemory(i, Math.Min(10_000, down.Length - i)));
                    ss.CompleteWrites();
                });
                var got = await ReadAllAsync(ss);
                await write;
                return got;
            });
            var clientWrite = Task.Run(async () =>
            {
                await cs.WriteAsync(up);
                cs.CompleteWrites();
            });
            var clientGot = await ReadAllAsync(cs).WaitAsync(Wait);
            await clientWrite.WaitAsync(Wait);
            var serverGot = await serverSide.WaitAsync(Wait);
            Assert.Equal(SHA256.HashData(up), SHA256.HashData(serverGot));
            Assert.Equal(SHA256.HashData(down), SHA256.HashData(clientGot));
        }
    }

    [Fact]
    public async Task Unidirectional_streams_carry_data_one_way_and_end_with_fin()
    {
        var (server, client, c, s) = await PairAsync();
        await using (server)
        await using (client)
        {
            var u = await s.OpenUnidirectionalStreamAsync().AsTask().WaitAsync(Wait);
            Assert.False(u.CanRead);
            await u.WriteAsync("hello uni"u8.ToArray());
            u.CompleteWrites();
            var r = await c.AcceptStreamAsync().AsTask().WaitAsync(Wait);
            Assert.True(r.IsUnidirectional);
            Assert.False(r.CanWrite);
            Assert.Equal("hello uni", Encoding.ASCII.GetString(await ReadAllAsync(r).WaitAsync(Wait)));
        }
    }

    [Fact]
    public async Task Datagrams_flow_both_ways_up_to_the_advertised_size()
    {
        var (server, client, c, s) = await PairAsync();
        await using (server)
        await using (client)
        {
            Assert.True(c.MaxDatagramPayloadSize >= 1000, $"client max datagram {c.MaxDatagramPayloadSize}");
            Assert.True(s.MaxDatagramPayloadSize >= 1000);
            // The limit can grow while the test runs (path MTU discovery raises the path's maximum):
            // a payload beyond any DATAGRAM frame (max_datagram_frame_size ≤ 65,535) is always refused.
            Assert.False(c.TrySendDatagram(new byte[70_000]));
            var big = RandomNumberGenerator.GetBytes(c.MaxDatagramPayloadSize);
            var buf = new byte[65536];
            // Datagrams are unreliable: send until one arrives (loopback rarely loses any).
            async Task<byte[]> Exchange(QuicConnection from, QuicConnection to, byte[] payload)
            {
                using var cts = new CancellationTokenSource(Wait);
                while (true)
                {
                    Assert.True(from.TrySendDatagram(payload));
                    var recv = to.ReceiveDatagramAsync(buf, cts.Token).AsTask();
                    if (await Eventually.CompletesWithinAsync(recv, TimeSpan.FromSeconds(1))) // else lost: send again
                        return buf.AsSpan(0, await recv).ToArray();
                }
            }
            Assert.Equal(big, await Exchange(c, s, big));
            var back = RandomNumberGenerator.GetBytes(500);
            Assert.Equal(back, await Exchange(s, c, back));
        }
    }

    [Fact]
    public async Task A_wrong_certificate_pin_fails_the_handshake()
    {
        await using var server = QuicEndpoint.CreateServer(new IPEndPoint(IPAddress.Loopback, 0), ServerOptions());
        await using var client = QuicEndpoint.CreateClient(new IPEndPoint(IPAddress.Loopback, 0));
        var wrong = SHA256.HashData("not the certificate"u8);
        var e = await Assert.ThrowsAnyAsync<Exception>(() => client.ConnectAsync(server.LocalEndPoint, ClientOptions(wrong)).WaitAsync(Wait));
        Assert.Contains("does not match the pin", e.Message);
    }

    [Fact]
    public async Task System_trust_mode_refuses_a_self_signed_server_certificate()
    {
        await using var server = QuicEndpoint.CreateServer(new IPEndPoint(IPAddress.Loopback, 0), ServerOptions());
        await using var client = QuicEndpoint.CreateClient(new IPEndPoint(IPAddress.Loopback, 0));
        var options = new QuicClientOptions { Verification = QuicPeerVerification.SystemTrust("pthost.test"), ApplicationProtocols = ["test"] };
        var e = await Assert.ThrowsAnyAsync<Exception>(() => client.ConnectAsync(server.LocalEndPoint, options).WaitAsync(Wait));
        Assert.Contains("TLS handshake failed", e.Message);
    }

    [Fact]
    public async Task A_client_without_a_verification_choice_is_refused()
    {
        var options = new QuicClientOptions { ApplicationProtocols = ["test"] };
        await using var client = QuicEndpoint.CreateClient(new IPEndPoint(IPAddress.Loopback, 0));
        var e = await Assert.ThrowsAsync<ArgumentException>(() => client.ConnectAsync(new IPEndPoint(IPAddress.Loopback, 9), options));
        Assert.Contains("Verification is required", e.Message);
    }

    [Fact]
    public async Task An_alpn_mismatch_fails_the_handshake()
    {
        await using var server = QuicEndpoint.CreateServer(new IPEndPoint(IPAddress.Loopback, 0), ServerOptions());
        await using var client = QuicEndpoint.CreateClient(new IPEndPoint(IPAddress.Loopback, 0));
        var options = new QuicClientOptions { Verification = QuicPeerVerification.Pinned(Cert.Sha256), ApplicationProtocols = ["other"] };
        await Assert.ThrowsAnyAsync<Exception>(() => client.ConnectAsync(server.LocalEndPoint, options).WaitAsync(Wait));
    }

    [Fact]
    public async Task Graceful_close_reaches_the_peer_with_the_application_code()
    {
        var (server, client, c, s) = await PairAsync();
        await using (server)
        await using (client)
        {
            var pending = s.AcceptStreamAsync().AsTask();
            await c.CloseAsync(42, "bye").WaitAsync(Wait);
            var info = await s.Closed.WaitAsync(Wait);
            Assert.True(info.ByPeer);
            Assert.Equal(42UL, info.ApplicationErrorCode);
            Assert.Contains("bye", info.Reason);
            await Assert.ThrowsAnyAsync<Exception>(() => pending.WaitAsync(Wait));
        }
    }

    [Fact]
    public async Task An_idle_connection_times_out_on_both_sides()
    {
        var (server, client, c, s) = await PairAsync(ServerOptions(TimeSpan.FromSeconds(1)), ClientOptions(idle: TimeSpan.FromSeconds(1)));
        await using (server)
        await using (client)
        {
            Assert.Equal("idle timeout", (await c.Closed.WaitAsync(Wait)).Reason);
            Assert.Equal("idle timeout", (await s.Closed.WaitAsync(Wait)).Reason);
        }
    }

    [Fact]
    public async Task A_server_that_forgot_the_connection_answers_with_a_stateless_reset()
    {
        var secret = RandomNumberGenerator.GetBytes(32);
        var (server, client, c, s) = await PairAsync(ServerOptions(secret: secret));
        await using (server)
        await using (client)
        {
            await server.ForgetConnectionsAsync().WaitAsync(Wait);
            // The client's next packet (a stream frame, or an ACK it had pending) reaches a server
            // that knows no such connection id; when the reset beats the stream, open/write fail.
            try
            {
                var st = await c.OpenBidirectionalStreamAsync().AsTask().WaitAsync(Wait);
                await st.WriteAsync(new byte[100]);
            }
            catch (QuicConnectionException e) when (e.Message.Contains("stateless reset", StringComparison.Ordinal)) { }
            var info = await c.Closed.WaitAsync(Wait);
            Assert.Equal("stateless reset by peer", info.Reason);
            Assert.True(Interlocked.Read(ref server.StatelessResetsSent) >= 1);
        }
    }

    [Fact]
    public async Task Many_streams_beyond_the_peer_limit_open_as_earlier_ones_close()
    {
        var so = new QuicServerOptions { Certificate = Cert, ApplicationProtocols = ["test"], MaxIncomingBidirectionalStreams = 4 };
        var (server, client, c, s) = await PairAsync(so);
        await using (server)
        await using (client)
        {
            var echo = Task.Run(async () =>
            {
                for (var i = 0; i < 20; i++)
                {
                    var st = await s.AcceptStreamAsync();
                    _ = Task.Run(async () =>
                    {
                        var data = await ReadAllAsync(st);
                        await st.WriteAsync(data);
                        st.CompleteWrites();
                    });
                }
            });
            for (var i = 0; i < 20; i++)
            {
                var st = await c.OpenBidirectionalStreamAsync().AsTask().WaitAsync(Wait);
                var msg = Encoding.ASCII.GetBytes("stream " + i);
                await st.WriteAsync(msg);
                st.CompleteWrites();
                Assert.Equal(msg, await ReadAllAsync(st).WaitAsync(Wait));
                await st.DisposeAsync();
            }
            await echo.WaitAsync(Wait);
        }
    }

    [Fact]
    public async Task Unidirectional_streams_beyond_the_peer_limit_flow_as_earlier_ones_finish_both_ways()
    {
        // libngtcp2 0.12.1 never closes a peer's unidirectional stream itself; PtHost.Quic must
        // return its MAX_STREAMS credit after the FIN (ASPORT's QUIC mode sends one per packet).
        var so = new QuicServerOptions { Certificate = Cert, ApplicationProtocols = ["test"], MaxIncomingUnidirectionalStreams = 4 };
        var co = new QuicClientOptions { Verification = QuicPeerVerification.Pinned(Cert.Sha256), ApplicationProtocols = ["test"], MaxIncomingUnidirectionalStreams = 4 };
        var (server, client, c, s) = await PairAsync(so, co);
        await using (server)
        await using (client)
        {
            const int Count = 40;
            async Task<List<string>> ReceiveAsync(QuicConnection conn)
            {
                var got = new List<string>();
                for (var i = 0; i < Count; i++)
                {
                    await using var st = await conn.AcceptStreamAsync().AsTask().WaitAsync(Wait);
                    Assert.True(st.IsUnidirectional);
                    got.Add(Encoding.ASCII.GetString(await ReadAllAsync(st).WaitAsync(Wait)));
                }
                return got;
            }
            async Task SendAsync(QuicConnection conn, string who)
            {
                for (var i = 0; i < Count; i++)
                {
                    var st = await conn.OpenUnidirectionalStreamAsync().AsTask().WaitAsync(Wait);
                    await st.WriteAsync(Encoding.ASCII.GetBytes($"{who} {i}"));
                    st.CompleteWrites();
                }
            }
            var atServer = ReceiveAsync(s);
            var atClient = ReceiveAsync(c);
            await Task.WhenAll(SendAsync(c, "client"), SendAsync(s, "server"));
            Assert.Equal(Enumerable.Range(0, Count).Select(i => $"client {i}"), (await atServer).OrderBy(x => int.Parse(x.Split(' ')[1])));
            Assert.Equal(Enumerable.Range(0, Count).Select(i => $"server {i}"), (await atClient).OrderBy(x => int.Parse(x.Split(' ')[1])));
        }
    }

    internal static async Task<byte[]> ReadAllAsync(Stream s)
    {
        var ms = new MemoryStream();
        var buf = new byte[32 * 1024];
        int n;
        while ((n = await s.ReadAsync(buf)) > 0) ms.Write(buf, 0, n);
        return ms.ToArray();
    }
}
