using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using PtHost.Contract;
using PtHost.Net;
using PtHost.Net.Tls;

namespace PtHost.Transports.Jet;

/// <summary>Counters of a running relay, for the stats line (spec/jet.md §5.7).</summary>
public readonly record struct JetRelayStats(int Connections, int Associations, long Accepted, long RefusedByLimits, long Sessions, long SessionsCut, long Errors, long Bytes);

/// <summary>
/// The JET relay service (spec/jet.md §5). Kestrel serves the REST API and the WebSocket paths
/// (ws:// on the HTTP listener, wss:// on the HTTPS one); the binary protocol has listeners of its
/// own (tcp://, tls://) so that a relayed TCP pair moves bytes with splice(2) and half-closes
/// pass through as FIN. Associations live in this process only: instances share nothing, and
/// every candidate URL names the instance that issued it.
/// </summary>
public sealed partial class JetRelay : IAsyncDisposable
{
    private static readonly TimeSpan ResponseLimit = TimeSpan.FromSeconds(5);
    private static readonly TimeSpan LingerLimit = TimeSpan.FromSeconds(2);

    private readonly JetRelayOptions _options;
    private readonly ILogger _log;
    private readonly ILoggerFactory _loggers;
    private readonly Lock _lock = new();
    private readonly Dictionary<Guid, Association> _associations = [];
    private readonly Dictionary<IPAddress, int> _perSource = [];
    // Under _lock: associations held per source (§5.5), and the relayed sessions the sweep watches.
    private readonly Dictionary<IPAddress, int> _associationsPerSource = [];
    private readonly HashSet<RelayedSession> _relayed = [];
    private readonly CancellationTokenSource _stop = new();
    private readonly List<TcpSessionListener> _listeners = [];
    private readonly byte[]? _apiKey;
    private X509Certificate2? _certificate;
    private SslStreamCertificateContext? _certificateContext;
    private WebApplication? _web;
    private Timer? _sweeper, _statsTimer;
    private int _connections;
    private long _accepted, _refusedByLimits, _sessions, _sessionsCut, _errors, _bytes;
    // spec/jet.md §5.8 (metrics): per connection or session, never per packet.
    private long _bytesFromConnector, _bytesFromAcceptor;
    private readonly System.Collections.Concurrent.ConcurrentDictionary<string, long> _failures = new(StringComparer.Ordinal);
    private readonly LatencyHistogram _handshake = new(), _pairSetup = new();

    public JetRelay(JetRelayOptions options, ILoggerFactory loggers)
    {
        _options = options;
        _log = loggers.CreateLogger("PtHost.Relay.Jet");
        _loggers = loggers;
        _apiKey = options.ApiKey is null ? null : Encoding.UTF8.GetBytes(options.ApiKey);
    }

    /// <summary>The HTTP listener (REST, ws://); valid after <see cref="StartAsync"/>.</summary>
    public IPEndPoint HttpEndPoint { get; private set; } = null!;
    public IPEndPoint? TcpEndPoint { get; private set; }
    public IPEndPoint? TlsEndPoint { get; private set; }
    public IPEndPoint? WssEndPoint { get; private set; }

    /// <summary>The SHA-256 pin of the tls/wss certificate (64 hex digits), or null without TLS listeners.</summary>
    public string? CertificatePin => _certificate is null ? null : PinnedTls.FormatPin(PinnedTls.Pin(_certificate));

