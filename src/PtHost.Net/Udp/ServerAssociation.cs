using System.Buffers;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Threading.Channels;
using Microsoft.Extensions.Logging;
using PtHost.Contract;

namespace PtHost.Net.Udp;

/// <summary>
/// The server process's side of UDP associations (spec/turn.md §5.4, §6): opens one per
/// <see cref="SessionKind.Datagram"/> session, within a process-wide limit.
/// </summary>
public sealed class ServerAssociations
{
    public const int DefaultMaxAssociations = 1024;
    private readonly Destination? _target;
    private readonly UdpPeerPolicy? _policy;
    private readonly ILogger _log;
    private readonly int _max;
    private int _open;

    public ServerAssociations(Destination? target, AllowList? allow, ILogger log, int maxAssociations = DefaultMaxAssociations)
    {
        _target = target;
        _policy = allow is null ? null : new UdpPeerPolicy(allow);
        _log = log;
        _max = maxAssociations;
    }

    /// <summary>Associations open now.</summary>
    public int Open => Volatile.Read(ref _open);

    /// <summary>
    /// Opens an association for session <paramref name="session"/> (a number for logs): a stream that
    /// takes frames from the transport and gives frames back. Throws <see cref="TransportConnectException"/>
    /// (limit reached: 01; target unresolvable: 04).
    /// </summary>
    public async ValueTask<Stream> OpenAsync(long session, CancellationToken cancellationToken)
    {
        if (Interlocked.Increment(ref _open) > _max)
        {
            Interlocked.Decrement(ref _open);
            throw new TransportConnectException(ConnectFailure.General, $"UDP association refused: {_max} are open");
        }
        try
        {
            IPEndPoint? target = null;
            if (_target is { } t)
            {
                IPAddress address = t.Address ?? (await ResolveAsync(t, cancellationToken).ConfigureAwait(false));
                target = new IPEndPoint(address, t.Port);
            }
            var association = new ServerAssociation(target, _policy, _log, session, () => Interlocked.Decrement(ref _open));
            _log.RelayedAddress(session, association.Relayed);
            return association;
        }
        catch
        {
            Interlocked.Decrement(ref _open);
            throw;
        }
    }

    private static async Task<IPAddress> ResolveAsync(Destination d, CancellationToken ct)
    {
        try
        {
            var found = await Dns.GetHostAddressesAsync(d.Host, ct).ConfigureAwait(false);
            return found.Length > 0 ? found[0] : throw new TransportConnectException(ConnectFailure.HostUnreachable, $"{d.Host} has no addresses");
        }
        catch (SocketException e)
        {
            throw new TransportConnectException(ConnectFailure.HostUnreachable, $"cannot resolve {d.Host}: {e.SocketErrorCode}", e);
        }
    }
}

/// <summary>
/// One UDP association in the server process (spec/turn.md §5.4). As a stream: what the transport
/// writes is parsed into frames and sent as datagrams; what it reads is frames built from the
/// datagrams that came back. A free server uses one UDP socket for every peer and accepts replies
/// only from peers it has sent to; a bound server uses one socket per peer, connected to the target.
/// </summary>
internal sealed class ServerAssociation : Stream, IHalfClosable
{
    public const int QueueFrames = 2048;
    public const int MaxPeers = 256;
    /// <summary>SO_RCVBUF of each UDP socket: room for bursts while the transport is busy.</summary>
    public const int ReceiveBuffer = 1 << 20;
    /// <summary>Datagrams a busy bound socket reads per recvmmsg(2) (spec/turn.md §5.4): its slots are this many largest payloads.</summary>
    public const int BoundBatch = 8;
    /// <summary>A busy socket's frames are queued in segments of up to this many bytes, so the queue's bound in bytes stays what one frame per entry gives.</summary>
    public const int SegmentBytes = 65536;
    /// <summary>Bound sockets read in batches at once, process-wide (each holds <see cref="BoundBatch"/> pinned slots of the largest payload); busy sockets beyond them are read one datagram at a time.</summary>
    public const int MaxBatchedSockets = 64;
    private static int s_batchedSockets;
    private readonly IPEndPoint? _target;
    private readonly UdpPeerPolicy? _policy;
    private readonly ILogger _log;
    private readonly long _id;
    private readonly Action _closed;
    // The reader (the relay towards the transport) goes on on the receiving thread: no hop per
    // datagram back to the client process (spec/turn.md §5.4).
    private readonly Channel<(byte[] Buffer, int Offset, int Length)> _toClient =
        Channel.CreateBounded<(byte[], int, int)>(new BoundedChannelOptions(QueueFrames) { SingleReader = true, FullMode = BoundedChannelFullMode.Wait, AllowSynchronousContinuations = true });
    private readonly CancellationTokenSource _stop = new();
    private readonly Socket? _shared;
    private readonly Dictionary<PeerAddress, PeerState> _peers = [];
    private readonly HashSet<PeerAddress> _contacted = []; // addresses (port 0) this association has sent to
    private readonly Lock _lock = new();
    // Never released: the relay may abort (and dispose) this stream while a write is still in it.
    private readonly FrameBuffer _in = new("the client process");
    private readonly PooledSegmentReader _reader;
    private readonly DatagramBatchSender _send;
    private long _refusedDatagrams, _fromPeers;
    private int _ended;

