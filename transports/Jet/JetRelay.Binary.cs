using System.Buffers;
using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using Microsoft.Extensions.Logging;
using PtHost.Net;

namespace PtHost.Transports.Jet;

/// <summary>The binary protocol over TCP and TLS (spec/jet.md §5.4).</summary>
public sealed partial class JetRelay
{
    private IPEndPoint StartBinaryListener(IPEndPoint listen, CandidateKind kind)
    {
        var socket = TcpSessionListener.Listen(listen, reuseAddress: true, dualMode: true);
        // The relay keeps its own limits (§5.5), applied in accept order: the shared loop runs Admit inline.
        var listener = new TcpSessionListener($"jet relay {kind}", socket, (s, _) => AdmitBinary(s, kind), _log, int.MaxValue, inline: true);
        _listeners.Add(listener);
        listener.Start();
        return listener.LocalEndPoint;
    }

    private Task AdmitBinary(Socket socket, CandidateKind kind)
    {
        Interlocked.Increment(ref _accepted);
        if (!Admit((socket.RemoteEndPoint as IPEndPoint)?.Address))
        {
            socket.Dispose(); // §5.5: over a limit, closed at once
            return Task.CompletedTask;
        }
        return ServeBinaryAsync(socket, kind);
    }

    private async Task ServeBinaryAsync(Socket socket, CandidateKind kind)
    {
        long started = System.Diagnostics.Stopwatch.GetTimestamp();
        var remote = socket.RemoteEndPoint;
        var source = (remote as IPEndPoint)?.Address;
        Stream stream = new NetworkStream(socket, ownsSocket: true);
        bool handedOver = false;
        try
        {
            socket.NoDelay = true;
            JetRequest? request;
            int status;
            string? problem;
            byte[] early;
            using (var limit = CancellationTokenSource.CreateLinkedTokenSource(_stop.Token))
            {
                limit.CancelAfter(_options.HandshakeTimeout);
                try
                {
                    if (kind == CandidateKind.Tls)
                    {
                        var tcp = stream;
                        var tls = new SslStream(tcp, leaveInnerStreamOpen: false);
                        stream = new HalfClosableTlsStream(tls, tcp);
                        await tls.AuthenticateAsServerAsync(new SslServerAuthenticationOptions
                        {
                            ServerCertificateContext = _certificateContext,
                            EnabledSslProtocols = SslProtocols.Tls12 | SslProtocols.Tls13,
                        }, limit.Token).ConfigureAwait(false);
                    }
                    (status, request, problem, early) = await ReadRequestAsync(stream, limit.Token).ConfigureAwait(false);
                }
                catch (OperationCanceledException) when (!_stop.IsCancellationRequested)
                {
                    Interlocked.Increment(ref _errors);
                    _log.RequestTimeout(Lower(kind), remote, _options.HandshakeTimeout.TotalSeconds);
                    await RespondAndCloseAsync(stream, 408).ConfigureAwait(false);
                    return;
                }
                catch (AuthenticationException e)
                {
                    Interlocked.Increment(ref _errors);
                    _log.TlsFailed(remote, e.Message);
                    return;
                }
            }
            if (request is null)
            {
                Interlocked.Increment(ref _errors);
                _log.RequestRefused(Lower(kind), remote, status, problem);
                await RespondAndCloseAsync(stream, status).ConfigureAwait(false);
                return;
            }

            _handshake.ObserveSince(started);
            switch (request.Method)
            {
                case JetMethod.Test:
                    {
                        int s = TryTest(request, out string why);
                        if (s != 200) _log.TestRefused(Lower(kind), remote, request.Association, request.Candidate, s, why);
                        await RespondAndCloseAsync(stream, s).ConfigureAwait(false);
                        return;
                    }
                case JetMethod.Accept:
                    {
                        var waiter = new Waiter(stream, early, socket);
                        int s = TryAccept(request, kind, waiter, source, out var a, out var c, out string why);
                        if (s != 0)
                        {
                            Interlocked.Increment(ref _errors);
                            CountFailure("accept", s);
                            _log.AcceptRefused(Lower(kind), remote, request.Association, request.Candidate, s, why);
                            await RespondAndCloseAsync(stream, s).ConfigureAwait(false);
                            return;
                        }
                        // §4: the acceptor's 200 — v1 names its new association (§3.3); v2 carries Jet-Version and
                        // Jet-Instance (the seed's §2.2.3.1.1). A connector that pairs meanwhile waits for it (Waiter.Answered).
                        string text = request.IsV1
                            ? JetWire.BuildResponse(200, new("Jet-Version", "1"), new("Jet-Instance", _options.Instance),
                                new("Jet-Association", a!.Id.ToString("D")), new("Jet-Timeout", ((int)_options.AssociationTimeout.TotalSeconds).ToString(System.Globalization.CultureInfo.InvariantCulture)))
                            : JetWire.BuildResponse(200, new("Jet-Version", request.Version.ToString(System.Globalization.CultureInfo.InvariantCulture)), new("Jet-Instance", _options.Instance));
                        try
                        {
                            using var limit = new CancellationTokenSource(ResponseLimit);
                            if (request.IsV1 || _options.AnswerV2Accept) await stream.WriteAsync(JetWire.BuildPacket(text), limit.Token).ConfigureAwait(false);
                            waiter.Answered.TrySetResult(true);
                        }
                        catch (Exception e) when (e is IOException or SocketException or OperationCanceledException)
                        {
                            // The candidate is freed again (or its connector, if one came, ends) by the wait below.
                            waiter.Answered.TrySetResult(false);
                            waiter.Cut();
                        }
                        _log.Accepted(Lower(kind), remote, a!.Id, c!.Id);
                        await WaitAsAcceptorAsync(a, c, waiter).ConfigureAwait(false);
                        return;
                    }
                default:
                    {
                        int s = TryConnect(request, claim: true, out var a, out var c, out var acceptor, out string why);
                        if (s != 0)
                        {
                            Interlocked.Increment(ref _errors);
                            CountFailure("connect", s);
                            _log.ConnectRefused(Lower(kind), remote, request.Association, request.Candidate, s, why);
                            await RespondAndCloseAsync(stream, s).ConfigureAwait(false);
                            return;
                        }
                        try
                        {
                            using var limit = new CancellationTokenSource(ResponseLimit);
                            await stream.WriteAsync(JetWire.BuildPacket(ConnectResponse(a!, c!, request)), limit.Token).ConfigureAwait(false);
                        }
                        catch (Exception e) when (e is IOException or SocketException or OperationCanceledException)
                        {
                            acceptor!.Paired.TrySetResult(true);
                            Finish(a!, c!);
                            acceptor.SessionDone.TrySetResult();
                            throw;
                        }
                        handedOver = true;
                        await using (stream.ConfigureAwait(false))
                            await RelayAsync(a!, c!, acceptor!, stream, early).ConfigureAwait(false);
                        return;
                    }
            }
        }
        catch (Exception e) when (e is IOException or SocketException or OperationCanceledException or ObjectDisposedException or EndOfStreamException)
        {
            _log.ConnectionEnded(Lower(kind), remote, e.Message);
        }
        finally
        {
            Release(source);
            if (!handedOver) await stream.DisposeAsync().ConfigureAwait(false);
        }
    }

