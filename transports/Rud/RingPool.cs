using System.Collections.Concurrent;

namespace PtHost.Transports.Rud;

/// <summary>
/// Stream ring buffers (16 KiB to <see cref="RudStream.Window"/>, powers of two). ArrayPool.Shared
/// keeps only a few arrays of each size per core, so thousands of concurrent streams made every
/// ring garbage at its stream's end and the heap grew from one burst of sessions to the next; this
/// pool keeps up to <see cref="MaxRetainedBytes"/> of rings for the next streams instead.
/// </summary>
internal static class RingPool
{
    public const int MinShift = 14;
    /// <summary>What the pool keeps for reuse at most (spec/rud.md §11): rings in use are bounded by <see cref="RingAccount"/>s.</summary>
    public const long MaxRetainedBytes = 64L << 20;
    private static readonly ConcurrentBag<byte[]>[] Bags =
        Enumerable.Range(0, 32 - MinShift).Select(_ => new ConcurrentBag<byte[]>()).ToArray();
    private static long _retained;

    private static int ClassOf(int size)
    {
        int shift = MinShift;
        while ((1 << shift) < size) shift++;
        return shift - MinShift;
    }

    /// <summary>The size <see cref="Rent"/> returns for <paramref name="size"/>: the next power of two, at least 16 KiB.</summary>
    public static int SizeFor(int size) => 1 << (ClassOf(size) + MinShift);

    /// <summary>An array of <see cref="SizeFor"/>(<paramref name="size"/>) bytes.</summary>
    public static byte[] Rent(int size)
    {
        int c = ClassOf(size);
        if (Bags[c].TryTake(out var ring))
        {
            Interlocked.Add(ref _retained, -ring.Length);
            return ring;
        }
        return GC.AllocateUninitializedArray<byte>(1 << (c + MinShift));
    }

    public static void Return(byte[] ring)
    {
        if ((ring.Length & (ring.Length - 1)) != 0 || ring.Length < (1 << MinShift)) return;
        if (Interlocked.Add(ref _retained, ring.Length) <= MaxRetainedBytes) Bags[ClassOf(ring.Length)].Add(ring);
        else Interlocked.Add(ref _retained, -ring.Length);
    }
}

/// <summary>
/// Ring memory in use, counted against nested limits (spec/rud.md §8.3): a connection's account has
/// its source prefix's account (responders) or the endpoint's (initiators) as parent, and a source's
/// has the endpoint's. A ring grows only when every account on the way up has room; all members run
/// under the endpoint's lock.
/// </summary>
internal sealed class RingAccount(long limit, RingAccount? parent)
{
    public long Limit { get; } = limit;
    public long Used { get; private set; }
    public RingAccount? Parent { get; } = parent;

    /// <summary>Whether <paramref name="bytes"/> more fit in this account and every one above it.</summary>
    public bool CanCharge(long bytes)
    {
        for (var a = this; a is not null; a = a.Parent)
            if (a.Used + bytes > a.Limit) return false;
        return true;
    }

    /// <summary>Charges <paramref name="bytes"/> when they fit; false (nothing charged) otherwise.</summary>
    public bool TryCharge(long bytes)
    {
        if (!CanCharge(bytes)) return false;
        Charge(bytes);
        return true;
    }

    /// <summary>Charges without a check (growth a check already allowed).</summary>
    public void Charge(long bytes)
    {
        for (var a = this; a is not null; a = a.Parent) a.Used += bytes;
    }

    public void Release(long bytes)
    {
        for (var a = this; a is not null; a = a.Parent) a.Used -= bytes;
    }
}