    /// <summary>Binds every listener. Throws <see cref="SocketException"/> or <see cref="IOException"/> when an address cannot be bound.</summary>
    public async Task StartAsync(CancellationToken cancellationToken)
    {
        if (_options.Tls is not null || _options.Wss is not null)
        {
            _certificate = _options.Certificate ?? PinnedTls.Generate(_options.Instance);
            _certificateContext = SslStreamCertificateContext.Create(_certificate, null, offline: true);
        }
        if (_options.Tcp is { } tcp) TcpEndPoint = StartBinaryListener(tcp, CandidateKind.Tcp);
        if (_options.Tls is { } tls) TlsEndPoint = StartBinaryListener(tls, CandidateKind.Tls);

        var builder = WebApplication.CreateEmptyBuilder(new WebApplicationOptions { Args = [] });
        // Kestrel logs through the relay's own logging (the executable's host: same format, level and filters).
        builder.Logging.ClearProviders();
        builder.Services.AddSingleton(_loggers);
        builder.WebHost.UseKestrelCore().ConfigureKestrel(k =>
        {
            k.AddServerHeader = false;
            k.Limits.MaxConcurrentConnections = _options.MaxConnections;
            k.Limits.MaxConcurrentUpgradedConnections = _options.MaxConnections;
            k.Limits.RequestHeadersTimeout = _options.HandshakeTimeout;
            k.Limits.KeepAliveTimeout = TimeSpan.FromSeconds(30);
            k.Limits.MaxRequestBodySize = 4096;
            k.Limits.MaxRequestHeaderCount = 32;
            k.Limits.MaxRequestHeadersTotalSize = 16 * 1024;
            k.Listen(_options.Listen);
            if (_options.Wss is { } wss) k.Listen(wss, l => l.UseHttps(h =>
            {
                h.ServerCertificate = _certificate;
                h.HandshakeTimeout = _options.HandshakeTimeout;
            }));
        });
        var web = builder.Build();
        web.UseWebSockets(new WebSocketOptions { KeepAliveInterval = TimeSpan.FromSeconds(30) });
        web.Run(HandleHttpAsync);
        await web.StartAsync(cancellationToken).ConfigureAwait(false);
        _web = web;
        foreach (string address in web.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses)
        {
            var uri = new Uri(address);
            var ep = new IPEndPoint(IPAddress.Parse(uri.Host.Trim('[', ']')), uri.Port);
            if (uri.Scheme == "https") WssEndPoint = ep;
            else HttpEndPoint = ep;
        }

        // §5.5: the sweep runs every tenth of the shortest of the association, idle and lifetime limits (0.1–5 s).
        double shortest = Math.Min(_options.AssociationTimeout.TotalMilliseconds, Math.Min(_options.SessionIdleTimeout.TotalMilliseconds, _options.SessionLifetime.TotalMilliseconds));
        var tick = TimeSpan.FromMilliseconds(Math.Clamp(shortest / 10, 100, 5000));
        _sweeper = new Timer(_ => Sweep(), null, tick, tick);
        _statsTimer = new Timer(_ => LogStats(), null, _options.StatsInterval, _options.StatsInterval);
        _log.LogInformation("jet relay \"{Instance}\": REST and ws on {Http}, tcp {Tcp}, tls {Tls}, wss {Wss}; policy {Policy}, association timeout {Timeout}s{Key}{Pin}",
            _options.Instance, HttpEndPoint, TcpEndPoint?.ToString() ?? "off", TlsEndPoint?.ToString() ?? "off", WssEndPoint?.ToString() ?? "off",
            _options.Policy.ToString().ToLowerInvariant(), _options.AssociationTimeout.TotalSeconds, _apiKey is null ? "" : ", API key required",
            CertificatePin is { } pin ? $", certificate pin {pin}" : "");
    }

    public JetRelayStats GetStats()
    {
        int associations;
        lock (_lock) associations = _associations.Count;
        return new JetRelayStats(Volatile.Read(ref _connections), associations, Interlocked.Read(ref _accepted), Interlocked.Read(ref _refusedByLimits),
            Interlocked.Read(ref _sessions), Interlocked.Read(ref _sessionsCut), Interlocked.Read(ref _errors), Interlocked.Read(ref _bytes));
    }

    /// <summary>A refused accept or connect, for the metrics: <c>accept-404</c>, <c>connect-400</c>, ...</summary>
    private void CountFailure(string what, int status) =>
        _failures.AddOrUpdate(string.Create(System.Globalization.CultureInfo.InvariantCulture, $"{what}-{status}"), 1, static (_, n) => n + 1);

