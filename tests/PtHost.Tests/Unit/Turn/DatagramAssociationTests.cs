using System.IO.Pipelines;
using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging.Abstractions;
using PtHost.Contract;
using PtHost.Net.Udp;
using PtHost.Net;

namespace PtHost.Tests.Unit.Turn;

/// <summary>UDP carried in streams (spec/turn.md §5): the frame, the peer policy, and both ends of an association.</summary>
public class DatagramAssociationTests
{
    private static readonly TimeSpan Wait = TimeSpan.FromSeconds(20);

    private static PeerAddress P(string ip, int port) => PeerAddress.From(new IPEndPoint(IPAddress.Parse(ip), port));

    [Fact]
    public void Ipv4_frame_is_length_type_atyp_address_port_payload()
    {
        byte[] frame = new byte[64];
        int n = DatagramFrame.Write(frame, DatagramFrameType.Data, P("192.0.2.1", 3478), "hi"u8);
        Assert.Equal(Convert.FromHexString("000a" + "00" + "01" + "c0000201" + "0d96" + "6869"), frame[..n]);
    }

    [Fact]
    public void Ipv6_frame_round_trips()
    {
        byte[] frame = new byte[64];
        var peer = P("2001:db8::1", 5000);
        int n = DatagramFrame.Write(frame, DatagramFrameType.Check, peer, default);
        Assert.Equal(22, n);
        Assert.Equal(n, DatagramFrame.TryParse(frame.AsSpan(0, n + 5), out var type, out var back, out var payload));
        Assert.Equal(DatagramFrameType.Check, type);
        Assert.Equal(peer, back);
        Assert.Equal(0, payload.End.Value - payload.Start.Value);
    }

    [Fact]
    public void Partial_frame_needs_more_bytes()
    {
        byte[] frame = new byte[64];
        int n = DatagramFrame.Write(frame, DatagramFrameType.Data, P("192.0.2.1", 1), "abc"u8);
        for (int i = 0; i < n; i++) Assert.Equal(0, DatagramFrame.TryParse(frame.AsSpan(0, i), out _, out _, out _));
    }

    [Theory]
    [InlineData("0008" + "00" + "03" + "c0000201" + "0001")] // unknown ATYP
    [InlineData("0004" + "00" + "01" + "c000")]             // LENGTH too short for an IPv4 address and port
    [InlineData("0010" + "00" + "04" + "00000000")]         // LENGTH too short for an IPv6 address and port
    public void Malformed_frame_is_refused(string hex) =>
        Assert.Equal(-1, DatagramFrame.TryParse(Convert.FromHexString(hex), out _, out _, out _));

    [Fact]
    public void Random_bytes_never_make_the_frame_parser_throw_or_overrun()
    {
        var random = new Random(5766);
        byte[] data = new byte[128];
        for (int i = 0; i < 20000; i++)
        {
            int n = random.Next(data.Length);
            random.NextBytes(data.AsSpan(0, n));
            if (i % 2 == 0 && n > 3) data[3] = (byte)(i % 4 == 0 ? 1 : 4);
            int length = DatagramFrame.TryParse(data.AsSpan(0, n), out _, out _, out var payload);
            Assert.InRange(length, -1, n);
            if (length > 0) Assert.InRange(payload.End.Value, payload.Start.Value, length);
        }
    }

    // ---- peer policy (spec/turn.md §6.1) -------------------------------------------------------------

