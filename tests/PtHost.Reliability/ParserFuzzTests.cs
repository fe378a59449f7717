using System.Buffers;
using System.Text;
using Microsoft.Extensions.Logging.Abstractions;
using Newtonsoft.Json;
using Newtonsoft.Json.Linq;
using PtHost.Configuration;
using PtHost.Contract;
using PtHost.Ipc;
using PtHost.Reliability.Support;
using PtHost.Socks;
using Xunit.Abstractions;

namespace PtHost.Reliability;

/// <summary>
/// Seeded mutation fuzzing of every parser the plain transport path uses, in process. Each parser must
/// return a defined result (or throw only its documented exception), whatever the input and however the
/// bytes are cut into segments. <c>FUZZ_ITERATIONS</c> sets the count per parser (CI default below).
/// </summary>
public class ParserFuzzTests(ITestOutputHelper output)
{
    public const int CiIterations = 20_000;
    private static readonly TimeSpan Budget = TimeSpan.FromMinutes(3);

    /// <summary>What one SOCKS5 parse step gave: status, bytes consumed, the result as text, the error's reply.</summary>
    public readonly record struct Outcome(ParseStatus Status, long Consumed, string? Result, byte Reply);

    public delegate ParseStatus SocksParse(ref ReadOnlySequence<byte> buffer, out string? result, out Socks5Error error);

    public static readonly SocksParse Greeting = (ref ReadOnlySequence<byte> b, out string? r, out Socks5Error e) =>
    {
        var s = Socks5Parser.TryParseGreeting(ref b, out byte m, out e);
        r = s == ParseStatus.Done ? m.ToString("x2") : null;
        return s;
    };

    public static readonly SocksParse Settings = (ref ReadOnlySequence<byte> b, out string? r, out Socks5Error e) =>
    {
        var s = Socks5Parser.TryParseSettings(ref b, out var j, out e);
        r = j?.ToString(Formatting.None);
        return s;
    };

    public static readonly SocksParse UserPass = (ref ReadOnlySequence<byte> b, out string? r, out Socks5Error e) =>
        Socks5Parser.TryParseUserPass(ref b, out r, out e);

    public static readonly SocksParse Request = (ref ReadOnlySequence<byte> b, out string? r, out Socks5Error e) =>
    {
        var s = Socks5Parser.TryParseRequest(ref b, out var d, out e);
        r = d?.ToString();
        return s;
    };

    public static Outcome Run(SocksParse parse, ReadOnlySequence<byte> seq)
    {
        var buffer = seq;
        var status = parse(ref buffer, out var result, out var error);
        Assert.True(buffer.End.Equals(seq.End) || buffer.Length == 0, "the remaining buffer must end where the input ends");
        return new Outcome(status, seq.Length - buffer.Length, result, status == ParseStatus.Invalid ? error.Reply : (byte)0);
    }

    /// <summary>The invariants every SOCKS5 parse step keeps; throws (failing the test) with the input in hex when one breaks.</summary>
    public static Outcome Check(SocksParse parse, byte[] input, Random rng, byte[] allowedReplies)
    {
        try
        {
            var whole = Run(parse, Segmented.Single(input));
            // The same bytes cut into segments give the same outcome.
            Assert.Equal(whole, Run(parse, Segmented.Random(input, rng)));
            Assert.InRange(whole.Consumed, 0, input.Length);
            switch (whole.Status)
            {
                case ParseStatus.Incomplete:
                    Assert.Equal(0, whole.Consumed);
                    break;
                case ParseStatus.Invalid:
                    Assert.Contains(whole.Reply, allowedReplies);
                    break;
                case ParseStatus.Done:
                    Assert.True(whole.Consumed > 0);
                    // A shorter prefix of a complete message is incomplete, never a different verdict.
                    int step = whole.Consumed <= 512 ? 1 : (int)(whole.Consumed / 64);
                    for (int n = 0; n < whole.Consumed; n += step)
                        Assert.Equal(ParseStatus.Incomplete, Run(parse, Segmented.Single(input[..n])).Status);
                    break;
            }
            if (whole.Status != ParseStatus.Incomplete)
            {
                // Never reads past the end of its message: bytes after it change nothing.
                byte[] longer = [.. input, .. RandomBytes(rng, 1 + rng.Next(16))];
                Assert.Equal(whole, Run(parse, Segmented.Random(longer, rng)));
            }
            return whole;
        }
        catch (Exception e)
        {
            throw new Xunit.Sdk.XunitException($"input {Convert.ToHexString(input)}: {e}");
        }
    }

