using System.Buffers;
using System.Buffers.Binary;
using System.Net;
using FsCheck;
using FsCheck.Fluent;
using Newtonsoft.Json.Linq;
using PtHost.Contract;
using PtHost.Socks;
using PtHost.Tests.Process;

namespace PtHost.Reliability;

/// <summary>FsCheck properties: encode/decode round trips of the SOCKS5 and PT 1.0 formats and of destinations.</summary>
public class RoundTripProperties
{
    private static readonly Config Quick = Config.QuickThrowOnFailure.WithMaxTest(1000);

    private static Gen<string> AnyText =>
        Gen.Frequency(
            (3, ArbMap.Default.GeneratorFor<string>().Select(s => s ?? "")),
            (2, Gen.Elements("\\", "=", ";", "\\\\", "\\=", "\\;", "a", "é", "😀", " ", "\0").ListOf().Select(l => string.Concat(l))));

    [Fact]
    public void PtArgs_Format_then_Parse_gives_back_the_arguments()
    {
        var pairs = Gen.Zip(AnyText.Where(k => k.Length > 0), AnyText).ListOf()
            .Select(l => l.GroupBy(p => p.Item1).Select(g => new KeyValuePair<string, string>(g.Key, g.First().Item2)).ToList());
        Check.One(Quick, Prop.ForAll(pairs.ToArbitrary(), args =>
        {
            var parsed = PtArgs.Parse(PtArgs.Format(args));
            return parsed.Count == args.Count && args.All(kv => (string?)parsed[kv.Key] == kv.Value);
        }));
    }

    private static Gen<string> Octet => Gen.Choose(0, 255).Select(i => i.ToString(System.Globalization.CultureInfo.InvariantCulture));

    private static Gen<string> IPv4 => Gen.Four(Octet).Select(t => $"{t.Item1}.{t.Item2}.{t.Item3}.{t.Item4}");

    private static Gen<string> IPv6 => Gen.ArrayOf(Gen.Choose(0, 255).Select(i => (byte)i), 16).Select(b => new IPAddress(b).ToString());

    private static Gen<string> HostName =>
        Gen.Elements("abcdefghijklmnopqrstuvwxyz0123456789-_.~!$%&'()*+,;=".ToCharArray()).NonEmptyListOf()
            .Select(l => new string([.. l.Take(255)]))
            .Where(Destination.IsValidHostName);

    private static Gen<Destination> Destinations =>
        Gen.Zip(Gen.OneOf(IPv4, IPv6, HostName), Gen.Choose(0, 65535)).Select(t => new Destination(t.Item1, t.Item2));

    [Fact]
    public void Destination_ToString_then_TryParse_gives_back_the_destination()
    {
        Check.One(Quick, Prop.ForAll(Destinations.ToArbitrary(), d =>
            Destination.TryParse(d.ToString(), out var back) && back == d && back.ToString() == d.ToString()));
    }

    [Fact]
    public void Destination_TryParse_is_idempotent_on_any_text()
    {
        var texts = Gen.OneOf(
            ArbMap.Default.GeneratorFor<string>().Select(s => s ?? ""),
            Destinations.Select(d => d.ToString()),
            Gen.Zip(Destinations.Select(d => d.ToString()), Gen.Zip(Gen.Choose(0, 30), Gen.Elements("[", "]", ":", ".", "0", "x", "%", " ")))
                .Select(t => t.Item1.Insert(Math.Min(t.Item2.Item1, t.Item1.Length), t.Item2.Item2)));
        Check.One(Quick, Prop.ForAll(texts.ToArbitrary(), s =>
            !Destination.TryParse(s, out var d) || (Destination.TryParse(d.ToString(), out var again) && again == d)));
    }

