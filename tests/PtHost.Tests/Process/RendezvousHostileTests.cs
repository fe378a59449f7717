using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Http.Headers;
using Newtonsoft.Json.Linq;
using PtHost.Net.Signals;
using Xunit.Abstractions;

namespace PtHost.Tests.Process;

/// <summary>
/// Hostile input at a real <c>pthost relay rendezvous</c> (spec/rendezvous.md §2–§5) with a real
/// plain server pthost signalling through it; the test plays the client and the attacker over HTTP.
/// </summary>
[Collection("process")]
public sealed class RendezvousHostileTests(ITestOutputHelper output)
{
    private static readonly string[] Generous = ["--rate", "100000", "--burst", "100000"];

    /// <summary>A bound plain server whose signals go through <paramref name="rendezvous"/>; it answers "hello" (spec/plain.md §3).</summary>
    private static async Task<PtProcess> PlainServerAsync(RendezvousProcess rendezvous, string secret)
    {
        var config = PtChain.BoundServer("127.0.0.1:9");
        config["signals"] = rendezvous.Signals(secret);
        config["loglevel"] = "debug";
        var server = PtProcess.StartPthost(config.ToString(Newtonsoft.Json.Formatting.None));
        await server.ReadUntilDoneAsync();
        await server.WaitForStderrAsync("signals through the rendezvous");
        return server;
    }

    private static string NewClientId() => Convert.ToHexStringLower(System.Security.Cryptography.RandomNumberGenerator.GetBytes(8));

    private static string Hello(string cid, long mid, long? exp = null) =>
        $"{{\"v\":1,\"mid\":{mid},\"cid\":\"{cid}\",\"exp\":{(exp ?? DateTimeOffset.UtcNow.AddMinutes(5).ToUnixTimeSeconds()).ToString(CultureInfo.InvariantCulture)},\"kind\":\"hello\"}}";

    private static async Task<HttpStatusCode> PostAsync(HttpClient http, string path, byte[] body)
    {
        using var content = new ByteArrayContent(body);
        content.Headers.ContentType = new MediaTypeHeaderValue("application/octet-stream");
        using var r = await http.PostAsync(path, content);
        return r.StatusCode;
    }

    /// <summary>Receives the client mailbox once (waiting up to <paramref name="wait"/> s) and opens every frame.</summary>
    private static async Task<List<JObject>> ReceiveAsync(HttpClient http, RendezvousKeys keys, string cid, int wait) => (await ReceiveAfterAsync(http, keys, cid, wait, 0)).Messages;

    /// <summary>As <see cref="ReceiveAsync"/>, past broadcast <paramref name="after"/>; returns the newest broadcast's number too (spec/rendezvous.md §2.3).</summary>
    private static async Task<(List<JObject> Messages, long Sequence)> ReceiveAfterAsync(HttpClient http, RendezvousKeys keys, string cid, int wait, long after)
    {
        using var r = await http.GetAsync($"v1/{keys.Channel}/c/{cid}?wait={wait}&after={after}");
        long sequence = r.Headers.TryGetValues("Rendezvous-Seq", out var seq) ? long.Parse(seq.First(), CultureInfo.InvariantCulture) : after;
        Assert.True(r.StatusCode is HttpStatusCode.OK or HttpStatusCode.NoContent, $"receive: HTTP {(int)r.StatusCode}");
        var result = new List<JObject>();
        if (r.StatusCode == HttpStatusCode.NoContent) return (result, sequence);
        foreach (var frame in RendezvousKeys.ReadFrames(await r.Content.ReadAsByteArrayAsync()))
        {
            var m = keys.Open("c/" + cid, frame.Span, out string? why) ?? keys.Open("b", frame.Span, out why);
            Assert.True(m is not null, why);
            result.Add(JObject.Parse(m.Value.Payload));
        }
        return (result, sequence);
    }

    /// <summary>A legitimate hello and its answer: the channel works.</summary>
    private static async Task AssertChannelWorksAsync(HttpClient http, RendezvousKeys keys)
    {
        string cid = NewClientId();
        Assert.Equal(HttpStatusCode.NoContent, await PostAsync(http, $"v1/{keys.Channel}/s", keys.Seal("s", "plain", Hello(cid, 1))));
        // A first receive may return only the plain server's start-up broadcast (spec/rendezvous.md §2.3): receive until the answer.
        var answers = new List<JObject>();
        long after = 0;
        for (int i = 0; i < 3 && !answers.Any(a => (long?)a["re"] == 1); i++)
        {
            var (got, sequence) = await ReceiveAfterAsync(http, keys, cid, 20, after);
            answers.AddRange(got);
            after = sequence;
        }
        // The plain server's start-up broadcast may come along (spec/rendezvous.md §2.3); the answer is the one with "re".
        var answer = Assert.Single(answers, a => (long?)a["re"] == 1);
        Assert.Equal("server", (string?)answer["kind"]);
    }

