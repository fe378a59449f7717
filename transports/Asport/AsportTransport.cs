using System.Globalization;
using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using Newtonsoft.Json.Linq;
using PtHost.Contract;
using PtHost.Net;
using PtHost.Quic;
using PtHost.Transports.Plain;
using PtHost.Turn;

namespace PtHost.Transports.Asport;

/// <summary>
/// The asport transport (spec/asport.md §6). The server process is an ASPORT client: it
/// registers with an ASPORT server and announces the public address it was given (SMETHOD and
/// an "asport.address" SMESSAGE). The client process reaches that address over TCP; every
/// session starts with plain's preamble, so bound and free servers both work. TURN allocations
/// reach the public UDP port directly when the server bound one (spec/asport.md §6.2).
/// </summary>
public sealed class AsportTransport : IPluggableTransport
{
    public const string AddressSignal = "asport.address";

    public string Name => "asport";

    public IClientFactory CreateClientFactory(TransportEnvironment context) => new AsportTransportClient(context, AsportTransportClientOptions.Parse(context.Options));

    public IServerFactory CreateServerFactory(TransportEnvironment context)
    {
        // QUIC runs in the server process only: refuse early, with the reason, when it cannot.
        if (QuicLibrary.UnavailableReason is { } why) throw new TransportOptionsException(why);
        return new AsportTransportServer(context, AsportTransportServerOptions.Parse(context.Options));
    }
}

internal sealed record AsportTransportServerOptions(IPEndPoint Server, byte[] Pin, Guid User, string Password, ForwardMode Mode, ushort PortStart, ushort PortEnd)
{
    private const string Known = "server, pin, user, password, mode, ports";

    public static AsportTransportServerOptions Parse(JToken? options)
    {
        if (options is not JObject o) throw new TransportOptionsException("asport server options are required: {" + Known + "}");
        foreach (var p in o.Properties())
            if (!Known.Split(", ").Contains(p.Name)) throw new TransportOptionsException($"asport has no server option \"{p.Name}\" (known: {Known})");
        string Str(string key) => o[key] is JValue { Type: JTokenType.String } v ? (string)v! : throw new TransportOptionsException($"asport option \"{key}\" must be a string");
        if (!Destination.TryParse(Str("server"), out var server) || server.Address is null || server.Port == 0)
            throw new TransportOptionsException("asport option \"server\" must be \"ip:port\" of an ASPORT server");
        byte[] pin;
        try { pin = Convert.FromHexString(Str("pin")); }
        catch (FormatException) { pin = []; }
        if (pin.Length != 32) throw new TransportOptionsException("asport option \"pin\" must be the server certificate's SHA-256 as 64 hex digits");
        if (!Guid.TryParseExact(Str("user"), "D", out var user)) throw new TransportOptionsException("asport option \"user\" must be a UUID");
        var password = Str("password");
        if (password.Length == 0) throw new TransportOptionsException("asport option \"password\" must not be empty");
        var mode = ForwardMode.Tcp;
        if (o["mode"] is { } m)
        {
            if (!StrictJson.TryGetInt64(m, out var mv) || mv is < 0 or > 4) throw new TransportOptionsException("asport option \"mode\" must be 0..4 (0 TCP, 1 UDP native, 2 UDP QUIC, 3 TCP+UDP native, 4 TCP+UDP QUIC)");
            mode = (ForwardMode)mv;
        }
        (ushort, ushort) ports = (1, 65535);
        if (o["ports"] is not null && !AsportServerOptions.TryParseRange(Str("ports"), out ports))
            throw new TransportOptionsException("asport option \"ports\" must be \"N\" or \"N-M\"");
        return new(new IPEndPoint(server.Address, server.Port), pin, user, password, mode, ports.Item1, ports.Item2);
    }
}

/// <param name="ServerAddress">The public address when no SMESSAGE announced one.</param>
/// <param name="Udp">Whether <paramref name="ServerAddress"/>'s port has UDP bound (spec/asport.md §6.2).</param>
internal sealed record AsportTransportClientOptions(Destination? ServerAddress, bool Udp = false)
{
    public static AsportTransportClientOptions Parse(JToken? options)
    {
        if (options is null || options.Type == JTokenType.Null) return new((Destination?)null);
        if (options is not JObject o) throw new TransportOptionsException("asport client options must be an object");
        Destination? server = null;
        var udp = false;
        foreach (var p in o.Properties())
        {
            if (p.Name == "udp")
            {
                if (p.Value.Type != JTokenType.Boolean) throw new TransportOptionsException("asport option \"udp\" must be true or false");
                udp = (bool)p.Value!;
                continue;
            }
            if (p.Name != "serverAddress") throw new TransportOptionsException($"asport has no client option \"{p.Name}\" (known: serverAddress, udp)");
            if (p.Value.Type == JTokenType.Null) continue;
            if (p.Value.Type != JTokenType.String || !Destination.TryParse((string)p.Value!, out server) || server.Port == 0)
                throw new TransportOptionsException("asport option \"serverAddress\" must be \"host:port\"");
        }
        return new(server, udp);
    }
}

