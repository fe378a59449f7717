using System.Buffers;
using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using System.Threading.Channels;
using Microsoft.Extensions.Logging;
using PtHost.Contract;
using PtHost.Turn;

namespace PtHost.Transports.Rud;

/// <summary>
/// UDP sessions over RUD datagram streams (spec/rud.md §12.1): every datagram of a datagram stream
/// (§8.2) is exactly one frame of spec/turn.md §5.2, LENGTH included, with the OPEN and CLOSE types
/// of spec/asport.md §6.2 (<see cref="AssociationFrames"/>). One datagram stream carries one UDP association.
/// </summary>
internal static class RudUdpFrames
{
    public const DatagramFrameType Open = AssociationFrames.Open;
    public const DatagramFrameType Close = AssociationFrames.Close;
    /// <summary>The largest frame: one RUD datagram.</summary>
    public const int MaxFrame = RudDatagramChannel.MaxDatagramSize;
    /// <summary>The largest payload of a UDP session (any peer family): 1200 − 22 = 1178.</summary>
    public const int MaxPayload = MaxFrame - DatagramFrame.MaxHeaderLength;

    public static byte[] OpenFrame => AssociationFrames.OpenFrame;
    public static byte[] KeepaliveFrame => AssociationFrames.KeepaliveFrame;
    public static byte[] CloseFrame => AssociationFrames.CloseFrame;

    /// <summary>True when the datagram is exactly one well-formed frame (LENGTH = datagram length − 2); never throws.</summary>
    public static bool TryRead(ReadOnlySpan<byte> datagram, out DatagramFrameType type, out PeerAddress peer, out Range payload) =>
        AssociationFrames.TryRead(datagram, out type, out peer, out payload);

    /// <summary>Writes a frame into <paramref name="destination"/> (at least <see cref="MaxFrame"/> bytes); 0 when the payload is above <see cref="MaxPayload"/>.</summary>
    public static int TryWrite(Span<byte> destination, DatagramFrameType type, PeerAddress peer, ReadOnlySpan<byte> payload)
    {
        if (payload.Length > MaxPayload || destination.Length < DatagramFrame.HeaderLength(peer) + payload.Length) return 0;
        return DatagramFrame.Write(destination, type, peer, payload);
    }
}

/// <summary>
/// Client process: one TURN allocation = one RUD datagram stream on a connection to the server
/// (spec/rud.md §12.1); the association's life is <see cref="FramedDatagramClientSession"/>'s,
/// and the connection's end ends it too.
/// </summary>
internal sealed class RudDatagramSession : FramedDatagramClientSession
{
    private readonly RudDatagramChannel _channel;
    private readonly string _server;
    private readonly Action? _onEnded;
    private int _endedCalled;

    private RudDatagramSession(RudDatagramChannel channel, string server, ILogger log, Action? ended) : base(log, RudUdpFrames.MaxFrame)
    {
        _onEnded = ended;
        _channel = channel;
        _server = server;
    }

    public override int MaxDatagramSize => RudUdpFrames.MaxPayload;

    /// <summary>The datagram stream's id (spec/rud.md §8.1).</summary>
    public ulong StreamId => _channel.Id;

