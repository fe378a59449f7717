using System.Collections.Concurrent;
using System.Net;
using System.Net.Http.Headers;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;
using Microsoft.Extensions.Logging;
using Newtonsoft.Json.Linq;
using PtHost.Contract;
using PtHost.Net;
using PtHost.Net.Tls;

namespace PtHost.Transports.Jet;

/// <summary>The server factory: generates configurations and starts <see cref="JetServerManager"/>s.</summary>
internal sealed class JetServer(TransportEnvironment context, JetServerOptions options) : IServerFactory
{
    /// <summary>A fresh server and client certificate, each side pinning the other (§7.4).</summary>
    public GeneratedConfiguration GenerateConfiguration() => PinnedTls.GenerateConfiguration("jet");

    public ValueTask<IServerManager> ListenAsync(ServerBinding binding, CancellationToken cancellationToken) => StartAsync(binding);

    public ValueTask<IServerManager> ProxyAsync(ServerBinding binding, CancellationToken cancellationToken) => StartAsync(binding);

    private ValueTask<IServerManager> StartAsync(ServerBinding binding)
    {
        if (options.ClientPins.Count == 0)
            throw new TransportOptionsException("jet server option \"clientPins\" is required: the pins of the client certificates allowed in (pthost generate-config jet)");
        if (options.Relays.Count == 0 && !options.Direct)
            throw new TransportOptionsException("jet server needs \"relay\" (the relay's REST base URL) or \"direct\" in \"kinds\"");
        if (options.Relays.Count == 0 && options.Kinds.Any(k => k is not ("direct" or "direct-tls")))
            throw new TransportOptionsException("jet server: \"kinds\" names relay candidates but \"relay\" is not set");
        // §7.4: without a configured certificate, the one kept in the state directory.
        var cert = options.Certificate ?? PinnedTls.LoadOrCreateServerCertificate(context.StateDirectory, "jet");
        return ValueTask.FromResult<IServerManager>(new JetServerManager(context, options, cert, binding));
    }

    public ValueTask DisposeAsync() => ValueTask.CompletedTask;
}

/// <summary>
/// A running jet server (spec/jet.md §7.3, server steps): per offer, an association at the relay,
/// an accept on each gathered candidate, optionally a direct candidate on its own listener; the
/// first candidate that carries a TLS session and a preamble is served, the others are closed.
/// </summary>
internal sealed class JetServerManager : IServerManager
{
    /// <summary>Offers in progress at once; further offers are dropped (and logged).</summary>
    public const int MaxPendingOffers = 1024;
    private readonly TransportEnvironment _context;
    private readonly JetServerOptions _options;
    private readonly X509Certificate2 _certificate;
    private readonly SslStreamCertificateContext _certificateContext;
    private readonly ServerBinding _binding;
    private readonly ILogger _log;
    private readonly JetSession _session;
    private readonly CancellationTokenSource _stopping = new();
    private readonly CancellationTokenSource _abort = new();
    // Offers (resent copies answered alike); those not yet settled (no session chosen, not ended) are bounded by MaxPendingOffers.
    private readonly SignalAnswers _offers;
    private readonly ConcurrentDictionary<Guid, Offer> _direct = new();
    private readonly ConcurrentDictionary<long, Task> _tasks = new();
    private readonly ISessionListener? _listener;
    private readonly Task _signalLoop;
    private static long s_ids;

