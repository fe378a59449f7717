using System.Globalization;
using System.Threading.Channels;
using Microsoft.Extensions.Logging;
using Newtonsoft.Json.Linq;
using PtHost.Contract;

namespace PtHost.Net.Signals;

/// <summary>
/// CMESSAGE/SMESSAGE envelopes (spec/ipc.md §6): one <see cref="TransportSignals"/> per transport,
/// stamping ids on the way out and dropping malformed, duplicated, misaddressed and expired
/// messages on the way in. The executable writes the payloads as IPC lines; the in-process host
/// (src/PtHost.Embedded) hands them to the application: both keep the same rules by using this class.
/// </summary>
public class SignalEnvelopes
{
    public const int MaxPayloadBytes = 60 * 1024;
    public const int IncomingCapacity = 256;
    public const int DedupeWindow = 4096;
    public static readonly TimeSpan DefaultLifetime = TimeSpan.FromMinutes(10);

    private readonly Dictionary<string, TransportSignals> _channels = new(StringComparer.Ordinal);
    private readonly Action<string, string> _write;
    private readonly bool _server;
    private readonly ILogger _log;
    private readonly TimeProvider _time;
    private long _nextMessageId;

    /// <param name="server">A server process (reads CMESSAGE, writes SMESSAGE) or a client.</param>
    /// <param name="write">Writes one outgoing payload of a transport (the line's third field).</param>
    public SignalEnvelopes(bool server, Action<string, string> write, ILogger log, TimeProvider? time = null, bool available = true)
    {
        _server = server;
        Available = available;
        _write = write;
        _log = log;
        _time = time ?? TimeProvider.System;
        // §6.2: 64 random bits, not a secret (the parent reads and writes them). Random.Shared, not
        // RandomNumberGenerator: that would load OpenSSL at start-up, ~5 ms of the 20 ms budget (issue 16).
        Span<byte> id = stackalloc byte[8];
        Random.Shared.NextBytes(id);
        InstanceId = Convert.ToHexStringLower(id);
    }

    /// <summary>True for a server process.</summary>
    public bool IsServer => _server;

    /// <summary>False in PT 1.0 managed mode: no CMESSAGE/SMESSAGE lines are written or read.</summary>
    public bool Available { get; }

    /// <summary>This process's id: <c>cid</c> of a client, <c>sid</c> of a server.</summary>
    public string InstanceId { get; }

    /// <summary>Returns why a transport's lines are not taken here (its signals go another way, spec/rendezvous.md §7), or null.</summary>
    public Func<string, string?>? RoutedElsewhere { get; init; }

    /// <summary>The keyword this process reads on stdin.</summary>
    public string IncomingKeyword => _server ? "CMESSAGE" : "SMESSAGE";

    public ISignalChannel For(string transport)
    {
        lock (_channels)
        {
            if (!_channels.TryGetValue(transport, out var ch)) _channels[transport] = ch = new TransportSignals(this, transport);
            return ch;
        }
    }

