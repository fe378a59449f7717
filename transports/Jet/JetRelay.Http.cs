using System.Security.Cryptography;
using System.Text;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;
using Newtonsoft.Json.Linq;

namespace PtHost.Transports.Jet;

/// <summary>The REST API (spec/jet.md §5.2) and the WebSocket paths (§6), served by Kestrel.</summary>
public sealed partial class JetRelay
{
    private async Task HandleHttpAsync(HttpContext ctx)
    {
        ctx.Response.Headers["Jet-Instance"] = _options.Instance;
        string path = ctx.Request.Path.Value ?? "/";
        string[] segments = path.Split('/');
        if (segments.Length == 4 && segments[0].Length == 0 && segments[1] == "jet" && segments[2] is "association" or "gather")
        {
            await HandleRestAsync(ctx, segments[2], segments[3]).ConfigureAwait(false);
            return;
        }
        if (JetWire.TryParsePath(path.ToLowerInvariant(), out var method, out var aid, out var cid, out _))
        {
            await HandleWebSocketAsync(ctx, method, aid, cid).ConfigureAwait(false);
            return;
        }
        await ErrorAsync(ctx, 404, $"no such resource: {(path.Length > 80 ? path[..80] : path)}").ConfigureAwait(false);
    }

    // ---- §5.2 REST ----

    private async Task HandleRestAsync(HttpContext ctx, string resource, string idText)
    {
        if (_apiKey is not null && !Authorized(ctx.Request.Headers.Authorization.ToString()))
        {
            ctx.Response.Headers.WWWAuthenticate = "Bearer";
            await ErrorAsync(ctx, 401, "a bearer API key is required").ConfigureAwait(false);
            return;
        }
        string verb = ctx.Request.Method;
        bool allowed = resource == "gather" ? verb == "POST" : verb is "POST" or "GET" or "DELETE";
        if (!allowed)
        {
            ctx.Response.Headers.Allow = resource == "gather" ? "POST" : "POST, GET, DELETE";
            await ErrorAsync(ctx, 405, $"{verb} is not allowed on /jet/{resource}/{{id}}").ConfigureAwait(false);
            return;
        }
        if (!Guid.TryParseExact(idText, "D", out var id))
        {
            await ErrorAsync(ctx, 400, "the association id must be a UUID (8-4-4-4-12 hex digits)").ConfigureAwait(false);
            return;
        }

        if (resource == "gather")
        {
            await GatherAsync(ctx, id).ConfigureAwait(false);
            return;
        }
        switch (verb)
        {
            case "POST":
                {
                    int status = CreateAssociation(id, ctx.Connection.RemoteIpAddress, out var a, out string problem);
                    if (status != 0)
                    {
                        await ErrorAsync(ctx, status, problem).ConfigureAwait(false);
                        return;
                    }
                    _log.AssociationCreated(id);
                    JObject created;
                    lock (_lock) created = Describe(a!);
                    await JsonAsync(ctx, 200, created).ConfigureAwait(false);
                    return;
                }
            case "GET":
                {
                    JObject? body;
                    lock (_lock) body = _associations.TryGetValue(id, out var a) ? Describe(a) : null;
                    if (body is null) await ErrorAsync(ctx, 404, $"no association {id}").ConfigureAwait(false);
                    else await JsonAsync(ctx, 200, body).ConfigureAwait(false);
                    return;
                }
            default:
                {
                    Association? removed;
                    List<Waiter> waiting = [];
                    lock (_lock)
                    {
                        if (_associations.TryGetValue(id, out removed) && RemoveAssociationLocked(removed))
                            foreach (var c in removed.Candidates.Values)
                                if (c.State == CandidateState.Accepted && c.Waiter is { } w) waiting.Add(w);
                    }
                    if (removed is null)
                    {
                        await ErrorAsync(ctx, 404, $"no association {id}").ConfigureAwait(false);
                        return;
                    }
                    // Waiting acceptors are closed; sessions already relaying run to their end.
                    foreach (var w in waiting) w.Cut();
                    _log.AssociationDeleted(id, waiting.Count);
                    await JsonAsync(ctx, 200, new JObject { ["id"] = id.ToString("D"), ["deleted"] = true }).ConfigureAwait(false);
                    return;
                }
        }
    }

