using System.Buffers;
using System.Text;
using Microsoft.Extensions.Logging.Abstractions;
using PtHost.Configuration;
using PtHost.Contract;
using PtHost.Ipc;
using PtHost.Net;
using PtHost.Socks;
using PtHost.Tests.Unit.Support;

namespace PtHost.Tests.Unit;

/// <summary>
/// Property-style checks with a seeded <see cref="Random"/> (reproducible): whatever bytes arrive,
/// each parser answers Incomplete, Done or Invalid, never throws, consumes nothing when Incomplete,
/// and gives the same answer however the bytes are split into segments.
/// </summary>
public class ParserRandomInputTests
{
    private const int Seed = 0x5EED;
    private const int Rounds = 3000;

    private sealed record Outcome(ParseStatus Status, long Consumed, string Result);

    private delegate Outcome Parser(ReadOnlySequence<byte> input);

    private static Outcome Run<T>(ReadOnlySequence<byte> input, ParseOut<T> parse)
    {
        var buffer = input;
        var status = parse(ref buffer, out T value, out var error);
        long consumed = input.Length - buffer.Length;
        Assert.True(Enum.IsDefined(status), $"status {status}");
        Assert.True(buffer.End.Equals(input.End), "the rest must end where the input ends");
        if (status == ParseStatus.Incomplete)
        {
            Assert.Equal(0, consumed);
            Assert.True(buffer.Start.Equals(input.Start));
        }
        if (status == ParseStatus.Done) Assert.True(consumed > 0, "Done must consume the message");
        if (status == ParseStatus.Invalid) Assert.False(string.IsNullOrEmpty(error.Message));
        string result = status switch
        {
            ParseStatus.Done => value switch { Newtonsoft.Json.Linq.JObject o => o.ToString(Newtonsoft.Json.Formatting.None), _ => value?.ToString() ?? "null" },
            ParseStatus.Invalid => $"{error.Reply:x2}",
            _ => "",
        };
        return new Outcome(status, consumed, result);
    }

    private delegate ParseStatus ParseOut<T>(ref ReadOnlySequence<byte> buffer, out T value, out Socks5Error error);

    private static readonly (string Name, Parser Parse, Func<Random, byte[]> Plausible)[] Parsers =
    [
        ("greeting", s => Run<byte>(s, Socks5Parser.TryParseGreeting), r => [0x05, (byte)r.Next(0, 6), .. Bytes(r, r.Next(0, 6))]),
        ("settings", s => Run<Newtonsoft.Json.Linq.JObject?>(s, Socks5Parser.TryParseSettings), PlausibleSettings),
        ("userpass", s => Run<string?>(s, Socks5Parser.TryParseUserPass), r => [0x01, (byte)r.Next(0, 5), .. Bytes(r, r.Next(0, 12))]),
        ("request", s => Run<PtHost.Contract.Destination?>(s, Socks5Parser.TryParseRequest), PlausibleRequest),
    ];

    private static byte[] Bytes(Random r, int n)
    {
        var b = new byte[n];
        r.NextBytes(b);
        return b;
    }

    private static byte[] PlausibleSettings(Random r)
    {
        string[] pieces = ["{", "}", "[", "]", "\"a\"", ":", ",", "1", "null", " ", "\"é\"", "true", "/*", "*/", "\\"];
        var body = Encoding.UTF8.GetBytes(string.Concat(Enumerable.Range(0, r.Next(0, 10)).Select(_ => pieces[r.Next(pieces.Length)])));
        if (r.Next(4) == 0 && body.Length > 0) body[r.Next(body.Length)] = (byte)r.Next(256);
        int declared = r.Next(3) == 0 ? body.Length + r.Next(-2, 3) : body.Length;
        return [(byte)(declared >> 24), (byte)(declared >> 16), (byte)(declared >> 8), (byte)declared, .. body];
    }

    private static byte[] PlausibleRequest(Random r)
    {
        byte atyp = (byte)r.Next(0, 6);
        byte[] address = atyp switch
        {
            0x01 => Bytes(r, 4),
            0x04 => r.Next(2) == 0 ? Bytes(r, 16) : [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, .. Bytes(r, 4)],
            0x03 => RandomName(r),
            _ => Bytes(r, r.Next(0, 4)),
        };
        return [0x05, (byte)r.Next(0, 4), 0x00, atyp, .. address, .. Bytes(r, r.Next(0, 4))];
    }

    private static byte[] RandomName(Random r)
    {
        const string chars = "ab.-_: []@/\\é";
        byte[] name = Encoding.UTF8.GetBytes(new string(Enumerable.Range(0, r.Next(0, 8)).Select(_ => chars[r.Next(chars.Length)]).ToArray()));
        if (r.Next(5) == 0 && name.Length > 0) name[r.Next(name.Length)] = 0xFF;
        return [(byte)Math.Min(name.Length + r.Next(-1, 2), 255), .. name];
    }

