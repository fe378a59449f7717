using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using Newtonsoft.Json.Linq;
using PtHost.Contract;
using PtHost.Net;
using PtHost.Net.Udp;

namespace PtHost.Transports.Asport;

/// <summary>
/// Client process: TCP to the announced public address, the session preamble, raw bytes; TURN allocations
/// over UDP to the public port when it is bound, else carried in a TCP session (spec/asport.md §6.2).
/// </summary>
internal sealed class AsportClient : IClientFactory, IDatagramClientFactory, IStreamCarrier
{
    /// <summary>The latest announcement; <see cref="Gone"/> fires when a different address replaces it.</summary>
    private sealed record Announcement(Destination Address, bool Udp, CancellationTokenSource Gone);

    private readonly TransportEnvironment _context;
    private readonly AsportClientOptions _options;
    private readonly ILogger _log;
    private readonly CancellationTokenSource _stop = new();
    private Announcement? _announced;

    public AsportClient(TransportEnvironment context, AsportClientOptions options)
    {
        _context = context;
        _options = options;
        _log = context.LoggerFactory.CreateLogger("PtHost.Transports.Asport");
        _ = FollowAnnouncementsAsync(_stop.Token);
    }

    public object? ParseSettings(ConnectionSettings settings)
    {
        settings.RejectUnknownKeys("destination");
        string? d = settings.GetString("destination");
        if (d is null) return null;
        return Destination.TryParse(d, out var dest) && dest.Port != 0 ? dest : throw new SettingsException("destination", "must be \"host:port\"");
    }

    /// <summary>The latest "asport.address" SMESSAGE wins over the configured address (the public port changes when the server re-registers).</summary>
    private async Task FollowAnnouncementsAsync(CancellationToken ct)
    {
        try
        {
            await foreach (var s in _context.Signals.Incoming.ReadAllAsync(ct).ConfigureAwait(false))
            {
                if (s.Kind != AsportTransport.AddressSignal) continue;
                if (s.Body?["address"] is { Type: JTokenType.String } a && Destination.TryParse((string)a!, out var addr) && addr.Port != 0)
                {
                    var udp = s.Body["udp"] is { Type: JTokenType.Boolean } u && (bool)u!;
                    var previous = Volatile.Read(ref _announced);
                    var same = previous is not null && previous.Address.ToString() == addr.ToString();
                    Volatile.Write(ref _announced, new Announcement(addr, udp, same ? previous!.Gone : new CancellationTokenSource()));
                    // UDP associations sent to the old public port cannot reach the server any more.
                    if (!same && previous is not null) previous.Gone.Cancel();
                    _log.LogInformation("asport: server address {Address} learned from SMESSAGE (UDP {Udp})", addr, udp ? "bound" : "not bound");
                }
            }
        }
        catch (OperationCanceledException) { }
        catch (System.Threading.Channels.ChannelClosedException) { }
    }

    public async ValueTask<Stream> ConnectAsync(ConnectRequest request, CancellationToken cancellationToken)
    {
        var far = request.Settings as Destination;
        Destination server;
        if (Volatile.Read(ref _announced) is { } announced) server = announced.Address;
        else if (_options.ServerAddress is { } configured) server = configured;
        else
        {
            server = request.Destination;
            if (server.IsUnspecified) throw new TransportConnectException(ConnectFailure.HostUnreachable, "no asport server address: none configured, none announced, none in the request");
            return await OpenAsync(server, far, request.Kind, cancellationToken).ConfigureAwait(false);
        }
        if (far is null && !request.Destination.IsUnspecified) far = request.Destination;
        return await OpenAsync(server, far, request.Kind, cancellationToken).ConfigureAwait(false);
    }

    private Task<Stream> OpenAsync(Destination server, Destination? far, SessionKind kind, CancellationToken ct) =>
        SessionPreamble.ConnectAsync(_context.Dialer, server, far, kind, $"asport address {server}", ct);

    private readonly CancellationTokenSource _configuredGone = new();
    private int _fallbackLogged;

    /// <summary>
    /// A TURN allocation (spec/asport.md §6.2): UDP to the public port when it is bound (announced with
    /// "udp": true, or the "udp" option for a configured address) and no upstream proxy is configured;
    /// otherwise the association is carried in a TCP session to the public TCP port (spec/turn.md §5.2).
    /// </summary>
    public async ValueTask<IAssociation> OpenAssociationAsync(ConnectRequest request, CancellationToken cancellationToken)
    {
        Destination server;
        bool udp;
        CancellationToken gone;
        if (Volatile.Read(ref _announced) is { } announced) (server, udp, gone) = (announced.Address, announced.Udp, announced.Gone.Token);
        else if (_options.ServerAddress is { } configured) (server, udp, gone) = (configured, _options.Udp, _configuredGone.Token);
        else throw new TransportConnectException(ConnectFailure.HostUnreachable, "no asport server address: none configured, none announced");
        if (!udp || _context.Dialer is ProxyDialer)
        {
            if (Interlocked.Exchange(ref _fallbackLogged, 1) == 0)
                _log.LogInformation("asport: UDP associations are carried in TCP sessions to {Address} ({Why})", server,
                    udp ? "an upstream proxy is configured" : "the public port has no UDP bound");
            var stream = await ConnectAsync(request, cancellationToken).ConfigureAwait(false);
            return await StreamAssociation.StartAsync(stream, cancellationToken).ConfigureAwait(false);
        }
        IPAddress address;
        if (server.Address is { } literal) address = literal;
        else
        {
            try
            {
                var found = await Dns.GetHostAddressesAsync(server.Host, cancellationToken).ConfigureAwait(false);
                address = found.Length > 0 ? found[0] : throw new TransportConnectException(ConnectFailure.HostUnreachable, $"{server.Host} has no addresses");
            }
            catch (SocketException e)
            {
                throw new TransportConnectException(ConnectFailure.HostUnreachable, $"cannot resolve {server.Host}: {e.SocketErrorCode}", e);
            }
        }
        var bind = (_context.Dialer as DirectDialer)?.Bind.For(address);
        return await AsportAssociation.OpenAsync(new IPEndPoint(address, server.Port), bind, gone, _log, cancellationToken).ConfigureAwait(false);
    }

