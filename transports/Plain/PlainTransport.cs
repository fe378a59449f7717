using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using Newtonsoft.Json.Linq;
using PtHost.Contract;
using PtHost.Net;

namespace PtHost.Transports.Plain;

/// <summary>
/// The baseline and debugging transport (spec/plain.md): no obfuscation, no encryption. A short
/// preamble names the destination for a free server and returns the server's connect result.
/// </summary>
public sealed class PlainTransport : IPluggableTransport
{
    public string Name => "plain";

    public IClientFactory CreateClientFactory(TransportEnvironment context)
    {
        var options = PlainClientOptions.Parse(context.Options);
        if (options.Discover && !context.Signals.Available)
            throw new TransportOptionsException("plain option \"discover\" needs the SMESSAGE signal channel, which PT 1.0 does not have");
        return new PlainClient(context, options);
    }

    public IServerFactory CreateServerFactory(TransportEnvironment context) => new PlainServer(context, PlainServerOptions.Parse(context.Options));
}

internal sealed record PlainClientOptions(Destination? ServerAddress, bool Discover)
{
    public static PlainClientOptions Parse(JToken? options)
    {
        if (options is null || options.Type == JTokenType.Null) return new(null, false);
        if (options is not JObject o) throw new TransportOptionsException("plain client options must be an object");
        Destination? server = null;
        bool discover = false;
        foreach (var p in o.Properties())
        {
            switch (p.Name)
            {
                case "serverAddress":
                    if (p.Value.Type != JTokenType.String || !Destination.TryParse((string)p.Value!, out server) || server.Port == 0)
                        throw new TransportOptionsException("plain option \"serverAddress\" must be \"host:port\"");
                    break;
                case "discover":
                    if (p.Value.Type != JTokenType.Boolean) throw new TransportOptionsException("plain option \"discover\" must be true or false");
                    discover = (bool)p.Value;
                    break;
                default:
                    throw new TransportOptionsException($"plain has no client option \"{p.Name}\" (known: serverAddress, discover)");
            }
        }
        if (server is not null && discover) throw new TransportOptionsException("plain options \"serverAddress\" and \"discover\" exclude each other");
        return new(server, discover);
    }
}

internal sealed record PlainServerOptions(Destination? Advertise)
{
    public static PlainServerOptions Parse(JToken? options)
    {
        if (options is null || options.Type == JTokenType.Null) return new((Destination?)null);
        if (options is not JObject o) throw new TransportOptionsException("plain server options must be an object");
        Destination? advertise = null;
        foreach (var p in o.Properties())
        {
            if (p.Name != "advertise") throw new TransportOptionsException($"plain has no server option \"{p.Name}\" (known: advertise)");
            if (p.Value.Type != JTokenType.String || !Destination.TryParse((string)p.Value!, out advertise) || advertise.Port == 0)
                throw new TransportOptionsException("plain option \"advertise\" must be \"host:port\"");
        }
        return new(advertise);
    }
}

/// <summary>Signal kinds of the plain transport (spec/plain.md §3).</summary>
internal static class PlainSignals
{
    public const string Hello = "hello";
    public const string Server = "server";
}

/// <summary>Per-connection settings plain accepts.</summary>
internal sealed record PlainSettings(Destination? Destination);

internal sealed class PlainClient : IClientFactory
{
    public static readonly TimeSpan HelloRetry = TimeSpan.FromSeconds(5);
    private readonly TransportEnvironment _context;
    private readonly PlainClientOptions _options;
    private readonly ILogger _log;
    private readonly CancellationTokenSource _stop = new();
    private readonly TaskCompletionSource<Destination> _learned = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public PlainClient(TransportEnvironment context, PlainClientOptions options)
    {
        _context = context;
        _options = options;
        _log = context.LoggerFactory.CreateLogger("PtHost.Transports.Plain");
        if (options.Discover) _ = DiscoverAsync(_stop.Token);
    }

    public object? ParseSettings(ConnectionSettings settings)
    {
        settings.RejectUnknownKeys("destination");
        string? d = settings.GetString("destination");
        if (d is null) return new PlainSettings(null);
        return Destination.TryParse(d, out var dest) && dest.Port != 0
            ? new PlainSettings(dest)
            : throw new SettingsException("destination", "must be \"host:port\"");
    }

