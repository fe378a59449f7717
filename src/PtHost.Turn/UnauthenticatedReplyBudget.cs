using PtHost.Contract;

namespace PtHost.Turn;

/// <summary>
/// spec/turn.md §4, "Unauthenticated replies": over UDP a request's source can be forged, and the replies sent
/// before a client authenticates (401/438 challenges, 400, 420, Binding) are larger than the 20-byte requests that
/// draw them. Each such reply takes a token from the bucket of its source's prefix (IPv4 /24, IPv6 /64) and from
/// the listener's bucket; without both it is not sent. Replies with MESSAGE-INTEGRITY and TCP replies never count.
/// </summary>
public sealed class UnauthenticatedReplyBudget(TimeProvider? time = null)
{
    public const int PrefixBurst = 64, PrefixPerSecond = 16, ListenerBurst = 1024, ListenerPerSecond = 512;
    /// <summary>Prefixes tracked at once; a full table first forgets prefixes whose bucket has refilled, then refuses new ones.</summary>
    public const int MaxPrefixes = 16384;

    private readonly TimeProvider _time = time ?? TimeProvider.System;
    private readonly Dictionary<(ulong, ulong), Bucket> _prefixes = [];
    private readonly Lock _lock = new();
    private Bucket _listener = new(ListenerBurst, 0);
    private bool _started;
    private long _refused;

    /// <summary>Replies not sent for want of a token.</summary>
    public long Refused => Interlocked.Read(ref _refused);

    /// <summary>True when a reply to <paramref name="source"/> may go now (and takes its tokens).</summary>
    public bool TryTake(PeerAddress source)
    {
        long now = _time.GetTimestamp();
        var key = PrefixOf(source);
        lock (_lock)
        {
            if (!_started) { _listener = new Bucket(ListenerBurst, now); _started = true; }
            _listener.Refill(now, ListenerBurst, ListenerPerSecond, _time.TimestampFrequency);
            if (!_prefixes.TryGetValue(key, out var bucket))
            {
                if (_prefixes.Count >= MaxPrefixes) Forget(now);
                if (_prefixes.Count >= MaxPrefixes) return Refuse();
                bucket = new Bucket(PrefixBurst, now);
            }
            else bucket.Refill(now, PrefixBurst, PrefixPerSecond, _time.TimestampFrequency);
            if (bucket.Tokens < 1 || _listener.Tokens < 1)
            {
                _prefixes[key] = bucket;
                return Refuse();
            }
            bucket.Tokens--;
            _listener.Tokens--;
            _prefixes[key] = bucket;
            return true;
        }
    }

    private bool Refuse()
    {
        Interlocked.Increment(ref _refused);
        return false;
    }

    /// <summary>Drops the prefixes whose bucket would be full again now (they hold no information).</summary>
    private void Forget(long now)
    {
        long full = (long)Math.Ceiling((double)PrefixBurst / PrefixPerSecond * _time.TimestampFrequency);
        List<(ulong, ulong)> idle = [];
        foreach (var (k, b) in _prefixes) if (now - b.Last >= full) idle.Add(k);
        foreach (var k in idle) _prefixes.Remove(k);
    }

    /// <summary>The /24 of an IPv4 address (IPv4-mapped included), the /64 of an IPv6 one.</summary>
    private static (ulong, ulong) PrefixOf(PeerAddress source)
    {
        Span<byte> a = stackalloc byte[16];
        var unmapped = source.Unmapped();
        int n = unmapped.WriteAddress(a);
        return n == 4
            ? (0, System.Buffers.Binary.BinaryPrimitives.ReadUInt32BigEndian(a) & 0xFFFFFF00u | 1UL << 32)
            : (System.Buffers.Binary.BinaryPrimitives.ReadUInt64BigEndian(a), 0);
    }

    private struct Bucket(double tokens, long last)
    {
        public double Tokens = tokens;
        public long Last = last;

        public void Refill(long now, int burst, int perSecond, long frequency)
        {
            if (now <= Last) return;
            Tokens = Math.Min(burst, Tokens + (double)(now - Last) * perSecond / frequency);
            Last = now;
        }
    }
}
