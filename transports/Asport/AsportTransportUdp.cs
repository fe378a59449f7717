using System.Buffers;
using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using System.Threading.Channels;
using Microsoft.Extensions.Logging;
using PtHost.Contract;
using PtHost.Turn;

namespace PtHost.Transports.Asport;

/// <summary>
/// The asport transport's UDP mapping (spec/asport.md §6.2): every UDP datagram between the client
/// process and the public UDP port is exactly one frame of spec/turn.md §5.2 (LENGTH included), with
/// two frame types of this mapping only: OPEN and CLOSE (<see cref="AssociationFrames"/>).
/// </summary>
internal static class AsportUdpFrames
{
    public const DatagramFrameType Open = AssociationFrames.Open;
    public const DatagramFrameType Close = AssociationFrames.Close;
    /// <summary>The largest frame in one datagram: the largest UDP payload over IPv4.</summary>
    public const int MaxFrame = 65507;
    /// <summary>The largest datagram payload a TURN allocation can send this way (any peer family).</summary>
    public const int MaxPayload = MaxFrame - DatagramFrame.MaxHeaderLength;

    public static byte[] OpenFrame => AssociationFrames.OpenFrame;
    public static byte[] KeepaliveFrame => AssociationFrames.KeepaliveFrame;
    public static byte[] CloseFrame => AssociationFrames.CloseFrame;

    /// <summary>True when the datagram is exactly one well-formed frame.</summary>
    public static bool TryRead(ReadOnlySpan<byte> datagram, out DatagramFrameType type, out PeerAddress peer, out Range payload) =>
        AssociationFrames.TryRead(datagram, out type, out peer, out payload);
}

/// <summary>
/// Client process: one TURN allocation = one UDP socket connected to the announced public address
/// (spec/asport.md §6.2); the association's life is <see cref="FramedDatagramClientSession"/>'s, and a
/// change of the announced address ends it too.
/// </summary>
internal sealed class AsportDatagramSession : FramedDatagramClientSession
{
    /// <summary>Socket buffers: room for bursts while the TURN server is busy.</summary>
    public const int SocketBuffer = 1 << 20;

    private readonly Socket _socket;
    private CancellationTokenRegistration _addressGone;
    private bool _refusedSeen;

    private AsportDatagramSession(Socket socket, ILogger log) : base(log, 65536) => _socket = socket;

    public override int MaxDatagramSize => AsportUdpFrames.MaxPayload;

    /// <summary>The public UDP address this session sends to.</summary>
    public IPEndPoint Server => (IPEndPoint)_socket.RemoteEndPoint!;

    /// <summary>
    /// Opens an association (OPEN until RELAYED or CLOSE, within <see cref="FramedDatagramClientSession.OpenTimeout"/>).
    /// <paramref name="addressGone"/> ends the session when the announced address changes.
    /// </summary>
    public static async Task<AsportDatagramSession> OpenAsync(IPEndPoint server, IPAddress? bind, CancellationToken addressGone, ILogger log, CancellationToken cancellationToken)
    {
        var socket = new Socket(server.AddressFamily, SocketType.Dgram, ProtocolType.Udp);
        AsportDatagramSession? session = null;
        try
        {
            socket.ReceiveBufferSize = SocketBuffer;
            socket.SendBufferSize = SocketBuffer;
            if (bind is not null) socket.Bind(new IPEndPoint(bind, 0));
            socket.Connect(server);
            socket.Blocking = false; // a full send buffer drops the datagram (UDP semantics), it never blocks the TURN server
            session = new AsportDatagramSession(socket, log);
            bool? opened;
            try { opened = await session.OpenAssociationAsync(cancellationToken).ConfigureAwait(false); }
            catch (OperationCanceledException e) when (!cancellationToken.IsCancellationRequested)
            {
                throw new TransportConnectException(ConnectFailure.TimedOut,
                    $"no answer over UDP from {server} within {OpenTimeout.TotalSeconds:0} s" + (session._refusedSeen ? " (ICMP port unreachable: is UDP bound there?)" : ""), e);
            }
            if (opened != true) throw new TransportConnectException(ConnectFailure.General, $"the server process refused the UDP association (CLOSE from {server})");
            session._addressGone = addressGone.Register(static s => ((AsportDatagramSession)s!).Terminate("the announced address changed"), session);
            return session;
        }
        catch (SocketException e)
        {
            if (session is not null) await session.DisposeAsync().ConfigureAwait(false);
            else socket.Dispose();
            throw new TransportConnectException(ConnectFailure.General, $"UDP socket towards {server}: {e.SocketErrorCode}", e);
        }
        catch
        {
            if (session is not null) await session.DisposeAsync().ConfigureAwait(false);
            else socket.Dispose();
            throw;
        }
    }

    private static bool IsTransient(SocketException e) =>
        e.SocketErrorCode is SocketError.ConnectionRefused or SocketError.ConnectionReset or SocketError.HostUnreachable or SocketError.NetworkUnreachable or SocketError.MessageSize;