    private sealed class PeerState(bool allowed, SocketAddress? address, Socket? socket)
    {
        public readonly bool Allowed = allowed;
        public readonly SocketAddress? Address = address;
        public readonly Socket? Socket = socket;
    }

    public ServerAssociation(IPEndPoint? target, UdpPeerPolicy? policy, ILogger log, long id, Action closed)
    {
        _reader = new PooledSegmentReader(_toClient.Reader);
        _send = new DatagramBatchSender(yieldAfterBursts: target is not null); // a bound server's target: the application it fronts
        _target = target;
        _policy = policy;
        _log = log;
        _id = id;
        _closed = closed;
        if (target is null)
        {
            _shared = OpenShared();
            _shared.ReceiveBufferSize = ReceiveBuffer;
            Relayed = PeerAddress.From((IPEndPoint)_shared.LocalEndPoint!).Unmapped();
            _ = ReceiveSharedAsync(_stop.Token);
        }
        else
        {
            Relayed = PeerAddress.From(target);
        }
        byte[] frame = ArrayPool<byte>.Shared.Rent(DatagramFrame.MaxHeaderLength);
        _toClient.Writer.TryWrite((frame, 0, DatagramFrame.Write(frame, DatagramFrameType.Relayed, Relayed, default)));
    }

    /// <summary>A dual-stack socket on <c>[::]:0</c>; an IPv4 socket on <c>0.0.0.0:0</c> where the host has no IPv6.</summary>
    private static Socket OpenShared()
    {
        var socket = new Socket(AddressFamily.InterNetworkV6, SocketType.Dgram, ProtocolType.Udp);
        try
        {
            socket.DualMode = true;
            socket.Bind(new IPEndPoint(IPAddress.IPv6Any, 0));
            return socket;
        }
        catch (SocketException)
        {
            socket.Dispose();
        }
        socket = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
        try
        {
            socket.Bind(new IPEndPoint(IPAddress.Any, 0));
            return socket;
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    /// <summary>What the RELAYED frame reports: the shared socket's port (its address is the wildcard), or the bound target.</summary>
    public PeerAddress Relayed { get; }

    // ---- transport → UDP -------------------------------------------------------------------

    public override void Write(ReadOnlySpan<byte> buffer) => throw new NotSupportedException("use WriteAsync");

    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException("use WriteAsync");

    /// <summary>
    /// Parses the frames the transport wrote and sends their datagrams, a batch per sendmmsg(2)
    /// while they go to the same socket (spec/turn.md §5.4).
    /// </summary>
    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(System.Runtime.CompilerServices.PoolingAsyncValueTaskMethodBuilder))]
    public override async ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
    {
        while (buffer.Length > 0)
        {
            buffer = _in.Append(buffer);
            while (_in.TryTake(out var type, out var peer, out _, out var payload))
            {
                if (type == DatagramFrameType.Data)
                {
                    var state = Peer(peer);
                    if (!state.Allowed)
                    {
                        _refusedDatagrams++; // dropped; the client learns it from CHECK (spec/turn.md §5.3)
                        continue;
                    }
                    if (state.Socket is null)
                        lock (_lock) if (_contacted.Count < MaxPeers) _contacted.Add(peer.Unmapped().WithPort(0));
                    var socket = state.Socket ?? _shared!;
                    MemoryMarshal.TryGetArray<byte>(payload, out var slice);
                    if (!_send.CanAdd(socket, slice.Array!)) await SendBatchAsync(cancellationToken).ConfigureAwait(false);
                    _send.Add(socket, slice.Array!, slice.Offset, slice.Count, state.Address);
                }
                else if (type == DatagramFrameType.Check) Answer(peer, Peer(peer).Allowed ? DatagramFrameType.Allowed : DatagramFrameType.Refused);
                // other types are skipped (spec/turn.md §5.2)
            }
            await SendBatchAsync(cancellationToken).ConfigureAwait(false); // before the next Append moves the frames
        }
    }