    /// <summary>spec/jet.md §5.8: the relay's metrics.</summary>
    public void WriteMetrics(MetricsWriter m)
    {
        var s = GetStats();
        int waiting, bound;
        lock (_lock)
        {
            waiting = 0;
            foreach (var a in _associations.Values)
                foreach (var c in a.Candidates.Values)
                    if (c.State == CandidateState.Accepted) waiting++;
            bound = _relayed.Count;
        }
        (string, string) t = ("transport", "jet"), r = ("role", "relay");
        m.Gauge("pthost_instance_info", "The process's instance id (constant 1).", 1, ("id", _options.Instance), ("process", "relay jet"),
            ("version", typeof(JetRelay).Assembly.GetName().Version?.ToString() ?? "0"));
        m.Gauge("pthost_relay_connections", "Connections held now, in any state.", s.Connections, t);
        m.Gauge("pthost_relay_associations", "Associations held now.", s.Associations, t);
        m.Gauge("pthost_relay_pairs", "Pairs now: waiting (an acceptor waits for its connector) and bound.", waiting, t, ("state", "waiting"));
        m.Gauge("pthost_relay_pairs", "Pairs now: waiting (an acceptor waits for its connector) and bound.", bound, t, ("state", "bound"));
        m.Counter("pthost_relay_accepted_total", "Connections accepted.", s.Accepted, t);
        m.Gauge("pthost_sessions_open", "Sessions open now.", bound, t, r);
        m.Counter("pthost_sessions_opened_total", "Sessions opened since start.", s.Sessions, t, r);
        const string failed = "pthost_sessions_failed_total", failedHelp = "Sessions that could not be set up, by reason.";
        m.Counter(failed, failedHelp, s.RefusedByLimits, t, r, ("reason", "limit"));
        foreach (var (reason, n) in _failures) m.Counter(failed, failedHelp, n, t, r, ("reason", reason));
        const string bytes = "pthost_bytes_total", bytesHelp = "Bytes relayed, by direction.";
        m.Counter(bytes, bytesHelp, Interlocked.Read(ref _bytesFromConnector), t, r, ("direction", "connector-to-acceptor"));
        m.Counter(bytes, bytesHelp, Interlocked.Read(ref _bytesFromAcceptor), t, r, ("direction", "acceptor-to-connector"));
        m.Counter("pthost_relay_closed_total", "Relayed sessions cut at the idle or lifetime limit.", s.SessionsCut, t, ("limit", "idle-or-lifetime"));
        m.Histogram("pthost_handshake_seconds", "Time from accepting a binary connection to its whole JET request.", _handshake, t, r);
        m.Histogram("pthost_relay_pair_setup_seconds", "Time from an acceptor's request to its connector's pairing.", _pairSetup, t);
    }

    public void LogStats()
    {
        var s = GetStats();
        _log.LogInformation("stats: connections={Connections} associations={Associations} accepted={Accepted} refused-by-limits={Refused} sessions={Sessions} sessions-cut={Cut} errors={Errors} bytes={Bytes}",
            s.Connections, s.Associations, s.Accepted, s.RefusedByLimits, s.Sessions, s.SessionsCut, s.Errors, s.Bytes);
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync().ConfigureAwait(false);
        // Stop accepting; the connections still open end with _stop (waited for at the end, briefly).
        var stopped = Task.WhenAll(_listeners.Select(l => l.StopAsync(new CancellationToken(true))));
        if (_web is not null)
        {
            using var limit = new CancellationTokenSource(TimeSpan.FromSeconds(5));
            try { await _web.StopAsync(limit.Token).ConfigureAwait(false); }
            catch (OperationCanceledException) { }
            await _web.DisposeAsync().ConfigureAwait(false);
        }
        if (_sweeper is not null) await _sweeper.DisposeAsync().ConfigureAwait(false);
        if (_statsTimer is not null) await _statsTimer.DisposeAsync().ConfigureAwait(false);
        List<Waiter> waiting = [];
        lock (_lock)
            foreach (var a in _associations.Values)
                foreach (var c in a.Candidates.Values)
                    if (c.Waiter is { } w) waiting.Add(w);
        foreach (var w in waiting) w.Cut();
        try { await stopped.WaitAsync(TimeSpan.FromSeconds(5)).ConfigureAwait(false); }
        catch (TimeoutException) { }
        _certificate?.Dispose();
        _stop.Dispose();
    }

