namespace PtHost.Transports.Rud;

/// <summary>
/// The handshake replay cache (spec/rud.md §6.1): the ephemeral keys of accepted exchanges, each kept
/// until its timestamp leaves the ±window. When it is full the entry with the oldest timestamp goes and
/// the floor rises to that timestamp: an exchange stamped at or below the floor is refused as a possible
/// replay. A full cache therefore refuses only exchanges older than what it evicted (a strike register
/// with a horizon), never every new one. Caller holds the endpoint's lock.
/// </summary>
internal sealed class ReplayCache(int limit, long windowMs)
{
    private readonly Dictionary<EphemeralKeyId, long> _stamps = [];
    private readonly PriorityQueue<EphemeralKeyId, long> _byStamp = new();

    public int Count => _stamps.Count;

    /// <summary>Exchanges stamped at or below this (Unix ms) are refused; raised by evictions.</summary>
    public long Floor { get; private set; } = long.MinValue;

    /// <summary>Whether an exchange with this key and timestamp may be a replay.</summary>
    public bool Refuses(EphemeralKeyId key, long stampMs) => stampMs <= Floor || _stamps.ContainsKey(key);

    public void Add(EphemeralKeyId key, long stampMs)
    {
        while (_stamps.Count >= limit && _byStamp.TryDequeue(out var oldest, out long stamp))
        {
            _stamps.Remove(oldest);
            Floor = Math.Max(Floor, stamp);
        }
        _stamps[key] = stampMs;
        _byStamp.Enqueue(key, stampMs);
    }

    /// <summary>Drops the entries whose timestamps the window refuses anyway (older than now − window).</summary>
    public void Prune(long nowMs)
    {
        while (_byStamp.TryPeek(out var key, out long stamp) && stamp < nowMs - windowMs)
        {
            _byStamp.Dequeue();
            _stamps.Remove(key);
        }
    }
}
