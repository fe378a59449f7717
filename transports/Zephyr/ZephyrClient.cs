using System.Collections.Concurrent;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Security.Cryptography;
using Microsoft.Extensions.Logging;
using Newtonsoft.Json.Linq;
using PtHost.Contract;
using PtHost.Net;

namespace PtHost.Transports.Zephyr;

/// <summary>Per-connection settings zephyr accepts (as plain: an optional destination).</summary>
internal sealed record ZephyrSettings(Destination? Destination);

/// <summary>The client side (spec/zephyr.md §7.3, client steps).</summary>
internal sealed class ZephyrClient : IClientFactory, IDatagramStreamCarrier
{
    private readonly TransportEnvironment _context;
    private readonly ZephyrClientOptions _options;
    private readonly ILogger _log;
    private readonly CancellationTokenSource _stop = new();
    private readonly ConcurrentDictionary<string, PendingOffer> _pending = new(StringComparer.Ordinal);
    private readonly Task _answers;
    private readonly SslStreamCertificateContext _certificateContext;

    public ZephyrClient(TransportEnvironment context, ZephyrClientOptions options)
    {
        _context = context;
        _options = options;
        _log = context.LoggerFactory.CreateLogger("PtHost.Transports.Zephyr");
        _certificateContext = SslStreamCertificateContext.Create(options.Certificate, null, offline: true);
        _answers = ReadAnswersAsync(_stop.Token);
    }

    /// <summary>How often an unanswered offer is sent again: a third of the signal timeout, at most 5 s.</summary>
    internal TimeSpan ResendInterval => TimeSpan.FromTicks(Math.Min(_options.SignalTimeout.Ticks / 3, TimeSpan.FromSeconds(5).Ticks));

    public object? ParseSettings(ConnectionSettings settings)
    {
        settings.RejectUnknownKeys("destination");
        string? d = settings.GetString("destination");
        if (d is null) return new ZephyrSettings(null);
        return Destination.TryParse(d, out var dest) && dest.Port != 0
            ? new ZephyrSettings(dest)
            : throw new SettingsException("destination", "must be \"host:port\"");
    }

