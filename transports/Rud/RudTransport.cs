using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using System.Threading.Channels;
using Microsoft.Extensions.Logging;
using Newtonsoft.Json.Linq;
using PtHost.Contract;
using PtHost.Transports.Plain;

namespace PtHost.Transports.Rud;

/// <summary>
/// The rud transport (spec/rud.md §12): the server process serves RUD streams on one UDP socket;
/// the client process keeps one connection per server and opens one stream per session, with
/// plain's preamble inside each stream.
/// </summary>
public sealed class RudTransport : IPluggableTransport
{
    public string Name => "rud";

    public IClientFactory CreateClientFactory(TransportEnvironment context) => new RudClient(context, RudClientOptions.Parse(context.Options));

    public IServerFactory CreateServerFactory(TransportEnvironment context) => new RudServer(context, RudServerOptions.Parse(context.Options));
}

internal static class RudOptionText
{
    public static byte[] Key(JToken value, string name)
    {
        if (value.Type != JTokenType.String) throw new TransportOptionsException($"rud option \"{name}\" must be a base64 string of 32 bytes");
        try
        {
            var k = Convert.FromBase64String((string)value!);
            return k.Length == X25519.KeySize ? k : throw new TransportOptionsException($"rud option \"{name}\" must be 32 bytes (base64), not {k.Length}");
        }
        catch (FormatException) { throw new TransportOptionsException($"rud option \"{name}\" is not base64"); }
    }

    public static TimeSpan Seconds(JToken value, string name) =>
        value.Type is JTokenType.Integer or JTokenType.Float && (double)value! is > 0 and <= 3600 and var s
            ? TimeSpan.FromSeconds(s)
            : throw new TransportOptionsException($"rud option \"{name}\" must be a number of seconds above 0, at most 3600");

    /// <summary>The option's spelling of <paramref name="c"/>, for logs.</summary>
    public static string CongestionName(CongestionControl c) => c == CongestionControl.NewReno ? "newreno" : "bbr";

    /// <summary>The "congestion" option (§12): "bbr" (the default) or "newreno".</summary>
    public static CongestionControl Congestion(JToken value) =>
        value.Type == JTokenType.String ? (string)value! switch
        {
            "bbr" => CongestionControl.Bbr,
            "newreno" => CongestionControl.NewReno,
            _ => throw new TransportOptionsException($"rud option \"congestion\" must be \"bbr\" or \"newreno\", not \"{(string)value!}\""),
        } : throw new TransportOptionsException("rud option \"congestion\" must be the string \"bbr\" or \"newreno\"");
}

/// <summary>Client options (§12): the server's public key, optionally its address, the congestion control.</summary>
internal sealed record RudClientOptions(Destination? ServerAddress, byte[] ServerKey, TimeSpan HandshakeTimeout, CongestionControl Congestion = CongestionControl.Bbr)
{
    public static RudClientOptions Parse(JToken? options)
    {
        if (options is not JObject o) throw new TransportOptionsException("rud client options must be an object with \"serverKey\" (pthost generate-config rud)");
        Destination? server = null;
        byte[]? key = null;
        var timeout = TimeSpan.FromSeconds(10);
        var congestion = CongestionControl.Bbr;
        foreach (var p in o.Properties())
        {
            switch (p.Name)
            {
                case "serverAddress":
                    if (p.Value.Type != JTokenType.String || !Destination.TryParse((string)p.Value!, out server) || server.Port == 0)
                        throw new TransportOptionsException("rud option \"serverAddress\" must be \"host:port\"");
                    break;
                case "serverKey": key = RudOptionText.Key(p.Value, "serverKey"); break;
                case "handshakeTimeout": timeout = RudOptionText.Seconds(p.Value, "handshakeTimeout"); break;
                case "congestion": congestion = RudOptionText.Congestion(p.Value); break;
                default: throw new TransportOptionsException($"rud has no client option \"{p.Name}\" (known: serverAddress, serverKey, handshakeTimeout, congestion)");
            }
        }
        if (key is null) throw new TransportOptionsException("rud client option \"serverKey\" is required (pthost generate-config rud)");
        Span<byte> probe = stackalloc byte[X25519.KeySize];
        if (!X25519.Agree(X25519.GeneratePrivateKey(), key, probe))
            throw new TransportOptionsException("rud option \"serverKey\" is not a usable X25519 public key (a low-order point)");
        return new(server, key, timeout, congestion);
    }
}

