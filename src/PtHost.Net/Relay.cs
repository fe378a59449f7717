using System.Buffers;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using PtHost.Contract;
using PtHost.Net.Native;

namespace PtHost.Net;

/// <summary>
/// Carries bytes both ways between two streams until both directions end (spec/ipc.md §7).
/// An end of stream is passed on as a half-close (TCP FIN); an error in either direction aborts
/// both. Between two sockets on Linux the bytes move with splice(2) through a pipe, never through
/// user space; otherwise through pooled buffers. A direction holds no buffer while idle.
/// </summary>
public static class Relay
{
    public const int BufferSize = 64 * 1024;

    /// <summary>Relays until both directions end. Byte counts go to <paramref name="aToB"/> and <paramref name="bToA"/>.</summary>
    public static async Task RunAsync(Stream a, Stream b, Action<long>? aToB, Action<long>? bToA, CancellationToken cancellationToken)
    {
        using var abort = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        var t1 = PumpAsync(a, b, aToB, abort);
        var t2 = PumpAsync(b, a, bToA, abort);
        await Task.WhenAll(t1, t2).ConfigureAwait(false);
    }

    private static async Task PumpAsync(Stream from, Stream to, Action<long>? count, CancellationTokenSource abort)
    {
        try
        {
            await CopyAsync(from, to, count, abort.Token).ConfigureAwait(false);
            ShutdownWrite(to);
        }
        catch (Exception e) when (e is IOException or SocketException or OperationCanceledException or ObjectDisposedException)
        {
            // One direction failed: the session is over. Abort the other direction too.
            abort.Cancel();
            Abort(from);
            Abort(to);
        }
    }

    /// <summary>Copies until <paramref name="from"/> ends. Does not half-close <paramref name="to"/>.</summary>
    public static Task CopyAsync(Stream from, Stream to, Action<long>? count, CancellationToken ct)
    {
        if (Splice.Available && from is NetworkStream fs && to is NetworkStream ts)
            return Splice.CopyAsync(fs.Socket, ts.Socket, count, ct);
        return BufferedCopyAsync(from, to, count, ct);
    }

    private static async Task BufferedCopyAsync(Stream from, Stream to, Action<long>? count, CancellationToken ct)
    {
        bool hot = false;
        while (true)
        {
            // Wait for data without holding a buffer (zero-byte read), unless the last read filled one.
            if (!hot) await from.ReadAsync(Memory<byte>.Empty, ct).ConfigureAwait(false);
            byte[] buffer = ArrayPool<byte>.Shared.Rent(BufferSize);
            try
            {
                int n = await from.ReadAsync(buffer.AsMemory(0, BufferSize), ct).ConfigureAwait(false);
                if (n == 0) return;
                await to.WriteAsync(buffer.AsMemory(0, n), ct).ConfigureAwait(false);
                count?.Invoke(n);
                hot = n == BufferSize;
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(buffer);
            }
        }
    }

    /// <summary>Sends FIN on a socket stream, or completes a stream that supports <see cref="IHalfClosable"/>.</summary>
    public static void ShutdownWrite(Stream s)
    {
        try
        {
            switch (s)
            {
                case NetworkStream ns: ns.Socket.Shutdown(SocketShutdown.Send); break;
                case IHalfClosable h: h.ShutdownWrite(); break;
                default: s.Flush(); break;
            }
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException or IOException) { }
    }

    /// <summary>Closes a stream abortively (RST on a socket, <see cref="IAbortable.Abort"/> on a
    /// transport stream) so the peer sees a reset, not a clean end.</summary>
    public static void Abort(Stream s)
    {
        try
        {
            // Close(0) is .NET's abortive close: SO_LINGER 0 and, when the other direction still has
            // a receive pending on the socket, a disconnect that sends RST. Setting LingerState and
            // disposing instead shuts the socket down first when an operation is pending, and the
            // peer sees a FIN — a clean end — before the RST.
            if (s is NetworkStream ns) ns.Socket.Close(0);
            else if (s is IAbortable a) a.Abort();
            s.Dispose();
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException or IOException) { }
    }
}

/// <summary>splice(2) from socket to socket through a pipe (Linux only).</summary>
internal static class Splice
{
    private const int PipeSize = 1 << 20;

    public static bool Available { get; } = OperatingSystem.IsLinux() &&
        Environment.GetEnvironmentVariable("PTHOST_NO_SPLICE") is null or "" or "0";

