using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Microsoft.Extensions.Logging.Abstractions;
using Newtonsoft.Json;
using Newtonsoft.Json.Linq;
using PtHost.Contract;
using PtHost.Net.Udp;
using PtHost.Reliability.Support;
using PtHost.Transports.Asport;
using PtHost.Transports.Jet;
using PtHost.Transports.Rud;
using PtHost.Turn;
using Xunit.Abstractions;

namespace PtHost.Reliability;

/// <summary>
/// Seeded mutation fuzzing of the relay transports' parsers, in process: STUN/TURN messages and
/// ChannelData (through the TURN state machine itself), the UDP association frames (spec/turn.md §5.2),
/// JET_PACKET v1/v2 and the JSON the JET transport reads from the relay and from signals, ASPORT
/// commands and fragment reassembly, RUD packet headers, frames, handshake messages and a live
/// responder endpoint. Same rules as <see cref="ParserFuzzTests"/>: a defined verdict for every input,
/// only documented exceptions, no hang (each test has a time budget); <c>FUZZ_ITERATIONS</c> for longer runs.
/// </summary>
public class TransportParserFuzzTests(ITestOutputHelper output)
{
    private static readonly TimeSpan Budget = TimeSpan.FromMinutes(3);
    private static int Iterations => Mutator.Iterations(ParserFuzzTests.CiIterations);

    private async Task FuzzBytes(string name, int seed, byte[][] seeds, Func<byte[], Random, string> check)
    {
        int iterations = Iterations;
        var counts = new Dictionary<string, int>();
        await Task.Run(() =>
        {
            var m = new Mutator(seed);
            foreach (var s in seeds) Run(s);
            for (int i = 0; i < iterations; i++) Run(m.Next(seeds));

            void Run(byte[] input)
            {
                string verdict;
                try { verdict = check(input, m.Random); }
                catch (Exception e) { throw new Xunit.Sdk.XunitException($"{name}: input {Convert.ToHexString(input)}: {e}"); }
                counts[verdict] = counts.GetValueOrDefault(verdict) + 1;
            }
        }).WaitAsync(Budget);
        output.WriteLine($"{name}: {iterations} inputs, " + string.Join(", ", counts.OrderByDescending(kv => kv.Value).Take(12).Select(kv => $"{kv.Key} {kv.Value}")));
    }

    private static byte[] Longer(byte[] input, Random rng)
    {
        var tail = new byte[1 + rng.Next(16)];
        rng.NextBytes(tail);
        return [.. input, .. tail];
    }

    // ---- STUN (spec/turn.md §3.1) -----------------------------------------------------------------

    internal static readonly byte[] Tid = Convert.FromHexString("0102030405060708090a0b0c");

    internal static byte[] BuildStun(int method, StunClass cls, ReadOnlySpan<byte> tid, IEnumerable<(ushort Type, byte[] Value)> attributes,
        byte[]? key = null, bool fingerprint = false)
    {
        Span<byte> buffer = stackalloc byte[4096];
        var w = new StunWriter(buffer, method, cls, tid);
        foreach (var (type, value) in attributes) w.Add(type, value);
        if (key is not null) w.AddIntegrity(key);
        if (fingerprint) w.AddFingerprint();
        return w.Written.ToArray();
    }

    private static byte[] XorPeer(string ip, int port) => XorAddressValue(PeerAddress.From(new IPEndPoint(IPAddress.Parse(ip), port)), Tid);

    internal static byte[] XorAddressValue(PeerAddress peer, ReadOnlySpan<byte> tid)
    {
        var value = new byte[20];
        int n = Stun.WriteXorAddress(value, peer, tid);
        return value[..n];
    }

    private static byte[] U32(uint v)
    {
        var b = new byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(b, v);
        return b;
    }

    internal static byte[][] StunSeeds()
    {
        byte[] key = Stun.LongTermKey("alice", "example.org", "secret");
        (ushort, byte[])[] auth = [(StunAttribute.Username, "alice"u8.ToArray()), (StunAttribute.Realm, "example.org"u8.ToArray()), (StunAttribute.Nonce, new byte[32])];
        return
        [
            BuildStun(StunMethod.Binding, StunClass.Request, Tid, []),
            BuildStun(StunMethod.Binding, StunClass.Request, Tid, [(StunAttribute.Software, "x"u8.ToArray())], fingerprint: true),
            BuildStun(StunMethod.Allocate, StunClass.Request, Tid, [(StunAttribute.RequestedTransport, U32(17u << 24))]),
            BuildStun(StunMethod.Allocate, StunClass.Request, Tid, [(StunAttribute.RequestedTransport, U32(17u << 24)), (StunAttribute.Lifetime, U32(3600)), .. auth], key, fingerprint: true),
            BuildStun(StunMethod.CreatePermission, StunClass.Request, Tid, [(StunAttribute.XorPeerAddress, XorPeer("192.0.2.1", 4000)), .. auth], key),
            BuildStun(StunMethod.ChannelBind, StunClass.Request, Tid, [(StunAttribute.ChannelNumber, U32(0x4000u << 16)), (StunAttribute.XorPeerAddress, XorPeer("2001:db8::1", 4000)), .. auth], key, fingerprint: true),
            BuildStun(StunMethod.Send, StunClass.Indication, Tid, [(StunAttribute.XorPeerAddress, XorPeer("192.0.2.1", 4000)), (StunAttribute.Data, "hello"u8.ToArray())]),
            BuildStun(StunMethod.Refresh, StunClass.Request, Tid, [(StunAttribute.Lifetime, U32(0)), .. auth], key),
            BuildStun(StunMethod.Allocate, StunClass.Error, Tid, [(StunAttribute.ErrorCode, [0, 0, 4, 1, .. "Unauthorized"u8]), (StunAttribute.UnknownAttributes, [0, 0x1a, 0x7f, 0xff])]),
            [0x40, 0x00, 0x00, 0x05, 1, 2, 3, 4, 5, 0, 0, 0],
            [0x7f, 0xff, 0x00, 0x00],
        ];
    }

