using System.Collections.Concurrent;
using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;
using Microsoft.Extensions.Logging;
using Newtonsoft.Json.Linq;
using PtHost.Contract;
using PtHost.Net;
using PtHost.Net.Tls;

namespace PtHost.Transports.Zephyr;

/// <summary>The server factory: generates configurations and starts <see cref="ZephyrServerManager"/>s.</summary>
internal sealed class ZephyrServer(TransportEnvironment context, ZephyrServerOptions options) : IServerFactory
{
    /// <summary>A fresh server and client certificate, each side pinning the other (§7.4).</summary>
    public GeneratedConfiguration GenerateConfiguration() => PinnedTls.GenerateConfiguration("zephyr");

    public ValueTask<IServerManager> ListenAsync(ServerBinding binding, CancellationToken cancellationToken) => StartAsync(binding);

    public ValueTask<IServerManager> ProxyAsync(ServerBinding binding, CancellationToken cancellationToken) => StartAsync(binding);

    private ValueTask<IServerManager> StartAsync(ServerBinding binding)
    {
        if (options.ClientPins.Count == 0)
            throw new TransportOptionsException("zephyr server option \"clientPins\" is required: the pins of the client certificates allowed in (pthost generate-config zephyr)");
        // §7.1: an offer comes from the application's message channel; by default the server joins
        // only relays its operator named, so an offer cannot make it dial an arbitrary address.
        if (options.Relays is null && !options.AnyRelay)
            throw new TransportOptionsException("zephyr server option \"relay\" (or \"relays\") is required: the relays this server joins; \"anyRelay\": true joins any relay an offer names");
        // §7.4: without a configured certificate, the one kept in the state directory.
        var cert = options.Certificate ?? PinnedTls.LoadOrCreateServerCertificate(context.StateDirectory, "zephyr");
        return ValueTask.FromResult<IServerManager>(new ZephyrServerManager(context, options, cert, binding));
    }

    public ValueTask DisposeAsync() => ValueTask.CompletedTask;
}

/// <summary>
/// A running zephyr server: answers offers by joining the named relay, binding to the client's
/// zid, then serving one TLS session over the bound stream (spec/zephyr.md §7.3, server steps).
/// </summary>
internal sealed class ZephyrServerManager : IServerManager
{
    /// <summary>
    /// Offers in progress at once (joining the relay, binding, TLS); further offers are dropped (and logged). Sessions
    /// that have finished TLS no longer count (spec/zephyr.md §7.3): they were counted until they ended, which capped a
    /// server at 4,096 concurrent sessions (issue 24: 9,000 sessions through the relay).
    /// </summary>
    public const int MaxPendingSessions = 4096;
    private int _settingUp;
    private readonly TransportEnvironment _context;
    private readonly ZephyrServerOptions _options;
    private readonly X509Certificate2 _certificate;
    private readonly SslStreamCertificateContext _certificateContext;
    private readonly ServerBinding _binding;
    private readonly ILogger _log;
    private readonly CancellationTokenSource _stopping = new();
    private readonly CancellationTokenSource _abort = new();
    private readonly ConcurrentDictionary<string, Task<uint?>> _offers = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<long, Task> _sessions = new();
    private readonly Task _signalLoop;
    private static long s_ids;

    public ZephyrServerManager(TransportEnvironment context, ZephyrServerOptions options, X509Certificate2 certificate, ServerBinding binding)
    {
        _context = context;
        _options = options;
        _certificate = certificate;
        _certificateContext = SslStreamCertificateContext.Create(certificate, null, offline: true);
        _binding = binding;
        _log = context.LoggerFactory.CreateLogger("PtHost.Transports.Zephyr");
        LocalEndPoint = binding.BindAddress;
        string pin = PinnedTls.FormatPin(PinnedTls.Pin(certificate));
        Args = new Dictionary<string, string> { ["pin"] = pin };
        _log.LogInformation("zephyr server: certificate pin {Pin}; waiting for offers", pin);
        _signalLoop = AnswerOffersAsync();
    }

    public IPEndPoint LocalEndPoint { get; }

    public IReadOnlyDictionary<string, string> Args { get; }