    private static byte[] RandomBytes(Random rng, int n)
    {
        var b = new byte[n];
        rng.NextBytes(b);
        return b;
    }

    private async Task FuzzSocks(string name, int seed, byte[][] seeds, SocksParse parse, byte[] allowedReplies)
    {
        int iterations = Mutator.Iterations(CiIterations);
        var counts = new Dictionary<ParseStatus, int>();
        await Task.Run(() =>
        {
            var m = new Mutator(seed);
            foreach (var s in seeds) Check(parse, s, m.Random, allowedReplies);
            for (int i = 0; i < iterations; i++)
            {
                var o = Check(parse, m.Next(seeds), m.Random, allowedReplies);
                counts[o.Status] = counts.GetValueOrDefault(o.Status) + 1;
            }
        }).WaitAsync(Budget);
        output.WriteLine($"{name}: {iterations} inputs, " + string.Join(", ", counts.OrderBy(kv => kv.Key).Select(kv => $"{kv.Key} {kv.Value}")));
    }

    [Fact]
    public Task Socks5_greeting_survives_mutation() => FuzzSocks("greeting", 1001, Seeds.Greetings, Greeting, [0xFF]);

    [Fact]
    public Task Socks5_settings_block_survives_mutation() => FuzzSocks("settings", 1002, Seeds.SettingsBlocks, Settings, [0x10, 0x12]);

    [Fact]
    public Task Rfc1929_subnegotiation_survives_mutation() => FuzzSocks("userpass", 1003, Seeds.UserPass, UserPass, [0x01]);

    [Fact]
    public Task Socks5_request_survives_mutation() => FuzzSocks("request", 1004, Seeds.Requests, Request, [0x01, 0x04, 0x07, 0x08]);

    public static readonly SocksParse Socks4Request = (ref ReadOnlySequence<byte> b, out string? r, out Socks5Error e) =>
    {
        var s = Socks4.TryParseRequest(ref b, out var d, out var user, out e);
        r = s == ParseStatus.Done ? $"{d}|{user}" : null;
        return s;
    };

    public static readonly SocksParse ExtOrPortCommand = (ref ReadOnlySequence<byte> b, out string? r, out Socks5Error e) =>
    {
        e = default;
        var s = ExtOrPort.ExtOrPortWire.TryParseCommand(ref b, out ushort cmd, out var body);
        r = s == ParseStatus.Done ? $"{cmd:x4}:{Convert.ToHexString(body.ToArray())}" : null;
        return s;
    };

    public static readonly SocksParse ExtOrPortAuthTypes = (ref ReadOnlySequence<byte> b, out string? r, out Socks5Error e) =>
    {
        e = default;
        var s = ExtOrPort.ExtOrPortWire.TryParseAuthTypes(ref b, out bool safeCookie);
        r = s == ParseStatus.Done ? safeCookie.ToString() : null;
        return s;
    };

    private static readonly byte[][] Socks4Seeds =
    [
        [4, 1, 0, 80, 127, 0, 0, 1, 0],
        [4, 1, 1, 187, 192, 0, 2, 7, .. "cert=abc;iat-mode=0"u8.ToArray(), 0],
        [4, 1, 0, 80, 0, 0, 0, 1, 0, .. "bridge.example"u8.ToArray(), 0],
        [4, 2, 0, 80, 10, 0, 0, 1, .. "k=v"u8.ToArray(), 0],
    ];

    private static readonly byte[][] ExtOrPortCommandSeeds =
    [
        [0x10, 0x00, 0x00, 0x00], [0x10, 0x01, 0x00, 0x00], [0x10, 0x02, 0x00, 0x03, 1, 2, 3],
        [0x00, 0x01, 0x00, 0x0e, .. "127.0.0.1:4321"u8.ToArray()], [0x00, 0x02, 0x00, 0x05, .. "plain"u8.ToArray()],
    ];

    private static readonly byte[][] ExtOrPortAuthSeeds = [[1, 0], [3, 1, 0], [0], [2, 3, 4, 0]];

    [Fact]
    public Task Socks4_request_survives_mutation() => FuzzSocks("socks4", 1005, Socks4Seeds, Socks4Request, [Socks4.ReplyRejected]);

    [Fact]
    public Task ExtOrPort_reply_frames_survive_mutation() => FuzzSocks("extorport-command", 1006, ExtOrPortCommandSeeds, ExtOrPortCommand, [0]);

