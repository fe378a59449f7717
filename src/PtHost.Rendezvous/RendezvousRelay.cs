using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using PtHost.Net;
using PtHost.Net.Signals;
using PtHost.Net.Tls;

namespace PtHost.Rendezvous;

/// <summary>The relay's settings (spec/rendezvous.md §5, §6).</summary>
public sealed record RendezvousOptions
{
    public required IPEndPoint Listen { get; init; }
    public bool Tls { get; init; }
    public X509Certificate2? Certificate { get; init; }
    public TimeSpan Ttl { get; init; } = TimeSpan.FromSeconds(120);
    public TimeSpan PollTimeout { get; init; } = TimeSpan.FromSeconds(30);
    public int QueueLength { get; init; } = 64;
    public int MaxMessageBytes { get; init; } = 65536;
    public int MaxChannels { get; init; } = 10000;
    public int MaxClients { get; init; } = 1024;
    public int MaxPolls { get; init; } = 10000;
    public long MaxBytes { get; init; } = 64L << 20;
    public int Rate { get; init; } = 20;
    public int Burst { get; init; } = 100;
    public TimeSpan StatsInterval { get; init; } = TimeSpan.FromSeconds(60);
}

public sealed record RendezvousStats(int Channels, int Polls, int Held, long HeldBytes, long Posted, long Delivered, long Expired, long Dropped, long Refused, long RateLimited);

/// <summary>
/// The rendezvous (spec/rendezvous.md §2, §5): per-channel mailboxes of sealed messages in memory only,
/// long-poll receive, bounded everywhere. It checks the bearer token against the channel id (§3.2)
/// and otherwise sees only ciphertext, sizes and timing.
/// </summary>
public sealed class RendezvousRelay : IAsyncDisposable
{
    /// <summary>The response header naming the newest broadcast a client has been given (§2.3).</summary>
    public const string SequenceHeader = "Rendezvous-Seq";
    private const int BroadcastKeep = 16;

    private readonly RendezvousOptions _options;
    private readonly ILoggerFactory _loggers;
    private readonly ILogger _log;
    private readonly object _lock = new();
    private readonly Dictionary<string, ChannelState> _channels = new(StringComparer.Ordinal);
    private readonly Dictionary<IPAddress, Bucket> _buckets = [];
    private WebApplication? _web;
    private Timer? _sweeper;
    private X509Certificate2? _certificate;
    private int _polls, _held;
    private long _heldBytes, _posted, _delivered, _expired, _dropped, _refused, _rateLimited;

    public RendezvousRelay(RendezvousOptions options, ILoggerFactory loggers)
    {
        _options = options;
        _loggers = loggers;
        _log = loggers.CreateLogger("PtHost.Relay.Rendezvous");
    }

    public IPEndPoint LocalEndPoint { get; private set; } = null!;

    /// <summary>The HTTPS certificate's pin (64 hex digits); null over HTTP.</summary>
    public string? CertificatePin => _certificate is null ? null : PinnedTls.FormatPin(PinnedTls.Pin(_certificate));

    public async Task StartAsync(CancellationToken cancellationToken)
    {
        if (_options.Tls) _certificate = _options.Certificate ?? PinnedTls.Generate("pthost rendezvous");
        var builder = WebApplication.CreateEmptyBuilder(new WebApplicationOptions { Args = [] });
        builder.Logging.ClearProviders();
        builder.Services.AddSingleton(_loggers);
        builder.WebHost.UseKestrelCore().ConfigureKestrel(k =>
        {
            k.AddServerHeader = false;
            k.Limits.MaxConcurrentConnections = _options.MaxPolls + 1024L;
            k.Limits.RequestHeadersTimeout = TimeSpan.FromSeconds(10);
            k.Limits.KeepAliveTimeout = TimeSpan.FromSeconds(60);
            // 64 KiB of slack: a body a little over the limit is drained and answered 413 on a connection kept alive;
            // one far over it (or sent without Content-Length) ends its connection (spec/rendezvous.md §5).
            k.Limits.MaxRequestBodySize = _options.MaxMessageBytes + 65536L;
            k.Limits.MaxRequestHeaderCount = 32;
            k.Limits.MaxRequestHeadersTotalSize = 8 * 1024;
            k.Limits.MaxRequestLineSize = 1024;
            if (_certificate is null) k.Listen(_options.Listen);
            else k.Listen(_options.Listen, l => l.UseHttps(h => h.ServerCertificate = _certificate));
        });
        var web = builder.Build();
        web.Run(HandleAsync);
        await web.StartAsync(cancellationToken).ConfigureAwait(false);
        _web = web;
        var uri = new Uri(web.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First());
        LocalEndPoint = new IPEndPoint(IPAddress.Parse(uri.Host.Trim('[', ']')), uri.Port);
        var tick = TimeSpan.FromMilliseconds(Math.Clamp(_options.Ttl.TotalMilliseconds / 4, 100, 1000));
        _sweeper = new Timer(_ => Sweep(), null, tick, tick);
        _log.LogInformation("rendezvous on {Address} ({Scheme}){Pin}; ttl {Ttl}s, poll timeout {Poll}s, {Rate}/s per source (burst {Burst})",
            LocalEndPoint, _certificate is null ? "http" : "https", CertificatePin is { } pin ? $", certificate pin {pin}" : "",
            _options.Ttl.TotalSeconds, _options.PollTimeout.TotalSeconds, _options.Rate, _options.Burst);
    }