/// <summary>Server options (§12).</summary>
internal sealed record RudServerOptions(byte[]? Key, ChallengePolicy Challenge, bool FirstContact, CongestionControl Congestion = CongestionControl.Bbr)
{
    public static RudServerOptions Parse(JToken? options)
    {
        if (options is null || options.Type == JTokenType.Null) return new(null, ChallengePolicy.Load, false);
        if (options is not JObject o) throw new TransportOptionsException("rud server options must be an object");
        byte[]? key = null;
        var challenge = ChallengePolicy.Load;
        bool first = false;
        var congestion = CongestionControl.Bbr;
        foreach (var p in o.Properties())
        {
            switch (p.Name)
            {
                case "key": key = RudOptionText.Key(p.Value, "key"); break;
                case "challenge":
                    challenge = p.Value.Type == JTokenType.String ? (string)p.Value! switch
                    {
                        "load" => ChallengePolicy.Load,
                        "always" => ChallengePolicy.Always,
                        "never" => ChallengePolicy.Never,
                        _ => throw new TransportOptionsException("rud option \"challenge\" must be \"load\", \"always\" or \"never\""),
                    } : throw new TransportOptionsException("rud option \"challenge\" must be \"load\", \"always\" or \"never\"");
                    break;
                case "firstContact":
                    first = p.Value.Type == JTokenType.Boolean ? (bool)p.Value : throw new TransportOptionsException("rud option \"firstContact\" must be true or false");
                    break;
                case "congestion": congestion = RudOptionText.Congestion(p.Value); break;
                default: throw new TransportOptionsException($"rud has no server option \"{p.Name}\" (known: key, challenge, firstContact, congestion)");
            }
        }
        return new(key, challenge, first, congestion);
    }
}

internal sealed record RudSettings(Destination? Destination);

/// <summary>
/// The client side: one connection per server (re-made when it closes), one stream per session; one
/// datagram stream per UDP session (spec/rud.md §12.1).
/// </summary>
internal sealed class RudClient : IClientFactory, IDatagramClientFactory, IDatagramStreamCarrier
{
    private static readonly TimeSpan PreambleTimeout = TimeSpan.FromSeconds(10);
    private readonly TransportEnvironment _context;
    private readonly RudClientOptions _options;
    private readonly ILogger _log;
    private readonly ConcurrentDictionary<string, ServerLink> _links = new(StringComparer.Ordinal);
    private readonly object _endpointGate = new();
    private RudEndpoint? _v4, _v6;

    public RudClient(TransportEnvironment context, RudClientOptions options)
    {
        _context = context;
        _options = options;
        _log = context.LoggerFactory.CreateLogger("PtHost.Transports.Rud");
    }

    /// <summary>The connections to one server: as many as the open streams need (256 each, spec/rud.md §12).</summary>
    private sealed class ServerLink
    {
        public readonly SemaphoreSlim Gate = new(1, 1);
        public readonly List<RudConnection> Connections = [];
    }

    public object? ParseSettings(ConnectionSettings settings)
    {
        settings.RejectUnknownKeys("destination");
        string? d = settings.GetString("destination");
        if (d is null) return new RudSettings(null);
        return Destination.TryParse(d, out var dest) && dest.Port != 0 ? new RudSettings(dest) : throw new SettingsException("destination", "must be \"host:port\"");
    }

