using System.Buffers;
using System.Collections.Concurrent;
using System.Threading.Channels;
using PtHost.Contract;

namespace PtHost.Net.Udp;

/// <summary>
/// The client process's end of a UDP association over a stream carrier (spec/turn.md §5.2):
/// frames out through a bounded queue and one writer that batches them; frames in through one
/// reader. A datagram that finds the queue full is dropped (UDP semantics), a control frame waits.
/// </summary>
public sealed class StreamAssociation : IAssociation
{
    public const int QueueFrames = 2048;
    public const int BatchBytes = 64 * 1024;
    public static readonly TimeSpan RelayedTimeout = TimeSpan.FromSeconds(10);
    public static readonly TimeSpan CheckTimeout = TimeSpan.FromSeconds(10);

    private readonly Stream _stream;
    private readonly Channel<(byte[] Buffer, int Length)> _out =
        Channel.CreateBounded<(byte[], int)>(new BoundedChannelOptions(QueueFrames) { SingleReader = true, FullMode = BoundedChannelFullMode.Wait });
    private readonly ConcurrentDictionary<PeerAddress, TaskCompletionSource<bool>> _checks = new();
    private readonly CancellationTokenSource _stop = new();
    private readonly byte[] _in = ArrayPool<byte>.Shared.Rent(2 * DatagramFrame.MaxFrameLength);
    private int _start, _end;
    private Task _writer = Task.CompletedTask;
    private long _dropped;
    private int _disposed;

    private StreamAssociation(Stream stream) => _stream = stream;

    public int MaxDatagramSize => DatagramFrame.MaxPayload;

    public PeerAddress RelayedAddress { get; private set; }

    /// <summary>Datagrams dropped because the queue towards the server process was full.</summary>
    public long Dropped => Interlocked.Read(ref _dropped);

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

    public ValueTask SendAsync(PeerAddress peer, ReadOnlyMemory<byte> payload, CancellationToken cancellationToken)
    {
        if (payload.Length > MaxDatagramSize)
        {
            // Larger than a frame can carry (spec/turn.md §5.2): lost like any UDP datagram, and counted.
            Interlocked.Increment(ref _dropped);
            return ValueTask.CompletedTask;
        }
        byte[] frame = ArrayPool<byte>.Shared.Rent(DatagramFrame.HeaderLength(peer) + payload.Length);
        int n = DatagramFrame.Write(frame, DatagramFrameType.Data, peer, payload.Span);
        if (!_out.Writer.TryWrite((frame, n)))
        {
            ArrayPool<byte>.Shared.Return(frame);
            Interlocked.Increment(ref _dropped);
        }
        return ValueTask.CompletedTask;
    }

    public async ValueTask<bool> CheckPeerAsync(PeerAddress peer, CancellationToken cancellationToken)
    {
        var answer = _checks.GetOrAdd(peer, _ => new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously));
        byte[] frame = ArrayPool<byte>.Shared.Rent(DatagramFrame.MaxHeaderLength);
        int n = DatagramFrame.Write(frame, DatagramFrameType.Check, peer, default);
        using var limit = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        limit.CancelAfter(CheckTimeout);
        try
        {
            await _out.Writer.WriteAsync((frame, n), limit.Token).ConfigureAwait(false);
            return await answer.Task.WaitAsync(limit.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            return false; // no answer in time: treated as refused
        }
        catch (ChannelClosedException)
        {
            return false;
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

    private async Task WriteLoopAsync(CancellationToken ct)
    {
        byte[] batch = ArrayPool<byte>.Shared.Rent(BatchBytes);
        try
        {
            var reader = _out.Reader;
            while (await reader.WaitToReadAsync(ct).ConfigureAwait(false))
            {
                int used = 0;
                while (reader.TryPeek(out var f) && (used == 0 || used + f.Length <= batch.Length))
                {
                    reader.TryRead(out f);
                    if (f.Length > batch.Length - used)
                    {
                        // A frame larger than the batch goes alone.
                        await _stream.WriteAsync(f.Buffer.AsMemory(0, f.Length), ct).ConfigureAwait(false);
                        ArrayPool<byte>.Shared.Return(f.Buffer);
                        continue;
                    }
                    Buffer.BlockCopy(f.Buffer, 0, batch, used, f.Length);
                    used += f.Length;
                    ArrayPool<byte>.Shared.Return(f.Buffer);
                }
                if (used > 0) await _stream.WriteAsync(batch.AsMemory(0, used), ct).ConfigureAwait(false);
            }
        }
        catch (Exception e) when (e is OperationCanceledException or IOException or ObjectDisposedException or System.Net.Sockets.SocketException)
        {
            // The association is over; the reader sees the end.
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(batch);
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        _out.Writer.TryComplete();
        _stop.Cancel();
        await _writer.ConfigureAwait(false);
        while (_out.Reader.TryRead(out var f)) ArrayPool<byte>.Shared.Return(f.Buffer);
        foreach (var c in _checks.Values) c.TrySetResult(false);
        await _stream.DisposeAsync().ConfigureAwait(false);
        _stop.Dispose();
        // _in is not returned to the pool: a receive may still be running on it until the stream's end reaches it.
    }
}