    [Fact]
    public Task ExtOrPort_auth_type_lists_survive_mutation() => FuzzSocks("extorport-auth", 1007, ExtOrPortAuthSeeds, ExtOrPortAuthTypes, [0]);

    /// <summary>TOR_PT_SERVER_TRANSPORT_OPTIONS and TOR_PT_SERVER_BINDADDR: only EnvironmentException.</summary>
    [Fact]
    public Task Tor_environment_values_survive_mutation() => FuzzStrings("tor-env", 2101,
        ["plain:k=v;plain:a\\:b=c\\;d", "obfs4:cert=x;obfs4:iat-mode=0", "plain-127.0.0.1:9100,obfs4-[::1]:443", "a:b=c;"],
        text =>
        {
            try { PtConfig.ParseServerTransportOptions(text, ["plain", "obfs4", "a"]); } catch (EnvironmentException) { }
            try { PtConfig.ParseServerBindAddresses(text, ["plain", "obfs4"]); } catch (EnvironmentException) { }
        });

    private async Task FuzzStrings(string name, int seed, string[] seeds, Action<string> check)
    {
        int iterations = Mutator.Iterations(CiIterations);
        await Task.Run(() =>
        {
            var m = new Mutator(seed);
            foreach (var s in seeds) Run(s);
            for (int i = 0; i < iterations; i++) Run(m.NextString(seeds));

            void Run(string s)
            {
                try { check(s); }
                catch (Exception e) { throw new Xunit.Sdk.XunitException($"input {Convert.ToHexString(Encoding.UTF8.GetBytes(s))} (\"{s}\"): {e}"); }
            }
        }).WaitAsync(Budget);
        output.WriteLine($"{name}: {iterations} inputs");
    }

    /// <summary>PT 1.0 arguments: only FormatException; what parses formats back to the same arguments.</summary>
    [Fact]
    public Task PtArgs_parse_survives_mutation() => FuzzStrings("ptargs", 2001, Seeds.PtArgStrings, CheckPtArgs);

    internal static void CheckPtArgs(string s)
    {
        JObject parsed;
        try { parsed = PtArgs.Parse(s); }
        catch (FormatException) { return; }
        var pairs = parsed.Properties().Select(p => new KeyValuePair<string, string>(p.Name, (string)p.Value!)).ToList();
        Assert.True(JToken.DeepEquals(parsed, PtArgs.Parse(PtArgs.Format(pairs))), "Format/Parse round trip");
    }

    /// <summary>A configuration document: only ConfigException.</summary>
    [Fact]
    public Task PtConfig_parse_survives_mutation() => FuzzStrings("ptconfig", 3001, Seeds.Configs, CheckConfig);

    internal static void CheckConfig(string s)
    {
        try { PtConfig.Parse(s); }
        catch (ConfigException) { }
    }

    /// <summary>Type confusion: each member of a valid configuration replaced by values of every JSON type.</summary>
    [Fact]
    public async Task PtConfig_parse_survives_structural_mutation()
    {
        int iterations = Mutator.Iterations(CiIterations) / 4;
        await Task.Run(() =>
        {
            var m = new Mutator(3002);
            for (int i = 0; i < iterations; i++)
            {
                var doc = JObject.Parse(Seeds.Configs[m.Random.Next(Seeds.Configs.Length)]);
                int edits = 1 + m.Random.Next(3);
                for (int e = 0; e < edits; e++) JsonMutations.Replace(doc, m.Random);
                string text = doc.ToString(Formatting.None);
                try { CheckConfig(text); }
                catch (Exception ex) { throw new Xunit.Sdk.XunitException($"input {text}: {ex}"); }
            }
        }).WaitAsync(Budget);
        output.WriteLine($"ptconfig structural: {iterations} inputs");
    }

    /// <summary>Strict JSON: only FormatException; what parses re-serialises and parses to the same tree.</summary>
    [Fact]
    public Task StrictJson_parse_survives_mutation() => FuzzStrings("strictjson", 4001, Seeds.Json, CheckJson);

    internal static void CheckJson(string s)
    {
        JToken t;
        try { t = StrictJson.Parse(s); }
        catch (FormatException) { return; }
        // A number beyond double's range (1e400) becomes ±Infinity, which JSON cannot write back: no round trip to check.
        if ((t is JContainer c ? c.DescendantsAndSelf() : [t]).Any(x => x is JValue { Value: double d } && !double.IsFinite(d))) return;
        Assert.True(JToken.DeepEquals(t, StrictJson.Parse(t.ToString(Formatting.None))), "re-serialised JSON parses to the same tree");
    }