    /// <summary>Opens an association on <paramref name="channel"/> (OPEN until RELAYED or CLOSE, within <see cref="FramedDatagramClientSession.OpenTimeout"/>).</summary>
    public static async Task<RudDatagramSession> OpenAsync(RudDatagramChannel channel, string server, ILogger log, Action? ended, CancellationToken cancellationToken)
    {
        var session = new RudDatagramSession(channel, server, log, ended);
        try
        {
            bool? opened;
            try { opened = await session.OpenAssociationAsync(cancellationToken).ConfigureAwait(false); }
            catch (OperationCanceledException e) when (!cancellationToken.IsCancellationRequested)
            {
                throw new TransportConnectException(ConnectFailure.TimedOut, $"rud server {server}: no answer on datagram stream {channel.Id} within {OpenTimeout.TotalSeconds:0} s", e);
            }
            if (opened is null) throw new TransportConnectException(ConnectFailure.General, $"rud server {server}: the connection closed while opening a UDP association");
            if (opened == false) throw new TransportConnectException(ConnectFailure.General, $"rud server {server} refused the UDP association (CLOSE on datagram stream {channel.Id})");
            return session;
        }
        catch
        {
            session._endedCalled = 1; // the caller accounts for a session that never opened
            await session.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    protected override bool SendDatagram(ReadOnlySpan<byte> frame) => _channel.TrySend(frame);

    protected override async ValueTask<int> ReceiveDatagramAsync(Memory<byte> into, CancellationToken cancellationToken)
    {
        try { return await _channel.ReceiveAsync(into, cancellationToken).ConfigureAwait(false); }
        catch (ChannelClosedException) { return -1; }
    }

    protected override void LogEnded(string why) =>
        Log.LogInformation("rud UDP association on datagram stream {Stream} to {Server} ended: {Why}", _channel.Id, _server, why);

    protected override void OnClosed()
    {
        _channel.Complete(null); // datagrams still arriving for this stream are dropped, not queued
        var (sent, received, tooLarge, notQueued, malformed) = Counts;
        Log.LogInformation("rud UDP association on datagram stream {Stream} to {Server}: {Sent} datagrams sent, {Received} received, {TooLarge} too large for a RUD datagram, {NotQueued} not queued (send queue full), {Malformed} malformed",
            _channel.Id, _server, sent, received, tooLarge, notQueued, malformed);
        if (Interlocked.Exchange(ref _endedCalled, 1) == 0) _onEnded?.Invoke();
    }
}

/// <summary>
/// Server process: one datagram stream a client opened (spec/rud.md §12.1). Its first datagram must be
/// OPEN <c>[::]:0</c>; the association is then the host's UDP association (spec/turn.md §5.4), relayed
/// like any session: this stream's reads are the client's DATA and CHECK frames, its writes the host's
/// frames, each sent as one RUD datagram.
/// </summary>
internal sealed class RudDatagramAssociation : Stream, IHalfClosable
{
    public static readonly TimeSpan IdleTimeout = TimeSpan.FromSeconds(60);
    public static readonly TimeSpan IdleCheck = TimeSpan.FromSeconds(15);
    private readonly RudDatagramChannel _channel;
    private readonly IPEndPoint _remote;
    private readonly TransportEnvironment _context;
    private readonly ServerBinding _binding;
    private readonly ILogger _log;
    private readonly long _id;
    private readonly byte[] _in = GC.AllocateUninitializedArray<byte>(RudUdpFrames.MaxFrame);
    private readonly byte[] _out = ArrayPool<byte>.Shared.Rent(2 * DatagramFrame.MaxFrameLength);
    private readonly CancellationTokenSource _stop = new();
    private int _outLength, _pendingAt, _pendingEnd;
    private byte[]? _relayed;
    private long _lastHeard = Environment.TickCount64;
    private long _fromClient, _toClient, _tooLarge, _notQueued, _malformed;
    private int _ended;

    public RudDatagramAssociation(RudDatagramChannel channel, IPEndPoint remote, TransportEnvironment context, ServerBinding binding, ILogger log, long id)
    {
        _channel = channel;
        _remote = remote;
        _context = context;
        _binding = binding;
        _log = log;
        _id = id;
    }

    /// <summary>Waits for OPEN, opens the host's association (limits, allow list, target) and relays; a refusal is a CLOSE.</summary>
    public async Task RunAsync(CancellationToken abort)
    {
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(abort, _stop.Token);
        var idle = IdleLoopAsync(_stop.Token);
        Stream? onward = null;
        bool opened = false;
        try
        {
            int n;
            using (var first = CancellationTokenSource.CreateLinkedTokenSource(linked.Token))
            {
                first.CancelAfter(IdleTimeout);
                try { n = await _channel.ReceiveAsync(_in, first.Token).ConfigureAwait(false); }
                catch (ChannelClosedException) { return; }
            }
            if (!RudUdpFrames.TryRead(_in.AsSpan(0, n), out var type, out var address, out _)
                || type != RudUdpFrames.Open || address.Port != 0 || n < RudUdpFrames.OpenFrame.Length)
            {
                Interlocked.Increment(ref _malformed);
                _context.Counters.SessionFailed();
                _log.LogInformation("rud UDP association {Id} from {Remote}: the first datagram of stream {Stream} is not OPEN [::]:0; CLOSE sent", _id, _remote, _channel.Id);
                _channel.TrySend(RudUdpFrames.CloseFrame);
                return;
            }
            try
            {
                onward = await _binding.Handler.OpenAsync(new InboundSession(_remote, null, _id, SessionKind.Datagram), linked.Token).ConfigureAwait(false);
            }
            catch (TransportConnectException e)
            {
                _context.Counters.SessionFailed();
                _log.LogInformation("rud UDP association {Id} from {Remote}: {Error}; CLOSE sent", _id, _remote, e.Message);
                _channel.TrySend(RudUdpFrames.CloseFrame);
                return;
            }
            opened = true;
            _context.Counters.SessionOpened();
            _log.LogInformation("rud UDP association {Id} from {Remote} on datagram stream {Stream}", _id, _remote, _channel.Id);
            await _binding.Handler.RelayAsync(this, onward, linked.Token).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or SocketException or OperationCanceledException or ObjectDisposedException or ChannelClosedException)
        {
            _log.LogDebug("rud UDP association {Id}: {Error}", _id, e.Message);
        }
        finally
        {
            if (opened)
            {
                _context.Counters.SessionClosed();
                _log.LogInformation("rud UDP association {Id} ended: {In} frames from the client, {Out} datagrams to it, {TooLarge} too large for a RUD datagram, {NotQueued} not queued (send queue full), {Malformed} malformed",
                    _id, Interlocked.Read(ref _fromClient), Interlocked.Read(ref _toClient), Interlocked.Read(ref _tooLarge), Interlocked.Read(ref _notQueued), Interlocked.Read(ref _malformed));
            }
            if (onward is not null) await onward.DisposeAsync().ConfigureAwait(false);
            End();
            await idle.ConfigureAwait(false);
            ArrayPool<byte>.Shared.Return(_out); // the relay loop is over: nothing writes to it any more
        }
    }

    /// <summary>60 s without a datagram from the client (its keep-alive comes every 15 s) ends the association.</summary>
    private async Task IdleLoopAsync(CancellationToken ct)
    {
        using var timer = new PeriodicTimer(IdleCheck);
        try
        {
            while (await timer.WaitForNextTickAsync(ct).ConfigureAwait(false))
            {
                if (Environment.TickCount64 - Volatile.Read(ref _lastHeard) > (long)IdleTimeout.TotalMilliseconds)
                {
                    _log.LogInformation("rud UDP association {Id}: nothing from the client for {Seconds:0} s; ended", _id, IdleTimeout.TotalSeconds);
                    _channel.TrySend(RudUdpFrames.CloseFrame);
                    End();
                    return;
                }
            }
        }
        catch (OperationCanceledException) { }
    }

    /// <summary>Ends the association: a pending read returns 0 (the relay ends), later datagrams of the stream are dropped.</summary>
    private void End()
    {
        if (Interlocked.Exchange(ref _ended, 1) != 0) return;
        _channel.Complete(null);
        _stop.Cancel();
    }

    // ---- from the client: DATA and CHECK frames, one per read -----------------------------------

    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(System.Runtime.CompilerServices.PoolingAsyncValueTaskMethodBuilder<>))]
    public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        while (true)
        {
            if (_pendingAt < _pendingEnd)
            {
                int k = Math.Min(buffer.Length, _pendingEnd - _pendingAt);
                _in.AsSpan(_pendingAt, k).CopyTo(buffer.Span);
                _pendingAt += k;
                return k;
            }
            if (Volatile.Read(ref _ended) != 0) return 0;
            int n;
            try { n = await _channel.ReceiveAsync(_in, cancellationToken).ConfigureAwait(false); }
            catch (ChannelClosedException) { return 0; }
            Volatile.Write(ref _lastHeard, Environment.TickCount64);
            if (!RudUdpFrames.TryRead(_in.AsSpan(0, n), out var type, out _, out var payload) || payload.GetOffsetAndLength(n).Length > RudUdpFrames.MaxPayload)
            {
                Interlocked.Increment(ref _malformed); // not one frame, or a payload above 1,178 bytes
                continue;
            }
            switch (type)
            {
                case RudUdpFrames.Open: // OPEN repeated or keep-alive: RELAYED again, never longer than the OPEN
                    if (Volatile.Read(ref _relayed) is { } relayed && n >= relayed.Length) _channel.TrySend(relayed);
                    continue;
                case RudUdpFrames.Close:
                    End();
                    return 0;
                case DatagramFrameType.Data:
                case DatagramFrameType.Check:
                    Interlocked.Increment(ref _fromClient);
                    _pendingAt = 0;
                    _pendingEnd = n;
                    continue;
            }
            // other types from the client are ignored (spec/turn.md §5.2)
        }
    }

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException("use ReadAsync");

    // ---- from the host's UDP association: one RUD datagram per frame ------------------------------

    public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
    {
        while (buffer.Length > 0)
        {
            int n = Math.Min(buffer.Length, _out.Length - _outLength);
            buffer.Span[..n].CopyTo(_out.AsSpan(_outLength));
            _outLength += n;
            buffer = buffer[n..];
            int at = 0;
            while (true)
            {
                int length = DatagramFrame.TryParse(_out.AsSpan(at, _outLength - at), out var type, out _, out var payload);
                if (length < 0) return ValueTask.FromException(new IOException("malformed datagram frame from the host"));
                if (length == 0) break;
                var frame = _out.AsSpan(at, length);
                if (type == DatagramFrameType.Relayed && _relayed is null) Volatile.Write(ref _relayed, frame.ToArray());
                if (payload.GetOffsetAndLength(length).Length > RudUdpFrames.MaxPayload) Interlocked.Increment(ref _tooLarge); // a peer's datagram above 1,178 bytes
                else if (_channel.TrySend(frame)) Interlocked.Increment(ref _toClient);
                else Interlocked.Increment(ref _notQueued);
                at += length;
            }
            if (at > 0)
            {
                Buffer.BlockCopy(_out, at, _out, 0, _outLength - at);
                _outLength -= at;
            }
        }
        return ValueTask.CompletedTask;
    }

    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException("use WriteAsync");

    /// <summary>The host's association ended: the client process is told with CLOSE.</summary>
    public void ShutdownWrite()
    {
        if (Volatile.Read(ref _ended) == 0)
        {
            _channel.TrySend(RudUdpFrames.CloseFrame);
            _channel.TrySend(RudUdpFrames.CloseFrame);
        }
        End();
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing) End();
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