    [Fact]
    public async Task Wrong_or_absent_credentials_are_refused_and_a_message_under_another_secret_reaches_nothing()
    {
        await using var rendezvous = await RendezvousProcess.StartAsync();
        string secret = RendezvousProcess.NewSecret();
        var keys = RendezvousKeys.Parse(secret);
        var wrong = RendezvousKeys.Parse(RendezvousProcess.NewSecret());
        await using var server = await PlainServerAsync(rendezvous, secret);
        string cid = NewClientId();
        byte[] hello = keys.Seal("s", "plain", Hello(cid, 1));

        using (var anonymous = rendezvous.HttpClient())
        {
            Assert.Equal(HttpStatusCode.Unauthorized, await PostAsync(anonymous, $"v1/{keys.Channel}/s", hello));
            using var r = await anonymous.GetAsync($"v1/{keys.Channel}/s?wait=0");
            Assert.Equal(HttpStatusCode.Unauthorized, r.StatusCode);
        }
        using (var impostor = rendezvous.HttpClient(token: wrong.TokenText))
        {
            Assert.Equal(HttpStatusCode.Forbidden, await PostAsync(impostor, $"v1/{keys.Channel}/s", hello));
            using var r = await impostor.GetAsync($"v1/{keys.Channel}/c/{cid}?wait=0");
            Assert.Equal(HttpStatusCode.Forbidden, r.StatusCode);
        }
        // Someone holding the token (the rendezvous itself) but not the secret: sealed under another key, or for another mailbox.
        using var http = rendezvous.HttpClient(token: keys.TokenText);
        Assert.Equal(HttpStatusCode.NoContent, await PostAsync(http, $"v1/{keys.Channel}/s", wrong.Seal("s", "plain", Hello(cid, 2))));
        Assert.Equal(HttpStatusCode.NoContent, await PostAsync(http, $"v1/{keys.Channel}/s", keys.Seal($"c/{cid}", "plain", Hello(cid, 3))));
        byte[] altered = keys.Seal("s", "plain", Hello(cid, 4));
        altered[^1] ^= 1;
        Assert.Equal(HttpStatusCode.NoContent, await PostAsync(http, $"v1/{keys.Channel}/s", altered));
        await server.WaitForStderrAsync("rendezvous: message dropped: authentication failed", count: 3);
        Assert.DoesNotContain(await ReceiveAsync(http, keys, cid, 2), a => a["re"] is not null);
        // The server still answers a proper message.
        await AssertChannelWorksAsync(http, keys);
    }

    [Fact]
    public async Task Replayed_and_expired_messages_are_dropped_and_get_no_answer()
    {
        await using var rendezvous = await RendezvousProcess.StartAsync();
        string secret = RendezvousProcess.NewSecret();
        var keys = RendezvousKeys.Parse(secret);
        await using var server = await PlainServerAsync(rendezvous, secret);
        using var http = rendezvous.HttpClient(token: keys.TokenText);
        string cid = NewClientId();

        byte[] hello = keys.Seal("s", "plain", Hello(cid, 7));
        Assert.Equal(HttpStatusCode.NoContent, await PostAsync(http, $"v1/{keys.Channel}/s", hello));
        Assert.Equal(HttpStatusCode.NoContent, await PostAsync(http, $"v1/{keys.Channel}/s", hello)); // the rendezvous replays it
        await server.WaitForStderrAsync("duplicate of message");
        var answers = new List<JObject>();
        answers.AddRange(await ReceiveAsync(http, keys, cid, 20));
        answers.AddRange(await ReceiveAsync(http, keys, cid, 2));
        Assert.Single(answers, a => (long?)a["re"] == 7);

        Assert.Equal(HttpStatusCode.NoContent, await PostAsync(http, $"v1/{keys.Channel}/s", keys.Seal("s", "plain", Hello(cid, 8, DateTimeOffset.UtcNow.AddSeconds(-30).ToUnixTimeSeconds()))));
        await server.WaitForStderrAsync("expired at");
        Assert.DoesNotContain(await ReceiveAsync(http, keys, cid, 2), a => (long?)a["re"] == 8);
    }

    [Fact]
    public async Task Oversized_messages_are_refused_and_messages_past_the_ttl_are_not_delivered()
    {
        await using var rendezvous = await RendezvousProcess.StartAsync("127.0.0.1:0", "--ttl", "1");
        var keys = RendezvousKeys.Parse(RendezvousProcess.NewSecret());
        using var http = rendezvous.HttpClient(token: keys.TokenText);
        string cid = NewClientId();
        byte[] big = new byte[65537];
        big[0] = RendezvousKeys.Version;
        Assert.Equal(HttpStatusCode.RequestEntityTooLarge, await PostAsync(http, $"v1/{keys.Channel}/c/{cid}", big));
        Assert.Equal(HttpStatusCode.BadRequest, await PostAsync(http, $"v1/{keys.Channel}/c/{cid}", [9, 9, 9]));
        // A message not received within its TTL is gone (spec/rendezvous.md §5).
        var posted = Stopwatch.StartNew();
        Assert.Equal(HttpStatusCode.NoContent, await PostAsync(http, $"v1/{keys.Channel}/c/{cid}", keys.Seal($"c/{cid}", "plain", Hello(cid, 1))));
        await Task.Delay(TimeSpan.FromSeconds(1.5) - posted.Elapsed); // the TTL is the condition under test
        Assert.Empty(await ReceiveAsync(http, keys, cid, 0));
        // One within its TTL is delivered.
        Assert.Equal(HttpStatusCode.NoContent, await PostAsync(http, $"v1/{keys.Channel}/c/{cid}", keys.Seal($"c/{cid}", "plain", Hello(cid, 2))));
        Assert.Single(await ReceiveAsync(http, keys, cid, 0));
    }

