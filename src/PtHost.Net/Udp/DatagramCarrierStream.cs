using PtHost.Contract;

namespace PtHost.Net.Udp;

/// <summary>
/// The server process's end of a datagram carrier (spec/turn.md §5.6) as a stream that the host
/// relays to its UDP association: each read returns one DATA or CHECK frame from the client process,
/// each frame written goes out as one datagram. OPEN (a keep-alive) is answered with the RELAYED frame
/// again, never longer than the OPEN; CLOSE ends the association, as does <see cref="IdleTimeout"/>
/// without a datagram from the client. A datagram that is not exactly one frame, or whose payload is
/// above <see cref="MaxPayload"/>, is dropped and counted.
/// </summary>
internal sealed class DatagramCarrierStream : Stream, IHalfClosable
{
    public static readonly TimeSpan IdleTimeout = TimeSpan.FromSeconds(60);
    public static readonly TimeSpan IdleCheck = TimeSpan.FromSeconds(15);
    private readonly IDatagramCarrier _carrier;
    private readonly byte[] _in;
    private readonly FrameBuffer _out = new("the host");
    private readonly CancellationTokenSource _stop = new();
    private int _pendingAt, _pendingEnd;
    private byte[]? _relayed;
    private long _lastHeard = Environment.TickCount64;
    private long _fromClient, _toClient, _tooLarge, _notSent, _malformed;
    private int _ended;

    public DatagramCarrierStream(IDatagramCarrier carrier)
    {
        _carrier = carrier;
        _in = GC.AllocateUninitializedArray<byte>(carrier.MaxFrameLength);
    }

    /// <summary>The largest payload either way: the carrier's largest datagram less the longest header (22 bytes).</summary>
    public int MaxPayload => _carrier.MaxFrameLength - DatagramFrame.MaxHeaderLength;

    /// <summary>Frames from the client, datagrams to it, dropped as too large, not sent (carrier full or gone), malformed.</summary>
    public (long FromClient, long ToClient, long TooLarge, long NotSent, long Malformed) Counts =>
        (Interlocked.Read(ref _fromClient), Interlocked.Read(ref _toClient), Interlocked.Read(ref _tooLarge), Interlocked.Read(ref _notSent), Interlocked.Read(ref _malformed));

    /// <summary>
    /// Waits for the first datagram (at most <see cref="IdleTimeout"/>): true when it is OPEN
    /// <c>[::]:0</c> of at least 22 bytes, false for anything else (counted as malformed), null when
    /// the carrier ended or nothing came in time.
    /// </summary>
    public async Task<bool?> ReceiveOpenAsync(CancellationToken cancellationToken)
    {
        int n;
        using (var first = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, _stop.Token))
        {
            first.CancelAfter(IdleTimeout);
            try { n = await _carrier.ReceiveAsync(_in, first.Token).ConfigureAwait(false); }
            catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested) { return null; }
        }
        if (n < 0) return null;
        Volatile.Write(ref _lastHeard, Environment.TickCount64);
        if (DatagramFrame.TryReadDatagram(_in.AsSpan(0, n), out var type, out var address, out _)
            && type == DatagramFrameType.Open && address.Port == 0 && n >= DatagramFrame.OpenFrame.Length)
            return true;
        Interlocked.Increment(ref _malformed);
        return false;
    }

    /// <summary>Sends CLOSE (best effort) without waiting.</summary>
    public void SendClose() => Fire(DatagramFrame.CloseFrame);

    /// <summary>Runs the idle check until the association ends.</summary>
    public async Task IdleLoopAsync(Action<TimeSpan> ended)
    {
        using var timer = new PeriodicTimer(IdleCheck);
        try
        {
            while (await timer.WaitForNextTickAsync(_stop.Token).ConfigureAwait(false))
            {
                if (Environment.TickCount64 - Volatile.Read(ref _lastHeard) > (long)IdleTimeout.TotalMilliseconds)
                {
                    ended(IdleTimeout);
                    SendClose();
                    End();
                    return;
                }
            }
        }
        catch (OperationCanceledException) { }
    }

    private void Fire(byte[] frame)
    {
        var send = _carrier.SendAsync(frame, CancellationToken.None);
        if (!send.IsCompleted) _ = send.AsTask().ContinueWith(static t => _ = t.Exception, TaskScheduler.Default);
    }

    /// <summary>Ends the association: a pending read returns 0 (the relay ends), the carrier is completed.</summary>
    public void End()
    {
        if (Interlocked.Exchange(ref _ended, 1) != 0) return;
        _carrier.Complete();
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
            int n = await _carrier.ReceiveAsync(_in, cancellationToken).ConfigureAwait(false);
            if (n < 0)
            {
                End();
                return 0;
            }
            Volatile.Write(ref _lastHeard, Environment.TickCount64);
            if (!DatagramFrame.TryReadDatagram(_in.AsSpan(0, n), out var type, out _, out var payload) || payload.GetOffsetAndLength(n).Length > MaxPayload)
            {
                Interlocked.Increment(ref _malformed); // not one frame, or a payload above the carrier's maximum
                continue;
            }
            switch (type)
            {
                case DatagramFrameType.Open: // OPEN repeated or keep-alive: RELAYED again, never longer than the OPEN
                    if (Volatile.Read(ref _relayed) is { } relayed && n >= relayed.Length) Fire(relayed);
                    continue;
                case DatagramFrameType.Close:
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

    // ---- from the host's UDP association: one datagram per frame ---------------------------------

    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(System.Runtime.CompilerServices.PoolingAsyncValueTaskMethodBuilder))]
    public override async ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
    {
        while (buffer.Length > 0)
        {
            buffer = _out.Append(buffer);
            while (_out.TryTake(out var type, out _, out var frame, out var payload))
            {
                if (type == DatagramFrameType.Relayed && _relayed is null) Volatile.Write(ref _relayed, frame.ToArray());
                if (payload.Length > MaxPayload) Interlocked.Increment(ref _tooLarge); // a peer's datagram the carrier cannot take
                else if (await _carrier.SendAsync(frame, _stop.Token).ConfigureAwait(false)) Interlocked.Increment(ref _toClient);
                else Interlocked.Increment(ref _notSent);
            }
        }
    }

    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException("use WriteAsync");

    /// <summary>The host's association ended: the client process is told with CLOSE, twice (best effort).</summary>
    public void ShutdownWrite()
    {
        if (Volatile.Read(ref _ended) == 0)
        {
            SendClose();
            SendClose();
        }
        End();
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            End();
            _out.Release(); // the relay loop is over: nothing writes to the buffer any more
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
