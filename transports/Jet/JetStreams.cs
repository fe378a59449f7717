using System.Net.Security;
using System.Net.Sockets;
using System.Net.WebSockets;
using PtHost.Contract;

namespace PtHost.Transports.Jet;

/// <summary>
/// A WebSocket as a byte stream (spec/jet.md §6): each write is one binary message; reads return
/// message bytes in order, 0 once the peer's Close arrived. Ending the write side sends our Close
/// (CloseOutput), so half-closes pass through as they do over TCP. Text messages are refused.
/// </summary>
public sealed class JetWebSocketStream(WebSocket socket) : Stream, IHalfClosable
{
    private static readonly TimeSpan CloseLimit = TimeSpan.FromSeconds(5);
    private Task _closing = Task.CompletedTask;
    private int _shut;
    private bool _readEnded;

    public WebSocket Socket => socket;
    public override bool CanRead => true;
    public override bool CanWrite => true;
    public override bool CanSeek => false;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

    public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        // A zero-byte read ("wait for data") is answered at once: the copy loop then reads for real.
        if (buffer.IsEmpty || _readEnded) return 0;
        while (true)
        {
            ValueWebSocketReceiveResult r;
            try { r = await socket.ReceiveAsync(buffer, cancellationToken).ConfigureAwait(false); }
            catch (WebSocketException e) { throw new IOException($"WebSocket: {e.Message}", e); }
            if (r.MessageType == WebSocketMessageType.Close)
            {
                _readEnded = true;
                return 0;
            }
            if (r.MessageType == WebSocketMessageType.Text)
            {
                _ = socket.CloseOutputAsync(WebSocketCloseStatus.InvalidMessageType, "binary messages only", CancellationToken.None);
                throw new IOException("WebSocket peer sent a text message; JET carries binary messages only");
            }
            if (r.Count > 0) return r.Count;
        }
    }

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException("asynchronous use only");

    public override async ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
    {
        try { await socket.SendAsync(buffer, WebSocketMessageType.Binary, endOfMessage: true, cancellationToken).ConfigureAwait(false); }
        catch (WebSocketException e) { throw new IOException($"WebSocket: {e.Message}", e); }
    }

    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException("asynchronous use only");

    /// <summary>Sends our Close; called after the last write completed, so it never overlaps a send.</summary>
    public void ShutdownWrite()
    {
        if (Interlocked.Exchange(ref _shut, 1) != 0) return;
        _closing = CloseOutputAsync();
    }

    private async Task CloseOutputAsync()
    {
        using var limit = new CancellationTokenSource(CloseLimit);
        try
        {
            if (socket.State is WebSocketState.Open or WebSocketState.CloseReceived)
                await socket.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, "", limit.Token).ConfigureAwait(false);
        }
        catch (Exception e) when (e is WebSocketException or OperationCanceledException or ObjectDisposedException or IOException) { }
    }

    public override void Flush() { }
    public override Task FlushAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();

    public override async ValueTask DisposeAsync()
    {
        await _closing.ConfigureAwait(false);
        if (socket.State is not (WebSocketState.Closed or WebSocketState.Aborted)) socket.Abort();
        socket.Dispose();
        await base.DisposeAsync().ConfigureAwait(false);
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            if (socket.State is not (WebSocketState.Closed or WebSocketState.Aborted)) socket.Abort();
            socket.Dispose();
        }
        base.Dispose(disposing);
    }
}

/// <summary>A stream whose first bytes were already read: they are returned first, then the inner stream's.</summary>
public sealed class PrefixedStream(ReadOnlyMemory<byte> prefix, Stream inner) : Stream, IHalfClosable, IAbortable
{
    private ReadOnlyMemory<byte> _prefix = prefix;

    public Stream Inner => inner;
    public override bool CanRead => true;
    public override bool CanWrite => true;
    public override bool CanSeek => false;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

    public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        if (_prefix.IsEmpty) return inner.ReadAsync(buffer, cancellationToken);
        if (buffer.IsEmpty) return ValueTask.FromResult(0);
        int n = Math.Min(buffer.Length, _prefix.Length);
        _prefix.Span[..n].CopyTo(buffer.Span);
        _prefix = _prefix[n..];
        return ValueTask.FromResult(n);
    }

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override int Read(byte[] buffer, int offset, int count)
    {
        if (_prefix.IsEmpty) return inner.Read(buffer, offset, count);
        int n = Math.Min(count, _prefix.Length);
        _prefix.Span[..n].CopyTo(buffer.AsSpan(offset));
        _prefix = _prefix[n..];
        return n;
    }

    public void ShutdownWrite() => PtHost.Net.Relay.ShutdownWrite(inner);

    /// <summary>Aborts the inner stream (RST on a socket).</summary>
    public void Abort() => PtHost.Net.Relay.Abort(inner);
    public override void Write(byte[] buffer, int offset, int count) => inner.Write(buffer, offset, count);
    public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default) => inner.WriteAsync(buffer, cancellationToken);
    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) => inner.WriteAsync(buffer, offset, count, cancellationToken);
    public override void Flush() => inner.Flush();
    public override Task FlushAsync(CancellationToken cancellationToken) => inner.FlushAsync(cancellationToken);
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();

    protected override void Dispose(bool disposing)
    {
        if (disposing) inner.Dispose();
        base.Dispose(disposing);
    }

    public override async ValueTask DisposeAsync()
    {
        await inner.DisposeAsync().ConfigureAwait(false);
        await base.DisposeAsync().ConfigureAwait(false);
    }
}
