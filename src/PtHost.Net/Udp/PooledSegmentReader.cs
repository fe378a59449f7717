using System.Buffers;
using System.Runtime.CompilerServices;
using System.Threading.Channels;

namespace PtHost.Net.Udp;

/// <summary>
/// Reads a channel of pooled byte segments as a byte stream: a read fills the caller's buffer from
/// as many queued segments as fit, and each array goes back to <see cref="ArrayPool{T}.Shared"/>
/// once consumed. A zero-byte read waits for data without taking any. Single reader.
/// </summary>
public sealed class PooledSegmentReader(ChannelReader<(byte[] Buffer, int Offset, int Length)> source)
{
    private (byte[] Buffer, int Offset, int Length) _pending;

    /// <summary>Returns the partly read segment and every queued one to the pool (at disposal, after
    /// the channel was completed; no read may run concurrently).</summary>
    public void ReturnQueued()
    {
        if (_pending.Buffer is not null) ArrayPool<byte>.Shared.Return(_pending.Buffer);
        _pending = default;
        while (source.TryRead(out var f)) ArrayPool<byte>.Shared.Return(f.Buffer);
    }

    /// <summary>0 once the channel is completed and drained.</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    public async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken)
    {
        if (_pending.Buffer is null)
        {
            if (!await source.WaitToReadAsync(cancellationToken).ConfigureAwait(false)) return 0;
            if (buffer.IsEmpty) return 0;
            source.TryRead(out _pending);
        }
        if (buffer.IsEmpty) return 0;
        int written = 0;
        while (true)
        {
            int n = Math.Min(_pending.Length, buffer.Length - written);
            _pending.Buffer.AsSpan(_pending.Offset, n).CopyTo(buffer.Span[written..]);
            written += n;
            if (n < _pending.Length)
            {
                _pending = (_pending.Buffer, _pending.Offset + n, _pending.Length - n);
                return written;
            }
            ArrayPool<byte>.Shared.Return(_pending.Buffer);
            _pending = default;
            if (written == buffer.Length || !source.TryRead(out _pending)) return written;
        }
    }
}
