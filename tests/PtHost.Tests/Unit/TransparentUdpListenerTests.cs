using System.Net;
using System.Net.Sockets;
using System.Threading.Channels;
using Microsoft.Extensions.Logging.Abstractions;
using PtHost.Contract;
using PtHost.Transparent;

namespace PtHost.Tests.Unit;

/// <summary>
/// The transparent UDP front end's bookkeeping (spec/ipc.md §12.4) against an in-memory association (the process
/// tests carry real ones): one association per source, answers to their source, and the idle timeout.
/// </summary>
public class TransparentUdpListenerTests
{
    [Fact]
    public async Task Each_source_gets_its_own_association_which_ends_when_idle()
    {
        var factory = new EchoFactory();
        var counters = new TransportCounters();
        await using var listener = new TransparentUdpListener("t", new IPEndPoint(IPAddress.Loopback, 0), new Destination("192.0.2.1", 9), factory, counters,
            NullLogger.Instance, stunOnly: false, idleTimeout: TimeSpan.FromMilliseconds(400), sweepInterval: TimeSpan.FromMilliseconds(50));
        listener.Start();
        using var a = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
        using var b = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
        a.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        b.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        byte[] answer = new byte[100];
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(20));
        await a.SendToAsync("from a"u8.ToArray(), listener.LocalEndPoint);
        await b.SendToAsync("from b"u8.ToArray(), listener.LocalEndPoint);
        Assert.Equal("from a", System.Text.Encoding.ASCII.GetString(answer, 0, await a.ReceiveAsync(answer, cts.Token)));
        Assert.Equal("from b", System.Text.Encoding.ASCII.GetString(answer, 0, await b.ReceiveAsync(answer, cts.Token)));
        Assert.Equal(2, factory.Opened);
        Assert.Equal(2, listener.Associations);
        Assert.Equal("192.0.2.1:9", factory.Server);
        // Idle for longer than the timeout: both end (their associations disposed); the next datagram opens a new one.
        await Eventually.TrueAsync(() => listener.Associations == 0 && factory.Disposed == 2, "both associations ended when idle", TimeSpan.FromSeconds(10));
        await a.SendToAsync("again"u8.ToArray(), listener.LocalEndPoint);
        Assert.Equal("again", System.Text.Encoding.ASCII.GetString(answer, 0, await a.ReceiveAsync(answer, cts.Token)));
        Assert.Equal(3, factory.Opened);
        Assert.Equal(3, counters.Snapshot().SessionsOpened);
    }

    private sealed class EchoFactory : IClientFactory, IDatagramClientFactory
    {
        public int Opened, Disposed;
        public string? Server;

        public object? ParseSettings(ConnectionSettings settings) => null;

        public ValueTask<Stream> ConnectAsync(ConnectRequest request, CancellationToken cancellationToken) => throw new NotSupportedException();

        public ValueTask<IAssociation> OpenAssociationAsync(ConnectRequest request, CancellationToken cancellationToken)
        {
            Interlocked.Increment(ref Opened);
            Server = request.Destination.ToString();
            return ValueTask.FromResult<IAssociation>(new Echo(this));
        }

        public ValueTask DisposeAsync() => ValueTask.CompletedTask;

        /// <summary>Sends every datagram straight back, as if from its peer.</summary>
        private sealed class Echo(EchoFactory owner) : IAssociation
        {
            private readonly Channel<(PeerAddress, byte[])> _back = Channel.CreateUnbounded<(PeerAddress, byte[])>();

            public int MaxDatagramSize => 65507;
            public PeerAddress RelayedAddress => default;

            public ValueTask SendAsync(PeerAddress peer, ReadOnlyMemory<byte> payload, CancellationToken cancellationToken)
            {
                _back.Writer.TryWrite((peer, payload.ToArray()));
                return ValueTask.CompletedTask;
            }

            public ValueTask<bool> CheckPeerAsync(PeerAddress peer, CancellationToken cancellationToken) => ValueTask.FromResult(true);

            public async ValueTask<(PeerAddress Peer, int Length)> ReceiveAsync(Memory<byte> buffer, CancellationToken cancellationToken)
            {
                var (peer, data) = await _back.Reader.ReadAsync(cancellationToken);
                data.CopyTo(buffer);
                return (peer, data.Length);
            }

            public ValueTask DisposeAsync()
            {
                Interlocked.Increment(ref owner.Disposed);
                return ValueTask.CompletedTask;
            }
        }
    }
}