    /// <summary>Handles one stdin line already split as keyword, transport, payload. Returns why it was dropped, or null.</summary>
    public string? Deliver(string transport, string payload)
    {
        TransportSignals? ch;
        lock (_channels) _channels.TryGetValue(transport, out ch);
        if (RoutedElsewhere?.Invoke(transport) is { } elsewhere) return Drop(elsewhere);
        if (!Available) return Drop("PT 1.0 managed mode has no signal channel");
        if (ch is null) return Drop($"no transport \"{transport}\" in this process");
        if (System.Text.Encoding.UTF8.GetByteCount(payload) > MaxPayloadBytes) return Drop($"payload longer than {MaxPayloadBytes} bytes");
        JObject env;
        try { env = StrictJson.ParseObject(payload); }
        catch (FormatException e) { return Drop("payload is not a JSON object: " + e.Message); }

        if (!StrictJson.TryGetInt64(env["v"], out long v) || v != 1) return Drop("\"v\" must be 1");
        if (!StrictJson.TryGetInt64(env["mid"], out long mid) || mid <= 0) return Drop("\"mid\" must be a positive 64-bit integer");
        if (env["kind"] is not { Type: JTokenType.String } kindToken || !IsKind((string)kindToken!)) return Drop("\"kind\" must be a string of [a-z0-9.-], 1 to 64 characters");
        long re = 0;
        if (env["re"] is { } reToken && (!StrictJson.TryGetInt64(reToken, out re) || re < 0)) return Drop("\"re\" must be a non-negative 64-bit integer");
        string? cid = env["cid"]?.Type == JTokenType.String ? (string)env["cid"]! : null;
        string? sid = env["sid"]?.Type == JTokenType.String ? (string)env["sid"]! : null;
        DateTimeOffset? expires = null;
        if (env["exp"] is { } exp)
        {
            if (!StrictJson.TryGetInt64(exp, out long expSeconds)) return Drop("\"exp\" must be an integer (UNIX seconds)");
            expires = DateTimeOffset.FromUnixTimeSeconds(Math.Clamp(expSeconds, 0, 253402300799));
            if (_time.GetUtcNow() > expires) return Drop($"expired at {expires:O}");
        }
        string sender;
        if (_server)
        {
            if (cid is null) return Drop("a CMESSAGE must carry the sender's \"cid\"");
            sender = cid;
        }
        else
        {
            if (cid is not null && cid != InstanceId) return Drop($"addressed to client {cid}, not {InstanceId}");
            if (sid is null) return Drop("an SMESSAGE must carry the sender's \"sid\"");
            sender = sid;
        }
        if (!ch.FirstSight(sender, mid)) return Drop($"duplicate of message {sender}/{mid}");
        var signal = new Signal((string)env["kind"]!, env["body"])
        {
            MessageId = mid,
            ReplyTo = re,
            ClientId = _server ? cid : null,
            Expires = expires,
        };
        ch.Enqueue(signal);
        return null;

        string Drop(string why)
        {
            _log.LogWarning("{Keyword} {Transport} dropped: {Why}", IncomingKeyword, transport, why);
            return why;
        }
    }

    /// <summary>A signal kind: 1–64 characters of [a-z0-9.-].</summary>
    public static bool IsKind(string kind) =>
        kind.Length is > 0 and <= 64 && kind.All(c => char.IsAsciiLetterLower(c) || char.IsAsciiDigit(c) || c is '.' or '-');

    private long Send(string transport, Signal s)
    {
        if (!IsKind(s.Kind)) throw new ArgumentException($"signal kind \"{s.Kind}\" is not [a-z0-9.-]{{1,64}}");
        long mid = Interlocked.Increment(ref _nextMessageId);
        var env = new JObject { ["v"] = 1, ["mid"] = mid };
        if (!_server) env["cid"] = InstanceId;
        else
        {
            env["sid"] = InstanceId;
            if (s.ClientId is not null) env["cid"] = s.ClientId;
        }
        if (s.ReplyTo > 0) env["re"] = s.ReplyTo;
        env["exp"] = (s.Expires ?? _time.GetUtcNow() + DefaultLifetime).ToUnixTimeSeconds();
        env["kind"] = s.Kind;
        if (s.Body is not null) env["body"] = s.Body;
        string payload = StrictJson.Write(env);
        if (System.Text.Encoding.UTF8.GetByteCount(payload) > MaxPayloadBytes) throw new ArgumentException($"signal payload longer than {MaxPayloadBytes} bytes");
        if (!Available)
        {
            _log.LogDebug("signal {Kind} for {Transport} not sent: PT 1.0 has no signal channel", s.Kind, transport);
            return mid;
        }
        _write(transport, payload);
        return mid;
    }

    private sealed class TransportSignals : ISignalChannel
    {
        private readonly SignalEnvelopes _router;
        private readonly string _transport;
        private readonly Channel<Signal> _incoming = Channel.CreateBounded<Signal>(
            new BoundedChannelOptions(IncomingCapacity) { FullMode = BoundedChannelFullMode.DropOldest, SingleWriter = true });
        private readonly HashSet<(string, long)> _seen = [];
        private readonly Queue<(string, long)> _seenOrder = new();

        public TransportSignals(SignalEnvelopes router, string transport)
        {
            _router = router;
            _transport = transport;
        }

        public string InstanceId => _router.InstanceId;
        public bool Available => _router.Available;
        public ChannelReader<Signal> Incoming => _incoming.Reader;
        public long Send(Signal signal) => _router.Send(_transport, signal);
        public void Enqueue(Signal s) => _incoming.Writer.TryWrite(s);

        public bool FirstSight(string sender, long mid)
        {
            lock (_seen)
            {
                if (!_seen.Add((sender, mid))) return false;
                _seenOrder.Enqueue((sender, mid));
                if (_seenOrder.Count > DedupeWindow) _seen.Remove(_seenOrder.Dequeue());
                return true;
            }
        }

        public override string ToString() => string.Create(CultureInfo.InvariantCulture, $"signals({_transport})");
    }
}
