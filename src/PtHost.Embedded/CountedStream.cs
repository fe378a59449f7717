using PtHost.Contract;

namespace PtHost.Embedded;

/// <summary>
/// The transport's stream handed to the application, counting bytes and the session's end in the transport's
/// counters (spec/ipc.md §4.7) as the SOCKS front end's relay does for a pthost process.
/// </summary>
internal sealed class CountedStream(Stream inner, TransportCounters counters) : Stream
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
            counters.SessionClosed();
            inner.Dispose();
        }
        base.Dispose(disposing);
    }

    public override async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _closed, 1) == 0)
        {
            counters.SessionClosed();
            await inner.DisposeAsync().ConfigureAwait(false);
        }
        await base.DisposeAsync().ConfigureAwait(false);
    }
}