    public JetServerManager(TransportEnvironment context, JetServerOptions options, X509Certificate2 certificate, ServerBinding binding)
    {
        _context = context;
        _options = options;
        _certificate = certificate;
        _certificateContext = SslStreamCertificateContext.Create(certificate, null, offline: true);
        _binding = binding;
        _log = context.LoggerFactory.CreateLogger("PtHost.Transports.Jet");
        _session = new JetSession(context.Dialer, new RelayTrust(options.RelayPins, _log));
        if (options.ApiKey is not null)
            _session.Http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", options.ApiKey);
        LocalEndPoint = binding.BindAddress;
        if (options.Direct)
        {
            _listener = binding.Handler.ListenTcp(binding.BindAddress, (socket, _) => ServeDirectAsync(socket));
            LocalEndPoint = _listener.LocalEndPoint;
        }
        string pin = PinnedTls.FormatPin(PinnedTls.Pin(certificate));
        Args = new Dictionary<string, string> { ["pin"] = pin };
        _log.LogInformation("jet server: certificate pin {Pin}; relay {Relay}; candidates {Kinds}{Direct}", pin, options.Relays.Count == 0 ? "none" : string.Join(", ", options.Relays),
            string.Join(",", options.Kinds.Order()), options.Direct ? $" (direct on {LocalEndPoint})" : "");
        _offers = new SignalAnswers(context.Signals, "jet", JetSignals.Offer, JetSignals.Answer, options.SignalTimeout, MaxPendingOffers, _log);
        _signalLoop = _offers.RunAsync<bool>(_ => (true, null), (received, _) => ServeOfferAsync(new Offer(received)), _stopping.Token);
    }

    public IPEndPoint LocalEndPoint { get; }

    public IReadOnlyDictionary<string, string> Args { get; }

    /// <summary>How long an offer's candidates wait for the client: its race may start a signal timeout late and take a TLS timeout.</summary>
    private TimeSpan OfferLifetime => _options.SignalTimeout + _options.TlsTimeout + _options.TlsTimeout;

    /// <summary>One client offer: its association and its candidate connections.</summary>
    private sealed class Offer(SignalAnswers.ReceivedOffer received)
    {
        public SignalAnswers.ReceivedOffer Received { get; } = received;
        public long Id => Received.Id;
        public Guid Association { get; set; }
        /// <summary>The offer's direct candidate ids (§7.3 step 3), each true when it is a tls:// one. Written before the answer, read after.</summary>
        public Dictionary<Guid, bool> DirectCandidates { get; } = [];
        public int DirectUsed;
        public int Claimed;
        public TaskCompletionSource Done { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public ConcurrentDictionary<int, CancellationTokenSource> Candidates { get; } = new();
        private int _next;
        public int NextCandidate() => Interlocked.Increment(ref _next);
    }

    private void Track(Task task)
    {
        long key = Interlocked.Increment(ref s_ids);
        _tasks[key] = task;
        _ = task.ContinueWith(_ => _tasks.TryRemove(key, out Task? _), TaskScheduler.Default);
    }

