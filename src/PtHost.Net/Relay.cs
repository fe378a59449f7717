using System.Buffers;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using PtHost.Contract;
using PtHost.Net.Native;

namespace PtHost.Net;

/// <summary>
/// Carries bytes both ways between two streams until both directions end (spec/ipc.md §7).
/// An end of stream is passed on as a half-close (TCP FIN); an error in either direction aborts
/// both. Between two sockets on Linux the bytes move with splice(2) through a pipe taken from
/// <see cref="SplicePipes"/> for each burst, never through user space; when no pipe can be had
/// (the pool's cap, EMFILE, ENFILE, pipe-user-pages exhausted) that burst goes through pooled
/// buffers instead, and the session goes on. A direction holds no buffer and no pipe while idle.
/// </summary>
public static class Relay
{
    public const int BufferSize = 64 * 1024;

    private static long s_fallbacks;

    /// <summary>Relay directions in this process that carried bytes through pooled buffers because no pipe could be had.</summary>
    public static long PipeFallbacks => Volatile.Read(ref s_fallbacks);

    /// <summary>Relays until both directions end. Byte counts go to <paramref name="aToB"/> and <paramref name="bToA"/>.</summary>
    public static Task RunAsync(Stream a, Stream b, Action<long>? aToB, Action<long>? bToA, CancellationToken cancellationToken) =>
        RunAsync(a, b, aToB, bToA, null, cancellationToken);

    /// <summary>
    /// Relays until both directions end. Byte counts go to <paramref name="aToB"/> and <paramref name="bToA"/>;
    /// <paramref name="pipeUnavailable"/> is called at most once per session, when a direction first relays
    /// through pooled buffers for want of a pipe (STATUS <c>SPLICE-FALLBACKS</c>, spec/ipc.md §4.7).
    /// </summary>
    public static async Task RunAsync(Stream a, Stream b, Action<long>? aToB, Action<long>? bToA, Action? pipeUnavailable, CancellationToken cancellationToken)
    {
        using var abort = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        Action? once = pipeUnavailable is null ? null : new Once(pipeUnavailable).Invoke;
        var t1 = PumpAsync(a, b, aToB, once, abort);
        var t2 = PumpAsync(b, a, bToA, once, abort);
        await Task.WhenAll(t1, t2).ConfigureAwait(false);
    }

    /// <summary>Calls an action the first time only (from either direction).</summary>
    private sealed class Once(Action action)
    {
        private int _done;

        public void Invoke()
        {
            if (Interlocked.Exchange(ref _done, 1) == 0) action();
        }
    }

