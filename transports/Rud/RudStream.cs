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
                if (space > 0)
                {
                    int n = (int)Math.Min(space, (ulong)buffer.Length);
                    _sendRing = EnsureRing(_sendRing, _sendBase, _writeOffset, _writeOffset + (ulong)n);
                    CopyIn(_sendRing, _writeOffset, buffer.Span[..n]);
                    _writeOffset += (ulong)n;
                    buffer = buffer[n..];
                    _conn.ScheduleSend(this);
                    _conn.FlushInline();
                    continue;
                }
                _writeWaiter ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                wait = _writeWaiter.Task;
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
                    // A graceful end of what was written; what still arrives is consumed and dropped.
                    if (_error is null && !_finRequested) { _finRequested = true; _conn.ScheduleSend(this); }
                    if (_error is null)
                    {
                        _readOffset = _contiguous;
                        _received.Remove(0, _readOffset);
                        MaybeOpenWindow();
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
                Release(ref _writeWaiter);
            }
        }
        if (SendDone) _conn.StreamMaybeFinished(this);
    }

    internal void OnLost(ulong offset, int length, bool fin)
    {
        if (_error is not null) return;
        if (length > 0 && offset + (ulong)length > _sendBase)
        {
            _lost.Add(Math.Max(offset, _sendBase), offset + (ulong)length);
            for (int i = 0; i < _ackedAbove.Count; i++) _lost.Remove(_ackedAbove[i].Start, _ackedAbove[i].End);
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
                _recvRing = EnsureRing(_recvRing, _readOffset, _readOffset + (ulong)(_recvRing?.Length ?? 0), end);
                CopyIn(_recvRing, from, slice);
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
        Release(ref _readWaiter);
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
        if (_sendRing is not null) { RingPool.Return(_sendRing); _sendRing = null; }
        if (_recvRing is not null) { RingPool.Return(_recvRing); _recvRing = null; }
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
    /// A ring that holds stream offsets up to <paramref name="needEnd"/> from <paramref name="liveFrom"/>
    /// (at most <see cref="Window"/> bytes, by flow control). Rings start at 64 KiB and double as a
    /// stream's data in flight grows, so an idle or slow stream holds little and only busy ones reach
    /// the full window; the bytes in [<paramref name="liveFrom"/>, <paramref name="liveTo"/>) move over.
    /// </summary>
    private static byte[] EnsureRing(byte[]? ring, ulong liveFrom, ulong liveTo, ulong needEnd)
    {
        ulong need = needEnd - liveFrom;
        int cap = ring?.Length ?? 0;
        if (ring is not null && need <= (ulong)cap) return ring;
        int size = Math.Max(InitialRing, cap);
        while ((ulong)size < need) size *= 2;
        var bigger = RingPool.Rent(Math.Min(size, Window));
        if (ring is not null)
        {
            int live = (int)Math.Min(liveTo - liveFrom, (ulong)cap);
            int at = (int)(liveFrom % (ulong)cap);
            int first = Math.Min(live, cap - at);
            CopyIn(bigger, liveFrom, ring.AsSpan(at, first));
            if (first < live) CopyIn(bigger, liveFrom + (ulong)first, ring.AsSpan(0, live - first));
            RingPool.Return(ring);
        }
        return bigger;
    }

    private const int InitialRing = 64 * 1024;

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
