using System.Buffers;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Threading.Channels;
using PtHost.Quic.Native;

namespace PtHost.Quic;

/// <summary>Raised on a stream whose peer reset it, or whose connection closed.</summary>
public sealed class QuicStreamAbortedException(string message, ulong? errorCode = null) : IOException(message)
{
    public ulong? ErrorCode { get; } = errorCode;
}

/// <summary>
/// One QUIC stream as a .NET Stream. Reads take data ngtcp2 delivered (copied into pooled
/// buffers) and return flow-control credit to the peer as the application consumes it. Writes
/// copy into pinned chunks that ngtcp2 sends from, and which are released when acknowledged;
/// a writer waits once StreamSendBuffer bytes are queued and unacknowledged.
/// </summary>
public sealed class QuicStream : Stream, PtHost.Contract.IHalfClosable, PtHost.Contract.IAbortable
{
    /// <summary>Received bytes: a run inside a pooled chunk. The loop fills chunks front to
    /// back, so a segment ending at the chunk's end is its last, and the reader returns the
    /// chunk to the pool when it has consumed that segment.</summary>
    private readonly record struct Segment(byte[] Buffer, int Offset, int Length);

    internal readonly QuicConnection Connection;
    private readonly Channel<Segment> _received = Channel.CreateUnbounded<Segment>(
        new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
    private Segment _current;
    private int _currentPos;
    private bool _readEof;
    private byte[]? _fill;          // loop thread: the chunk OnData appends to
    private int _fillPos;
    /// <summary>Interlocked counters live outside the Stream (a MarshalByRefObject).</summary>
    internal sealed class Signals { public int WorkScheduled; public long PendingCredit; }
    internal readonly Signals Flags = new();

    // Send state, guarded by _sendLock. Offsets are absolute stream offsets.
    private readonly object _sendLock = new();
    private readonly List<byte[]> _chunks = [];
    private long _chunkBase, _written, _sent, _acked;
    private bool _finRequested, _finSent;
    private Exception? _writeError;
    private readonly SemaphoreSlim _space = new(0, 1);
    private readonly int _sendLimit;

    internal bool InSendQueue;       // loop thread only
    internal bool Blocked;           // loop thread only: flow control blocked
    internal bool StopReadingRequested;
    internal bool RemoteUniFinished;  // loop thread only: a peer's unidirectional stream got its FIN or reset
    internal bool Closed;            // loop thread only

    internal QuicStream(QuicConnection connection, long id, int sendLimit)
    {
        Connection = connection;
        Id = id;
        _sendLimit = sendLimit;
    }

    private readonly TaskCompletionSource _closedTcs = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public long Id { get; }

    /// <summary>Completes when ngtcp2 has closed the stream: for a local unidirectional stream,
    /// once every byte and the FIN were acknowledged (or the connection ended).</summary>
    public Task Completed => _closedTcs.Task;
    public bool IsUnidirectional => (Id & 2) != 0;
    /// <summary>True when this side opened the stream.</summary>
    public bool IsLocal => ((Id & 1) == 1) == Connection.IsServer;

    public override bool CanRead => !(IsUnidirectional && IsLocal);
    public override bool CanWrite => !(IsUnidirectional && !IsLocal);
    public override bool CanSeek => false;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

    // ---- receive side ----

    /// <summary>Loop thread: ngtcp2 delivered in-order data (valid only during the callback).</summary>
    internal void OnData(ReadOnlySpan<byte> data, bool fin)
    {
        while (data.Length > 0)
        {
            if (_fill is null || _fillPos == PinnedChunkPool.ChunkSize)
            {
                _fill = PinnedChunkPool.Rent();
                _fillPos = 0;
            }
            var n = Math.Min(data.Length, PinnedChunkPool.ChunkSize - _fillPos);
            data[..n].CopyTo(_fill.AsSpan(_fillPos));
            // A completed channel (reader gone or aborted) drops the bytes; the chunk is then
            // left to the collector rather than risk returning it twice.
            if (!_received.Writer.TryWrite(new Segment(_fill, _fillPos, n))) { _fill = null; break; }
            _fillPos += n;
            data = data[n..];
        }
        if (fin)
        {
            _received.Writer.TryComplete();
            FinishIfRemoteUni();
        }
    }

    /// <summary>Loop thread (inside a callback): a peer's unidirectional stream has nothing more
    /// to come; the connection finishes it outside the callback.</summary>
    internal void FinishIfRemoteUni()
    {
        if (!IsUnidirectional || IsLocal || RemoteUniFinished) return;
        RemoteUniFinished = true;
        Connection.ScheduleStreamWork(this);
    }

    /// <summary>Loop thread: the receive side ended abnormally.</summary>
    internal void OnReadAborted(Exception error) => _received.Writer.TryComplete(error);

    public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        if (!CanRead) throw new NotSupportedException("this unidirectional stream is send-only");
        if (_readEof) return 0;
        if (buffer.Length == 0)
        {
            // Zero-byte read: wait until data (or the end) is there, without taking any.
            if (_current.Buffer is not null && _currentPos < _current.Length) return 0;
            try { await _received.Reader.WaitToReadAsync(cancellationToken).ConfigureAwait(false); }
            catch (ChannelClosedException e) when (e.InnerException is not null) { throw e.InnerException; }
            return 0;
        }
        if (_current.Buffer is null || _currentPos == _current.Length)
        {
            ReleaseCurrent();
            Segment next;
            while (!_received.Reader.TryRead(out next))
            {
                bool more;
                try
                {
                    more = await _received.Reader.WaitToReadAsync(cancellationToken).ConfigureAwait(false);
                }
                catch (QuicStreamAbortedException) { throw; }
                catch (ChannelClosedException e) when (e.InnerException is not null) { throw e.InnerException; }
                if (!more)
                {
                    _readEof = true;
                    if (_lastChunk is not null) PinnedChunkPool.Return(_lastChunk); // the final, partly filled chunk
                    _lastChunk = null;
                    return 0;
                }
            }
            _current = next;
            _currentPos = 0;
        }
        // Fill the caller's buffer from as many queued segments as it holds (a segment is one
        // packet's worth): one read, one write downstream and one credit update per batch.
        var span = buffer.Span;
        var n = 0;
        while (true)
        {
            var take = Math.Min(span.Length - n, _current.Length - _currentPos);
            _current.Buffer.AsSpan(_current.Offset + _currentPos, take).CopyTo(span[n..]);
            _currentPos += take;
            n += take;
            if (n == span.Length) break;
            if (!_received.Reader.TryRead(out var more)) break;
            ReleaseCurrent();
            _current = more;
            _currentPos = 0;
        }
        Interlocked.Add(ref Flags.PendingCredit, n);
        Connection.ScheduleStreamWork(this);
        return n;
    }

