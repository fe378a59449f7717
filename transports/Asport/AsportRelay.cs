using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using Microsoft.Extensions.Logging;
using PtHost.Contract;
using PtHost.Quic;

namespace PtHost.Transports.Asport;

/// <summary>
/// The ASPORT server (spec/asport.md §4): a QUIC listener with ALPN "asport". Each client
/// authenticates with a ClientHello, gets a public TCP and/or UDP port, and receives every
/// inbound TCP connection as a bidirectional stream (Connect) and every UDP datagram as a Packet.
/// </summary>
public sealed class AsportRelay : IAsyncDisposable
{
    public const string Alpn = "asport";
    private readonly AsportRelayOptions _options;
    private readonly ILogger _log;
    private QuicEndpoint? _endpoint;
    private readonly CancellationTokenSource _stop = new();
    private Task? _acceptLoop;
    private readonly HashSet<Task> _sessions = [];
    private readonly HashSet<int> _portsInUse = [];

    public long Accepted, Authenticated, AuthFailures, Rejected, TcpForwarded, UdpForwarded, TcpDropped, UdpDropped;

    /// <summary>Time from a QUIC connection's acceptance to its authenticated ClientHello (spec/asport.md §5, metrics).</summary>
    public LatencyHistogram Handshake { get; } = new();

    /// <summary>spec/asport.md §5: the relay's metrics under instance <paramref name="id"/>.</summary>
    public void WriteMetrics(MetricsWriter m, string id)
    {
        int open;
        lock (_sessions) open = _sessions.Count;
        (string, string) t = ("transport", "asport"), r = ("role", "relay");
        m.Gauge("pthost_instance_info", "The process's instance id (constant 1).", 1, ("id", id), ("process", "relay asport"),
            ("version", typeof(AsportRelay).Assembly.GetName().Version?.ToString() ?? "0"));
        m.Counter("pthost_relay_accepted_total", "Connections accepted.", Interlocked.Read(ref Accepted), t);
        m.Gauge("pthost_sessions_open", "Sessions open now.", open, t, r);
        m.Counter("pthost_sessions_opened_total", "Sessions opened since start.", Interlocked.Read(ref Authenticated), t, r);
        m.Counter("pthost_sessions_failed_total", "Sessions that could not be set up, by reason.", Interlocked.Read(ref AuthFailures), t, r, ("reason", "auth"));
        m.Counter("pthost_sessions_failed_total", "Sessions that could not be set up, by reason.", Interlocked.Read(ref Rejected), t, r, ("reason", "refused"));
        m.Counter("pthost_relay_forwarded_total", "Forwarded TCP connections and UDP packets.", Interlocked.Read(ref TcpForwarded), t, ("kind", "tcp"));
        m.Counter("pthost_relay_forwarded_total", "Forwarded TCP connections and UDP packets.", Interlocked.Read(ref UdpForwarded), t, ("kind", "udp"));
        m.Counter("pthost_relay_dropped_total", "TCP connections and UDP packets dropped at the forwarding bounds.", Interlocked.Read(ref TcpDropped), t, ("kind", "tcp"));
        m.Counter("pthost_relay_dropped_total", "TCP connections and UDP packets dropped at the forwarding bounds.", Interlocked.Read(ref UdpDropped), t, ("kind", "udp"));
        m.Histogram("pthost_handshake_seconds", "Time from accepting a QUIC connection to its authenticated ClientHello.", Handshake, t, r);
    }

    public AsportRelay(AsportRelayOptions options, ILogger log)
    {
        _options = options;
        _log = log;
    }

    public IPEndPoint LocalEndPoint => _endpoint?.LocalEndPoint ?? throw new InvalidOperationException("not started");

    public void Start()
    {
        _endpoint = QuicEndpoint.CreateServer(_options.Listen, new QuicServerOptions
        {
            Certificate = _options.Certificate,
            ApplicationProtocols = [Alpn],
            IdleTimeout = _options.IdleTimeout,
            HandshakeTimeout = _options.HandshakeTimeout,
            MaxConnections = _options.MaxConnections,
            MaxConnectionsPerSource = _options.MaxConnectionsPerSource,
            SourcePrefixV6 = _options.SourcePrefixV6,
            Retry = _options.Retry,
        }, _log);
        _acceptLoop = Task.Run(AcceptLoopAsync);
    }

