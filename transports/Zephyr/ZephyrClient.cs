using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using Microsoft.Extensions.Logging;
using Newtonsoft.Json.Linq;
using PtHost.Contract;
using PtHost.Net;
using PtHost.Net.Tls;

namespace PtHost.Transports.Zephyr;

/// <summary>Per-connection settings zephyr accepts (as plain: an optional destination).</summary>
internal sealed record ZephyrSettings(Destination? Destination);

/// <summary>The client side (spec/zephyr.md §7.3, client steps).</summary>
internal sealed class ZephyrClient : IClientFactory, IStreamCarrier
{
    private readonly TransportEnvironment _context;
    private readonly ZephyrClientOptions _options;
    private readonly ILogger _log;
    private readonly SignalOffers _offers;
    private readonly SslStreamCertificateContext _certificateContext;

    public ZephyrClient(TransportEnvironment context, ZephyrClientOptions options)
    {
        _context = context;
        _options = options;
        _log = context.LoggerFactory.CreateLogger("PtHost.Transports.Zephyr");
        _certificateContext = SslStreamCertificateContext.Create(options.Certificate, null, offline: true);
        _offers = new SignalOffers(context.Signals, "zephyr", ZephyrSignals.Offer, ZephyrSignals.Answer, options.SignalTimeout, _log);
    }

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
                        await tls.AuthenticateAsClientAsync(PinnedTls.ClientOptions(_certificateContext, _options.ServerPin), limit.Token).ConfigureAwait(false);
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

    /// <summary>§7.3 steps 2–3: the offer names our relay and zid; the answer, the server's zid.</summary>
    private async Task<uint> OfferAsync(long session, Destination relay, uint zid, CancellationToken ct)
    {
        var answer = await _offers.OfferAsync(new JObject { ["zid"] = zid, ["relay"] = relay.ToString() }, session, ct).ConfigureAwait(false);
        if (answer["error"] is { Type: JTokenType.String } error)
            throw new TransportConnectException(ConnectFailure.HostUnreachable, $"zephyr server refused the offer: {(string)error!}");
        if (answer["zid"] is not { Type: JTokenType.Integer } z || (long)z is < 0 or > ZephyrWire.MaxZid)
            throw new TransportConnectException(ConnectFailure.General, "zephyr answer has no valid \"zid\"");
        return (uint)(long)z;
    }

    public async ValueTask DisposeAsync()
    {
        await _offers.DisposeAsync().ConfigureAwait(false);
        _options.Certificate.Dispose();
    }
}