    private static async Task PumpAsync(Stream from, Stream to, Action<long>? count, Action? pipeUnavailable, CancellationTokenSource abort)
    {
        try
        {
            await CopyAsync(from, to, count, pipeUnavailable, abort.Token).ConfigureAwait(false);
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
    public static Task CopyAsync(Stream from, Stream to, Action<long>? count, CancellationToken ct) =>
        CopyAsync(from, to, count, null, ct);

    /// <summary>
    /// Copies until <paramref name="from"/> ends; <paramref name="pipeUnavailable"/> is called each time a burst
    /// goes through pooled buffers because no pipe for splice(2) could be had. Does not half-close <paramref name="to"/>.
    /// </summary>
    public static Task CopyAsync(Stream from, Stream to, Action<long>? count, Action? pipeUnavailable, CancellationToken ct)
    {
        if (Splice.Available && from is NetworkStream fs && to is NetworkStream ts)
            return Splice.CopyAsync(fs.Socket, ts.Socket, count, pipeUnavailable, ct);
        return BufferedCopyAsync(from, to, count, ct);
    }

    /// <summary>Counts a direction that fell back (<see cref="PipeFallbacks"/>).</summary>
    internal static void CountFallback() => Interlocked.Increment(ref s_fallbacks);

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

/// <summary>splice(2) from socket to socket through a pooled pipe (Linux only).</summary>
internal static class Splice
{
    public static bool Available { get; } = OperatingSystem.IsLinux() &&
        Environment.GetEnvironmentVariable("PTHOST_NO_SPLICE") is null or "" or "0";

    public static async Task CopyAsync(Socket from, Socket to, Action<long>? count, Action? pipeUnavailable, CancellationToken ct)
    {
        SplicePipe pipe = default;
        bool holding = false, fellBack = false;
        try
        {
            while (true)
            {
                if (!holding)
                {
                    // Wait until readable (zero-byte receive consumes nothing), holding no pipe. A session that ends
                    // without data (or is only readable because of its FIN) takes no pipe: nothing buffered means end of stream.
                    await from.ReceiveAsync(Memory<byte>.Empty, SocketFlags.None, ct).ConfigureAwait(false);
                    if (from.Available == 0 && await IsEndOfStreamAsync(from, to, count, ct).ConfigureAwait(false)) return;
                    if (!SplicePipes.TryRent(out pipe))
                    {
                        // No pipe (the pool's cap, EMFILE, ENFILE, pipe-user-pages): this burst goes through a pooled buffer.
                        if (!fellBack)
                        {
                            fellBack = true;
                            Relay.CountFallback();
                        }
                        pipeUnavailable?.Invoke();
                        if (await CopyChunkAsync(from, to, count, ct).ConfigureAwait(false) == 0) return;
                        continue;
                    }
                    holding = true;
                }
                nint n = SpliceSocket(from, pipe.Write, SplicePipes.PipeSize, fromSocket: true);
                if (n == 0) return;
                if (n < 0)
                {
                    int errno = Marshal.GetLastPInvokeError();
                    if (errno == Libc.EIntr) continue;
                    if (errno != Libc.EAgain) throw new SocketException(errno);
                    // Nothing more to read now: the pipe (empty) goes back while this direction waits.
                    holding = false;
                    SplicePipes.Return(pipe);
                    continue;
                }
                count?.Invoke(n);
                await DrainAsync(pipe.Read, to, n, ct).ConfigureAwait(false);
            }
        }
        catch
        {
            // The pipe may still hold bytes that will never be sent: it is closed, not pooled.
            if (holding) SplicePipes.Close(pipe);
            holding = false;
            throw;
        }
        finally
        {
            if (holding) SplicePipes.Return(pipe);
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

    /// <summary>One read and its write through a pooled buffer; returns the bytes moved (0 at end of stream).</summary>
    private static async ValueTask<int> CopyChunkAsync(Socket from, Socket to, Action<long>? count, CancellationToken ct)
    {
        byte[] buffer = ArrayPool<byte>.Shared.Rent(Relay.BufferSize);
        try
        {
            int n = await from.ReceiveAsync(buffer.AsMemory(0, Relay.BufferSize), SocketFlags.None, ct).ConfigureAwait(false);
            if (n == 0) return 0;
            await to.SendAsync(buffer.AsMemory(0, n), SocketFlags.None, ct).ConfigureAwait(false);
            count?.Invoke(n);
            return n;
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
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
}

/// <summary>A pipe's two ends.</summary>
internal readonly record struct SplicePipe(int Read, int Write);

/// <summary>
/// The process's pipes for splice(2) (spec/ipc.md §7): a relay direction takes one for a burst and
/// hands it back empty, so an idle session holds none. At most <see cref="Capacity"/> are open at once
/// (1/64 of the descriptor limit, 16 to 1,024), so that sockets — sessions — get descriptors first;
/// an idle pipe is closed after <see cref="IdleLife"/>. A pipe that cannot be had (the cap, pipe2
/// failing with EMFILE or ENFILE, or F_SETPIPE_SZ failing because the user's pipe-user-pages are
/// used up) is not an error: the caller relays through pooled buffers. After such a failure no new
/// pipe is made for <see cref="RetryAfterFailure"/> (pooled ones are still lent).
/// </summary>
internal static class SplicePipes
{
    /// <summary>Each pipe's capacity (F_SETPIPE_SZ).</summary>
    public const int PipeSize = 1 << 20;
    public static readonly TimeSpan IdleLife = TimeSpan.FromMilliseconds(200);
    public static readonly TimeSpan RetryAfterFailure = TimeSpan.FromSeconds(1);

    /// <summary>Pipes open at most (lent and idle), from the descriptor limit when first used.</summary>
    public static int Capacity { get; } = (int)Math.Clamp(DescriptorLimit.Soft / 64, 16, 1024);

    private static readonly Lock s_lock = new();
    private static readonly (SplicePipe Pipe, long Since)[] s_idle = new (SplicePipe, long)[Capacity];
    private static int s_idleCount;
    private static int s_open;
    private static long s_noNewBefore;
    private static Timer? s_trim;

    /// <summary>Pipes open now (lent and idle).</summary>
    public static int Open => Volatile.Read(ref s_open);

    /// <summary>An empty pipe from the pool, or a new one; false when none can be had.</summary>
    public static bool TryRent(out SplicePipe pipe)
    {
        lock (s_lock)
        {
            if (s_idleCount > 0)
            {
                pipe = s_idle[--s_idleCount].Pipe;
                return true;
            }
            if (s_open >= Capacity || Environment.TickCount64 < s_noNewBefore)
            {
                pipe = default;
                return false;
            }
            s_open++;
        }
        if (Create(out pipe)) return true;
        lock (s_lock)
        {
            s_open--;
            s_noNewBefore = Environment.TickCount64 + (long)RetryAfterFailure.TotalMilliseconds;
        }
        return false;
    }

    /// <summary>Takes back an empty pipe.</summary>
    public static void Return(SplicePipe pipe)
    {
        lock (s_lock)
        {
            s_idle[s_idleCount++] = (pipe, Environment.TickCount64);
            if (s_idleCount == 1)
            {
                s_trim ??= new Timer(_ => Trim(), null, Timeout.Infinite, Timeout.Infinite);
                s_trim.Change(IdleLife / 2, IdleLife / 2);
            }
        }
    }

    /// <summary>Closes a lent pipe that may hold bytes.</summary>
    public static void Close(SplicePipe pipe)
    {
        Libc.Close(pipe.Read);
        Libc.Close(pipe.Write);
        lock (s_lock) s_open--;
    }

    /// <summary>Closes the pipes idle for <see cref="IdleLife"/> (the oldest are at the bottom of the stack).</summary>
    private static void Trim()
    {
        long cutoff = Environment.TickCount64 - (long)IdleLife.TotalMilliseconds;
        int old = 0;
        SplicePipe[] closing;
        lock (s_lock)
        {
            while (old < s_idleCount && s_idle[old].Since <= cutoff) old++;
            if (old == 0) return;
            closing = new SplicePipe[old];
            for (int i = 0; i < old; i++) closing[i] = s_idle[i].Pipe;
            Array.Copy(s_idle, old, s_idle, 0, s_idleCount - old);
            s_idleCount -= old;
            s_open -= old;
            if (s_idleCount == 0) s_trim!.Change(Timeout.Infinite, Timeout.Infinite);
        }
        foreach (var p in closing)
        {
            Libc.Close(p.Read);
            Libc.Close(p.Write);
        }
    }

    private static unsafe bool Create(out SplicePipe pipe)
    {
        pipe = default;
        int* fds = stackalloc int[2];
        if (Libc.Pipe2(fds, Libc.ONonBlock | Libc.OCloexec) != 0) return false; // EMFILE, ENFILE, ...
        // An unprivileged user beyond /proc/sys/fs/pipe-user-pages-soft gets 2-page pipes and EPERM here:
        // such a pipe would splice 8 KiB at a time, slower than the buffered path.
        if (Libc.Fcntl(fds[1], Libc.FSetPipeSize, PipeSize) < 0)
        {
            Libc.Close(fds[0]);
            Libc.Close(fds[1]);
            return false;
        }
        pipe = new SplicePipe(fds[0], fds[1]);
        return true;
    }
}