    private static ReadOnlySequence<byte> RandomlySegmented(Random r, byte[] bytes)
    {
        var parts = new List<byte[]>();
        int i = 0;
        while (i < bytes.Length)
        {
            int n = r.Next(0, 4);
            n = Math.Min(n, bytes.Length - i);
            parts.Add(bytes[i..(i + n)]);
            i += n;
        }
        if (parts.Count == 0) parts.Add([]);
        return Sequences.FromSegments([.. parts]);
    }

    [Fact]
    public void Random_bytes_never_make_a_SOCKS_parser_throw_and_segmenting_never_changes_the_answer()
    {
        var random = new Random(Seed);
        var seen = new Dictionary<string, HashSet<ParseStatus>>();
        foreach (var (name, parse, plausible) in Parsers)
        {
            seen[name] = [];
            for (int round = 0; round < Rounds; round++)
            {
                byte[] input = round % 2 == 0 ? Bytes(random, random.Next(0, 40)) : plausible(random);
                var whole = parse(new ReadOnlySequence<byte>(input));
                seen[name].Add(whole.Status);
                var split = parse(RandomlySegmented(random, input));
                Assert.True(whole == split, $"{name}: {Convert.ToHexString(input)} gave {whole} whole but {split} segmented");

                if (whole.Status == ParseStatus.Done && whole.Consumed <= 64)
                {
                    // The same message alone is Done the same way; every shorter prefix is Incomplete or Invalid.
                    Assert.Equal(whole, parse(new ReadOnlySequence<byte>(input[..(int)whole.Consumed])));
                    for (int n = 0; n < whole.Consumed; n++)
                        Assert.NotEqual(ParseStatus.Done, parse(new ReadOnlySequence<byte>(input[..n])).Status);
                }
            }
        }
        // The generators did reach every outcome, so the properties above were really exercised.
        foreach (var (name, statuses) in seen)
            Assert.True(statuses.Count == 3, $"{name} only produced {string.Join(",", statuses)}");
    }

    [Fact]
    public void Random_text_never_makes_the_text_parsers_throw_anything_but_their_documented_exception()
    {
        var random = new Random(Seed + 1);
        const string argChars = "ab=;\\ é\0";
        const string allowChars = "0123456789abcdef.:/[]ffff ";
        for (int round = 0; round < Rounds; round++)
        {
            string args = new(Enumerable.Range(0, random.Next(0, 12)).Select(_ => argChars[random.Next(argChars.Length)]).ToArray());
            try { PtArgs.Parse(args); } catch (FormatException) { }

            string entry = new(Enumerable.Range(0, random.Next(0, 20)).Select(_ => allowChars[random.Next(allowChars.Length)]).ToArray());
            try { AllowList.Parse([entry]).Allows(System.Net.IPAddress.Loopback, 80); } catch (FormatException) { }

            byte[] header = Bytes(random, random.Next(0, 10));
            if (random.Next(2) == 0 && header.Length >= 4) "PTP\x01"u8.CopyTo(header);
            int length = SessionPreamble.ParseHeader(header);
            Assert.InRange(length, -1, SessionPreamble.MaxDestinationLength);

            byte[] destination = random.Next(2) == 0 ? Bytes(random, random.Next(0, 12)) : Encoding.UTF8.GetBytes(entry);
            try { SessionPreamble.ParseDestination(destination); } catch (FormatException) { }
        }
    }

    [Fact]
    public void Random_envelopes_never_make_the_signal_router_throw()
    {
        var random = new Random(Seed + 2);
        var router = new SignalRouter(Role.Server, new IpcWriter(TextWriter.Null), NullLogger<SignalRouter>.Instance);
        var channel = router.For("plain");
        const string valid = "{\"v\":1,\"mid\":12,\"cid\":\"c\",\"re\":3,\"exp\":1999999999,\"kind\":\"k\",\"body\":{\"a\":[1,2]}}";
        const string noise = "{}[]\":,0123456789-.e \\nulltrueabc";
        int delivered = 0;
        for (int round = 0; round < Rounds; round++)
        {
            var chars = valid.ToCharArray();
            for (int k = random.Next(0, 4); k > 0; k--) chars[random.Next(chars.Length)] = noise[random.Next(noise.Length)];
            string payload = random.Next(10) == 0 ? new string(chars)[..random.Next(chars.Length)] : new string(chars);
            if (router.Deliver("plain", payload) is null) delivered++;
        }
        while (channel.Incoming.TryRead(out _)) { }
        Assert.InRange(delivered, 1, Rounds - 1);
    }
}