    [Fact]
    public async Task A_thousand_idle_long_polls_hold_bounded_memory_and_end_at_the_poll_timeout()
    {
        await using var rendezvous = await RendezvousProcess.StartAsync("127.0.0.1:0", [.. Generous, "--poll-timeout", "6", "--stats-interval", "1"]);
        var keys = RendezvousKeys.Parse(RendezvousProcess.NewSecret());
        using var http = rendezvous.HttpClient(token: keys.TokenText);
        Assert.Empty(await ReceiveAsync(http, keys, NewClientId(), 0)); // warm up
        long before = ProcStats.RssBytes(rendezvous.Process.Pid);
        var watch = Stopwatch.StartNew();
        var polls = Enumerable.Range(0, 1000).Select(async _ =>
        {
            using var r = await http.GetAsync($"v1/{keys.Channel}/c/{NewClientId()}?wait=600");
            return (r.StatusCode, watch.Elapsed);
        }).ToList();
        await rendezvous.Process.WaitForLineAsync("STATUS TRANSPORT=rendezvous CHANNELS=1 POLLS=1000 ", TimeSpan.FromSeconds(30));
        long during = ProcStats.RssBytes(rendezvous.Process.Pid);
        var results = await Task.WhenAll(polls);
        output.WriteLine($"RSS {before >> 20} MiB before, {during >> 20} MiB with 1000 polls waiting; polls ended after {results.Min(r => r.Elapsed).TotalSeconds:0.0}–{results.Max(r => r.Elapsed).TotalSeconds:0.0} s");
        Assert.All(results, r => Assert.Equal(HttpStatusCode.NoContent, r.StatusCode));
        Assert.All(results, r => Assert.InRange(r.Elapsed.TotalSeconds, 5.5, 40));
        Assert.True(during - before < 64L << 20, $"RSS grew by {(during - before) >> 20} MiB for 1000 waiting polls");
    }

    [Fact]
    public async Task A_flood_of_channels_meets_the_channel_limit_and_the_established_channel_keeps_working()
    {
        await using var rendezvous = await RendezvousProcess.StartAsync("127.0.0.1:0", [.. Generous, "--max-channels", "40"]);
        string secret = RendezvousProcess.NewSecret();
        var keys = RendezvousKeys.Parse(secret);
        await using var server = await PlainServerAsync(rendezvous, secret);
        using var http = rendezvous.HttpClient(token: keys.TokenText);
        await AssertChannelWorksAsync(http, keys);

        using var flooder = rendezvous.HttpClient(IPAddress.Parse("127.0.0.2"));
        int accepted = 0, refused = 0;
        for (int i = 0; i < 300; i++)
        {
            var k = RendezvousKeys.Parse(RendezvousProcess.NewSecret());
            using var request = new HttpRequestMessage(HttpMethod.Post, $"v1/{k.Channel}/s") { Content = new ByteArrayContent(k.Seal("s", "plain", Hello(NewClientId(), 1))) };
            request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", k.TokenText);
            using var r = await flooder.SendAsync(request);
            if (r.StatusCode == HttpStatusCode.NoContent) accepted++;
            else if (r.StatusCode == HttpStatusCode.ServiceUnavailable) refused++;
            else Assert.Fail($"flood: HTTP {(int)r.StatusCode}");
        }
        output.WriteLine($"channel flood: {accepted} accepted, {refused} refused (limit 40, one legitimate channel held)");
        Assert.True(accepted <= 39, $"{accepted} new channels accepted past the limit");
        Assert.True(refused >= 261);
        await AssertChannelWorksAsync(http, keys);
    }

    [Fact]
    public async Task A_source_over_its_rate_gets_429_and_another_source_keeps_working()
    {
        await using var rendezvous = await RendezvousProcess.StartAsync("127.0.0.1:0", "--rate", "20", "--burst", "50");
        string secret = RendezvousProcess.NewSecret();
        var keys = RendezvousKeys.Parse(secret);
        await using var server = await PlainServerAsync(rendezvous, secret);
        using var flooder = rendezvous.HttpClient(IPAddress.Parse("127.0.0.2"), keys.TokenText);
        int limited = 0;
        for (int i = 0; i < 200; i++)
        {
            using var r = await flooder.GetAsync($"v1/{keys.Channel}/c/{NewClientId()}?wait=0");
            if (r.StatusCode == HttpStatusCode.TooManyRequests) limited++;
        }
        output.WriteLine($"rate flood: {limited} of 200 requests refused with 429");
        Assert.True(limited >= 100, $"only {limited} of 200 refused");
        using var http = rendezvous.HttpClient(token: keys.TokenText);
        await AssertChannelWorksAsync(http, keys);
    }
}
