using System.Net;
using System.Net.Http.Headers;
using System.Net.Security;
using System.Security.Cryptography;
using Microsoft.Extensions.Logging;
using Newtonsoft.Json.Linq;
using PtHost.Contract;
using PtHost.Net.Tls;

namespace PtHost.Net.Signals;

/// <summary>Where a route goes: the rendezvous URL, the secret's keys, and an optional pin of the rendezvous's HTTPS certificate (spec/rendezvous.md §7).</summary>
public sealed record RendezvousEndpoint(Uri Url, RendezvousKeys Keys, byte[]? Pin)
{
    /// <summary>Reads the three values; throws <see cref="FormatException"/> naming the one that is wrong (<c>rendezvous</c>, <c>secret</c>, <c>rendezvous-pin</c>).</summary>
    public static RendezvousEndpoint Parse(string url, string secret, string? pin)
    {
        if (!Uri.TryCreate(url, UriKind.Absolute, out var uri) || uri.Scheme is not ("http" or "https") || uri.Query.Length > 0 || uri.Fragment.Length > 0 || uri.UserInfo.Length > 0)
            throw new FormatException($"rendezvous: \"{url}\" is not an http:// or https:// URL without query, fragment or user");
        RendezvousKeys keys;
        try { keys = RendezvousKeys.Parse(secret); }
        catch (FormatException e) { throw new FormatException("secret: " + e.Message); }
        byte[]? pinBytes = null;
        if (pin is not null)
        {
            if (uri.Scheme != "https") throw new FormatException("rendezvous-pin: only with an https:// rendezvous");
            pinBytes = PinnedTls.ParsePin(pin) ?? throw new FormatException("rendezvous-pin: must be 64 hex digits");
        }
        return new RendezvousEndpoint(uri, keys, pinBytes);
    }

    /// <summary>The key two connections share a route under: same URL, same secret, same pin.</summary>
    public string RouteKey => $"{Url.AbsoluteUri}|{Keys.Channel}|{(Pin is null ? "" : Convert.ToHexStringLower(Pin))}";
}

/// <summary>
/// The host's signal route through a rendezvous (spec/rendezvous.md §7): every message a
/// <see cref="SignalEnvelopes"/> writes is sealed and posted to the peer's mailbox; a long poll
/// receives the process's own mailbox and hands what opens to <see cref="SignalEnvelopes.Deliver"/>,
/// which keeps the envelope rules (ids, duplicates, expiry: spec/ipc.md §6.4).
/// </summary>
public sealed class RendezvousRoute : IAsyncDisposable
{
    /// <summary>How long one receive asks the rendezvous to wait (§7.2).</summary>
    public static readonly TimeSpan PollWait = TimeSpan.FromSeconds(25);
    private const int MaxPostsInFlight = 64;

    private readonly RendezvousEndpoint _endpoint;
    private readonly bool _server;
    private readonly ILogger _log;
    private readonly HttpClient _http;
    private readonly CancellationTokenSource _stop = new();
    private readonly string _base;
    private SignalEnvelopes? _envelopes;
    private Task? _poller;
    private int _postsInFlight;
    private int _disposed;

    public RendezvousRoute(RendezvousEndpoint endpoint, bool server, INetworkDialer? dialer, ILogger log)
    {
        _endpoint = endpoint;
        _server = server;
        _log = log;
        _base = endpoint.Url.AbsoluteUri.TrimEnd('/') + "/v1/" + endpoint.Keys.Channel + "/";
        var handler = new SocketsHttpHandler
        {
            PooledConnectionIdleTimeout = TimeSpan.FromSeconds(50),
            ConnectTimeout = TimeSpan.FromSeconds(10),
            UseProxy = false,
            AllowAutoRedirect = false,
            UseCookies = false,
        };
        if (dialer is not null)
            handler.ConnectCallback = async (ctx, ct) => await dialer.ConnectTcpAsync(new Destination(ctx.DnsEndPoint.Host, ctx.DnsEndPoint.Port), ct).ConfigureAwait(false);
        if (endpoint.Pin is { } pin)
            handler.SslOptions = new SslClientAuthenticationOptions
            {
                RemoteCertificateValidationCallback = (_, cert, _, _) => cert is not null && CryptographicOperations.FixedTimeEquals(PinnedTls.Pin(cert), pin),
            };
        _http = new HttpClient(handler) { Timeout = PollWait + TimeSpan.FromSeconds(15) };
        _http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", endpoint.Keys.TokenText);
    }

    /// <summary>The channel id (§3.2).</summary>
    public string Channel => _endpoint.Keys.Channel;

    /// <summary>This process's mailbox: <c>s</c> for a server, <c>c/&lt;cid&gt;</c> for a client (§2.1).</summary>
    private string OwnMailbox => _server ? "s" : "c/" + _envelopes!.InstanceId;

    /// <summary>Starts receiving for <paramref name="envelopes"/>, whose writes go to <see cref="Write"/>.</summary>
    public void Start(SignalEnvelopes envelopes)
    {
        _envelopes = envelopes;
        _poller = Task.Run(() => PollAsync(_stop.Token));
    }

