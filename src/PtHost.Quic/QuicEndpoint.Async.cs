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
        catch (TimeoutException) { _log.CloseTimeout(LocalEndPoint); }
        _events.Writer.TryComplete();
        _stop.Cancel();
        _accepted?.Writer.TryComplete();
        WakeForShutdown();
        var stopped = true;
        try { await _loopDone.Task.WaitAsync(TimeSpan.FromSeconds(10)).ConfigureAwait(false); }
        catch (TimeoutException)
        {
            stopped = false;
            _log.StopTimeout(LocalEndPoint);
        }
        _socket.Dispose();
        // Native memory stays allocated if the thread might still use it.
        if (stopped) FreeNative();
        _stop.Dispose();
    }
}
