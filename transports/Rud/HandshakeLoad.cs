namespace PtHost.Transports.Rud;

/// <summary>
/// What the responder's <c>load</c> policy watches (spec/rud.md §4.4) and the per-source-prefix handshake
/// rate limit (§4.3 step 5, §11). Rates are counted per second, cheaply, before any cryptography: every
/// Exchange and initiator Complete that arrives, and every mezzanine that fails authentication. Caller
/// holds the endpoint's lock.
/// </summary>
internal sealed class HandshakeLoad
{
    /// <summary>Exchanges a second, and mezzanine authentication failures a second, above which the load policy defers (§4.4).</summary>
    public const int DeferExchangeRate = 256, DeferFailureRate = 16;
    /// <summary>How long deferring lasts once a rate has risen (µs): it ends only after a calm spell.</summary>
    public const long DeferHold = 10_000_000;
    /// <summary>Key agreements per source prefix: a token bucket of this many a second, holding at most <see cref="PrefixBurst"/>.</summary>
    public const int PrefixRate = 64, PrefixBurst = 256;
    /// <summary>Most source prefixes with a bucket at once; beyond, handshakes from new prefixes are dropped until buckets refill.</summary>
    public const int MaxPrefixes = 16_384;

    private long _second;
    private int _exchanges, _failures, _lastExchanges, _lastFailures;
    private long _deferUntil = long.MinValue;
    private readonly Dictionary<SourcePrefix, (double Tokens, long At)> _buckets = [];

    private void Roll(long now)
    {
        long second = now / 1_000_000;
        if (second == _second) return;
        (_lastExchanges, _lastFailures) = second == _second + 1 ? (_exchanges, _failures) : (0, 0);
        (_exchanges, _failures, _second) = (0, 0, second);
    }

    private void Check(long now)
    {
        if (Math.Max(_exchanges, _lastExchanges) > DeferExchangeRate || Math.Max(_failures, _lastFailures) > DeferFailureRate)
            _deferUntil = now + DeferHold;
    }

    /// <summary>Counts an Exchange or initiator Complete as it arrives.</summary>
    public void OnExchange(long now)
    {
        Roll(now);
        _exchanges++;
        Check(now);
    }

    /// <summary>Counts a mezzanine that failed authentication (a forged Exchange, or one made with the wrong key).</summary>
    public void OnFailure(long now)
    {
        Roll(now);
        _failures++;
        Check(now);
    }

    /// <summary>Whether the rates rose within the last <see cref="DeferHold"/>.</summary>
    public bool Raised(long now) => now < _deferUntil;

    /// <summary>Takes one key agreement from the bucket of <paramref name="prefix"/>; false when it is empty (or no bucket can be had).</summary>
    public bool TryTake(SourcePrefix prefix, long now)
    {
        if (!_buckets.TryGetValue(prefix, out var b))
        {
            if (_buckets.Count >= MaxPrefixes) return false;
            b = (PrefixBurst, now);
        }
        double tokens = Math.Min(PrefixBurst, b.Tokens + (now - b.At) * PrefixRate / 1e6);
        if (tokens < 1) { _buckets[prefix] = (tokens, now); return false; }
        _buckets[prefix] = (tokens - 1, now);
        return true;
    }

    /// <summary>Forgets the buckets that have refilled (they hold no information). Called about once a second.</summary>
    public void Prune(long now)
    {
        const long Refill = 1_000_000L * PrefixBurst / PrefixRate;
        foreach (var (prefix, b) in _buckets)
            if (now - b.At >= Refill) _buckets.Remove(prefix);
    }
}
