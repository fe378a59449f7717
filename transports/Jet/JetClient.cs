using System.Net.Security;
using System.Security.Authentication;
using Microsoft.Extensions.Logging;
using Newtonsoft.Json.Linq;
using PtHost.Contract;
using PtHost.Net;
using PtHost.Net.Tls;

namespace PtHost.Transports.Jet;

/// <summary>Per-connection settings jet accepts (as plain: an optional destination).</summary>
internal sealed record JetSettings(Destination? Destination);

/// <summary>The client side (spec/jet.md §7.3, client steps): offer, race every candidate, keep the first usable.</summary>
internal sealed class JetClient : IClientFactory, IStreamCarrier
{
    private readonly TransportEnvironment _context;
    private readonly JetClientOptions _options;
    private readonly ILogger _log;
    private readonly SignalOffers _offers;
    private readonly SslStreamCertificateContext _certificateContext;
    private readonly JetSession _session;

    public JetClient(TransportEnvironment context, JetClientOptions options)
    {
        _context = context;
        _options = options;
        _log = context.LoggerFactory.CreateLogger("PtHost.Transports.Jet");
        _certificateContext = SslStreamCertificateContext.Create(options.Certificate, null, offline: true);
        // §7.4: relay certificates are checked as the server checks them: relayPins per host, else the system's CAs with SNI.
        _session = new JetSession(context.Dialer, new RelayTrust(options.RelayPins, _log), options.ServerPin);
        _offers = new SignalOffers(context.Signals, "jet", JetSignals.Offer, JetSignals.Answer, options.SignalTimeout, _log);
    }

    public object? ParseSettings(ConnectionSettings settings)
    {
        settings.RejectUnknownKeys("destination");
        string? d = settings.GetString("destination");
        if (d is null) return new JetSettings(null);
        return Destination.TryParse(d, out var dest) && dest.Port != 0
            ? new JetSettings(dest)
            : throw new SettingsException("destination", "must be \"host:port\"");
    }