    /// <summary>Stun.TryParse: a verdict of its enum; a parsed message's attributes lie inside it, FINGERPRINT matches, accessors never throw.</summary>
    internal static string CheckStun(byte[] input, Random rng)
    {
        var error = Stun.TryParse(input, out var message);
        Assert.True(Enum.IsDefined(error), $"undefined verdict {error}");
        int frame = Stun.FrameLength(input);
        if (input.Length >= 4 && (input[0] & 0xC0) == 0) Assert.Equal(20 + BinaryPrimitives.ReadUInt16BigEndian(input.AsSpan(2)), frame);
        else Assert.Equal(-1, frame);
        switch (error)
        {
            case StunParseError.TooShort:
                Assert.True(input.Length < Stun.HeaderLength);
                break;
            case StunParseError.None:
                Assert.Equal(input.Length, frame);
                Assert.Equal(0, (input.Length - Stun.HeaderLength) % 4);
                int n = 0;
                foreach (var a in message.Attributes)
                {
                    Assert.True(a.Value.Length <= input.Length);
                    n++;
                }
                Assert.True(n <= (input.Length - Stun.HeaderLength) / 4);
                Span<ushort> unknown = stackalloc ushort[16];
                int u = message.UnknownRequired(unknown);
                Assert.InRange(u, 0, 16);
                _ = message.Method;
                _ = message.Class;
                if (message.TryGet(StunAttribute.XorPeerAddress, out var peer)) Stun.TryReadXorAddress(peer, message.TransactionId, out _);
                if (message.HasFingerprint)
                    Assert.Equal(BinaryPrimitives.ReadUInt32BigEndian(input.AsSpan(message.FingerprintOffset + 4)), Stun.ComputeFingerprint(input, message.FingerprintOffset));
                if (message.HasIntegrity) Stun.CheckIntegrity(message, new byte[16]);
                break;
        }
        return error.ToString();
    }

    [Fact]
    public Task Stun_messages_survive_mutation() => FuzzBytes("stun", 8001, StunSeeds(), (input, rng) =>
    {
        var verdict = CheckStun(input, rng);
        // Trailing bytes make a well-formed UDP message malformed (the length no longer matches, §3.1 rule 2).
        if (verdict == nameof(StunParseError.None)) Assert.Equal(StunParseError.BadLength, Stun.TryParse(Longer(input, rng), out _));
        return verdict;
    });

    /// <summary>
    /// The TURN state machine itself (spec/turn.md §3): byte-mutated messages and ChannelData from UDP
    /// and TCP clients, and structurally generated requests correctly signed with a live NONCE (so
    /// that Allocate, Refresh, CreatePermission, ChannelBind and Send run their attribute checks).
    /// Handle never throws; every reply is a well-formed STUN message; limits hold; a Binding
    /// request is answered after the run.
    /// </summary>
    [Fact]
    public async Task Turn_server_handles_mutated_and_signed_random_requests()
    {
        const string Realm = "example.org";
        var limits = new TurnLimits { MaxAllocations = 16, MaxAllocationsPerUser = 8, MaxPermissions = 8, MaxChannels = 8 };
        var sessions = new List<NullDatagramSession>();
        await using var server = new TurnServer(new TurnOptions(new IPEndPoint(IPAddress.Loopback, 0), Realm,
            new Dictionary<string, string> { ["alice"] = "secret", ["bob"] = "pw" }, limits),
            (_, _) =>
            {
                var s = new NullDatagramSession();
                lock (sessions) sessions.Add(s);
                return ValueTask.FromResult<IAssociation>(s);
            }, NullLogger.Instance);
        var clients = new[]
        {
            new RecordingTurnClient("203.0.113.1", 5000), new RecordingTurnClient("203.0.113.1", 5001),
            new RecordingTurnClient("2001:db8::5", 6000), new RecordingTurnClient("203.0.113.2", 7000, stream: true),
        };
        var keys = new Dictionary<string, byte[]> { ["alice"] = Stun.LongTermKey("alice", Realm, "secret"), ["bob"] = Stun.LongTermKey("bob", Realm, "pw") };
        // A live nonce per client: the 401 to an unsigned Allocate carries one.
        var nonces = new Dictionary<TurnClient, byte[]>();
        foreach (var c in clients)
        {
            server.Handle(c, BuildStun(StunMethod.Allocate, StunClass.Request, Tid, [(StunAttribute.RequestedTransport, U32(17u << 24))]));
            var reply = c.Drain().Single();
            Assert.Equal(StunParseError.None, Stun.TryParse(reply, out var r));
            Assert.True(r.TryGet(StunAttribute.Nonce, out var nonce));
            nonces[c] = nonce.ToArray();
        }

        int iterations = Iterations;
        var counts = new Dictionary<string, int>();
        var seeds = StunSeeds();
        await Task.Run(async () =>
        {
            var m = new Mutator(8101);
            var rng = m.Random;
            for (int i = 0; i < iterations; i++)
            {
                var client = clients[rng.Next(clients.Length)];
                byte[] input = (i % 3) switch
                {
                    0 => m.Next(seeds),
                    1 => SignedRandomRequest(rng, nonces[client], keys),
                    _ => RandomChannelData(rng),
                };
                try { server.Handle(client, input); }
                catch (Exception e) { throw new Xunit.Sdk.XunitException($"turn: input {Convert.ToHexString(input)}: {e}"); }
                if (i % 64 == 0)
                {
                    await Task.Yield(); // let session opening and peer checks complete
                    Assert.InRange(server.AllocationCount, 0, limits.MaxAllocations);
                }
                foreach (var reply in client.Drain())
                {
                    string kind;
                    if ((reply[0] & 0xC0) == 0x40) kind = "ChannelData";
                    else
                    {
                        Assert.True(Stun.TryParse(reply, out var r) == StunParseError.None, $"reply {Convert.ToHexString(reply)} to {Convert.ToHexString(input)} is not well-formed");
                        kind = r.Class == StunClass.Error && r.TryGet(StunAttribute.ErrorCode, out var code) && code.Length >= 4
                            ? $"{code[2] * 100 + code[3]}" : r.Class.ToString();
                    }
                    counts[kind] = counts.GetValueOrDefault(kind) + 1;
                }
            }
        }).WaitAsync(Budget);
        output.WriteLine($"turn server: {iterations} inputs, {server.Dropped} dropped, {server.AllocationCount} allocations at the end, {sessions.Count} associations opened, {sessions.Sum(s => s.Sent)} datagrams relayed; replies: "
            + string.Join(", ", counts.OrderByDescending(kv => kv.Value).Select(kv => $"{kv.Key} {kv.Value}")));
        // Still serving: a fresh client's Binding request is answered (retransmitted, as RFC 5389 §7.2.1 says, while
        // the listener's budget for unauthenticated UDP replies refills after the run: spec/turn.md §4).
        var fresh = new RecordingTurnClient("198.51.100.9", 9999);
        byte[]? answer = null;
        await Eventually.TrueAsync(() =>
        {
            server.Handle(fresh, BuildStun(StunMethod.Binding, StunClass.Request, Tid, []));
            answer = fresh.Drain().SingleOrDefault();
            return answer is not null;
        }, "a Binding answer from a fresh client", TimeSpan.FromSeconds(10));
        Assert.Equal(StunParseError.None, Stun.TryParse(answer!, out var ok));
        Assert.Equal(StunClass.Success, ok.Class);
        Assert.True(sessions.Count > 0, "no Allocate ever succeeded: the generator does not reach the TURN methods");
    }