    // ---- §5.3 candidates ----

    private string CandidateUrl(CandidateKind kind)
    {
        string scheme = kind.ToString().ToLowerInvariant();
        if (_options.External.TryGetValue(kind, out var ext)) return $"{scheme}://{ext}";
        IPEndPoint? bound = kind switch
        {
            CandidateKind.Tcp => TcpEndPoint,
            CandidateKind.Tls => TlsEndPoint,
            CandidateKind.Ws => HttpEndPoint,
            _ => WssEndPoint,
        };
        if (bound is null) throw new InvalidOperationException($"no {scheme} listener");
        string host = _options.ExternalHost ?? HostOf(bound.Address);
        return $"{scheme}://{new Contract.Destination(host, bound.Port)}";
    }

    private static string HostOf(IPAddress address)
    {
        if (address.Equals(IPAddress.Any)) return "127.0.0.1";
        if (address.Equals(IPAddress.IPv6Any)) return "::1";
        return address.ToString();
    }

    private IEnumerable<CandidateKind> OfferedKinds()
    {
        if (TcpEndPoint is not null) yield return CandidateKind.Tcp;
        if (TlsEndPoint is not null) yield return CandidateKind.Tls;
        yield return CandidateKind.Ws;
        if (WssEndPoint is not null) yield return CandidateKind.Wss;
    }

    // ---- state ----

    private enum CandidateState
    {
        Gathered,
        Accepted,
        Connected,
    }

    private sealed class Association(Guid id, bool viaApi, bool v1, IPAddress source)
    {
        public Guid Id { get; } = id;
        /// <summary>The source (per-source key, §5.5) that created it: its association quota is charged.</summary>
        public IPAddress Source { get; } = source;
        public bool ViaApi { get; } = viaApi;
        public bool V1 { get; } = v1;
        public bool Gathered { get; set; }
        public Dictionary<Guid, Candidate> Candidates { get; } = [];
        public long LastUsed { get; set; } = Environment.TickCount64;
    }

    private sealed class Candidate(Guid id, CandidateKind kind, string url)
    {
        public Guid Id { get; } = id;
        public CandidateKind Kind { get; } = kind;
        public string Url { get; } = url;
        public CandidateState State { get; set; }
        public Waiter? Waiter { get; set; }
        public int Version { get; set; }
    }

