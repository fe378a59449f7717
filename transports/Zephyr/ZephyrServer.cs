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
    /// <summary>Offers in progress at once; further offers are dropped (and logged).</summary>
    public const int MaxPendingSessions = 4096;
    private readonly TransportEnvironment _context;
    private readonly ZephyrServerOptions _options;
    private readonly X509Certificate2 _certificate;
    private readonly SslStreamCertificateContext _certificateContext;
    private readonly ServerBinding _binding;
    private readonly ILogger _log;
    private readonly CancellationTokenSource _stopping = new();
    private readonly CancellationTokenSource _abort = new();
    private readonly SignalAnswers _offers;
    private readonly Task _signalLoop;

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
        // §7.3 server step 1: resent offers, at most MaxPendingSessions sessions in progress.
        _offers = new SignalAnswers(context.Signals, "zephyr", ZephyrSignals.Offer, ZephyrSignals.Answer, options.SignalTimeout, MaxPendingSessions, _log);
        _signalLoop = _offers.RunAsync<(uint, Destination)>(ReadOffer, (offer, read) => ServeAsync(offer, read.Item2, read.Item1), _stopping.Token);
    }

    public IPEndPoint LocalEndPoint { get; }

    public IReadOnlyDictionary<string, string> Args { get; }

    /// <summary>How long a session may wait for its client's bind and TLS handshake: the relay's peer timeout plus the TLS timeout.</summary>
    private TimeSpan HandshakeLimit => ZephyrDefaults.RelayPeerTimeout + _options.TlsTimeout;

    /// <summary>The client's zid and the relay an offer names (§7.2: {"nonce", "zid", "relay"}), or the problem, naming the key ("body.zid: ...").</summary>
    private ((uint Zid, Destination Relay) Value, string? Problem) ReadOffer(Signal s)
    {
        uint zid;
        Destination relay;
        try
        {
            var body = OptionsReader.For(s.Body, "body");
            zid = (uint)body.Require("zid").Integer("zid", 0, ZephyrWire.MaxZid)!.Value;
            relay = body.Require("relay").Destination("relay")!;
        }
        catch (OptionsException e)
        {
            return (default, e.Message);
        }
        string named = relay.ToString();
        // §8.6: an instance's direct address listed in relayInstances is allowed too (a client that skips the balancer).
        if (_options.Relays is { } allowed && !allowed.Any(a => string.Equals(a.ToString(), named, StringComparison.OrdinalIgnoreCase))
            && _options.RelayInstances?.Lists(relay) != true)
            return (default, $"relay {named} is not one of this server's \"relays\"");
        return ((zid, relay), null);
    }

    /// <summary>
    /// One offer (§7.3 server steps): join the relay, bind to the client's zid, answer, run TLS as the
    /// server; the stream then goes to the host, which reads the preamble and serves the session.
    /// </summary>
    private async Task ServeAsync(SignalAnswers.ReceivedOffer offer, Destination relay, uint clientZid)
    {
        var abort = _abort.Token;
        long id = offer.Id;
        var remote = new DnsEndPoint(relay.Host, relay.Port);
        Stream? stream = null;
        HalfClosableTlsStream? tlsStream = null;
        try
        {
            uint zid;
            try
            {
                (stream, zid) = await JoinAsync(id, relay, clientZid, abort).ConfigureAwait(false);
                await stream.WriteAsync(ZephyrWire.BuildBindRequest(clientZid), abort).ConfigureAwait(false);
            }
            catch (Exception e) when (e is TransportConnectException or IOException or SocketException)
            {
                _binding.Handler.SessionFailed(remote, $"zephyr session {id}: relay {relay}: {e.Message}");
                offer.Answer(new JObject { ["error"] = $"server cannot use relay {relay}" });
                return;
            }
            offer.Answer(new JObject { ["zid"] = zid });
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
            if (e is AuthenticationException) _log.LogWarning("zephyr session {Id}: TLS refused: {Error}", id, e.Message);
            _binding.Handler.SessionFailed(remote, $"zephyr session {id}: {(e is AuthenticationException ? "TLS refused" : "ended before TLS")}: {e.Message}");
            if (tlsStream is not null) await tlsStream.DisposeAsync().ConfigureAwait(false);
            else if (stream is not null) await stream.DisposeAsync().ConfigureAwait(false);
            return;
        }
        // Established: no longer "in progress" (spec/zephyr.md §7.3). Counting it until it ended capped a server at
        // 4,096 concurrent sessions (issue 24: 9,000 sessions through the relay).
        offer.Settle();
        await _binding.Handler.ServeAsync(tlsStream, remote, abort).ConfigureAwait(false);
    }

    /// <summary>
    /// §7.3 server step 2 with §8.6 (direct joins): when <c>relayInstances</c> names the instance whose tag the client's zid
    /// carries, join that instance directly so the pair meets there without the link; if it cannot be joined within
    /// <c>tlsTimeout</c>, the relay the offer named (the balancer).
    /// </summary>
    private async Task<(Stream, uint)> JoinAsync(long id, Destination relay, uint clientZid, CancellationToken abort)
    {
        int tag = ZephyrLink.Tag(clientZid);
        if (_options.RelayInstances?.Direct(relay, tag) is { } direct)
        {
            try
            {
                var joined = await ZephyrSession.JoinRelayAsync(_context.Dialer, direct, _options.TlsTimeout, abort).ConfigureAwait(false);
                if (ZephyrLink.Tag(joined.Zid) != tag)
                    _log.LogDebug("zephyr session {Id}: relayInstances lists instance {Tag} at {Direct}, but it assigned a zid of instance {Got}", id, tag, direct, ZephyrLink.Tag(joined.Zid));
                return joined;
            }
            catch (Exception e) when (e is TransportConnectException or IOException or SocketException
                || (e is OperationCanceledException && !abort.IsCancellationRequested))
            {
                _log.LogDebug("zephyr session {Id}: instance {Tag} at {Direct} not joined ({Error}); through {Relay}", id, tag, direct, e.Message, relay);
            }
        }
        return await ZephyrSession.JoinRelayAsync(_context.Dialer, relay, _options.TlsTimeout, abort).ConfigureAwait(false);
    }

    public async Task StopAsync(CancellationToken cancellationToken)
    {
        if (!_stopping.IsCancellationRequested) _stopping.Cancel();
        await _signalLoop.ConfigureAwait(false);
        try { await Task.WhenAll(_offers.Serving).WaitAsync(cancellationToken).ConfigureAwait(false); }
        catch (OperationCanceledException)
        {
            _abort.Cancel();
            await Task.WhenAll(_offers.Serving).ConfigureAwait(false);
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
