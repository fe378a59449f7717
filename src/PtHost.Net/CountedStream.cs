using PtHost.Contract;

namespace PtHost.Net;

/// <summary>
/// A transport's stream handed to an application in process (spec/adapters.md §5.8), counting its bytes in the
/// transport's counters (spec/ipc.md §4.7) as the host's relay does: what the application reads is
/// <c>BYTES-IN</c>, what it writes <c>BYTES-OUT</c>. The first dispose disposes the inner stream and then calls
/// <paramref name="closed"/> (the session's end).
/// </summary>
public sealed class CountedStream(Stream inner, TransportCounters counters, Action closed) : Stream
{
    private int _closed;

    public override bool CanRead => inner.CanRead;
    public override bool CanWrite => inner.CanWrite;
    public override bool CanSeek => false;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

    // Reads and writes that the socket completes at once (most of them) return without an async state machine:
    // no box per call on the hot path, only the inner stream's own work.
    public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        var read = inner.ReadAsync(buffer, cancellationToken);
        if (!read.IsCompletedSuccessfully) return CountAsync(read);
        int n = read.Result;
        counters.AddBytesIn(n);
        return new ValueTask<int>(n);
    }

    private async ValueTask<int> CountAsync(ValueTask<int> read)
    {
        int n = await read.ConfigureAwait(false);
        counters.AddBytesIn(n);
        return n;
    }

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override int Read(byte[] buffer, int offset, int count)
    {
        int n = inner.Read(buffer, offset, count);
        counters.AddBytesIn(n);
        return n;
    }

    public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
    {
        var write = inner.WriteAsync(buffer, cancellationToken);
        if (!write.IsCompletedSuccessfully) return CountAsync(write, buffer.Length);
        write.GetAwaiter().GetResult(); // releases a pooled IValueTaskSource, as an await would
        counters.AddBytesOut(buffer.Length);
        return default;
    }

    private async ValueTask CountAsync(ValueTask write, int length)
    {
        await write.ConfigureAwait(false);
        counters.AddBytesOut(length);
    }

    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override void Write(byte[] buffer, int offset, int count)
    {
        inner.Write(buffer, offset, count);
        counters.AddBytesOut(count);
    }

    public override void Flush() => inner.Flush();
    public override Task FlushAsync(CancellationToken cancellationToken) => inner.FlushAsync(cancellationToken);
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();

    protected override void Dispose(bool disposing)
    {
        if (disposing && Interlocked.Exchange(ref _closed, 1) == 0)
        {
            try { inner.Dispose(); }
            finally { closed(); }
        }
        base.Dispose(disposing);
    }

    public override async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _closed, 1) == 0)
        {
            try { await inner.DisposeAsync().ConfigureAwait(false); }
            finally { closed(); }
        }
        await base.DisposeAsync().ConfigureAwait(false);
    }
}