    /// <summary>An accepted connection waiting for its connector, then for the end of the session.</summary>
    private sealed class Waiter(Stream stream, ReadOnlyMemory<byte> early, Socket? socket, CancellationToken hangUp = default)
    {
        /// <summary>Fires when a WebSocket acceptor's connection ends (Kestrel's RequestAborted).</summary>
        public CancellationToken HangUp { get; } = hangUp;
        public Stream Stream { get; } = stream;
        /// <summary>Bytes that followed the accept request in the same read: relayed first (§5.4).</summary>
        public ReadOnlyMemory<byte> Early { get; } = early;
        public Socket? Socket { get; } = socket;
        /// <summary>When the acceptor's request was read (<c>pthost_relay_pair_setup_seconds</c>).</summary>
        public long Created { get; } = System.Diagnostics.Stopwatch.GetTimestamp();
        public TaskCompletionSource<bool> Paired { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public TaskCompletionSource SessionDone { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
        /// <summary>
        /// True once the accept response (§4) is written — a connector that pairs first waits, so relayed bytes never
        /// overtake it; false when it could not be written. WebSocket acceptors have none (the 101 is their answer).
        /// </summary>
        public TaskCompletionSource<bool> Answered { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public void Cut() => Paired.TrySetResult(false);
    }

    /// <summary>A relayed pair, watched by the sweep for its idle and lifetime limits (§5.5).</summary>
    private sealed class RelayedSession
    {
        public CancellationTokenSource Cut { get; } = new();
        public long Paired { get; } = Environment.TickCount64;
        public long LastActive = Environment.TickCount64;
        public void Active() => Volatile.Write(ref LastActive, Environment.TickCount64);
    }

    private void Touch(Association a) => a.LastUsed = Environment.TickCount64;

    /// <summary>
    /// §5.5: the per-source key. An IPv4 address (IPv4-mapped ones as IPv4) counts alone; IPv6 addresses count
    /// per <c>ipv6SourcePrefix</c> (/64 by default), since one host commonly holds a whole /64.
    /// </summary>
    private IPAddress SourceKey(IPAddress? source)
    {
        var address = source ?? IPAddress.None;
        if (address.IsIPv4MappedToIPv6) return address.MapToIPv4();
        if (address.AddressFamily != AddressFamily.InterNetworkV6 || _options.Ipv6SourcePrefix >= 128) return address;
        Span<byte> bytes = stackalloc byte[16];
        address.TryWriteBytes(bytes, out _);
        int prefix = _options.Ipv6SourcePrefix;
        if (prefix % 8 != 0) bytes[prefix / 8] &= (byte)(0xFF << (8 - prefix % 8));
        bytes[((prefix + 7) / 8)..].Clear();
        return new IPAddress(bytes);
    }

    /// <summary>Registers a new association charged to <paramref name="source"/>; 0, or 503 (total) / 429 (this source) with the problem. Under _lock.</summary>
    private int AddAssociationLocked(Guid id, bool viaApi, bool v1, IPAddress? source, out Association? association, out string problem)
    {
        association = null;
        problem = "";
        var key = SourceKey(source);
        if (_associations.Count >= _options.MaxAssociations) { problem = "association limit reached"; return 503; }
        int held = _associationsPerSource.GetValueOrDefault(key);
        if (held >= _options.MaxAssociationsPerSource)
        {
            Interlocked.Increment(ref _refusedByLimits);
            problem = $"this source holds {held} associations (maxAssociationsPerSource)";
            return 429;
        }
        association = new Association(id, viaApi, v1, key);
        _associations[id] = association;
        _associationsPerSource[key] = held + 1;
        return 0;
    }

    /// <summary>Removes <paramref name="a"/> if it is still the association held under its id, and gives its source's quota back. Under _lock.</summary>
    private bool RemoveAssociationLocked(Association a)
    {
        if (!_associations.TryGetValue(a.Id, out var held) || held != a) return false;
        _associations.Remove(a.Id);
        if (_associationsPerSource.TryGetValue(a.Source, out int n) && n > 1) _associationsPerSource[a.Source] = n - 1;
        else _associationsPerSource.Remove(a.Source);
        return true;
    }

    /// <summary>
    /// §5.5: removes associations unused for the association timeout (no waiting or relayed connection), and
    /// cuts relayed sessions idle for <c>sessionIdleTimeout</c> or older than <c>sessionLifetime</c>.
    /// </summary>
    private void Sweep()
    {
        long now = Environment.TickCount64;
        long limit = (long)_options.AssociationTimeout.TotalMilliseconds;
        long idle = (long)_options.SessionIdleTimeout.TotalMilliseconds, lifetime = (long)_options.SessionLifetime.TotalMilliseconds;
        List<Association> expired = [];
        List<(RelayedSession, bool)> cut = [];
        lock (_lock)
        {
            foreach (var a in _associations.Values)
                if (now - a.LastUsed > limit && a.Candidates.Values.All(c => c.State == CandidateState.Gathered)) expired.Add(a);
            foreach (var a in expired) RemoveAssociationLocked(a);
            foreach (var r in _relayed)
            {
                if (now - r.Paired > lifetime) cut.Add((r, false));
                else if (now - Volatile.Read(ref r.LastActive) > idle) cut.Add((r, true));
            }
            foreach (var (r, _) in cut) _relayed.Remove(r);
        }
        foreach (var a in expired) _log.AssociationExpired(a.Id, _options.AssociationTimeout.TotalSeconds);
        foreach (var (r, wasIdle) in cut)
        {
            Interlocked.Increment(ref _sessionsCut);
            _log.SessionCut(wasIdle ? "idle" : "lifetime", wasIdle ? _options.SessionIdleTimeout.TotalSeconds : _options.SessionLifetime.TotalSeconds);
            try { r.Cut.Cancel(); }
            catch (ObjectDisposedException) { }
        }
    }

    /// <summary>§5.5: a finished session removes its candidate; an association left without candidates goes too.</summary>
    private void Finish(Association a, Candidate c)
    {
        lock (_lock)
        {
            a.Candidates.Remove(c.Id);
            Touch(a);
            if (a.Candidates.Count == 0) RemoveAssociationLocked(a);
        }
    }

    /// <summary>POST /jet/association (§5.2): 0 and the new association, 400 when it exists, or the limit's status.</summary>
    private int CreateAssociation(Guid id, IPAddress? source, out Association? association, out string problem)
    {
        lock (_lock)
        {
            association = null;
            problem = $"association {id} exists";
            return _associations.ContainsKey(id) ? 400 : AddAssociationLocked(id, viaApi: true, v1: false, source, out association, out problem);
        }
    }

    /// <summary>§3.3, §5.5: a binary request that would create an association carries the API key when one is set.</summary>
    private bool KeyAllowsCreation(JetRequest r) => _apiKey is null || (r.Authorization is { } header && Authorized(header));

    /// <summary>
    /// The accept rules (§5.4): returns 0 and registers <paramref name="waiter"/>, or the status. An accept that
    /// creates an association (v1, or policy any) is charged to <paramref name="source"/> and needs the key (§5.5).
    /// </summary>
    private int TryAccept(JetRequest r, CandidateKind arrivedOn, Waiter waiter, IPAddress? source, out Association? association, out Candidate? candidate, out string problem)
    {
        association = null;
        candidate = null;
        problem = "";
        lock (_lock)
        {
            if (r.IsV1)
            {
                if (!KeyAllowsCreation(r)) { problem = "a v1 accept creates an association: it needs \"Authorization: Bearer {apiKey}\""; return 401; }
                int status = AddAssociationLocked(Guid.NewGuid(), viaApi: false, v1: true, source, out association, out problem);
                if (status != 0) return status;
                candidate = new Candidate(Guid.Empty, arrivedOn, "") { State = CandidateState.Accepted, Waiter = waiter, Version = r.Version };
                association!.Candidates[Guid.Empty] = candidate;
                return 0;
            }
            if (!_associations.TryGetValue(r.Association, out association))
            {
                if (_options.Policy != AssociationPolicy.Any) { problem = $"unknown association {r.Association}"; return 400; }
                if (!KeyAllowsCreation(r)) { problem = "this accept would create an association: it needs \"Authorization: Bearer {apiKey}\""; return 401; }
                int status = AddAssociationLocked(r.Association, viaApi: false, v1: false, source, out association, out problem);
                if (status != 0) return status;
            }
            if (association!.V1) { problem = "a v1 association takes no v2 accept"; return 400; }
            if (!association.Candidates.TryGetValue(r.Candidate, out candidate))
            {
                if (_options.Policy != AssociationPolicy.Any || association.Gathered)
                {
                    problem = $"unknown candidate {r.Candidate} of association {r.Association}";
                    return 404;
                }
                candidate = new Candidate(r.Candidate, arrivedOn, CandidateUrl(arrivedOn));
                association.Candidates[r.Candidate] = candidate;
            }
            if (candidate.Kind != arrivedOn)
            {
                problem = $"candidate {r.Candidate} is a {candidate.Kind.ToString().ToLowerInvariant()} candidate, this is the {arrivedOn.ToString().ToLowerInvariant()} listener";
                return 400;
            }
            if (candidate.State != CandidateState.Gathered) { problem = $"candidate {r.Candidate} is already {candidate.State.ToString().ToLowerInvariant()}"; return 400; }
            candidate.State = CandidateState.Accepted;
            candidate.Waiter = waiter;
            candidate.Version = r.Version;
            Touch(association);
            return 0;
        }
    }

    /// <summary>The connect rules (§5.4), checked without claiming (<paramref name="claim"/> false) or claiming the waiting acceptor.</summary>
    private int TryConnect(JetRequest r, bool claim, out Association? association, out Candidate? candidate, out Waiter? waiter, out string problem)
    {
        association = null;
        candidate = null;
        waiter = null;
        problem = "";
        lock (_lock)
        {
            if (!_associations.TryGetValue(r.Association, out association)) { problem = $"unknown association {r.Association}"; return 404; }
            if (association.V1 != r.IsV1) { problem = "version mismatch (v1 and v2 do not mix)"; return 400; }
            var cid = r.IsV1 ? Guid.Empty : r.Candidate;
            if (!association.Candidates.TryGetValue(cid, out candidate)) { problem = $"unknown candidate {cid}"; return 404; }
            if (candidate.State == CandidateState.Gathered || candidate.Waiter is null) { problem = $"candidate {cid} is not accepted yet"; return 400; }
            if (candidate.State == CandidateState.Connected) { problem = $"candidate {cid} is already connected"; return 400; }
            if (!r.IsV1 && candidate.Version != r.Version) { problem = $"version mismatch: accepted with {candidate.Version}, connect with {r.Version}"; return 400; }
            if (!claim) return 0;
            waiter = candidate.Waiter;
            candidate.State = CandidateState.Connected;
            Touch(association);
            return 0;
        }
    }

    private int TryTest(JetRequest r, out string problem)
    {
        problem = "";
        lock (_lock)
        {
            if (!_associations.TryGetValue(r.Association, out var a)) { problem = $"unknown association {r.Association}"; return 404; }
            if (!a.Candidates.ContainsKey(r.Candidate)) { problem = $"unknown candidate {r.Candidate}"; return 404; }
            Touch(a);
            return 200;
        }
    }

    /// <summary>
    /// The acceptor's side after registration: waits for the connector (at most the association
    /// timeout, or until the acceptor hangs up), then for the session to end.
    /// </summary>
    private async Task WaitAsAcceptorAsync(Association a, Candidate c, Waiter w)
    {
        using var watch = CancellationTokenSource.CreateLinkedTokenSource(_stop.Token);
        using var hangUp = CancellationTokenSource.CreateLinkedTokenSource(watch.Token, w.HangUp);
        var gone = w.Socket is { } s && w.Early.IsEmpty ? WatchHangUpAsync(s, watch.Token)
            : w.HangUp.CanBeCanceled ? WaitCancelledAsync(hangUp.Token) : Task.Delay(Timeout.Infinite, watch.Token);
        var limit = Task.Delay(_options.AssociationTimeout, watch.Token);
        var first = await Task.WhenAny(w.Paired.Task, gone, limit).ConfigureAwait(false);
        await watch.CancelAsync().ConfigureAwait(false);
        bool paired;
        lock (_lock)
        {
            paired = c.State == CandidateState.Connected && c.Waiter == w;
            if (!paired && c.Waiter == w)
            {
                c.State = CandidateState.Gathered;
                c.Waiter = null;
                if (a.V1) RemoveAssociationLocked(a);
                Touch(a);
            }
        }
        if (!paired)
        {
            _log.AcceptorGone(a.Id, c.Id,
                first == gone ? "hung up" : first == limit ? "timed out" : "was cut (DELETE or shutdown)");
            return;
        }
        await w.SessionDone.Task.ConfigureAwait(false);
    }

    /// <summary>Completes (successfully) when <paramref name="ct"/> fires.</summary>
    private static async Task WaitCancelledAsync(CancellationToken ct)
    {
        try { await Task.Delay(Timeout.Infinite, ct).ConfigureAwait(false); }
        catch (OperationCanceledException) { }
    }

    /// <summary>Completes when the socket reaches end of stream or fails, without consuming data.</summary>
    private static async Task WatchHangUpAsync(Socket s, CancellationToken ct)
    {
        try
        {
            while (true)
            {
                await s.ReceiveAsync(Memory<byte>.Empty, SocketFlags.None, ct).ConfigureAwait(false);
                if (s.Available > 0)
                {
                    await Task.Delay(Timeout.Infinite, ct).ConfigureAwait(false); // data, not a hang-up
                    return;
                }
                // A zero-byte receive can complete while nothing happened on the socket (seen about once
                // in 2,000 waiting acceptors under load): only a socket that polls readable with nothing
                // to read has hung up. Anything else is waited for again.
                if (s.Poll(0, SelectMode.SelectRead) && s.Available == 0) return;
                await Task.Delay(10, ct).ConfigureAwait(false);
            }
        }
        catch (SocketException) { }
        catch (ObjectDisposedException) { }
    }

    /// <summary>The connector's side once it has claimed the acceptor: early bytes first, then bytes both ways until both ends finish (§5.4).</summary>
    private async Task RelayAsync(Association a, Candidate c, Waiter acceptor, Stream connector, ReadOnlyMemory<byte> connectorEarly)
    {
        Interlocked.Increment(ref _sessions);
        _pairSetup.ObserveSince(acceptor.Created);
        acceptor.Paired.TrySetResult(true);
        _log.Paired(a.Id, c.Id);
        // §5.5: the sweep cuts the session when it idles or outlives its limit.
        var watched = new RelayedSession();
        lock (_lock) _relayed.Add(watched);
        try
        {
            using var stop = CancellationTokenSource.CreateLinkedTokenSource(_stop.Token, watched.Cut.Token);
            using var limit = new CancellationTokenSource(_options.HandshakeTimeout);
            if (!await acceptor.Answered.Task.WaitAsync(limit.Token).ConfigureAwait(false)) throw new IOException("the acceptor's accept response could not be written");
            if (!connectorEarly.IsEmpty) await acceptor.Stream.WriteAsync(connectorEarly, limit.Token).ConfigureAwait(false);
            if (!acceptor.Early.IsEmpty) await connector.WriteAsync(acceptor.Early, limit.Token).ConfigureAwait(false);
            Interlocked.Add(ref _bytes, connectorEarly.Length + acceptor.Early.Length);
            Interlocked.Add(ref _bytesFromConnector, connectorEarly.Length);
            Interlocked.Add(ref _bytesFromAcceptor, acceptor.Early.Length);
            Action<long> fromConnector = n =>
            {
                Interlocked.Add(ref _bytes, n);
                Interlocked.Add(ref _bytesFromConnector, n);
                watched.Active();
            };
            Action<long> fromAcceptor = n =>
            {
                Interlocked.Add(ref _bytes, n);
                Interlocked.Add(ref _bytesFromAcceptor, n);
                watched.Active();
            };
            await PtHost.Net.Relay.RunAsync(connector, acceptor.Stream, fromConnector, fromAcceptor, stop.Token).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or SocketException or OperationCanceledException or ObjectDisposedException)
        {
            _log.SessionEnded(a.Id, c.Id, e.Message);
        }
        finally
        {
            lock (_lock) _relayed.Remove(watched);
            watched.Cut.Dispose();
            Finish(a, c);
            acceptor.SessionDone.TrySetResult();
            _log.SessionFinished(a.Id, c.Id);
        }
    }

    /// <summary>§5.5: takes a connection slot (total and per source), or refuses.</summary>
    private bool Admit(IPAddress? source)
    {
        var address = SourceKey(source);
        lock (_perSource)
        {
            int from = _perSource.GetValueOrDefault(address);
            if (_connections >= _options.MaxConnections || from >= _options.MaxPerSource)
            {
                Interlocked.Increment(ref _refusedByLimits);
                return false;
            }
            _connections++;
            _perSource[address] = from + 1;
            return true;
        }
    }

    private void Release(IPAddress? source)
    {
        var address = SourceKey(source);
        lock (_perSource)
        {
            _connections--;
            if (_perSource.TryGetValue(address, out int n) && n > 1) _perSource[address] = n - 1;
            else _perSource.Remove(address);
        }
    }
}