    public async ValueTask<Stream> ConnectAsync(ConnectRequest request, CancellationToken cancellationToken)
    {
        var far = (request.Settings as RudSettings)?.Destination;
        Destination server;
        if (_options.ServerAddress is { } configured)
        {
            server = configured;
            if (far is null && !request.Destination.IsUnspecified) far = request.Destination;
        }
        else
        {
            // Tor bridge style: the SOCKS destination is the server.
            server = request.Destination;
            if (server.IsUnspecified) throw new TransportConnectException(ConnectFailure.HostUnreachable, "no server address: the request names none and options give none");
        }
        var stream = await OpenStreamAsync(server, cancellationToken).ConfigureAwait(false);
        try
        {
            using var preamble = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            preamble.CancelAfter(PreambleTimeout);
            await PlainWire.RequestAsync(stream, far, $"rud server {server}", preamble.Token, request.Kind).ConfigureAwait(false);
            return stream;
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            stream.Abort();
            throw new TransportConnectException(ConnectFailure.TimedOut, $"rud server {server} did not answer the stream's preamble in time");
        }
        catch (IOException e)
        {
            stream.Abort();
            throw new TransportConnectException(ConnectFailure.General, $"rud server {server}: {e.Message}", e);
        }
        catch
        {
            stream.Abort();
            throw;
        }
    }

    /// <summary>
    /// A UDP association (spec/rud.md §12.1): one datagram stream on a connection to the server,
    /// chosen as for a stream; OPEN until RELAYED.
    /// </summary>
    public async ValueTask<IDatagramSession> OpenDatagramSessionAsync(ConnectRequest request, CancellationToken cancellationToken)
    {
        var server = _options.ServerAddress ?? (request.Destination.IsUnspecified
            ? throw new TransportConnectException(ConnectFailure.HostUnreachable, "no server address for a UDP association: rud needs the \"serverAddress\" option")
            : request.Destination);
        var (conn, channel) = await OpenOnLinkAsync(server, c =>
        {
            try { return new DatagramOpen(c, c.OpenDatagramChannel()); }
            catch (IOException)
            {
                // Closed, or its 256 datagram streams are used up (they are never closed on the wire,
                // §12.1): a connection with nothing else left on it is closed here.
                if (!c.IsClosed && c.OpenStreams == 0 && _liveDatagramSessions.GetValueOrDefault(c) == 0)
                {
                    _log.LogInformation("rud: closing a connection to {Server}: its 256 datagram streams are used and nothing is open on it", server);
                    c.Close("every datagram stream used");
                }
                return null;
            }
        }, cancellationToken).ConfigureAwait(false);
        _liveDatagramSessions.AddOrUpdate(conn, 1, static (_, n) => n + 1);
        RudDatagramSession session;
        try
        {
            session = await RudDatagramSession.OpenAsync(channel, server.ToString(), _log, () => SessionEnded(conn), cancellationToken).ConfigureAwait(false);
        }
        catch
        {
            SessionEnded(conn);
            throw;
        }
        _log.LogInformation("rud: UDP association on datagram stream {Stream} to {Server}, relayed address {Relayed}", session.StreamId, server, session.RelayedAddress);
        return session;
    }

    private sealed record DatagramOpen(RudConnection Connection, RudDatagramChannel Channel);

    /// <summary>UDP sessions still open per connection: an exhausted connection is closed only when it has none.</summary>
    private readonly ConcurrentDictionary<RudConnection, int> _liveDatagramSessions = new();

    private void SessionEnded(RudConnection conn)
    {
        while (_liveDatagramSessions.TryGetValue(conn, out int n))
        {
            if (n <= 1 ? _liveDatagramSessions.TryRemove(new KeyValuePair<RudConnection, int>(conn, n)) : _liveDatagramSessions.TryUpdate(conn, n - 1, n)) return;
        }
    }

    /// <summary>
    /// A new stream on a live connection to <paramref name="server"/> that has room for it; when every
    /// connection is closed or holds its 256 streams, a new connection is made (one handshake at a time).
    /// </summary>
    private Task<RudStream> OpenStreamAsync(Destination server, CancellationToken ct) =>
        OpenOnLinkAsync(server, static c => c.TryOpenStream(), ct);