    /// <summary>CMESSAGE/SMESSAGE envelopes: Deliver never throws, in either role.</summary>
    [Fact]
    public async Task SignalRouter_deliver_never_throws()
    {
        var server = new SignalRouter(Role.Server, new IpcWriter(TextWriter.Null), NullLogger<SignalRouter>.Instance);
        var client = new SignalRouter(Role.Client, new IpcWriter(TextWriter.Null), NullLogger<SignalRouter>.Instance);
        server.For("plain");
        client.For("plain");
        await FuzzStrings("signalrouter", 5001, Seeds.Envelopes, s =>
        {
            server.Deliver("plain", s);
            client.Deliver("plain", s);
            client.Deliver(s.Length > 8 ? s[..8] : s, s);
        });
        // Structural: the envelope's members replaced by values of other types.
        int iterations = Mutator.Iterations(CiIterations) / 4;
        var m = new Mutator(5002);
        for (int i = 0; i < iterations; i++)
        {
            var env = JObject.Parse(Seeds.Envelopes[m.Random.Next(Seeds.Envelopes.Length)]);
            JsonMutations.Replace(env, m.Random);
            string text = env.ToString(Formatting.None);
            try
            {
                server.Deliver("plain", text);
                client.Deliver("plain", text);
            }
            catch (Exception ex) { throw new Xunit.Sdk.XunitException($"input {text}: {ex}"); }
        }
    }

    /// <summary>The plain preamble: ParseHeader gives -1 or a length ≤ 262; ParseDestination only FormatException; a parsed destination rebuilds to the same bytes.</summary>
    [Fact]
    public async Task PlainWire_preamble_survives_mutation()
    {
        int iterations = Mutator.Iterations(CiIterations);
        int accepted = 0;
        await Task.Run(() =>
        {
            var m = new Mutator(6001);
            for (int i = 0; i < iterations; i++)
            {
                var input = m.Next(Seeds.PlainPreambles);
                try { if (CheckPreamble(input)) accepted++; }
                catch (Exception e) { throw new Xunit.Sdk.XunitException($"input {Convert.ToHexString(input)}: {e}"); }
            }
        }).WaitAsync(Budget);
        output.WriteLine($"plainwire: {iterations} inputs, {accepted} accepted");
    }

    /// <summary>
    /// Zephyr relay messages (spec/zephyr.md §2, §3): a verdict for every input, None only for
    /// magic 82 96 44 a1 and length 4; bytes after the first 12 never change it; an accepted
    /// message rebuilds to the same 12 bytes.
    /// </summary>
    [Fact]
    public async Task Zephyr_bind_request_and_assignment_survive_mutation()
    {
        int iterations = Mutator.Iterations(CiIterations);
        var counts = new Dictionary<PtHost.Transports.Zephyr.BindRequestError, int>();
        byte[][] seeds =
        [
            PtHost.Transports.Zephyr.ZephyrWire.BuildBindRequest(0),
            PtHost.Transports.Zephyr.ZephyrWire.BuildBindRequest(0x7fffffff),
            PtHost.Transports.Zephyr.ZephyrWire.BuildAssignment(123456789),
            [0x82, 0x96, 0x44, 0xa1, 0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff],
            [0x82, 0x96, 0x44, 0xa1, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0, 2],
        ];
        await Task.Run(() =>
        {
            var m = new Mutator(7001);
            for (int i = 0; i < iterations; i++)
            {
                var input = m.Next(seeds);
                try
                {
                    var verdict = CheckZephyrMessage(input, m.Random);
                    counts[verdict] = counts.GetValueOrDefault(verdict) + 1;
                }
                catch (Exception e) { throw new Xunit.Sdk.XunitException($"input {Convert.ToHexString(input)}: {e}"); }
            }
        }).WaitAsync(Budget);
        output.WriteLine($"zephyr wire: {iterations} inputs, " + string.Join(", ", counts.OrderBy(kv => kv.Key).Select(kv => $"{kv.Key} {kv.Value}")));
    }

