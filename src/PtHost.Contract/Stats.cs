namespace PtHost.Contract;

/// <summary>Thread-safe counters for one transport in one process.</summary>
public sealed class TransportCounters
{
    private long _opened, _active, _failed, _bytesIn, _bytesOut, _spliceFallbacks, _datagramsDropped;

    /// <summary>A session started (and is now active).</summary>
    public void SessionOpened() { Interlocked.Increment(ref _opened); Interlocked.Increment(ref _active); }

    /// <summary>An active session ended.</summary>
    public void SessionClosed() => Interlocked.Decrement(ref _active);

    /// <summary>A session could not be set up (reason <c>other</c> in the metrics).</summary>
    public void SessionFailed() => SessionFailed("other");

    /// <summary>A session could not be set up, for <paramref name="reason"/>: one word from a small fixed set (spec/ipc.md §4.12).</summary>
    public void SessionFailed(string reason)
    {
        Interlocked.Increment(ref _failed);
        _failures.AddOrUpdate(reason, 1, static (_, n) => n + 1);
    }

    /// <summary>Time from a session's first byte to its being open (handshake and transport connect), per session.</summary>
    public LatencyHistogram Handshake { get; } = new();

    private readonly System.Collections.Concurrent.ConcurrentDictionary<string, long> _failures = new(StringComparer.Ordinal);

    /// <summary>
    /// Adds this transport's sessions, failures by reason, bytes each way and handshake latency to a scrape
    /// (spec/ipc.md §4.12); <paramref name="role"/> is client, server or relay.
    /// </summary>
    public void WriteMetrics(MetricsWriter metrics, string transport, string role)
    {
        var s = Snapshot();
        metrics.Gauge("pthost_sessions_open", "Sessions open now.", s.SessionsActive, ("transport", transport), ("role", role));
        metrics.Counter("pthost_sessions_opened_total", "Sessions opened since start.", s.SessionsOpened, ("transport", transport), ("role", role));
        foreach (var (reason, n) in _failures)
            metrics.Counter("pthost_sessions_failed_total", "Sessions that could not be set up, by reason.", n, ("transport", transport), ("role", role), ("reason", reason));
        metrics.Counter("pthost_bytes_total", "Bytes relayed: in = from the application (client) or from the transport (server), out = the other way.",
            s.BytesIn, ("transport", transport), ("role", role), ("direction", "in"));
        metrics.Counter("pthost_bytes_total", "Bytes relayed: in = from the application (client) or from the transport (server), out = the other way.",
            s.BytesOut, ("transport", transport), ("role", role), ("direction", "out"));
        metrics.Histogram("pthost_handshake_seconds", "Time from a session's first byte to its being open.", Handshake, ("transport", transport), ("role", role));
    }

    /// <summary>Bytes received from the application side (client) or from the transport (server).</summary>
    public void AddBytesIn(long n) => Interlocked.Add(ref _bytesIn, n);

    /// <summary>Bytes sent towards the application side (client) or towards the transport (server).</summary>
    public void AddBytesOut(long n) => Interlocked.Add(ref _bytesOut, n);

    /// <summary>
    /// A session relayed bytes through pooled buffers because no pipe for splice(2) could be had
    /// (counted once per session; spec/ipc.md §4.7 <c>SPLICE-FALLBACKS</c>).
    /// </summary>
    public void SpliceFallback() => Interlocked.Increment(ref _spliceFallbacks);

    /// <summary>
    /// A datagram a client front end dropped on purpose (spec/ipc.md §4.7 <c>DATAGRAMS-DROPPED</c>): a SOCKS5 UDP datagram
    /// with FRAG ≠ 0, a domain name or from a stranger (§5.12), or one a transparent association could not take (§12.4).
    /// </summary>
    public void DatagramDropped() => Interlocked.Increment(ref _datagramsDropped);

    /// <summary>A consistent-enough snapshot.</summary>
    public TransportStats Snapshot() => new(Volatile.Read(ref _opened), Volatile.Read(ref _active),
        Volatile.Read(ref _failed), Volatile.Read(ref _bytesIn), Volatile.Read(ref _bytesOut))
    {
        SpliceFallbacks = Volatile.Read(ref _spliceFallbacks),
        DatagramsDropped = Volatile.Read(ref _datagramsDropped),
    };
}

/// <summary>A snapshot of a transport's counters.</summary>
/// <param name="SessionsOpened">Sessions started since the process began.</param>
/// <param name="SessionsActive">Sessions open now.</param>
/// <param name="SessionsFailed">Sessions that could not be set up.</param>
/// <param name="BytesIn">Bytes received (see <see cref="TransportCounters.AddBytesIn"/>).</param>
/// <param name="BytesOut">Bytes sent.</param>
public sealed record TransportStats(long SessionsOpened, long SessionsActive, long SessionsFailed, long BytesIn, long BytesOut)
{
    /// <summary>Sessions that relayed through pooled buffers for want of a splice(2) pipe (see <see cref="TransportCounters.SpliceFallback"/>).</summary>
    public long SpliceFallbacks { get; init; }

    /// <summary>Datagrams a client front end dropped on purpose (see <see cref="TransportCounters.DatagramDropped"/>).</summary>
    public long DatagramsDropped { get; init; }
}
