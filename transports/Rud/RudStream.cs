using System.Buffers;
using PtHost.Contract;

namespace PtHost.Transports.Rud;

/// <summary>
/// One asynchronous or transactional stream of a connection (spec/rud.md §8): a reliable,
/// ordered byte stream each way, flow-controlled by a 1 MiB window, ending with the final flag.
/// All state is guarded by the endpoint's lock; reads and writes wait on completion sources,
/// never by blocking a thread.
/// </summary>
public sealed class RudStream : Stream, IHalfClosable, IAbortable
{
    public const int Window = 4 << 20;
    private readonly RudConnection _conn;
    private readonly object _gate;

    // Send side: bytes [_sendBase, _writeOffset) are in the ring; [_sendBase, _nextNew) were sent at least once.
    private byte[]? _sendRing;
    private ulong _writeOffset, _sendBase, _nextNew, _peerMax = Window;
    private bool _finRequested, _finSent, _finAcked, _finLost;
    private readonly RangeSet _ackedAbove = new();
    private readonly RangeSet _lost = new();
    private TaskCompletionSource? _writeWaiter;

    // Receive side: bytes [_readOffset, _contiguous) are ready; _received tracks ranges above _readOffset.
    private byte[]? _recvRing;
    private ulong _readOffset, _contiguous, _advertisedMax = Window;
    private long _finalSize = -1;
    private readonly RangeSet _received = new();
    private TaskCompletionSource? _readWaiter;
    private bool _appClosed;

    private Exception? _error;
    private bool _resetSent;

    internal RudStream(RudConnection conn, ulong id)
    {
        _conn = conn;
        _gate = conn.Gate;
        Id = id;
        Kind = RudWire.StreamKindOf(id);
    }

    /// <summary>The stream id (§8.1).</summary>
    public ulong Id { get; }

    public StreamKind Kind { get; }

    public RudConnection Connection => _conn;

    // ---- scheduling state, owned by the connection ----
    internal bool InSendQueue;
    internal bool WindowUpdatePending;
    internal bool ResetPending;
    internal ulong ResetCode;

    internal bool SendDone => _resetSent || _error is not null || (_finAcked && _sendBase == _writeOffset);
    internal bool ReceiveDone => _error is not null || (_finalSize >= 0 && _contiguous == (ulong)_finalSize);
    internal ulong AdvertisedMax => _advertisedMax;
    internal ulong FinalSizeForReset => _writeOffset;

    // ---- application side ----

    public override bool CanRead => true;
    public override bool CanWrite => true;
    public override bool CanSeek => false;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
    public override void Flush() { }
    public override Task FlushAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();
    public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException("RudStream is asynchronous: use ReadAsync");
    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException("RudStream is asynchronous: use WriteAsync");

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        while (true)
        {
            Task wait;
            lock (_gate)
            {
                if (_appClosed) throw new ObjectDisposedException(nameof(RudStream));
                if (_finalSize >= 0 && _readOffset == (ulong)_finalSize) return 0;
                if (_error is not null) throw new IOException(_error.Message, _error);
                bool whole = Kind != StreamKind.Transactional || (_finalSize >= 0 && _contiguous == (ulong)_finalSize);
                if (_contiguous > _readOffset && whole)
                {
                    if (buffer.IsEmpty) return 0; // a zero-byte read waits for data, like a socket's

                    int n = (int)Math.Min((ulong)buffer.Length, _contiguous - _readOffset);
                    CopyOut(_recvRing!, _readOffset, buffer.Span[..n]);
                    _readOffset += n == 0 ? 0 : (ulong)n;
                    _received.Remove(0, _readOffset);
                    MaybeOpenWindow();
                    return n;
                }
                if (_finalSize >= 0 && _readOffset == (ulong)_finalSize) return 0;
                _readWaiter ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                wait = _readWaiter.Task;
            }
            await wait.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
    }

