using System.Net.Security;
using System.Net.Sockets;
using PtHost.Contract;

namespace PtHost.Net;

/// <summary>
/// TLS over a transport stream (zephyr's bound relay connection, jet's candidates). Ending the write
/// side sends close_notify, then a FIN on <paramref name="transport"/> (<see cref="Relay.ShutdownWrite"/>);
/// reads go on. The shutdown runs in the background (the write side is idle when it is called) and
/// disposal waits for it (spec/zephyr.md §7.5, spec/jet.md).
/// </summary>
public sealed class HalfClosableTlsStream(SslStream tls, Stream transport) : Stream, IHalfClosable, IAbortable
{
    private Task _closing = Task.CompletedTask;
    private int _shut;

    public SslStream Tls => tls;
    public override bool CanRead => true;
    public override bool CanWrite => true;
    public override bool CanSeek => false;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

    /// <summary>close_notify then FIN; started here, finished in the background (the write side is idle when this is called).</summary>
    public void ShutdownWrite()
    {
        if (Interlocked.Exchange(ref _shut, 1) != 0) return;
        _closing = ShutdownCoreAsync();
    }

    /// <summary>Resets the transport under the TLS (RST on a socket) without close_notify.</summary>
    public void Abort()
    {
        Interlocked.Exchange(ref _shut, 1);
        Relay.Abort(transport);
    }

    private async Task ShutdownCoreAsync()
    {
        try { await tls.ShutdownAsync().ConfigureAwait(false); }
        catch (Exception e) when (e is IOException or ObjectDisposedException or InvalidOperationException or NotSupportedException) { }
        try { Relay.ShutdownWrite(transport); }
        catch (Exception e) when (e is SocketException or ObjectDisposedException) { }
    }

    public override int Read(byte[] buffer, int offset, int count) => tls.Read(buffer, offset, count);
    public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default) => tls.ReadAsync(buffer, cancellationToken);
    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) => tls.ReadAsync(buffer, offset, count, cancellationToken);
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
            tls.Dispose();
            transport.Dispose();
        }
        base.Dispose(disposing);
    }

    public override async ValueTask DisposeAsync()
    {
        await _closing.ConfigureAwait(false);
        await tls.DisposeAsync().ConfigureAwait(false);
        await transport.DisposeAsync().ConfigureAwait(false);
        await base.DisposeAsync().ConfigureAwait(false);
    }
}