    private static readonly int[] Methods = [StunMethod.Allocate, StunMethod.Refresh, StunMethod.CreatePermission, StunMethod.ChannelBind, StunMethod.Binding, 0x00a, StunMethod.Data];

    /// <summary>A request of a random method with random (often valid) attributes, signed for a random user with the client's nonce.</summary>
    internal static byte[] SignedRandomRequest(Random rng, byte[] nonce, Dictionary<string, byte[]> keys)
    {
        var tid = new byte[12];
        rng.NextBytes(tid);
        if (rng.Next(4) == 0) Array.Clear(tid); // a repeated transaction id (Allocate retransmission)
        int method = Methods[rng.Next(Methods.Length)];
        var attributes = new List<(ushort, byte[])>();
        int count = rng.Next(5);
        for (int i = 0; i < count; i++) attributes.Add(RandomAttribute(rng, tid));
        string user = rng.Next(8) == 0 ? "mallory" : rng.Next(2) == 0 ? "alice" : "bob";
        byte[] key = keys.GetValueOrDefault(user) ?? new byte[16];
        if (rng.Next(10) != 0) attributes.Add((StunAttribute.Username, Encoding.UTF8.GetBytes(user)));
        if (rng.Next(10) != 0) attributes.Add((StunAttribute.Realm, "example.org"u8.ToArray()));
        if (rng.Next(10) != 0) attributes.Add((StunAttribute.Nonce, rng.Next(10) == 0 ? new byte[32] : nonce));
        bool indication = method == StunMethod.Send || rng.Next(12) == 0;
        return BuildStun(indication ? StunMethod.Send : method, indication ? StunClass.Indication : StunClass.Request, tid, attributes,
            indication || rng.Next(12) == 0 ? null : key, fingerprint: rng.Next(2) == 0);
    }

    private static readonly string[] PeerIps = ["192.0.2.1", "192.0.2.2", "2001:db8::1", "::ffff:192.0.2.1", "127.0.0.1", "0.0.0.0"];

    private static (ushort, byte[]) RandomAttribute(Random rng, byte[] tid)
    {
        switch (rng.Next(12))
        {
            case 0: return (StunAttribute.RequestedTransport, rng.Next(5) == 0 ? U32((uint)rng.Next()) : U32(17u << 24));
            case 1: return (StunAttribute.Lifetime, U32(rng.Next(3) switch { 0 => 0, 1 => (uint)rng.Next(0, 5000), _ => uint.MaxValue }));
            case 2:
            case 3:
                {
                    var peer = PeerAddress.From(new IPEndPoint(IPAddress.Parse(PeerIps[rng.Next(PeerIps.Length)]), rng.Next(4) == 0 ? 0 : 4000 + rng.Next(4)));
                    var v = XorAddressValue(peer, tid);
                    if (rng.Next(8) == 0) v[1] = (byte)rng.Next(4);
                    if (rng.Next(8) == 0) v = v[..rng.Next(v.Length)];
                    return (StunAttribute.XorPeerAddress, v);
                }
            case 4: return (StunAttribute.ChannelNumber, rng.Next(6) == 0 ? U32((uint)rng.Next()) : U32((uint)(0x4000 + rng.Next(4)) << 16));
            case 5: return (StunAttribute.Data, new byte[rng.Next(64)]);
            case 6: return (StunAttribute.EvenPort, rng.Next(4) == 0 ? [] : [(byte)(rng.Next(2) << 7)]);
            case 7:
                {
                    var token = new byte[rng.Next(4) == 0 ? rng.Next(12) : 8];
                    rng.NextBytes(token);
                    return (StunAttribute.ReservationToken, token);
                }
            case 8: return (StunAttribute.RequestedAddressFamily, [(byte)rng.Next(4), 0, 0, 0]);
            case 9: return (StunAttribute.DontFragment, []);
            case 10: return ((ushort)rng.Next(0x10000), new byte[rng.Next(12)]);
            default: return (StunAttribute.Software, "fuzz"u8.ToArray());
        }
    }