    public async ValueTask<Stream> ConnectAsync(ConnectRequest request, CancellationToken cancellationToken)
    {
        var settings = request.Settings as PlainSettings ?? new PlainSettings(null);
        Destination server;
        Destination? far = settings.Destination;
        if (_options.ServerAddress is { } configured) server = configured;
        else if (_options.Discover)
        {
            try { server = await _learned.Task.WaitAsync(cancellationToken).ConfigureAwait(false); }
            catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested && !_stop.IsCancellationRequested)
            {
                throw new TransportConnectException(ConnectFailure.HostUnreachable, "the server's address has not arrived by SMESSAGE yet");
            }
        }
        else
        {
            // Tor-style: the SOCKS destination is the server (a bridge address).
            server = request.Destination;
            if (server.IsUnspecified) throw new TransportConnectException(ConnectFailure.HostUnreachable, "no server address: the request names none and options give none");
            return await OpenAsync(server, far, cancellationToken).ConfigureAwait(false);
        }
        // With a known server, the request's destination (when given) is where the server should go.
        if (far is null && !request.Destination.IsUnspecified) far = request.Destination;
        return await OpenAsync(server, far, cancellationToken).ConfigureAwait(false);
    }

    private async Task<Stream> OpenAsync(Destination server, Destination? far, CancellationToken ct)
    {
        var stream = await _context.Dialer.ConnectTcpAsync(server, ct).ConfigureAwait(false);
        try
        {
            await PlainWire.RequestAsync(stream, far, $"server {server}", ct).ConfigureAwait(false);
            return stream;
        }
        catch (Exception e) when (e is IOException or SocketException)
        {
            await stream.DisposeAsync().ConfigureAwait(false);
            throw new TransportConnectException(ConnectFailure.General, $"server {server}: {e.Message}", e);
        }
        catch
        {
            await stream.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>Sends "hello" until a "server" message arrives (a broadcast, or a reply to any hello sent).</summary>
    private async Task DiscoverAsync(CancellationToken ct)
    {
        var sent = new HashSet<long>();
        var reader = _context.Signals.Incoming;
        try
        {
            while (!ct.IsCancellationRequested)
            {
                sent.Add(_context.Signals.Send(new Signal(PlainSignals.Hello, null)));
                using var wait = CancellationTokenSource.CreateLinkedTokenSource(ct);
                wait.CancelAfter(HelloRetry);
                try
                {
                    while (true)
                    {
                        var s = await reader.ReadAsync(wait.Token).ConfigureAwait(false);
                        if (s.Kind != PlainSignals.Server || (s.ReplyTo != 0 && !sent.Contains(s.ReplyTo))) continue;
                        if (s.Body?["address"] is { Type: JTokenType.String } a && Destination.TryParse((string)a!, out var addr) && addr.Port != 0)
                        {
                            _log.LogInformation("plain: server address {Address} learned from SMESSAGE {Id}", addr, s.MessageId);
                            _learned.TrySetResult(addr);
                            return;
                        }
                        _log.LogWarning("plain: SMESSAGE {Id} has no usable \"address\"", s.MessageId);
                    }
                }
                catch (OperationCanceledException) when (!ct.IsCancellationRequested)
                {
                    _log.LogInformation("plain: no server address after {Seconds} s; sending hello again", HelloRetry.TotalSeconds);
                }
            }
        }
        catch (OperationCanceledException) { }
        catch (System.Threading.Channels.ChannelClosedException) { }
    }

    public TransportStats GetStats() => _context.Counters.Snapshot();

    public ValueTask DisposeAsync()
    {
        _stop.Cancel();
        _stop.Dispose();
        return ValueTask.CompletedTask;
    }
}

internal sealed class PlainServer : IServerFactory
{
    public static readonly TimeSpan PreambleTimeout = TimeSpan.FromSeconds(10);
    private readonly TransportEnvironment _context;
    private readonly PlainServerOptions _options;

    public PlainServer(TransportEnvironment context, PlainServerOptions options)
    {
        _context = context;
        _options = options;
    }

    public GeneratedConfiguration GenerateConfiguration() => new(new JObject(), new JObject());

    public ValueTask<IServerManager> ListenAsync(ServerBinding binding, CancellationToken cancellationToken) =>
        ValueTask.FromResult<IServerManager>(new PlainListener(_context, _options, binding));

    public ValueTask<IServerManager> ProxyAsync(ServerBinding binding, CancellationToken cancellationToken) =>
        ValueTask.FromResult<IServerManager>(new PlainListener(_context, _options, binding));

    public ValueTask DisposeAsync() => ValueTask.CompletedTask;
}

internal sealed class PlainListener : IServerManager
{
    public const int MaxSessions = 16384;
    private readonly TransportEnvironment _context;
    private readonly ServerBinding _binding;
    private readonly TcpSessionListener _listener;
    private readonly ILogger _log;
    private readonly CancellationTokenSource _stopping = new();
    private readonly Task _signalLoop;
    private readonly string _advertised;
    private static long s_ids;

    public PlainListener(TransportEnvironment context, PlainServerOptions options, ServerBinding binding)
    {
        _context = context;
        _binding = binding;
        _log = context.LoggerFactory.CreateLogger("PtHost.Transports.Plain");
        try
        {
            _listener = new TcpSessionListener("plain", binding.BindAddress, ServeAsync, _log, MaxSessions, context.Counters.SessionFailed);
        }
        catch (SocketException e)
        {
            throw new TransportOptionsException($"cannot listen on {binding.BindAddress}: {e.SocketErrorCode}", e);
        }
        LocalEndPoint = _listener.LocalEndPoint;
        _advertised = (options.Advertise ?? new Destination(LocalEndPoint)).ToString();
        // Announce where this server is, for clients started with "discover" (spec/plain.md §3).
        _context.Signals.Send(new Signal(PlainSignals.Server, new JObject { ["address"] = _advertised }));
        _listener.Start();
        _signalLoop = AnswerHellosAsync();
    }

    public IPEndPoint LocalEndPoint { get; }

    public IReadOnlyDictionary<string, string> Args { get; } = new Dictionary<string, string>();

    public TransportStats GetStats() => _context.Counters.Snapshot();

    private async Task AnswerHellosAsync()
    {
        try
        {
            await foreach (var s in _context.Signals.Incoming.ReadAllAsync(_stopping.Token).ConfigureAwait(false))
            {
                if (s.Kind != PlainSignals.Hello || s.ClientId is null) continue;
                _context.Signals.Send(new Signal(PlainSignals.Server, new JObject { ["address"] = _advertised }) { ClientId = s.ClientId, ReplyTo = s.MessageId });
            }
        }
        catch (OperationCanceledException) { }
    }

    private async Task ServeAsync(Socket socket, CancellationToken abort)
    {
        long id = Interlocked.Increment(ref s_ids);
        var remote = socket.RemoteEndPoint;
        var stream = new NetworkStream(socket, ownsSocket: true);
        Stream? onward = null;
        bool opened = false, failed = false;
        try
        {
            Destination? destination;
            using (var preamble = CancellationTokenSource.CreateLinkedTokenSource(abort))
            {
                preamble.CancelAfter(PlainServer.PreambleTimeout);
                try { destination = await PlainWire.ReadRequestAsync(stream, preamble.Token).ConfigureAwait(false); }
                catch (InvalidDataException)
                {
                    failed = true;
                    _context.Counters.SessionFailed();
                    _log.LogInformation("plain session {Id} from {Remote}: not a plain preamble; closed", id, remote);
                    return;
                }
                catch (FormatException e)
                {
                    failed = true;
                    _context.Counters.SessionFailed();
                    await ReplyAsync(stream, (byte)ConnectFailure.AddressTypeNotSupported).ConfigureAwait(false);
                    _log.LogInformation("plain session {Id} from {Remote}: {Error}", id, remote, e.Message);
                    return;
                }
            }
            try
            {
                onward = await _binding.Handler.OpenAsync(new InboundSession(remote, destination, id), abort).ConfigureAwait(false);
            }
            catch (TransportConnectException e)
            {
                failed = true;
                _context.Counters.SessionFailed();
                _log.LogInformation("plain session {Id}: {Error}", id, e.Message);
                await ReplyAsync(stream, (byte)e.Failure).ConfigureAwait(false);
                return;
            }
            await ReplyAsync(stream, 0).ConfigureAwait(false);
            opened = true;
            _context.Counters.SessionOpened();
            await _binding.Handler.RelayAsync(stream, onward, abort).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or SocketException or OperationCanceledException or EndOfStreamException or ObjectDisposedException)
        {
            if (!opened && !failed) _context.Counters.SessionFailed(); // preamble timeout or a peer that vanished
            _log.LogDebug("plain session {Id} ended: {Error}", id, e.Message);
        }
        finally
        {
            if (opened) _context.Counters.SessionClosed();
            if (onward is not null) await onward.DisposeAsync().ConfigureAwait(false);
            await stream.DisposeAsync().ConfigureAwait(false);
        }
    }

    private static async Task ReplyAsync(NetworkStream stream, byte code)
    {
        using var cts = new CancellationTokenSource(PlainServer.PreambleTimeout);
        await stream.WriteAsync(new[] { code }, cts.Token).ConfigureAwait(false);
    }

    public async Task StopAsync(CancellationToken cancellationToken)
    {
        if (!_stopping.IsCancellationRequested) _stopping.Cancel();
        await _signalLoop.ConfigureAwait(false);
        await _listener.StopAsync(cancellationToken).ConfigureAwait(false);
    }

    public async ValueTask DisposeAsync()
    {
        await StopAsync(new CancellationToken(true)).ConfigureAwait(false);
        await _listener.DisposeAsync().ConfigureAwait(false);
        _stopping.Dispose();
    }
}
