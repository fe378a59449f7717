using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using Microsoft.Extensions.Logging;
using PtHost.Contract;
using PtHost.Net;
using PtHost.Net.Native;

namespace PtHost.Transports.Zephyr;

/// <summary>Counters of a running relay, for the stats line (spec/zephyr.md §4.7).</summary>
public readonly record struct ZephyrRelayStats(
    int Connections, int BoundPairs, long Accepted, long RefusedByLimits, long Bindings,
    long BindFailures, long Timeouts, long Bytes, long IdleClosed, long LifetimeClosed);

/// <summary>
/// The Zephyr relay service (spec/zephyr.md §4): assigns each accepted connection a zid, waits
/// for its bind request, joins two connections that named each other, then carries bytes both
/// ways untouched (splice(2) on Linux). An unbound connection holds a 12-byte buffer and no more.
/// </summary>
public sealed class ZephyrRelay : IAsyncDisposable
{
    private const int MaxZidTries = 10; // §4.1, as the reference relay
    private static readonly TimeSpan DrainLimit = TimeSpan.FromSeconds(10);

    private readonly ZephyrRelayOptions _options;
    private readonly ILogger _log;
    private readonly Lock _lock = new();
    private readonly Dictionary<uint, Connection> _byZid = [];
    private readonly Dictionary<IPAddress, int> _perSource = [];
    // Connections waiting for a peer's matching bind, by the zid they named (§4.3).
    private readonly Dictionary<uint, List<Connection>> _waitersFor = [];
    private readonly CancellationTokenSource _stop = new();
    private TcpSessionListener? _listener;
    private Timer? _sweeper;
    private Timer? _statsTimer;
    private int _connections, _pairs;
    private long _accepted, _refusedByLimits, _bindings, _bindFailures, _timeouts, _bytes, _idleClosed, _lifetimeClosed;
    private long _lastLimitLog = long.MinValue / 2; // "long ago", without overflow in now - last
    // spec/zephyr.md §4.9 (metrics): per connection or per pair, never per packet.
    private long _badRequests, _selfBinds, _unknownPeers, _boundElsewhere, _bindTimeouts, _peerTimeouts, _bytesFromWaiter, _bytesFromJoiner;
    private readonly LatencyHistogram _bindLatency = new(), _pairSetup = new();
    // §8: the cluster's internal link.
    private TcpSessionListener? _linkListener;
    private int _linkPending, _forwardedOpen;
    private long _forwarded, _forwardFailures, _linked, _bytesForwarded, _lastNonceSweep;
    private readonly long[] _linkRefused = new long[Enum.GetValues<LinkRefusal>().Length];