    private static byte[] RandomChannelData(Random rng)
    {
        int length = rng.Next(3) == 0 ? rng.Next(0x10000) : rng.Next(64);
        int present = Math.Min(length, 64) + rng.Next(-4, 8);
        var b = new byte[4 + Math.Max(0, present)];
        BinaryPrimitives.WriteUInt16BigEndian(b, (ushort)(rng.Next(8) == 0 ? 0x4000 + rng.Next(0x4000) : 0x4000 + rng.Next(4)));
        BinaryPrimitives.WriteUInt16BigEndian(b.AsSpan(2), (ushort)length);
        return b;
    }

    // ---- UDP association frames (spec/turn.md §5.2) ------------------------------------------------

    internal static byte[][] FrameSeeds()
    {
        var buf = new byte[200];
        byte[] Frame(DatagramFrameType t, string ip, int port, byte[] payload) =>
            buf[..DatagramFrame.Write(buf, t, PeerAddress.From(new IPEndPoint(IPAddress.Parse(ip), port)), payload)];
        return
        [
            Convert.FromHexString("000a0001c00002010d966869"), // the spec's example
            Frame(DatagramFrameType.Data, "2001:db8::1", 443, "payload"u8.ToArray()),
            Frame(DatagramFrameType.Check, "192.0.2.9", 53, []),
            Frame(DatagramFrameType.Relayed, "::", 40000, []),
            Frame(DatagramFrameType.Refused, "::ffff:10.0.0.1", 1, []),
            Frame((DatagramFrameType)0x77, "192.0.2.1", 2, [1, 2, 3]),
        ];
    }

    /// <summary>DatagramFrame.TryParse: -1 (malformed), 0 (need more) or the frame length 2 + LENGTH; a parsed frame rebuilds byte for byte.</summary>
    internal static string CheckFrame(byte[] input, Random rng)
    {
        int r = DatagramFrame.TryParse(input, out var type, out var peer, out var payload);
        var again = DatagramFrame.TryParse(Longer(input, rng), out _, out _, out _);
        if (r != 0) Assert.Equal(r, again); // the verdict on a whole frame does not depend on what follows it
        if (r == -1)
        {
            Assert.True(input.Length >= 4);
            return "malformed";
        }
        if (r == 0)
        {
            Assert.True(input.Length < 4 || input.Length < 2 + BinaryPrimitives.ReadUInt16BigEndian(input));
            return "incomplete";
        }
        Assert.Equal(2 + BinaryPrimitives.ReadUInt16BigEndian(input), r);
        Assert.InRange(r, 10, input.Length);
        var (start, length) = payload.GetOffsetAndLength(r);
        Assert.Equal(r, start + length);
        var rebuilt = new byte[r];
        Assert.Equal(r, DatagramFrame.Write(rebuilt, type, peer, input.AsSpan(start, length)));
        Assert.Equal(input[..r], rebuilt);
        return Enum.IsDefined(type) ? type.ToString() : "unknown type";
    }

    [Fact]
    public Task Udp_association_frames_survive_mutation() => FuzzBytes("datagram frames", 8201, FrameSeeds(), CheckFrame);

    // ---- JET (spec/jet.md §2–§4) -------------------------------------------------------------------

    private static readonly Guid Aid = Guid.Parse("3f2504e0-4f89-11d3-9a0c-0305e82c3301"), Cid = Guid.Parse("0b6f3b3e-9a2c-4b7e-8f1e-2a4c6e8a0b1c");

    internal static string[] JetTexts() =>
    [
        JetWire.BuildRequest(JetMethod.Accept, Aid, Cid, "relay:8080"),
        JetWire.BuildRequest(JetMethod.Connect, Aid, Cid, "127.0.0.1:1"),
        JetWire.BuildRequest(JetMethod.Test, Aid, Cid, "[::1]:443"),
        JetWire.BuildV1Accept("relay"),
        JetWire.BuildV1Connect("relay", Aid),
        JetWire.BuildResponse(200, new KeyValuePair<string, string>("Jet-Version", "2"), new("Jet-Association", Aid.ToString())),
        "HTTP/1.1 200 OK 200\r\nJet-Version: 1\r\n\r\n",
        JetWire.BuildResponse(404, new KeyValuePair<string, string>("Connection", "Close")),
        "GET / HTTP/1.1\r\n" + string.Concat(Enumerable.Range(0, 16).Select(i => $"X-{i}: {i}\r\n")) + "\r\n",
    ];

    internal static byte[][] JetPackets() => [.. JetTexts().Select(t => JetWire.BuildPacket(t)), .. JetTexts().Take(3).Select(t => JetWire.BuildPacket(t, 0)), JetWire.BuildPacket("", 0xff)];

    private static readonly int[] RequestVerdicts = [0, 400, 404, 405, 431];