    /// <summary>
    /// <paramref name="tryOpen"/> on the first live connection to <paramref name="server"/> where it
    /// succeeds; when none does, on a new connection (one handshake at a time per server).
    /// </summary>
    private async Task<T> OpenOnLinkAsync<T>(Destination server, Func<RudConnection, T?> tryOpen, CancellationToken ct) where T : class
    {
        var link = _links.GetOrAdd(server.ToString(), _ => new ServerLink());
        await link.Gate.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            link.Connections.RemoveAll(c => c.IsClosed);
            foreach (var c in link.Connections)
                if (tryOpen(c) is { } s) return s;
            IPAddress address = server.Address ?? await ResolveAsync(server, ct).ConfigureAwait(false);
            var endpoint = EndpointFor(address.AddressFamily);
            RudConnection conn;
            try
            {
                conn = await endpoint.ConnectAsync(new IPEndPoint(address, server.Port), _options.ServerKey, ct).ConfigureAwait(false);
            }
            catch (TimeoutException e)
            {
                throw new TransportConnectException(ConnectFailure.TimedOut, $"rud server {server}: no handshake within {_options.HandshakeTimeout.TotalSeconds:0.#} s (wrong serverKey, or the server is unreachable)", e);
            }
            link.Connections.Add(conn);
            _log.LogInformation("rud: connected to {Server} ({Mode} exchange, connection {Count}, congestion {Congestion})", server, conn.Mode, link.Connections.Count, RudOptionText.CongestionName(endpoint.Options.CongestionControl));
            return tryOpen(conn) ?? throw new TransportConnectException(ConnectFailure.General, $"rud server {server}: the new connection {(conn.IsClosed ? "closed: " + conn.CloseReason : "refused a stream")}");
        }
        finally { link.Gate.Release(); }
    }

    private static async Task<IPAddress> ResolveAsync(Destination server, CancellationToken ct)
    {
        IPAddress[] addresses;
        try { addresses = await Dns.GetHostAddressesAsync(server.Host, ct).ConfigureAwait(false); }
        catch (SocketException e) { throw new TransportConnectException(ConnectFailure.HostUnreachable, $"rud server {server.Host} does not resolve: {e.Message}", e); }
        return addresses.FirstOrDefault(a => a.AddressFamily == AddressFamily.InterNetwork) ?? addresses.FirstOrDefault()
            ?? throw new TransportConnectException(ConnectFailure.HostUnreachable, $"rud server {server.Host} has no address");
    }

    private RudEndpoint EndpointFor(AddressFamily family)
    {
        lock (_endpointGate)
        {
            var options = new RudEndpointOptions { HandshakeTimeout = _options.HandshakeTimeout, CongestionControl = _options.Congestion };
            var log = _context.LoggerFactory.CreateLogger("PtHost.Transports.Rud");
            if (family == AddressFamily.InterNetworkV6) return _v6 ??= RudEndpoint.Bind(new IPEndPoint(IPAddress.IPv6Any, 0), options, log);
            return _v4 ??= RudEndpoint.Bind(new IPEndPoint(IPAddress.Any, 0), options, log);
        }
    }

    public TransportStats GetStats() => _context.Counters.Snapshot();

    public async ValueTask DisposeAsync()
    {
        if (_v4 is not null) await _v4.DisposeAsync().ConfigureAwait(false);
        if (_v6 is not null) await _v6.DisposeAsync().ConfigureAwait(false);
    }
}

/// <summary>The server factory: keys, and <see cref="RudServerManager"/>s.</summary>
internal sealed class RudServer(TransportEnvironment context, RudServerOptions options) : IServerFactory
{
    public const string KeyFile = "rud-key";

    /// <summary>A fresh static key pair: the private key for the server, the public key for clients (§12).</summary>
    public GeneratedConfiguration GenerateConfiguration()
    {
        var key = X25519.GeneratePrivateKey();
        var pub = new byte[X25519.KeySize];
        X25519.PublicKey(key, pub);
        return new(new JObject { ["serverKey"] = Convert.ToBase64String(pub) }, new JObject { ["key"] = Convert.ToBase64String(key) });
    }

    public ValueTask<IServerManager> ListenAsync(ServerBinding binding, CancellationToken cancellationToken) => Start(binding);

    public ValueTask<IServerManager> ProxyAsync(ServerBinding binding, CancellationToken cancellationToken) => Start(binding);

    private ValueTask<IServerManager> Start(ServerBinding binding)
    {
        var key = options.Key ?? LoadOrCreateStateKey();
        return ValueTask.FromResult<IServerManager>(new RudServerManager(context, options, key, binding));
    }