    private ValueTask SendBatchAsync(CancellationToken ct) => _send.Count == 0 ? ValueTask.CompletedTask : _send.FlushAsync(ct);

    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    private PeerState Peer(PeerAddress peer)
    {
        lock (_lock)
        {
            if (_peers.TryGetValue(peer, out var known)) return known;
            if (_peers.Count >= MaxPeers)
            {
                _log.PeerLimit(_id, peer, MaxPeers);
                return new PeerState(false, null, null); // not remembered
            }
            PeerState state;
            if (_target is not null)
            {
                var socket = new Socket(_target.AddressFamily, SocketType.Dgram, ProtocolType.Udp);
                socket.ReceiveBufferSize = ReceiveBuffer;
                socket.Connect(_target);
                state = new PeerState(true, null, socket);
                _ = ReceiveBoundAsync(socket, peer, _stop.Token);
            }
            else
            {
                string? refused = _policy!.Refuse(peer);
                var address = peer.Unmapped().ToIPAddress();
                bool dual = _shared!.AddressFamily == AddressFamily.InterNetworkV6;
                if (refused is null && !dual && address.AddressFamily == AddressFamily.InterNetworkV6) refused = "this host has no IPv6";
                if (refused is not null) _log.PeerRefused(_id, peer, refused);
                var endPoint = new IPEndPoint(dual && address.AddressFamily == AddressFamily.InterNetwork ? address.MapToIPv6() : address, peer.Port);
                state = new PeerState(refused is null, refused is null ? endPoint.Serialize() : null, null);
            }
            _peers[peer] = state;
            if (!peer.Unmapped().Equals(peer)) _peers.TryAdd(peer.Unmapped(), state);
            return state;
        }
    }

    private void Answer(PeerAddress peer, DatagramFrameType type)
    {
        byte[] frame = ArrayPool<byte>.Shared.Rent(DatagramFrame.MaxHeaderLength);
        int n = DatagramFrame.Write(frame, type, peer, default);
        if (!_toClient.Writer.TryWrite((frame, 0, n))) ArrayPool<byte>.Shared.Return(frame);
    }

    // ---- UDP → transport -------------------------------------------------------------------