    /// <summary>A request built from a destination parses back to it (IPv4, IPv6, domain).</summary>
    [Fact]
    public void Socks5_request_encoding_then_TryParseRequest_gives_back_the_destination()
    {
        Check.One(Quick, Prop.ForAll(Destinations.ToArbitrary(), d =>
        {
            byte[] wire = d.Address is { } a
                ? a.AddressFamily == System.Net.Sockets.AddressFamily.InterNetwork ? SocksClient.ConnectIPv4(a, d.Port) : SocksClient.ConnectIPv6(a, d.Port)
                : SocksClient.ConnectDomain(d.Host, d.Port);
            var seq = new ReadOnlySequence<byte>(wire);
            var status = Socks5Parser.TryParseRequest(ref seq, out var back, out _);
            var expected = d.Address is { IsIPv4MappedToIPv6: true } m ? new Destination(m.MapToIPv4().ToString(), d.Port) : d;
            return status == ParseStatus.Done && seq.Length == 0 && back!.Port == expected.Port
                && (expected.Address is null ? back.Host == expected.Host : expected.Address.Equals(back.Address));
        }));
    }

    /// <summary>Socks5.WriteReply, read back as a SOCKS client reads a reply: the code, address family, address and port survive.</summary>
    [Fact]
    public void Socks5_WriteReply_then_parse_gives_back_code_and_bound_address()
    {
        var endpoints = Gen.OneOf(
            Gen.Constant<IPEndPoint?>(null),
            Gen.Zip(IPv4, Gen.Choose(0, 65535)).Select(t => (IPEndPoint?)new IPEndPoint(IPAddress.Parse(t.Item1), t.Item2)),
            Gen.Zip(IPv6, Gen.Choose(0, 65535)).Select(t => (IPEndPoint?)new IPEndPoint(IPAddress.Parse(t.Item1), t.Item2)));
        var cases = Gen.Zip(Gen.Choose(0, 255).Select(i => (byte)i), endpoints);
        Check.One(Quick, Prop.ForAll(cases.ToArbitrary(), c =>
        {
            var (code, bound) = c;
            var buf = new byte[32];
            int n = Socks5.WriteReply(buf, code, bound);
            if (buf[0] != 5 || buf[1] != code || buf[2] != 0) return false;
            int expectedLength = buf[3] switch { 1 => 10, 4 => 22, _ => -1 };
            if (n != expectedLength) return false;
            var addr = new IPAddress(buf.AsSpan(4, n - 6));
            int port = BinaryPrimitives.ReadUInt16BigEndian(buf.AsSpan(n - 2));
            if (bound is null) return addr.Equals(IPAddress.Any) && port == 0;
            var want = bound.Address.IsIPv4MappedToIPv6 ? bound.Address.MapToIPv4() : bound.Address;
            return addr.Equals(want) && port == bound.Port;
        }));
    }

    /// <summary>A greeting with any 1–255 methods is consumed exactly and picks the preferred method offered.</summary>
    [Fact]
    public void Socks5_greeting_with_any_methods_picks_the_preferred_one()
    {
        var methods = Gen.Choose(0, 255).Select(i => (byte)i).NonEmptyListOf().Select(l => l.Take(255).ToArray());
        Check.One(Quick, Prop.ForAll(methods.ToArbitrary(), m =>
        {
            var seq = new ReadOnlySequence<byte>(SocksClient.Greeting(m));
            var status = Socks5Parser.TryParseGreeting(ref seq, out byte chosen, out _);
            byte expected = m.Contains((byte)9) ? (byte)9 : m.Contains((byte)0x80) ? (byte)0x80 : m.Contains((byte)2) ? (byte)2 : m.Contains((byte)0) ? (byte)0 : (byte)0xFF;
            return status == ParseStatus.Done && seq.Length == 0 && chosen == expected;
        }));
    }

    /// <summary>A settings block built from any JSON object of strings parses back to the same object.</summary>
    [Fact]
    public void Settings_block_round_trips_any_object_of_strings()
    {
        var objects = Gen.Zip(AnyText.Where(k => k.Length > 0 && !k.Any(char.IsSurrogate)), AnyText.Where(v => !v.Any(char.IsSurrogate))).ListOf()
            .Select(l => new JObject(l.GroupBy(p => p.Item1).Select(g => new JProperty(g.Key, g.First().Item2))));
        Check.One(Quick, Prop.ForAll(objects.ToArbitrary(), o =>
        {
            var seq = new ReadOnlySequence<byte>(SocksClient.SettingsBlock(o.ToString(Newtonsoft.Json.Formatting.None)));
            var status = Socks5Parser.TryParseSettings(ref seq, out var back, out _);
            return status == ParseStatus.Done && seq.Length == 0 && JToken.DeepEquals(o, back);
        }));
    }
}
