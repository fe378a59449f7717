using System.Collections.Concurrent;
using System.Threading.Channels;
using Microsoft.Extensions.Logging.Abstractions;
using Newtonsoft.Json.Linq;
using PtHost.Contract;
using PtHost.Net;
using PtHost.Testing;

namespace PtHost.Tests.Unit;

/// <summary>
/// The server side of the offer/answer exchange that zephyr (spec/zephyr.md §7.3 step 1) and jet
/// (spec/jet.md §7.2–7.3) share: resent offers, the in-progress bound, unusable offers.
/// </summary>
public class SignalAnswersTests
{
    private const string OfferKind = "t.offer", AnswerKind = "t.answer";

    /// <summary>A signal channel in memory: offers go in by <see cref="Offer"/>, answers are collected.</summary>
    private sealed class MemorySignals : ISignalChannel
    {
        private readonly Channel<Signal> _incoming = Channel.CreateUnbounded<Signal>();
        private long _mid;
        public ConcurrentQueue<Signal> Sent { get; } = new();
        public string InstanceId => "s1";
        public ChannelReader<Signal> Incoming => _incoming.Reader;

        public long Send(Signal signal)
        {
            Sent.Enqueue(signal);
            return Interlocked.Increment(ref _mid);
        }

        public long Offer(JToken? body, string? cid = "c1")
        {
            long mid = Interlocked.Increment(ref _mid);
            _incoming.Writer.TryWrite(new Signal(OfferKind, body) { MessageId = mid, ClientId = cid });
            return mid;
        }

        public Signal[] AnswersTo(long mid) => Sent.Where(s => s.ReplyTo == mid).ToArray();
    }

    private static SignalAnswers Answers(MemorySignals signals, int maxInProgress = 8) =>
        new(signals, "t", OfferKind, AnswerKind, TimeSpan.FromSeconds(30), maxInProgress, NullLogger.Instance);

    private static JObject Body(string nonce, int value = 1) => new() { ["nonce"] = nonce, ["value"] = value };

    private static (int Value, string? Problem) ReadValue(Signal s) =>
        (int)s.Body!["value"]! is int v and > 0 ? (v, null) : (0, "body.value: must be positive");

    [Fact]
    public async Task A_resent_offer_gets_the_same_answer_as_the_first_copy()
    {
        var signals = new MemorySignals();
        var answers = Answers(signals);
        using var stop = new CancellationTokenSource();
        var release = new TaskCompletionSource();
        int served = 0;
        var loop = answers.RunAsync<int>(ReadValue, async (offer, value) =>
        {
            Interlocked.Increment(ref served);
            await release.Task;
            offer.Answer(new JObject { ["zid"] = 1000 + value });
            await Task.Delay(Timeout.Infinite, stop.Token).ContinueWith(_ => { }, TaskScheduler.Default);
        }, stop.Token);

        long first = signals.Offer(Body("n1", 7));
        long copyBefore = signals.Offer(Body("n1", 7));
        release.SetResult();
        await Eventually.TrueAsync(() => signals.AnswersTo(first).Length == 1 && signals.AnswersTo(copyBefore).Length == 1, "answers to the offer and its copy");
        long copyAfter = signals.Offer(Body("n1", 7));
        await Eventually.TrueAsync(() => signals.AnswersTo(copyAfter).Length == 1, "the answer to a copy sent after the answer");

        Assert.Equal(1, Volatile.Read(ref served));
        foreach (long mid in new[] { first, copyBefore, copyAfter })
        {
            var answer = Assert.Single(signals.AnswersTo(mid));
            Assert.Equal(AnswerKind, answer.Kind);
            Assert.Equal("c1", answer.ClientId);
            Assert.Equal(1007, (int)answer.Body!["zid"]!);
            Assert.Equal("n1", (string?)answer.Body!["nonce"]);
        }
        stop.Cancel();
        await loop;
    }

    [Fact]
    public async Task A_resent_offer_of_a_failed_session_gets_the_same_error_answer()
    {
        var signals = new MemorySignals();
        var answers = Answers(signals);
        using var stop = new CancellationTokenSource();
        var loop = answers.RunAsync<int>(ReadValue, (offer, _) =>
        {
            offer.Answer(new JObject { ["error"] = "server cannot use relay r" });
            return Task.CompletedTask;
        }, stop.Token);

        long first = signals.Offer(Body("n2"));
        await Eventually.TrueAsync(() => signals.AnswersTo(first).Length == 1, "the error answer");
        long copy = signals.Offer(Body("n2"));
        await Eventually.TrueAsync(() => signals.AnswersTo(copy).Length == 1, "the error answer to the copy");

        Assert.Equal("server cannot use relay r", (string?)signals.AnswersTo(copy)[0].Body!["error"]);
        Assert.Equal("n2", (string?)signals.AnswersTo(copy)[0].Body!["nonce"]);
        stop.Cancel();
        await loop;
    }