    /// <summary>How long a session may wait for its client's bind and TLS handshake: the relay's peer timeout plus the TLS timeout.</summary>
    private TimeSpan HandshakeLimit => ZephyrDefaults.RelayPeerTimeout + _options.TlsTimeout;

    private async Task AnswerOffersAsync()
    {
        try
        {
            await foreach (var s in _context.Signals.Incoming.ReadAllAsync(_stopping.Token).ConfigureAwait(false))
            {
                if (s.Kind != ZephyrSignals.Offer || s.ClientId is null) continue;
                if (!TryReadOffer(s, out uint clientZid, out var relay, out string nonce, out string? problem))
                {
                    _log.LogWarning("zephyr: offer {Id} from {Client} dropped: {Problem}", s.MessageId, s.ClientId, problem);
                    if (nonce.Length > 0) Answer(s, new JObject { ["nonce"] = nonce, ["error"] = problem });
                    continue;
                }
                if (_offers.TryGetValue(nonce, out var known))
                {
                    // The client sent the same offer again: answer this copy too, with the same zid.
                    _ = AnswerAgainAsync(s, nonce, known);
                    continue;
                }
                if (Volatile.Read(ref _settingUp) >= MaxPendingSessions)
                {
                    _log.LogWarning("zephyr: offer {Id} dropped: {Max} sessions in progress", s.MessageId, MaxPendingSessions);
                    continue;
                }
                long id = Interlocked.Increment(ref s_ids);
                var joined = new TaskCompletionSource<uint?>(TaskCreationOptions.RunContinuationsAsynchronously);
                _offers[nonce] = joined.Task;
                Interlocked.Increment(ref _settingUp);
                var session = Task.Run(() => ServeAsync(id, s, relay!, clientZid, nonce, joined));
                _sessions[id] = session;
                _ = session.ContinueWith(_ =>
                {
                    _sessions.TryRemove(id, out Task? _);
                    // Copies of the offer may still arrive until it expires: remember the nonce that long.
                    _ = Task.Delay(_options.SignalTimeout + TimeSpan.FromSeconds(5)).ContinueWith(__ => _offers.TryRemove(nonce, out Task<uint?>? _), TaskScheduler.Default);
                }, TaskScheduler.Default);
            }
        }
        catch (OperationCanceledException) { }
        catch (System.Threading.Channels.ChannelClosedException) { }
    }

    private bool TryReadOffer(Signal s, out uint zid, out Destination? relay, out string nonce, out string? problem)
    {
        zid = 0;
        relay = null;
        nonce = "";
        problem = null;
        try
        {
            // spec/zephyr.md §7.2: {"nonce", "zid", "relay"}; the problem names the key ("body.zid: ...").
            var body = OptionsReader.For(s.Body, "body");
            if (body.IsAbsent) throw body.Fail("is required");
            string n = body.Require("nonce").String("nonce")!;
            if (n.Length is 0 or > SignalOffers.MaxNonceLength) throw body.Fail("nonce", $"must be 1 to {SignalOffers.MaxNonceLength} characters");
            nonce = n;
            zid = (uint)body.Require("zid").Integer("zid", 0, ZephyrWire.MaxZid)!.Value;
            relay = body.Require("relay").Destination("relay")!;
        }
        catch (OptionsException e)
        {
            problem = e.Message;
            return false;
        }
        string named = relay.ToString();
        if (_options.Relays is { } allowed && !allowed.Any(a => string.Equals(a.ToString(), named, StringComparison.OrdinalIgnoreCase)))
        {
            problem = $"relay {named} is not one of this server's \"relays\"";
            return false;
        }
        return true;
    }

    private void Answer(Signal offer, JObject body) =>
        SignalOffers.Answer(_context.Signals, ZephyrSignals.Answer, offer, body, _options.SignalTimeout, _log);

    private async Task AnswerAgainAsync(Signal offer, string nonce, Task<uint?> joined)
    {
        if (await joined.ConfigureAwait(false) is uint zid) Answer(offer, new JObject { ["zid"] = zid, ["nonce"] = nonce });
    }