    /// <summary>A JET packet as the relay reads it: header verdict, then the request parse of the unmasked payload.</summary>
    internal static string CheckJetPacket(byte[] input, Random rng)
    {
        var error = JetWire.ParseHeader(input, out int size, out byte mask);
        Assert.True(Enum.IsDefined(error));
        int known = Math.Min(4, input.Length);
        bool signatureOk = input.AsSpan(0, known).SequenceEqual(JetWire.Signature[..known]);
        Assert.Equal(!signatureOk, error == JetPacketError.BadSignature);
        if (error == JetPacketError.Incomplete) Assert.True(input.Length < JetWire.HeaderLength);
        if (error != JetPacketError.Incomplete) Assert.Equal(error, JetWire.ParseHeader(Longer(input, rng), out _, out _));
        if (error != JetPacketError.None) return error.ToString();
        Assert.InRange(size, JetWire.HeaderLength, JetWire.MaxPacketSize);
        if (input.Length < size) return "short packet";
        var payload = input[JetWire.HeaderLength..size];
        JetWire.ApplyMask(payload, mask);
        return "request " + CheckJetRequest(payload) + (CheckJetResponse(payload) ? ", response" : "");
    }

    internal static int CheckJetRequest(byte[] payload)
    {
        int status = JetWire.ParseRequest(payload, out var request, out string? problem);
        Assert.Contains(status, RequestVerdicts);
        if (status == 0)
        {
            Assert.NotNull(request);
        }
        else
        {
            Assert.Null(request);
            Assert.False(string.IsNullOrEmpty(problem));
        }
        return status;
    }

    internal static bool CheckJetResponse(byte[] payload)
    {
        bool ok = JetWire.TryParseResponse(payload, out var response, out string? problem);
        if (ok) Assert.InRange(response!.Status, 0, 999);
        else Assert.False(string.IsNullOrEmpty(problem));
        return ok;
    }

    [Fact]
    public Task Jet_packets_survive_mutation() => FuzzBytes("jet packet", 8301, JetPackets(), CheckJetPacket);

    /// <summary>The unmasked payload directly (masked mutations rarely stay printable): request and response parsers.</summary>
    [Fact]
    public Task Jet_request_and_response_text_survive_mutation() =>
        FuzzBytes("jet text", 8302, [.. JetTexts().Select(Encoding.ASCII.GetBytes)], (input, _) =>
            $"request {CheckJetRequest(input)}" + (CheckJetResponse(input) ? ", response" : ""));

    internal static readonly string[] GatherAnswers =
    [
        $"{{\"id\":\"{Aid}\",\"candidates\":[{{\"id\":\"{Cid}\",\"url\":\"tcp://127.0.0.1:4000\"}},{{\"id\":\"{Cid}\",\"url\":\"wss://relay.example:443\"}}]}}",
        $"{{\"id\":\"{Aid}\",\"candidates\":[]}}",
        $"{{\"id\":\"{Aid}\",\"version\":2,\"candidates\":[{{\"id\":\"{Cid}\",\"url\":\"ws://[::1]:80\",\"state\":\"gathered\"}}]}}",
    ];

    internal static readonly string[] SignalAnswers =
    [
        $"{{\"nonce\":\"n\",\"association\":\"{Aid}\",\"candidates\":[{{\"id\":\"{Cid}\",\"url\":\"tcp://127.0.0.1:4000\"}},{{\"id\":\"{Cid}\",\"url\":\"tcp://127.0.0.1:5000\",\"direct\":true}}]}}",
        "{\"nonce\":\"n\",\"error\":\"server has no usable candidate\"}",
        $"{{\"nonce\":\"n\",\"association\":\"{Aid}\",\"candidates\":[{{\"id\":\"{Cid}\",\"url\":\"tls://relay:443\"}}]}}",
    ];

    /// <summary>The gather answer read by the server process: only JSON or InvalidData errors.</summary>
    internal static string CheckGather(string json)
    {
        try
        {
            var candidates = JetServerManager.ReadGatherAnswer(json);
            Assert.All(candidates, c => Assert.Contains(c.Url.Scheme, new[] { "tcp", "tls", "ws", "wss" }));
            return "accepted";
        }
        catch (InvalidDataException e) { return e.InnerException is FormatException ? "not JSON" : "no candidates"; }
    }

    /// <summary>The jet.answer body read by the client process: only TransportConnectException.</summary>
    internal static string CheckAnswer(string json)
    {
        JObject body;
        try { body = JObject.Parse(json); }
        catch (JsonException) { return "not JSON"; }
        try
        {
            var (_, candidates) = JetClient.ReadAnswer(body);
            Assert.InRange(candidates.Count, 1, 16);
            return "accepted";
        }
        catch (TransportConnectException e) { return "refused " + e.Failure; }
    }

    [Fact]
    public async Task Jet_json_bodies_survive_mutation()
    {
        int iterations = Iterations;
        var counts = new Dictionary<string, int>();
        await Task.Run(() =>
        {
            var m = new Mutator(8401);
            for (int i = 0; i < iterations; i++)
            {
                bool gather = i % 2 == 0;
                var seeds = gather ? GatherAnswers : SignalAnswers;
                string text;
                if (i % 4 < 2) text = m.NextString(seeds);
                else
                {
                    // Structural: members and array elements replaced by values of every JSON type.
                    var doc = JObject.Parse(seeds[m.Random.Next(seeds.Length)]);
                    for (int e = 1 + m.Random.Next(3); e > 0; e--) JsonMutations.Replace(doc, m.Random);
                    text = doc.ToString(Formatting.None);
                }
                string verdict;
                try { verdict = (gather ? "gather " : "answer ") + (gather ? CheckGather(text) : CheckAnswer(text)); }
                catch (Exception e) { throw new Xunit.Sdk.XunitException($"jet json: input {text}: {e}"); }
                counts[verdict] = counts.GetValueOrDefault(verdict) + 1;
            }
        }).WaitAsync(Budget);
        output.WriteLine($"jet json: {iterations} inputs, " + string.Join(", ", counts.OrderBy(kv => kv.Key).Select(kv => $"{kv.Key} {kv.Value}")));
    }