    public RendezvousStats GetStats()
    {
        lock (_lock) return new(_channels.Count, _polls, _held, _heldBytes, _posted, _delivered, _expired, _dropped, _refused, _rateLimited);
    }

    // ---- §2 HTTP API ----

    private async Task HandleAsync(HttpContext ctx)
    {
        ctx.Response.Headers.CacheControl = "no-store";
        if (!Admit(ctx.Connection.RemoteIpAddress))
        {
            Interlocked.Increment(ref _rateLimited);
            ctx.Response.Headers.RetryAfter = "1";
            await ErrorAsync(ctx, 429, "too many requests from this source").ConfigureAwait(false);
            return;
        }
        // /v1/{channel}/s | /v1/{channel}/b | /v1/{channel}/c/{cid}
        string path = ctx.Request.Path.Value ?? "/";
        string[] seg = path.Split('/');
        string? mailbox = seg.Length switch
        {
            4 when seg[3] is "s" or "b" => seg[3],
            5 when seg[3] == "c" && IsClientId(seg[4]) => "c/" + seg[4],
            _ => null,
        };
        if (seg.Length < 4 || seg[0].Length != 0 || seg[1] != "v1" || !IsChannel(seg[2]) || mailbox is null)
        {
            await ErrorAsync(ctx, 404, "no such resource (spec/rendezvous.md §2)").ConfigureAwait(false);
            return;
        }
        string channel = seg[2];
        string auth = ctx.Request.Headers.Authorization.ToString();
        if (!auth.StartsWith("Bearer ", StringComparison.Ordinal))
        {
            Interlocked.Increment(ref _refused);
            ctx.Response.Headers.WWWAuthenticate = "Bearer";
            await ErrorAsync(ctx, 401, "a bearer token is required").ConfigureAwait(false);
            return;
        }
        if (!TokenOpens(auth[7..], channel))
        {
            Interlocked.Increment(ref _refused);
            await ErrorAsync(ctx, 403, "the token does not open this channel").ConfigureAwait(false);
            return;
        }
        bool post = ctx.Request.Method == "POST", get = ctx.Request.Method == "GET";
        // Who may do what (§2.2): clients post to s and poll c/{cid}; the server polls s and posts to c/{cid} and b.
        if (!(post || (get && mailbox != "b")))
        {
            ctx.Response.Headers.Allow = mailbox == "b" ? "POST" : "GET, POST";
            await ErrorAsync(ctx, 405, $"{ctx.Request.Method} is not allowed here").ConfigureAwait(false);
            return;
        }
        if (post) await PostAsync(ctx, channel, mailbox).ConfigureAwait(false);
        else await ReceiveAsync(ctx, channel, mailbox).ConfigureAwait(false);
    }