    private byte[]? _lastChunk;     // reader: chunk of the last consumed segment, not yet returned

    /// <summary>Reader: done with the current segment; its chunk goes back when this was the chunk's last segment.</summary>
    private void ReleaseCurrent()
    {
        if (_current.Buffer is not null)
        {
            if (_current.Offset + _current.Length == PinnedChunkPool.ChunkSize)
            {
                PinnedChunkPool.Return(_current.Buffer);
                _lastChunk = null;
            }
            else _lastChunk = _current.Buffer;
        }
        _current = default;
    }

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override int Read(byte[] buffer, int offset, int count) =>
        throw new NotSupportedException("QuicStream is asynchronous only; use ReadAsync");

    // ---- send side ----

    public override async ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
    {
        if (!CanWrite) throw new NotSupportedException("this unidirectional stream is receive-only");
        while (buffer.Length > 0)
        {
            int took;
            lock (_sendLock)
            {
                if (_writeError is not null) throw _writeError;
                if (_finRequested) throw new InvalidOperationException("writes on this stream were completed");
                var room = (int)Math.Min(int.MaxValue, _sendLimit - (_written - _acked));
                took = Math.Min(room, buffer.Length);
                if (took > 0) AppendLocked(buffer.Span[..took]);
            }
            if (took > 0)
            {
                buffer = buffer[took..];
                Connection.ScheduleStreamWork(this);
                continue;
            }
            await _space.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
    }

    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override void Write(byte[] buffer, int offset, int count) =>
        throw new NotSupportedException("QuicStream is asynchronous only; use WriteAsync");

    private void AppendLocked(ReadOnlySpan<byte> data)
    {
        while (data.Length > 0)
        {
            var posInChunks = _written - _chunkBase;
            var index = (int)(posInChunks / PinnedChunkPool.ChunkSize);
            var offset = (int)(posInChunks % PinnedChunkPool.ChunkSize);
            if (index == _chunks.Count) _chunks.Add(PinnedChunkPool.Rent());
            var n = Math.Min(data.Length, PinnedChunkPool.ChunkSize - offset);
            data[..n].CopyTo(_chunks[index].AsSpan(offset));
            _written += n;
            data = data[n..];
        }
    }

    /// <summary>Sends FIN after the queued data (the peer's read returns 0 there).</summary>
    public void CompleteWrites()
    {
        if (!CanWrite) return;
        lock (_sendLock)
        {
            if (_finRequested || _writeError is not null) return;
            _finRequested = true;
        }
        Connection.ScheduleStreamWork(this);
    }

    void PtHost.Contract.IHalfClosable.ShutdownWrite() => CompleteWrites();

    /// <summary>The application error code <see cref="PtHost.Contract.IAbortable.Abort"/> sends in
    /// RESET_STREAM and STOP_SENDING: the session's other side failed.</summary>
    public const ulong SessionAbortedCode = 1;

    void PtHost.Contract.IAbortable.Abort() => Abort(SessionAbortedCode);

    /// <summary>Abandons the stream both ways (RESET_STREAM and STOP_SENDING with this code).</summary>
    public void Abort(ulong errorCode) => Connection.AbortStream(this, errorCode);

    public override Task FlushAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    public override void Flush() { }
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();

    /// <summary>Loop thread: something to hand to writev_stream?</summary>
    internal bool HasSendWork
    {
        get { lock (_sendLock) return _writeError is null && (_sent < _written || (_finRequested && !_finSent)); }
    }

    /// <summary>Loop thread: fill ngtcp2_vec entries with unsent data.</summary>
    internal unsafe int BuildVecs(byte* vecs, int maxVecs, out long total, out bool fin)
    {
        lock (_sendLock)
        {
            total = 0;
            var count = 0;
            var pos = _sent;
            while (pos < _written && count < maxVecs)
            {
                var rel = pos - _chunkBase;
                var index = (int)(rel / PinnedChunkPool.ChunkSize);
                var offset = (int)(rel % PinnedChunkPool.ChunkSize);
                var len = (int)Math.Min(PinnedChunkPool.ChunkSize - offset, _written - pos);
                var v = vecs + count * Layout.Vec.Size;
                *(nint*)(v + Layout.Vec.Base) =
                    (nint)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(_chunks[index])) + offset;
                *(nuint*)(v + Layout.Vec.Len) = (nuint)len;
                pos += len;
                total += len;
                count++;
            }
            fin = _finRequested && !_finSent && pos == _written;
            return count;
        }
    }