    private string ConnectResponse(Association a, Candidate c, JetRequest r) => r.IsV1
        ? JetWire.BuildResponse(200, new("Jet-Version", "1"), new("Jet-Instance", _options.Instance), new("Jet-Association", a.Id.ToString("D")))
        : JetWire.BuildResponse(200, new("Jet-Version", r.Version.ToString(System.Globalization.CultureInfo.InvariantCulture)), new("Jet-Instance", _options.Instance),
            new("Jet-Association", a.Id.ToString("D")), new("Jet-Candidate", c.Id.ToString("D")));

    /// <summary>
    /// Reads exactly one JET packet and parses its request (§5.4). Returns the status (0 for a
    /// request) and the bytes that followed the packet in the same reads: they are the peer's first
    /// relayed bytes, never dropped.
    /// </summary>
    internal static async Task<(int Status, JetRequest? Request, string? Problem, byte[] Early)> ReadRequestAsync(Stream stream, CancellationToken ct)
    {
        byte[] buffer = ArrayPool<byte>.Shared.Rent(4096);
        try
        {
            int got = 0;
            int size = 0;
            byte mask = 0;
            while (true)
            {
                if (got > 0)
                {
                    var error = JetWire.ParseHeader(buffer.AsSpan(0, got), out size, out mask);
                    if (error == JetPacketError.BadSignature) return (400, null, "bad JET signature", []);
                    if (error == JetPacketError.SizeTooSmall) return (400, null, $"packet size {size} is below 8", []);
                    if (error == JetPacketError.None)
                    {
                        if (got >= size) break;
                        if (buffer.Length < size)
                        {
                            byte[] bigger = ArrayPool<byte>.Shared.Rent(size + 4096);
                            buffer.AsSpan(0, got).CopyTo(bigger);
                            ArrayPool<byte>.Shared.Return(buffer);
                            buffer = bigger;
                        }
                    }
                }
                int n = await stream.ReadAsync(buffer.AsMemory(got), ct).ConfigureAwait(false);
                if (n == 0)
                    return (400, null, got == 0 ? "closed before a JET packet" : size > 0 ? $"closed after {got} of the packet's {size} bytes" : "closed inside the JET header", []);
                got += n;
            }
            var payload = buffer.AsSpan(JetWire.HeaderLength, size - JetWire.HeaderLength);
            JetWire.ApplyMask(payload, mask);
            int status = JetWire.ParseRequest(payload, out var request, out string? problem);
            byte[] early = got > size ? buffer.AsSpan(size, got - size).ToArray() : [];
            return (status, request, problem, early);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <summary>Non-200 → response, then a close (§5.6): FIN after the response, unread input drained briefly so no RST overtakes it.</summary>
    private async Task RespondAndCloseAsync(Stream stream, int status)
    {
        try
        {
            using var limit = CancellationTokenSource.CreateLinkedTokenSource(_stop.Token);
            limit.CancelAfter(ResponseLimit);
            var headers = new KeyValuePair<string, string>[] { new("Jet-Instance", _options.Instance), new("Connection", "Close") };
            await stream.WriteAsync(JetWire.BuildPacket(JetWire.BuildResponse(status, headers)), limit.Token).ConfigureAwait(false);
            await stream.FlushAsync(limit.Token).ConfigureAwait(false);
            PtHost.Net.Relay.ShutdownWrite(stream);
            limit.CancelAfter(LingerLimit);
            byte[] sink = ArrayPool<byte>.Shared.Rent(4096);
            try
            {
                for (int total = 0; total < 256 * 1024;)
                {
                    int n = await stream.ReadAsync(sink, limit.Token).ConfigureAwait(false);
                    if (n == 0) break;
                    total += n;
                }
            }
            finally { ArrayPool<byte>.Shared.Return(sink); }
        }
        catch (Exception e) when (e is IOException or SocketException or OperationCanceledException or ObjectDisposedException) { }
        finally
        {
            await stream.DisposeAsync().ConfigureAwait(false);
        }
    }

    private static string Lower(CandidateKind kind) => kind switch { CandidateKind.Tcp => "tcp", CandidateKind.Tls => "tls", CandidateKind.Ws => "ws", _ => "wss" };
}