    private async Task PostAsync(HttpContext ctx, string channel, string mailbox)
    {
        if (ctx.Request.ContentLength is long declared && declared > _options.MaxMessageBytes)
        {
            Interlocked.Increment(ref _refused);
            await ErrorAsync(ctx, 413, $"a message is at most {_options.MaxMessageBytes} bytes").ConfigureAwait(false);
            return;
        }
        byte[]? body;
        try { body = await ReadBodyAsync(ctx).ConfigureAwait(false); }
        catch (Microsoft.AspNetCore.Http.BadHttpRequestException e) when (e.StatusCode == 413) { body = null; }
        if (body is null)
        {
            Interlocked.Increment(ref _refused);
            await ErrorAsync(ctx, 413, $"a message is at most {_options.MaxMessageBytes} bytes").ConfigureAwait(false);
            return;
        }
        if (body.Length < RendezvousKeys.Overhead || body[0] != RendezvousKeys.Version)
        {
            Interlocked.Increment(ref _refused);
            await ErrorAsync(ctx, 400, "the body is not a sealed message (spec/rendezvous.md §4.2)").ConfigureAwait(false);
            return;
        }
        int status;
        string problem = "";
        Waiter[] wake = [];
        lock (_lock)
        {
            status = Channel(channel, mailbox, create: true, out var ch, out problem);
            if (status == 0 && _heldBytes + body.Length > _options.MaxBytes) { status = 503; problem = "the rendezvous holds as much as it may; try again later"; }
            if (status == 0)
            {
                var expires = DateTime.UtcNow + _options.Ttl;
                ch!.LastUsed = DateTime.UtcNow;
                _posted++;
                if (mailbox == "b")
                {
                    ch.Broadcasts.Add(new Item(body, expires, ++ch.Sequence));
                    Hold(body.Length);
                    while (ch.Broadcasts.Count > BroadcastKeep) Release(ch.Broadcasts, 0, counted: true);
                    wake = ch.Waiters.Where(w => w.Key.StartsWith("c/", StringComparison.Ordinal)).Select(w => w.Value).ToArray();
                }
                else
                {
                    var q = ch.Mailboxes.TryGetValue(mailbox, out var existing) ? existing : ch.Mailboxes[mailbox] = [];
                    q.Add(new Item(body, expires, 0));
                    Hold(body.Length);
                    while (q.Count > _options.QueueLength) Release(q, 0, counted: true);
                    if (ch.Waiters.TryGetValue(mailbox, out var w)) wake = [w];
                }
            }
        }
        foreach (var w in wake) w.Signal.TrySetResult(true);
        if (status != 0)
        {
            Interlocked.Increment(ref _refused);
            await ErrorAsync(ctx, status, problem).ConfigureAwait(false);
            return;
        }
        ctx.Response.StatusCode = 204;
    }

    /// <summary>§2.3: waits up to <c>wait</c> seconds (at most the poll timeout) for messages; 200 with frames, or 204.</summary>
    private async Task ReceiveAsync(HttpContext ctx, string channel, string mailbox)
    {
        double waitSeconds = 0;
        if (ctx.Request.Query.TryGetValue("wait", out var wt) && (!double.TryParse(wt.ToString(), System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out waitSeconds) || waitSeconds < 0 || double.IsNaN(waitSeconds)))
        {
            await ErrorAsync(ctx, 400, "wait must be a number of seconds, 0 or more").ConfigureAwait(false);
            return;
        }
        long after = 0;
        if (ctx.Request.Query.TryGetValue("after", out var at) && !long.TryParse(at.ToString(), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out after))
        {
            await ErrorAsync(ctx, 400, "after must be a non-negative integer").ConfigureAwait(false);
            return;
        }
        var wait = TimeSpan.FromSeconds(Math.Min(waitSeconds, _options.PollTimeout.TotalSeconds));
        Waiter? waiter = null;
        Waiter? replaced = null;
        (List<byte[]> Messages, long Sequence) taken;
        int status;
        string problem;
        lock (_lock)
        {
            status = Channel(channel, mailbox, create: true, out var ch, out problem);
            taken = status == 0 ? Take(ch!, mailbox, after) : ([], 0);
            if (status == 0 && taken.Messages.Count == 0 && wait > TimeSpan.Zero)
            {
                if (_polls >= _options.MaxPolls && !ch!.Waiters.ContainsKey(mailbox)) { status = 503; problem = "too many receives are waiting; try again later"; }
                else
                {
                    // One receive per mailbox (§2.3): a newer one ends the older with 204.
                    if (ch!.Waiters.Remove(mailbox, out replaced)) _polls--;
                    waiter = new Waiter();
                    ch.Waiters[mailbox] = waiter;
                    _polls++;
                }
            }
        }
        replaced?.Signal.TrySetResult(false);
        if (status != 0)
        {
            await ErrorAsync(ctx, status, problem).ConfigureAwait(false);
            return;
        }
        if (waiter is not null)
        {
            bool woken = false;
            try { woken = await waiter.Signal.Task.WaitAsync(wait, ctx.RequestAborted).ConfigureAwait(false); }
            catch (TimeoutException) { }
            catch (OperationCanceledException) { }
            lock (_lock)
            {
                if (_channels.TryGetValue(channel, out var ch))
                {
                    if (ch.Waiters.TryGetValue(mailbox, out var current) && current == waiter) { ch.Waiters.Remove(mailbox); _polls--; }
                    taken = woken && !ctx.RequestAborted.IsCancellationRequested ? Take(ch, mailbox, after) : ([], 0);
                    ch.LastUsed = DateTime.UtcNow;
                }
            }
        }
        if (taken.Sequence > 0) ctx.Response.Headers[SequenceHeader] = taken.Sequence.ToString(System.Globalization.CultureInfo.InvariantCulture);
        if (taken.Messages.Count == 0)
        {
            ctx.Response.StatusCode = 204;
            return;
        }
        ctx.Response.StatusCode = 200;
        ctx.Response.ContentType = "application/octet-stream";
        using var buffer = new MemoryStream();
        foreach (var m in taken.Messages) RendezvousKeys.WriteFrame(buffer, m);
        ctx.Response.ContentLength = buffer.Length;
        await ctx.Response.Body.WriteAsync(buffer.GetBuffer().AsMemory(0, (int)buffer.Length), ctx.RequestAborted).ConfigureAwait(false);
    }