    /// <summary>§7.3 server steps 1–4 for one offer, then waits for its session (or the offer's lifetime) and cleans up.</summary>
    private async Task ServeOfferAsync(Offer offer)
    {
        var abort = _abort.Token;
        offer.Association = Guid.NewGuid();
        var listed = new JArray();
        var problems = new List<string>();
        var created = new List<Uri>();
        try
        {
            // §7.3 steps 1–2 at every relay at once, the same association id at each; all their candidates are raced by the client.
            var relays = await Task.WhenAll(_options.Relays.Select(relay => AcceptAtRelayAsync(offer, relay, abort))).ConfigureAwait(false);
            foreach (var (relay, wasCreated, accepted, relayProblems) in relays)
            {
                if (wasCreated) created.Add(relay);
                problems.AddRange(relayProblems);
                foreach (var (c, stream) in accepted)
                {
                    listed.Add(new JObject { ["id"] = c.Id.ToString("D"), ["url"] = c.Url.ToString().TrimEnd('/') });
                    Track(ServeCandidateAsync(offer, stream, c.Kind, new DnsEndPoint(c.Url.IdnHost, c.Url.Port)));
                }
            }
            if (_options.Direct)
            {
                // §7.3 step 3: one listener serves both direct kinds; each has its own candidate id.
                foreach (var advertised in DirectAddresses())
                {
                    foreach (bool tls in new[] { false, true })
                    {
                        if (!(tls ? _options.DirectTls : _options.DirectTcp) || listed.Count >= MaxCandidates) continue;
                        var cid = Guid.NewGuid();
                        offer.DirectCandidates[cid] = tls;
                        listed.Add(new JObject { ["id"] = cid.ToString("D"), ["url"] = $"{(tls ? "tls" : "tcp")}://{advertised}", ["direct"] = true });
                    }
                }
                _direct[offer.Association] = offer;
            }
            var answer = listed.Count > 0
                ? new JObject { ["association"] = offer.Association.ToString("D"), ["candidates"] = listed }
                : new JObject { ["error"] = "server has no usable candidate (" + string.Join("; ", problems) + ")" };
            offer.Received.Answer(answer);
            if (listed.Count == 0)
            {
                _binding.Handler.SessionFailed(null, $"jet offer {offer.Id}: {answer["error"]}");
                return;
            }
            _log.LogDebug("jet offer {Id}: association {Aid}, {Count} candidates offered", offer.Id, offer.Association, listed.Count);

            // Wait for a session to be chosen and to end; without one, the candidates go after the offer's lifetime.
            try { await offer.Done.Task.WaitAsync(OfferLifetime, abort).ConfigureAwait(false); }
            catch (TimeoutException)
            {
                if (Volatile.Read(ref offer.Claimed) == 0)
                {
                    _binding.Handler.SessionFailed(null, $"jet offer {offer.Id}: no client came within {OfferLifetime.TotalSeconds}s; candidates closed");
                    CutCandidates(offer, keep: -1);
                }
                else await offer.Done.Task.WaitAsync(abort).ConfigureAwait(false);
            }
        }
        catch (OperationCanceledException) { }
        finally
        {
            CutCandidates(offer, keep: -1);
            _direct.TryRemove(offer.Association, out _);
            await Task.WhenAll(created.Select(relay => DeleteAssociationAsync(relay, offer.Association))).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// §7.3 steps 1–2 at one relay: create the association, gather, leave out candidates off the relay's host, and accept
    /// on each remaining candidate of a kind in <c>kinds</c>. Never throws for the relay's failures: they are problems.
    /// </summary>
    private async Task<(Uri Relay, bool Created, List<(JetCandidate, Stream)> Accepted, List<string> Problems)> AcceptAtRelayAsync(Offer offer, Uri relay, CancellationToken abort)
    {
        var accepted = new List<(JetCandidate, Stream)>();
        var problems = new List<string>();
        bool created = false;
        try
        {
            var gathered = await CreateAndGatherAsync(relay, offer.Association, abort).ConfigureAwait(false);
            created = true;
            // §7.3 step 1: a candidate on another host than the relay's (or one of candidateHosts) is never dialled.
            foreach (var c in gathered.Where(c => !OnRelayHost(relay, c.Url)))
            {
                problems.Add($"{c.Kind} {c.Url.Authority}: not the relay's host");
                _log.LogWarning("jet offer {Id}: the relay {Relay} listed a {Kind} candidate on {Host}, not the relay's host nor one of candidateHosts; left out",
                    offer.Id, relay.Authority, c.Kind, c.Url.Authority);
            }
            gathered.RemoveAll(c => !OnRelayHost(relay, c.Url));
            var accepts = gathered.Where(c => _options.Kinds.Contains(c.Kind)).Select(async c =>
            {
                using var limit = CancellationTokenSource.CreateLinkedTokenSource(abort);
                limit.CancelAfter(_options.TlsTimeout);
                try
                {
                    var stream = await _session.OpenAsync(c, JetMethod.Accept, offer.Association, limit.Token).ConfigureAwait(false);
                    return (c, stream, (string?)null);
                }
                catch (Exception e) when (e is TransportConnectException or OperationCanceledException)
                {
                    return (c, (Stream?)null, (string?)$"{c.Kind} {c.Url.Authority}: {e.Message}");
                }
            }).ToList();
            foreach (var (c, stream, problem) in await Task.WhenAll(accepts).ConfigureAwait(false))
            {
                if (stream is null)
                {
                    problems.Add(problem!);
                    _log.LogInformation("jet offer {Id}: accept on {Problem}; candidate left out", offer.Id, problem);
                }
                else accepted.Add((c, stream));
            }
        }
        catch (Exception e) when (e is HttpRequestException or TransportConnectException or InvalidDataException or TaskCanceledException)
        {
            problems.Add($"relay {relay.Authority}: {e.Message}");
            _log.LogWarning("jet offer {Id}: relay {Relay}: {Error}", offer.Id, relay, e.Message);
        }
        return (relay, created, accepted, problems);
    }

    /// <summary>§7.3: whether <paramref name="candidate"/> names the relay's own host or one of <c>candidateHosts</c>.</summary>
    private bool OnRelayHost(Uri relay, Uri candidate) =>
        SameHost(relay.IdnHost, candidate.IdnHost) || _options.CandidateHosts.Any(h => SameHost(h, candidate.IdnHost));

    /// <summary>Host names compared without case (and a trailing dot); IP literals by address (IPv4-mapped as IPv4).</summary>
    internal static bool SameHost(string a, string b)
    {
        a = a.Trim('[', ']').TrimEnd('.');
        b = b.Trim('[', ']').TrimEnd('.');
        if (IPAddress.TryParse(a, out var ia) && IPAddress.TryParse(b, out var ib))
            return (ia.IsIPv4MappedToIPv6 ? ia.MapToIPv4() : ia).Equals(ib.IsIPv4MappedToIPv6 ? ib.MapToIPv4() : ib);
        return string.Equals(a, b, StringComparison.OrdinalIgnoreCase);
    }

    /// <summary>The most candidates an answer lists: what a client reads (§7.2).</summary>
    private const int MaxCandidates = 16;

    /// <summary>
    /// §7.3 step 3: where the direct candidates point — <c>directAddress</c>, else the listener's address; with
    /// <c>directInterfaces</c> and a wildcard listener, also every address of the up, non-loopback interfaces
    /// (IPv4 for 0.0.0.0, IPv4 and IPv6 for [::]; IPv6 link-local left out: it needs a scope).
    /// </summary>
    private List<Destination> DirectAddresses()
    {
        var result = new List<Destination> { _options.DirectAddress ?? new Destination(AdvertisedHost(LocalEndPoint.Address), LocalEndPoint.Port) };
        bool any4 = LocalEndPoint.Address.Equals(IPAddress.Any), any6 = LocalEndPoint.Address.Equals(IPAddress.IPv6Any);
        if (!_options.DirectInterfaces || !(any4 || any6)) return result;
        foreach (var nic in System.Net.NetworkInformation.NetworkInterface.GetAllNetworkInterfaces())
        {
            if (nic.OperationalStatus != System.Net.NetworkInformation.OperationalStatus.Up || nic.NetworkInterfaceType == System.Net.NetworkInformation.NetworkInterfaceType.Loopback) continue;
            foreach (var u in nic.GetIPProperties().UnicastAddresses)
            {
                var a = u.Address;
                if (IPAddress.IsLoopback(a) || a.IsIPv6LinkLocal || (a.AddressFamily == AddressFamily.InterNetworkV6 && !any6)) continue;
                var d = new Destination(a.ToString(), LocalEndPoint.Port);
                if (!result.Contains(d)) result.Add(d);
            }
        }
        return result;
    }

    private static string AdvertisedHost(IPAddress address)
    {
        if (address.Equals(IPAddress.Any)) return "127.0.0.1";
        if (address.Equals(IPAddress.IPv6Any)) return "::1";
        return address.ToString();
    }

    private async Task<List<JetCandidate>> CreateAndGatherAsync(Uri relay, Guid association, CancellationToken ct)
    {
        using var limit = CancellationTokenSource.CreateLinkedTokenSource(ct);
        limit.CancelAfter(_options.TlsTimeout);
        using (var created = await _session.Http.PostAsync(new Uri(relay, $"/jet/association/{association:D}"), null, limit.Token).ConfigureAwait(false))
            if (!created.IsSuccessStatusCode) throw new HttpRequestException($"POST /jet/association answered {(int)created.StatusCode}");
        using var gather = await _session.Http.PostAsync(new Uri(relay, $"/jet/gather/{association:D}"), null, limit.Token).ConfigureAwait(false);
        if (!gather.IsSuccessStatusCode) throw new HttpRequestException($"POST /jet/gather answered {(int)gather.StatusCode}");
        return ReadGatherAnswer(await gather.Content.ReadAsStringAsync(limit.Token).ConfigureAwait(false));
    }

    /// <summary>
    /// The relay's answer to <c>POST /jet/gather/{aid}</c> (spec/jet.md §5.2): its well-formed
    /// candidates (an id that is a UUID, a tcp/tls/ws/wss URL); others are left out. Throws only
    /// <see cref="InvalidDataException"/> (not a JSON object, RFC 8259 strictly, or no candidate list).
    /// </summary>
    internal static List<JetCandidate> ReadGatherAnswer(string json)
    {
        JObject body;
        try { body = StrictJson.ParseObject(json); }
        catch (FormatException e) { throw new InvalidDataException("gather answer is not a JSON object: " + e.Message, e); }
        var result = new List<JetCandidate>();
        if (body["candidates"] is not JArray list) throw new InvalidDataException("gather answer has no \"candidates\"");
        foreach (var item in list)
        {
            // An element that is not an object is skipped (indexing a JValue would throw InvalidOperationException).
            if (item is JObject c && c["id"] is { Type: JTokenType.String } id && Guid.TryParse((string)id!, out var cid)
                && c["url"] is { Type: JTokenType.String } u && Uri.TryCreate((string)u!, UriKind.Absolute, out var url)
                && url.Scheme is "tcp" or "tls" or "ws" or "wss")
                result.Add(new JetCandidate(cid, url, Direct: false));
        }
        return result;
    }

    private async Task DeleteAssociationAsync(Uri relay, Guid association)
    {
        try
        {
            using var limit = new CancellationTokenSource(TimeSpan.FromSeconds(5));
            using var _ = await _session.Http.DeleteAsync(new Uri(relay, $"/jet/association/{association:D}"), limit.Token).ConfigureAwait(false);
        }
        catch (Exception e) when (e is HttpRequestException or OperationCanceledException)
        {
            _log.LogDebug("jet: DELETE association {Aid}: {Error}", association, e.Message);
        }
    }

    private static void CutCandidates(Offer offer, int keep)
    {
        foreach (var (key, cts) in offer.Candidates)
        {
            if (key == keep) continue;
            try { cts.Cancel(); }
            catch (ObjectDisposedException) { }
        }
    }

    /// <summary>
    /// One candidate connection (§7.3 server step 5): a relay's error packet is logged; otherwise
    /// TLS 1.3 (pinned client) and the preamble. The first candidate to deliver a preamble is the
    /// session; the others are closed.
    /// </summary>
    private async Task ServeCandidateAsync(Offer offer, Stream stream, string kind, EndPoint remote)
    {
        int key = offer.NextCandidate();
        using var cut = CancellationTokenSource.CreateLinkedTokenSource(_abort.Token);
        offer.Candidates[key] = cut;
        HalfClosableTlsStream? tlsStream = null;
        bool handedOver = false;
        try
        {
            SessionRequest request;
            using (var limit = CancellationTokenSource.CreateLinkedTokenSource(cut.Token))
            {
                limit.CancelAfter(OfferLifetime);
                byte[] first = new byte[1];
                if (await stream.ReadAsync(first, limit.Token).ConfigureAwait(false) == 0) return;
                if (first[0] == JetWire.Signature[0])
                {
                    // A JET packet before the client's TLS (whose first byte is 0x16) is the relay's answer to our accept
                    // (§7.3 step 5): 200 (the seed's §2.2.3.1.1), after which the client's bytes follow, or a refusal and a close.
                    var response = await JetSession.ReadResponseAsync(new PrefixedStream(first, stream), limit.Token).ConfigureAwait(false);
                    if (response.Status != 200)
                    {
                        _log.LogInformation("jet offer {Id}: relay refused the {Kind} accept with {Status}", offer.Id, kind, response.Status);
                        return;
                    }
                    _log.LogDebug("jet offer {Id}: the {Kind} accept answered 200 by relay instance {Instance}", offer.Id, kind, response.Header("Jet-Instance") ?? "(none named)");
                    first = new byte[1];
                    if (await stream.ReadAsync(first, limit.Token).ConfigureAwait(false) == 0) return;
                    if (first[0] == JetWire.Signature[0])
                    {
                        _log.LogInformation("jet offer {Id}: a second JET packet on the {Kind} candidate; closed", offer.Id, kind);
                        return;
                    }
                }
                var inner = new PrefixedStream(first, stream);
                var tls = new SslStream(inner, leaveInnerStreamOpen: true);
                tlsStream = new HalfClosableTlsStream(tls, inner);
                await tls.AuthenticateAsServerAsync(PinnedTls.ServerOptions(_certificateContext, _options.ClientPins), limit.Token).ConfigureAwait(false);
                // The first candidate to deliver a preamble is the session (§7.3 step 5): jet reads it itself.
                try { request = await SessionPreamble.ReadAsync(tls, limit.Token).ConfigureAwait(false); }
                catch (EndOfStreamException)
                {
                    _log.LogDebug("jet offer {Id}: {Kind} candidate closed by the client (lost the race)", offer.Id, kind);
                    return;
                }
                catch (InvalidDataException)
                {
                    _log.LogInformation("jet offer {Id}: not a preamble inside TLS on the {Kind} candidate; closed", offer.Id, kind);
                    return;
                }
            }
            if (Interlocked.CompareExchange(ref offer.Claimed, 1, 0) != 0)
            {
                _log.LogWarning("jet offer {Id}: a second preamble on the {Kind} candidate; closed", offer.Id, kind);
                return;
            }
            offer.Received.Settle();
            CutCandidates(offer, keep: key);
            _log.LogDebug("jet offer {Id}: session on the {Kind} candidate", offer.Id, kind);
            handedOver = true;
            await _binding.Handler.ServeAsync(tlsStream, remote, request, _abort.Token).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or SocketException or OperationCanceledException or EndOfStreamException
            or ObjectDisposedException or AuthenticationException or InvalidDataException)
        {
            // A candidate that lost the race may be closed mid-handshake: only a refusal with no session chosen is news.
            if (e is AuthenticationException && Volatile.Read(ref offer.Claimed) == 0) _log.LogWarning("jet offer {Id}: TLS refused on the {Kind} candidate: {Error}", offer.Id, kind, e.Message);
            else _log.LogDebug("jet offer {Id}: {Kind} candidate ended: {Error}", offer.Id, kind, e.Message);
        }
        finally
        {
            offer.Candidates.TryRemove(key, out _);
            if (handedOver) offer.Done.TrySetResult();
            else if (tlsStream is not null) await tlsStream.DisposeAsync().ConfigureAwait(false);
            else await stream.DisposeAsync().ConfigureAwait(false);
            if (Volatile.Read(ref offer.Claimed) != 0 && !handedOver && offer.Candidates.IsEmpty) offer.Done.TrySetResult();
        }
    }

    // ---- §7.3 direct candidates ----

    /// <summary>
    /// A client's connect on the direct listener: only a live offer's association and its direct candidate of the
    /// connection's kind are accepted (404 otherwise). A first byte 0x16 is a TLS direct candidate (§7.3): TLS with the
    /// server's own certificate first, the JET connect inside.
    /// </summary>
    private async Task ServeDirectAsync(Socket socket)
    {
        var remote = socket.RemoteEndPoint!;
        Stream stream = new NetworkStream(socket, ownsSocket: true);
        bool handedOver = false;
        try
        {
            using var limit = CancellationTokenSource.CreateLinkedTokenSource(_abort.Token);
            limit.CancelAfter(_options.TlsTimeout);
            byte[] first = new byte[1];
            if (await stream.ReadAsync(first, limit.Token).ConfigureAwait(false) == 0) return;
            bool tls = first[0] == 0x16 && _options.DirectTls;
            stream = new PrefixedStream(first, stream);
            if (tls)
            {
                var ssl = new SslStream(stream, leaveInnerStreamOpen: false);
                var outer = new HalfClosableTlsStream(ssl, stream);
                stream = outer;
                await ssl.AuthenticateAsServerAsync(new SslServerAuthenticationOptions
                {
                    ServerCertificateContext = _certificateContext,
                    EnabledSslProtocols = SslProtocols.Tls13,
                }, limit.Token).ConfigureAwait(false);
            }
            var (status, request, problem, early) = await JetRelay.ReadRequestAsync(stream, limit.Token).ConfigureAwait(false);
            Offer? offer = null;
            if (request is not null)
            {
                if (request.Method != JetMethod.Connect || request.IsV1) (status, problem) = (400, "the direct candidate takes v2 connect only");
                else if (!_direct.TryGetValue(request.Association, out offer) || !offer.DirectCandidates.TryGetValue(request.Candidate, out bool isTls) || isTls != tls)
                    (status, problem) = (404, $"unknown association {request.Association} or candidate {request.Candidate}");
                else if (Interlocked.Exchange(ref offer.DirectUsed, 1) != 0) (status, problem) = (400, "the direct candidate is already connected");
                else status = 200;
            }
            if (status != 200)
            {
                _log.LogInformation("jet direct {Remote}: {Status}: {Problem}", remote, status, problem);
                await stream.WriteAsync(JetWire.BuildPacket(JetWire.BuildResponse(status, new KeyValuePair<string, string>("Connection", "Close"))), limit.Token).ConfigureAwait(false);
                PtHost.Net.Relay.ShutdownWrite(stream);
                return;
            }
            await stream.WriteAsync(JetWire.BuildPacket(JetWire.BuildResponse(200, new("Jet-Version", "2"),
                new("Jet-Association", request!.Association.ToString("D")), new("Jet-Candidate", request.Candidate.ToString("D")))), limit.Token).ConfigureAwait(false);
            handedOver = true;
            Stream s = early.Length > 0 ? new PrefixedStream(early, stream) : stream;
            await ServeCandidateAsync(offer!, s, tls ? "direct-tls" : "direct", remote).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or SocketException or OperationCanceledException or ObjectDisposedException or AuthenticationException)
        {
            _log.LogDebug("jet direct {Remote}: {Error}", remote, e.Message);
        }
        finally
        {
            if (!handedOver) await stream.DisposeAsync().ConfigureAwait(false);
        }
    }

    public async Task StopAsync(CancellationToken cancellationToken)
    {
        if (!_stopping.IsCancellationRequested) _stopping.Cancel();
        await _signalLoop.ConfigureAwait(false);
        // Direct connections are the listener's to drain; the session each one carries watches _abort.
        var direct = _listener?.StopAsync(cancellationToken) ?? Task.CompletedTask;
        try { await Task.WhenAll(Task.WhenAll(_offers.Serving), Task.WhenAll(_tasks.Values), direct).WaitAsync(cancellationToken).ConfigureAwait(false); }
        catch (OperationCanceledException)
        {
            _abort.Cancel();
            await Task.WhenAll(_offers.Serving).ConfigureAwait(false);
            await Task.WhenAll(_tasks.Values).ConfigureAwait(false);
            await direct.ConfigureAwait(false);
        }
    }

    public async ValueTask DisposeAsync()
    {
        await StopAsync(new CancellationToken(true)).ConfigureAwait(false);
        if (_listener is not null) await _listener.DisposeAsync().ConfigureAwait(false);
        _stopping.Dispose();
        _abort.Dispose();
        _session.Dispose();
        _certificate.Dispose();
    }
}