    /// <summary>Loop thread: ngtcp2 accepted this many bytes (and the FIN when all were taken).</summary>
    internal void OnSent(long accepted, bool finOffered, long offered)
    {
        lock (_sendLock)
        {
            _sent += accepted;
            if (finOffered && accepted == offered) _finSent = true;
        }
    }

    /// <summary>Loop thread: acked_stream_data_offset (called in increasing order).</summary>
    internal void OnAcked(ulong offset, ulong length)
    {
        lock (_sendLock)
        {
            _acked = Math.Max(_acked, (long)(offset + length));
            while (_chunks.Count > 0 && _acked >= _chunkBase + PinnedChunkPool.ChunkSize && _sent >= _chunkBase + PinnedChunkPool.ChunkSize)
            {
                PinnedChunkPool.Return(_chunks[0]);
                _chunks.RemoveAt(0);
                _chunkBase += PinnedChunkPool.ChunkSize;
            }
        }
        if (_space.CurrentCount == 0)
            try { _space.Release(); } catch (SemaphoreFullException) { }
    }

    /// <summary>Loop thread: the send side failed (STOP_SENDING, reset, connection closed).</summary>
    internal void OnWriteAborted(Exception error)
    {
        lock (_sendLock) _writeError ??= error;
        if (_space.CurrentCount == 0)
            try { _space.Release(); } catch (SemaphoreFullException) { }
    }

    /// <summary>Loop thread: ngtcp2 closed the stream; its memory is no longer referenced.</summary>
    internal void OnClosed(Exception? error)
    {
        Closed = true;
        _closedTcs.TrySetResult();
        OnReadAborted(error ?? new QuicStreamAbortedException("stream closed"));
        OnWriteAborted(error ?? new QuicStreamAbortedException("stream closed"));
        lock (_sendLock)
        {
            foreach (var c in _chunks) PinnedChunkPool.Return(c);
            _chunks.Clear();
            _chunkBase = _written;
        }
    }

    internal bool ReadFinished => _readEof;

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            CompleteWrites();
            if (CanRead && !_readEof)
            {
                StopReadingRequested = true;
                Connection.ScheduleStreamWork(this);
            }
            // Chunks still queued here may be shared with the loop's fill chunk: they are left
            // to the collector (only on a stream disposed before its end).
            _current = default;
        }
        base.Dispose(disposing);
    }

    public override ValueTask DisposeAsync()
    {
        Dispose(true);
        GC.SuppressFinalize(this);
        return ValueTask.CompletedTask;
    }
}