    /// <summary>Under the lock: the mailbox's unexpired messages (removed), plus for a client the broadcasts after <paramref name="after"/>.</summary>
    private (List<byte[]>, long) Take(ChannelState ch, string mailbox, long after)
    {
        var now = DateTime.UtcNow;
        var result = new List<byte[]>();
        if (ch.Mailboxes.Remove(mailbox, out var q))
        {
            foreach (var item in q)
            {
                Unhold(item.Data.Length);
                if (item.Expires < now) _expired++;
                else { result.Add(item.Data); _delivered++; }
            }
        }
        long sequence = 0;
        if (mailbox.StartsWith("c/", StringComparison.Ordinal))
        {
            sequence = ch.Sequence;
            foreach (var b in ch.Broadcasts)
                if (b.Sequence > after && b.Expires >= now) { result.Add(b.Data); _delivered++; }
        }
        return (result, sequence);
    }

    /// <summary>Under the lock: the channel, created on first use within the limits (§5). 0, or the status to answer.</summary>
    private int Channel(string id, string mailbox, bool create, out ChannelState? ch, out string problem)
    {
        problem = "";
        if (!_channels.TryGetValue(id, out ch))
        {
            if (!create) return 404;
            if (_channels.Count >= _options.MaxChannels) { problem = "the rendezvous holds as many channels as it may"; return 503; }
            _channels[id] = ch = new ChannelState();
        }
        if (mailbox.StartsWith("c/", StringComparison.Ordinal) && !ch.Mailboxes.ContainsKey(mailbox) && !ch.Waiters.ContainsKey(mailbox)
            && ch.Mailboxes.Count + ch.Waiters.Count >= _options.MaxClients)
        {
            problem = "this channel has as many client mailboxes as it may";
            return 503;
        }
        return 0;
    }

    private void Hold(int bytes) { _held++; _heldBytes += bytes; }

    private void Unhold(int bytes) { _held--; _heldBytes -= bytes; }

    private void Release(List<Item> list, int index, bool counted)
    {
        Unhold(list[index].Data.Length);
        if (counted) _dropped++;
        list.RemoveAt(index);
    }

    /// <summary>Expired messages go; a channel with nothing held and nobody waiting goes after one TTL unused (§5).</summary>
    private void Sweep()
    {
        var now = DateTime.UtcNow;
        lock (_lock)
        {
            List<string>? gone = null;
            foreach (var (id, ch) in _channels)
            {
                foreach (var (name, q) in ch.Mailboxes)
                    for (int i = q.Count - 1; i >= 0; i--)
                        if (q[i].Expires < now) { Release(q, i, counted: false); _expired++; }
                foreach (var name in ch.Mailboxes.Where(m => m.Value.Count == 0).Select(m => m.Key).ToList()) ch.Mailboxes.Remove(name);
                for (int i = ch.Broadcasts.Count - 1; i >= 0; i--)
                    if (ch.Broadcasts[i].Expires < now) { Release(ch.Broadcasts, i, counted: false); _expired++; }
                if (ch.Mailboxes.Count == 0 && ch.Broadcasts.Count == 0 && ch.Waiters.Count == 0 && now - ch.LastUsed > _options.Ttl) (gone ??= []).Add(id);
            }
            if (gone is not null) foreach (var id in gone) _channels.Remove(id);
            foreach (var key in _buckets.Where(b => b.Value.Full(now, _options)).Select(b => b.Key).ToList()) _buckets.Remove(key);
        }
    }