    /// <summary>§5.3: the association's candidates, made on the first gather (one per listener kind), the same list after.</summary>
    private async Task GatherAsync(HttpContext ctx, Guid id)
    {
        JObject? body = null;
        int status = 200;
        string problem = "";
        lock (_lock)
        {
            if (!_associations.TryGetValue(id, out var a))
            {
                if (_options.Policy != AssociationPolicy.Any) { status = 404; problem = $"no association {id} (create it with POST /jet/association/{id})"; }
                else status = AddAssociationLocked(id, viaApi: true, v1: false, ctx.Connection.RemoteIpAddress, out a, out problem);
            }
            if (a is not null)
            {
                if (a.V1) { status = 400; problem = "a v1 association has no candidates to gather"; }
                else
                {
                    if (!a.Gathered)
                    {
                        foreach (var kind in OfferedKinds())
                        {
                            var cid = Guid.NewGuid();
                            a.Candidates[cid] = new Candidate(cid, kind, CandidateUrl(kind));
                        }
                        a.Gathered = true;
                    }
                    Touch(a);
                    body = new JObject
                    {
                        ["id"] = id.ToString("D"),
                        ["candidates"] = new JArray(a.Candidates.Values.Where(c => c.Url.Length > 0)
                            .Select(c => new JObject { ["id"] = c.Id.ToString("D"), ["url"] = c.Url })),
                    };
                }
            }
        }
        if (body is null) await ErrorAsync(ctx, status, problem).ConfigureAwait(false);
        else await JsonAsync(ctx, 200, body).ConfigureAwait(false);
    }

    private static JObject Describe(Association a) => new()
    {
        ["id"] = a.Id.ToString("D"),
        ["version"] = a.V1 ? 1 : 2,
        ["candidates"] = new JArray(a.Candidates.Values.Where(c => c.Url.Length > 0).Select(c => new JObject
        {
            ["id"] = c.Id.ToString("D"),
            ["url"] = c.Url,
            ["state"] = c.State.ToString().ToLowerInvariant(),
        })),
    };

    /// <summary>Bearer key check; constant time in the key's length.</summary>
    private bool Authorized(string header)
    {
        const string Prefix = "Bearer ";
        if (!header.StartsWith(Prefix, StringComparison.OrdinalIgnoreCase)) return false;
        byte[] given = Encoding.UTF8.GetBytes(header[Prefix.Length..].Trim());
        return given.Length == _apiKey!.Length && CryptographicOperations.FixedTimeEquals(given, _apiKey);
    }

    private static Task JsonAsync(HttpContext ctx, int status, JObject body)
    {
        ctx.Response.StatusCode = status;
        ctx.Response.ContentType = "application/json";
        return ctx.Response.WriteAsync(PtHost.Contract.StrictJson.Write(body), ctx.RequestAborted);
    }

    private Task ErrorAsync(HttpContext ctx, int status, string problem)
    {
        if (status >= 500 || status is 401 or 429) _log.RestRefused(ctx.Request.Method, ctx.Request.Path.Value, status, problem);
        return JsonAsync(ctx, status, new JObject { ["error"] = problem });
    }

    // ---- §6 WebSocket ----

    /// <summary>
    /// accept/connect/test on the WebSocket paths. Unlike the reference, the rules are checked
    /// before the 101: a refused accept gets 403, a refused connect 400, an unknown test 404 (§6).
    /// </summary>
    private async Task HandleWebSocketAsync(HttpContext ctx, JetMethod method, Guid aid, Guid cid)
    {
        var kind = ctx.Request.IsHttps ? CandidateKind.Wss : CandidateKind.Ws;
        var remote = ctx.Connection.RemoteIpAddress;
        var request = new JetRequest(method, 2, aid, cid, IsV1: false, ctx.Request.Headers.Authorization.Count > 0 ? ctx.Request.Headers.Authorization.ToString() : null);
        if (ctx.Request.Method != "GET")
        {
            await ErrorAsync(ctx, 405, "GET only").ConfigureAwait(false);
            return;
        }
        if (method == JetMethod.Test)
        {
            int s = TryTest(request, out string why);
            if (s == 200) await JsonAsync(ctx, 200, new JObject { ["id"] = aid.ToString("D"), ["candidate"] = cid.ToString("D") }).ConfigureAwait(false);
            else await ErrorAsync(ctx, s, why).ConfigureAwait(false);
            return;
        }
        if (!ctx.WebSockets.IsWebSocketRequest)
        {
            await ErrorAsync(ctx, 400, "a WebSocket upgrade is required on this path").ConfigureAwait(false);
            return;
        }
        if (!Admit(remote))
        {
            await ErrorAsync(ctx, 503, "connection limit reached").ConfigureAwait(false);
            return;
        }
        Interlocked.Increment(ref _accepted);
        try
        {
            if (method == JetMethod.Accept) await AcceptWebSocketAsync(ctx, kind, request).ConfigureAwait(false);
            else await ConnectWebSocketAsync(ctx, kind, request).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or OperationCanceledException or ObjectDisposedException or System.Net.WebSockets.WebSocketException)
        {
            _log.ConnectionEnded(Lower(kind), remote, e.Message);
        }
        finally
        {
            Release(remote);
        }
    }

