using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;

namespace PtHost.Benchmarks;

/// <summary>
/// A lossy point-to-point IPv4 link between two fresh network namespaces, built without netem
/// (the kernel here lacks it): one TUN device in each namespace (<see cref="AddressA"/>/30 in
/// <see cref="NamespaceA"/>, <see cref="AddressB"/>/30 in <see cref="NamespaceB"/>), and the
/// harness copies every IP packet between the two TUN file descriptors in user space, dropping a
/// seeded random fraction <see cref="Loss"/> in each direction and holding each packet for
/// <see cref="OneWayDelay"/>. TCP, QUIC and RUD between the namespaces all cross exactly this link.
/// Needs root (network namespaces, /dev/net/tun) and the <c>ip</c> program. Disposal stops the
/// pumps, closes the TUN devices and deletes both namespaces (also after a failed set-up).
/// </summary>
public sealed partial class LossyLink : IDisposable
{
    public const string AddressA = "10.99.0.1";
    public const string AddressB = "10.99.0.2";
    private const int Mtu = 1500;
    private const int SlotSize = 2048;
    /// <summary>Packets one direction can hold in its delay line; beyond it the link tail-drops (counted apart from random loss).</summary>
    private const int Slots = 8192;

    private readonly Pump _ab;
    private readonly Pump _ba;
    private readonly int _fdA = -1, _fdB = -1;
    private volatile bool _stop;
    private bool _disposed;

    public string NamespaceA { get; }
    public string NamespaceB { get; }
    public TimeSpan OneWayDelay { get; }

    /// <summary>Probability (0..1) with which each packet is dropped, each direction independently; may change between measurements.</summary>
    public double Loss
    {
        get => _ab.Loss;
        set { _ab.Loss = value; _ba.Loss = value; }
    }

    private LossyLink(string nsA, string nsB, string devA, string devB, TimeSpan delay, int fdA, int fdB, int seed)
    {
        NamespaceA = nsA;
        NamespaceB = nsB;
        _devA = devA;
        _devB = devB;
        OneWayDelay = delay;
        _fdA = fdA;
        _fdB = fdB;
        long delayTicks = (long)(delay.TotalSeconds * Stopwatch.Frequency);
        _ab = new Pump(this, fdA, fdB, delayTicks, seed, "A->B");
        _ba = new Pump(this, fdB, fdA, delayTicks, seed + 1, "B->A");
    }