    // ---- ASPORT (spec/asport.md §3) ----------------------------------------------------------------

    internal static byte[][] AsportSeeds()
    {
        var b = new byte[128];
        byte[] Take(int n) => b[..n];
        var token = Enumerable.Range(0, 32).Select(i => (byte)i).ToArray();
        var seeds = new List<byte[]>
        {
            Take(AsportWire.WriteClientHello(b, new ClientHello(Guid.Parse("6f0d0f5e-2b4c-4d6a-9c11-0123456789ab"), token, ForwardMode.TcpUdpNative, 20000, 60000))),
            Take(AsportWire.WriteServerHello(b, ServerHelloCode.Success, 40000)),
            Take(AsportWire.WriteServerHello(b, ServerHelloCode.PortDenied, 0)),
            Take(AsportWire.WriteConnect(b, new IPEndPoint(IPAddress.Parse("192.0.2.1"), 5555))),
            Take(AsportWire.WriteConnect(b, new IPEndPoint(IPAddress.Parse("2001:db8::7"), 1))),
            Take(AsportWire.WriteDissociate(b, 7)),
            Take(AsportWire.WriteHeartbeat(b)),
        };
        foreach (var address in new IPEndPoint?[] { new(IPAddress.Parse("192.0.2.1"), 53), new(IPAddress.Parse("2001:db8::1"), 443), null })
        {
            int n = AsportWire.WritePacketHeader(b, new PacketHeader(1, 2, 1, 0, 4, address));
            seeds.Add([.. b[..n], 1, 2, 3, 4]);
        }
        return [.. seeds];
    }

    /// <summary>Every ASPORT reader on the same bytes: false or a value that writes back to the same bytes.</summary>
    internal static string CheckAsport(byte[] input, Random rng)
    {
        if (!AsportWire.TryReadHeader(input, out var command))
        {
            Assert.True(input.Length < 2 || input[0] != 0 || input[1] > 5);
            return "bad header";
        }
        var b = new byte[200];
        if (AsportWire.TryReadClientHello(input, out var hello))
        {
            Assert.Equal(AsportWire.ClientHelloSize, input.Length);
            Assert.Equal(input, b[..AsportWire.WriteClientHello(b, hello)]);
        }
        if (AsportWire.TryReadServerHello(input, out var code, out var port))
            Assert.Equal(input, b[..AsportWire.WriteServerHello(b, code, port)]);
        bool address = AsportWire.TryReadAddress(input.AsSpan(2), out var ep, out int used);
        Assert.InRange(used, 0, input.Length - 2);
        if (address && input[2] != AsportWire.AtypIPv6)
            Assert.Equal(input[2..(2 + used)], b[..AsportWire.WriteAddress(b, ep)]);
        bool packet = AsportWire.TryReadPacketHeader(input.AsSpan(2), out var header, out int consumed);
        if (packet)
        {
            Assert.InRange(consumed, AsportWire.PacketFixedSize + 1, input.Length - 2);
            if (input[2 + AsportWire.PacketFixedSize] != AsportWire.AtypIPv6)
                Assert.Equal(input[2..(2 + consumed)], b[2..AsportWire.WritePacketHeader(b, header)]);
        }
        return command + (packet ? " (packet header)" : "");
    }

    [Fact]
    public Task Asport_commands_survive_mutation() => FuzzBytes("asport commands", 8501, AsportSeeds(), CheckAsport);

