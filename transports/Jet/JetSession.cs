using System.Net.Security;
using System.Security.Cryptography.X509Certificates;
using System.Net.Sockets;
using System.Net.WebSockets;
using System.Security.Authentication;
using Microsoft.Extensions.Logging;
using PtHost.Contract;
using PtHost.Net;
using PtHost.Net.Tls;

namespace PtHost.Transports.Jet;

/// <summary>One candidate as the answer lists it (spec/jet.md §7.2).</summary>
internal sealed record JetCandidate(Guid Id, Uri Url, bool Direct)
{
    public string Kind => Direct ? (Url.Scheme == "tls" ? "direct-tls" : "direct") : Url.Scheme;
}

/// <summary>
/// How a relay's own certificate is checked (spec/jet.md §7.4), by server and client alike: a host named in the pins must
/// present the pinned certificate; any other host a certificate that the system's CAs vouch for under that name (SNI = the
/// host; on Linux the OpenSSL store, which <c>SSL_CERT_FILE</c> / <c>SSL_CERT_DIR</c> redirect). A refusal says why.
/// </summary>
internal sealed class RelayTrust(IReadOnlyDictionary<string, byte[]> pins, ILogger? log = null)
{
    /// <summary>Null when <paramref name="certificate"/> is acceptable for <paramref name="host"/>; else why not, in words.</summary>
    public string? Refusal(string host, X509Certificate? certificate, X509Chain? chain, SslPolicyErrors errors)
    {
        host = host.Trim('[', ']');
        if (certificate is null) return $"relay {host} presented no certificate";
        if (pins.TryGetValue(host, out var pin))
            return PinnedTls.Matches(certificate, [pin]) ? null : $"relay certificate of {host} does not match its pin in relayPins";
        if (errors == SslPolicyErrors.None) return null;
        var reasons = new List<string>();
        if (errors.HasFlag(SslPolicyErrors.RemoteCertificateNameMismatch)) reasons.Add($"it is not issued for the name {host}");
        if (errors.HasFlag(SslPolicyErrors.RemoteCertificateChainErrors))
        {
            var status = chain?.ChainStatus.Aggregate(X509ChainStatusFlags.NoError, (a, s) => a | s.Status) ?? X509ChainStatusFlags.NoError;
            var c2 = certificate as X509Certificate2;
            if (status.HasFlag(X509ChainStatusFlags.NotTimeValid))
                reasons.Add(c2 is null ? "it has expired or is not valid yet" : $"it is valid only from {c2.NotBefore.ToUniversalTime():yyyy-MM-dd HH:mm} to {c2.NotAfter.ToUniversalTime():yyyy-MM-dd HH:mm} UTC (expired or not valid yet)");
            if ((status & (X509ChainStatusFlags.UntrustedRoot | X509ChainStatusFlags.PartialChain)) != 0)
                reasons.Add("no CA this system trusts issued it (the system's CA store, or SSL_CERT_FILE / SSL_CERT_DIR; or pin it in relayPins)");
            var other = status & ~(X509ChainStatusFlags.NotTimeValid | X509ChainStatusFlags.UntrustedRoot | X509ChainStatusFlags.PartialChain);
            if (other != X509ChainStatusFlags.NoError || reasons.Count == 0) reasons.Add($"its chain does not verify ({other})");
        }
        if (reasons.Count == 0) reasons.Add(errors.ToString());
        return $"relay certificate of {host} refused: {string.Join("; ", reasons)}";
    }

    /// <summary>The callback for a TLS connection to <paramref name="host"/>; a refusal goes to <paramref name="refused"/>.</summary>
    public RemoteCertificateValidationCallback For(string host, Action<string> refused) => (_, cert, chain, errors) =>
    {
        if (Refusal(host, cert, chain, errors) is not { } why) return true;
        refused(why);
        return false;
    };

    /// <summary>The callback for SocketsHttpHandler (REST, ws, wss): the host is the stream's SNI name or the request's host; refusals are logged.</summary>
    public bool AcceptsHttp(object sender, X509Certificate? certificate, X509Chain? chain, SslPolicyErrors errors)
    {
        string host = sender switch
        {
            SslStream ssl => ssl.TargetHostName,
            HttpRequestMessage m => m.RequestUri?.IdnHost ?? "",
            _ => "",
        };
        if (Refusal(host, certificate, chain, errors) is not { } why) return true;
        log?.LogWarning("jet: {Reason}", why);
        return false;
    }
}