    /// <summary>Creates both namespaces and the link, and starts the pumps.</summary>
    public static async Task<LossyLink> CreateAsync(TimeSpan oneWayDelay, int seed)
    {
        string tag = Environment.ProcessId.ToString(CultureInfo.InvariantCulture);
        string nsA = "rudbench-a-" + tag, nsB = "rudbench-b-" + tag;
        string devA = "rbA" + tag, devB = "rbB" + tag;
        int fdA = -1, fdB = -1;
        try
        {
            await RemoveStaleAsync().ConfigureAwait(false);
            await IpAsync(["netns", "del", nsA], check: false).ConfigureAwait(false);
            await IpAsync(["netns", "del", nsB], check: false).ConfigureAwait(false);
            await IpAsync(["netns", "add", nsA]).ConfigureAwait(false);
            await IpAsync(["netns", "add", nsB]).ConfigureAwait(false);
            fdA = OpenTun(devA);
            fdB = OpenTun(devB);
            foreach (var (ns, dev, addr) in new[] { (nsA, devA, AddressA), (nsB, devB, AddressB) })
            {
                await IpAsync(["link", "set", dev, "netns", ns]).ConfigureAwait(false);
                await IpAsync(["-n", ns, "link", "set", "lo", "up"]).ConfigureAwait(false);
                await IpAsync(["-n", ns, "addr", "add", addr + "/30", "dev", dev]).ConfigureAwait(false);
                await IpAsync(["-n", ns, "link", "set", dev, "mtu", Mtu.ToString(CultureInfo.InvariantCulture), "up"]).ConfigureAwait(false);
            }
            var link = new LossyLink(nsA, nsB, devA, devB, oneWayDelay, fdA, fdB, seed);
            link._ab.Start();
            link._ba.Start();
            // Ctrl-C, SIGTERM and the watchdog end the harness with Environment.Exit, which skips
            // the scenario's using block: the namespaces go with the process anyway.
            AppDomain.CurrentDomain.ProcessExit += link.OnProcessExit;
            return link;
        }
        catch
        {
            if (fdA >= 0) _ = close(fdA);
            if (fdB >= 0) _ = close(fdB);
            await IpAsync(["netns", "del", nsA], check: false).ConfigureAwait(false);
            await IpAsync(["netns", "del", nsB], check: false).ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>The argument prefix that runs a program inside <paramref name="ns"/>: <c>ip netns exec NS</c> (which execs, so the child's pid is the program's).</summary>
    public static string[] Exec(string ns) => ["netns", "exec", ns];

    /// <summary>Counters of both directions since the last <see cref="ResetCounters"/>.</summary>
    public LinkCounters Counters => new(
        _ab.Forwarded + _ba.Forwarded, _ab.Dropped + _ba.Dropped, _ab.Overflow + _ba.Overflow, _ab.Bytes + _ba.Bytes);

    private readonly string _devA, _devB;

    /// <summary>
    /// Packets the two TUN devices dropped on transmit since they were made (their queue of
    /// 500 packets toward the harness's reader was full): drops in front of the link that its
    /// own counters never see. -1 when the statistics cannot be read.
    /// </summary>
    public async Task<long> DeviceTxDroppedAsync()
    {
        long total = 0;
        foreach (var (ns, dev) in new[] { (NamespaceA, _devA), (NamespaceB, _devB) })
        {
            var r = await Child.RunAsync("ip", [.. Exec(ns), "cat", $"/sys/class/net/{dev}/statistics/tx_dropped"], TimeSpan.FromSeconds(10)).ConfigureAwait(false);
            if (r.ExitCode != 0 || !long.TryParse(r.Stdout.Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out long n)) return -1;
            total += n;
        }
        return total;
    }

    public void ResetCounters()
    {
        _ab.Reset();
        _ba.Reset();
    }

    private void OnProcessExit(object? sender, EventArgs e) => Dispose();

    /// <summary>Deletes namespaces an earlier harness left behind when it was killed (SIGKILL): rudbench-a/b-PID of a PID no longer running.</summary>
    private static async Task RemoveStaleAsync()
    {
        if (!Directory.Exists("/run/netns")) return;
        foreach (var path in Directory.GetFiles("/run/netns", "rudbench-*"))
        {
            string name = Path.GetFileName(path);
            if (!int.TryParse(name[(name.LastIndexOf('-') + 1)..], NumberStyles.None, CultureInfo.InvariantCulture, out int pid)) continue;
            if (pid == Environment.ProcessId || Directory.Exists($"/proc/{pid}")) continue;
            await IpAsync(["netns", "del", name], check: false).ConfigureAwait(false);
        }
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        AppDomain.CurrentDomain.ProcessExit -= OnProcessExit;
        _stop = true;
        _ab.Join();
        _ba.Join();
        _ = close(_fdA);
        _ = close(_fdB);
        // Synchronous on purpose: disposal must also run from failure paths; each call is bounded.
        IpAsync(["netns", "del", NamespaceA], check: false).GetAwaiter().GetResult();
        IpAsync(["netns", "del", NamespaceB], check: false).GetAwaiter().GetResult();
    }

    private static async Task IpAsync(string[] args, bool check = true)
    {
        var r = await Child.RunAsync("ip", args, TimeSpan.FromSeconds(20)).ConfigureAwait(false);
        if (check && r.ExitCode != 0)
            throw new InvalidOperationException($"ip {string.Join(' ', args)} exited {r.ExitCode}: {r.StderrTail}");
    }

    /// <summary>
    /// Runs <paramref name="create"/> on a dedicated thread that has joined namespace
    /// <paramref name="ns"/> (setns(2)), so sockets it creates live there; the thread leaves the
    /// namespace again before it ends.
    /// </summary>
    public static T InNamespace<T>(string ns, Func<T> create)
    {
        T? result = default;
        Exception? failure = null;
        var thread = new Thread(() =>
        {
            int self = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
            int target = open("/run/netns/" + ns, O_RDONLY | O_CLOEXEC);
            try
            {
                if (self < 0 || target < 0) throw new InvalidOperationException($"open namespace {ns}: errno {Marshal.GetLastPInvokeError()}");
                if (setns(target, CLONE_NEWNET) != 0) throw new InvalidOperationException($"setns {ns}: errno {Marshal.GetLastPInvokeError()}");
                try { result = create(); }
                finally
                {
                    if (setns(self, CLONE_NEWNET) != 0) Environment.FailFast("cannot leave network namespace " + ns);
                }
            }
            catch (Exception e) { failure = e; }
            finally
            {
                if (self >= 0) _ = close(self);
                if (target >= 0) _ = close(target);
            }
        }) { IsBackground = true, Name = "netns " + ns };
        thread.Start();
        thread.Join();
        if (failure is not null) throw new InvalidOperationException(failure.Message, failure);
        return result!;
    }

    // ---------------------------------------------------------------- TUN

    private const int O_RDONLY = 0, O_RDWR = 2, CLONE_NEWNET = 0x40000000, O_NONBLOCK = 0x800, O_CLOEXEC = 0x80000;
    private const ulong TUNSETIFF = 0x400454ca;
    private const short IFF_TUN = 0x0001, IFF_NO_PI = 0x1000;
    private const short POLLIN = 1;
    private const int EAGAIN = 11, EINTR = 4;

    private static unsafe int OpenTun(string name)
    {
        int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
        if (fd < 0) throw new InvalidOperationException($"open /dev/net/tun: errno {Marshal.GetLastPInvokeError()} (needs root and the tun module)");
        byte* ifr = stackalloc byte[40];
        new Span<byte>(ifr, 40).Clear();
        for (int i = 0; i < name.Length && i < 15; i++) ifr[i] = (byte)name[i];
        *(short*)(ifr + 16) = IFF_TUN | IFF_NO_PI;
        if (ioctl(fd, TUNSETIFF, ifr) < 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            _ = close(fd);
            throw new InvalidOperationException($"TUNSETIFF {name}: errno {errno}");
        }
        return fd;
    }

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int open(string path, int flags);

    [LibraryImport("libc", SetLastError = true)]
    private static unsafe partial int ioctl(int fd, ulong request, void* arg);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int close(int fd);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int setns(int fd, int nstype);

    [LibraryImport("libc", SetLastError = true)]
    private static unsafe partial nint read(int fd, byte* buf, nint count);

    [LibraryImport("libc", SetLastError = true)]
    private static unsafe partial nint write(int fd, byte* buf, nint count);

    [StructLayout(LayoutKind.Sequential)]
    private struct PollFd
    {
        public int Fd;
        public short Events;
        public short Revents;
    }

    [LibraryImport("libc", SetLastError = true)]
    private static unsafe partial int poll(PollFd* fds, nuint nfds, int timeoutMs);

    /// <summary>
    /// One direction: a dedicated thread reads packets from one TUN (non-blocking, after poll),
    /// drops each with probability <see cref="Loss"/> (seeded), and writes the rest to the other TUN
    /// once their delay has passed. The delay line is a fixed ring of pre-allocated slots.
    /// </summary>
    private sealed class Pump(LossyLink link, int from, int to, long delayTicks, int seed, string name)
    {
        private readonly byte[] _ring = GC.AllocateUninitializedArray<byte>(Slots * SlotSize, pinned: true);
        private readonly int[] _length = new int[Slots];
        private readonly long[] _due = new long[Slots];
        private readonly Random _random = new(seed);
        private Thread? _thread;
        private int _head, _count;
        private long _forwarded, _dropped, _overflow, _bytes;

        public double Loss { get; set; }
        public long Forwarded => Volatile.Read(ref _forwarded);
        public long Dropped => Volatile.Read(ref _dropped);
        public long Overflow => Volatile.Read(ref _overflow);
        public long Bytes => Volatile.Read(ref _bytes);

        public void Reset()
        {
            Volatile.Write(ref _forwarded, 0);
            Volatile.Write(ref _dropped, 0);
            Volatile.Write(ref _overflow, 0);
            Volatile.Write(ref _bytes, 0);
        }

        public void Start()
        {
            _thread = new Thread(Run) { IsBackground = true, Name = "lossy link " + name, Priority = ThreadPriority.AboveNormal };
            _thread.Start();
        }

        public void Join() => _thread?.Join(TimeSpan.FromSeconds(5));

        private unsafe void Run()
        {
            byte* scratch = stackalloc byte[SlotSize];
            fixed (byte* ring = _ring)
            {
                var pfd = new PollFd { Fd = from, Events = POLLIN };
                while (!link._stop)
                {
                    int timeout = 100;
                    if (_count > 0)
                    {
                        long wait = _due[_head] - Stopwatch.GetTimestamp();
                        timeout = wait <= 0 ? 0 : (int)Math.Min(100, (wait * 1000 + Stopwatch.Frequency - 1) / Stopwatch.Frequency);
                    }
                    pfd.Revents = 0;
                    int ready = poll(&pfd, 1, timeout);
                    if (ready > 0 && (pfd.Revents & POLLIN) != 0)
                    {
                        for (int burst = 0; burst < 256; burst++)
                        {
                            if (_count == Slots)
                            {
                                // Full delay line: read and discard (a router's tail drop).
                                if (read(from, scratch, SlotSize) <= 0) break;
                                Interlocked.Increment(ref _overflow);
                                continue;
                            }
                            int slot = (_head + _count) % Slots;
                            nint n = read(from, ring + (long)slot * SlotSize, SlotSize);
                            if (n <= 0) break; // EAGAIN: drained
                            double loss = Loss;
                            if (loss > 0 && _random.NextDouble() < loss)
                            {
                                Interlocked.Increment(ref _dropped);
                                continue;
                            }
                            _length[slot] = (int)n;
                            _due[slot] = Stopwatch.GetTimestamp() + delayTicks;
                            _count++;
                            if (delayTicks == 0) Flush(ring);
                        }
                    }
                    Flush(ring);
                }
            }
        }

        private unsafe void Flush(byte* ring)
        {
            long now = Stopwatch.GetTimestamp();
            while (_count > 0 && _due[_head] <= now)
            {
                int len = _length[_head];
                // A write to a TUN device does not block; a failure (device going away) just drops the packet.
                if (write(to, ring + (long)_head * SlotSize, len) == len)
                {
                    Interlocked.Increment(ref _forwarded);
                    Interlocked.Add(ref _bytes, len);
                }
                _head = (_head + 1) % Slots;
                _count--;
            }
        }
    }
}

/// <summary>Packets the link forwarded, dropped at random, and tail-dropped because its delay line was full; bytes forwarded.</summary>
public readonly record struct LinkCounters(long Forwarded, long Dropped, long Overflow, long Bytes)
{
    /// <summary>The random loss actually applied: dropped / offered (tail drops not counted as offered).</summary>
    public double AppliedLoss => Forwarded + Dropped == 0 ? 0 : (double)Dropped / (Forwarded + Dropped);
}