    [Theory]
    [InlineData("127.0.0.1")]
    [InlineData("::ffff:127.0.0.1")]
    [InlineData("0.0.0.0")]
    [InlineData("0.1.2.3")]
    [InlineData("::")]
    [InlineData("::1")]
    [InlineData("::127.0.0.1")]
    [InlineData("64:ff9b::7f00:1")]
    [InlineData("10.1.2.3")]
    [InlineData("::ffff:10.1.2.3")]
    [InlineData("172.16.0.1")]
    [InlineData("172.31.255.255")]
    [InlineData("192.168.1.1")]
    [InlineData("100.64.0.1")]
    [InlineData("169.254.1.1")]
    [InlineData("224.0.0.1")]
    [InlineData("239.255.255.250")]
    [InlineData("255.255.255.255")]
    [InlineData("fe80::1")]
    [InlineData("fc00::1")]
    [InlineData("fd12:3456::1")]
    [InlineData("ff02::1")]
    public void Catch_all_allow_list_does_not_open_special_ranges(string ip)
    {
        var policy = new UdpPeerPolicy(AllowList.Parse(["0.0.0.0/0", "::/0"]));
        Assert.NotNull(policy.Refuse(P(ip, 3478)));
    }

    [Theory]
    [InlineData("8.8.8.8")]
    [InlineData("::ffff:8.8.8.8")]
    [InlineData("172.32.0.1")]
    [InlineData("2001:4860::8888")]
    public void Catch_all_allow_list_allows_public_addresses(string ip) =>
        Assert.Null(new UdpPeerPolicy(AllowList.Parse(["0.0.0.0/0", "::/0"])).Refuse(P(ip, 3478)));

    [Fact]
    public void Explicit_entry_inside_a_special_range_allows_it_mapped_form_included()
    {
        var policy = new UdpPeerPolicy(AllowList.Parse(["127.0.0.1", "10.0.0.0/8:53"]));
        Assert.Null(policy.Refuse(P("127.0.0.1", 3480)));
        Assert.Null(policy.Refuse(P("::ffff:127.0.0.1", 3480)));
        Assert.NotNull(policy.Refuse(P("127.0.0.2", 3480)));
        Assert.Null(policy.Refuse(P("10.9.9.9", 53)));
        Assert.NotNull(policy.Refuse(P("10.9.9.9", 54)));
        Assert.NotNull(policy.Refuse(P("8.8.8.8", 53))); // not listed at all
        Assert.NotNull(policy.Refuse(P("127.0.0.1", 0))); // port 0 never
    }

    [Fact]
    public void Wide_entry_covering_a_special_range_does_not_open_it()
    {
        // 0.0.0.0/1 covers 10/8 and 127/8 but lies inside neither.
        var policy = new UdpPeerPolicy(AllowList.Parse(["0.0.0.0/1"]));
        Assert.NotNull(policy.Refuse(P("10.0.0.1", 1)));
        Assert.NotNull(policy.Refuse(P("127.0.0.1", 1)));
        Assert.Null(policy.Refuse(P("8.8.8.8", 1)));
    }

    // ---- plain's preamble for an association (spec/plain.md §2.5) ----------------------------------

    [Fact]
    public async Task Plain_preamble_for_a_udp_association_is_PTP_0x81_with_no_destination()
    {
        byte[] request = SessionPreamble.BuildRequest(null, SessionKind.Datagram);
        Assert.Equal(new byte[] { 0x50, 0x54, 0x50, 0x81, 0x00, 0x00 }, request);
        Assert.Equal(0, SessionPreamble.ParseHeader(request, out var kind));
        Assert.Equal(SessionKind.Datagram, kind);
        var (destination, readKind) = await SessionPreamble.ReadAsync(new MemoryStream(request), CancellationToken.None);
        Assert.Null(destination);
        Assert.Equal(SessionKind.Datagram, readKind);
        Assert.Equal(SessionKind.Stream, (await SessionPreamble.ReadAsync(new MemoryStream(SessionPreamble.BuildRequest(null)), CancellationToken.None)).Kind);
    }

    [Fact]
    public async Task Plain_udp_association_naming_a_destination_is_malformed()
    {
        byte[] request = [0x50, 0x54, 0x50, 0x81, 0x00, 0x03, (byte)'a', (byte)':', (byte)'1'];
        Assert.NotNull((await SessionPreamble.ReadAsync(new MemoryStream(request), CancellationToken.None)).Error);
    }