/// <summary>
/// The step both peers share (spec/jet.md §7.3): opening a candidate as acceptor or connector
/// through the host's dialer. The TLS of §7.4 is <see cref="PtHost.Net.Tls.PinnedTls"/>.
/// </summary>
internal sealed class JetSession : IDisposable
{
    private readonly INetworkDialer _dialer;
    private readonly SocketsHttpHandler _handler;
    private readonly HttpMessageInvoker _invoker;

    private readonly RelayTrust _trust;
    private readonly byte[]? _serverPin;

    /// <param name="serverPin">The client's: a TLS direct candidate (§7.3) must present the pinned server certificate.</param>
    public JetSession(INetworkDialer dialer, RelayTrust trust, byte[]? serverPin = null)
    {
        _dialer = dialer;
        _trust = trust;
        _serverPin = serverPin;
        _handler = new SocketsHttpHandler
        {
            // Every connection, REST and WebSocket alike, goes through the host's dialer (upstream proxy, bind address).
            ConnectCallback = async (ctx, ct) => await dialer.ConnectTcpAsync(new Destination(ctx.DnsEndPoint.Host, ctx.DnsEndPoint.Port), ct).ConfigureAwait(false),
            // §7.4: the relay's certificate is checked by the trust given (pins per host, else system CAs with SNI).
            SslOptions = new SslClientAuthenticationOptions { RemoteCertificateValidationCallback = trust.AcceptsHttp },
            PooledConnectionIdleTimeout = TimeSpan.FromSeconds(30),
        };
        _invoker = new HttpMessageInvoker(_handler, disposeHandler: false);
        Http = new HttpClient(_handler, disposeHandler: false) { Timeout = TimeSpan.FromSeconds(30) };
    }

    /// <summary>For the relay's REST API.</summary>
    public HttpClient Http { get; }

    /// <summary>
    /// Opens <paramref name="candidate"/> for <paramref name="method"/> (accept or connect) and returns the
    /// byte stream. A connect waits for the 200 (and checks a <c>Jet-Candidate</c> header when one is sent,
    /// requires it from a direct candidate); an accept returns as soon as its request is written.
    /// Throws <see cref="TransportConnectException"/>.
    /// </summary>
    public async Task<Stream> OpenAsync(JetCandidate candidate, JetMethod method, Guid association, CancellationToken ct)
    {
        var url = candidate.Url;
        if (url.Scheme is "ws" or "wss")
        {
            var ws = new ClientWebSocket();
            try
            {
                await ws.ConnectAsync(new Uri(url, $"/jet/{JetWire.MethodName(method)}/{association:D}/{candidate.Id:D}"), _invoker, ct).ConfigureAwait(false);
                return new JetWebSocketStream(ws);
            }
            catch (Exception e) when (e is WebSocketException or HttpRequestException or IOException)
            {
                ws.Dispose();
                throw new TransportConnectException(ConnectFailure.HostUnreachable, $"{url.Scheme} candidate {url.Authority}: {e.Message}", e);
            }
            catch
            {
                ws.Dispose();
                throw;
            }
        }

        // The server answers the offer as soon as its accept packets are written, so a connect can reach the
        // relay before the accept it pairs with: 400 "not accepted yet". It is retried on a new connection
        // (20 ms, doubling to 500 ms) until ct — the caller's tlsTimeout — ends (spec/jet.md §7.3).
        for (var delay = TimeSpan.FromMilliseconds(20); ; delay = TimeSpan.FromTicks(Math.Min(delay.Ticks * 2, TimeSpan.FromMilliseconds(500).Ticks)))
        {
            var stream = await OpenBinaryAsync(candidate, method, association, ct).ConfigureAwait(false);
            if (stream is not null) return stream;
            try { await Task.Delay(delay, ct).ConfigureAwait(false); }
            catch (OperationCanceledException)
            {
                throw new TransportConnectException(ConnectFailure.HostUnreachable, $"{candidate.Kind} candidate {url.Authority} answered 400 until the time ran out");
            }
        }
    }