/// <summary>
/// Client process: TCP to the announced public address, plain's preamble, raw bytes; TURN allocations
/// over UDP to the public port when it is bound, else carried in a TCP session (spec/asport.md §6.2).
/// </summary>
internal sealed class AsportTransportClient : IClientFactory, IDatagramClientFactory, IDatagramStreamCarrier
{
    /// <summary>The latest announcement; <see cref="Gone"/> fires when a different address replaces it.</summary>
    private sealed record Announcement(Destination Address, bool Udp, CancellationTokenSource Gone);

    private readonly TransportEnvironment _context;
    private readonly AsportTransportClientOptions _options;
    private readonly ILogger _log;
    private readonly CancellationTokenSource _stop = new();
    private Announcement? _announced;

    public AsportTransportClient(TransportEnvironment context, AsportTransportClientOptions options)
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

    private async Task<Stream> OpenAsync(Destination server, Destination? far, SessionKind kind, CancellationToken ct)
    {
        var stream = await _context.Dialer.ConnectTcpAsync(server, ct).ConfigureAwait(false);
        try
        {
            await PlainWire.RequestAsync(stream, far, $"asport address {server}", ct, kind).ConfigureAwait(false);
            return stream;
        }
        catch (Exception e) when (e is IOException or SocketException)
        {
            await stream.DisposeAsync().ConfigureAwait(false);
            throw new TransportConnectException(ConnectFailure.General, $"asport address {server}: {e.Message}", e);
        }
        catch
        {
            await stream.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    private readonly CancellationTokenSource _configuredGone = new();
    private int _fallbackLogged;

    /// <summary>
    /// A TURN allocation (spec/asport.md §6.2): UDP to the public port when it is bound (announced with
    /// "udp": true, or the "udp" option for a configured address) and no upstream proxy is configured;
    /// otherwise the association is carried in a TCP session to the public TCP port (spec/turn.md §5.2).
    /// </summary>
    public async ValueTask<IDatagramSession> OpenDatagramSessionAsync(ConnectRequest request, CancellationToken cancellationToken)
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
            return await StreamDatagramSession.StartAsync(stream, cancellationToken).ConfigureAwait(false);
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
        return await AsportDatagramSession.OpenAsync(new IPEndPoint(address, server.Port), bind, gone, _log, cancellationToken).ConfigureAwait(false);
    }

    public TransportStats GetStats() => _context.Counters.Snapshot();

    public ValueTask DisposeAsync()
    {
        _stop.Cancel();
        _stop.Dispose();
        return ValueTask.CompletedTask;
    }
}

internal sealed class AsportTransportServer(TransportEnvironment context, AsportTransportServerOptions options) : IServerFactory
{
    public static readonly TimeSpan RegistrationTimeout = TimeSpan.FromSeconds(30);

    public GeneratedConfiguration GenerateConfiguration() => new(new JObject(), new JObject
    {
        ["server"] = options.Server.ToString(),
        ["pin"] = Convert.ToHexString(options.Pin).ToLowerInvariant(),
        ["user"] = options.User.ToString(),
        ["password"] = options.Password,
    });

    public ValueTask<IServerManager> ListenAsync(ServerBinding binding, CancellationToken cancellationToken) => StartAsync(binding, cancellationToken);

    public ValueTask<IServerManager> ProxyAsync(ServerBinding binding, CancellationToken cancellationToken) => StartAsync(binding, cancellationToken);

