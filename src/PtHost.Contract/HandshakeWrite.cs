using System.Net.Sockets;

namespace PtHost.Contract;

/// <summary>
/// Writes a handshake's few bytes (a SOCKS reply, the session preamble, its reply byte; spec/session.md §2) on a
/// connection that has sent almost nothing yet. On a socket they go out with one send(2) on the calling thread: the
/// send buffer (at least 4 KiB, tcp_wmem) holds at most a few hundred bytes of earlier handshake replies then, so the
/// kernel takes them whole at once and nothing waits. The socket then keeps no asynchronous send state (the
/// SocketAsyncEventArgs a socket caches for its whole life once it has sent asynchronously): an idle session is smaller
/// and its set-up costs no completion. Longer writes and other streams are written asynchronously.
/// </summary>
public static class HandshakeWrite
{
    /// <summary>Longer writes always go the asynchronous way.</summary>
    public const int MaxLength = 512;

    /// <summary>Writes <paramref name="bytes"/> to <paramref name="stream"/>.</summary>
    public static ValueTask WriteAsync(Stream stream, ReadOnlyMemory<byte> bytes, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(stream);
        if (stream is not NetworkStream ns || bytes.Length > MaxLength) return stream.WriteAsync(bytes, ct);
        ct.ThrowIfCancellationRequested();
        int sent = ns.Socket.Send(bytes.Span, SocketFlags.None, out var error);
        if (error != SocketError.Success) throw new IOException($"handshake write failed: {error}", new SocketException((int)error));
        return sent == bytes.Length ? ValueTask.CompletedTask : stream.WriteAsync(bytes[sent..], ct);
    }
}
