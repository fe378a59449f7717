using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using Microsoft.Extensions.Logging.Abstractions;
using PtHost.Quic;
using PtHost.Transports.Asport;
using Xunit.Abstractions;

namespace PtHost.Reliability.Attacks;

/// <summary>
/// Issue 24's QUIC and ASPORT attacks against the real relay process (`pthost relay asport`,
/// spec/asport.md §2, §5.1). The legitimate ASPORT client is an in-process <see cref="AsportRelayClient"/>
/// whose QUIC packets pass an on-path observer (<see cref="UdpTap"/>): it forwards both ways and hands
/// the attacker the connection id of the client's latest short-header packet, as anyone who sees the
/// traffic has it. The attacker sends from its own UDP socket. Each test states what the attack did to
/// the code before the fix (tests/PtHost.Reliability/README.md).
/// </summary>
[Collection("asport attacks")]
public class AsportAttackTests(ITestOutputHelper output)
{
    /// <summary>
    /// 3 s of garbage short-header packets carrying the connection's current id, from a third socket,
    /// while a TCP upload through the public port keeps the relay sending to its client. Before the fix
    /// the relay's endpoint moved the connection to the source of any packet that reached it (ngtcp2
    /// returns 0 for packets it drops as undecryptable), so its datagrams went to the attacker until the
    /// next genuine packet. Now a connection only follows the path ngtcp2 itself chose after an
    /// authenticated packet, and every packet leaves on the path ngtcp2 wrote it for.
    /// </summary>
    [Fact]
    public async Task Forged_packets_with_a_seen_connection_id_draw_no_relay_datagram_to_a_third_address()
    {
        await using var relay = await AsportRelayProcess.StartAsync();
        using var tap = new UdpTap(relay.EndPoint);
        await using var sink = new HashingSink();
        await using var client = Legitimate(tap.EndPoint, sink.EndPoint);
        client.Start();
        var port = await client.Registered.WaitAsync(TimeSpan.FromSeconds(30));

        using var attacker = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
        attacker.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        long drawn = 0, forged = 0;
        using var stop = new CancellationTokenSource();
        var listen = Task.Run(async () =>
        {
            var buf = new byte[65536];
            while (!stop.IsCancellationRequested)
            {
                try { await attacker.ReceiveAsync(buf, stop.Token); }
                catch (Exception e) when (e is OperationCanceledException or SocketException) { if (stop.IsCancellationRequested) return; continue; }
                Interlocked.Increment(ref drawn);
            }
        });

        // The upload runs until the attack is over, then ends with FIN; the sink hashes what arrives.
        using var upload = new TcpClient();
        await upload.ConnectAsync(IPAddress.Loopback, port);
        var attackOver = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using var sent = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        long uploaded = 0;
        var writer = Task.Run(async () =>
        {
            var chunk = new byte[64 * 1024];
            var net = upload.GetStream();
            while (!attackOver.Task.IsCompleted || uploaded < (8 << 20))
            {
                RandomNumberGenerator.Fill(chunk);
                await net.WriteAsync(chunk);
                sent.AppendData(chunk);
                uploaded += chunk.Length;
            }
            upload.Client.Shutdown(SocketShutdown.Send);
        });
        await Eventually.TrueAsync(() => sink.Received > (1 << 20), "the upload to start", TimeSpan.FromSeconds(30));

        var packet = new byte[64];
        var until = DateTime.UtcNow.AddSeconds(3);
        while (DateTime.UtcNow < until)
        {
            if (tap.ClientDcid is { } dcid)
            {
                for (var i = 0; i < 10; i++)
                {
                    RandomNumberGenerator.Fill(packet);
                    packet[0] = (byte)(0x40 | (packet[0] & 0x3f)); // short header, fixed bit set
                    dcid.CopyTo(packet.AsSpan(1));
                    attacker.SendTo(packet, relay.EndPoint);
                    forged++;
                }
            }
            await Task.Delay(1); // a pace, not a wait for anything
        }
        attackOver.TrySetResult();
        await writer.WaitAsync(TimeSpan.FromSeconds(60));
        await Eventually.TrueAsync(() => sink.Completed, "the upload to arrive whole", TimeSpan.FromSeconds(60));
        await stop.CancelAsync();
        await listen;
        output.WriteLine($"{forged} forged packets in 3 s during a {uploaded >> 20} MiB upload: the third socket received {drawn} of the relay's datagrams");
        Assert.Equal(uploaded, sink.Received);
        Assert.Equal(Convert.ToHexString(sent.GetHashAndReset()), sink.Hash);
        Assert.Equal(0, drawn);
    }

