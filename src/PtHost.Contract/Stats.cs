namespace PtHost.Contract;

/// <summary>Thread-safe counters for one transport in one process.</summary>
public sealed class TransportCounters
{
    private long _opened, _active, _failed, _bytesIn, _bytesOut, _spliceFallbacks, _datagramsDropped;

    /// <summary>A session started (and is now active).</summary>
    public void SessionOpened() { Interlocked.Increment(ref _opened); Interlocked.Increment(ref _active); }

    /// <summary>An active session ended.</summary>
    public void SessionClosed() => Interlocked.Decrement(ref _active);

    /// <summary>A session could not be set up.</summary>
    public void SessionFailed() => Interlocked.Increment(ref _failed);

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