    public ValueTask DisposeAsync()
    {
        _stop.Cancel();
        _stop.Dispose();
        return ValueTask.CompletedTask;
    }
}

/// <summary>
/// Client process: one TURN allocation = one UDP socket connected to the announced public address
/// (spec/asport.md §6.2); the association's life is <see cref="DatagramCarrierAssociation"/>'s, and a
/// change of the announced address ends it too.
/// </summary>
internal sealed class AsportAssociation : DatagramCarrierAssociation
{
    /// <summary>Socket buffers: room for bursts while the TURN server is busy.</summary>
    public const int SocketBuffer = 1 << 20;

    private readonly Socket _socket;
    private CancellationTokenRegistration _addressGone;
    private bool _refusedSeen;

    private AsportAssociation(Socket socket, ILogger log) : base(log, 65536) => _socket = socket;

    public override int MaxDatagramSize => AsportUdpFrames.MaxPayload;

    /// <summary>The public UDP address this session sends to.</summary>
    public IPEndPoint Server => (IPEndPoint)_socket.RemoteEndPoint!;

    /// <summary>
    /// Opens an association (OPEN until RELAYED or CLOSE, within <see cref="DatagramCarrierAssociation.OpenTimeout"/>).
    /// <paramref name="addressGone"/> ends the session when the announced address changes.
    /// </summary>
    public static async Task<AsportAssociation> OpenAsync(IPEndPoint server, IPAddress? bind, CancellationToken addressGone, ILogger log, CancellationToken cancellationToken)
    {
        var socket = new Socket(server.AddressFamily, SocketType.Dgram, ProtocolType.Udp);
        AsportAssociation? session = null;
        try
        {
            socket.ReceiveBufferSize = SocketBuffer;
            socket.SendBufferSize = SocketBuffer;
            if (bind is not null) socket.Bind(new IPEndPoint(bind, 0));
            socket.Connect(server);
            socket.Blocking = false; // a full send buffer drops the datagram (UDP semantics), it never blocks the TURN server
            session = new AsportAssociation(socket, log);
            bool? opened;
            try { opened = await session.ExchangeOpenAsync(cancellationToken).ConfigureAwait(false); }
            catch (OperationCanceledException e) when (!cancellationToken.IsCancellationRequested)
            {
                throw new TransportConnectException(ConnectFailure.TimedOut,
                    $"no answer over UDP from {server} within {OpenTimeout.TotalSeconds:0} s" + (session._refusedSeen ? " (ICMP port unreachable: is UDP bound there?)" : ""), e);
            }
            if (opened != true) throw new TransportConnectException(ConnectFailure.General, $"the server process refused the UDP association (CLOSE from {server})");
            session._addressGone = addressGone.Register(static s => ((AsportAssociation)s!).Terminate("the announced address changed"), session);
            return session;
        }
        catch (SocketException e)
        {
            if (session is not null) await session.DisposeAsync().ConfigureAwait(false);
            else socket.Dispose();
            throw new TransportConnectException(ConnectFailure.General, $"UDP socket towards {server}: {e.SocketErrorCode}", e);
        }
        catch
        {
            if (session is not null) await session.DisposeAsync().ConfigureAwait(false);
            else socket.Dispose();
            throw;
        }
    }

    private static bool IsTransient(SocketException e) =>
        e.SocketErrorCode is SocketError.ConnectionRefused or SocketError.ConnectionReset or SocketError.HostUnreachable or SocketError.NetworkUnreachable or SocketError.MessageSize;

    protected override bool SendDatagram(ReadOnlySpan<byte> frame)
    {
        try
        {
            _socket.Send(frame, SocketFlags.None, out var error);
            return error == SocketError.Success;
        }
        catch (ObjectDisposedException) { return false; }
    }

    protected override async ValueTask<int> ReceiveDatagramAsync(Memory<byte> into, CancellationToken cancellationToken)
    {
        try { return await _socket.ReceiveAsync(into, SocketFlags.None, cancellationToken).ConfigureAwait(false); }
        catch (SocketException e) when (IsTransient(e))
        {
            _refusedSeen |= e.SocketErrorCode == SocketError.ConnectionRefused;
            return 0;
        }
        catch (Exception e) when (e is ObjectDisposedException or SocketException) { return -1; }
    }

    protected override void LogEnded(string why) =>
        Log.LogInformation("asport UDP association via {Server} ended: {Why}", _socket.RemoteEndPoint, why);

    protected override void OnClosed()
    {
        _socket.Dispose();
        var (_, _, tooLarge, notSent, malformed) = Counts;
        if (tooLarge + notSent + malformed > 0)
            Log.LogInformation("asport UDP association: {Dropped} datagrams not sent (too large, socket buffer full or ICMP error), {Malformed} malformed datagrams dropped", tooLarge + notSent, malformed);
    }

    public override async ValueTask DisposeAsync()
    {
        await base.DisposeAsync().ConfigureAwait(false);
        await _addressGone.DisposeAsync().ConfigureAwait(false);
    }
}