    /// <summary>One attempt on a binary (tcp, tls) candidate; null when a connect was answered 400 (not accepted yet).</summary>
    private async Task<Stream?> OpenBinaryAsync(JetCandidate candidate, JetMethod method, Guid association, CancellationToken ct)
    {
        var url = candidate.Url;
        var destination = new Destination(url.IdnHost, url.Port);
        var tcp = await _dialer.ConnectTcpAsync(destination, ct).ConfigureAwait(false);
        Stream stream = tcp;
        try
        {
            if (tcp is NetworkStream ns) ns.Socket.NoDelay = true;
            if (url.Scheme == "tls")
            {
                var ssl = new SslStream(tcp, leaveInnerStreamOpen: false);
                stream = new HalfClosableTlsStream(ssl, tcp);
                string? refusal = null;
                try
                {
                    await ssl.AuthenticateAsClientAsync(new SslClientAuthenticationOptions
                    {
                        TargetHost = url.IdnHost,
                        // A TLS direct candidate is the server itself: its pinned certificate (§7.3); a relay: the relay trust (§7.4).
                        RemoteCertificateValidationCallback = candidate.Direct && _serverPin is { } pin
                            ? (_, cert, _, _) =>
                            {
                                if (PinnedTls.Matches(cert, [pin])) return true;
                                refusal = "the direct candidate's certificate is not the pinned server's (serverPin)";
                                return false;
                            }
                            : _trust.For(url.IdnHost, why => refusal = why),
                        EnabledSslProtocols = SslProtocols.Tls12 | SslProtocols.Tls13,
                    }, ct).ConfigureAwait(false);
                }
                catch (AuthenticationException e) when (refusal is not null)
                {
                    throw new AuthenticationException(refusal, e);
                }
            }
            await stream.WriteAsync(JetWire.BuildPacket(JetWire.BuildRequest(method, association, candidate.Id, url.Authority)), ct).ConfigureAwait(false);
            if (method == JetMethod.Connect)
            {
                var response = await ReadResponseAsync(stream, ct).ConfigureAwait(false);
                if (response.Status == 400)
                {
                    await stream.DisposeAsync().ConfigureAwait(false);
                    return null;
                }
                if (response.Status != 200)
                    throw new TransportConnectException(ConnectFailure.HostUnreachable, $"{candidate.Kind} candidate {url.Authority} answered {response.Status}");
                string? named = response.Header("Jet-Candidate");
                if ((candidate.Direct && named is null) || (named is not null && (!Guid.TryParse(named, out var cid) || cid != candidate.Id)))
                    throw new TransportConnectException(ConnectFailure.General, $"{candidate.Kind} candidate {url.Authority} answered for another candidate ({named ?? "none named"})");
            }
            return stream;
        }
        catch (Exception e) when (e is IOException or SocketException or AuthenticationException or EndOfStreamException or InvalidDataException)
        {
            await stream.DisposeAsync().ConfigureAwait(false);
            throw new TransportConnectException(ConnectFailure.HostUnreachable, $"{candidate.Kind} candidate {url.Authority}: {e.Message}", e);
        }
        catch
        {
            await stream.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>Reads exactly one JET packet (never a byte past it) and parses the response in it.</summary>
    public static async Task<JetResponse> ReadResponseAsync(Stream stream, CancellationToken ct)
    {
        byte[] header = new byte[JetWire.HeaderLength];
        await stream.ReadExactlyAsync(header, ct).ConfigureAwait(false);
        if (JetWire.ParseHeader(header, out int size, out byte mask) != JetPacketError.None) throw new InvalidDataException("not a JET packet");
        byte[] payload = new byte[size - JetWire.HeaderLength];
        await stream.ReadExactlyAsync(payload, ct).ConfigureAwait(false);
        JetWire.ApplyMask(payload, mask);
        return JetWire.TryParseResponse(payload, out var response, out string? problem) ? response! : throw new InvalidDataException(problem);
    }

    public void Dispose()
    {
        Http.Dispose();
        _invoker.Dispose();
        _handler.Dispose();
    }
}
