using System.Buffers;
using System.Net.Security;
using System.Runtime.CompilerServices;
using System.Net.Sockets;
using PtHost.Contract;

namespace PtHost.Net;

/// <summary>
/// TLS over a transport stream (zephyr's bound relay connection, jet's candidates). Ending the write
/// side sends close_notify at once; the FIN on <paramref name="transport"/> (<see cref="Relay.ShutdownWrite"/>)
/// waits until both close_notify alerts have crossed, so that a relay which tears a pair down at the
/// first FIN finds nothing in flight (spec/zephyr.md §7.5):
/// <list type="bullet">
/// <item>the first closer (its close_notify went out before the peer's arrived) sends FIN once the peer's
/// close_notify (or the transport's end) has been read — the peer sent it after everything else;</item>
/// <item>the second closer (the peer's arrived first) sends no FIN of its own until the transport ends
/// (the first closer's FIN, or a relay's reset), at most <see cref="CloseTimeout"/>;</item>
/// <item>a first closer whose peer stays silent for <see cref="CloseTimeout"/> sends FIN anyway.</item>
/// </list>
/// Reads go on meanwhile; the closing runs in the background and disposal waits for it (when nothing
/// reads the stream any more, disposal reads and discards up to the peer's close_notify itself).
/// </summary>
public sealed class HalfClosableTlsStream(SslStream tls, Stream transport) : Stream, IHalfClosable, IAbortable
{
    /// <summary>spec/zephyr.md §7.5: the bound on each wait of the close.</summary>
    public static readonly TimeSpan CloseTimeout = TimeSpan.FromSeconds(30);

    private readonly Lock _gate = new();
    private readonly TaskCompletionSource _peerEnded = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly TaskCompletionSource _disposing = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly CancellationTokenSource _aborted = new();
    private Task _closing = Task.CompletedTask;
    private int _shut;
    private bool _ended;
    private long _lastRead = Environment.TickCount64;

    public SslStream Tls => tls;
    public override bool CanRead => true;
    public override bool CanWrite => true;
    public override bool CanSeek => false;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

    /// <summary>close_notify now, FIN when both alerts crossed; finished in the background (the write side is idle when this is called).</summary>
    public void ShutdownWrite()
    {
        if (Interlocked.Exchange(ref _shut, 1) != 0) return;
        _closing = ShutdownCoreAsync();
    }

    /// <summary>Resets the transport under the TLS (RST on a socket) without close_notify.</summary>
    public void Abort()
    {
        Interlocked.Exchange(ref _shut, 1);
        try { _aborted.Cancel(); }
        catch (ObjectDisposedException) { }
        Relay.Abort(transport);
    }

    private async Task ShutdownCoreAsync()
    {
        // Decided before our close_notify goes out: second closer when the peer's was already read.
        bool second;
        lock (_gate) second = _ended;
        try { await tls.ShutdownAsync().ConfigureAwait(false); }
        catch (Exception e) when (e is IOException or ObjectDisposedException or InvalidOperationException or NotSupportedException) { }
        try
        {
            if (second) await WaitTransportEndAsync().ConfigureAwait(false);
            else await WaitPeerCloseNotifyAsync().ConfigureAwait(false);
        }
        catch (OperationCanceledException) { return; } // aborted: no FIN, the transport was reset
        try { Relay.ShutdownWrite(transport); }
        catch (Exception e) when (e is SocketException or ObjectDisposedException) { }
    }

    /// <summary>First closer: until the peer's close_notify is read, or the peer was silent for <see cref="CloseTimeout"/>.</summary>
    private async Task WaitPeerCloseNotifyAsync()
    {
        long limit = (long)CloseTimeout.TotalMilliseconds;
        // The bound's timer is cancelled as soon as the wait ends: left running, every closed session kept a 30 s
        // timer (and this stream) in the runtime's timer queue after the peer's close_notify had long arrived.
        using var wake = CancellationTokenSource.CreateLinkedTokenSource(_aborted.Token);
        try
        {
            while (!_peerEnded.Task.IsCompleted)
            {
                long left = limit - (Environment.TickCount64 - Volatile.Read(ref _lastRead));
                if (left <= 0) return;
                if (_disposing.Task.IsCompleted)
                {
                    await DrainAsync().ConfigureAwait(false);
                    return;
                }
                await Task.WhenAny(_peerEnded.Task, _disposing.Task, Task.Delay(TimeSpan.FromMilliseconds(left), wake.Token)).ConfigureAwait(false);
                _aborted.Token.ThrowIfCancellationRequested();
            }
        }
        finally
        {
            await wake.CancelAsync().ConfigureAwait(false);
        }
    }

    /// <summary>Disposal before the peer's close_notify was read: nobody reads any more, so read (and drop) up to it here.</summary>
    private async Task DrainAsync()
    {
        byte[] buffer = ArrayPool<byte>.Shared.Rent(16 * 1024);
        try
        {
            while (true)
            {
                using var limit = CancellationTokenSource.CreateLinkedTokenSource(_aborted.Token);
                limit.CancelAfter(CloseTimeout);
                if (await ReadAsync(buffer, limit.Token).ConfigureAwait(false) == 0) return;
            }
        }
        catch (OperationCanceledException) when (!_aborted.IsCancellationRequested) { }
        catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException or InvalidOperationException or NotSupportedException) { }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <summary>Second closer: until the transport under the TLS ends (FIN or reset), at most <see cref="CloseTimeout"/>.</summary>
    private async Task WaitTransportEndAsync()
    {
        byte[] one = new byte[1];
        using var limit = CancellationTokenSource.CreateLinkedTokenSource(_aborted.Token);
        limit.CancelAfter(CloseTimeout);
        try
        {
            // Nothing may follow the peer's close_notify; whatever does is dropped.
            while (await transport.ReadAsync(one, limit.Token).ConfigureAwait(false) > 0) { }
        }
        catch (OperationCanceledException) when (!_aborted.IsCancellationRequested) { }
        catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException) { }
    }

    /// <summary>A read of 0 bytes into a non-empty buffer is the peer's close_notify (or the transport's end).</summary>
    private int Observe(int n, int requested)
    {
        if (requested == 0) return n;
        if (n > 0)
        {
            Volatile.Write(ref _lastRead, Environment.TickCount64);
            return n;
        }
        lock (_gate) _ended = true;
        _peerEnded.TrySetResult();
        return 0;
    }

    public override int Read(byte[] buffer, int offset, int count) => Observe(tls.Read(buffer, offset, count), count);

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default) =>
        Observe(await tls.ReadAsync(buffer, cancellationToken).ConfigureAwait(false), buffer.Length);

    public override void Write(byte[] buffer, int offset, int count) => tls.Write(buffer, offset, count);
    public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default) => tls.WriteAsync(buffer, cancellationToken);
    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) => tls.WriteAsync(buffer, offset, count, cancellationToken);
    public override void Flush() => tls.Flush();
    public override Task FlushAsync(CancellationToken cancellationToken) => tls.FlushAsync(cancellationToken);
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            _disposing.TrySetResult();
            tls.Dispose();
            transport.Dispose();
        }
        base.Dispose(disposing);
    }

    public override async ValueTask DisposeAsync()
    {
        _disposing.TrySetResult();
        await _closing.ConfigureAwait(false);
        await tls.DisposeAsync().ConfigureAwait(false);
        await transport.DisposeAsync().ConfigureAwait(false);
        await base.DisposeAsync().ConfigureAwait(false);
    }
}
