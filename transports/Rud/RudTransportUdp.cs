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
/// of spec/asport.md §6.2. One datagram stream carries one UDP association.
/// </summary>
internal static class RudUdpFrames
{
    /// <summary>Client → server: open the association, or keep it alive; answered by RELAYED.</summary>
    public const DatagramFrameType Open = (DatagramFrameType)0x05;
    /// <summary>Either way: the association is over.</summary>
    public const DatagramFrameType Close = (DatagramFrameType)0x06;
    /// <summary>The largest frame: one RUD datagram.</summary>
    public const int MaxFrame = RudDatagramChannel.MaxDatagramSize;
    /// <summary>The largest payload of a UDP session (any peer family): 1200 − 22 = 1178.</summary>
    public const int MaxPayload = MaxFrame - DatagramFrame.MaxHeaderLength;

    /// <summary>OPEN for <c>[::]:0</c>: 22 bytes, as long as the longest RELAYED answer.</summary>
    public static readonly byte[] OpenFrame = Build(Open, PeerAddress.FromBytes(new byte[16], 0));
    /// <summary>OPEN for <c>[::]:1</c>: keep-alive of an open association; never opens one.</summary>
    public static readonly byte[] KeepaliveFrame = Build(Open, PeerAddress.FromBytes(new byte[16], 1));
    /// <summary>CLOSE for <c>0.0.0.0:0</c>: 10 bytes.</summary>
    public static readonly byte[] CloseFrame = Build(Close, PeerAddress.FromBytes(new byte[4], 0));

    private static byte[] Build(DatagramFrameType type, PeerAddress address)
    {
        var frame = new byte[DatagramFrame.HeaderLength(address)];
        DatagramFrame.Write(frame, type, address, default);
        return frame;
    }

    /// <summary>True when the datagram is exactly one well-formed frame (LENGTH = datagram length − 2); never throws.</summary>
    public static bool TryRead(ReadOnlySpan<byte> datagram, out DatagramFrameType type, out PeerAddress peer, out Range payload)
    {
        int n = DatagramFrame.TryParse(datagram, out type, out peer, out payload);
        return n > 0 && n == datagram.Length;
    }

    /// <summary>Writes a frame into <paramref name="destination"/> (at least <see cref="MaxFrame"/> bytes); 0 when the payload is above <see cref="MaxPayload"/>.</summary>
    public static int TryWrite(Span<byte> destination, DatagramFrameType type, PeerAddress peer, ReadOnlySpan<byte> payload)
    {
        if (payload.Length > MaxPayload || destination.Length < DatagramFrame.HeaderLength(peer) + payload.Length) return 0;
        return DatagramFrame.Write(destination, type, peer, payload);
    }
}

/// <summary>
/// Client process: one TURN allocation = one RUD datagram stream on a connection to the server
/// (spec/rud.md §12.1). OPEN until RELAYED, then DATA and CHECK out, DATA, ALLOWED and REFUSED in;
/// OPEN <c>[::]:1</c> every 15 s keeps the association alive, 60 s without a frame ends it, as does
/// CLOSE from the server or the connection ending.
/// </summary>
internal sealed class RudDatagramSession : IDatagramSession
{
    public static readonly TimeSpan OpenTimeout = TimeSpan.FromSeconds(10);
    public static readonly TimeSpan CheckTimeout = TimeSpan.FromSeconds(10);
    public static readonly TimeSpan KeepaliveInterval = TimeSpan.FromSeconds(15);
    public static readonly TimeSpan DeadAfter = TimeSpan.FromSeconds(60);

    private readonly RudDatagramChannel _channel;
    private readonly string _server;
    private readonly ILogger _log;
    private readonly byte[] _in = GC.AllocateUninitializedArray<byte>(RudUdpFrames.MaxFrame);
    private readonly ConcurrentDictionary<PeerAddress, TaskCompletionSource<bool>> _checks = new();
    private readonly CancellationTokenSource _stop = new();
    private Task _keepalive = Task.CompletedTask;
    private long _lastHeard = Environment.TickCount64;
    private long _sent, _received, _tooLarge, _notQueued, _malformed;
    private int _ended, _endedCalled;

    private readonly Action? _onEnded;

    private RudDatagramSession(RudDatagramChannel channel, string server, ILogger log, Action? ended)
    {
        _onEnded = ended;
        _channel = channel;
        _server = server;
        _log = log;
    }

    public int MaxDatagramSize => RudUdpFrames.MaxPayload;

