using System.Buffers;
using System.Threading.Channels;
using PtHost.Contract;

namespace PtHost.Transports.Rud;

/// <summary>
/// A datagram stream (spec/rud.md §8.2, kind 2): unreliable, unordered messages of at most
/// <see cref="MaxDatagramSize"/> bytes, each in one DATAGRAM frame, never retransmitted. Both
/// queues are bounded: a full send queue refuses, a full receive queue drops the oldest. On the
/// server one datagram stream is one UDP association's datagram carrier (spec/rud.md §12.1).
/// </summary>
public sealed class RudDatagramStream : IDatagramCarrier
{
    public const int MaxDatagramSize = 1200;
    public const int QueueLimit = 256;
    private readonly RudConnection _conn;
    private readonly Channel<(byte[] Buffer, int Length)> _received;
    private ulong _nextIndex;

    internal RudDatagramStream(RudConnection conn, ulong id)
    {
        _conn = conn;
        Id = id;
        _received = Channel.CreateBounded<(byte[] Buffer, int Length)>(
            new BoundedChannelOptions(QueueLimit) { FullMode = BoundedChannelFullMode.DropOldest, SingleReader = false, SingleWriter = true },
            dropped => ArrayPool<byte>.Shared.Return(dropped.Buffer));
    }

    public ulong Id { get; }

    /// <summary>Datagrams this side dropped because the receive queue was full.</summary>
    public long Overflowed { get; private set; }

    /// <summary>Queues one datagram; false when it is too large, the send queue is full, or the connection closed.</summary>
    public bool TrySend(ReadOnlySpan<byte> datagram)
    {
        if (datagram.Length > MaxDatagramSize) return false;
        lock (_conn.Gate)
        {
            if (_conn.IsClosed) return false;
            var buffer = ArrayPool<byte>.Shared.Rent(Math.Max(datagram.Length, 1));
            datagram.CopyTo(buffer);
            if (_conn.QueueDatagram(new OutgoingDatagram(Id, _nextIndex, buffer, datagram.Length))) { _nextIndex++; return true; }
            ArrayPool<byte>.Shared.Return(buffer);
            return false;
        }
    }

    /// <summary>The next datagram, copied into <paramref name="buffer"/>; returns its length (cut to the buffer).</summary>
    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(System.Runtime.CompilerServices.PoolingAsyncValueTaskMethodBuilder<>))]
    public async ValueTask<int> ReceiveAsync(Memory<byte> buffer, CancellationToken cancellationToken)
    {
        var (data, length) = await _received.Reader.ReadAsync(cancellationToken).ConfigureAwait(false);
        int n = Math.Min(length, buffer.Length);
        data.AsSpan(0, n).CopyTo(buffer.Span);
        ArrayPool<byte>.Shared.Return(data);
        return n;
    }

    int IDatagramCarrier.MaxFrameLength => MaxDatagramSize;

    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(System.Runtime.CompilerServices.PoolingAsyncValueTaskMethodBuilder<>))]
    async ValueTask<int> IDatagramCarrier.ReceiveAsync(Memory<byte> buffer, CancellationToken cancellationToken)
    {
        try { return await ReceiveAsync(buffer, cancellationToken).ConfigureAwait(false); }
        catch (ChannelClosedException) { return -1; }
    }

    ValueTask<bool> IDatagramCarrier.SendAsync(ReadOnlyMemory<byte> frame, CancellationToken cancellationToken) => ValueTask.FromResult(TrySend(frame.Span));

    void IDatagramCarrier.Complete() => Complete(null);

    internal void Deliver(ReadOnlySpan<byte> data)
    {
        var buffer = ArrayPool<byte>.Shared.Rent(Math.Max(data.Length, 1));
        data.CopyTo(buffer);
        if (_received.Reader.Count >= QueueLimit) Overflowed++;
        if (!_received.Writer.TryWrite((buffer, data.Length))) ArrayPool<byte>.Shared.Return(buffer);
    }

    internal void Complete(Exception? error) => _received.Writer.TryComplete(error);
}

internal readonly record struct OutgoingDatagram(ulong StreamId, ulong Index, byte[] Buffer, int Length);
