using System.Buffers;
using System.Collections.Concurrent;
using System.Threading.Channels;
using PtHost.Contract;

namespace PtHost.Net.Udp;

/// <summary>
/// The client process's end of a UDP association over a stream carrier (spec/turn.md §5.2):
/// frames out are written straight into pooled blocks of <see cref="BatchBytes"/> (one copy, no
/// allocation per datagram) that one writer sends, a block per write; frames in through one reader.
/// Over <see cref="PauseBytes"/> queued, <see cref="SendAsync"/> returns a task that completes
/// once the writer has brought the queue under <see cref="ResumeBytes"/> (backpressure for callers
/// that wait); a datagram that would take the queue over <see cref="QueueBytes"/> is dropped and
/// counted (UDP semantics, for callers that do not wait). A control frame is always queued.
/// A receive loop that takes datagrams a batch at a time brackets each batch with
/// <see cref="BeginBatch"/> and <see cref="EndBatch"/>: frames queued inside are written when the
/// batch ends, on that thread when the stream takes them at once (no hop to the writer, and a batch
/// never waits for more datagrams than were queued).
/// </summary>
public sealed class StreamAssociation : IAssociation
{
    public const int QueueFrames = 2048;
    public const int BatchBytes = 64 * 1024;
    /// <summary>Bytes queued towards the server process over which a datagram is dropped.</summary>
    public const int QueueBytes = 2 << 20;
    /// <summary>From this many bytes queued, <see cref="SendAsync"/> asks its caller to wait.</summary>
    public const int PauseBytes = QueueBytes / 2;
    /// <summary>Waiting callers go on once the queue is under this many bytes.</summary>
    public const int ResumeBytes = QueueBytes / 4;
    public static readonly TimeSpan RelayedTimeout = TimeSpan.FromSeconds(10);
    public static readonly TimeSpan CheckTimeout = TimeSpan.FromSeconds(10);

    private readonly Stream _stream;
    // The send queue: full blocks in order, then the block being filled; guarded by _sendLock.
    private readonly Lock _sendLock = new();
    private readonly Queue<(byte[] Block, int Used)> _full = new();
    private byte[]? _current;
    private int _currentUsed, _queuedBytes;
    private bool _writerIdle, _closed;
    private TaskCompletionSource? _room;
    // Rung (once per idle period) when the writer sleeps and a frame arrives.
    private readonly Channel<bool> _doorbell =
        Channel.CreateBounded<bool>(new BoundedChannelOptions(1) { SingleReader = true, FullMode = BoundedChannelFullMode.DropWrite });
    private readonly ConcurrentDictionary<PeerAddress, TaskCompletionSource<bool>> _checks = new();
    private readonly CancellationTokenSource _stop = new();
    private readonly byte[] _in = ArrayPool<byte>.Shared.Rent(2 * DatagramFrame.MaxFrameLength);
    private int _start, _end;
    private Task _writer = Task.CompletedTask;
    // A write begun by EndBatch that did not complete at once: the writer task finishes it first.
    private (Task Write, byte[] Block, int Used)? _handover;
    // The associations whose writes this thread's batch deferred (spec/turn.md §5.2).
    [ThreadStatic] private static bool t_batching;
    [ThreadStatic] private static List<StreamAssociation>? t_deferred;
    private long _dropped, _tooLarge, _sent;
    private int _disposed;

    private StreamAssociation(Stream stream) => _stream = stream;

    public int MaxDatagramSize => DatagramFrame.MaxPayload;

    public PeerAddress RelayedAddress { get; private set; }

    /// <summary>Datagrams dropped because the queue towards the server process was full.</summary>
    public long Dropped => Interlocked.Read(ref _dropped);

    /// <summary>Datagrams dropped because no frame can carry them (spec/turn.md §5.2).</summary>
    public long TooLarge => Interlocked.Read(ref _tooLarge);

    /// <summary>Datagrams queued towards the server process.</summary>
    public long Sent => Interlocked.Read(ref _sent);