    private async Task AcceptLoopAsync()
    {
        while (!_stop.IsCancellationRequested)
        {
            QuicConnection conn;
            try { conn = await _endpoint!.AcceptAsync(_stop.Token).ConfigureAwait(false); }
            catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException) { return; }
            Interlocked.Increment(ref Accepted);
            var t = Task.Run(() => ServeAsync(conn));
            lock (_sessions) _sessions.Add(t);
            _ = t.ContinueWith(done => { lock (_sessions) _sessions.Remove(done); }, TaskScheduler.Default);
        }
    }

    private async Task ServeAsync(QuicConnection conn)
    {
        var peer = conn.RemoteEndPoint;
        try
        {
            var session = await AuthenticateAsync(conn).ConfigureAwait(false);
            if (session is null) return;
            await using (session.ConfigureAwait(false))
                await session.RunAsync(_stop.Token).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or OperationCanceledException or ObjectDisposedException or SocketException or TimeoutException)
        {
            _log.ConnectionEnded(peer, e.Message);
        }
        catch (Exception e)
        {
            _log.SessionFailed(e, peer);
        }
        finally
        {
            await conn.CloseAsync(0, "").WaitAsync(TimeSpan.FromSeconds(5)).ContinueWith(_ => { }, TaskScheduler.Default).ConfigureAwait(false);
        }
    }

    /// <summary>§4.1: ClientHello within the handshake timeout on the first (unidirectional) stream.</summary>
    private async Task<AsportRelaySession?> AuthenticateAsync(QuicConnection conn)
    {
        long started = System.Diagnostics.Stopwatch.GetTimestamp();
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(_stop.Token);
        timeout.CancelAfter(_options.HandshakeTimeout);
        ClientHello hello;
        try
        {
            var first = await conn.AcceptStreamAsync(timeout.Token).ConfigureAwait(false);
            if (!first.IsUnidirectional)
            {
                return Refuse(conn, "first stream is not unidirectional");
            }
            var cmd = await AsportPackets.ReadStreamCommandAsync(first, AsportWire.ClientHelloSize, timeout.Token).ConfigureAwait(false);
            if (cmd is not { } c) return Refuse(conn, "ClientHello too long");
            var ok = AsportWire.TryReadClientHello(c.Buffer.AsSpan(0, c.Length), out hello);
            System.Buffers.ArrayPool<byte>.Shared.Return(c.Buffer);
            if (!ok) return Refuse(conn, "malformed ClientHello");
        }
        catch (OperationCanceledException) when (!_stop.IsCancellationRequested)
        {
            return Refuse(conn, "no ClientHello within the handshake timeout");
        }

        // Token = exporter(32, label = UUID bytes, context = password) (§3.1), compared in constant time.
        var label = new byte[16];
        AsportWire.WriteUuid(label, hello.User);
        var known = _options.Users.TryGetValue(hello.User, out var password);
        var expected = await conn.ExportKeyingMaterialAsync(label, Encoding.UTF8.GetBytes(password ?? "\0unknown-user"), 32).ConfigureAwait(false);
        if (!CryptographicOperations.FixedTimeEquals(expected, hello.Token) || !known)
        {
            Interlocked.Increment(ref AuthFailures);
            _log.AuthenticationFailed(conn.RemoteEndPoint, hello.User);
            if (_options.ReplyAuthFailed) await ReplyAsync(conn, ServerHelloCode.AuthFailed, 0).ConfigureAwait(false);
            await conn.CloseAsync(1, "").ConfigureAwait(false);
            return null;
        }
        Interlocked.Increment(ref Authenticated);
        Handshake.ObserveSince(started);
        // §4.1 step 3 reads the validated peer address, never one a forged or unvalidated packet moved to (§2).
        if (conn.ValidatedRemoteEndPoint is not { } validated || !_options.AllowedNetworks.Allows(validated.Address, validated.Port))
            return await DenyAsync(conn, ServerHelloCode.NetworkDenied, "network not allowed").ConfigureAwait(false);

        var candidates = Candidates(hello.PortStart, hello.PortEnd);
        if (candidates.Count == 0)
            return await DenyAsync(conn, ServerHelloCode.PortDenied, $"ports {hello.PortStart}-{hello.PortEnd} not allowed").ConfigureAwait(false);
        foreach (var port in candidates.Take(256))
        {
            lock (_portsInUse) if (!_portsInUse.Add(port)) continue;
            var session = AsportRelaySession.TryBind(conn, hello, _options, port, _log, this);
            if (session is null)
            {
                lock (_portsInUse) _portsInUse.Remove(port);
                continue;
            }
            await ReplyAsync(conn, ServerHelloCode.Success, (ushort)session.Port).ConfigureAwait(false);
            _log.Bound(conn.RemoteEndPoint, hello.User, session.Port, hello.Mode);
            return session;
        }
        return await DenyAsync(conn, ServerHelloCode.BindFailed, "no port could be bound").ConfigureAwait(false);
    }

    internal void ReleasePort(int port)
    {
        lock (_portsInUse) _portsInUse.Remove(port);
    }

    private List<int> Candidates(ushort start, ushort end)
    {
        var list = new List<int>();
        foreach (var (a, b) in _options.AllowedPorts)
        {
            int lo = Math.Max(a, start), hi = Math.Min(b, end);
            for (var p = lo; p <= hi && list.Count < 4096; p++) if (p > 0) list.Add(p);
        }
        return list;
    }

    private AsportRelaySession? Refuse(QuicConnection conn, string why)
    {
        Interlocked.Increment(ref Rejected);
        _log.Closing(conn.RemoteEndPoint, why);
        _ = conn.CloseAsync(1, "");
        return null;
    }

    private async Task<AsportRelaySession?> DenyAsync(QuicConnection conn, ServerHelloCode code, string why)
    {
        Interlocked.Increment(ref Rejected);
        _log.Denied(conn.RemoteEndPoint, code, why);
        await ReplyAsync(conn, code, 0).ConfigureAwait(false);
        await conn.CloseAsync(0, "").ConfigureAwait(false);
        return null;
    }

    private static async Task ReplyAsync(QuicConnection conn, ServerHelloCode code, ushort port)
    {
        var buf = new byte[5];
        var n = AsportWire.WriteServerHello(buf, code, port);
        var s = await conn.OpenUnidirectionalStreamAsync().ConfigureAwait(false);
        await s.WriteAsync(buf.AsMemory(0, n)).ConfigureAwait(false);
        s.CompleteWrites();
        if (code != ServerHelloCode.Success)
        {
            // The reply must be acknowledged before the connection closes (a CONNECTION_CLOSE
            // does not deliver outstanding stream data).
            await s.Completed.WaitAsync(TimeSpan.FromSeconds(3)).ContinueWith(_ => { }, TaskScheduler.Default).ConfigureAwait(false);
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (_stop.IsCancellationRequested) return;
        _stop.Cancel();
        Task[] sessions;
        lock (_sessions) sessions = [.. _sessions];
        try { await Task.WhenAll(sessions).WaitAsync(TimeSpan.FromSeconds(10)).ConfigureAwait(false); } catch (Exception e) { _log.LogDebug(e, "asport sessions ended"); }
        if (_endpoint is not null) await _endpoint.DisposeAsync().ConfigureAwait(false);
        if (_acceptLoop is not null) await _acceptLoop.ConfigureAwait(false);
        _stop.Dispose();
    }

    public void LogStats() => _log.LogInformation(
        "asport: {Accepted} connections, {Auth} authenticated, {Fail} auth failures, {Rejected} rejected, {Tcp} TCP forwarded, {Udp} UDP packets forwarded, " +
        "{TcpDropped} TCP connections and {UdpDropped} UDP packets dropped at the forwarding bounds, {Refused} Initials refused at the connection caps, " +
        "{Retries} Retries sent, {BadTokens} bad Retry tokens",
        Accepted, Authenticated, AuthFailures, Rejected, TcpForwarded, UdpForwarded, TcpDropped, UdpDropped,
        _endpoint?.InitialsRefused ?? 0, _endpoint?.RetriesSent ?? 0, _endpoint?.RetryTokensRejected ?? 0);
}