    public async ValueTask<Stream> ConnectAsync(ConnectRequest request, CancellationToken cancellationToken)
    {
        var far = (request.Settings as JetSettings)?.Destination ?? (request.Destination.IsUnspecified ? null : request.Destination);
        var (association, candidates) = await OfferAsync(request.Session, cancellationToken).ConfigureAwait(false);
        var (candidate, tls) = await RaceAsync(request.Session, association, candidates, cancellationToken).ConfigureAwait(false);
        try
        {
            using var limit = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            limit.CancelAfter(_options.TlsTimeout);
            try { await SessionPreamble.RequestAsync(tls, far, "jet server", limit.Token, request.Kind).ConfigureAwait(false); }
            catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
            {
                throw new TransportConnectException(ConnectFailure.TimedOut, $"jet server did not reply within {_options.TlsTimeout.TotalSeconds:0.###} s");
            }
            catch (Exception e) when (e is IOException or System.Net.Sockets.SocketException)
            {
                throw new TransportConnectException(ConnectFailure.General, $"jet connection ended before the server replied: {e.Message}", e);
            }
            _log.LogDebug("jet session {Id}: through the {Kind} candidate {Url}", request.Session, candidate.Kind, candidate.Url);
            return tls;
        }
        catch
        {
            await tls.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>
    /// §7.3 step 3: every candidate at once — connect, JET 200, end-to-end TLS 1.3 with the pinned
    /// server. The first to finish wins; the others are cancelled or closed.
    /// </summary>
    private async Task<(JetCandidate, HalfClosableTlsStream)> RaceAsync(long session, Guid association, IReadOnlyList<JetCandidate> candidates, CancellationToken ct)
    {
        using var race = CancellationTokenSource.CreateLinkedTokenSource(ct);
        var attempts = candidates.Select(c => AttemptAsync(c, association, race.Token)).ToList();
        var errors = new List<string>();
        void Skipped(int index, string error) =>
            _log.LogInformation("jet session {Id}: {Kind} candidate {Url} skipped: {Error}", session, candidates[index].Kind, candidates[index].Url.Authority, error);
        var pending = attempts.ToList();
        (JetCandidate, HalfClosableTlsStream)? winner = null;
        while (pending.Count > 0)
        {
            var done = await Task.WhenAny(pending).ConfigureAwait(false);
            pending.Remove(done);
            int index = attempts.IndexOf(done);
            if (done.IsCompletedSuccessfully)
            {
                winner = (candidates[index], done.Result);
                break;
            }
            string error = done.Exception?.InnerException?.Message ?? "cancelled";
            Skipped(index, error);
            errors.Add($"{candidates[index].Kind} {candidates[index].Url.Authority}: {error}");
        }
        await race.CancelAsync().ConfigureAwait(false);
        // Close the losers: those still running end by the cancellation, those that also succeeded are closed.
        // A loser that had already failed is reported like any skipped candidate: which one is dead must not
        // depend on which finished first. One cut short by the cancellation is not news.
        foreach (var t in pending)
        {
            int index = attempts.IndexOf(t);
            try
            {
                var loser = await t.ConfigureAwait(false);
                await loser.DisposeAsync().ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                _log.LogDebug("jet session {Id}: {Kind} candidate {Url} not needed", session, candidates[index].Kind, candidates[index].Url.Authority);
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                Skipped(index, e.Message);
            }
        }
        if (winner is { } w) return w;
        ct.ThrowIfCancellationRequested();
        throw new TransportConnectException(ConnectFailure.HostUnreachable, "jet: no candidate usable (" + string.Join("; ", errors) + ")");
    }

    private async Task<HalfClosableTlsStream> AttemptAsync(JetCandidate candidate, Guid association, CancellationToken ct)
    {
        // Pairing with the server's accept belongs to the offer/answer exchange: a connect answered 400
        // (not accepted yet) is retried for up to signalTimeout; the TLS handshake then has tlsTimeout.
        using var pairing = CancellationTokenSource.CreateLinkedTokenSource(ct);
        pairing.CancelAfter(_options.SignalTimeout);
        using var limit = CancellationTokenSource.CreateLinkedTokenSource(ct);
        Stream? stream = null;
        try
        {
            stream = await _session.OpenAsync(candidate, JetMethod.Connect, association, pairing.Token).ConfigureAwait(false);
            limit.CancelAfter(_options.TlsTimeout);
            var tls = new SslStream(stream, leaveInnerStreamOpen: true);
            var result = new HalfClosableTlsStream(tls, stream);
            try
            {
                await tls.AuthenticateAsClientAsync(PinnedTls.ClientOptions(_certificateContext, _options.ServerPin), limit.Token).ConfigureAwait(false);
                return result;
            }
            catch
            {
                await result.DisposeAsync().ConfigureAwait(false);
                stream = null;
                throw;
            }
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested)
        {
            if (stream is not null) await stream.DisposeAsync().ConfigureAwait(false);
            throw new TransportConnectException(ConnectFailure.TimedOut, $"no TLS within {_options.TlsTimeout.TotalSeconds:0.###} s");
        }
        catch (AuthenticationException e)
        {
            throw new TransportConnectException(ConnectFailure.General, $"TLS refused (server pin or client certificate): {e.Message}", e);
        }
        catch (Exception e) when (e is IOException or System.Net.Sockets.SocketException)
        {
            if (stream is not null) await stream.DisposeAsync().ConfigureAwait(false);
            throw new TransportConnectException(ConnectFailure.General, $"ended during TLS: {e.Message}", e);
        }
    }

    /// <summary>§7.3 steps 1–2: the offer carries only its nonce; the answer, the association and its candidates.</summary>
    private async Task<(Guid, IReadOnlyList<JetCandidate>)> OfferAsync(long session, CancellationToken ct) =>
        ReadAnswer(await _offers.OfferAsync([], session, ct).ConfigureAwait(false));

    /// <summary>Validates an answer (§7.2): an error, or an association and at least one well-formed candidate.</summary>
    internal static (Guid, IReadOnlyList<JetCandidate>) ReadAnswer(JObject answer)
    {
        if (answer["error"] is { Type: JTokenType.String } error)
            throw new TransportConnectException(ConnectFailure.HostUnreachable, $"jet server refused the offer: {(string)error!}");
        if (answer["association"] is not { Type: JTokenType.String } a || !Guid.TryParseExact((string)a!, "D", out var association))
            throw new TransportConnectException(ConnectFailure.General, "jet answer has no valid \"association\"");
        if (answer["candidates"] is not JArray list || list.Count == 0)
            throw new TransportConnectException(ConnectFailure.HostUnreachable, "jet answer lists no candidates");
        var result = new List<JetCandidate>();
        foreach (var item in list.Take(16))
        {
            if (item is not JObject c || c["id"] is not { Type: JTokenType.String } id || !Guid.TryParseExact((string)id!, "D", out var cid)
                || c["url"] is not { Type: JTokenType.String } u || !Uri.TryCreate((string)u!, UriKind.Absolute, out var url)
                || url.Scheme is not ("tcp" or "tls" or "ws" or "wss") || url.Port <= 0)
                throw new TransportConnectException(ConnectFailure.General, "jet answer has a malformed candidate");
            bool direct = c["direct"] is { Type: JTokenType.Boolean } d && (bool)d!;
            if (direct && url.Scheme is not ("tcp" or "tls")) throw new TransportConnectException(ConnectFailure.General, "jet answer has a direct candidate that is not tcp:// or tls://");
            result.Add(new JetCandidate(cid, url, direct));
        }
        return (association, result);
    }

    public async ValueTask DisposeAsync()
    {
        await _offers.DisposeAsync().ConfigureAwait(false);
        _session.Dispose();
        _options.Certificate.Dispose();
    }
}