    protected override bool SendDatagram(ReadOnlySpan<byte> frame)
    {
        try
        {
            _socket.Send(frame, SocketFlags.None, out var error);
            return error == SocketError.Success;
        }
        catch (ObjectDisposedException) { return false; }
    }

    protected override async ValueTask<int> ReceiveDatagramAsync(Memory<byte> into, CancellationToken cancellationToken)
    {
        try { return await _socket.ReceiveAsync(into, SocketFlags.None, cancellationToken).ConfigureAwait(false); }
        catch (SocketException e) when (IsTransient(e))
        {
            _refusedSeen |= e.SocketErrorCode == SocketError.ConnectionRefused;
            return 0;
        }
        catch (Exception e) when (e is ObjectDisposedException or SocketException) { return -1; }
    }

    protected override void LogEnded(string why) =>
        Log.LogInformation("asport UDP association via {Server} ended: {Why}", _socket.RemoteEndPoint, why);

    protected override void OnClosed()
    {
        _socket.Dispose();
        var (_, _, tooLarge, notSent, malformed) = Counts;
        if (tooLarge + notSent + malformed > 0)
            Log.LogInformation("asport UDP association: {Dropped} datagrams not sent (too large, socket buffer full or ICMP error), {Malformed} malformed datagrams dropped", tooLarge + notSent, malformed);
    }

    public override async ValueTask DisposeAsync()
    {
        await base.DisposeAsync().ConfigureAwait(false);
        await _addressGone.DisposeAsync().ConfigureAwait(false);
    }
}

/// <summary>
/// Server process: the ASPORT client's UDP handler (spec/asport.md §6.2). An association starts with
/// OPEN and becomes the host's UDP association (spec/turn.md §5.4), relayed like any session; any
/// other first frame is answered with CLOSE and no state is held.
/// </summary>
internal sealed class AsportDatagramHandler(TransportEnvironment context, ServerBinding binding, ILogger log, Func<long> nextSession) : IAsportUdpHandler
{
    private long _malformed;

    public IAsportUdpAssociation? Open(AsportUdpPeer peer, ReadOnlySpan<byte> payload)
    {
        if (!AsportUdpFrames.TryRead(payload, out var type, out var address, out _))
        {
            Malformed(peer, "not one datagram frame");
            return null;
        }
        if (type == AsportUdpFrames.Open && address.Port == 0)
        {
            if (payload.Length < AsportUdpFrames.OpenFrame.Length)
            {
                Malformed(peer, "OPEN shorter than 22 bytes");
                return null;
            }
            var association = new AsportDatagramAssociation(peer, context, binding, log, nextSession());
            association.Start();
            return association;
        }
        // No such association (a keep-alive included: a new one would have another relayed address).
        if (type != AsportUdpFrames.Close) AsportDatagramAssociation.Fire(peer, AsportUdpFrames.CloseFrame, CancellationToken.None);
        return null;
    }

    internal void Malformed(AsportUdpPeer peer, string what)
    {
        if (Interlocked.Increment(ref _malformed) <= 10)
            log.LogInformation("asport UDP association {Id} from {Source}: dropped a malformed datagram: {What}", peer.Id, peer.Source, what);
    }
}

/// <summary>
/// One association in the server process: frames from the client process are read by the host's relay
/// loop (towards its UDP association), frames the host writes go back as Packets, one frame each.
/// </summary>
internal sealed class AsportDatagramAssociation : Stream, IHalfClosable, IAsportUdpAssociation
{
    public const int QueueFrames = 2048;
    private readonly AsportUdpPeer _peer;
    private readonly TransportEnvironment _context;
    private readonly ServerBinding _binding;
    private readonly ILogger _log;
    private readonly long _id;
    private readonly Channel<(byte[] Buffer, int Offset, int Length)> _fromClient =
        Channel.CreateBounded<(byte[], int, int)>(new BoundedChannelOptions(QueueFrames) { SingleReader = true, FullMode = BoundedChannelFullMode.Wait });
    private readonly CancellationTokenSource _stop = new();
    private readonly byte[] _out = ArrayPool<byte>.Shared.Rent(2 * DatagramFrame.MaxFrameLength);
    private int _outLength;
    private readonly PooledSegmentReader _reader;
    private byte[]? _relayed;
    private int _ended;
    private long _dropped;

    public AsportDatagramAssociation(AsportUdpPeer peer, TransportEnvironment context, ServerBinding binding, ILogger log, long id)
    {
        _reader = new PooledSegmentReader(_fromClient.Reader);
        _peer = peer;
        _context = context;
        _binding = binding;
        _log = log;
        _id = id;
    }

    public bool Ended => Volatile.Read(ref _ended) != 0;

    public void Start() => _ = Task.Run(RunAsync);