    public override async ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
    {
        while (!buffer.IsEmpty)
        {
            Task wait;
            lock (_gate)
            {
                if (_appClosed) throw new ObjectDisposedException(nameof(RudStream));
                if (_error is not null) throw new IOException(_error.Message, _error);
                if (_finRequested) throw new InvalidOperationException("the write side is shut down");
                ulong space = Window - (_writeOffset - _sendBase);
                int n = (int)Math.Min(space, (ulong)buffer.Length);
                if (n > 0 && !TryEnsureRing(ref _sendRing, _sendBase, _writeOffset, _writeOffset + (ulong)n, force: false))
                {
                    // No room to grow (§8.3): write what the ring holds; more when acknowledgements free it.
                    n = (int)Math.Min((ulong)n, (ulong)(_sendRing?.Length ?? 0) - (_writeOffset - _sendBase));
                }
                if (n > 0)
                {
                    CopyIn(_sendRing!, _writeOffset, buffer.Span[..n]);
                    _writeOffset += (ulong)n;
                    buffer = buffer[n..];
                    _conn.ScheduleSend(this);
                    _conn.FlushInline();
                    continue;
                }
                _writeWaiter ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                // Held back by ring memory rather than the window: rings other streams return count too.
                wait = space > 0 ? Task.WhenAny(_writeWaiter.Task, _conn.RingsReleased) : _writeWaiter.Task;
            }
            await wait.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>Sends the final flag after the bytes written so far (a TCP half-close).</summary>
    public void ShutdownWrite()
    {
        lock (_gate)
        {
            if (_finRequested || _error is not null) return;
            _finRequested = true;
            _conn.ScheduleSend(this);
        }
    }

    void IAbortable.Abort() => Abort(1);

    /// <summary>Ends the stream at once both ways with RESET_STREAM (§8.4).</summary>
    public void Abort(ulong code = 1)
    {
        lock (_gate)
        {
            if (_error is not null) return;
            _conn.QueueReset(this, code);
            Fail(new IOException($"stream {Id} aborted"));
        }
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            lock (_gate)
            {
                if (!_appClosed)
                {
                    _appClosed = true;
                    if (_error is null && !ReceiveDone)
                    {
                        // Closed while the peer may still send (§8.4): both directions are reset, as TCP answers
                        // unread data with RST. The host closes so at its preamble limit (spec/session.md §3).
                        _conn.QueueReset(this, 1);
                        Fail(new IOException($"stream {Id} closed before the peer finished"));
                    }
                    else if (_error is null)
                    {
                        // A graceful end of what was written.
                        if (!_finRequested) { _finRequested = true; _conn.ScheduleSend(this); }
                        _readOffset = _contiguous;
                        _received.Remove(0, _readOffset);
                        ReturnReceiveRing();
                    }
                    _conn.StreamMaybeFinished(this);
                }
            }
        }
        base.Dispose(disposing);
    }

    public override ValueTask DisposeAsync()
    {
        Dispose(true);
        GC.SuppressFinalize(this);
        return ValueTask.CompletedTask;
    }

    // ---- connection side (called under the lock) ----

    internal bool HasSendWork =>
        _error is null && (!_lost.IsEmpty || _finLost || _nextNew < Math.Min(_writeOffset, _peerMax) || (_finRequested && !_finSent && _nextNew == _writeOffset));

    /// <summary>
    /// Writes one STREAM frame into <paramref name="dest"/> (lost bytes first, then new ones);
    /// returns its length, 0 when nothing fits or nothing is due.
    /// </summary>
    internal int WriteFrame(Span<byte> dest, out ulong offset, out int length, out bool fin, out bool retransmission)
    {
        offset = 0; length = 0; fin = false; retransmission = false;
        if (_error is not null) return 0;
        ulong start, end;
        if (!_lost.IsEmpty)
        {
            (start, end) = _lost.First;
            retransmission = true;
        }
        else if (_finLost && _nextNew == _writeOffset && _finSent)
        {
            start = end = _writeOffset;
            retransmission = true;
        }
        else
        {
            start = _nextNew;
            end = Math.Min(_writeOffset, _peerMax);
            if (start == end && !(_finRequested && !_finSent && start == _writeOffset)) return 0;
        }
        int overhead = RudWire.StreamFrameOverhead(Id, start, (int)Math.Min(end - start, 16383));
        if (dest.Length < overhead + (end > start ? 1 : 0)) return 0;
        int n = (int)Math.Min(end - start, (ulong)(dest.Length - overhead));
        ulong stop = start + (ulong)n;
        bool isFin = _finRequested && stop == _writeOffset && (retransmission ? (_finLost || _finSent) : true);
        var frameDest = dest;
        frameDest[0] = isFin ? FrameType.StreamFinal : FrameType.Stream;
        int pos = 1 + RudWire.WriteVarint(frameDest[1..], Id);
        pos += RudWire.WriteVarint(frameDest[pos..], start);
        pos += RudWire.WriteVarint(frameDest[pos..], (ulong)n);
        if (n > 0) CopyOut(_sendRing!, start, frameDest.Slice(pos, n));
        pos += n;
        if (retransmission)
        {
            if (n > 0) _lost.Remove(start, stop);
            if (isFin) _finLost = false;
        }
        else
        {
            _nextNew = stop;
            if (isFin) _finSent = true;
        }
        offset = start;
        length = n;
        fin = isFin;
        return pos;
    }

    internal void OnAcked(ulong offset, int length, bool fin)
    {
        if (fin) { _finAcked = true; _finLost = false; }
        if (length > 0 && offset + (ulong)length > _sendBase)
        {
            _ackedAbove.Add(Math.Max(offset, _sendBase), offset + (ulong)length);
            _lost.Remove(offset, offset + (ulong)length);
            ulong newBase = _ackedAbove.ContiguousFrom(_sendBase);
            if (newBase > _sendBase)
            {
                _sendBase = newBase;
                _ackedAbove.Remove(0, _sendBase);
                _conn.Endpoint.WakeAfterBatch(ref _writeWaiter);
            }
        }
        if (SendDone) _conn.StreamMaybeFinished(this);
    }

    internal void OnLost(ulong offset, int length, bool fin)
    {
        if (_error is not null) return;
        if (length > 0 && offset + (ulong)length > _sendBase)
        {
            ulong from = Math.Max(offset, _sendBase), to = offset + (ulong)length;
            _lost.Add(from, to);
            _lost.Subtract(_ackedAbove, from, to);
        }
        if (fin && !_finAcked) _finLost = true;
        if (HasSendWork) _conn.ScheduleSend(this);
    }

    internal void OnMaxStreamData(ulong max)
    {
        if (max <= _peerMax) return;
        _peerMax = max;
        if (HasSendWork) _conn.ScheduleSend(this);
    }

    /// <summary>Takes a STREAM frame's data; false for a flow-control or final-size violation.</summary>
    internal bool OnStreamFrame(ulong offset, ReadOnlySpan<byte> data, bool fin)
    {
        ulong end = offset + (ulong)data.Length;
        if (end > _advertisedMax) return false;
        if (_finalSize >= 0 && (end > (ulong)_finalSize || (fin && end != (ulong)_finalSize))) return false;
        if (fin) _finalSize = (long)end;
        if (_error is not null) return true;
        if (end > _readOffset && data.Length > 0)
        {
            ulong from = Math.Max(offset, _readOffset);
            var slice = data[(int)(from - offset)..];
            if (_appClosed) { /* consumed and dropped */ }
            else
            {
                // CanTake allowed the growth before the packet was acknowledged (§8.3).
                TryEnsureRing(ref _recvRing, _readOffset, _readOffset + (ulong)(_recvRing?.Length ?? 0), end, force: true);
                CopyIn(_recvRing!, from, slice);
            }
            _received.Add(from, end);
            _contiguous = _received.ContiguousFrom(_readOffset);
            if (_contiguous < _readOffset) _contiguous = _readOffset;
            if (_appClosed)
            {
                _readOffset = _contiguous;
                _received.Remove(0, _readOffset);
                MaybeOpenWindow();
            }
        }
        // The reader wakes once the receive batch is handled (§9.4): not a thread-pool hop per packet,
        // and not a reader that contends for the lock with the rest of the batch.
        _conn.Endpoint.WakeAfterBatch(ref _readWaiter);
        if (ReceiveDone) _conn.StreamMaybeFinished(this);
        return true;
    }

    internal void OnReset(ulong code)
    {
        Fail(new IOException($"stream {Id} reset by the peer (code {code})"));
    }

    internal void MarkResetSent() => _resetSent = true;

    /// <summary>Ends the stream with <paramref name="error"/>: waiters wake and throw.</summary>
    internal void Fail(Exception error)
    {
        if (_error is not null) return;
        _error = error;
        _lost.Clear();
        Release(ref _readWaiter);
        Release(ref _writeWaiter);
        _conn.StreamMaybeFinished(this);
    }

    internal bool Finished => (SendDone && ReceiveDone && (_appClosed || _error is not null)) || (_error is not null);

    /// <summary>Flow and reliability state, for logs and test diagnostics.</summary>
    public string DebugState
    {
        get
        {
            lock (_gate)
                return $"stream {Id}: write {_writeOffset} base {_sendBase} next {_nextNew} peerMax {_peerMax} lost {_lost.Count} fin {_finRequested}/{_finSent}/{_finAcked}/{_finLost} " +
                    $"read {_readOffset} contiguous {_contiguous} advertised {_advertisedMax} final {_finalSize} ranges {_received.Count} queued {InSendQueue} work {HasSendWork} error {_error?.Message}";
        }
    }

    internal void ReturnBuffers()
    {
        if (_sendRing is not null)
        {
            _conn.Rings.Release(_sendRing.Length);
            RingPool.Return(_sendRing);
            _sendRing = null;
            _conn.OnRingsReleased();
        }
        ReturnReceiveRing();
    }

    /// <summary>The receive ring goes back once nothing in it will be read (the application closed, the stream ended).</summary>
    private void ReturnReceiveRing()
    {
        if (_recvRing is null) return;
        _conn.Rings.Release(_recvRing.Length);
        RingPool.Return(_recvRing);
        _recvRing = null;
        _conn.OnRingsReleased();
    }

    /// <summary>Most disjoint ranges of received data above the read offset a stream keeps (§8.3, §11).</summary>
    public const int MaxReceiveRanges = 1024;

    /// <summary>How many ranges a STREAM frame's bytes [offset, end) add to those kept (0 when they touch kept ones or are not kept).</summary>
    internal int NewRanges(ulong offset, ulong end)
    {
        if (_error is not null || _appClosed || end <= _readOffset) return 0;
        return Math.Max(0, _received.CountAfterAdd(Math.Max(offset, _readOffset), end) - _received.Count);
    }

    /// <summary>
    /// Whether the STREAM frames of one packet, reaching <paramref name="end"/> and adding at most
    /// <paramref name="newRanges"/> ranges, can be taken without breaking a limit of §8.3: the number of
    /// disjoint ranges, and ring memory (<paramref name="planned"/> adds up the growth other streams of the
    /// same packet need). A packet with frames that cannot be taken is dropped unacknowledged, so the peer
    /// sends it again later. Frames that break flow control pass here and close the connection when applied.
    /// </summary>
    internal bool CanTake(ulong end, int newRanges, ref long planned)
    {
        if (_error is not null || _appClosed || end <= _readOffset || end > _advertisedMax) return true;
        if (_received.Count + newRanges > MaxReceiveRanges) return false;
        return CanGrow(_conn.Rings, _recvRing?.Length ?? 0, _readOffset, end, ref planned);
    }

    /// <summary>Whether a ring of <paramref name="capacity"/> bytes can grow to hold [readFrom, end); adds the growth to <paramref name="planned"/>.</summary>
    internal static bool CanGrow(RingAccount account, int capacity, ulong readFrom, ulong end, ref long planned)
    {
        ulong need = end - readFrom;
        if (need <= (ulong)capacity) return true;
        long growth = RingPool.SizeFor((int)Math.Min(need, Window)) - capacity;
        if (!account.CanCharge(planned + growth)) return false;
        planned += growth;
        return true;
    }

    private void MaybeOpenWindow()
    {
        if (_readOffset + Window - _advertisedMax >= Window / 8 && _finalSize < 0)
        {
            _advertisedMax = _readOffset + Window;
            _conn.QueueWindowUpdate(this);
        }
    }

    private static void Release(ref TaskCompletionSource? waiter)
    {
        var w = waiter;
        waiter = null;
        w?.TrySetResult();
    }

    /// <summary>
    /// Makes <paramref name="ring"/> hold stream offsets up to <paramref name="needEnd"/> from <paramref name="liveFrom"/>
    /// (at most <see cref="Window"/> bytes, by flow control). Rings start at 16 KiB and double as a
    /// stream's data in flight grows, so an idle or slow stream holds little and only busy ones reach
    /// the full window; the bytes in [<paramref name="liveFrom"/>, <paramref name="liveTo"/>) move over.
    /// Growth is charged to the connection's <see cref="RingAccount"/> (§8.3): false, and the ring as it
    /// was, when it does not fit (unless <paramref name="force"/>: growth a check allowed earlier).
    /// </summary>
    private bool TryEnsureRing(ref byte[]? ring, ulong liveFrom, ulong liveTo, ulong needEnd, bool force)
    {
        ulong need = needEnd - liveFrom;
        int cap = ring?.Length ?? 0;
        if (ring is not null && need <= (ulong)cap) return true;
        int size = RingPool.SizeFor((int)Math.Min(need, Window));
        if (force) _conn.Rings.Charge(size - cap);
        else if (!_conn.Rings.TryCharge(size - cap)) return false;
        var bigger = RingPool.Rent(size);
        if (ring is not null)
        {
            int live = (int)Math.Min(liveTo - liveFrom, (ulong)cap);
            int at = (int)(liveFrom % (ulong)cap);
            int first = Math.Min(live, cap - at);
            CopyIn(bigger, liveFrom, ring.AsSpan(at, first));
            if (first < live) CopyIn(bigger, liveFrom + (ulong)first, ring.AsSpan(0, live - first));
            RingPool.Return(ring); // its bytes stay charged: they are part of the bigger ring's

        }
        ring = bigger;
        return true;
    }

    private static void CopyIn(byte[] ring, ulong offset, ReadOnlySpan<byte> data)
    {
        int at = (int)(offset % (ulong)ring.Length);
        int first = Math.Min(data.Length, ring.Length - at);
        data[..first].CopyTo(ring.AsSpan(at));
        if (first < data.Length) data[first..].CopyTo(ring);
    }

    private static void CopyOut(byte[] ring, ulong offset, Span<byte> dest)
    {
        int at = (int)(offset % (ulong)ring.Length);
        int first = Math.Min(dest.Length, ring.Length - at);
        ring.AsSpan(at, first).CopyTo(dest);
        if (first < dest.Length) ring.AsSpan(0, dest.Length - first).CopyTo(dest[first..]);
    }
}
