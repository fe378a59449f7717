using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;
using Newtonsoft.Json.Linq;
using PtHost.Contract;

namespace PtHost.Net;

/// <summary>
/// The server side of the offer/answer exchange over the signal channel (spec/ipc.md §6), as zephyr
/// (spec/zephyr.md §7.3) and jet (spec/jet.md §7.3) run it; <see cref="SignalOffers"/> is the client
/// side. It reads the offers of one kind and, per offer:
/// <list type="bullet">
/// <item>drops it (logged) when it has no client id, no <c>nonce</c> of 1–<see cref="SignalOffers.MaxNonceLength"/>
/// characters, or a body the transport cannot use (that one gets <c>{"nonce", "error"}</c>);</item>
/// <item>answers a resent copy (a nonce it already has) with the offer's answer once it is known;</item>
/// <item>drops it (logged) when <c>maxInProgress</c> offers are in progress;</item>
/// <item>otherwise serves it, and remembers its nonce until <c>signalTimeout</c> + 5 s after serving
/// ended, while copies can still arrive.</item>
/// </list>
/// </summary>
public sealed class SignalAnswers
{
    private readonly ISignalChannel _signals;
    private readonly string _transport, _offerKind, _answerKind;
    private readonly TimeSpan _signalTimeout;
    private readonly int _maxInProgress;
    private readonly ILogger _log;
    private readonly ConcurrentDictionary<string, ReceivedOffer> _known = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<long, Task> _serving = new();
    private int _inProgress;
    private static long s_ids;

    /// <param name="transport">The transport's name, for logs.</param>
    /// <param name="offerKind">The signal kind of offers (client → server).</param>
    /// <param name="answerKind">The signal kind of answers (server → client).</param>
    /// <param name="signalTimeout">How long an offer and its answer are valid.</param>
    /// <param name="maxInProgress">Offers in progress at once (see <see cref="ReceivedOffer.Settle"/>).</param>
    public SignalAnswers(ISignalChannel signals, string transport, string offerKind, string answerKind, TimeSpan signalTimeout, int maxInProgress, ILogger log)
    {
        ArgumentNullException.ThrowIfNull(signals);
        _signals = signals;
        _transport = transport;
        _offerKind = offerKind;
        _answerKind = answerKind;
        _signalTimeout = signalTimeout;
        _maxInProgress = maxInProgress;
        _log = log;
    }

    /// <summary>The offers being served now.</summary>
    public ICollection<Task> Serving => _serving.Values;

    /// <summary>
    /// Reads offers until <paramref name="stopping"/> fires or the channel ends. <paramref name="read"/>
    /// reads what the transport needs from an offer's body, or says what is wrong with it;
    /// <paramref name="serve"/> serves a new offer (it answers through <see cref="ReceivedOffer.Answer"/>).
    /// </summary>
    public async Task RunAsync<T>(Func<Signal, (T? Value, string? Problem)> read, Func<ReceivedOffer, T, Task> serve, CancellationToken stopping)
    {
        ArgumentNullException.ThrowIfNull(read);
        ArgumentNullException.ThrowIfNull(serve);
        try
        {
            await foreach (var s in _signals.Incoming.ReadAllAsync(stopping).ConfigureAwait(false))
            {
                if (s.Kind != _offerKind || s.ClientId is null) continue;
                if (s.Body is not JObject body || body["nonce"] is not { Type: JTokenType.String } n || ((string)n!).Length is 0 or > SignalOffers.MaxNonceLength)
                {
                    _log.LogWarning("{Transport}: offer {Id} from {Client} dropped: no valid \"nonce\" (1 to {Max} characters)", _transport, s.MessageId, s.ClientId, SignalOffers.MaxNonceLength);
                    continue;
                }
                string nonce = (string)n!;
                if (_known.TryGetValue(nonce, out var known))
                {
                    _ = AnswerCopyAsync(s, known);
                    continue;
                }
                var (value, problem) = read(s);
                if (problem is not null)
                {
                    _log.LogWarning("{Transport}: offer {Id} from {Client} dropped: {Problem}", _transport, s.MessageId, s.ClientId, problem);
                    Send(s, new JObject { ["nonce"] = nonce, ["error"] = problem });
                    continue;
                }
                if (Volatile.Read(ref _inProgress) >= _maxInProgress)
                {
                    _log.LogWarning("{Transport}: offer {Id} dropped: {Max} offers in progress", _transport, s.MessageId, _maxInProgress);
                    continue;
                }
                Interlocked.Increment(ref _inProgress);
                var offer = new ReceivedOffer(this, s, nonce, Interlocked.Increment(ref s_ids));
                _known[nonce] = offer;
                var task = Task.Run(() => serve(offer, value!), CancellationToken.None);
                _serving[offer.Id] = task;
                _ = task.ContinueWith(_ => Served(offer), TaskScheduler.Default);
            }
        }
        catch (OperationCanceledException) { }
        catch (System.Threading.Channels.ChannelClosedException) { }
    }

    /// <summary>Serving ended: copies that still wait get no answer if none was given; the nonce is forgotten once copies can no longer arrive.</summary>
    private void Served(ReceivedOffer offer)
    {
        _serving.TryRemove(offer.Id, out _);
        offer.Settle();
        offer.Answered.TrySetResult(null);
        _ = Task.Delay(_signalTimeout + TimeSpan.FromSeconds(5)).ContinueWith(_ => _known.TryRemove(offer.Nonce, out ReceivedOffer? _), TaskScheduler.Default);
    }

    /// <summary>A resent offer (same nonce): the same answer, to this copy, once it is known.</summary>
    private async Task AnswerCopyAsync(Signal copy, ReceivedOffer offer)
    {
        if (await offer.Answered.Task.ConfigureAwait(false) is { } answer) Send(copy, answer);
    }

    private void Send(Signal offer, JObject body) => SignalOffers.Answer(_signals, _answerKind, offer, body, _signalTimeout, _log);

    /// <summary>One offer being served.</summary>
    public sealed class ReceivedOffer
    {
        private readonly SignalAnswers _owner;
        private int _settled;

        internal ReceivedOffer(SignalAnswers owner, Signal signal, string nonce, long id)
        {
            _owner = owner;
            Signal = signal;
            Nonce = nonce;
            Id = id;
        }

        /// <summary>The offer as it first arrived.</summary>
        public Signal Signal { get; }

        /// <summary>The offer's nonce; every answer carries it.</summary>
        public string Nonce { get; }

        /// <summary>A number for logs, unique in the process.</summary>
        public long Id { get; }

        internal TaskCompletionSource<JObject?> Answered { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        /// <summary>
        /// Sends <paramref name="body"/> (with the offer's nonce added) as the answer to the offer, and
        /// to every copy of it that arrives later. Once per offer; later calls are ignored.
        /// </summary>
        public void Answer(JObject body)
        {
            ArgumentNullException.ThrowIfNull(body);
            body["nonce"] = Nonce;
            if (Answered.TrySetResult(body)) _owner.Send(Signal, body);
        }

        /// <summary>The offer no longer counts as in progress (e.g. its session was chosen); at the latest when serving ends.</summary>
        public void Settle()
        {
            if (Interlocked.Exchange(ref _settled, 1) == 0) Interlocked.Decrement(ref _owner._inProgress);
        }
    }
}