    private async Task ReceiveSharedAsync(CancellationToken ct)
    {
        var from = new SocketAddress(_shared!.AddressFamily);
        byte[] datagram = ArrayPool<byte>.Shared.Rent(DatagramFrame.MaxPayload);
        try
        {
            while (!ct.IsCancellationRequested)
            {
                int n;
                try { n = await _shared!.ReceiveFromAsync(datagram.AsMemory(0, DatagramFrame.MaxPayload), SocketFlags.None, from, ct).ConfigureAwait(false); }
                catch (SocketException e) when (IsTransient(e)) { continue; }
                var peer = PeerAddress.From(from).Unmapped();
                bool known;
                lock (_lock) known = _contacted.Contains(peer.WithPort(0));
                if (!known || !Peer(peer).Allowed) continue; // only peers this association sent to may answer
                _fromPeers++;
                Enqueue(datagram.AsSpan(0, n), peer);
            }
        }
        catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException or SocketException) { }
        finally
        {
            ArrayPool<byte>.Shared.Return(datagram);
        }
    }

    /// <summary>
    /// Reads a bound socket. While it is quiet, one datagram per receive, with no buffers beyond one datagram's; once a
    /// receive finds more queued behind it, the socket is busy for the rest of its life and is read up to
    /// <see cref="BoundBatch"/> at a time (recvmmsg(2)), the batch's frames queued as segments of up to
    /// <see cref="SegmentBytes"/>: one wake of the reader and one write towards the client process per batch, not per
    /// datagram (spec/turn.md §5.4).
    /// </summary>
    private async Task ReceiveBoundAsync(Socket socket, PeerAddress peer, CancellationToken ct)
    {
        byte[] datagram = ArrayPool<byte>.Shared.Rent(DatagramFrame.MaxPayload);
        DatagramBatchReceiver? batch = null;
        try
        {
            while (!ct.IsCancellationRequested)
            {
                if (batch is not null)
                {
                    int count = await batch.ReceiveAsync(socket, ct).ConfigureAwait(false);
                    Interlocked.Add(ref _fromPeers, count);
                    EnqueueBatch(batch, count, peer);
                    continue;
                }
                int n;
                try { n = await socket.ReceiveAsync(datagram.AsMemory(0, DatagramFrame.MaxPayload), SocketFlags.None, ct).ConfigureAwait(false); }
                catch (SocketException e) when (IsTransient(e)) { continue; }
                Interlocked.Increment(ref _fromPeers);
                Enqueue(datagram.AsSpan(0, n), peer);
                if (socket.Available > 0 && TakeBatchedSocket()) batch = new DatagramBatchReceiver(BoundBatch, DatagramFrame.MaxPayload);
            }
        }
        catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException or SocketException) { }
        finally
        {
            ArrayPool<byte>.Shared.Return(datagram);
            if (batch is not null) Interlocked.Decrement(ref s_batchedSockets);
        }
    }

    /// <summary>One of the process's <see cref="MaxBatchedSockets"/> batched sockets, if one is free.</summary>
    private static bool TakeBatchedSocket()
    {
        if (Interlocked.Increment(ref s_batchedSockets) <= MaxBatchedSockets) return true;
        Interlocked.Decrement(ref s_batchedSockets);
        return false;
    }

    /// <summary>Frames a batch's datagrams back to back into pooled segments of up to <see cref="SegmentBytes"/> (a longer frame gets one of its own) and queues each; a segment the queue refuses drops its datagrams.</summary>
    private void EnqueueBatch(DatagramBatchReceiver batch, int count, PeerAddress peer)
    {
        int header = DatagramFrame.HeaderLength(peer);
        byte[]? segment = null;
        int used = 0, frames = 0;
        for (int i = 0; i < count; i++)
        {
            var payload = batch.Packet(i).Span;
            int length = header + payload.Length;
            if (segment is not null && segment.Length - used < length)
            {
                Queue(segment, used, frames);
                segment = null;
            }
            if (segment is null)
            {
                segment = ArrayPool<byte>.Shared.Rent(Math.Max(length, SegmentBytes));
                used = frames = 0;
            }
            used += DatagramFrame.Write(segment.AsSpan(used), DatagramFrameType.Data, peer, payload);
            frames++;
        }
        if (segment is not null) Queue(segment, used, frames);
    }

    private void Queue(byte[] segment, int length, int datagrams)
    {
        if (_toClient.Writer.TryWrite((segment, 0, length))) return;
        ArrayPool<byte>.Shared.Return(segment);
        Interlocked.Add(ref _dropped, datagrams);
    }

    /// <summary>ICMP errors reported on a UDP socket (Linux); the association goes on.</summary>
    private static bool IsTransient(SocketException e) =>
        e.SocketErrorCode is SocketError.ConnectionReset or SocketError.ConnectionRefused or SocketError.HostUnreachable or SocketError.NetworkUnreachable;

    /// <summary>Frames a datagram into a pooled buffer of its own size and queues it; drops it when the queue is full.</summary>
    private void Enqueue(ReadOnlySpan<byte> datagram, PeerAddress peer)
    {
        byte[] frame = ArrayPool<byte>.Shared.Rent(DatagramFrame.HeaderLength(peer) + datagram.Length);
        Queue(frame, DatagramFrame.Write(frame, DatagramFrameType.Data, peer, datagram), 1);
    }

    private long _dropped;

    public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default) =>
        _reader.ReadAsync(buffer, cancellationToken);

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException("use ReadAsync");

    /// <summary>The client ended its direction: the association is over (spec/turn.md §5.4).</summary>
    public void ShutdownWrite() => End();

    private void End()
    {
        if (Interlocked.Exchange(ref _ended, 1) != 0) return;
        // The association's counters (spec/turn.md §5.4): what the benchmark reads per stage.
        _log.AssociationCounts(_id, _send.Sent, _send.Failed, _refusedDatagrams, Interlocked.Read(ref _fromPeers), Interlocked.Read(ref _dropped));
        _stop.Cancel();
        _toClient.Writer.TryComplete();
        _shared?.Dispose();
        lock (_lock)
            foreach (var p in _peers.Values) p.Socket?.Dispose();
        _closed();
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            End();
            _reader.ReturnQueued();
        }
        base.Dispose(disposing);
    }

    public override bool CanRead => true;
    public override bool CanSeek => false;
    public override bool CanWrite => true;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
    public override void Flush() { }
    public override Task FlushAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();
}
