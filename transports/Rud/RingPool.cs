using System.Collections.Concurrent;

namespace PtHost.Transports.Rud;

/// <summary>
/// Stream ring buffers (64 KiB to <see cref="RudStream.Window"/>, powers of two). ArrayPool.Shared
/// keeps only a few arrays of each size per core, so thousands of concurrent streams made every
/// ring garbage at its stream's end and the heap grew from one burst of sessions to the next; this
/// pool keeps up to 256 MiB of rings for the next streams instead.
/// </summary>
internal static class RingPool
{
    private const int MinShift = 16;
    private const long MaxRetainedBytes = 256L << 20;
    private static readonly ConcurrentBag<byte[]>[] Bags =
        Enumerable.Range(0, 32 - MinShift).Select(_ => new ConcurrentBag<byte[]>()).ToArray();
    private static long _retained;

    private static int ClassOf(int size)
    {
        int shift = MinShift;
        while ((1 << shift) < size) shift++;
        return shift - MinShift;
    }

    /// <summary>An array of at least <paramref name="size"/> bytes (the next power of two, ≥ 64 KiB).</summary>
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