    /// <summary>
    /// Wraps the stream a transport returned for a <see cref="SessionKind.Datagram"/> request: reads
    /// the server's first frame (RELAYED) and starts the writer. Disposes the stream on failure.
    /// </summary>
    public static async Task<StreamAssociation> StartAsync(Stream stream, CancellationToken cancellationToken)
    {
        var session = new StreamAssociation(stream);
        try
        {
            using var limit = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            limit.CancelAfter(RelayedTimeout);
            var (type, peer, _) = await session.ReadFrameAsync(limit.Token).ConfigureAwait(false);
            if (type != DatagramFrameType.Relayed)
                throw new TransportConnectException(ConnectFailure.General, $"the server process began the UDP association with frame type 0x{(byte)type:x2}, not RELAYED");
            session.RelayedAddress = peer;
            session.Consume();
            session._writer = session.WriteLoopAsync(session._stop.Token);
            return session;
        }
        catch (Exception e) when (e is OperationCanceledException && !cancellationToken.IsCancellationRequested)
        {
            await session.DisposeAsync().ConfigureAwait(false);
            throw new TransportConnectException(ConnectFailure.TimedOut, "the server process did not confirm the UDP association in time", e);
        }
        catch (Exception e) when (e is IOException or EndOfStreamException or InvalidDataException)
        {
            await session.DisposeAsync().ConfigureAwait(false);
            throw new TransportConnectException(ConnectFailure.General, $"UDP association: {e.Message}", e);
        }
        catch
        {
            await session.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>
    /// Queues one DATA frame (the payload is copied before this returns). The task is complete
    /// unless the queue is over <see cref="PauseBytes"/>: then it completes once the writer has
    /// caught up; callers that wait give backpressure, callers that do not lose datagrams only over
    /// <see cref="QueueBytes"/>.
    /// </summary>
    public ValueTask SendAsync(PeerAddress peer, ReadOnlyMemory<byte> payload, CancellationToken cancellationToken)
    {
        if (payload.Length > MaxDatagramSize)
        {
            // Larger than a frame can carry (spec/turn.md §5.2): lost like any UDP datagram, and counted.
            Interlocked.Increment(ref _tooLarge);
            return ValueTask.CompletedTask;
        }
        return Enqueue(DatagramFrameType.Data, peer, payload.Span, control: false);
    }

    private ValueTask Enqueue(DatagramFrameType type, PeerAddress peer, ReadOnlySpan<byte> payload, bool control)
    {
        int need = DatagramFrame.HeaderLength(peer) + payload.Length;
        bool ring = false;
        Task? wait = null;
        lock (_sendLock)
        {
            if (_closed) return ValueTask.CompletedTask;
            if (!control && _queuedBytes + need > QueueBytes)
            {
                _dropped++;
                return ValueTask.CompletedTask;
            }
            if (_current is null || _current.Length - _currentUsed < need)
            {
                if (_current is not null) _full.Enqueue((_current, _currentUsed));
                _current = ArrayPool<byte>.Shared.Rent(Math.Max(BatchBytes, need));
                _currentUsed = 0;
            }
            _currentUsed += DatagramFrame.Write(_current.AsSpan(_currentUsed), type, peer, payload);
            _queuedBytes += need;
            if (type == DatagramFrameType.Data) _sent++;
            if (_writerIdle)
            {
                // The writer is parked: inside a batch this thread takes its role at EndBatch.
                _writerIdle = false;
                if (t_batching) (t_deferred ??= []).Add(this);
                else ring = true;
            }
            if (!control && _queuedBytes >= PauseBytes)
                wait = (_room ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)).Task;
        }
        if (ring) _doorbell.Writer.TryWrite(true);
        return wait is null ? ValueTask.CompletedTask : new ValueTask(wait);
    }

    /// <summary>
    /// Starts a batch on this thread: frames queued from now on wait for <see cref="EndBatch"/>
    /// (on the same thread, before any await) instead of waking the writer one by one.
    /// </summary>
    public static void BeginBatch() => t_batching = true;

    /// <summary>
    /// For a receive loop on a thread of its own whose association asked it to wait (spec/turn.md §5.2): what this
    /// thread's batch queued goes out first (<see cref="EndBatch"/> without writing inline), then the thread blocks until
    /// <paramref name="pending"/> completes, at most <paramref name="max"/>, and a new batch begins. A send that failed
    /// (the association ended) ends the wait too. False when <paramref name="ct"/> was cancelled: the loop ends.
    /// </summary>
    public static bool WaitBetweenBatches(ValueTask pending, TimeSpan max, CancellationToken ct)
    {
        EndBatch(writeInline: false);
        try { pending.AsTask().Wait(max, ct); }
        catch (OperationCanceledException) { return false; }
        catch (AggregateException) { }
        BeginBatch();
        return true;
    }

    /// <summary>
    /// Ends this thread's batch. With <paramref name="writeInline"/> (the caller's socket had nothing
    /// more queued, so it would only wait), every association the batch queued frames on writes them
    /// now, on this thread, while its stream takes them at once; a write that has to wait goes on in
    /// the association's writer. Without it (more datagrams wait: the caller reads on at once), the
    /// writers are woken and write in parallel with the caller.
    /// </summary>
    public static void EndBatch(bool writeInline = true)
    {
        t_batching = false;
        if (t_deferred is not { Count: > 0 } deferred) return;
        try
        {
            foreach (var association in deferred)
            {
                if (writeInline) association.WriteDeferred();
                else association._doorbell.Writer.TryWrite(true);
            }
        }
        finally
        {
            deferred.Clear();
        }
    }

    /// <summary>Writes the queue inline (this thread holds the writer's role, taken in <see cref="Enqueue"/>; the writer task is parked).</summary>
    private void WriteDeferred()
    {
        while (true)
        {
            (byte[] Block, int Used) next;
            lock (_sendLock)
            {
                if (_closed) return;
                if (_full.Count > 0) next = _full.Dequeue();
                else if (_currentUsed > 0)
                {
                    next = (_current!, _currentUsed);
                    _current = null;
                    _currentUsed = 0;
                }
                else
                {
                    _writerIdle = true; // nothing left: the role goes back to the parked writer
                    return;
                }
            }
            ValueTask write;
            try
            {
                write = Volatile.Read(ref _disposed) != 0 ? ValueTask.FromException(new ObjectDisposedException(nameof(StreamAssociation)))
                    : _stream.WriteAsync(next.Block.AsMemory(0, next.Used), _stop.Token);
            }
            catch (Exception e) when (IsEnd(e))
            {
                write = ValueTask.FromException(e);
            }
            if (!write.IsCompleted)
            {
                // The stream is busy: the writer finishes this write, then goes on with the queue.
                _handover = (write.AsTask(), next.Block, next.Used);
                _doorbell.Writer.TryWrite(true);
                return;
            }
            try { write.GetAwaiter().GetResult(); }
            catch (Exception e) when (IsEnd(e))
            {
                ArrayPool<byte>.Shared.Return(next.Block);
                ReleaseQueue();
                _doorbell.Writer.TryComplete(); // the parked writer ends too
                return;
            }
            ArrayPool<byte>.Shared.Return(next.Block);
            Written(next.Used);
        }
    }

    private static bool IsEnd(Exception e) =>
        e is OperationCanceledException or IOException or ObjectDisposedException or System.Net.Sockets.SocketException or ChannelClosedException;

    /// <summary>A block left the queue: waiting senders go on once it is under <see cref="ResumeBytes"/>.</summary>
    private void Written(int used)
    {
        TaskCompletionSource? resume = null;
        lock (_sendLock)
        {
            _queuedBytes -= used;
            if (_room is not null && _queuedBytes < ResumeBytes)
            {
                resume = _room;
                _room = null;
            }
        }
        resume?.TrySetResult();
    }

    public async ValueTask<bool> CheckPeerAsync(PeerAddress peer, CancellationToken cancellationToken)
    {
        var answer = _checks.GetOrAdd(peer, _ => new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously));
        using var limit = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        limit.CancelAfter(CheckTimeout);
        try
        {
            await Enqueue(DatagramFrameType.Check, peer, default, control: true).ConfigureAwait(false);
            if (Volatile.Read(ref _disposed) != 0) return false;
            return await answer.Task.WaitAsync(limit.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            return false; // no answer in time: treated as refused
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
            DatagramFrameType type;
            PeerAddress peer;
            Range payload;
            try { (type, peer, payload) = await ReadFrameAsync(cancellationToken).ConfigureAwait(false); }
            catch (EndOfStreamException) { return (default, -1); }
            switch (type)
            {
                case DatagramFrameType.Data:
                    var bytes = _in.AsSpan(_start..)[payload];
                    int n = Math.Min(bytes.Length, buffer.Length);
                    bytes[..n].CopyTo(buffer.Span);
                    Consume();
                    return (peer, n);
                case DatagramFrameType.Allowed:
                case DatagramFrameType.Refused:
                    if (_checks.TryGetValue(peer, out var answer)) answer.TrySetResult(type == DatagramFrameType.Allowed);
                    break;
            }
            Consume(); // unknown types are skipped (spec/turn.md §5.2)
        }
    }

    private int _frameLength;

    private void Consume()
    {
        _start += _frameLength;
        _frameLength = 0;
    }

    /// <summary>Reads until a whole frame is at <c>_in[_start..]</c>; the caller calls <see cref="Consume"/>.</summary>
    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(System.Runtime.CompilerServices.PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<(DatagramFrameType, PeerAddress, Range)> ReadFrameAsync(CancellationToken ct)
    {
        while (true)
        {
            int length = DatagramFrame.TryParse(_in.AsSpan(_start, _end - _start), out var type, out var peer, out var payload);
            if (length < 0) throw new InvalidDataException("malformed datagram frame from the server process");
            if (length > 0)
            {
                _frameLength = length;
                return (type, peer, payload);
            }
            if (_start == _end) _start = _end = 0;
            else if (_end == _in.Length || (_start > 0 && _in.Length - _end < DatagramFrame.MaxFrameLength))
            {
                Buffer.BlockCopy(_in, _start, _in, 0, _end - _start);
                _end -= _start;
                _start = 0;
            }
            int read = await _stream.ReadAsync(_in.AsMemory(_end), ct).ConfigureAwait(false);
            if (read == 0) throw new EndOfStreamException("the server process ended the UDP association");
            _end += read;
        }
    }

    /// <summary>Sends the queue a block per write: full blocks first, then the one being filled (no waiting for it to fill).</summary>
    private async Task WriteLoopAsync(CancellationToken ct)
    {
        try
        {
            while (true)
            {
                if (_handover is { } begun)
                {
                    _handover = null;
                    try { await begun.Write.ConfigureAwait(false); }
                    finally { ArrayPool<byte>.Shared.Return(begun.Block); }
                    Written(begun.Used);
                }
                (byte[]? Block, int Used) next = default;
                lock (_sendLock)
                {
                    if (_full.Count > 0) next = _full.Dequeue();
                    else if (_currentUsed > 0)
                    {
                        next = (_current, _currentUsed);
                        _current = null;
                        _currentUsed = 0;
                    }
                    else if (_closed) return;
                    else _writerIdle = true;
                }
                if (next.Block is null)
                {
                    if (!await _doorbell.Reader.WaitToReadAsync(ct).ConfigureAwait(false)) return;
                    _doorbell.Reader.TryRead(out _);
                    continue;
                }
                try { await _stream.WriteAsync(next.Block.AsMemory(0, next.Used), ct).ConfigureAwait(false); }
                finally { ArrayPool<byte>.Shared.Return(next.Block); }
                Written(next.Used);
            }
        }
        catch (Exception e) when (IsEnd(e))
        {
            // The association is over; the reader sees the end.
        }
        finally
        {
            if (_handover is { } begun)
            {
                // Disposal woke the writer while a write begun at a batch's end was still running.
                _handover = null;
                try { await begun.Write.ConfigureAwait(false); }
                catch (Exception e) when (IsEnd(e)) { }
                ArrayPool<byte>.Shared.Return(begun.Block);
            }
            ReleaseQueue();
        }
    }

    /// <summary>Closes the queue: later frames are not queued, queued blocks go back to the pool, waiting senders go on.</summary>
    private void ReleaseQueue()
    {
        TaskCompletionSource? resume;
        lock (_sendLock)
        {
            _closed = true;
            while (_full.TryDequeue(out var b)) ArrayPool<byte>.Shared.Return(b.Block);
            if (_current is not null) ArrayPool<byte>.Shared.Return(_current);
            _current = null;
            _currentUsed = _queuedBytes = 0;
            resume = _room;
            _room = null;
        }
        resume?.TrySetResult();
    }

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        _doorbell.Writer.TryComplete();
        _stop.Cancel();
        await _writer.ConfigureAwait(false);
        ReleaseQueue();
        foreach (var c in _checks.Values) c.TrySetResult(false);
        await _stream.DisposeAsync().ConfigureAwait(false);
        _stop.Dispose();
        // _in is not returned to the pool: a receive may still be running on it until the stream's end reaches it.
    }
}
