using PtHost.Net;

namespace PtHost.Tests.Unit;

/// <summary>
/// spec/ipc.md §7 (Buffers): a direction that is never short of bytes gives its thread up after every <c>Splice.FairShare</c>
/// (4 MiB) moved without a wait, through the buffered copy as through splice, so where socket continuations run inline
/// (the zephyr relay, spec/zephyr.md §8.7) one busy session cannot hold an event thread.
/// </summary>
public class RelayFairShareTests
{
    [Fact]
    public async Task A_buffered_copy_never_short_of_bytes_gives_its_thread_up_after_every_4_MiB()
    {
        const long Total = 64L << 20;
        var source = new AlwaysReady(Total);
        var context = new CountingContext();
        var previous = SynchronizationContext.Current;
        Task copy;
        SynchronizationContext.SetSynchronizationContext(context);
        try
        {
            // Every read and write completes at once: only the fair-share yield ever leaves this thread.
            copy = Relay.CopyAsync(source, Stream.Null, null, CancellationToken.None);
        }
        finally
        {
            SynchronizationContext.SetSynchronizationContext(previous);
        }
        await copy.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Equal(Total, source.Served);
        // 64 MiB in 4 MiB shares: a yield after each full share but the last one (the end of stream comes first).
        Assert.InRange(context.Posts, Total / (4 << 20) - 1, Total / (4 << 20));
    }

    /// <summary>Returns full reads at once until <c>total</c> bytes were served, then the end of the stream.</summary>
    private sealed class AlwaysReady(long total) : Stream
    {
        public long Served { get; private set; }
        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => false;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
        public override void Flush() { }
        public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

        public override int Read(Span<byte> buffer)
        {
            int n = (int)Math.Min(buffer.Length, total - Served);
            Served += n;
            return n;
        }

        public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default) => new(Read(buffer.Span));
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    }

    /// <summary>Counts what is posted to it (Task.Yield posts here) and runs it on the thread pool under itself.</summary>
    private sealed class CountingContext : SynchronizationContext
    {
        private int _posts;
        public int Posts => Volatile.Read(ref _posts);

        public override void Post(SendOrPostCallback d, object? state)
        {
            Interlocked.Increment(ref _posts);
            ThreadPool.UnsafeQueueUserWorkItem(_ =>
            {
                SetSynchronizationContext(this);
                try { d(state); }
                finally { SetSynchronizationContext(null); }
            }, null);
        }
    }
}