    /// <summary>The host opens its UDP association (limits, allow list, target) and relays; a refusal is a CLOSE.</summary>
    private async Task RunAsync()
    {
        Stream onward;
        try
        {
            onward = await _binding.Handler.OpenAsync(new InboundSession(_peer.Source, null, _id, SessionKind.Datagram), _stop.Token).ConfigureAwait(false);
        }
        catch (Exception e) when (e is TransportConnectException or OperationCanceledException)
        {
            _context.Counters.SessionFailed();
            _log.LogInformation("asport UDP association {Id} from {Source}: {Error}", _id, _peer.Source, e.Message);
            Fire(_peer, AsportUdpFrames.CloseFrame, CancellationToken.None);
            End();
            ArrayPool<byte>.Shared.Return(_out); // the relay loop never ran: nothing writes to it
            return;
        }
        _context.Counters.SessionOpened();
        _log.LogDebug("asport UDP association {Id} from {Source} opened (ASPORT association {Assoc})", _id, _peer.Source, _peer.Id);
        try
        {
            await _binding.Handler.RelayAsync(this, onward, _stop.Token).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or SocketException or OperationCanceledException or ObjectDisposedException)
        {
            _log.LogDebug("asport UDP association {Id}: {Error}", _id, e.Message);
        }
        finally
        {
            _context.Counters.SessionClosed();
            await onward.DisposeAsync().ConfigureAwait(false);
            End();
            ArrayPool<byte>.Shared.Return(_out); // the relay loop is over: nothing writes to it any more
            var dropped = Interlocked.Read(ref _dropped);
            if (dropped > 0) _log.LogInformation("asport UDP association {Id}: {Dropped} datagrams dropped (queue full, too large, or not sent)", _id, dropped);
        }
    }

    /// <summary>Sends a control frame without waiting (QUIC mode opens a stream); failures are ignored.</summary>
    internal static void Fire(AsportUdpPeer peer, byte[] frame, CancellationToken ct)
    {
        var send = peer.SendAsync(frame, ct);
        if (!send.IsCompleted) _ = send.AsTask().ContinueWith(static t => _ = t.Exception, TaskScheduler.Default);
    }

    // ---- from the client process (ASPORT receive paths; must not block) --------------------------

    public void OnPacket(ReadOnlySpan<byte> payload)
    {
        if (!AsportUdpFrames.TryRead(payload, out var type, out _, out _))
        {
            Interlocked.Increment(ref _dropped);
            return;
        }
        switch (type)
        {
            case AsportUdpFrames.Open: // keep-alive: RELAYED again, never longer than the OPEN
                if (Volatile.Read(ref _relayed) is { } relayed && payload.Length >= relayed.Length) Fire(_peer, relayed, _stop.Token);
                return;
            case AsportUdpFrames.Close:
                End();
                return;
            case DatagramFrameType.Data:
            case DatagramFrameType.Check:
                byte[] copy = ArrayPool<byte>.Shared.Rent(payload.Length);
                payload.CopyTo(copy);
                if (!_fromClient.Writer.TryWrite((copy, 0, payload.Length)))
                {
                    ArrayPool<byte>.Shared.Return(copy);
                    Interlocked.Increment(ref _dropped);
                }
                return;
        }
        // other types from the client are ignored (spec/turn.md §5.2)
    }

    /// <summary>The ASPORT side ended it (Dissociate, idle, connection gone), or the client sent CLOSE: the relay loop sees the end.</summary>
    public void End()
    {
        if (Interlocked.Exchange(ref _ended, 1) != 0) return;
        _fromClient.Writer.TryComplete();
        _stop.Cancel();
    }

    public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default) =>
        _reader.ReadAsync(buffer, cancellationToken);

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException("use ReadAsync");

    // ---- from the host's UDP association: one Packet per frame ------------------------------------

    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(System.Runtime.CompilerServices.PoolingAsyncValueTaskMethodBuilder))]
    public override async ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
    {
        while (buffer.Length > 0)
        {
            int n = Math.Min(buffer.Length, _out.Length - _outLength);
            buffer[..n].CopyTo(_out.AsMemory(_outLength));
            _outLength += n;
            buffer = buffer[n..];
            int at = 0;
            while (true)
            {
                int length = DatagramFrame.TryParse(_out.AsSpan(at, _outLength - at), out var type, out _, out _);
                if (length < 0) throw new IOException("malformed datagram frame from the host");
                if (length == 0) break;
                var frame = _out.AsMemory(at, length);
                if (type == DatagramFrameType.Relayed && _relayed is null) Volatile.Write(ref _relayed, frame.ToArray());
                if (length > AsportUdpFrames.MaxFrame || !await _peer.SendAsync(frame, _stop.Token).ConfigureAwait(false))
                    Interlocked.Increment(ref _dropped);
                at += length;
            }
            if (at > 0)
            {
                Buffer.BlockCopy(_out, at, _out, 0, _outLength - at);
                _outLength -= at;
            }
        }
    }

    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException("use WriteAsync");

    /// <summary>The host's association ended: the client process is told with CLOSE.</summary>
    public void ShutdownWrite()
    {
        if (!Ended) Fire(_peer, AsportUdpFrames.CloseFrame, CancellationToken.None);
        End();
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
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();
}