    /// <summary>
    /// Fragment reassembly (§3.4): fragment sets of random payloads, shuffled, duplicated, dropped, mutated
    /// and parsed as a receiver does. Never throws; pending packets stay within the limit; a set whose
    /// fragments all arrive unmutated yields exactly the payload sent, once.
    /// </summary>
    [Fact]
    public async Task Asport_fragment_reassembly_survives_mutation()
    {
        int iterations = Iterations / 4;
        long completes = 0, rejected = 0, intact = 0;
        await Task.Run(() =>
        {
            var m = new Mutator(8601);
            var rng = m.Random;
            var reassembly = new AsportReassembly(TimeSpan.FromSeconds(15), maxPending: 32);
            long now = 0;
            var datagram = new byte[2048];
            for (int i = 0; i < iterations; i++)
            {
                int maxDatagram = 40 + rng.Next(400);
                var payload = new byte[rng.Next(3) == 0 ? rng.Next(4000) : rng.Next(200)];
                rng.NextBytes(payload);
                IPEndPoint? address = rng.Next(3) switch { 0 => new(IPAddress.Parse("192.0.2.1"), 53), 1 => new(IPAddress.Parse("2001:db8::1"), 1), _ => null };
                int total = AsportWire.FragmentCount(payload.Length, maxDatagram, address);
                if (total < 0) continue;
                ushort assoc = (ushort)rng.Next(4), pkt = (ushort)i;
                var fragments = Enumerable.Range(0, total).Select(k => datagram[..AsportWire.WriteFragment(datagram, assoc, pkt, k, total, payload, maxDatagram, address)]).ToList();
                bool clean = rng.Next(3) == 0;
                if (clean)
                {
                    // Only reordered and duplicated.
                    fragments = [.. fragments.OrderBy(_ => rng.Next())];
                    if (rng.Next(2) == 0 && fragments.Count > 0) fragments.Insert(rng.Next(fragments.Count + 1), fragments[rng.Next(fragments.Count)]);
                }
                else
                {
                    for (int k = 0; k < fragments.Count; k++) if (rng.Next(3) == 0) fragments[k] = m.Next([fragments[k]]);
                    if (fragments.Count > 1 && rng.Next(3) == 0) fragments.RemoveAt(rng.Next(fragments.Count));
                }
                int done = 0;
                foreach (var f in fragments)
                {
                    now += rng.Next(3) == 0 ? 16_000 : 1; // sometimes past the 15 s timeout
                    try
                    {
                        if (!AsportWire.TryReadHeader(f, out var cmd) || cmd != AsportCommand.Packet || !AsportWire.TryReadPacketHeader(f.AsSpan(2), out var h, out int used)) { rejected++; continue; }
                        var r = reassembly.Offer(h, f.AsSpan(2 + used), now, out var whole, out int length, out var from);
                        Assert.True(Enum.IsDefined(r));
                        Assert.InRange(reassembly.PendingCount, 0, 32);
                        if (r == AsportReassembly.Result.Complete)
                        {
                            completes++;
                            done++;
                            if (clean && h.AssocId == assoc && h.PacketId == pkt && length == payload.Length && whole.AsSpan(0, length).SequenceEqual(payload))
                                intact++;
                            AsportReassembly.ReturnBuffer(whole!);
                        }
                        else Assert.Null(whole);
                    }
                    catch (Exception e) { throw new Xunit.Sdk.XunitException($"reassembly: fragment {Convert.ToHexString(f)}: {e}"); }
                }
                if (clean && total > 1) Assert.InRange(done, 0, 1); // a duplicate fragment never completes a packet twice
            }
        }).WaitAsync(Budget);
        output.WriteLine($"asport reassembly: {iterations} fragment sets, {completes} packets completed ({intact} clean sets intact), {rejected} fragments unreadable");
        Assert.True(intact > 0);
    }

    // ---- RUD (spec/rud.md §3–§4) --------------------------------------------------------------------

    internal static byte[][] RudSeeds()
    {
        var s = new byte[RudWire.HandshakeSize];
        var seeds = new List<byte[]>();
        RudWire.WriteHello(s, 0x1122334455667788);
        seeds.Add(s.ToArray());
        var eph = Enumerable.Range(1, 32).Select(i => (byte)i).ToArray();
        RudWire.WriteExchangePlaintext(s, false, 42, eph, []);
        seeds.Add(s.ToArray());
        RudWire.WriteExchangePlaintext(s, true, 42, eph, new byte[24]);
        seeds.Add(s.ToArray());
        int n = RudWire.WriteChallengeOrDefer(s.AsSpan(0, RudWire.ChallengeOrDeferLength(true, 24, 3)), 42, eph, new byte[24]);
        seeds.Add(s[..n]);
        n = RudWire.WriteChallengeOrDefer(s.AsSpan(0, RudWire.ChallengeOrDeferLength(false, 24, 0)), 42, [], new byte[24]);
        seeds.Add(s[..n]);
        // A data packet: header, then a header block (ack + retransmit) and frames, then a tag.
        var p = new byte[400];
        n = RudWire.WriteDataHeader(p, 0xdeadbeef, 0, 300);
        p[n++] = RudWire.FlagAck | RudWire.FlagRetransmit;
        n += RudWire.WriteVarint(p.AsSpan(n), 299);
        n += RudWire.WriteVarint(p.AsSpan(n), 25);
        p[n++] = 2; p[n++] = 0xff; p[n++] = 0x0f;
        n += RudWire.WriteVarint(p.AsSpan(n), 17);
        n += RudWire.WriteStreamFrame(p.AsSpan(n), RudWire.MakeStreamId(3, StreamKind.Asynchronous, 0), 1000, "stream bytes"u8, final: false);
        n += RudWire.WriteDatagramFrame(p.AsSpan(n), RudWire.MakeStreamId(1, StreamKind.Datagram, 1), 9, "dgram"u8);
        n += RudWire.WriteMaxStreamData(p.AsSpan(n), 8, 1 << 20);
        n += RudWire.WriteResetStream(p.AsSpan(n), 8, 2, 77);
        n += RudWire.WriteClose(p.AsSpan(n), 5, "idle"u8);
        p[n++] = FrameType.Ping;
        p[n++] = FrameType.Padding;
        n += RudKeys.TagSize;
        seeds.Add(p[..n]);
        return [.. seeds];
    }

