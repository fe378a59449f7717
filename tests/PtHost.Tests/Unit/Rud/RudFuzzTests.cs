using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using PtHost.Transports.Rud;

namespace PtHost.Tests.Unit.Rud;

/// <summary>
/// Seeded fuzzing of the packet parser (spec/rud.md §10): random bytes and mutations of real
/// packets never throw, are all dropped and counted, and the live connection carries on.
/// </summary>
public class RudFuzzTests
{
    [Fact]
    public void The_codec_never_throws_on_random_or_mutated_input()
    {
        var rng = new Random(1234);
        var seeds = new List<byte[]>
        {
            Convert.FromHexString("00080000026869"),
            Convert.FromHexString("0103e8fa028001024d0809000568656c6c6f"),
        };
        var hs = new byte[RudWire.HandshakeSize];
        RudWire.WriteHello(hs, 5);
        seeds.Add(hs.ToArray());
        RudWire.WriteExchangePlaintext(hs, true, 5, new byte[32], new byte[24]);
        seeds.Add(hs.ToArray());
        for (int i = 0; i < 200_000; i++)
        {
            byte[] input = i % 3 == 0 ? RandomBytes(rng) : Mutate(rng, seeds[rng.Next(seeds.Count)]);
            RudWire.TryParseHeaderBlock(input, out _, out _);
            int pos = 0;
            while (RudWire.TryReadFrame(input, ref pos, out var f) && pos < input.Length)
                Assert.True(f.DataOffset + f.DataLength <= input.Length);
            RudWire.TryParseDataHeader(input, out _, out _);
            RudWire.TryParseHello(input, out _);
            RudWire.TryParseExchange(input, out _, out _, out int tokenAt, out int tokenLength, out int mezz);
            RudWire.TryParseChallengeOrDefer(input, true, out _, out _, out _);
            RudWire.TryParseChallengeOrDefer(input, false, out _, out _, out _);
        }
    }

    [Fact]
    public async Task A_live_server_drops_and_counts_every_fuzzed_packet_and_keeps_serving()
    {
        await using var pair = RudEndpointTests.Pair.Start(new RudEndpointOptions { AllowFirstContact = true }, relaySeed: 77);
        pair.Relay!.FromClient = [];
        var (c, s) = await pair.ConnectAsync(pair.ServerPublic);
        await RudEndpointTests.TransferBothWaysAsync(c, s, RandomNumberGenerator.GetBytes(50_000), RandomNumberGenerator.GetBytes(50_000), TimeSpan.FromSeconds(60));
        var captured = pair.Relay.ClientPackets();
        var rng = new Random(99);
        var from = new IPEndPoint(IPAddress.Loopback, 40000).Serialize();
        long before = pair.Server.Counters.Dropped, challenges = pair.Server.Counters.ChallengesSent, defers = pair.Server.Counters.DefersSent;
        const int N = 20_000;
        // Aimed packets carry the live id under the server's header protection (spec/rud.md §3.3), as a key holder can send.
        using var hp = new HeaderProtection(pair.ServerPublic);
        byte[] Protected(byte[] b)
        {
            if (b.Length >= HeaderProtection.HeaderSize + HeaderProtection.SampleSize + 1) hp.Mask(b);
            return b;
        }
        for (int i = 0; i < N; i++)
        {
            byte[] input = (i % 4) switch
            {
                0 => RandomBytes(rng),
                1 => Protected(WithId(RandomBytes(rng), s.LocalId)),          // aimed at the live connection
                _ => Mutate(rng, captured[rng.Next(captured.Length)]),        // real packets, changed
            };
            pair.Server.HandlePacket(input, from);
        }
        // Each packet is dropped and counted, or answered as specified: a Challenge (first contact) or, once the
        // mutated copies of the captured Exchange arrive faster than 256 a second, a Defer (spec/rud.md §4.4).
        long counted = pair.Server.Counters.Dropped - before + (pair.Server.Counters.ChallengesSent - challenges) + (pair.Server.Counters.DefersSent - defers);
        Assert.Equal(N, counted);
        Assert.Equal(0, pair.Server.Counters.InternalErrors);
        Assert.Equal(1, pair.Server.Counters.HandshakesAccepted);
        // The connection is untouched.
        await RudEndpointTests.TransferBothWaysAsync(c, s, RandomNumberGenerator.GetBytes(50_000), RandomNumberGenerator.GetBytes(50_000), TimeSpan.FromSeconds(60));
    }

    private static byte[] WithId(byte[] b, ulong id)
    {
        if (b.Length < 9) return b;
        RudWire.WriteId(b, id);
        b[8] = (byte)(b[8] % 2 == 0 ? PacketType.Data : PacketType.DataPhase1);
        return b;
    }

    private static byte[] RandomBytes(Random rng)
    {
        var b = new byte[rng.Next(0, 1400)];
        rng.NextBytes(b);
        return b;
    }

    private static byte[] Mutate(Random rng, byte[] seed)
    {
        var b = seed.ToList();
        int edits = 1 + rng.Next(4);
        for (int e = 0; e < edits; e++)
        {
            int op = b.Count == 0 ? 2 : rng.Next(4);
            switch (op)
            {
                case 0: b[rng.Next(b.Count)] ^= (byte)(1 + rng.Next(255)); break;
                case 1: { int at = rng.Next(b.Count); b.RemoveRange(at, b.Count - at); break; }
                case 2: b.Insert(rng.Next(b.Count + 1), (byte)rng.Next(256)); break;
                default: b.RemoveAt(rng.Next(b.Count)); break;
            }
        }
        return [.. b];
    }
}