    /// <summary>
    /// Seals and posts one payload (SignalEnvelopes' writer). A server's message goes to the client its
    /// <c>cid</c> names, or to the broadcast list without one (§2.1); a client's, to the server.
    /// </summary>
    public void Write(string transport, string payload)
    {
        string mailbox = "s";
        if (_server)
        {
            string? cid = null;
            try { cid = StrictJson.ParseObject(payload)["cid"] is { Type: JTokenType.String } c ? (string)c! : null; }
            catch (FormatException) { }
            mailbox = cid is null ? "b" : "c/" + cid;
        }
        byte[] sealedMessage = _endpoint.Keys.Seal(mailbox, transport, payload);
        if (Interlocked.Increment(ref _postsInFlight) > MaxPostsInFlight)
        {
            Interlocked.Decrement(ref _postsInFlight);
            _log.LogWarning("rendezvous: {Max} messages already in flight; {Transport} message not sent", MaxPostsInFlight, transport);
            return;
        }
        _ = PostAsync(mailbox, sealedMessage, transport);
    }

    private async Task PostAsync(string mailbox, byte[] sealedMessage, string transport)
    {
        try
        {
            // A message is worth three tries (§7.2): a rendezvous restarting, a connection cut; transports resend anyway.
            for (int attempt = 0; attempt < 3 && !_stop.IsCancellationRequested; attempt++)
            {
                if (attempt > 0) await Task.Delay(TimeSpan.FromMilliseconds(500 << attempt), _stop.Token).ConfigureAwait(false);
                try
                {
                    using var content = new ByteArrayContent(sealedMessage);
                    content.Headers.ContentType = new MediaTypeHeaderValue("application/octet-stream");
                    using var response = await _http.PostAsync(_base + mailbox, content, _stop.Token).ConfigureAwait(false);
                    if (response.IsSuccessStatusCode) return;
                    _log.LogWarning("rendezvous: {Transport} message refused: HTTP {Status}", transport, (int)response.StatusCode);
                    if ((int)response.StatusCode is not (429 or >= 500)) return;
                }
                catch (HttpRequestException e) { _log.LogInformation("rendezvous: posting a {Transport} message failed: {Error}", transport, e.Message); }
                catch (TaskCanceledException) when (!_stop.IsCancellationRequested) { _log.LogInformation("rendezvous: posting a {Transport} message timed out", transport); }
            }
        }
        catch (OperationCanceledException) { }
        catch (ObjectDisposedException) { } // the route closed meanwhile
        finally { Interlocked.Decrement(ref _postsInFlight); }
    }

    private async Task PollAsync(CancellationToken ct)
    {
        var backoff = TimeSpan.FromMilliseconds(250);
        long after = 0;
        bool failing = false;
        string mailbox = OwnMailbox;
        string query = string.Create(System.Globalization.CultureInfo.InvariantCulture, $"?wait={PollWait.TotalSeconds:0}");
        while (!ct.IsCancellationRequested)
        {
            try
            {
                string url = _base + mailbox + query + (_server ? "" : string.Create(System.Globalization.CultureInfo.InvariantCulture, $"&after={after}"));
                using var response = await _http.GetAsync(url, HttpCompletionOption.ResponseContentRead, ct).ConfigureAwait(false);
                if (response.StatusCode is HttpStatusCode.OK or HttpStatusCode.NoContent)
                {
                    if (failing) _log.LogInformation("rendezvous: receiving again");
                    failing = false;
                    backoff = TimeSpan.FromMilliseconds(250);
                    if (response.Headers.TryGetValues("Rendezvous-Seq", out var seq) && long.TryParse(seq.First(), out long s) && s > after) after = s;
                    if (response.StatusCode == HttpStatusCode.OK) Deliver(mailbox, await response.Content.ReadAsByteArrayAsync(ct).ConfigureAwait(false));
                    continue;
                }
                Fail($"HTTP {(int)response.StatusCode}");
            }
            catch (OperationCanceledException) when (ct.IsCancellationRequested) { return; }
            catch (HttpRequestException e) { Fail(e.Message); }
            catch (TaskCanceledException) { Fail("timed out"); }
            try { await Task.Delay(backoff, ct).ConfigureAwait(false); }
            catch (OperationCanceledException) { return; }
            backoff = TimeSpan.FromTicks(Math.Min(backoff.Ticks * 2, TimeSpan.FromSeconds(4).Ticks));
        }

        void Fail(string why)
        {
            if (!failing) _log.LogWarning("rendezvous: receiving failed ({Why}); retrying", why);
            failing = true;
        }
    }

    /// <summary>§7.3: every frame is opened for this mailbox (a client also tries the broadcast list's); what does not open is dropped and logged.</summary>
    private void Deliver(string mailbox, byte[] body)
    {
        foreach (var frame in RendezvousKeys.ReadFrames(body))
        {
            var opened = _endpoint.Keys.Open(mailbox, frame.Span, out string? why);
            if (opened is null && !_server) opened = _endpoint.Keys.Open("b", frame.Span, out _);
            if (opened is not { } m)
            {
                _log.LogWarning("rendezvous: message dropped: {Why}", why);
                continue;
            }
            try { _envelopes!.Deliver(m.Transport, m.Payload); }
            catch (Exception e) when (e is not OutOfMemoryException) { _log.LogError(e, "rendezvous: message could not be handled"); }
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        await _stop.CancelAsync().ConfigureAwait(false);
        if (_poller is not null)
        {
            try { await _poller.ConfigureAwait(false); }
            catch (OperationCanceledException) { }
        }
        _http.Dispose(); // _stop stays undisposed: posts in flight may still read its token
    }
}