    /// <summary>§5: a token bucket per source (an IPv4 address, an IPv6 /64).</summary>
    private bool Admit(IPAddress? remote)
    {
        if (remote is null) return true;
        var key = SourceAddress.Key(remote);
        var now = DateTime.UtcNow;
        lock (_lock)
        {
            if (!_buckets.TryGetValue(key, out var b)) _buckets[key] = b = new Bucket { Tokens = _options.Burst, At = now };
            b.Refill(now, _options);
            if (b.Tokens < 1) return false;
            b.Tokens--;
            return true;
        }
    }

    /// <summary>§3.2: the channel is base64url(SHA-256(token))[..22]; compared in constant time.</summary>
    internal static bool TokenOpens(string tokenText, string channel)
    {
        if (tokenText.Length != 43) return false;
        byte[] token;
        try { token = Convert.FromBase64String(tokenText.Replace('-', '+').Replace('_', '/') + "="); }
        catch (FormatException) { return false; }
        if (token.Length != 32) return false;
        return CryptographicOperations.FixedTimeEquals(System.Text.Encoding.ASCII.GetBytes(RendezvousKeys.ChannelOf(token)), System.Text.Encoding.ASCII.GetBytes(channel));
    }

    private static bool IsChannel(string s) => s.Length == RendezvousKeys.ChannelLength && s.All(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '_');

    private static bool IsClientId(string s) => s.Length == 16 && s.All(char.IsAsciiHexDigitLower);

    /// <summary>The body, or null when it is longer than <see cref="RendezvousOptions.MaxMessageBytes"/> (a chunked body has no Content-Length to check first).</summary>
    private async Task<byte[]?> ReadBodyAsync(HttpContext ctx)
    {
        using var buffer = new MemoryStream();
        byte[] chunk = new byte[16384];
        int n;
        while ((n = await ctx.Request.Body.ReadAsync(chunk, ctx.RequestAborted).ConfigureAwait(false)) > 0)
        {
            if (buffer.Length + n > _options.MaxMessageBytes) return null;
            buffer.Write(chunk, 0, n);
        }
        return buffer.ToArray();
    }

    private static Task ErrorAsync(HttpContext ctx, int status, string message)
    {
        ctx.Response.StatusCode = status;
        ctx.Response.ContentType = "text/plain; charset=utf-8";
        return ctx.Response.WriteAsync(message + "\n");
    }

    public async ValueTask DisposeAsync()
    {
        if (_sweeper is not null) await _sweeper.DisposeAsync().ConfigureAwait(false);
        List<Waiter> waiting;
        lock (_lock) waiting = _channels.Values.SelectMany(c => c.Waiters.Values).ToList();
        foreach (var w in waiting) w.Signal.TrySetResult(false);
        if (_web is not null)
        {
            using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(2));
            try { await _web.StopAsync(cts.Token).ConfigureAwait(false); }
            catch (OperationCanceledException) { }
            await _web.DisposeAsync().ConfigureAwait(false);
        }
        var s = GetStats();
        _log.LogInformation("rendezvous stopped: {Posted} posted, {Delivered} delivered, {Expired} expired, {Dropped} dropped, {Refused} refused, {Limited} rate-limited",
            s.Posted, s.Delivered, s.Expired, s.Dropped, s.Refused, s.RateLimited);
    }

    private sealed record Item(byte[] Data, DateTime Expires, long Sequence);

    private sealed class Waiter
    {
        public TaskCompletionSource<bool> Signal { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
    }

    private sealed class ChannelState
    {
        public Dictionary<string, List<Item>> Mailboxes { get; } = new(StringComparer.Ordinal);
        public Dictionary<string, Waiter> Waiters { get; } = new(StringComparer.Ordinal);
        public List<Item> Broadcasts { get; } = [];
        public long Sequence { get; set; }
        public DateTime LastUsed { get; set; } = DateTime.UtcNow;
    }

    private sealed class Bucket
    {
        public double Tokens { get; set; }
        public DateTime At { get; set; }

        public void Refill(DateTime now, RendezvousOptions o)
        {
            Tokens = Math.Min(o.Burst, Tokens + (now - At).TotalSeconds * o.Rate);
            At = now;
        }

        public bool Full(DateTime now, RendezvousOptions o)
        {
            Refill(now, o);
            return Tokens >= o.Burst;
        }
    }
}
