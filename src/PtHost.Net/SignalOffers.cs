using System.Collections.Concurrent;
using System.Security.Cryptography;
using Microsoft.Extensions.Logging;
using Newtonsoft.Json.Linq;
using PtHost.Contract;

namespace PtHost.Net;

/// <summary>
/// An offer/answer exchange over the signal channel (spec/ipc.md §6), as zephyr (spec/zephyr.md §7.3)
/// and jet (spec/jet.md §7.3) run it. The client side: each offer carries a fresh <c>nonce</c> and is
/// sent again every <see cref="ResendInterval"/> until an answer naming that nonce replies to one of
/// its messages, or the signal timeout ends it. The server side answers with <see cref="Answer"/>.
/// </summary>
public sealed class SignalOffers : IAsyncDisposable
{
    /// <summary>Longest nonce a server accepts in an offer.</summary>
    public const int MaxNonceLength = 64;

    private readonly ISignalChannel _signals;
    private readonly string _transport, _offerKind, _answerKind;
    private readonly TimeSpan _signalTimeout;
    private readonly ILogger _log;
    private readonly ConcurrentDictionary<string, Pending> _pending = new(StringComparer.Ordinal);
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _answers;

    /// <param name="transport">The transport's name, for logs and errors.</param>
    /// <param name="offerKind">The signal kind of offers (client → server).</param>
    /// <param name="answerKind">The signal kind of answers (server → client).</param>
    /// <param name="signalTimeout">How long an offer waits for its answer.</param>
    public SignalOffers(ISignalChannel signals, string transport, string offerKind, string answerKind, TimeSpan signalTimeout, ILogger log)
    {
        ArgumentNullException.ThrowIfNull(signals);
        _signals = signals;
        _transport = transport;
        _offerKind = offerKind;
        _answerKind = answerKind;
        _signalTimeout = signalTimeout;
        _log = log;
        _answers = ReadAnswersAsync(_stop.Token);
    }

    /// <summary>How often an unanswered offer is sent again: a third of the signal timeout, at most 5 s.</summary>
    public TimeSpan ResendInterval => TimeSpan.FromTicks(Math.Min(_signalTimeout.Ticks / 3, TimeSpan.FromSeconds(5).Ticks));

    /// <summary>
    /// Sends <paramref name="body"/> (a fresh <c>nonce</c> is added) until the answer arrives, and returns
    /// the answer's body. Throws <see cref="TransportConnectException"/> (0x06) when none came within the
    /// signal timeout.
    /// </summary>
    public async Task<JObject> OfferAsync(JObject body, long session, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(body);
        string nonce = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(16));
        body["nonce"] = nonce;
        var pending = new Pending();
        _pending[nonce] = pending;
        var deadline = DateTimeOffset.UtcNow + _signalTimeout;
        try
        {
            using var limit = CancellationTokenSource.CreateLinkedTokenSource(ct);
            limit.CancelAfter(_signalTimeout);
            while (true)
            {
                lock (pending) pending.MessageIds.Add(_signals.Send(new Signal(_offerKind, body) { Expires = deadline }));
                try { return await pending.Answer.Task.WaitAsync(ResendInterval, limit.Token).ConfigureAwait(false); }
                catch (TimeoutException)
                {
                    _log.LogDebug("{Transport} session {Id}: no answer yet; offering again", _transport, session);
                }
            }
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested)
        {
            throw new TransportConnectException(ConnectFailure.TimedOut, $"{_transport}: no answer to the offer within {_signalTimeout.TotalSeconds:0.###} s (are CMESSAGE/SMESSAGE lines carried?)");
        }
        finally
        {
            _pending.TryRemove(nonce, out _);
        }
    }

    /// <summary>Hands each answer to the offer it names (by nonce), if it replies to one of that offer's messages.</summary>
    private async Task ReadAnswersAsync(CancellationToken ct)
    {
        try
        {
            await foreach (var s in _signals.Incoming.ReadAllAsync(ct).ConfigureAwait(false))
            {
                if (s.Kind != _answerKind || s.Body is not JObject body) continue;
                if (body["nonce"] is not { Type: JTokenType.String } n || !_pending.TryGetValue((string)n!, out var pending))
                {
                    _log.LogDebug("{Transport}: answer {Id} matches no waiting offer (late or foreign); dropped", _transport, s.MessageId);
                    continue;
                }
                bool replies;
                lock (pending) replies = pending.MessageIds.Contains(s.ReplyTo);
                if (replies) pending.Answer.TrySetResult(body);
                else _log.LogWarning("{Transport}: answer {Id} names an offer's nonce but replies to none of its messages; dropped", _transport, s.MessageId);
            }
        }
        catch (OperationCanceledException) { }
        catch (System.Threading.Channels.ChannelClosedException) { }
    }

    /// <summary>
    /// The server's answer to <paramref name="offer"/>: addressed to its client, replying to its message,
    /// valid for the signal timeout. A channel that cannot write any more is logged, not thrown.
    /// </summary>
    public static void Answer(ISignalChannel signals, string answerKind, Signal offer, JObject body, TimeSpan signalTimeout, ILogger log)
    {
        ArgumentNullException.ThrowIfNull(signals);
        ArgumentNullException.ThrowIfNull(offer);
        try
        {
            signals.Send(new Signal(answerKind, body)
            {
                ClientId = offer.ClientId,
                ReplyTo = offer.MessageId,
                Expires = DateTimeOffset.UtcNow + signalTimeout,
            });
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException or InvalidOperationException)
        {
            log.LogDebug("{Kind} to {Id} not sent: {Error}", answerKind, offer.MessageId, e.Message);
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync().ConfigureAwait(false);
        await _answers.ConfigureAwait(false);
        _stop.Dispose();
    }

    private sealed class Pending
    {
        public HashSet<long> MessageIds { get; } = [];
        public TaskCompletionSource<JObject> Answer { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
    }
}