    [Fact]
    public async Task Offers_without_a_valid_nonce_or_client_are_dropped_unanswered_and_unserved()
    {
        var signals = new MemorySignals();
        var answers = Answers(signals);
        using var stop = new CancellationTokenSource();
        var servedNonces = new ConcurrentQueue<string>();
        var loop = answers.RunAsync<int>(ReadValue, (offer, _) =>
        {
            servedNonces.Enqueue(offer.Nonce);
            offer.Answer(new JObject { ["ok"] = true });
            return Task.CompletedTask;
        }, stop.Token);

        long[] dropped =
        [
            signals.Offer(new JObject { ["value"] = 1 }),
            signals.Offer(new JObject { ["nonce"] = "", ["value"] = 1 }),
            signals.Offer(new JObject { ["nonce"] = new string('x', SignalOffers.MaxNonceLength + 1), ["value"] = 1 }),
            signals.Offer(new JObject { ["nonce"] = 5, ["value"] = 1 }),
            signals.Offer(new JArray()),
            signals.Offer(null),
            signals.Offer(Body("no-client"), cid: null),
        ];
        // The loop reads in order: once the last offer is answered, every earlier one was handled.
        long good = signals.Offer(Body(new string('y', SignalOffers.MaxNonceLength)));
        await Eventually.TrueAsync(() => signals.AnswersTo(good).Length == 1, "the answer to the valid offer");

        Assert.All(dropped, mid => Assert.Empty(signals.AnswersTo(mid)));
        Assert.Equal([new string('y', SignalOffers.MaxNonceLength)], servedNonces.ToArray());
        stop.Cancel();
        await loop;
    }

    [Fact]
    public async Task An_offer_the_transport_cannot_read_gets_an_error_answer_naming_the_problem()
    {
        var signals = new MemorySignals();
        var answers = Answers(signals);
        using var stop = new CancellationTokenSource();
        int served = 0;
        var loop = answers.RunAsync<int>(ReadValue, (_, _) =>
        {
            Interlocked.Increment(ref served);
            return Task.CompletedTask;
        }, stop.Token);

        long bad = signals.Offer(Body("n3", value: -1));
        await Eventually.TrueAsync(() => signals.AnswersTo(bad).Length == 1, "the error answer");

        var answer = signals.AnswersTo(bad)[0].Body!;
        Assert.Equal("n3", (string?)answer["nonce"]);
        Assert.Equal("body.value: must be positive", (string?)answer["error"]);
        Assert.Equal(0, Volatile.Read(ref served));
        stop.Cancel();
        await loop;
    }

    [Fact]
    public async Task Beyond_the_in_progress_bound_offers_are_dropped_until_one_settles()
    {
        var signals = new MemorySignals();
        var answers = Answers(signals, maxInProgress: 2);
        using var stop = new CancellationTokenSource();
        var offers = new ConcurrentDictionary<string, SignalAnswers.ReceivedOffer>();
        var loop = answers.RunAsync<int>(ReadValue, async (offer, _) =>
        {
            offers[offer.Nonce] = offer;
            offer.Answer(new JObject { ["ok"] = true });
            await Task.Delay(Timeout.Infinite, stop.Token).ContinueWith(_ => { }, TaskScheduler.Default);
        }, stop.Token);

        long a = signals.Offer(Body("a")), b = signals.Offer(Body("b")), c = signals.Offer(Body("c"));
        long probe = signals.Offer(Body("a"));  // a copy: answered even at the bound
        await Eventually.TrueAsync(() => signals.AnswersTo(probe).Length == 1, "the answer to the copy of a");
        Assert.Single(signals.AnswersTo(a));
        Assert.Single(signals.AnswersTo(b));
        Assert.Empty(signals.AnswersTo(c));
        Assert.False(offers.ContainsKey("c"));

        offers["a"].Settle();
        offers["a"].Settle();  // once per offer: a second call frees nothing more
        long d = signals.Offer(Body("d")), e = signals.Offer(Body("e")), probe2 = signals.Offer(Body("b"));
        await Eventually.TrueAsync(() => signals.AnswersTo(probe2).Length == 1, "the answer to the copy of b");
        Assert.Single(signals.AnswersTo(d));
        Assert.Empty(signals.AnswersTo(e));
        Assert.Equal(3, answers.Serving.Count);  // a, b and d still serve; a no longer counts towards the bound
        stop.Cancel();
        await loop;
        await Task.WhenAll(answers.Serving);
    }
}