    /// <summary>
    /// One offer (§7.3 server steps): join the relay, bind to the client's zid, answer, run TLS as the
    /// server; the stream then goes to the host, which reads the preamble and serves the session.
    /// </summary>
    private async Task ServeAsync(long id, Signal offer, Destination relay, uint clientZid, string nonce, TaskCompletionSource<uint?> joined)
    {
        HalfClosableTlsStream? established;
        try { established = await SetUpAsync(id, offer, relay, clientZid, nonce, joined).ConfigureAwait(false); }
        finally { Interlocked.Decrement(ref _settingUp); }
        if (established is not null) await _binding.Handler.ServeAsync(established, new DnsEndPoint(relay.Host, relay.Port), _abort.Token).ConfigureAwait(false);
    }

    /// <summary>Steps 2–4 of §7.3 for one offer: the TLS stream once established, or null after answering or logging the failure.</summary>
    private async Task<HalfClosableTlsStream?> SetUpAsync(long id, Signal offer, Destination relay, uint clientZid, string nonce, TaskCompletionSource<uint?> joined)
    {
        var abort = _abort.Token;
        var remote = new DnsEndPoint(relay.Host, relay.Port);
        Stream? stream = null;
        HalfClosableTlsStream? tlsStream = null;
        try
        {
            uint zid;
            try
            {
                (stream, zid) = await ZephyrSession.JoinRelayAsync(_context.Dialer, relay, _options.TlsTimeout, abort).ConfigureAwait(false);
                await stream.WriteAsync(ZephyrWire.BuildBindRequest(clientZid), abort).ConfigureAwait(false);
            }
            catch (Exception e) when (e is TransportConnectException or IOException or SocketException)
            {
                joined.TrySetResult(null);
                _binding.Handler.SessionFailed(remote, $"zephyr session {id}: relay {relay}: {e.Message}");
                Answer(offer, new JObject { ["nonce"] = nonce, ["error"] = $"server cannot use relay {relay}" });
                return null;
            }
            joined.TrySetResult(zid);
            Answer(offer, new JObject { ["zid"] = zid, ["nonce"] = nonce });
            _log.LogDebug("zephyr session {Id}: relay {Relay} zid {Zid} waits for client zid {Client}", id, relay, zid, clientZid);

            var tls = new SslStream(stream, leaveInnerStreamOpen: true);
            tlsStream = new HalfClosableTlsStream(tls, stream);
            using (var limit = CancellationTokenSource.CreateLinkedTokenSource(abort))
            {
                // The relay closes us after its peer timeout if the client never binds (§4.3); this is a backstop.
                limit.CancelAfter(HandshakeLimit);
                await tls.AuthenticateAsServerAsync(PinnedTls.ServerOptions(_certificateContext, _options.ClientPins), limit.Token).ConfigureAwait(false);
            }
        }
        catch (Exception e) when (e is IOException or SocketException or OperationCanceledException or EndOfStreamException
            or ObjectDisposedException or AuthenticationException)
        {
            joined.TrySetResult(null);
            if (e is AuthenticationException) _log.LogWarning("zephyr session {Id}: TLS refused: {Error}", id, e.Message);
            _binding.Handler.SessionFailed(remote, $"zephyr session {id}: {(e is AuthenticationException ? "TLS refused" : "ended before TLS")}: {e.Message}");
            if (tlsStream is not null) await tlsStream.DisposeAsync().ConfigureAwait(false);
            else if (stream is not null) await stream.DisposeAsync().ConfigureAwait(false);
            return null;
        }
        return tlsStream;
    }

    public async Task StopAsync(CancellationToken cancellationToken)
    {
        if (!_stopping.IsCancellationRequested) _stopping.Cancel();
        await _signalLoop.ConfigureAwait(false);
        try { await Task.WhenAll(_sessions.Values).WaitAsync(cancellationToken).ConfigureAwait(false); }
        catch (OperationCanceledException)
        {
            _abort.Cancel();
            await Task.WhenAll(_sessions.Values).ConfigureAwait(false);
        }
    }

    public async ValueTask DisposeAsync()
    {
        await StopAsync(new CancellationToken(true)).ConfigureAwait(false);
        _stopping.Dispose();
        _abort.Dispose();
        _certificate.Dispose();
    }
}