    /// <summary>
    /// 6,000 distinct QUIC Initials from 200 loopback addresses at 3,000 a second while a registered client
    /// carries a 32 MiB upload. Before the fix the relay started a TLS handshake for every one of them and
    /// answered each with its first flight (up to 3× the Initial's bytes); now it answers with Retry packets
    /// once 32 handshakes are under way or 64 started this second (spec/asport.md §2.1), so the flood gets
    /// a fraction of its own bytes back, and the upload completes.
    /// </summary>
    [Fact]
    public async Task An_initial_flood_from_many_addresses_gets_retries_and_the_upload_completes()
    {
        await using var relay = await AsportRelayProcess.StartAsync();
        await using var sink = new HashingSink();
        await using var client = Legitimate(relay.EndPoint, sink.EndPoint);
        client.Start();
        var port = await client.Registered.WaitAsync(TimeSpan.FromSeconds(30));
        var initials = await QuicInitialFlood.CaptureAsync(6000, AsportRelay.Alpn, TimeSpan.FromSeconds(120));
        long rss0 = ProcStats.RssBytes(relay.Process.Pid), rssPeak = rss0;

        await using var flood = QuicInitialFlood.Create(200);
        using var stop = new CancellationTokenSource();
        var flooding = flood.RunAsync(relay.EndPoint, initials, 3000, stop.Token);
        var data = RandomNumberGenerator.GetBytes(32 << 20);
        using (var upload = new TcpClient())
        {
            await upload.ConnectAsync(IPAddress.Loopback, port);
            var net = upload.GetStream();
            for (int off = 0; off < data.Length; off += 1 << 20)
            {
                await net.WriteAsync(data.AsMemory(off, 1 << 20));
                rssPeak = Math.Max(rssPeak, ProcStats.RssBytes(relay.Process.Pid));
            }
            upload.Client.Shutdown(SocketShutdown.Send);
            await Eventually.TrueAsync(() => sink.Completed, "the upload to arrive whole", TimeSpan.FromSeconds(120));
        }
        await flooding;
        rssPeak = Math.Max(rssPeak, ProcStats.RssBytes(relay.Process.Pid));
        long floodBytes = initials.Take((int)flood.Sent).Sum(i => (long)i.Length);
        output.WriteLine($"{flood.Sent} Initials ({floodBytes >> 10} KiB) from 200 addresses: the relay answered with {flood.Answers} datagrams, " +
            $"{flood.AnswerBytes >> 10} KiB ({(double)flood.AnswerBytes / floodBytes:0.00} of the flood's bytes); relay RSS {rss0 >> 20} → {rssPeak >> 20} MiB; upload {sink.Received >> 20} MiB whole");
        Assert.Equal(Convert.ToHexString(SHA256.HashData(data)), sink.Hash);
        Assert.True(flood.AnswerBytes < floodBytes / 2, $"the relay answered {flood.AnswerBytes} bytes to {floodBytes} bytes of Initials");
        Assert.True(rssPeak < 512L << 20, $"relay RSS {rssPeak >> 20} MiB");
    }

