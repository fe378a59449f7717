using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using System.Threading.Channels;
using Microsoft.Extensions.Logging;
using PtHost.Contract;
using PtHost.Net.Udp;

namespace PtHost.Transports.Rud;

internal sealed record RudSettings(Destination? Destination);

/// <summary>
/// The client side: one connection per server (re-made when it closes), one stream per session; one
/// datagram stream per UDP session (spec/rud.md §12.1).
/// </summary>
internal sealed class RudClient : IClientFactory, IDatagramClientFactory, IStreamCarrier
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
            await SessionPreamble.RequestAsync(stream, far, $"rud server {server}", preamble.Token, request.Kind).ConfigureAwait(false);
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
    public async ValueTask<IAssociation> OpenAssociationAsync(ConnectRequest request, CancellationToken cancellationToken)
    {
        var server = _options.ServerAddress ?? (request.Destination.IsUnspecified
            ? throw new TransportConnectException(ConnectFailure.HostUnreachable, "no server address for a UDP association: rud needs the \"serverAddress\" option")
            : request.Destination);
        var (conn, channel) = await OpenOnLinkAsync(server, c =>
        {
            try { return new DatagramOpen(c, c.OpenDatagramStream()); }
            catch (IOException)
            {
                // Closed, or its 256 datagram streams are used up (they are never closed on the wire,
                // §12.1): a connection with nothing else left on it is closed here.
                if (!c.IsClosed && c.OpenStreams == 0 && _liveAssociations.GetValueOrDefault(c) == 0)
                {
                    _log.DatagramStreamsUsed(server);
                    c.Close("every datagram stream used");
                }
                return null;
            }
        }, cancellationToken).ConfigureAwait(false);
        _liveAssociations.AddOrUpdate(conn, 1, static (_, n) => n + 1);
        RudAssociation session;
        try
        {
            session = await RudAssociation.OpenAsync(channel, server.ToString(), _log, () => SessionEnded(conn), cancellationToken).ConfigureAwait(false);
        }
        catch
        {
            SessionEnded(conn);
            throw;
        }
        _log.AssociationOpened(session.StreamId, server, session.RelayedAddress);
        return session;
    }

    private sealed record DatagramOpen(RudConnection Connection, RudDatagramStream Channel);

    /// <summary>UDP sessions still open per connection: an exhausted connection is closed only when it has none.</summary>
    private readonly ConcurrentDictionary<RudConnection, int> _liveAssociations = new();

    private void SessionEnded(RudConnection conn)
    {
        while (_liveAssociations.TryGetValue(conn, out int n))
        {
            if (n <= 1 ? _liveAssociations.TryRemove(new KeyValuePair<RudConnection, int>(conn, n)) : _liveAssociations.TryUpdate(conn, n - 1, n)) return;
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
                throw new TransportConnectException(ConnectFailure.TimedOut, $"rud server {server}: no handshake within {_options.HandshakeTimeout.TotalSeconds:0.#} s (wrong serverKey, a clientKey the server does not authorize, or the server is unreachable)", e);
            }
            link.Connections.Add(conn);
            _log.ConnectedTo(server, conn.Mode, link.Connections.Count, RudOptionText.CongestionName(endpoint.Options.CongestionControl));
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
            var options = new RudEndpointOptions { HandshakeTimeout = _options.HandshakeTimeout, CongestionControl = _options.Congestion, InitiatorStaticPrivateKey = _options.ClientKey };
            var log = _context.LoggerFactory.CreateLogger("PtHost.Transports.Rud");
            if (family == AddressFamily.InterNetworkV6) return _v6 ??= RudEndpoint.Bind(new IPEndPoint(IPAddress.IPv6Any, 0), options, log);
            return _v4 ??= RudEndpoint.Bind(new IPEndPoint(IPAddress.Any, 0), options, log);
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (_v4 is not null) await _v4.DisposeAsync().ConfigureAwait(false);
        if (_v6 is not null) await _v6.DisposeAsync().ConfigureAwait(false);
    }
}

/// <summary>
/// Client process: one TURN allocation = one RUD datagram stream on a connection to the server
/// (spec/rud.md §12.1); the association's life is <see cref="DatagramCarrierAssociation"/>'s,
/// and the connection's end ends it too.
/// </summary>
internal sealed class RudAssociation : DatagramCarrierAssociation
{
    private readonly RudDatagramStream _channel;
    private readonly string _server;
    private readonly Action? _onEnded;
    private int _endedCalled;

    private RudAssociation(RudDatagramStream channel, string server, ILogger log, Action? ended) : base(log, RudUdpFrames.MaxFrame)
    {
        _onEnded = ended;
        _channel = channel;
        _server = server;
    }

    public override int MaxDatagramSize => RudUdpFrames.MaxPayload;

    /// <summary>The datagram stream's id (spec/rud.md §8.1).</summary>
    public ulong StreamId => _channel.Id;

    /// <summary>Opens an association on <paramref name="channel"/> (OPEN until RELAYED or CLOSE, within <see cref="DatagramCarrierAssociation.OpenTimeout"/>).</summary>
    public static async Task<RudAssociation> OpenAsync(RudDatagramStream channel, string server, ILogger log, Action? ended, CancellationToken cancellationToken)
    {
        var session = new RudAssociation(channel, server, log, ended);
        try
        {
            bool? opened;
            try { opened = await session.ExchangeOpenAsync(cancellationToken).ConfigureAwait(false); }
            catch (OperationCanceledException e) when (!cancellationToken.IsCancellationRequested)
            {
                throw new TransportConnectException(ConnectFailure.TimedOut, $"rud server {server}: no answer on datagram stream {channel.Id} within {OpenTimeout.TotalSeconds:0} s", e);
            }
            if (opened is null) throw new TransportConnectException(ConnectFailure.General, $"rud server {server}: the connection closed while opening a UDP association");
            if (opened == false) throw new TransportConnectException(ConnectFailure.General, $"rud server {server} refused the UDP association (CLOSE on datagram stream {channel.Id})");
            return session;
        }
        catch
        {
            session._endedCalled = 1; // the caller accounts for a session that never opened
            await session.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    protected override bool SendDatagram(ReadOnlySpan<byte> frame) => _channel.TrySend(frame);

    protected override async ValueTask<int> ReceiveDatagramAsync(Memory<byte> into, CancellationToken cancellationToken)
    {
        try { return await _channel.ReceiveAsync(into, cancellationToken).ConfigureAwait(false); }
        catch (ChannelClosedException) { return -1; }
    }

    protected override void LogEnded(string why) =>
        Log.AssociationEnded(_channel.Id, _server, why);

    protected override void OnClosed()
    {
        _channel.Complete(null); // datagrams still arriving for this stream are dropped, not queued
        var (sent, received, tooLarge, notQueued, malformed) = Counts;
        Log.AssociationCounts(_channel.Id, _server, sent, received, tooLarge, notQueued, malformed);
        if (Interlocked.Exchange(ref _endedCalled, 1) == 0) _onEnded?.Invoke();
    }
}
