using System.Buffers;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Threading.Channels;
using Microsoft.Extensions.Logging;
using PtHost.Quic.Native;

namespace PtHost.Quic;

/// <summary>The awaiting members (C# forbids await in an unsafe context).</summary>
public sealed partial class QuicEndpoint
{
    public async Task<QuicConnection> ConnectAsync(IPEndPoint remote, QuicClientOptions options, CancellationToken cancellationToken = default)
    {
        options.Validate();
        if (options.Verification is null)
            throw new ArgumentException("QuicClientOptions.Verification is required: pin the server certificate or use the system trust store");
        if (remote.AddressFamily != LocalEndPoint.AddressFamily)
            throw new ArgumentException($"endpoint is {LocalEndPoint.AddressFamily}, remote is {remote.AddressFamily}");
        var tcs = new TaskCompletionSource<QuicConnection>(TaskCreationOptions.RunContinuationsAsynchronously);
        Post(() =>
        {
            try { tcs.TrySetResult(CreateClientConnection(remote, options)); }
            catch (Exception e) { tcs.TrySetException(e); }
        });
        var conn = await tcs.Task.ConfigureAwait(false);
        try
        {
            await conn.HandshakeTask.WaitAsync(options.HandshakeTimeout + TimeSpan.FromSeconds(1), cancellationToken).ConfigureAwait(false);
            return conn;
        }
        catch (Exception e)
        {
            TryPost(() => conn.CloseLocally(0, "handshake abandoned"));
            if (e is TimeoutException) throw new QuicConnectionException($"QUIC handshake with {remote} timed out");
            throw;
        }
    }

    /// <summary>The next connection whose handshake completed (server endpoints only).</summary>
    public async ValueTask<QuicConnection> AcceptAsync(CancellationToken cancellationToken = default)
    {
        if (_accepted is null) throw new InvalidOperationException("not a server endpoint");
        try
        {
            return await _accepted.Reader.ReadAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (ChannelClosedException)
        {
            throw new ObjectDisposedException(nameof(QuicEndpoint));
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (_stop.IsCancellationRequested) return;
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        Post(() =>
        {
            foreach (var c in _connections.ToArray()) c.CloseLocally(0, "endpoint shutting down");
            done.TrySetResult();
        });
        try { await done.Task.WaitAsync(TimeSpan.FromSeconds(5)).ConfigureAwait(false); }
        catch (TimeoutException) { _log.LogWarning("QUIC endpoint {Local}: connections did not close within 5 s", LocalEndPoint); }
        _events.Writer.TryComplete();
        _stop.Cancel();
        _accepted?.Writer.TryComplete();
        try { await _loop.WaitAsync(TimeSpan.FromSeconds(10)).ConfigureAwait(false); } catch (Exception e) { _log.LogDebug(e, "quic loop ended"); }
        _socket.Dispose();
        try { await _receive.WaitAsync(TimeSpan.FromSeconds(5)).ConfigureAwait(false); } catch (Exception e) { _log.LogDebug(e, "quic receive ended"); }
        await _timer.DisposeAsync().ConfigureAwait(false);
        FreeNative();
        _stop.Dispose();
    }

    private async Task ReceiveLoopAsync()
    {
        var from = new SocketAddress(LocalEndPoint.AddressFamily);
        while (!_stop.IsCancellationRequested)
        {
            var buf = ArrayPool<byte>.Shared.Rent(RecvBufferSize);
            int n;
            try
            {
                n = await _socket.ReceiveFromAsync(buf.AsMemory(0, AddrOffset), SocketFlags.None, from, _stop.Token).ConfigureAwait(false);
            }
            catch (Exception e) when (e is SocketException { SocketErrorCode: SocketError.ConnectionReset or SocketError.MessageSize or SocketError.ConnectionRefused or SocketError.HostUnreachable or SocketError.NetworkUnreachable })
            {
                ArrayPool<byte>.Shared.Return(buf);
                continue;
            }
            catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException or SocketException)
            {
                ArrayPool<byte>.Shared.Return(buf);
                if (!_stop.IsCancellationRequested) _log.LogError(e, "QUIC socket {Local} failed", LocalEndPoint);
                return;
            }
            if (Volatile.Read(ref _queuedPackets) >= MaxQueuedPackets)
            {
                ArrayPool<byte>.Shared.Return(buf);
                continue;
            }
            from.Buffer.Span[..from.Size].CopyTo(buf.AsSpan(AddrOffset));
            Interlocked.Increment(ref _queuedPackets);
            if (!_events.Writer.TryWrite(new LoopEvent(EventKind.Packet, null, buf, n, from.Size)))
            {
                ArrayPool<byte>.Shared.Return(buf);
                return;
            }
        }
    }

    private async Task RunLoopAsync()
    {
        var reader = _events.Reader;
        try
        {
            while (await reader.WaitToReadAsync().ConfigureAwait(false))
            {
                while (reader.TryRead(out var ev))
                {
                    try { Handle(ev); }
                    catch (Exception e) { _log.LogError(e, "QUIC event failed"); }
                }
                try { Service(); }
                catch (Exception e) { _log.LogError(e, "QUIC service failed"); }
            }
        }
        finally
        {
            foreach (var c in _connections.ToArray())
            {
                c.Terminate(new QuicCloseInfo("endpoint closed", false, null), deleteNow: true);
                DeleteConnection(c);
            }
        }
    }
}