    /// <summary>The key kept in the state directory (mode 0600), created on first use (§12).</summary>
    private byte[] LoadOrCreateStateKey()
    {
        string path = Path.Combine(context.StateDirectory, KeyFile);
        if (File.Exists(path))
        {
            try
            {
                var k = Convert.FromBase64String(File.ReadAllText(path).Trim());
                if (k.Length == X25519.KeySize) return k;
            }
            catch (FormatException) { }
            throw new TransportOptionsException($"rud: {path} does not hold a base64 32-byte key");
        }
        var key = X25519.GeneratePrivateKey();
        Directory.CreateDirectory(context.StateDirectory);
        var fileOptions = new FileStreamOptions { Mode = FileMode.CreateNew, Access = FileAccess.Write };
        if (!OperatingSystem.IsWindows()) fileOptions.UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite;
        using (var w = new StreamWriter(path, fileOptions)) w.Write(Convert.ToBase64String(key));
        return key;
    }

    public ValueTask DisposeAsync() => ValueTask.CompletedTask;
}

/// <summary>A running rud server: accepts connections and serves every stream they open (§12).</summary>
internal sealed class RudServerManager : IServerManager
{
    private static readonly TimeSpan PreambleTimeout = TimeSpan.FromSeconds(10);
    private readonly TransportEnvironment _context;
    private readonly ServerBinding _binding;
    private readonly ILogger _log;
    private readonly RudEndpoint _endpoint;
    private readonly CancellationTokenSource _stopping = new();
    private readonly CancellationTokenSource _abort = new();
    private readonly Task _acceptLoop;
    private readonly ConcurrentDictionary<long, Task> _sessions = new();
    private static long s_ids;

    public RudServerManager(TransportEnvironment context, RudServerOptions options, byte[] key, ServerBinding binding)
    {
        _context = context;
        _binding = binding;
        _log = context.LoggerFactory.CreateLogger("PtHost.Transports.Rud");
        try
        {
            _endpoint = RudEndpoint.Bind(binding.BindAddress, new RudEndpointOptions
            {
                StaticPrivateKey = key, Challenge = options.Challenge, AllowFirstContact = options.FirstContact,
                CongestionControl = options.Congestion,
            }, _log);
        }
        catch (SocketException e)
        {
            throw new TransportOptionsException($"cannot listen on udp {binding.BindAddress}: {e.SocketErrorCode}", e);
        }
        LocalEndPoint = _endpoint.LocalEndPoint;
        Args = new Dictionary<string, string> { ["key"] = Convert.ToBase64String(_endpoint.StaticPublicKey!) };
        _acceptLoop = AcceptConnectionsAsync();
    }

    public IPEndPoint LocalEndPoint { get; }

    public IReadOnlyDictionary<string, string> Args { get; }

    public TransportStats GetStats() => _context.Counters.Snapshot();

    internal RudEndpoint Endpoint => _endpoint;

    private async Task AcceptConnectionsAsync()
    {
        try
        {
            while (true)
            {
                var conn = await _endpoint.AcceptConnectionAsync(_stopping.Token).ConfigureAwait(false);
                _log.LogInformation("rud: connection from {Remote} ({Mode} exchange, congestion {Congestion})", conn.RemoteEndPoint, conn.Mode, RudOptionText.CongestionName(_endpoint.Options.CongestionControl));
                _ = AcceptStreamsAsync(conn);
                _ = AcceptDatagramChannelsAsync(conn);
            }
        }
        catch (OperationCanceledException) { }
        catch (ChannelClosedException) { }
    }

    private async Task AcceptStreamsAsync(RudConnection conn)
    {
        try
        {
            while (true)
            {
                var stream = await conn.AcceptStreamAsync(_stopping.Token).ConfigureAwait(false);
                long id = Interlocked.Increment(ref s_ids);
                var task = ServeAsync(conn, stream, id);
                _sessions[id] = task;
                _ = task.ContinueWith(_ => _sessions.TryRemove(id, out Task? _), TaskScheduler.Default);
            }
        }
        catch (OperationCanceledException) { }
        catch (ChannelClosedException) { }
        catch (IOException) { }
    }