    public async ValueTask<Stream> ConnectAsync(ConnectRequest request, CancellationToken cancellationToken)
    {
        var far = (request.Settings as ZephyrSettings)?.Destination ?? (request.Destination.IsUnspecified ? null : request.Destination);
        var (relay, stream, zid) = await JoinAnyRelayAsync(request.Session, cancellationToken).ConfigureAwait(false);
        try
        {
            uint serverZid = await OfferAsync(request.Session, relay, zid, cancellationToken).ConfigureAwait(false);
            await stream.WriteAsync(ZephyrWire.BuildBindRequest(serverZid), cancellationToken).ConfigureAwait(false);
            var tls = new SslStream(stream, leaveInnerStreamOpen: true);
            var result = new HalfClosableTlsStream(tls, stream);
            try
            {
                using (var limit = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken))
                {
                    limit.CancelAfter(_options.TlsTimeout);
                    try
                    {
                        await tls.AuthenticateAsClientAsync(ZephyrSession.ClientTls(_certificateContext, _options.ServerPin), limit.Token).ConfigureAwait(false);
                        await SessionPreamble.RequestAsync(tls, far, "zephyr server", limit.Token, request.Kind).ConfigureAwait(false);
                    }
                    catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
                    {
                        throw new TransportConnectException(ConnectFailure.TimedOut, $"zephyr TLS handshake or reply took longer than {_options.TlsTimeout.TotalSeconds:0.###} s");
                    }
                    catch (AuthenticationException e)
                    {
                        throw new TransportConnectException(ConnectFailure.General, $"zephyr TLS failed (server pin or client certificate refused): {e.Message}", e);
                    }
                    catch (Exception e) when (e is IOException or SocketException)
                    {
                        throw new TransportConnectException(ConnectFailure.General, $"zephyr relay connection ended during TLS: {e.Message}", e);
                    }
                }
                _log.LogDebug("zephyr session {Id}: TLS up through relay {Relay} (zid {Zid} ↔ {Server})", request.Session, relay, zid, serverZid);
                return result;
            }
            catch
            {
                await result.DisposeAsync().ConfigureAwait(false);
                throw;
            }
        }
        catch
        {
            await stream.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>Tries the relays in order (§7.3 step 1).</summary>
    private async Task<(Destination Relay, Stream Stream, uint Zid)> JoinAnyRelayAsync(long session, CancellationToken ct)
    {
        var errors = new List<string>();
        foreach (var relay in _options.Relays)
        {
            try
            {
                var (stream, zid) = await ZephyrSession.JoinRelayAsync(_context.Dialer, relay, _options.TlsTimeout, ct).ConfigureAwait(false);
                return (relay, stream, zid);
            }
            catch (TransportConnectException e)
            {
                _log.LogInformation("zephyr session {Id}: relay {Relay} failed: {Error}", session, relay, e.Message);
                errors.Add($"{relay}: {e.Message}");
            }
        }
        throw new TransportConnectException(ConnectFailure.HostUnreachable, "zephyr: no relay reachable (" + string.Join("; ", errors) + ")");
    }

    /// <summary>Sends the offer, again every <see cref="ResendInterval"/>, until an answer or the signal timeout (§7.3 steps 2–3).</summary>
    private async Task<uint> OfferAsync(long session, Destination relay, uint zid, CancellationToken ct)
    {
        string nonce = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(16));
        var pending = new PendingOffer();
        _pending[nonce] = pending;
        var deadline = DateTimeOffset.UtcNow + _options.SignalTimeout;
        var body = new JObject { ["zid"] = zid, ["relay"] = relay.ToString(), ["nonce"] = nonce };
        try
        {
            using var limit = CancellationTokenSource.CreateLinkedTokenSource(ct);
            limit.CancelAfter(_options.SignalTimeout);
            while (true)
            {
                lock (pending) pending.MessageIds.Add(_context.Signals.Send(new Signal(ZephyrSignals.Offer, body) { Expires = deadline }));
                try
                {
                    var answer = await pending.Answer.Task.WaitAsync(ResendInterval, limit.Token).ConfigureAwait(false);
                    if (answer["error"] is { Type: JTokenType.String } error)
                        throw new TransportConnectException(ConnectFailure.HostUnreachable, $"zephyr server refused the offer: {(string)error!}");
                    if (answer["zid"] is not { Type: JTokenType.Integer } z || (long)z is < 0 or > ZephyrWire.MaxZid)
                        throw new TransportConnectException(ConnectFailure.General, "zephyr answer has no valid \"zid\"");
                    return (uint)(long)z;
                }
                catch (TimeoutException)
                {
                    _log.LogDebug("zephyr session {Id}: no answer yet; offering again", session);
                }
            }
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested)
        {
            throw new TransportConnectException(ConnectFailure.TimedOut, $"zephyr: no answer to the offer within {_options.SignalTimeout.TotalSeconds:0.###} s (are CMESSAGE/SMESSAGE lines carried?)");
        }
        finally
        {
            _pending.TryRemove(nonce, out _);
        }
    }

    /// <summary>Hands each answer to the offer it names (by nonce), if it replies to one of that offer's messages.</summary>
    private async Task ReadAnswersAsync(CancellationToken ct)
    {
        try
        {
            await foreach (var s in _context.Signals.Incoming.ReadAllAsync(ct).ConfigureAwait(false))
            {
                if (s.Kind != ZephyrSignals.Answer || s.Body is not JObject body) continue;
                if (body["nonce"] is not { Type: JTokenType.String } n || !_pending.TryGetValue((string)n!, out var pending))
                {
                    _log.LogDebug("zephyr: answer {Id} matches no waiting offer (late or foreign); dropped", s.MessageId);
                    continue;
                }
                bool replies;
                lock (pending) replies = pending.MessageIds.Contains(s.ReplyTo);
                if (replies) pending.Answer.TrySetResult(body);
                else _log.LogWarning("zephyr: answer {Id} names an offer's nonce but replies to none of its messages; dropped", s.MessageId);
            }
        }
        catch (OperationCanceledException) { }
        catch (System.Threading.Channels.ChannelClosedException) { }
    }

    public async ValueTask DisposeAsync()
    {
        _stop.Cancel();
        await _answers.ConfigureAwait(false);
        _stop.Dispose();
        _options.Certificate.Dispose();
    }

    private sealed class PendingOffer
    {
        public HashSet<long> MessageIds { get; } = [];
        public TaskCompletionSource<JObject> Answer { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
    }
}
