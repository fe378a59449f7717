using Microsoft.Extensions.Logging;
using Newtonsoft.Json.Linq;
using PtHost.Contract;

namespace PtHost.Transports.Plain;

/// <summary>Per-connection settings plain accepts.</summary>
internal sealed record PlainSettings(Destination? Destination);

internal sealed class PlainClient : IClientFactory, IStreamCarrier
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
            return await OpenAsync(server, far, request.Kind, cancellationToken).ConfigureAwait(false);
        }
        // With a known server, the request's destination (when given) is where the server should go.
        if (far is null && !request.Destination.IsUnspecified) far = request.Destination;
        return await OpenAsync(server, far, request.Kind, cancellationToken).ConfigureAwait(false);
    }

    private Task<Stream> OpenAsync(Destination server, Destination? far, SessionKind kind, CancellationToken ct) =>
        SessionPreamble.ConnectAsync(_context.Dialer, server, far, kind, $"server {server}", ct);

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

    public ValueTask DisposeAsync()
    {
        _stop.Cancel();
        _stop.Dispose();
        return ValueTask.CompletedTask;
    }
}