    /// <summary>
    /// 40 QUIC handshakes at once from one address (127.0.0.3) while a client from 127.0.0.1 is registered.
    /// Before the fix all 40 were accepted (no per-source cap); now the 17th and later get no answer
    /// (`max_connections_per_source` 16, spec/asport.md §2.1) and the registered client still forwards.
    /// </summary>
    [Fact]
    public async Task One_source_gets_at_most_16_connections()
    {
        await using var relay = await AsportRelayProcess.StartAsync();
        await using var sink = new HashingSink();
        await using var client = Legitimate(relay.EndPoint, sink.EndPoint);
        client.Start();
        var port = await client.Registered.WaitAsync(TimeSpan.FromSeconds(30));
        await using var endpoint = QuicEndpoint.CreateClient(new IPEndPoint(IPAddress.Parse("127.0.0.3"), 0));
        var options = new QuicClientOptions
        {
            Verification = QuicPeerVerification.Pinned(AsportRelayProcess.Cert.Sha256),
            ApplicationProtocols = [AsportRelay.Alpn],
            HandshakeTimeout = TimeSpan.FromSeconds(2),
        };
        // All at once: the relay closes a connection without a ClientHello after 3 s (§4.1), which must not
        // free places while the test is still connecting.
        var attempts = await Task.WhenAll(Enumerable.Range(0, 40).Select(async _ =>
        {
            try { return await endpoint.ConnectAsync(relay.EndPoint, options); }
            catch (QuicConnectionException) { return null; }
        }));
        var held = attempts.OfType<QuicConnection>().ToList();
        int refused = attempts.Length - held.Count;
        output.WriteLine($"40 handshakes from one address: {held.Count} connections, {refused} got no answer");
        using (var tcp = new TcpClient())
        {
            await tcp.ConnectAsync(IPAddress.Loopback, port);
            await tcp.GetStream().WriteAsync(new byte[1000]);
            tcp.Client.Shutdown(SocketShutdown.Send);
            await Eventually.TrueAsync(() => sink.Completed, "the registered client to forward", TimeSpan.FromSeconds(30));
        }
        foreach (var c in held) await c.DisposeAsync();
        Assert.Equal(16, held.Count);
        Assert.Equal(1000, sink.Received);
    }

    /// <summary>
    /// 1,200 TCP connections to the public port of a client that grants 8 streams at a time and whose local
    /// service accepts and never answers, so no stream ends and no credit comes back. Before the fix the relay
    /// kept every connection with a task waiting for stream credit without limit; now at most 1,024 wait
    /// (spec/asport.md §5.1) and the rest are reset at once.
    /// </summary>
    [Fact]
    public async Task Public_connections_waiting_for_stream_credit_are_bounded()
    {
        await using var relay = await AsportRelayProcess.StartAsync();
        var holder = new TcpListener(IPAddress.Loopback, 0);
        holder.Start(2048);
        var held = new List<TcpClient>();
        var accepting = Task.Run(async () =>
        {
            try { while (true) held.Add(await holder.AcceptTcpClientAsync()); }
            catch (Exception e) when (e is SocketException or ObjectDisposedException) { }
        });
        await using var client = Legitimate(relay.EndPoint, (IPEndPoint)holder.LocalEndpoint, maxForwardedStreams: 8);
        client.Start();
        var port = await client.Registered.WaitAsync(TimeSpan.FromSeconds(30));
        const int Total = 1200, Waiting = 1024, Streams = 8;
        var sockets = new List<Socket>();
        int ended = 0;
        try
        {
            for (int i = 0; i < Total; i++)
            {
                var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
                sockets.Add(s);
                try
                {
                    await s.ConnectAsync(IPAddress.Loopback, port);
                }
                catch (SocketException e) when (e.SocketErrorCode is SocketError.Shutdown or SocketError.ConnectionReset)
                {
                    // The relay's FIN and reset can arrive before the connect's completion is read (EPIPE from
                    // CLOSE_WAIT, or ECONNRESET): that connection was reset at once, as the excess ones must be.
                    Interlocked.Increment(ref ended);
                    continue;
                }
                _ = Task.Run(async () =>
                {
                    try { await s.ReceiveAsync(new byte[1], SocketFlags.None); }
                    catch (Exception e) when (e is SocketException or ObjectDisposedException) { }
                    Interlocked.Increment(ref ended);
                });
            }
            bool bounded = await Eventually.HoldsWithinAsync(() => Volatile.Read(ref ended) >= Total - Waiting - Streams, TimeSpan.FromSeconds(20));
            output.WriteLine($"{Total} public connections, 8 streams granted: {Volatile.Read(ref ended)} reset by the relay, {client.TcpForwarded} forwarded");
            Assert.True(bounded, $"only {ended} of {Total} connections were reset: the rest wait for stream credit without a bound");
            Assert.InRange(Volatile.Read(ref ended), Total - Waiting - Streams, Total - Waiting);
        }
        finally
        {
            foreach (var s in sockets) s.Dispose();
            holder.Stop();
            await accepting;
            foreach (var c in held) c.Dispose();
        }
    }