    // ---- both ends over an in-memory stream, real UDP on loopback ------------------------------------

    [Fact]
    public async Task Client_session_and_server_association_carry_datagrams_to_an_allowed_peer_only()
    {
        using var echo = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
        echo.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        var echoAddress = PeerAddress.From((IPEndPoint)echo.LocalEndPoint!);
        using var other = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
        other.Bind(new IPEndPoint(IPAddress.Parse("127.0.0.2"), 0));
        var otherAddress = PeerAddress.From((IPEndPoint)other.LocalEndPoint!);
        using var cts = new CancellationTokenSource(Wait);
        var echoTask = Task.Run(async () =>
        {
            byte[] b = new byte[2048];
            var from = new IPEndPoint(IPAddress.Any, 0);
            while (!cts.IsCancellationRequested)
            {
                var r = await echo.ReceiveFromAsync(b, from, cts.Token);
                await echo.SendToAsync(b.AsMemory(0, r.ReceivedBytes), r.RemoteEndPoint, cts.Token);
            }
        });

        var host = new ServerAssociations(null, AllowList.Parse([$"127.0.0.1:{echoAddress.Port}"]), NullLogger.Instance);
        var onward = await host.OpenAsync(1, cts.Token);
        var (clientSide, serverSide) = DuplexPair();
        var relay = Relay.RunAsync(serverSide, onward, null, null, cts.Token);
        await using var session = await StreamAssociation.StartAsync(clientSide, cts.Token);
        Assert.NotEqual(0, session.RelayedAddress.Port);

        byte[] buffer = new byte[2048];
        var receive = session.ReceiveAsync(buffer, cts.Token).AsTask();
        Assert.True(await session.CheckPeerAsync(echoAddress, cts.Token));
        Assert.False(await session.CheckPeerAsync(otherAddress, cts.Token));
        Assert.False(await session.CheckPeerAsync(P("::ffff:127.0.0.1", 9), cts.Token));
        await session.SendAsync(otherAddress, "refused"u8.ToArray(), cts.Token);
        await session.SendAsync(echoAddress, "ping"u8.ToArray(), cts.Token);
        var (peer, n) = await receive.WaitAsync(cts.Token);
        Assert.Equal(echoAddress, peer);
        Assert.Equal("ping"u8.ToArray(), buffer[..n]);
        Assert.Equal(0, other.Available); // the refused peer got nothing
        Assert.Equal(1, host.Open);

        await session.DisposeAsync();
        await relay.WaitAsync(cts.Token);
        await onward.DisposeAsync();
        Assert.Equal(0, host.Open);
        cts.Cancel();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => echoTask);
    }

    [Fact]
    public async Task Congested_association_makes_a_waiting_sender_wait_and_drops_only_over_its_byte_limit()
    {
        using var cts = new CancellationTokenSource(Wait);
        var (session, serverSide) = await StartOverPipeAsync(cts.Token); // the pipe stops taking writes once 64 KiB are unread
        await using var owned = session;
        var peer = P("127.0.0.1", 9);
        byte[] payload = new byte[1200];
        int frame = DatagramFrame.HeaderLength(peer) + payload.Length;

        // Nobody reads the server side: the queue grows until the sender is asked to wait, nothing dropped.
        int accepted = 0;
        ValueTask pending;
        while ((pending = session.SendAsync(peer, payload, cts.Token)).IsCompleted)
            Assert.True(++accepted * frame < StreamAssociation.QueueBytes, "SendAsync never asked its caller to wait");
        Assert.Equal(0, session.Dropped);
        Assert.True((accepted + 1) * frame >= StreamAssociation.PauseBytes);

        // A sender that does not wait loses datagrams only once the queue is over its byte limit, and they are counted.
        int more = StreamAssociation.QueueBytes / frame;
        for (int i = 0; i < more; i++) _ = session.SendAsync(peer, payload, cts.Token);
        Assert.InRange(session.Dropped, 1, more);
        Assert.False(pending.IsCompleted);

        // The server process reads again: the waiting sender goes on, and every queued frame arrives.
        long bytes = 0;
        var drain = Task.Run(async () =>
        {
            byte[] b = new byte[65536];
            int n;
            while ((n = await serverSide.ReadAsync(b, cts.Token)) > 0) Interlocked.Add(ref bytes, n);
        });
        await pending.AsTask().WaitAsync(cts.Token);
        await Eventually.TrueAsync(() => Interlocked.Read(ref bytes) == session.Sent * frame, "every queued frame at the server side");
        Assert.Equal(accepted + 1 + more - session.Dropped, session.Sent);
        await session.DisposeAsync();
        cts.Cancel();
        try { await drain; }
        catch (OperationCanceledException) { } // the drain ends with the stream or with the token
    }

    [Fact]
    public async Task Frames_queued_in_a_batch_are_written_when_it_ends_before_it_returns()
    {
        using var cts = new CancellationTokenSource(Wait);
        var (session, serverSide) = await StartOverPipeAsync(cts.Token); // writes under 64 KiB unread complete at once
        await using var owned = session;
        var peer = P("127.0.0.1", 9);
        byte[] payload = new byte[100];
        int frame = DatagramFrame.HeaderLength(peer) + payload.Length;
        byte[] b = new byte[65536];

        // The writer takes frames sent outside a batch; once it is parked, a batch's frames are
        // written by EndBatch itself: all three, in one write, readable before anything awaits.
        bool inline = false;
        for (int attempt = 0; attempt < 100 && !inline; attempt++)
        {
            Assert.True(session.SendAsync(peer, payload, cts.Token).IsCompleted);
            Assert.Equal(frame, await serverSide.ReadAsync(b, cts.Token));
            StreamAssociation.BeginBatch();
            try
            {
                for (int i = 0; i < 3; i++) Assert.True(session.SendAsync(peer, payload, cts.Token).IsCompleted);
            }
            finally
            {
                StreamAssociation.EndBatch();
            }
            var read = serverSide.ReadAsync(b, cts.Token);
            bool ready = read.IsCompleted; // before any await: only EndBatch can have written
            int got = await read;
            inline = ready && got == 3 * frame;
            while (got < 3 * frame) got += await serverSide.ReadAsync(b, cts.Token);
            Assert.Equal(3 * frame, got);
        }
        Assert.True(inline, "no batch was written by EndBatch");
        Assert.Equal(0, session.Dropped);
    }

    [Fact]
    public async Task Bound_server_burst_from_the_target_arrives_whole_and_in_order_as_frames_for_that_peer()
    {
        // spec/turn.md §5.4/§5.5: a burst queued on a bound socket is read in recvmmsg batches whose frames share a
        // queue entry (at most 64 KiB, a longer frame alone); every datagram still arrives as its own frame, in order.
        using var target = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
        target.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        target.SendBufferSize = 4 << 20;
        using var cts = new CancellationTokenSource(Wait);
        var host = new ServerAssociations(new Destination((IPEndPoint)target.LocalEndPoint!), null, NullLogger.Instance);
        await using var onward = await host.OpenAsync(1, cts.Token);
        var peer = P("192.0.2.7", 4000);
        byte[] hello = new byte[64];
        await onward.WriteAsync(hello.AsMemory(0, DatagramFrame.Write(hello, DatagramFrameType.Data, peer, "hello"u8)), cts.Token);
        byte[] b = new byte[65536];
        var r = await target.ReceiveFromAsync(b, new IPEndPoint(IPAddress.Any, 0), cts.Token);
        Assert.Equal("hello"u8.ToArray(), b[..r.ReceivedBytes]);

        // Sizes that fill 64 KiB entries unevenly, and two datagrams longer than half an entry.
        int[] sizes = [.. Enumerable.Range(0, 300).Select(i => i == 100 ? 40000 : i == 101 ? 60000 : 1 + (i * 97) % 1400)];
        for (int i = 0; i < sizes.Length; i++)
        {
            byte[] d = new byte[sizes[i]];
            d.AsSpan().Fill((byte)i);
            d[0] = (byte)(i >> 8);
            await target.SendToAsync(d, r.RemoteEndPoint, cts.Token);
        }

        byte[] stream = new byte[1 << 22];
        int end = 0, start = 0, seen = -1; // -1: RELAYED first
        while (seen < sizes.Length)
        {
            int n = DatagramFrame.TryParse(stream.AsSpan(start, end - start), out var type, out var from, out var payload);
            Assert.True(n >= 0);
            if (n == 0)
            {
                int read = await onward.ReadAsync(stream.AsMemory(end), cts.Token);
                Assert.NotEqual(0, read);
                end += read;
                continue;
            }
            var bytes = stream.AsSpan(start, n)[payload];
            if (seen < 0) Assert.Equal(DatagramFrameType.Relayed, type);
            else
            {
                Assert.Equal(DatagramFrameType.Data, type);
                Assert.Equal(peer, from);
                Assert.Equal(sizes[seen], bytes.Length);
                Assert.Equal((byte)(seen >> 8), bytes[0]);
                if (bytes.Length > 1) Assert.Equal((byte)seen, bytes[^1]);
            }
            seen++;
            start += n;
        }
    }

    [Fact]
    public async Task Association_limit_refuses_the_next_one()
    {
        var host = new ServerAssociations(null, AllowList.Parse(["127.0.0.1"]), NullLogger.Instance, maxAssociations: 1);
        await using var first = await host.OpenAsync(1, CancellationToken.None);
        var e = await Assert.ThrowsAsync<TransportConnectException>(async () => await host.OpenAsync(2, CancellationToken.None));
        Assert.Equal(ConnectFailure.General, e.Failure);
    }

    /// <summary>A client association over an in-memory pipe whose server side has sent RELAYED.</summary>
    private static async Task<(StreamAssociation Session, Stream ServerSide)> StartOverPipeAsync(CancellationToken ct)
    {
        var (clientSide, serverSide) = DuplexPair();
        byte[] relayed = new byte[DatagramFrame.MaxHeaderLength];
        await serverSide.WriteAsync(relayed.AsMemory(0, DatagramFrame.Write(relayed, DatagramFrameType.Relayed, P("127.0.0.1", 1), default)), ct);
        return (await StreamAssociation.StartAsync(clientSide, ct), serverSide);
    }

    /// <summary>Two connected in-memory duplex streams.</summary>
    internal static (Stream A, Stream B) DuplexPair()
    {
        var ab = new Pipe();
        var ba = new Pipe();
        return (new DuplexStream(ba.Reader, ab.Writer), new DuplexStream(ab.Reader, ba.Writer));
    }

    private sealed class DuplexStream(PipeReader reader, PipeWriter writer) : Stream, IHalfClosable
    {
        private readonly Stream _in = reader.AsStream();
        private readonly Stream _out = writer.AsStream();
        public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default) => _in.ReadAsync(buffer, cancellationToken);
        public override async ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
        {
            await _out.WriteAsync(buffer, cancellationToken);
            await _out.FlushAsync(cancellationToken);
        }
        public void ShutdownWrite() => writer.Complete();
        public override int Read(byte[] buffer, int offset, int count) => _in.Read(buffer, offset, count);
        public override void Write(byte[] buffer, int offset, int count) => _out.Write(buffer, offset, count);
        protected override void Dispose(bool disposing)
        {
            if (disposing)
            {
                writer.Complete();
                reader.Complete();
            }
            base.Dispose(disposing);
        }
        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => true;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
        public override void Flush() => _out.Flush();
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
    }
}