    public ZephyrRelay(ZephyrRelayOptions options, ILogger logger)
    {
        ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(options.BindTimeout, TimeSpan.Zero);
        ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(options.PeerTimeout, TimeSpan.Zero);
        ArgumentOutOfRangeException.ThrowIfLessThan(options.MaxConnections, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(options.MaxPerSource, 1);
        ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(options.IdleTimeout, TimeSpan.Zero);
        ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(options.MaxLifetime, TimeSpan.Zero);
        ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(options.HalfCloseIdleTimeout, TimeSpan.Zero);
        ArgumentOutOfRangeException.ThrowIfLessThan(options.IPv6SourcePrefix, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(options.IPv6SourcePrefix, 128);
        _options = options;
        _log = logger;
    }

    /// <summary>The address actually bound (port 0 resolved). Valid after <see cref="Start"/>.</summary>
    public IPEndPoint LocalEndPoint => (IPEndPoint)(_listener ?? throw new InvalidOperationException("not started")).LocalEndPoint!;

    /// <summary>The internal link's bound address (§8.3); null without a cluster.</summary>
    public IPEndPoint? LinkEndPoint => _linkListener?.LocalEndPoint;

    /// <summary>Binds the listener and starts accepting. Throws <see cref="SocketException"/> when the address cannot be bound.</summary>
    public void Start()
    {
        var listen = _options.Listen;
        var socket = TcpSessionListener.Listen(listen, reuseAddress: true, dualMode: true);
        // The relay keeps its own limits (§4.6), applied in accept order: the shared loop runs Admit inline.
        _listener = new TcpSessionListener("zephyr relay", socket, Admit, _log, int.MaxValue, inline: true);
        // One sweep checks every timeout of §4.2, §4.3 and §4.5: a limit is enforced within 1/8 of it (at most 1 s) after it passed.
        var shortest = new[] { _options.BindTimeout, _options.PeerTimeout, _options.IdleTimeout, _options.HalfCloseIdleTimeout, _options.MaxLifetime }.Min();
        var tick = TimeSpan.FromMilliseconds(Math.Clamp(shortest.TotalMilliseconds / 8, 50, 1000));
        _sweeper = new Timer(_ => Sweep(), null, tick, tick);
        _statsTimer = new Timer(_ => LogStats(), null, _options.StatsInterval, _options.StatsInterval);
        if (_options.Cluster is not null && _options.LinkListen is { } linkListen)
        {
            var linkSocket = TcpSessionListener.Listen(linkListen, reuseAddress: true, dualMode: true);
            _linkListener = new TcpSessionListener("zephyr link", linkSocket, AdmitLink, _log, int.MaxValue, inline: true);
            _linkListener.Start();
        }
        _listener.Start();
        if (_options.StrictClose) _log.LogWarning("strict-close test mode: the first FIN of a pair resets both peers and discards what is queued (spec/zephyr.md §4.8)");
        _log.LogInformation("zephyr relay listening on {EndPoint} (bind timeout {Bind}s, peer timeout {Peer}s, idle timeout {Idle}s, max lifetime {Lifetime}s, max {Max} connections, {PerSource} per source, IPv6 sources per /{Prefix})",
            LocalEndPoint, _options.BindTimeout.TotalSeconds, _options.PeerTimeout.TotalSeconds, _options.IdleTimeout.TotalSeconds, _options.MaxLifetime.TotalSeconds,
            _options.MaxConnections, _options.MaxPerSource, _options.IPv6SourcePrefix);
    }

    public ZephyrRelayStats GetStats()
    {
        lock (_lock)
            return new ZephyrRelayStats(_connections, _pairs, Interlocked.Read(ref _accepted), Interlocked.Read(ref _refusedByLimits),
                Interlocked.Read(ref _bindings), Interlocked.Read(ref _bindFailures), Interlocked.Read(ref _timeouts), Interlocked.Read(ref _bytes),
                Interlocked.Read(ref _idleClosed), Interlocked.Read(ref _lifetimeClosed));
    }

    /// <summary>spec/zephyr.md §4.9: the relay's metrics under instance <paramref name="id"/>.</summary>
    public void WriteMetrics(MetricsWriter m, string id)
    {
        var s = GetStats();
        int waiting;
        lock (_lock) waiting = _byZid.Values.Count(c => c.State == ConnectionState.Waiting);
        (string, string) t = ("transport", "zephyr"), r = ("role", "relay");
        m.Gauge("pthost_instance_info", "The process's instance id (constant 1).", 1, ("id", id), ("process", "relay zephyr"), ("version", Version));
        m.Gauge("pthost_relay_connections", "Connections held now, in any state.", s.Connections, t);
        m.Gauge("pthost_relay_pairs", "Pairs now: waiting (a connection named its peer, the peer has not named it back) and bound.", waiting, t, ("state", "waiting"));
        m.Gauge("pthost_relay_pairs", "Pairs now: waiting (a connection named its peer, the peer has not named it back) and bound.", s.BoundPairs, t, ("state", "bound"));
        m.Counter("pthost_relay_accepted_total", "Connections accepted.", s.Accepted, t);
        m.Gauge("pthost_sessions_open", "Sessions open now.", s.BoundPairs, t, r);
        m.Counter("pthost_sessions_opened_total", "Sessions opened since start.", s.Bindings, t, r);
        const string failed = "pthost_sessions_failed_total", failedHelp = "Sessions that could not be set up, by reason.";
        m.Counter(failed, failedHelp, s.RefusedByLimits, t, r, ("reason", "limit"));
        m.Counter(failed, failedHelp, Interlocked.Read(ref _badRequests), t, r, ("reason", "bad-request"));
        m.Counter(failed, failedHelp, Interlocked.Read(ref _selfBinds), t, r, ("reason", "self-bind"));
        m.Counter(failed, failedHelp, Interlocked.Read(ref _unknownPeers), t, r, ("reason", "unknown-peer"));
        m.Counter(failed, failedHelp, Interlocked.Read(ref _boundElsewhere), t, r, ("reason", "peer-bound-elsewhere"));
        m.Counter(failed, failedHelp, Interlocked.Read(ref _bindTimeouts), t, r, ("reason", "bind-timeout"));
        m.Counter(failed, failedHelp, Interlocked.Read(ref _peerTimeouts), t, r, ("reason", "peer-timeout"));
        const string bytes = "pthost_bytes_total", bytesHelp = "Bytes relayed, by direction.";
        m.Counter(bytes, bytesHelp, Interlocked.Read(ref _bytesFromWaiter), t, r, ("direction", "waiter-to-joiner"));
        m.Counter(bytes, bytesHelp, Interlocked.Read(ref _bytesFromJoiner), t, r, ("direction", "joiner-to-waiter"));
        m.Counter("pthost_relay_closed_total", "Bound pairs cut at a limit.", s.IdleClosed, t, ("limit", "idle"));
        m.Counter("pthost_relay_closed_total", "Bound pairs cut at a limit.", s.LifetimeClosed, t, ("limit", "lifetime"));
        if (_options.Cluster is not null)
        {
            m.Counter("pthost_zephyr_forwarded_total", "Binds forwarded to their meeting instance over the internal link (§8).", Interlocked.Read(ref _forwarded), t);
            m.Counter("pthost_zephyr_forward_failures_total", "Forwards that could not reach their meeting instance.", Interlocked.Read(ref _forwardFailures), t);
            m.Gauge("pthost_zephyr_forwarded_open", "Forwarded connections being carried now.", Volatile.Read(ref _forwardedOpen), t);
            m.Counter("pthost_zephyr_linked_total", "Forwarded connections received from other instances.", Interlocked.Read(ref _linked), t);
            m.Counter("pthost_bytes_total", "Bytes relayed, by direction.", Interlocked.Read(ref _bytesForwarded), t, r, ("direction", "forwarded"));
            foreach (var why in Enum.GetValues<LinkRefusal>())
                if (why != LinkRefusal.None)
                    m.Counter("pthost_zephyr_link_refused_total", "Internal link connections refused, by reason (§8.4).", Interlocked.Read(ref _linkRefused[(int)why]), t,
                        ("reason", why.ToString().ToLowerInvariant()));
        }
        m.Histogram("pthost_handshake_seconds", "Time from accepting a connection to its whole bind request.", _bindLatency, t, r);
        m.Histogram("pthost_relay_pair_setup_seconds", "Time from accepting the earlier connection of a pair to binding the pair.", _pairSetup, t);
    }

    private static readonly string Version = typeof(ZephyrRelay).Assembly.GetName().Version?.ToString() ?? "0";

    public void LogStats()
    {
        var s = GetStats();
        _log.LogInformation("stats: connections={Connections} bound-pairs={Pairs} accepted={Accepted} refused-by-limits={Refused} bindings={Bindings} bind-failures={Failures} timeouts={Timeouts} bytes={Bytes} idle-closed={IdleClosed} lifetime-closed={LifetimeClosed}",
            s.Connections, s.BoundPairs, s.Accepted, s.RefusedByLimits, s.Bindings, s.BindFailures, s.Timeouts, s.Bytes, s.IdleClosed, s.LifetimeClosed);
    }

    /// <summary>Closes the listener, then every connection still held.</summary>
    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync().ConfigureAwait(false);
        // Stop accepting; the connections still held are closed below, which ends their tasks.
        var stopped = _listener?.StopAsync(new CancellationToken(true)) ?? Task.CompletedTask;
        var linkStopped = _linkListener?.StopAsync(new CancellationToken(true)) ?? Task.CompletedTask;
        if (_sweeper is not null) await _sweeper.DisposeAsync().ConfigureAwait(false);
        if (_statsTimer is not null) await _statsTimer.DisposeAsync().ConfigureAwait(false);
        List<Connection> all;
        lock (_lock) all = [.. _byZid.Values];
        foreach (var c in all) Close(c, abort: true);
        // A connection accepted during the stop may not be registered yet: it is not waited for long.
        try { await Task.WhenAll(stopped, linkStopped).WaitAsync(TimeSpan.FromSeconds(5)).ConfigureAwait(false); }
        catch (TimeoutException) { }
        _stop.Dispose();
    }

    /// <summary>§4.6: a connection over a limit is accepted and closed at once, before the assignment.</summary>
    private Task Admit(Socket socket, CancellationToken abort)
    {
        Interlocked.Increment(ref _accepted);
        // IPv4-mapped as IPv4; IPv6 per network of --ipv6-source-prefix bits (/64 by default).
        var address = SourceAddress.Key((socket.RemoteEndPoint as IPEndPoint)?.Address ?? IPAddress.None, _options.IPv6SourcePrefix);
        string? limit = null;
        lock (_lock)
        {
            int fromSource = _perSource.GetValueOrDefault(address);
            if (_connections >= _options.MaxConnections) limit = $"max-connections {_options.MaxConnections}";
            else if (fromSource >= _options.MaxPerSource) limit = $"max-per-source {_options.MaxPerSource}";
            else
            {
                _connections++;
                _perSource[address] = fromSource + 1;
            }
        }
        if (limit is not null)
        {
            long refused = Interlocked.Increment(ref _refusedByLimits);
            socket.Dispose();
            LogLimit(limit, address, refused);
            return Task.CompletedTask;
        }
        return ServeAsync(new Connection(socket, address));
    }

    /// <summary>One log line when a limit is hit, then at most one every 10 s while it stays hit.</summary>
    private void LogLimit(string limit, IPAddress address, long refused)
    {
        long now = Environment.TickCount64;
        long last = Interlocked.Read(ref _lastLimitLog);
        if (now - last < 10_000 || Interlocked.CompareExchange(ref _lastLimitLog, now, last) != last) return;
        _log.LimitHit(limit, address, refused);
    }

    private async Task ServeAsync(Connection c)
    {
        bool handedOff = false;
        try
        {
            c.Socket.NoDelay = true; // §4.1
            if (!Register(c))
            {
                _log.NoFreeZid(MaxZidTries, c.Remote);
                return;
            }
            // §4.1: the assignment, then exactly 12 bytes of bind request. Nothing past them is read
            // before binding: early bytes stay in the socket and are relayed once bound (§4.4).
            var message = new byte[ZephyrWire.MessageLength];
            ZephyrWire.WriteAssignment(message, c.Zid);
            await c.Socket.SendAsync(message, SocketFlags.None).ConfigureAwait(false);
            int got = 0;
            while (got < message.Length)
            {
                int n = await c.Socket.ReceiveAsync(message.AsMemory(got), SocketFlags.None).ConfigureAwait(false);
                if (n == 0)
                {
                    _log.ClosedBeforeBind(c.Zid, c.Remote, got);
                    return;
                }
                got += n;
            }
            var error = ZephyrWire.ParseBindRequest(message, out uint target);
            if (error != BindRequestError.None)
            {
                Interlocked.Increment(ref _bindFailures);
                Interlocked.Increment(ref _badRequests);
                _log.BadBindRequest(c.Zid, c.Remote, error);
                return;
            }
            _bindLatency.ObserveSince(c.AcceptedAt);
            bool mayArrive = false;
            if (_options.Cluster is { } cluster && target != c.Zid && ZephyrLink.Tag(target) is int owner && owner != 0 && owner != cluster.Instance)
            {
                // §8.2: the pair is joined at its meeting instance; a bind that belongs elsewhere goes there over the link.
                int meeting = ZephyrLink.Meeting(c.Zid, target);
                if (meeting != cluster.Instance)
                {
                    handedOff = true;
                    await ForwardAsync(c, target, meeting, cluster).ConfigureAwait(false);
                    return;
                }
                mayArrive = true; // the named peer comes over the link
            }
            handedOff = await BindAndRelayAsync(c, target, mayArrive).ConfigureAwait(false);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException or IOException or OperationCanceledException)
        {
            _log.ConnectionEnded(c.Zid, e.Message);
        }
        catch (Exception e)
        {
            _log.ConnectionFailed(e, c.Zid);
        }
        finally
        {
            if (!handedOff) Close(c, abort: false);
        }
    }

    /// <summary>
    /// §4.3: applies the bind rules to <paramref name="c"/> naming <paramref name="target"/> and relays the pair once matched;
    /// true when the pair's task owns <paramref name="c"/> (its caller must not close it). <paramref name="mayArrive"/>: the
    /// target is another instance's zid whose connection will be forwarded here (§8.2), so its absence is no refusal yet.
    /// </summary>
    private async Task<bool> BindAndRelayAsync(Connection c, uint target, bool mayArrive)
    {
        var (outcome, peer, evicted) = Bind(c, target, mayArrive);
        Evict(evicted);
        switch (outcome)
        {
            case BindOutcome.Matched:
                peer!.Matched!.TrySetResult(true);
                await RunPairAsync(peer, c).ConfigureAwait(false);
                return true;
            case BindOutcome.Waiting:
                if (await c.Matched!.Task.ConfigureAwait(false)) return true; // the peer's task relays the pair
                _log.NoMatchingBind(c.Zid, target, c.Unmatched);
                return false;
            case BindOutcome.Closed:
                return false;
            default:
                Interlocked.Increment(ref _bindFailures);
                if (outcome == BindOutcome.SelfBind) Interlocked.Increment(ref _selfBinds);
                else if (outcome == BindOutcome.UnknownPeer) Interlocked.Increment(ref _unknownPeers);
                else Interlocked.Increment(ref _boundElsewhere);
                _log.BindRefused(c.Zid, target, outcome);
                return false;
        }
    }

    /// <summary>
    /// §8.3: carries <paramref name="c"/> to the meeting instance: the forward header, then its bytes both ways, untouched,
    /// until either side ends. The meeting instance applies the bind rules; a refusal there closes the link, and so <paramref name="c"/>.
    /// </summary>
    private async Task ForwardAsync(Connection c, uint target, int meeting, ZephyrLink cluster)
    {
        lock (_lock)
        {
            if (c.State != ConnectionState.Registered)
            {
                Close(c, abort: false);
                return; // timed out meanwhile
            }
            c.State = ConnectionState.Bound; // nobody binds to a forwarded connection here; its pair lives at the meeting instance
            c.Target = target;
        }
        Interlocked.Increment(ref _forwarded);
        var peer = cluster.Peer(meeting);
        Socket? link = null;
        try
        {
            if (peer is null) throw new IOException($"no link address for instance {meeting}");
            link = new Socket(peer.AddressFamily, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
            using (var connect = CancellationTokenSource.CreateLinkedTokenSource(_stop.Token))
            {
                connect.CancelAfter(ZephyrLink.HeaderTimeout);
                await link.ConnectAsync(peer, connect.Token).ConfigureAwait(false);
                await link.SendAsync(cluster.BuildHeader(c.Zid, target), SocketFlags.None, connect.Token).ConfigureAwait(false);
            }
        }
        catch (Exception e) when (e is SocketException or IOException or OperationCanceledException or ObjectDisposedException)
        {
            link?.Dispose();
            Interlocked.Increment(ref _forwardFailures);
            Interlocked.Increment(ref _bindFailures);
            _log.ForwardFailed(c.Zid, target, meeting, e.Message);
            Close(c, abort: false);
            return;
        }
        var far = new Connection(link, IPAddress.None) { Zid = target, Released = true, State = ConnectionState.Bound };
        await RunPairAsync(c, far, forwarded: true).ConfigureAwait(false);
    }

    /// <summary>
    /// §8.4: a connection on the internal link. Nothing is sent until its 72-byte header proves it comes from an instance
    /// (HMAC under the shared secret, fresh time, unseen nonce, a route that ends here); anything else is reset at once.
    /// A forwarded connection then takes its original zid here and follows the bind rules like any other.
    /// </summary>
    private Task AdmitLink(Socket socket, CancellationToken abort)
    {
        if (Interlocked.Increment(ref _linkPending) > ZephyrLink.MaxPending)
        {
            Interlocked.Decrement(ref _linkPending);
            RefuseLink(socket, LinkRefusal.Limit);
            return Task.CompletedTask;
        }
        return ServeLinkAsync(socket);
    }

    private async Task ServeLinkAsync(Socket socket)
    {
        var cluster = _options.Cluster!;
        var header = new byte[ZephyrLink.HeaderLength];
        LinkRefusal refusal = LinkRefusal.None;
        uint origin = 0, target = 0;
        try
        {
            socket.NoDelay = true;
            using var limit = CancellationTokenSource.CreateLinkedTokenSource(_stop.Token);
            limit.CancelAfter(ZephyrLink.HeaderTimeout);
            int got = 0;
            while (got < header.Length)
            {
                int n = await socket.ReceiveAsync(header.AsMemory(got), SocketFlags.None, limit.Token).ConfigureAwait(false);
                if (n == 0)
                {
                    refusal = LinkRefusal.Closed;
                    break;
                }
                got += n;
            }
            if (refusal == LinkRefusal.None) refusal = cluster.Verify(header, out origin, out target);
        }
        catch (Exception e) when (e is SocketException or OperationCanceledException or ObjectDisposedException)
        {
            refusal = LinkRefusal.Timeout;
        }
        finally
        {
            Interlocked.Decrement(ref _linkPending);
        }
        if (refusal != LinkRefusal.None)
        {
            RefuseLink(socket, refusal);
            return;
        }
        var c = new Connection(socket, IPAddress.None) { Linked = true };
        lock (_lock)
        {
            if (_connections >= _options.MaxConnections) refusal = LinkRefusal.Limit;
            else if (!_byZid.TryAdd(origin, c)) refusal = LinkRefusal.Duplicate;
            else
            {
                c.Zid = origin;
                c.Registered = true;
                c.Deadline = Environment.TickCount64 + (long)_options.BindTimeout.TotalMilliseconds;
                _connections++;
            }
        }
        if (refusal != LinkRefusal.None)
        {
            RefuseLink(socket, refusal);
            return;
        }
        Interlocked.Increment(ref _linked);
        bool handedOff = false;
        try { handedOff = await BindAndRelayAsync(c, target, mayArrive: false).ConfigureAwait(false); }
        catch (Exception e) when (e is SocketException or ObjectDisposedException or IOException or OperationCanceledException)
        {
            _log.ConnectionEnded(c.Zid, e.Message);
        }
        finally
        {
            if (!handedOff) Close(c, abort: false);
        }
    }

    /// <summary>§8.4: a refused link connection is reset (SO_LINGER 0) with nothing written.</summary>
    private void RefuseLink(Socket socket, LinkRefusal why)
    {
        Interlocked.Increment(ref _linkRefused[(int)why]);
        _log.LinkRefused(why);
        try { socket.Close(0); }
        catch (Exception e) when (e is SocketException or ObjectDisposedException) { }
        socket.Dispose();
    }

    /// <summary>§4.1: a random non-negative 32-bit zid from the CSPRNG, unused by any held connection.</summary>
    private bool Register(Connection c)
    {
        Span<byte> random = stackalloc byte[4];
        lock (_lock)
        {
            if (c.State == ConnectionState.Closed) return false;
            for (int i = 0; i < MaxZidTries; i++)
            {
                RandomNumberGenerator.Fill(random);
                // §8.1: in a cluster the zid carries this instance's number in bits 27-30.
                uint zid = _options.Cluster is { } cluster ? cluster.Draw(random) : BinaryPrimitives.ReadUInt32BigEndian(random) & ZephyrWire.MaxZid;
                if (_byZid.TryAdd(zid, c))
                {
                    c.Zid = zid;
                    c.Registered = true;
                    c.Deadline = Environment.TickCount64 + (long)_options.BindTimeout.TotalMilliseconds;
                    return true;
                }
            }
        }
        return false;
    }

    internal enum BindOutcome { Matched, Waiting, Closed, SelfBind, UnknownPeer, PeerBoundElsewhere }

    /// <summary>
    /// §4.3: the bind rules, decided atomically for both sides. Also returns the connections
    /// waiting for <paramref name="c"/> that can no longer be matched: <paramref name="c"/> just
    /// named someone else (or was joined), so they are closed at once rather than at their timeout.
    /// </summary>
    private (BindOutcome, Connection?, List<Connection>?) Bind(Connection c, uint target, bool mayArrive)
    {
        lock (_lock)
        {
            if (c.State != ConnectionState.Registered) return (BindOutcome.Closed, null, null); // timed out meanwhile
            if (target == c.Zid) return (BindOutcome.SelfBind, null, null);
            // §8.2: a peer of another instance that is not here yet will come over the link: it is waited for.
            bool absent = !_byZid.TryGetValue(target, out var peer) || peer.State == ConnectionState.Closed;
            if (absent && !mayArrive) return (BindOutcome.UnknownPeer, null, null);
            if (!absent)
            {
                if (peer!.State == ConnectionState.Bound || (peer.State == ConnectionState.Waiting && peer.Target != c.Zid))
                    return (BindOutcome.PeerBoundElsewhere, null, null);
                if (peer.State == ConnectionState.Waiting)
                {
                    RemoveWaiter(peer);
                    peer.State = c.State = ConnectionState.Bound;
                    c.Target = target;
                    _pairs++;
                    _bindings++;
                    var evicted = TakeWaiters(c.Zid, "peer bound to another");
                    var more = TakeWaiters(peer.Zid, "peer bound to another");
                    if (more is not null) (evicted ??= []).AddRange(more);
                    return (BindOutcome.Matched, peer, evicted);
                }
            }
            // The peer has not sent its bind request yet: wait for it to name us.
            c.State = ConnectionState.Waiting;
            c.Target = target;
            c.Deadline = Environment.TickCount64 + (long)_options.PeerTimeout.TotalMilliseconds;
            c.Matched = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
            if (!_waitersFor.TryGetValue(target, out var list)) _waitersFor[target] = list = new List<Connection>(1);
            list.Add(c);
            c.InWaiters = true;
            return (BindOutcome.Waiting, null, TakeWaiters(c.Zid, "peer bound to another"));
        }
    }

    /// <summary>Under the lock: ends the wait of every connection waiting for <paramref name="zid"/>.</summary>
    private List<Connection>? TakeWaiters(uint zid, string reason)
    {
        if (!_waitersFor.Remove(zid, out var list)) return null;
        foreach (var w in list)
        {
            w.InWaiters = false;
            w.State = ConnectionState.Closed;
            w.Unmatched = reason;
        }
        return list;
    }

    private void RemoveWaiter(Connection c)
    {
        if (!c.InWaiters) return;
        c.InWaiters = false;
        if (_waitersFor.TryGetValue(c.Target, out var list) && list.Remove(c) && list.Count == 0) _waitersFor.Remove(c.Target);
    }

    /// <summary>Outside the lock: wakes evicted waiters; their tasks close them.</summary>
    private static void Evict(List<Connection>? evicted)
    {
        if (evicted is null) return;
        foreach (var w in evicted) w.Matched!.TrySetResult(false);
    }

    /// <summary>§4.2, §4.3: closes connections whose bind request or whose peer's bind did not come in time.</summary>
    private void Sweep()
    {
        long now = Environment.TickCount64;
        if (_options.Cluster is { } cluster && now - Interlocked.Read(ref _lastNonceSweep) >= 5_000)
        {
            Interlocked.Exchange(ref _lastNonceSweep, now);
            cluster.ForgetOldNonces();
        }
        List<(Connection, ConnectionState)>? expired = null;
        List<Pair>? ended = null;
        lock (_lock)
        {
            foreach (var c in _byZid.Values)
            {
                if (c.State == ConnectionState.Bound && c.Pair is { } pair && pair.First == c)
                {
                    if (PairExpired(pair, now)) (ended ??= []).Add(pair);
                    continue;
                }
                if (c.State is not (ConnectionState.Registered or ConnectionState.Waiting) || c.Deadline > now) continue;
                (expired ??= []).Add((c, c.State));
                if (c.State == ConnectionState.Waiting)
                {
                    RemoveWaiter(c);
                    c.Unmatched = $"no bind back within {_options.PeerTimeout.TotalSeconds}s";
                }
                c.State = ConnectionState.Closed; // nobody can bind to it any more
            }
        }
        // Outside the lock: cancelling ends the pair's pumps; its task aborts both sockets (§4.5).
        if (ended is not null) foreach (var p in ended) p.Cancel.Cancel();
        if (expired is null) return;
        foreach (var (c, state) in expired)
        {
            Interlocked.Increment(ref _timeouts);
            if (state == ConnectionState.Waiting) Interlocked.Increment(ref _peerTimeouts);
            else Interlocked.Increment(ref _bindTimeouts);
            if (state == ConnectionState.Waiting) c.Matched!.TrySetResult(false); // its task closes it
            else
            {
                _log.BindTimeout(c.Zid, c.Remote, _options.BindTimeout.TotalSeconds);
                Close(c, abort: false); // fails the pending receive
            }
        }
    }

    /// <summary>Under the lock: §4.5's idle, half-close idle and lifetime limits of a bound pair; true (once) when one is reached.</summary>
    private bool PairExpired(Pair pair, long now)
    {
        if (pair.Expired is not null) return false;
        bool half = Volatile.Read(ref pair.HalfClosed);
        var idle = half ? _options.HalfCloseIdleTimeout : _options.IdleTimeout;
        if (now - Volatile.Read(ref pair.Last) >= (long)idle.TotalMilliseconds)
        {
            pair.Expired = half ? PairLimit.HalfClosedIdle : PairLimit.Idle;
            if (!half) Interlocked.Increment(ref _idleClosed);
            return true;
        }
        if (now - pair.Started >= (long)_options.MaxLifetime.TotalMilliseconds)
        {
            pair.Expired = PairLimit.Lifetime;
            Interlocked.Increment(ref _lifetimeClosed);
            return true;
        }
        return false;
    }

    /// <summary>
    /// §4.4, §4.5: relays a bound pair. An end of stream is passed on as FIN after every byte read
    /// before it was written; once both directions ended both sockets close normally. A reset
    /// aborts both. Before aborting a socket that a finished direction wrote to, the relay waits
    /// until the peer acknowledged every byte, so an abort never discards a delivered tail.
    /// </summary>
    private async Task RunPairAsync(Connection a, Connection b, bool forwarded = false)
    {
        if (forwarded) Interlocked.Increment(ref _forwardedOpen);
        else
        {
            _log.Bound(a.Zid, a.Remote, b.Zid, b.Remote);
            _pairSetup.ObserveSince(Math.Min(a.AcceptedAt, b.AcceptedAt));
        }
        var pair = new Pair(a, Environment.TickCount64);
        lock (_lock) a.Pair = b.Pair = pair; // from now on the sweeper applies the limits of §4.5
        bool clean = false;
        Connection? drained = null;
        try
        {
            using var sa = new NetworkStream(a.Socket, ownsSocket: false);
            using var sb = new NetworkStream(b.Socket, ownsSocket: false);
            // a waited (named its peer first), b joined it: bytes are counted per direction (§4.9).
            // A forwarded connection's bytes (§8.3) are counted apart: the meeting instance counts the pair's.
            Action<long> countAb = forwarded ? CountForwarded(pair) : n =>
            {
                Interlocked.Add(ref _bytes, n);
                Interlocked.Add(ref _bytesFromWaiter, n);
                Volatile.Write(ref pair.Last, Environment.TickCount64);
            };
            Action<long> countBa = forwarded ? countAb : n =>
            {
                Interlocked.Add(ref _bytes, n);
                Interlocked.Add(ref _bytesFromJoiner, n);
                Volatile.Write(ref pair.Last, Environment.TickCount64);
            };
            bool passFin = !_options.StrictClose;
            var ab = PumpAsync(sa, sb, countAb, passFin, pair.Cancel.Token);
            var ba = PumpAsync(sb, sa, countBa, passFin, pair.Cancel.Token);
            var first = await Task.WhenAny(ab, ba).ConfigureAwait(false);
            var other = first == ab ? ba : ab;
            if (!await first.ConfigureAwait(false))
            {
                await pair.Cancel.CancelAsync().ConfigureAwait(false);
                await other.ConfigureAwait(false);
                return;
            }
            if (_options.StrictClose)
            {
                // §4.8 test mode: the first FIN ends the pair at once; both sockets are reset below.
                _log.StrictClose(a.Zid, b.Zid);
                await pair.Cancel.CancelAsync().ConfigureAwait(false);
                await other.ConfigureAwait(false);
                return;
            }
            // One side ended and its FIN was passed on. The other direction may go on while it moves
            // bytes: the sweeper now holds it to the half-close idle limit.
            drained = first == ab ? b : a;
            Volatile.Write(ref pair.Last, Environment.TickCount64);
            Volatile.Write(ref pair.HalfClosed, true);
            clean = await other.ConfigureAwait(false);
        }
        catch (Exception e)
        {
            _log.PairFailed(e, a.Zid, b.Zid);
        }
        finally
        {
            switch (pair.Expired)
            {
                case PairLimit.HalfClosedIdle: _log.HalfClosedIdle(a.Zid, b.Zid, _options.HalfCloseIdleTimeout.TotalSeconds); break;
                case PairLimit.Idle: _log.PairIdle(a.Zid, b.Zid, _options.IdleTimeout.TotalSeconds); break;
                case PairLimit.Lifetime: _log.PairLifetime(a.Zid, b.Zid, _options.MaxLifetime.TotalSeconds); break;
            }
            if (!clean && drained is not null) await WaitAcknowledgedAsync(drained.Socket, DrainLimit).ConfigureAwait(false);
            Close(a, abort: !clean);
            Close(b, abort: !clean);
            if (forwarded) Interlocked.Decrement(ref _forwardedOpen);
            else lock (_lock) _pairs--;
            _log.PairEnded(a.Zid, b.Zid, clean ? "closed" : "aborted");
        }
    }

    private Action<long> CountForwarded(Pair pair) => n =>
    {
        Interlocked.Add(ref _bytesForwarded, n);
        Volatile.Write(ref pair.Last, Environment.TickCount64);
    };

    private enum PairLimit { Idle, HalfClosedIdle, Lifetime }

    /// <summary>A bound pair's clock (§4.5): when it was bound, when it last moved a byte, whether one direction ended.</summary>
    private sealed class Pair(Connection first, long started)
    {
        public readonly Connection First = first;
        public readonly long Started = started;
        public readonly CancellationTokenSource Cancel = new();
        public long Last = started;
        public bool HalfClosed;
        /// <summary>Set under the relay's lock by the sweeper: the limit that ended the pair.</summary>
        public PairLimit? Expired;
    }

    /// <summary>Copies one direction; on its end of stream passes FIN on (unless <paramref name="passFin"/> is false). False on an error or cancellation.</summary>
    private static async Task<bool> PumpAsync(NetworkStream from, NetworkStream to, Action<long> count, bool passFin, CancellationToken ct)
    {
        try
        {
            await Relay.CopyAsync(from, to, count, ct).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or SocketException or OperationCanceledException or ObjectDisposedException)
        {
            return false;
        }
        if (passFin) Relay.ShutdownWrite(to);
        return true;
    }

    /// <summary>Removes a connection and closes its socket (abortively: RST). Idempotent.</summary>
    private void Close(Connection c, bool abort)
    {
        List<Connection>? evicted;
        lock (_lock)
        {
            c.State = ConnectionState.Closed;
            RemoveWaiter(c);
            evicted = c.Registered ? TakeWaiters(c.Zid, "peer closed") : null;
            if (!c.Released)
            {
                c.Released = true;
                if (c.Registered && _byZid.TryGetValue(c.Zid, out var held) && held == c) _byZid.Remove(c.Zid);
                _connections--;
                if (!c.Linked)
                {
                    int left = _perSource.GetValueOrDefault(c.Source) - 1;
                    if (left <= 0) _perSource.Remove(c.Source); else _perSource[c.Source] = left;
                }
            }
        }
        Evict(evicted);
        try
        {
            // Close(0): an abortive close that resets even while a receive is pending (see Relay.Abort).
            if (abort) c.Socket.Close(0);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException) { }
        c.Socket.Dispose();
    }

    /// <summary>Waits (bounded) until the kernel holds no unacknowledged bytes for <paramref name="socket"/> (Linux SIOCOUTQ).</summary>
    private static async Task WaitAcknowledgedAsync(Socket socket, TimeSpan limit)
    {
        if (!OperatingSystem.IsLinux()) return;
        long deadline = Environment.TickCount64 + (long)limit.TotalMilliseconds;
        try
        {
            while (Environment.TickCount64 < deadline)
            {
                if (Libc.Ioctl((int)socket.Handle, Libc.SiocOutQ, out int pending) != 0 || pending <= 0) return;
                await Task.Delay(10).ConfigureAwait(false);
            }
        }
        catch (ObjectDisposedException) { }
    }

    private enum ConnectionState { Registered, Waiting, Bound, Closed }

    /// <summary>One accepted connection. While unbound it holds no buffer (the 12-byte one lives in its task).</summary>
    private sealed class Connection(Socket socket, IPAddress source)
    {
        public readonly Socket Socket = socket;
        public readonly IPAddress Source = source;
        public readonly long AcceptedAt = System.Diagnostics.Stopwatch.GetTimestamp();
        public uint Zid;
        public bool Registered;
        public bool Released;
        /// <summary>Came over the internal link (§8.4): counts against no source.</summary>
        public bool Linked;
        public ConnectionState State;
        public uint Target;
        public long Deadline;
        public TaskCompletionSource<bool>? Matched;
        public bool InWaiters;
        public string? Unmatched;
        public Pair? Pair;

        public EndPoint? Remote
        {
            get
            {
                try { return Socket.RemoteEndPoint; }
                catch (Exception e) when (e is SocketException or ObjectDisposedException) { return null; }
            }
        }
    }
}