    private async Task AcceptWebSocketAsync(HttpContext ctx, CandidateKind kind, JetRequest request)
    {
        // Register first (so the 403 can be a plain HTTP answer), with a stream that becomes usable after the 101.
        var ready = new DeferredStream();
        var waiter = new Waiter(ready, ReadOnlyMemory<byte>.Empty, null, ctx.RequestAborted);
        waiter.Answered.TrySetResult(true); // §6: the 101 is the WebSocket acceptor's answer
        int s = TryAccept(request, kind, waiter, ctx.Connection.RemoteIpAddress, out var a, out var c, out string why);
        if (s != 0)
        {
            Interlocked.Increment(ref _errors);
            CountFailure("accept", 403);
            _log.AcceptRefused(Lower(kind), ctx.Connection.RemoteIpAddress, request.Association, request.Candidate, 403, why);
            await ErrorAsync(ctx, 403, why).ConfigureAwait(false);
            return;
        }
        JetWebSocketStream? stream = null;
        try
        {
            var ws = await ctx.WebSockets.AcceptWebSocketAsync().ConfigureAwait(false);
            stream = new JetWebSocketStream(ws);
            ready.Set(stream);
        }
        catch
        {
            ready.Fail();
            waiter.Cut();
            await WaitAsAcceptorAsync(a!, c!, waiter).ConfigureAwait(false);
            throw;
        }
        await using (stream.ConfigureAwait(false))
            await WaitAsAcceptorAsync(a!, c!, waiter).ConfigureAwait(false);
    }

    private async Task ConnectWebSocketAsync(HttpContext ctx, CandidateKind kind, JetRequest request)
    {
        int s = TryConnect(request, claim: false, out _, out _, out _, out string why);
        if (s != 0)
        {
            Interlocked.Increment(ref _errors);
            CountFailure("connect", 400);
            _log.ConnectRefused(Lower(kind), ctx.Connection.RemoteIpAddress, request.Association, request.Candidate, 400, why);
            await ErrorAsync(ctx, 400, why).ConfigureAwait(false);
            return;
        }
        var ws = await ctx.WebSockets.AcceptWebSocketAsync().ConfigureAwait(false);
        var stream = new JetWebSocketStream(ws);
        await using (stream.ConfigureAwait(false))
        {
            // The acceptor may have gone between the check and the 101: then the socket closes with 1011.
            s = TryConnect(request, claim: true, out var a, out var c, out var acceptor, out why);
            if (s != 0)
            {
                Interlocked.Increment(ref _errors);
                using var limit = new CancellationTokenSource(ResponseLimit);
                try { await ws.CloseAsync(System.Net.WebSockets.WebSocketCloseStatus.InternalServerError, why.Length > 100 ? why[..100] : why, limit.Token).ConfigureAwait(false); }
                catch (Exception e) when (e is OperationCanceledException or System.Net.WebSockets.WebSocketException) { }
                return;
            }
            await RelayAsync(a!, c!, acceptor!, stream, ReadOnlyMemory<byte>.Empty).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// The stream of a WebSocket acceptor, registered before its 101 is sent: a connector that pairs in
    /// that instant waits (briefly) for the WebSocket to exist.
    /// </summary>
    private sealed class DeferredStream : Stream, PtHost.Contract.IHalfClosable
    {
        private readonly TaskCompletionSource<Stream> _inner = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public void Set(Stream s) => _inner.TrySetResult(s);
        public void Fail() => _inner.TrySetException(new IOException("the WebSocket acceptor went away before its upgrade completed"));

        private Task<Stream> Inner => _inner.Task;
        public override bool CanRead => true;
        public override bool CanWrite => true;
        public override bool CanSeek => false;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

        public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default) =>
            await (await Inner.WaitAsync(cancellationToken).ConfigureAwait(false)).ReadAsync(buffer, cancellationToken).ConfigureAwait(false);

        public override async ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default) =>
            await (await Inner.WaitAsync(cancellationToken).ConfigureAwait(false)).WriteAsync(buffer, cancellationToken).ConfigureAwait(false);

        public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) => ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();
        public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) => WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();
        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException("asynchronous use only");
        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException("asynchronous use only");

        public void ShutdownWrite()
        {
            if (Inner.IsCompletedSuccessfully) PtHost.Net.Relay.ShutdownWrite(Inner.Result);
        }

        public override void Flush() { }
        public override Task FlushAsync(CancellationToken cancellationToken) => Task.CompletedTask;
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();

        protected override void Dispose(bool disposing)
        {
            if (disposing && Inner.IsCompletedSuccessfully) Inner.Result.Dispose();
            base.Dispose(disposing);
        }
    }
}
