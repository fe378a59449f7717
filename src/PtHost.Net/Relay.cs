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
    public static Task RunAsync(Stream a, Stream b, Action<long>? aToB, Action<long>? bToA, Action? pipeUnavailable, CancellationToken cancellationToken) =>
        RunAsync(new RelaySession(a, b, null, aToB, bToA, pipeUnavailable, cancellationToken));

    /// <summary>
    /// Relays until both directions end, counting into <paramref name="counters"/>: bytes from <paramref name="a"/>
    /// as in, from <paramref name="b"/> as out, and a session that fell back to pooled buffers once
    /// (<see cref="TransportCounters.SpliceFallback"/>). What an idle session holds is one <see cref="RelaySession"/>,
    /// this method's state and one state per direction (no delegates, no linked token source).
    /// </summary>
    public static Task RunAsync(Stream a, Stream b, TransportCounters counters, CancellationToken cancellationToken) =>
        RunAsync(new RelaySession(a, b, counters, null, null, null, cancellationToken));

    private static async Task RunAsync(RelaySession session)
    {
        try
        {
            var t1 = PumpAsync(session, aToB: true);
            await PumpAsync(session, aToB: false).ConfigureAwait(false);
            await t1.ConfigureAwait(false);
        }
        finally
        {
            session.Dispose();
        }
    }

    /// <summary>
    /// One direction until it ends (then a half-close) or fails (then the whole session is aborted). Between two
    /// sockets the splice loop is the direction's only state machine.
    /// </summary>
    private static Task PumpAsync(RelaySession session, bool aToB)
    {
        Stream from = aToB ? session.A : session.B, to = aToB ? session.B : session.A;
        if (Splice.Available && from is NetworkStream fs && to is NetworkStream ts)
            return Splice.CopyAsync(fs.Socket, ts.Socket, new RelayCount(session, aToB), session.Token);
        return BufferedPumpAsync(session, aToB, from, to);
    }

    private static async Task BufferedPumpAsync(RelaySession session, bool aToB, Stream from, Stream to)
    {
        try
        {
            await BufferedCopyAsync(from, to, session.Counts ? n => session.Count(aToB, n) : null, session.Token).ConfigureAwait(false);
            session.Ended(aToB);
        }
        catch (Exception e) when (IsSessionEnd(e))
        {
            session.Failed();
        }
    }

    /// <summary>How a direction's I/O ends when the peer or the session's abort ends it.</summary>
    internal static bool IsSessionEnd(Exception e) =>
        e is IOException or SocketException or OperationCanceledException or ObjectDisposedException;

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
            return Splice.CopyAsync(fs.Socket, ts.Socket, new RelayCount(count, pipeUnavailable), ct);
        return BufferedCopyAsync(from, to, count, ct);
    }

    /// <summary>Counts a direction that fell back (<see cref="PipeFallbacks"/>).</summary>
    internal static void CountFallback() => Interlocked.Increment(ref s_fallbacks);

    private static async Task BufferedCopyAsync(Stream from, Stream to, Action<long>? count, CancellationToken ct)
    {
        bool hot = false;
        long sinceWait = 0;
        while (true)
        {
            // Wait for data without holding a buffer (zero-byte read), unless the last read filled one.
            if (!hot)
            {
                await from.ReadAsync(Memory<byte>.Empty, ct).ConfigureAwait(false);
                sinceWait = 0;
            }
            else if (sinceWait >= Splice.FairShare)
            {
                // As splice does: a direction never short of bytes gives its thread up now and then (an inline event thread, spec/zephyr.md §8.7).
                sinceWait = 0;
                await Task.Yield();
            }
            byte[] buffer = ArrayPool<byte>.Shared.Rent(BufferSize);
            try
            {
                int n = await from.ReadAsync(buffer.AsMemory(0, BufferSize), ct).ConfigureAwait(false);
                if (n == 0) return;
                await to.WriteAsync(buffer.AsMemory(0, n), ct).ConfigureAwait(false);
                count?.Invoke(n);
                hot = n == BufferSize;
                sinceWait += n;
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
    /// <summary>Bytes a direction moves without waiting before it lets other work run on its thread.</summary>
    public const int FairShare = 4 << 20;

    public static bool Available { get; } = OperatingSystem.IsLinux() &&
        Environment.GetEnvironmentVariable("PTHOST_NO_SPLICE") is null or "" or "0";

    /// <summary>
    /// Copies until <paramref name="from"/> ends. For a relay session (<see cref="RelayCount.Session"/>) it also finishes
    /// the direction: a half-close at the end, the session aborted on failure (nothing thrown).
    /// </summary>
    public static async Task CopyAsync(Socket from, Socket to, RelayCount count, CancellationToken ct)
    {
        SplicePipe pipe = default;
        bool holding = false, fellBack = false;
        long sinceWait = 0;
        try
        {
            while (true)
            {
                if (!holding)
                {
                    // Wait until readable (zero-byte receive consumes nothing), holding no pipe. A session that ends
                    // without data (or is only readable because of its FIN) takes no pipe: nothing buffered means end of stream.
                    await from.ReceiveAsync(Memory<byte>.Empty, SocketFlags.None, ct).ConfigureAwait(false);
                    if (from.Available == 0 && await IsEndOfStreamAsync(from, to, count, ct).ConfigureAwait(false)) break;
                    if (!SplicePipes.TryRent(out pipe))
                    {
                        // No pipe (the pool's cap, EMFILE, ENFILE, pipe-user-pages): this burst goes through a pooled buffer.
                        if (!fellBack)
                        {
                            fellBack = true;
                            Relay.CountFallback();
                        }
                        count.PipeUnavailable();
                        if (await CopyChunkAsync(from, to, count, ct).ConfigureAwait(false) == 0) break;
                        continue;
                    }
                    holding = true;
                }
                nint n = SpliceSocket(from, pipe.Write, SplicePipes.PipeSize, fromSocket: true);
                if (n == 0) break;
                if (n < 0)
                {
                    int errno = Marshal.GetLastPInvokeError();
                    if (errno == Libc.EIntr) continue;
                    if (errno != Libc.EAgain) throw new SocketException(errno);
                    // Nothing more to read now: the pipe (empty) goes back while this direction waits.
                    holding = false;
                    sinceWait = 0;
                    SplicePipes.Return(pipe);
                    continue;
                }
                count.Add(n);
                await DrainAsync(pipe.Read, to, n, ct).ConfigureAwait(false);
                // A direction that is never short of bytes would keep its thread: with completions run inline on a
                // socket event thread (IRelayService.InlineSocketCompletions), the other sockets of that thread would wait.
                if ((sinceWait += n) >= FairShare)
                {
                    sinceWait = 0;
                    await Task.Yield();
                }
            }
            if (holding) SplicePipes.Return(pipe);
            holding = false;
            count.Session?.Ended(count.AToB);
        }
        catch (Exception e)
        {
            // The pipe may still hold bytes that will never be sent: it is closed, not pooled.
            if (holding) SplicePipes.Close(pipe);
            holding = false;
            if (count.Session is { } session && Relay.IsSessionEnd(e)) session.Failed();
            else throw;
        }
        finally
        {
            if (holding) SplicePipes.Return(pipe);
        }
    }

    /// <summary>Reads one byte: true at end of stream; otherwise passes the byte on and returns false.</summary>
    private static async ValueTask<bool> IsEndOfStreamAsync(Socket from, Socket to, RelayCount count, CancellationToken ct)
    {
        byte[] one = ArrayPool<byte>.Shared.Rent(1);
        try
        {
            if (await from.ReceiveAsync(one.AsMemory(0, 1), SocketFlags.None, ct).ConfigureAwait(false) == 0) return true;
            await to.SendAsync(one.AsMemory(0, 1), SocketFlags.None, ct).ConfigureAwait(false);
            count.Add(1);
            return false;
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(one);
        }
    }

    /// <summary>One read and its write through a pooled buffer; returns the bytes moved (0 at end of stream).</summary>
    private static async ValueTask<int> CopyChunkAsync(Socket from, Socket to, RelayCount count, CancellationToken ct)
    {
        byte[] buffer = ArrayPool<byte>.Shared.Rent(Relay.BufferSize);
        try
        {
            int n = await from.ReceiveAsync(buffer.AsMemory(0, Relay.BufferSize), SocketFlags.None, ct).ConfigureAwait(false);
            if (n == 0) return 0;
            await to.SendAsync(buffer.AsMemory(0, n), SocketFlags.None, ct).ConfigureAwait(false);
            count.Add(n);
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

/// <summary>
/// One session's shared state: both streams, where counts go, the "fell back once" flag, and the abort token
/// (cancelled when either direction fails, or when the caller's token fires).
/// </summary>
internal sealed class RelaySession : CancellationTokenSource
{
    private readonly TransportCounters? _counters;
    private readonly Action<long>? _aToB, _bToA;
    private readonly Action? _pipeUnavailable;
    private readonly CancellationTokenRegistration _link;
    private int _fellBack;

    public RelaySession(Stream a, Stream b, TransportCounters? counters, Action<long>? aToB, Action<long>? bToA, Action? pipeUnavailable, CancellationToken outer)
    {
        A = a;
        B = b;
        _counters = counters;
        _aToB = aToB;
        _bToA = bToA;
        _pipeUnavailable = pipeUnavailable;
        if (outer.CanBeCanceled) _link = outer.UnsafeRegister(static s => ((RelaySession)s!).Abort(), this);
    }

    public Stream A { get; }
    public Stream B { get; }

    public void Count(bool aToB, long n)
    {
        if (_counters is { } c)
        {
            if (aToB) c.AddBytesIn(n);
            else c.AddBytesOut(n);
        }
        else (aToB ? _aToB : _bToA)?.Invoke(n);
    }

    /// <summary>No pipe for a burst: counted once per session.</summary>
    public void PipeUnavailable()
    {
        if (Interlocked.Exchange(ref _fellBack, 1) != 0) return;
        if (_counters is { } c) c.SpliceFallback();
        else _pipeUnavailable?.Invoke();
    }

    public bool Counts => _counters is not null || _aToB is not null || _bToA is not null;

    /// <summary>A direction ended cleanly: the end is passed on as a half-close.</summary>
    public void Ended(bool aToB) => Relay.ShutdownWrite(aToB ? B : A);

    /// <summary>A direction failed: the session is over, the other direction is aborted too.</summary>
    public void Failed()
    {
        Abort();
        Relay.Abort(A);
        Relay.Abort(B);
    }

    /// <summary>Ends the session now: both directions' pending I/O fails.</summary>
    public void Abort()
    {
        try { Cancel(); }
        catch (ObjectDisposedException) { }
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing) _link.Dispose();
        base.Dispose(disposing);
    }
}

/// <summary>Where a splice direction's counts go: a relay session's counters, or a caller's delegates.</summary>
internal readonly struct RelayCount
{
    private readonly Action<long>? _count;
    private readonly Action? _pipeUnavailable;

    public RelayCount(RelaySession session, bool aToB)
    {
        Session = session;
        AToB = aToB;
    }

    public RelayCount(Action<long>? count, Action? pipeUnavailable)
    {
        _count = count;
        _pipeUnavailable = pipeUnavailable;
    }

    /// <summary>The relay session this direction belongs to (it finishes the direction), or null.</summary>
    public RelaySession? Session { get; }

    public bool AToB { get; }

    public void Add(long n)
    {
        if (Session is { } s) s.Count(AToB, n);
        else _count?.Invoke(n);
    }

    public void PipeUnavailable()
    {
        if (Session is { } s) s.PipeUnavailable();
        else _pipeUnavailable?.Invoke();
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