    /// <summary>Every datagram stream a client opens is one UDP association (§12.1).</summary>
    private async Task AcceptDatagramChannelsAsync(RudConnection conn)
    {
        try
        {
            while (true)
            {
                var channel = await conn.AcceptDatagramChannelAsync(_stopping.Token).ConfigureAwait(false);
                long id = Interlocked.Increment(ref s_ids);
                var association = new RudDatagramAssociation(channel, conn.RemoteEndPoint, _context, _binding, _log, id);
                var task = association.RunAsync(_abort.Token);
                _sessions[id] = task;
                _ = task.ContinueWith(_ => _sessions.TryRemove(id, out Task? _), TaskScheduler.Default);
            }
        }
        catch (OperationCanceledException) { }
        catch (ChannelClosedException) { }
        catch (IOException) { }
    }

    private async Task ServeAsync(RudConnection conn, RudStream stream, long id)
    {
        var remote = conn.RemoteEndPoint;
        Stream? onward = null;
        bool opened = false, failed = false;
        try
        {
            Destination? destination;
            SessionKind kind;
            using (var preamble = CancellationTokenSource.CreateLinkedTokenSource(_abort.Token))
            {
                preamble.CancelAfter(PreambleTimeout);
                try { (destination, kind) = await PlainWire.ReadPreambleAsync(stream, preamble.Token).ConfigureAwait(false); }
                catch (InvalidDataException)
                {
                    failed = true;
                    _context.Counters.SessionFailed();
                    _log.LogInformation("rud session {Id} from {Remote}: not a plain preamble; stream reset", id, remote);
                    stream.Abort(2);
                    return;
                }
                catch (FormatException e)
                {
                    failed = true;
                    _context.Counters.SessionFailed();
                    await stream.WriteAsync(new[] { (byte)ConnectFailure.AddressTypeNotSupported }, _abort.Token).ConfigureAwait(false);
                    stream.ShutdownWrite();
                    _log.LogInformation("rud session {Id} from {Remote}: {Error}", id, remote, e.Message);
                    return;
                }
            }
            try { onward = await _binding.Handler.OpenAsync(new InboundSession(remote, destination, id, kind), _abort.Token).ConfigureAwait(false); }
            catch (TransportConnectException e)
            {
                failed = true;
                _context.Counters.SessionFailed();
                _log.LogInformation("rud session {Id}: {Error}", id, e.Message);
                await stream.WriteAsync(new[] { (byte)e.Failure }, _abort.Token).ConfigureAwait(false);
                stream.ShutdownWrite();
                return;
            }
            await stream.WriteAsync(new byte[] { 0 }, _abort.Token).ConfigureAwait(false);
            opened = true;
            if (kind == SessionKind.Datagram)
                _log.LogInformation("rud session {Id} from {Remote}: a UDP association carried in a stream (spec/turn.md §5.2), not in a datagram stream", id, remote);
            _context.Counters.SessionOpened();
            await _binding.Handler.RelayAsync(stream, onward, _abort.Token).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or SocketException or OperationCanceledException or EndOfStreamException or ObjectDisposedException)
        {
            if (!opened && !failed) _context.Counters.SessionFailed();
            _log.LogDebug("rud session {Id} ended: {Error}", id, e.Message);
        }
        finally
        {
            if (opened) _context.Counters.SessionClosed();
            if (onward is not null) await onward.DisposeAsync().ConfigureAwait(false);
            await stream.DisposeAsync().ConfigureAwait(false);
        }
    }

    public async Task StopAsync(CancellationToken cancellationToken)
    {
        if (!_stopping.IsCancellationRequested) _stopping.Cancel();
        await _acceptLoop.ConfigureAwait(false);
        try { await Task.WhenAll(_sessions.Values).WaitAsync(cancellationToken).ConfigureAwait(false); }
        catch (OperationCanceledException) { }
    }

    public async ValueTask DisposeAsync()
    {
        if (!_stopping.IsCancellationRequested) _stopping.Cancel();
        _abort.Cancel();
        await _acceptLoop.ConfigureAwait(false);
        try { await Task.WhenAll(_sessions.Values).WaitAsync(TimeSpan.FromSeconds(5)).ConfigureAwait(false); }
        catch (Exception) { }
        await _endpoint.DisposeAsync().ConfigureAwait(false);
        _stopping.Dispose();
        _abort.Dispose();
    }
}