    private static AsportRelayClient Legitimate(IPEndPoint relay, IPEndPoint local, int maxForwardedStreams = AsportRelayClient.MaxForwardedStreams) =>
        new(AsportRelayProcess.ClientOptions(relay, local) with { MaxForwardedStreams = maxForwardedStreams }, NullLogger.Instance);

    /// <summary>Accepts one TCP connection and hashes everything it carries.</summary>
    internal sealed class HashingSink : IAsyncDisposable
    {
        private readonly TcpListener _listener = new(IPAddress.Loopback, 0);
        private readonly Task _run;
        private long _received;
        private volatile bool _completed;

        public HashingSink()
        {
            _listener.Start();
            _run = Task.Run(RunAsync);
        }

        public IPEndPoint EndPoint => (IPEndPoint)_listener.LocalEndpoint;
        public long Received => Interlocked.Read(ref _received);
        public bool Completed => _completed;
        public string? Hash { get; private set; }

        private async Task RunAsync()
        {
            try
            {
                using var c = await _listener.AcceptTcpClientAsync();
                using var h = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
                var buf = new byte[256 * 1024];
                var s = c.GetStream();
                int n;
                while ((n = await s.ReadAsync(buf)) > 0)
                {
                    h.AppendData(buf, 0, n);
                    Interlocked.Add(ref _received, n);
                }
                Hash = Convert.ToHexString(h.GetHashAndReset());
                _completed = true;
            }
            catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException) { }
        }

        public async ValueTask DisposeAsync()
        {
            _listener.Stop();
            await _run;
        }
    }
}

/// <summary>An on-path observer between one QUIC client and its server: forwards datagrams both ways and
/// keeps the destination connection id (16 bytes, spec/asport.md §2) of the client's latest short-header packet.</summary>
internal sealed class UdpTap : IDisposable
{
    private readonly Socket _front = new(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
    private readonly Socket _back = new(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
    private readonly IPEndPoint _server;
    private readonly CancellationTokenSource _stop = new();
    private EndPoint? _client;
    private byte[]? _dcid;

    public UdpTap(IPEndPoint server)
    {
        _server = server;
        _front.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        _back.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        _front.ReceiveBufferSize = _back.ReceiveBufferSize = 4 << 20;
        _ = Task.Run(() => ForwardAsync(fromClient: true));
        _ = Task.Run(() => ForwardAsync(fromClient: false));
    }

    public IPEndPoint EndPoint => (IPEndPoint)_front.LocalEndPoint!;
    public byte[]? ClientDcid => Volatile.Read(ref _dcid);

    /// <summary>One direction: client → server (noting the DCID of short-header packets), or server → client.</summary>
    private async Task ForwardAsync(bool fromClient)
    {
        var buf = new byte[65536];
        EndPoint any = new IPEndPoint(IPAddress.Any, 0);
        var (from, to) = fromClient ? (_front, _back) : (_back, _front);
        while (!_stop.IsCancellationRequested)
        {
            SocketReceiveFromResult r;
            try { r = await from.ReceiveFromAsync(buf, any, _stop.Token); }
            catch (SocketException) { continue; }
            catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException) { return; }
            if (fromClient)
            {
                _client = r.RemoteEndPoint;
                if (r.ReceivedBytes >= 17 && (buf[0] & 0x80) == 0) Volatile.Write(ref _dcid, buf.AsSpan(1, 16).ToArray());
            }
            var destination = fromClient ? _server : _client;
            if (destination is not null)
                try { to.SendTo(buf.AsSpan(0, r.ReceivedBytes), SocketFlags.None, destination); } catch (SocketException) { }
        }
    }

    public void Dispose()
    {
        _stop.Cancel();
        _front.Dispose();
        _back.Dispose();
        _stop.Dispose();
    }
}
