using System.Buffers;
using System.Net;

namespace PtHost.Transports.Asport;

/// <summary>
/// Reassembles fragmented Packet commands (spec/asport.md §3.5): keyed by (assoc id, packet id);
/// rejects frag_id ≥ total, a first fragment without an address, a later fragment with one, a
/// size that does not match the bytes present, duplicates and a changed total; drops packets
/// still incomplete after the timeout. Not thread-safe: one instance per receive loop.
/// </summary>
public sealed class AsportReassembly(TimeSpan timeout, int maxPending = 256)
{
    private sealed class Pending
    {
        public required byte Total;
        public required long Started;
        public readonly byte[]?[] Parts = new byte[]?[256];
        public readonly int[] Lengths = new int[256];
        public int Received;
        public int Bytes;
        public IPEndPoint? Address;
    }

    private readonly Dictionary<uint, Pending> _pending = [];
    public long Rejected;
    public long Expired;

    public enum Result { Rejected, Incomplete, Complete }

    /// <summary>Offers one fragment. On Complete, <paramref name="payload"/> is the whole packet
    /// (a pooled array: call <see cref="ReturnBuffer"/>) and <paramref name="address"/> the first fragment's address.</summary>
    public Result Offer(in PacketHeader h, ReadOnlySpan<byte> data, long nowMs, out byte[]? payload, out int length, out IPEndPoint? address)
    {
        payload = null;
        length = 0;
        address = null;
        if (h.FragmentTotal == 0 || h.FragmentId >= h.FragmentTotal || h.Size != data.Length ||
            (h.FragmentId == 0) != (h.Address is not null))
        {
            Rejected++;
            return Result.Rejected;
        }
        if (h.FragmentTotal == 1)
        {
            payload = ArrayPool<byte>.Shared.Rent(Math.Max(1, data.Length));
            data.CopyTo(payload);
            length = data.Length;
            address = h.Address;
            return Result.Complete;
        }
        Expire(nowMs);
        var key = (uint)h.AssocId << 16 | h.PacketId;
        if (!_pending.TryGetValue(key, out var p))
        {
            if (_pending.Count >= maxPending)
            {
                Rejected++;
                return Result.Rejected;
            }
            p = new Pending { Total = h.FragmentTotal, Started = nowMs };
            _pending[key] = p;
        }
        if (p.Total != h.FragmentTotal || p.Parts[h.FragmentId] is not null)
        {
            Rejected++;
            return Result.Rejected;
        }
        var part = ArrayPool<byte>.Shared.Rent(Math.Max(1, data.Length));
        data.CopyTo(part);
        p.Parts[h.FragmentId] = part;
        p.Lengths[h.FragmentId] = data.Length;
        p.Received++;
        p.Bytes += data.Length;
        if (h.FragmentId == 0) p.Address = h.Address;
        if (p.Received < p.Total) return Result.Incomplete;
        _pending.Remove(key);
        payload = ArrayPool<byte>.Shared.Rent(Math.Max(1, p.Bytes));
        var at = 0;
        for (var i = 0; i < p.Total; i++)
        {
            p.Parts[i].AsSpan(0, p.Lengths[i]).CopyTo(payload.AsSpan(at));
            at += p.Lengths[i];
            ArrayPool<byte>.Shared.Return(p.Parts[i]!);
        }
        length = at;
        address = p.Address;
        return Result.Complete;
    }

    public int PendingCount => _pending.Count;

    /// <summary>Drops packets older than the timeout.</summary>
    public void Expire(long nowMs)
    {
        List<uint>? old = null;
        foreach (var (k, p) in _pending)
            if (nowMs - p.Started > (long)timeout.TotalMilliseconds) (old ??= []).Add(k);
        if (old is null) return;
        foreach (var k in old)
        {
            var p = _pending[k];
            foreach (var part in p.Parts)
                if (part is not null) ArrayPool<byte>.Shared.Return(part);
            _pending.Remove(k);
            Expired++;
        }
    }

    public static void ReturnBuffer(byte[] payload) => ArrayPool<byte>.Shared.Return(payload);
}
