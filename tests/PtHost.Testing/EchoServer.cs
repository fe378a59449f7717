using System.Buffers;
using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;

namespace PtHost.Testing;

/// <summary>
/// A TCP echo server on loopback (or <c>address</c>): echoes what each connection sends, half-closes when the
/// peer does, and records what each finished connection sent (up to <c>recordLimit</c> bytes) and where every
/// connection came from. The far end of most sessions in the tests and the benchmarks.
/// </summary>
public sealed class EchoServer : IAsyncDisposable
{
    public const int DefaultRecordLimit = 4 << 20;

    private readonly Socket _listener;
    private readonly int _recordLimit;
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _acceptLoop;
    private readonly HashSet<Socket> _open = [];
    private int _accepted;

    /// <param name="address">Where to listen (default 127.0.0.1).</param>
    /// <param name="recordLimit">Bytes kept per connection for <see cref="Received"/>; 0 keeps nothing (a benchmark's thousands of sessions).</param>
    public EchoServer(IPAddress? address = null, int recordLimit = DefaultRecordLimit)
    {
        address ??= IPAddress.Loopback;
        _recordLimit = recordLimit;
        _listener = new Socket(address.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        _listener.Bind(new IPEndPoint(address, 0));
        _listener.Listen();
        EndPoint = (IPEndPoint)_listener.LocalEndPoint!;
        _acceptLoop = AcceptLoopAsync();
    }

    public IPEndPoint EndPoint { get; }
    public int Port => EndPoint.Port;

    /// <summary>Connections accepted so far.</summary>
    public int Accepted => Volatile.Read(ref _accepted);

    /// <summary>Connections open now.</summary>
    public int Live { get { lock (_open) return _open.Count; } }

    /// <summary>What each finished connection sent, in order of completion (empty when nothing is recorded).</summary>
    public ConcurrentQueue<byte[]> Received { get; } = new();

    /// <summary>The remote address of every accepted connection.</summary>
    public ConcurrentQueue<IPEndPoint> Remotes { get; } = new();

    private async Task AcceptLoopAsync()
    {
        while (!_stop.IsCancellationRequested)
        {
            Socket s;
            try { s = await _listener.AcceptAsync(_stop.Token).ConfigureAwait(false); }
            catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException) { return; }
            catch (SocketException e) when (e.SocketErrorCode is SocketError.ConnectionAborted or SocketError.ConnectionReset) { continue; }
            catch (SocketException) when (!_stop.IsCancellationRequested)
            {
                // Out of descriptors (a load test at its peak): back off until sessions close, then accept again.
                await Task.Delay(10).ConfigureAwait(false);
                continue;
            }
            catch (SocketException) { return; }
            Interlocked.Increment(ref _accepted);
            Remotes.Enqueue((IPEndPoint)s.RemoteEndPoint!);
            lock (_open) _open.Add(s);
            _ = ServeAsync(s);
        }
    }

    private async Task ServeAsync(Socket s)
    {
        var seen = _recordLimit > 0 ? new MemoryStream() : null;
        byte[]? buffer = null;
        try
        {
            while (true)
            {
                // Zero-byte receive first: an idle connection holds no buffer; a busy one a pooled one.
                await s.ReceiveAsync(Memory<byte>.Empty, SocketFlags.None, _stop.Token).ConfigureAwait(false);
                buffer ??= ArrayPool<byte>.Shared.Rent(64 * 1024);
                int n = await s.ReceiveAsync(buffer, SocketFlags.None, _stop.Token).ConfigureAwait(false);
                if (n == 0) break;
                if (seen is not null && seen.Length < _recordLimit) seen.Write(buffer, 0, (int)Math.Min(n, _recordLimit - seen.Length));
                for (int sent = 0; sent < n;) sent += await s.SendAsync(buffer.AsMemory(sent, n - sent), SocketFlags.None, _stop.Token).ConfigureAwait(false);
            }
            s.Shutdown(SocketShutdown.Send);
        }
        catch (Exception e) when (e is SocketException or OperationCanceledException or ObjectDisposedException) { }
        finally
        {
            if (buffer is not null) ArrayPool<byte>.Shared.Return(buffer);
            if (seen is not null) Received.Enqueue(seen.ToArray());
            lock (_open) _open.Remove(s);
            s.Dispose();
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync().ConfigureAwait(false);
        _listener.Dispose();
        await _acceptLoop.ConfigureAwait(false);
        Socket[] open;
        lock (_open) open = [.. _open];
        foreach (var s in open) s.Dispose();
    }
}