    public PeerAddress RelayedAddress { get; private set; }

    /// <summary>The datagram stream's id (spec/rud.md §8.1).</summary>
    public ulong StreamId => _channel.Id;

    /// <summary>
    /// Opens an association on <paramref name="channel"/>: OPEN at 0, 0.25, 0.75, 1.75, 3.75, 5.75 … s
    /// until RELAYED (or CLOSE) within <see cref="OpenTimeout"/>.
    /// </summary>
    public static async Task<RudDatagramSession> OpenAsync(RudDatagramChannel channel, string server, ILogger log, Action? ended, CancellationToken cancellationToken)
    {
        var session = new RudDatagramSession(channel, server, log, ended);
        try
        {
            using var limit = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            limit.CancelAfter(OpenTimeout);
            var answer = session.AwaitRelayedAsync(limit.Token);
            var delay = TimeSpan.FromMilliseconds(250);
            while (!answer.IsCompleted)
            {
                session.SendControl(RudUdpFrames.OpenFrame);
                await Task.WhenAny(answer, Task.Delay(delay, limit.Token)).ConfigureAwait(false);
                delay = TimeSpan.FromTicks(Math.Min(delay.Ticks * 2, TimeSpan.FromSeconds(2).Ticks));
            }
            bool? opened;
            try { opened = await answer.ConfigureAwait(false); }
            catch (OperationCanceledException e) when (!cancellationToken.IsCancellationRequested)
            {
                throw new TransportConnectException(ConnectFailure.TimedOut, $"rud server {server}: no answer on datagram stream {channel.Id} within {OpenTimeout.TotalSeconds:0} s", e);
            }
            if (opened is null) throw new TransportConnectException(ConnectFailure.General, $"rud server {server}: the connection closed while opening a UDP association");
            if (opened == false) throw new TransportConnectException(ConnectFailure.General, $"rud server {server} refused the UDP association (CLOSE on datagram stream {channel.Id})");
            session._keepalive = session.KeepaliveLoopAsync(session._stop.Token);
            return session;
        }
        catch
        {
            session._endedCalled = 1; // the caller accounts for a session that never opened
            await session.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>Receives until RELAYED (true), CLOSE (false) or the connection's end (null); other frames before RELAYED are dropped.</summary>
    private async Task<bool?> AwaitRelayedAsync(CancellationToken ct)
    {
        while (true)
        {
            int n;
            try { n = await _channel.ReceiveAsync(_in, ct).ConfigureAwait(false); }
            catch (ChannelClosedException) { return null; }
            if (!RudUdpFrames.TryRead(_in.AsSpan(0, n), out var type, out var peer, out _))
            {
                Interlocked.Increment(ref _malformed);
                continue;
            }
            if (type == DatagramFrameType.Relayed)
            {
                RelayedAddress = peer;
                Volatile.Write(ref _lastHeard, Environment.TickCount64);
                return true;
            }
            if (type == RudUdpFrames.Close) return false;
        }
    }

    private void SendControl(byte[] frame) => _channel.TrySend(frame);

    public ValueTask SendAsync(PeerAddress peer, ReadOnlyMemory<byte> payload, CancellationToken cancellationToken)
    {
        if (payload.Length > MaxDatagramSize)
        {
            Interlocked.Increment(ref _tooLarge); // does not fit one RUD datagram (spec/rud.md §12.1)
            return ValueTask.CompletedTask;
        }
        Span<byte> frame = stackalloc byte[RudUdpFrames.MaxFrame];
        int n = RudUdpFrames.TryWrite(frame, DatagramFrameType.Data, peer, payload.Span);
        if (_channel.TrySend(frame[..n])) Interlocked.Increment(ref _sent);
        else Interlocked.Increment(ref _notQueued); // the connection's datagram queue is full, or it closed: dropped as UDP would
        return ValueTask.CompletedTask;
    }

    /// <summary>CHECK, repeated at 0.5, 1.5, 3.5, 5.5 … s until ALLOWED or REFUSED, within <see cref="CheckTimeout"/>.</summary>
    public async ValueTask<bool> CheckPeerAsync(PeerAddress peer, CancellationToken cancellationToken)
    {
        var answer = _checks.GetOrAdd(peer, _ => new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously));
        byte[] frame = new byte[DatagramFrame.HeaderLength(peer)];
        DatagramFrame.Write(frame, DatagramFrameType.Check, peer, default);
        using var limit = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, _stop.Token);
        limit.CancelAfter(CheckTimeout);
        var delay = TimeSpan.FromMilliseconds(500);
        try
        {
            while (true)
            {
                SendControl(frame);
                try { return await answer.Task.WaitAsync(delay, limit.Token).ConfigureAwait(false); }
                catch (TimeoutException) { }
                delay = TimeSpan.FromTicks(Math.Min(delay.Ticks * 2, TimeSpan.FromSeconds(2).Ticks));
            }
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            return false; // no answer in time, or the session ended: treated as refused
        }
        finally
        {
            _checks.TryRemove(new KeyValuePair<PeerAddress, TaskCompletionSource<bool>>(peer, answer));
        }
    }

    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(System.Runtime.CompilerServices.PoolingAsyncValueTaskMethodBuilder<>))]
    public async ValueTask<(PeerAddress Peer, int Length)> ReceiveAsync(Memory<byte> buffer, CancellationToken cancellationToken)
    {
        while (true)
        {
            if (Volatile.Read(ref _ended) != 0) return (default, -1);
            int n;
            try { n = await _channel.ReceiveAsync(_in, cancellationToken).ConfigureAwait(false); }
            catch (ChannelClosedException)
            {
                Terminate("the RUD connection closed");
                return (default, -1);
            }
            if (!RudUdpFrames.TryRead(_in.AsSpan(0, n), out var type, out var peer, out var payload))
            {
                Interlocked.Increment(ref _malformed);
                continue;
            }
            Volatile.Write(ref _lastHeard, Environment.TickCount64);
            switch (type)
            {
                case DatagramFrameType.Data:
                    var bytes = _in.AsSpan(payload);
                    if (bytes.Length > buffer.Length || bytes.Length > MaxDatagramSize)
                    {
                        Interlocked.Increment(ref _malformed); // above 1,178 bytes: never cut, dropped
                        continue;
                    }
                    bytes.CopyTo(buffer.Span);
                    Interlocked.Increment(ref _received);
                    return (peer, bytes.Length);
                case DatagramFrameType.Allowed:
                case DatagramFrameType.Refused:
                    if (_checks.TryGetValue(peer, out var answer)) answer.TrySetResult(type == DatagramFrameType.Allowed);
                    break;
                case RudUdpFrames.Close:
                    Terminate("the server process ended the association");
                    return (default, -1);
            }
            // RELAYED (the answer to a keep-alive OPEN) and unknown types: nothing more to do.
        }
    }

    private async Task KeepaliveLoopAsync(CancellationToken ct)
    {
        using var timer = new PeriodicTimer(KeepaliveInterval);
        try
        {
            while (await timer.WaitForNextTickAsync(ct).ConfigureAwait(false))
            {
                if (Environment.TickCount64 - Volatile.Read(ref _lastHeard) > (long)DeadAfter.TotalMilliseconds)
                {
                    Terminate($"nothing heard from the server process for {DeadAfter.TotalSeconds:0} s");
                    return;
                }
                SendControl(RudUdpFrames.KeepaliveFrame);
            }
        }
        catch (OperationCanceledException) { }
    }

    /// <summary>Ends the session: a pending receive returns -1, checks answer false, later datagrams are dropped.</summary>
    private void Terminate(string why)
    {
        if (Interlocked.Exchange(ref _ended, 1) != 0) return;
        _log.LogInformation("rud UDP association on datagram stream {Stream} to {Server} ended: {Why}", _channel.Id, _server, why);
        Close();
    }

    private void Close()
    {
        _stop.Cancel();
        foreach (var c in _checks.Values) c.TrySetResult(false);
        _channel.Complete(null); // datagrams still arriving for this stream are dropped, not queued
        _log.LogInformation("rud UDP association on datagram stream {Stream} to {Server}: {Sent} datagrams sent, {Received} received, {TooLarge} too large for a RUD datagram, {NotQueued} not queued (send queue full), {Malformed} malformed",
            _channel.Id, _server, Interlocked.Read(ref _sent), Interlocked.Read(ref _received), Interlocked.Read(ref _tooLarge), Interlocked.Read(ref _notQueued), Interlocked.Read(ref _malformed));
        if (Interlocked.Exchange(ref _endedCalled, 1) == 0) _onEnded?.Invoke();
    }

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _ended, 1) == 0)
        {
            // Best effort: the server process frees the association now instead of after its idle time-out.
            SendControl(RudUdpFrames.CloseFrame);
            SendControl(RudUdpFrames.CloseFrame);
            Close();
        }
        await _keepalive.ConfigureAwait(false);
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
