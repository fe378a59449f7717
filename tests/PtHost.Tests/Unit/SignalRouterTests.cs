using Microsoft.Extensions.Logging.Abstractions;
using Newtonsoft.Json.Linq;
using PtHost.Configuration;
using PtHost.Contract;
using PtHost.Ipc;
using PtHost.Tests.Unit.Support;

namespace PtHost.Tests.Unit;

public class SignalRouterTests
{
    private static readonly DateTimeOffset Now = DateTimeOffset.FromUnixTimeSeconds(1_700_000_000);
    private readonly FakeTime _time = new(Now);
    private readonly StringWriter _out = new();

    private SignalRouter Router(Role role) => new(role, new IpcWriter(_out), NullLogger<SignalRouter>.Instance, _time);

    private string[] Lines => _out.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries);

    private static (string Keyword, string Transport, JObject Envelope) SplitLine(string line)
    {
        var parts = line.Split(' ', 3);
        return (parts[0], parts[1], JObject.Parse(parts[2]));
    }

    private static List<Signal> Drain(ISignalChannel channel)
    {
        var list = new List<Signal>();
        while (channel.Incoming.TryRead(out var s)) list.Add(s);
        return list;
    }

    /// <summary>A CMESSAGE envelope as a client would send it.</summary>
    private static string FromClient(long mid, string cid = "c1", string kind = "hello", string? extra = null) =>
        $"{{\"v\":1,\"mid\":{mid},\"cid\":\"{cid}\",\"kind\":\"{kind}\"{(extra is null ? "" : "," + extra)}}}";

    /// <summary>An SMESSAGE envelope as a server would send it.</summary>
    private static string FromServer(long mid, string sid = "s1", string kind = "hello", string? extra = null) =>
        $"{{\"v\":1,\"mid\":{mid},\"sid\":\"{sid}\",\"kind\":\"{kind}\"{(extra is null ? "" : "," + extra)}}}";

    // ---- identity ----

    [Fact]
    public void Instance_id_is_16_lowercase_hex_digits_and_differs_per_process()
    {
        var a = Router(Role.Client);
        var b = Router(Role.Client);
        Assert.Matches("^[0-9a-f]{16}$", a.InstanceId);
        Assert.NotEqual(a.InstanceId, b.InstanceId);
        Assert.Equal(a.InstanceId, a.For("plain").InstanceId);
    }

    [Fact]
    public void Client_reads_SMESSAGE_and_server_reads_CMESSAGE()
    {
        Assert.Equal("SMESSAGE", Router(Role.Client).IncomingKeyword);
        Assert.Equal("CMESSAGE", Router(Role.Server).IncomingKeyword);
    }

    [Fact]
    public void For_returns_one_channel_per_transport()
    {
        var r = Router(Role.Client);
        Assert.Same(r.For("a"), r.For("a"));
        Assert.NotSame(r.For("a"), r.For("b"));
    }

    // ---- Send ----

    [Fact]
    public void Client_Send_writes_CMESSAGE_with_v_mid_cid_exp_kind_body()
    {
        var r = Router(Role.Client);
        long mid = r.For("plain").Send(new Signal("hello", new JObject { ["x"] = 1 }));
        Assert.Equal(1, mid);
        var line = Assert.Single(Lines);
        Assert.Equal(
            $"CMESSAGE plain {{\"v\":1,\"mid\":1,\"cid\":\"{r.InstanceId}\",\"exp\":{Now.ToUnixTimeSeconds() + 600},\"kind\":\"hello\",\"body\":{{\"x\":1}}}}",
            line);
    }

    [Fact]
    public void Client_Send_ignores_ClientId_and_never_writes_sid()
    {
        var r = Router(Role.Client);
        r.For("plain").Send(new Signal("k", null) { ClientId = "someone-else" });
        var (keyword, _, env) = SplitLine(Assert.Single(Lines));
        Assert.Equal("CMESSAGE", keyword);
        Assert.Equal(r.InstanceId, (string)env["cid"]!);
        Assert.Null(env["sid"]);
        Assert.Null(env["body"]);
    }

    [Fact]
    public void Server_Send_writes_SMESSAGE_with_sid_and_no_cid_when_broadcasting()
    {
        var r = Router(Role.Server);
        r.For("plain").Send(new Signal("k", JValue.CreateString("b")));
        var (keyword, transport, env) = SplitLine(Assert.Single(Lines));
        Assert.Equal("SMESSAGE", keyword);
        Assert.Equal("plain", transport);
        Assert.Equal(r.InstanceId, (string)env["sid"]!);
        Assert.Null(env["cid"]);
        Assert.Equal("b", (string)env["body"]!);
    }

    [Fact]
    public void Server_Send_adds_cid_when_addressing_one_client()
    {
        var r = Router(Role.Server);
        r.For("plain").Send(new Signal("k", null) { ClientId = "0123456789abcdef" });
        var (_, _, env) = SplitLine(Assert.Single(Lines));
        Assert.Equal(r.InstanceId, (string)env["sid"]!);
        Assert.Equal("0123456789abcdef", (string)env["cid"]!);
        Assert.Equal(["v", "mid", "sid", "cid", "exp", "kind"], env.Properties().Select(p => p.Name));
    }

    [Fact]
    public void Send_writes_re_only_for_a_reply()
    {
        var r = Router(Role.Client);
        r.For("plain").Send(new Signal("k", null) { ReplyTo = 42 });
        r.For("plain").Send(new Signal("k", null) { ReplyTo = 0 });
        Assert.Equal(42, (long)SplitLine(Lines[0]).Envelope["re"]!);
        Assert.Null(SplitLine(Lines[1]).Envelope["re"]);
    }

    [Fact]
    public void Send_uses_the_given_expiry_or_ten_minutes_from_now()
    {
        var r = Router(Role.Client);
        r.For("plain").Send(new Signal("k", null) { Expires = Now.AddSeconds(30) });
        r.For("plain").Send(new Signal("k", null));
        Assert.Equal(Now.ToUnixTimeSeconds() + 30, (long)SplitLine(Lines[0]).Envelope["exp"]!);
        Assert.Equal(Now.ToUnixTimeSeconds() + 600, (long)SplitLine(Lines[1]).Envelope["exp"]!);
        Assert.Equal(TimeSpan.FromMinutes(10), SignalRouter.DefaultLifetime);
    }

    [Fact]
    public void Message_ids_increase_across_all_transports_of_the_process()
    {
        var r = Router(Role.Server);
        Assert.Equal(1, r.For("a").Send(new Signal("k", null)));
        Assert.Equal(2, r.For("b").Send(new Signal("k", null)));
        Assert.Equal(3, r.For("a").Send(new Signal("k", null)));
        Assert.Equal([1L, 2L, 3L], Lines.Select(l => (long)SplitLine(l).Envelope["mid"]!));
    }

    [Fact]
    public void Send_of_a_payload_over_60KiB_throws_and_writes_nothing()
    {
        var r = Router(Role.Client);
        var e = Assert.Throws<ArgumentException>(() => r.For("plain").Send(new Signal("k", new string('x', SignalRouter.MaxPayloadBytes))));
        Assert.Contains("longer than", e.Message);
        Assert.Empty(_out.ToString());
    }

    [Fact]
    public void Send_keeps_the_envelope_on_one_line()
    {
        var r = Router(Role.Client);
        r.For("plain").Send(new Signal("k", new JObject { ["text"] = "line1\nline2\r\n", ["o"] = new JObject { ["a"] = new JArray(1, 2) } }));
        var line = Assert.Single(Lines);
        Assert.Equal("line1\nline2\r\n", (string)SplitLine(line).Envelope["body"]!["text"]!);
    }

    [Fact]
    public void What_a_client_sends_a_server_delivers_and_vice_versa()
    {
        var client = Router(Role.Client);
        var server = new SignalRouter(Role.Server, new IpcWriter(_out), NullLogger<SignalRouter>.Instance, _time);
        var serverChannel = server.For("plain");
        var clientChannel = client.For("plain");

        clientChannel.Send(new Signal("ping", new JObject { ["n"] = 1 }));
        var (_, t1, _) = SplitLine(Lines[0]);
        Assert.Null(server.Deliver(t1, Lines[0].Split(' ', 3)[2]));
        var ping = Assert.Single(Drain(serverChannel));
        Assert.Equal(client.InstanceId, ping.ClientId);

        serverChannel.Send(new Signal("pong", null) { ReplyTo = ping.MessageId, ClientId = ping.ClientId });
        Assert.Null(client.Deliver("plain", Lines[1].Split(' ', 3)[2]));
        var pong = Assert.Single(Drain(clientChannel));
        Assert.Equal("pong", pong.Kind);
        Assert.Equal(ping.MessageId, pong.ReplyTo);
        Assert.Null(pong.ClientId);
    }

    // ---- Deliver: accepted ----

    [Fact]
    public void Server_delivers_a_CMESSAGE_with_MessageId_ReplyTo_ClientId_and_Expires()
    {
        var r = Router(Role.Server);
        var ch = r.For("plain");
        long exp = Now.ToUnixTimeSeconds() + 60;
        Assert.Null(r.Deliver("plain", FromClient(7, "c1", "offer", $"\"re\":3,\"exp\":{exp},\"body\":{{\"sdp\":\"x\"}}")));
        var s = Assert.Single(Drain(ch));
        Assert.Equal("offer", s.Kind);
        Assert.Equal("x", (string)s.Body!["sdp"]!);
        Assert.Equal(7, s.MessageId);
        Assert.Equal(3, s.ReplyTo);
        Assert.Equal("c1", s.ClientId);
        Assert.Equal(DateTimeOffset.FromUnixTimeSeconds(exp), s.Expires);
    }

    [Fact]
    public void Client_delivers_an_SMESSAGE_without_ClientId()
    {
        var r = Router(Role.Client);
        var ch = r.For("plain");
        Assert.Null(r.Deliver("plain", FromServer(9, "s1", "answer", $"\"cid\":\"{r.InstanceId}\"")));
        Assert.Null(r.Deliver("plain", FromServer(10)));
        var signals = Drain(ch);
        Assert.Equal(2, signals.Count);
        Assert.All(signals, s => Assert.Null(s.ClientId));
        Assert.Equal([9L, 10L], signals.Select(s => s.MessageId));
        Assert.All(signals, s => Assert.Equal(0, s.ReplyTo));
        Assert.All(signals, s => Assert.Null(s.Expires));
        Assert.Null(signals[1].Body);
    }

    [Fact]
    public void Non_integer_re_is_dropped()
    {
        var r = Router(Role.Server);
        var ch = r.For("plain");
        Assert.Contains("\"re\"", r.Deliver("plain", FromClient(1, extra: "\"re\":\"3\"")));
        Assert.Empty(Drain(ch));
    }

    [Fact]
    public void Unknown_envelope_fields_are_ignored()
    {
        var r = Router(Role.Server);
        var ch = r.For("plain");
        Assert.Null(r.Deliver("plain", FromClient(1, extra: "\"future\":[1,2,3]")));
        Assert.Single(Drain(ch));
    }

    [Fact]
    public void Message_expiring_exactly_now_is_still_delivered()
    {
        var r = Router(Role.Server);
        var ch = r.For("plain");
        Assert.Null(r.Deliver("plain", FromClient(1, extra: $"\"exp\":{Now.ToUnixTimeSeconds()}")));
        Assert.Single(Drain(ch));
    }

    [Fact]
    public void Far_future_exp_is_clamped_not_rejected()
    {
        var r = Router(Role.Server);
        var ch = r.For("plain");
        Assert.Null(r.Deliver("plain", FromClient(1, extra: $"\"exp\":{long.MaxValue}")));
        Assert.Equal(DateTimeOffset.FromUnixTimeSeconds(253402300799), Assert.Single(Drain(ch)).Expires);
    }

    // ---- Deliver: dropped ----

    [Theory]
    [InlineData("")]
    [InlineData("not json")]
    [InlineData("{")]
    [InlineData("[1,2]")]
    [InlineData("1")]
    [InlineData("\"s\"")]
    [InlineData("null")]
    public void Non_JSON_or_non_object_payload_is_dropped(string payload)
    {
        var r = Router(Role.Server);
        var ch = r.For("plain");
        Assert.NotNull(r.Deliver("plain", payload));
        Assert.Empty(Drain(ch));
    }

    [Theory]
    [InlineData("{\"mid\":1,\"cid\":\"c\",\"kind\":\"k\"}", "\"v\"")]
    [InlineData("{\"v\":2,\"mid\":1,\"cid\":\"c\",\"kind\":\"k\"}", "\"v\"")]
    [InlineData("{\"v\":\"1\",\"mid\":1,\"cid\":\"c\",\"kind\":\"k\"}", "\"v\"")]
    [InlineData("{\"v\":1.0,\"mid\":1,\"cid\":\"c\",\"kind\":\"k\"}", "\"v\"")]
    [InlineData("{\"v\":null,\"mid\":1,\"cid\":\"c\",\"kind\":\"k\"}", "\"v\"")]
    [InlineData("{\"v\":1,\"cid\":\"c\",\"kind\":\"k\"}", "\"mid\"")]
    [InlineData("{\"v\":1,\"mid\":0,\"cid\":\"c\",\"kind\":\"k\"}", "\"mid\"")]
    [InlineData("{\"v\":1,\"mid\":-5,\"cid\":\"c\",\"kind\":\"k\"}", "\"mid\"")]
    [InlineData("{\"v\":1,\"mid\":\"1\",\"cid\":\"c\",\"kind\":\"k\"}", "\"mid\"")]
    [InlineData("{\"v\":1,\"mid\":1.5,\"cid\":\"c\",\"kind\":\"k\"}", "\"mid\"")]
    [InlineData("{\"v\":1,\"mid\":1,\"cid\":\"c\"}", "\"kind\"")]
    [InlineData("{\"v\":1,\"mid\":1,\"cid\":\"c\",\"kind\":5}", "\"kind\"")]
    [InlineData("{\"v\":1,\"mid\":1,\"cid\":\"c\",\"kind\":null}", "\"kind\"")]
    [InlineData("{\"v\":1,\"mid\":1,\"cid\":\"c\",\"kind\":\"k\",\"exp\":\"soon\"}", "\"exp\"")]
    [InlineData("{\"v\":1,\"mid\":1,\"cid\":\"c\",\"kind\":\"k\",\"exp\":1.5}", "\"exp\"")]
    public void Envelope_with_missing_or_mistyped_v_mid_kind_or_exp_is_dropped(string payload, string field)
    {
        var r = Router(Role.Server);
        var ch = r.For("plain");
        Assert.Contains(field, r.Deliver("plain", payload));
        Assert.Empty(Drain(ch));
    }

    [Theory]
    [InlineData(-1)]
    [InlineData(-3600)]
    public void Expired_message_is_dropped(int secondsFromNow)
    {
        var r = Router(Role.Server);
        var ch = r.For("plain");
        Assert.Contains("expired", r.Deliver("plain", FromClient(1, extra: $"\"exp\":{Now.ToUnixTimeSeconds() + secondsFromNow}")));
        Assert.Empty(Drain(ch));
    }

    [Fact]
    public void Message_expires_when_the_clock_passes_exp()
    {
        var r = Router(Role.Server);
        var ch = r.For("plain");
        string payload = FromClient(1, extra: $"\"exp\":{Now.ToUnixTimeSeconds() + 10}");
        _time.Now = Now.AddSeconds(10.001);
        Assert.Contains("expired", r.Deliver("plain", payload));
        _time.Now = Now.AddSeconds(10);
        Assert.Null(r.Deliver("plain", payload));
        Assert.Single(Drain(ch));
    }

    [Theory]
    [InlineData(0)]
    [InlineData(-1)]
    [InlineData(long.MinValue)]
    public void Exp_at_or_before_the_epoch_is_expired(long exp)
    {
        var r = Router(Role.Server);
        r.For("plain");
        Assert.Contains("expired", r.Deliver("plain", FromClient(1, extra: $"\"exp\":{exp}")));
    }

    [Fact]
    public void Duplicate_from_the_same_sender_is_dropped()
    {
        var r = Router(Role.Server);
        var ch = r.For("plain");
        Assert.Null(r.Deliver("plain", FromClient(5, "c1")));
        Assert.Contains("duplicate", r.Deliver("plain", FromClient(5, "c1", kind: "other")));
        Assert.Null(r.Deliver("plain", FromClient(5, "c2")));
        Assert.Null(r.Deliver("plain", FromClient(6, "c1")));
        Assert.Equal([("c1", 5L), ("c2", 5L), ("c1", 6L)], Drain(ch).Select(s => (s.ClientId!, s.MessageId)));
    }

    [Fact]
    public void Duplicates_are_tracked_per_transport()
    {
        var r = Router(Role.Server);
        var a = r.For("a");
        var b = r.For("b");
        Assert.Null(r.Deliver("a", FromClient(5)));
        Assert.Null(r.Deliver("b", FromClient(5)));
        Assert.Single(Drain(a));
        Assert.Single(Drain(b));
    }

    [Fact]
    public void Client_dedupes_on_the_sender_sid()
    {
        var r = Router(Role.Client);
        var ch = r.For("plain");
        Assert.Null(r.Deliver("plain", FromServer(1, "s1")));
        Assert.NotNull(r.Deliver("plain", FromServer(1, "s1")));
        Assert.Null(r.Deliver("plain", FromServer(1, "s2")));
        Assert.Equal(2, Drain(ch).Count);
    }

    [Fact]
    public void Duplicate_memory_forgets_the_oldest_after_the_window()
    {
        var r = Router(Role.Server);
        var ch = r.For("plain");
        for (int mid = 1; mid <= SignalRouter.DedupeWindow; mid++) Assert.Null(r.Deliver("plain", FromClient(mid)));
        Assert.NotNull(r.Deliver("plain", FromClient(1)));          // still remembered
        Assert.Null(r.Deliver("plain", FromClient(SignalRouter.DedupeWindow + 1)));
        Assert.Null(r.Deliver("plain", FromClient(1)));             // forgotten: the window moved on
        Assert.NotNull(r.Deliver("plain", FromClient(2 + 1)));      // mid 3 is still inside the window
        while (ch.Incoming.TryRead(out _)) { }
    }

    [Fact]
    public void SMESSAGE_for_another_client_is_dropped()
    {
        var r = Router(Role.Client);
        var ch = r.For("plain");
        Assert.Contains("addressed to client", r.Deliver("plain", FromServer(1, extra: "\"cid\":\"ffffffffffffffff\"")));
        Assert.Empty(Drain(ch));
    }

    [Fact]
    public void SMESSAGE_without_sid_is_dropped()
    {
        var r = Router(Role.Client);
        var ch = r.For("plain");
        Assert.Contains("sid", r.Deliver("plain", "{\"v\":1,\"mid\":1,\"kind\":\"k\"}"));
        Assert.Contains("sid", r.Deliver("plain", "{\"v\":1,\"mid\":2,\"kind\":\"k\",\"sid\":7}"));
        Assert.Empty(Drain(ch));
    }

    [Theory]
    [InlineData("{\"v\":1,\"mid\":1,\"kind\":\"k\"}")]
    [InlineData("{\"v\":1,\"mid\":1,\"kind\":\"k\",\"cid\":null}")]
    [InlineData("{\"v\":1,\"mid\":1,\"kind\":\"k\",\"cid\":12}")]
    [InlineData("{\"v\":1,\"mid\":1,\"kind\":\"k\",\"sid\":\"s1\"}")]
    public void CMESSAGE_without_cid_is_dropped(string payload)
    {
        var r = Router(Role.Server);
        var ch = r.For("plain");
        Assert.Contains("cid", r.Deliver("plain", payload));
        Assert.Empty(Drain(ch));
    }

    [Fact]
    public void Message_for_an_unknown_transport_is_dropped()
    {
        var r = Router(Role.Server);
        var ch = r.For("plain");
        Assert.Contains("no transport", r.Deliver("obfs4", FromClient(1)));
        Assert.Contains("no transport", r.Deliver("Plain", FromClient(2)));
        Assert.Empty(Drain(ch));
    }

    [Fact]
    public void Payload_over_60KiB_is_dropped_unread()
    {
        var r = Router(Role.Server);
        var ch = r.For("plain");
        string payload = FromClient(1, extra: $"\"body\":\"{new string('x', SignalRouter.MaxPayloadBytes)}\"");
        Assert.Contains("longer than", r.Deliver("plain", payload));
        Assert.Empty(Drain(ch));
    }

    [Fact]
    public void Dropped_message_does_not_use_up_its_id()
    {
        var r = Router(Role.Server);
        var ch = r.For("plain");
        Assert.NotNull(r.Deliver("plain", FromClient(1, extra: $"\"exp\":{Now.ToUnixTimeSeconds() - 1}")));
        Assert.Null(r.Deliver("plain", FromClient(1, extra: $"\"exp\":{Now.ToUnixTimeSeconds() + 1}")));
        Assert.Single(Drain(ch));
    }

    [Fact]
    public void Incoming_keeps_the_newest_256_messages()
    {
        var r = Router(Role.Server);
        var ch = r.For("plain");
        for (int mid = 1; mid <= SignalRouter.IncomingCapacity + 44; mid++) Assert.Null(r.Deliver("plain", FromClient(mid)));
        var signals = Drain(ch);
        Assert.Equal(SignalRouter.IncomingCapacity, signals.Count);
        Assert.Equal(45, signals[0].MessageId);
        Assert.Equal(SignalRouter.IncomingCapacity + 44, signals[^1].MessageId);
    }
}