    private async ValueTask<IServerManager> StartAsync(ServerBinding binding, CancellationToken ct)
    {
        var manager = new AsportTransportManager(context, options, binding);
        try
        {
            await manager.StartAsync(ct).ConfigureAwait(false);
            return manager;
        }
        catch
        {
            await manager.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    public ValueTask DisposeAsync() => ValueTask.CompletedTask;
}

/// <summary>A running asport server transport: an ASPORT client whose Connect streams become sessions.</summary>
internal sealed class AsportTransportManager : IServerManager
{
    private readonly TransportEnvironment _context;
    private readonly AsportTransportServerOptions _options;
    private readonly ServerBinding _binding;
    private readonly ILogger _log;
    private readonly AsportClient _client;
    private static long s_ids;
    private static readonly TimeSpan PreambleTimeout = TimeSpan.FromSeconds(10);

    public AsportTransportManager(TransportEnvironment context, AsportTransportServerOptions options, ServerBinding binding)
    {
        _context = context;
        _options = options;
        _binding = binding;
        _log = context.LoggerFactory.CreateLogger("PtHost.Transports.Asport");
        var target = binding.Target is { Address: { } a } t ? new IPEndPoint(a, t.Port) : new IPEndPoint(IPAddress.Loopback, 9);
        _client = new AsportClient(new AsportClientOptions
        {
            Server = options.Server,
            Verification = QuicPeerVerification.Pinned(options.Pin),
            User = options.User,
            Password = options.Password,
            Mode = options.Mode,
            PortStart = options.PortStart,
            PortEnd = options.PortEnd,
            LocalTarget = target,
        }, _log, serveConnect: ServeAsync,
            udp: AsportWire.ForwardsUdp(options.Mode) ? new AsportDatagramHandler(context, binding, _log, () => Interlocked.Increment(ref s_ids)) : null);
        _client.OnRegistered += Announce;
        _client.OnRefused += code => _log.LogError("asport: the server refused this client: {Code}", code);
    }

    public IPEndPoint LocalEndPoint { get; private set; } = new(IPAddress.Any, 0);

    public IReadOnlyDictionary<string, string> Args { get; } = new Dictionary<string, string>();

    public async Task StartAsync(CancellationToken ct)
    {
        _client.Start();
        try
        {
            var port = await _client.Registered.WaitAsync(AsportTransportServer.RegistrationTimeout, ct).ConfigureAwait(false);
            LocalEndPoint = new IPEndPoint(_options.Server.Address, port);
        }
        catch (TimeoutException)
        {
            throw new TransportOptionsException($"no registration with the ASPORT server {_options.Server} within {AsportTransportServer.RegistrationTimeout.TotalSeconds:0} s (see the log)");
        }
    }

    /// <summary>Each (re-)registration announces the public address (SMESSAGE asport.address).</summary>
    private void Announce(int port)
    {
        var address = new IPEndPoint(_options.Server.Address, port).ToString();
        _log.LogInformation("asport: public address {Address}", address);
        _context.Signals.Send(new Signal(AsportTransport.AddressSignal,
            new JObject { ["address"] = address, ["udp"] = AsportWire.ForwardsUdp(_options.Mode) }));
    }

    /// <summary>One Connect stream = one session: plain's preamble, then the host relays.</summary>
    private async Task ServeAsync(QuicStream stream, IPEndPoint? source, CancellationToken ct)
    {
        long id = Interlocked.Increment(ref s_ids);
        Stream? onward = null;
        var opened = false;
        try
        {
            Destination? destination;
            SessionKind kind;
            using (var preamble = CancellationTokenSource.CreateLinkedTokenSource(ct))
            {
                preamble.CancelAfter(PreambleTimeout);
                try { (destination, kind) = await PlainWire.ReadPreambleAsync(stream, preamble.Token).ConfigureAwait(false); }
                catch (Exception e) when (e is InvalidDataException or FormatException)
                {
                    _context.Counters.SessionFailed();
                    _log.LogInformation("asport session {Id} from {Source}: {Error}", id, source, e.Message);
                    if (e is FormatException) await ReplyAsync(stream, (byte)ConnectFailure.AddressTypeNotSupported, ct).ConfigureAwait(false);
                    return;
                }
            }
            try
            {
                onward = await _binding.Handler.OpenAsync(new InboundSession(source, destination, id, kind), ct).ConfigureAwait(false);
            }
            catch (TransportConnectException e)
            {
                _context.Counters.SessionFailed();
                _log.LogInformation("asport session {Id}: {Error}", id, e.Message);
                await ReplyAsync(stream, (byte)e.Failure, ct).ConfigureAwait(false);
                await FinishRefusedAsync(stream, ct).ConfigureAwait(false);
                return;
            }
            await ReplyAsync(stream, 0, ct).ConfigureAwait(false);
            opened = true;
            _context.Counters.SessionOpened();
            await _binding.Handler.RelayAsync(stream, onward, ct).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or SocketException or OperationCanceledException or EndOfStreamException or ObjectDisposedException)
        {
            if (!opened) _context.Counters.SessionFailed();
            _log.LogDebug("asport session {Id} ended: {Error}", id, e.Message);
        }
        finally
        {
            if (opened) _context.Counters.SessionClosed();
            if (onward is not null) await onward.DisposeAsync().ConfigureAwait(false);
        }
    }

    private static async Task ReplyAsync(Stream stream, byte code, CancellationToken ct) =>
        await stream.WriteAsync(new[] { code }, ct).ConfigureAwait(false);

    /// <summary>
    /// After a failure reply: FIN, then wait (at most 10 s) for the PT client to close its side, which it does on
    /// reading the reply. Disposing at once also sends STOP_SENDING while the relay may still be writing the
    /// session's first bytes into the stream; under many concurrent refusals the relay then forwarded neither
    /// the reply nor a close, and the SOCKS request waited for its 30 s connect limit.
    /// </summary>
    private static async Task FinishRefusedAsync(QuicStream stream, CancellationToken ct)
    {
        stream.CompleteWrites();
        using var limit = CancellationTokenSource.CreateLinkedTokenSource(ct);
        limit.CancelAfter(PreambleTimeout);
        var buf = new byte[512];
        try { while (await stream.ReadAsync(buf, limit.Token).ConfigureAwait(false) > 0) { } }
        catch (Exception e) when (e is IOException or OperationCanceledException or ObjectDisposedException) { }
    }

    public TransportStats GetStats() => _context.Counters.Snapshot();

    public async Task StopAsync(CancellationToken cancellationToken) => await _client.DisposeAsync().ConfigureAwait(false);

    public async ValueTask DisposeAsync() => await _client.DisposeAsync().ConfigureAwait(false);
}
