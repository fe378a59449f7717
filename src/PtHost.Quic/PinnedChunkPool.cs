using System.Collections.Concurrent;

namespace PtHost.Quic;

/// <summary>Fixed-size byte arrays on the pinned object heap: stream send data is handed to
/// ngtcp2 by address and must not move until acknowledged.</summary>
internal static class PinnedChunkPool
{
    public const int ChunkSize = 16 * 1024;
    private const int MaxRetained = 2048;
    private static readonly ConcurrentQueue<byte[]> Free = new();
    private static int _count;

    public static byte[] Rent()
    {
        if (Free.TryDequeue(out var chunk))
        {
            Interlocked.Decrement(ref _count);
            return chunk;
        }
        return GC.AllocateUninitializedArray<byte>(ChunkSize, pinned: true);
    }

    public static void Return(byte[] chunk)
    {
        if (Interlocked.Increment(ref _count) <= MaxRetained) Free.Enqueue(chunk);
        else Interlocked.Decrement(ref _count);
    }
}