    /// <summary>Every RUD decoder on the bytes; readers never move backwards or past the end.</summary>
    internal static string CheckRud(byte[] input, Random rng)
    {
        var verdicts = new List<string>();
        if (RudWire.TryParseDataHeader(input, out _, out int headerLength))
        {
            Assert.Equal(RudWire.DataHeaderSize, headerLength);
            Assert.InRange(headerLength, 0, input.Length - RudKeys.TagSize);
            verdicts.Add("data");
            // The plaintext the receiver would see after decryption: header block, then frames.
            var plain = input.AsSpan(headerLength, input.Length - headerLength - RudKeys.TagSize);
            if (RudWire.TryParseHeaderBlock(plain, out var hb, out int hl))
            {
                Assert.InRange(hl, 1, plain.Length);
                if (hb.HasAck) Assert.InRange(hb.BitfieldOffset + hb.BitfieldLength, 0, hl);
                int pos = hl, frames = 0;
                while (pos < plain.Length)
                {
                    int before = pos;
                    if (!RudWire.TryReadFrame(plain, ref pos, out var f)) break;
                    Assert.InRange(pos, before + 1, plain.Length);
                    if (f.DataLength > 0) Assert.InRange(f.DataOffset + f.DataLength, 0, pos);
                    frames++;
                }
                verdicts.Add($"{Math.Min(frames, 3)}+ frames");
            }
        }
        if (RudWire.TryParseHello(input, out ulong id)) { Assert.NotEqual(0UL, id); verdicts.Add("hello"); }
        if (RudWire.TryParseExchange(input, out bool complete, out _, out int tokenAt, out int tokenLength, out int mezz))
        {
            Assert.InRange(mezz + RudWire.MezzanineSize + RudWire.InitiatorProofSize, 0, input.Length - RudWire.RepresentativeTail);
            if (complete) Assert.InRange(tokenAt + tokenLength, 0, mezz);
            verdicts.Add(complete ? "complete" : "exchange");
        }
        foreach (bool challenge in new[] { true, false })
            if (RudWire.TryParseChallengeOrDefer(input, challenge, out int key, out int tokenOffset, out int length))
            {
                Assert.InRange(tokenOffset + length, 1, input.Length);
                if (challenge) Assert.InRange(key + X25519.KeySize, 0, tokenOffset);
                verdicts.Add(challenge ? "challenge" : "defer");
            }
        int at = rng.Next(input.Length + 1), start = at;
        if (RudWire.TryReadVarint(input, ref at, out ulong v)) Assert.True(at > start && at <= input.Length && v <= RudWire.MaxVarint);
        else Assert.Equal(start, at);
        return verdicts.Count == 0 ? "none" : string.Join("+", verdicts);
    }

    [Fact]
    public Task Rud_packets_and_frames_survive_mutation() => FuzzBytes("rud wire", 8701, RudSeeds(), CheckRud);

    /// <summary>
    /// A live RUD responder endpoint (a real UDP socket, its own key) gets mutated handshake and data
    /// packets through its receive path: no internal error, no connection created from garbage beyond
    /// the few valid Exchanges among the seeds, the endpoint keeps working.
    /// </summary>
    [Fact]
    public async Task Rud_responder_endpoint_survives_mutated_packets()
    {
        var key = X25519.GeneratePrivateKey();
        await using var server = RudEndpoint.Bind(new IPEndPoint(IPAddress.Loopback, 0), new RudEndpointOptions { StaticPrivateKey = key });
        // A real initiator's Exchange, captured on a socket that never answers.
        using var sink = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
        sink.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        byte[] exchange;
        await using (var client = RudEndpoint.Bind(new IPEndPoint(IPAddress.Loopback, 0), new RudEndpointOptions { HandshakeTimeout = TimeSpan.FromSeconds(2) }))
        {
            using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(20));
            var connecting = client.ConnectAsync((IPEndPoint)sink.LocalEndPoint!, server.StaticPublicKey, cts.Token);
            var buffer = new byte[2048];
            int n = await sink.ReceiveAsync(buffer, SocketFlags.None, cts.Token);
            exchange = buffer[..n];
            try { await connecting; } catch (Exception) { /* the sink never answers: the attempt fails, as intended */ }
        }
        // Seeds as the wire carries them: protected with the server's key (§3.3), so mutations reach past the header check.
        using var hp = new HeaderProtection(server.StaticPublicKey!);
        var plainExchange = exchange.ToArray();
        hp.Mask(plainExchange);
        Assert.True(RudWire.TryReadHandshakeHeader(plainExchange, out _, out byte type) && type == PacketType.Exchange);
        var seeds = RudSeeds().Select(seed =>
        {
            var p = seed.ToArray();
            if (p.Length < HeaderProtection.HeaderSize + HeaderProtection.SampleSize + 1) return p;
            if (RudWire.TryReadHandshakeHeader(p, out _, out _)) RudEndpoint.ProtectHandshake(hp, p, fromInitiator: RudWire.ReadId(p) == 0);
            else hp.Mask(p);
            return p;
        }).Append(exchange).ToArray();
        var from = new IPEndPoint(IPAddress.Loopback, ((IPEndPoint)sink.LocalEndPoint!).Port).Serialize();
        int iterations = Iterations;
        await Task.Run(() =>
        {
            var m = new Mutator(8801);
            for (int i = 0; i < iterations; i++)
            {
                var input = m.Next(seeds);
                if (input.Length > RudWire.MaxReceiveSize) input = input[..RudWire.MaxReceiveSize];
                try { server.HandlePacket(input, from); }
                catch (Exception e) { throw new Xunit.Sdk.XunitException($"rud endpoint: input {Convert.ToHexString(input)}: {e}"); }
            }
        }).WaitAsync(Budget);
        var c = server.Counters;
        output.WriteLine($"rud endpoint: {iterations} packets; malformed {c.Malformed}, unknown id {c.UnknownId}, auth failed {c.AuthFailed}, replayed {c.Replayed}, handshake dropped {c.HandshakeDropped}, token invalid {c.TokenInvalid}, accepted {c.HandshakesAccepted}, internal errors {c.InternalErrors}; connections {server.ConnectionCount}");
        Assert.Equal(0, c.InternalErrors);
        // Only the captured Exchange (once; its copies are replays) can create a connection.
        Assert.InRange(c.HandshakesAccepted, 0, 1);
        Assert.InRange(server.ConnectionCount, 0, 1);
    }
}