    public static async Task CopyAsync(Socket from, Socket to, Action<long>? count, CancellationToken ct)
    {
        int pipeR = -1, pipeW = -1;
        try
        {
            while (true)
            {
                // Wait until readable (zero-byte receive consumes nothing), then move what is there.
                await from.ReceiveAsync(Memory<byte>.Empty, SocketFlags.None, ct).ConfigureAwait(false);
                if (pipeR < 0)
                {
                    // No pipe yet: a session that ends without data (or is only readable because of
                    // its FIN) must not cost a pipe. Nothing buffered means end of stream here.
                    if (from.Available == 0 && await IsEndOfStreamAsync(from, to, count, ct).ConfigureAwait(false)) return;
                    (pipeR, pipeW) = OpenPipe();
                }
                nint n = SpliceSocket(from, pipeW, PipeSize, fromSocket: true);
                if (n == 0) return;
                if (n < 0)
                {
                    int errno = Marshal.GetLastPInvokeError();
                    if (errno is Libc.EAgain or Libc.EIntr) continue;
                    throw new SocketException(errno);
                }
                count?.Invoke(n);
                await DrainAsync(pipeR, to, n, ct).ConfigureAwait(false);
            }
        }
        finally
        {
            if (pipeR >= 0) { Libc.Close(pipeR); Libc.Close(pipeW); }
        }
    }

    /// <summary>Reads one byte: true at end of stream; otherwise passes the byte on and returns false.</summary>
    private static async ValueTask<bool> IsEndOfStreamAsync(Socket from, Socket to, Action<long>? count, CancellationToken ct)
    {
        byte[] one = ArrayPool<byte>.Shared.Rent(1);
        try
        {
            if (await from.ReceiveAsync(one.AsMemory(0, 1), SocketFlags.None, ct).ConfigureAwait(false) == 0) return true;
            await to.SendAsync(one.AsMemory(0, 1), SocketFlags.None, ct).ConfigureAwait(false);
            count?.Invoke(1);
            return false;
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(one);
        }
    }

    private static async ValueTask DrainAsync(int pipeR, Socket to, nint pending, CancellationToken ct)
    {
        while (pending > 0)
        {
            nint m = SpliceSocket(to, pipeR, (nuint)pending, fromSocket: false);
            if (m > 0) { pending -= m; continue; }
            int errno = Marshal.GetLastPInvokeError();
            if (m < 0 && errno == Libc.EIntr) continue;
            if (m < 0 && errno != Libc.EAgain) throw new SocketException(errno);
            // The destination is full: take bytes out of the pipe and let the socket wait for room.
            byte[] buffer = ArrayPool<byte>.Shared.Rent((int)Math.Min(pending, Relay.BufferSize));
            try
            {
                int r = ReadPipe(pipeR, buffer, (int)Math.Min(pending, buffer.Length));
                await to.SendAsync(buffer.AsMemory(0, r), SocketFlags.None, ct).ConfigureAwait(false);
                pending -= r;
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(buffer);
            }
        }
    }

    /// <summary>
    /// One splice between a socket and a pipe end. The socket's handle is referenced for the call, so
    /// a concurrent Dispose (the other direction aborting) cannot close, and let the kernel reuse, the
    /// descriptor underneath it; a disposed socket throws <see cref="ObjectDisposedException"/>.
    /// </summary>
    private static nint SpliceSocket(Socket socket, int pipeFd, nuint length, bool fromSocket)
    {
        var handle = socket.SafeHandle;
        bool added = false;
        try
        {
            handle.DangerousAddRef(ref added);
            int fd = (int)handle.DangerousGetHandle();
            return fromSocket
                ? Libc.Splice(fd, 0, pipeFd, 0, length, Libc.SpliceMove | Libc.SpliceNonBlock)
                : Libc.Splice(pipeFd, 0, fd, 0, length, Libc.SpliceMove | Libc.SpliceNonBlock);
        }
        finally
        {
            if (added) handle.DangerousRelease();
        }
    }

    private static unsafe int ReadPipe(int fd, byte[] buffer, int count)
    {
        fixed (byte* p = buffer)
        {
            while (true)
            {
                nint r = Libc.Read(fd, p, (nuint)count);
                if (r > 0) return (int)r;
                int errno = Marshal.GetLastPInvokeError();
                if (r < 0 && errno == Libc.EIntr) continue;
                throw new IOException($"pipe read failed (errno {errno})");
            }
        }
    }

    private static unsafe (int, int) OpenPipe()
    {
        int* fds = stackalloc int[2];
        if (Libc.Pipe2(fds, Libc.ONonBlock | Libc.OCloexec) != 0) throw new SocketException(Marshal.GetLastPInvokeError());
        Libc.Fcntl(fds[1], Libc.FSetPipeSize, PipeSize); // best effort: the default 64 KiB still works
        return (fds[0], fds[1]);
    }
}