    internal static PtHost.Transports.Zephyr.BindRequestError CheckZephyrMessage(byte[] input, Random rng)
    {
        var error = PtHost.Transports.Zephyr.ZephyrWire.ParseBindRequest(input, out uint zid);
        Assert.Equal(error, PtHost.Transports.Zephyr.ZephyrWire.ParseAssignment(input, out uint again));
        Assert.Equal(zid, again);
        byte[] longer = [.. input, .. RandomBytes(rng, 1 + rng.Next(16))];
        if (input.Length >= 12) Assert.Equal(error, PtHost.Transports.Zephyr.ZephyrWire.ParseBindRequest(longer, out _));
        switch (error)
        {
            case PtHost.Transports.Zephyr.BindRequestError.Truncated:
                Assert.True(input.Length < 12);
                break;
            case PtHost.Transports.Zephyr.BindRequestError.WrongMagic:
                Assert.False(input.AsSpan(0, 4).SequenceEqual(PtHost.Transports.Zephyr.ZephyrWire.Magic));
                break;
            case PtHost.Transports.Zephyr.BindRequestError.WrongLength:
                Assert.NotEqual(4u, System.Buffers.Binary.BinaryPrimitives.ReadUInt32BigEndian(input.AsSpan(4)));
                break;
            case PtHost.Transports.Zephyr.BindRequestError.None:
                Assert.Equal(System.Buffers.Binary.BinaryPrimitives.ReadUInt32BigEndian(input.AsSpan(8)), zid);
                if (zid <= PtHost.Transports.Zephyr.ZephyrWire.MaxZid)
                    Assert.Equal(input[..12], PtHost.Transports.Zephyr.ZephyrWire.BuildBindRequest(zid));
                break;
            default:
                throw new Xunit.Sdk.XunitException($"undefined verdict {error}");
        }
        return error;
    }

    internal static bool CheckPreamble(byte[] input)
    {
        int length = SessionPreamble.ParseHeader(input);
        Assert.InRange(length, -1, SessionPreamble.MaxDestinationLength);
        if (length < 0 || input.Length < SessionPreamble.HeaderLength + length) return false;
        Destination? d;
        try { d = SessionPreamble.ParseDestination(input.AsSpan(SessionPreamble.HeaderLength, length)); }
        catch (FormatException) { return false; }
        if (d is null) { Assert.Equal(0, length); return true; }
        Assert.NotEqual(0, d.Port);
        // Rebuilt from the parsed destination (ports may have had leading zeros: spec/ipc.md §3.5 allows 1–5 digits).
        var rebuilt = SessionPreamble.BuildRequest(d);
        Assert.Equal(d, SessionPreamble.ParseDestination(rebuilt.AsSpan(SessionPreamble.HeaderLength)));
        Assert.Equal(rebuilt.Length - SessionPreamble.HeaderLength, SessionPreamble.ParseHeader(rebuilt));
        return true;
    }
}

/// <summary>JSON-aware mutations: replace one member or element of a document with a value of another type.</summary>
public static class JsonMutations
{
    private static readonly Func<Random, JToken>[] Values =
    [
        _ => JValue.CreateNull(), _ => new JValue(true), _ => new JValue(false), _ => new JValue(0), _ => new JValue(-1),
        _ => new JValue(long.MaxValue), _ => new JValue(long.MinValue), _ => new JValue(1.5), _ => new JValue(1e308),
        _ => JToken.Parse("99999999999999999999999"), _ => new JValue(""), _ => new JValue("\0"), _ => new JValue("plain"),
        _ => new JValue("127.0.0.1:0"), _ => new JValue("[::1]:65535"), _ => new JValue("0.0.0.0:65536"), _ => new JValue("a:b:c"),
        _ => new JValue("client"), _ => new JValue("server"), _ => new JValue(new string('x', 70)), _ => new JValue("\ud83d\ude00"),
        _ => new JArray(), _ => new JArray("plain"), _ => new JArray("plain", "plain"), _ => new JArray(1, JValue.CreateNull(), "x"),
        _ => new JObject(), _ => new JObject { ["plain"] = "127.0.0.1:1" }, _ => new JObject { ["plain"] = new JObject { ["x"] = 1 } },
        _ => new JObject { ["other"] = 5 }, r => new JValue(r.Next()),
    ];

    public static void Replace(JObject root, Random rng)
    {
        var all = root.DescendantsAndSelf().Where(t => t is JValue or JArray or JObject).ToList();
        var target = all[rng.Next(all.Count)];
        var value = Values[rng.Next(Values.Length)](rng);
        if (target == root)
        {
            // Add or remove a top-level member.
            string[] names = [.. PtConfig.Keys, "v", "mid", "cid", "sid", "re", "exp", "kind", "body", "zzz"];
            string name = names[rng.Next(names.Length)];
            if (root.ContainsKey(name) && rng.Next(2) == 0) root.Remove(name);
            else root[name] = value;
            return;
        }
        target.Replace(value);
    }
}
