using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging.Abstractions;
using PtHost.Contract;
using PtHost.Turn;

namespace PtHost.Tests.Unit.Turn;

/// <summary>
/// The listener's sockets on loopback with a transport that carries datagrams natively
/// (<see cref="IDatagramClientFactory"/>, the way ASPORT or RUD plug in): TCP framing (RFC 5766 §11)
/// and the choice of the native path.
/// </summary>
public class TurnListenerTests
{
    private static readonly TimeSpan Wait = TimeSpan.FromSeconds(20);

    [Fact]
    public async Task Native_datagram_transport_is_used_and_tcp_frames_are_split_and_padded()
    {
        var factory = new NativeFactory();
        var options = new TurnOptions(new IPEndPoint(IPAddress.Loopback, 0), TurnServerTests.Realm,
            new Dictionary<string, string> { [TurnServerTests.User] = TurnServerTests.Password });
        await using var listener = new TurnListener("native", options, factory, NullLogger.Instance);
        listener.Start();
        using var tcp = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        await tcp.ConnectAsync(listener.LocalEndPoint);
        using var cts = new CancellationTokenSource(Wait);
        var reader = new TcpMessages(tcp);
        var key = Stun.LongTermKey(TurnServerTests.User, TurnServerTests.Realm, TurnServerTests.Password);

        // 401 first, then Allocate with the nonce; both requests written in one segment with a Binding between.
        await tcp.SendAsync(TurnServerTests.Build(StunMethod.Allocate, StunClass.Request, TurnServerTests.Tid(),
            (ref StunWriter w) => w.AddUInt32(StunAttribute.RequestedTransport, 17u << 24)), cts.Token);
        var challenge = new Parsed(await reader.NextAsync(cts.Token));
        Assert.Equal(401, challenge.ErrorCode);
        string nonce = challenge.String(StunAttribute.Nonce)!;
        byte[] Signed(int method, TurnServerTests.Attributes a) => TurnServerTests.Build(method, StunClass.Request, TurnServerTests.Tid(), (ref StunWriter w) =>
        {
            a(ref w);
            w.AddString(StunAttribute.Username, TurnServerTests.User);
            w.AddString(StunAttribute.Realm, TurnServerTests.Realm);
            w.AddString(StunAttribute.Nonce, nonce);
            w.AddIntegrity(key);
        });
        byte[] allocate = Signed(StunMethod.Allocate, (ref StunWriter w) => w.AddUInt32(StunAttribute.RequestedTransport, 17u << 24));
        byte[] binding = TurnServerTests.Build(StunMethod.Binding, StunClass.Request, TurnServerTests.Tid(), (ref StunWriter w) => { });
        await tcp.SendAsync((byte[])[.. allocate, .. binding], cts.Token);
        var answers = new[] { new Parsed(await reader.NextAsync(cts.Token)), new Parsed(await reader.NextAsync(cts.Token)) };
        Assert.Contains(answers, a => a.Method == StunMethod.Allocate && a.Class == StunClass.Success);
        Assert.Contains(answers, a => a.Method == StunMethod.Binding && a.Class == StunClass.Success);
        var session = Assert.Single(factory.Sessions);
        Assert.Equal(0, factory.StreamConnects);

        var peer = PeerAddress.From(new IPEndPoint(IPAddress.Parse("192.0.2.9"), 7000));
        await tcp.SendAsync(Signed(StunMethod.ChannelBind, (ref StunWriter w) =>
        {
            w.AddUInt32(StunAttribute.ChannelNumber, 0x4000u << 16);
            w.AddXorAddress(StunAttribute.XorPeerAddress, peer);
        }), cts.Token);
        Assert.Equal(StunClass.Success, new Parsed(await reader.NextAsync(cts.Token)).Class);

        // ChannelData of 5 bytes is padded to 8 on TCP; two of them back to back, split across two writes.
        byte[] twice = [0x40, 0x00, 0x00, 0x05, 1, 2, 3, 4, 5, 0, 0, 0, 0x40, 0x00, 0x00, 0x05, 6, 7, 8, 9, 10, 0, 0, 0];
        await tcp.SendAsync(twice.AsMemory(0, 10), cts.Token);
        await tcp.SendAsync(twice.AsMemory(10), cts.Token);
        await Eventually.HoldsWithinAsync(() => session.Sent.Count >= 2, TimeSpan.FromSeconds(5));
        Assert.Equal([new byte[] { 1, 2, 3, 4, 5 }, [6, 7, 8, 9, 10]], session.Sent.Select(s => s.Payload));

        session.Deliver(peer, [42, 43, 44]);
        Assert.Equal(new byte[] { 0x40, 0x00, 0x00, 0x03, 42, 43, 44, 0 }, await reader.NextAsync(cts.Token));
    }

    [Fact]
    public void Transport_that_cannot_carry_udp_gets_no_listener()
    {
        var options = new TurnOptions(new IPEndPoint(IPAddress.Loopback, 0), "r", new Dictionary<string, string> { ["u"] = "p" });
        Assert.Throws<TransportOptionsException>(() => new TurnListener("streams-only", options, new StreamOnlyFactory(), NullLogger.Instance));
    }

    /// <summary>Splits a TCP stream into STUN messages and padded ChannelData (RFC 5766 §11).</summary>
    private sealed class TcpMessages(Socket socket)
    {
        private readonly byte[] _buffer = new byte[70000];
        private int _length;

        public async Task<byte[]> NextAsync(CancellationToken ct)
        {
            while (true)
            {
                if (_length >= 4)
                {
                    int n = (_buffer[0] & 0xC0) == 0x40
                        ? Stun.Pad(4 + BinaryPrimitives.ReadUInt16BigEndian(_buffer.AsSpan(2)))
                        : Stun.HeaderLength + BinaryPrimitives.ReadUInt16BigEndian(_buffer.AsSpan(2));
                    if (_length >= n)
                    {
                        byte[] message = _buffer[..n];
                        Buffer.BlockCopy(_buffer, n, _buffer, 0, _length - n);
                        _length -= n;
                        return message;
                    }
                }
                int read = await socket.ReceiveAsync(_buffer.AsMemory(_length), SocketFlags.None, ct);
                if (read == 0) throw new EndOfStreamException();
                _length += read;
            }
        }
    }

    private class StreamOnlyFactory : IClientFactory
    {
        public int StreamConnects;
        public object? ParseSettings(ConnectionSettings settings) => null;
        public ValueTask<Stream> ConnectAsync(ConnectRequest request, CancellationToken cancellationToken)
        {
            Interlocked.Increment(ref StreamConnects);
            throw new TransportConnectException(ConnectFailure.General, "streams are not used here");
        }
        public TransportStats GetStats() => new(0, 0, 0, 0, 0);
        public ValueTask DisposeAsync() => ValueTask.CompletedTask;
    }

    private sealed class NativeFactory : StreamOnlyFactory, IDatagramClientFactory, IStreamCarrier
    {
        public List<FakeSession> Sessions { get; } = [];

        public ValueTask<IAssociation> OpenAssociationAsync(ConnectRequest request, CancellationToken cancellationToken)
        {
            Assert.Equal(SessionKind.Datagram, request.Kind);
            var s = new FakeSession();
            lock (Sessions) Sessions.Add(s);
            return ValueTask.FromResult<IAssociation>(s);
        }
    }
}
