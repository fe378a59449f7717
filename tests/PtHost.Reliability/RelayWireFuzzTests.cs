using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using PtHost.Reliability.Support;
using PtHost.Transports.Jet;
using PtHost.Turn;
using Xunit.Abstractions;

namespace PtHost.Reliability;

/// <summary>
/// Mutated messages on the wire against the real processes: the TURN listener's TCP side (STUN and
/// ChannelData split from a stream, spec/turn.md §3.6) and the JET relay's tcp candidate port
/// (spec/jet.md §5.6). Each connection gets well-formed answers or nothing and is closed after our
/// FIN; the process stays up and serves a legitimate session afterwards.
/// </summary>
public class RelayWireFuzzTests(ITestOutputHelper output)
{
    private const int Inputs = 300;

    private static async Task<List<Hostile.Cut>> SendAllAsync(IPEndPoint target, IEnumerable<byte[]> inputs)
    {
        var clock = Stopwatch.StartNew();
        using var gate = new SemaphoreSlim(32);
        return [.. await Task.WhenAll(inputs.Select(async input =>
        {
            await gate.WaitAsync();
            try
            {
                var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
                var started = clock.Elapsed;
                await s.ConnectAsync(target);
                try
                {
                    await s.SendAsync(input, SocketFlags.None);
                    s.Shutdown(SocketShutdown.Send);
                }
                catch (SocketException) { } // the far end may reset first: it judged the bytes already
                return (await Hostile.AwaitCutsAsync([(s, started)], clock, TimeSpan.FromSeconds(30)))[0];
            }
            finally { gate.Release(); }
        }))];
    }

    [Fact]
    public async Task Mutated_stun_and_channeldata_streams_on_the_turn_tcp_listener_get_well_formed_answers_or_none()
    {
        await using var echo = new UdpEcho();
        await using var turn = await TurnChain.StartAsync(PtChain.FreeServer("plain", "127.0.0.1"));
        var m = new Mutator(9101);
        var seeds = TransportParserFuzzTests.StunSeeds();
        var inputs = Enumerable.Range(0, Inputs).Select(i => i % 4 == 0 ? [.. m.Next(seeds), .. m.Next(seeds)] : m.Next(seeds)).ToList();
        var cuts = await SendAllAsync(turn.TurnEndPoint, inputs);
        int answered = 0;
        foreach (var (cut, input) in cuts.Zip(inputs))
        {
            Assert.True(cut.Ended, $"input {Convert.ToHexString(input)}: still open 30 s after our FIN");
            // Every answer is whole STUN messages, back to back.
            var r = cut.Received;
            for (int at = 0; at < r.Length;)
            {
                int length = Stun.FrameLength(r.AsSpan(at));
                Assert.True(length > 0 && at + length <= r.Length && Stun.TryParse(r.AsSpan(at, length), out _) == StunParseError.None,
                    $"input {Convert.ToHexString(input)}: answer {Convert.ToHexString(r)} is not well-formed STUN");
                at += length;
                answered++;
            }
        }
        output.WriteLine($"{Inputs} mutated streams on the TURN TCP listener: all closed after our FIN within {cuts.Max(c => c.HeldSeconds):F1} s, {answered} well-formed answers");
        // Some mutated inputs stay valid requests: their answers arrive although the client half-closed at once.
        Assert.True(answered > 0, "no answer at all: responses to a client that half-closed are dropped");
        await using var client = await UdpTurnClient.ConnectAsync(turn.TurnEndPoint);
        Assert.Equal(0, await client.AllocateAsync());
    }

    [Fact]
    public async Task Mutated_jet_packets_on_the_relay_tcp_port_get_a_jet_error_or_a_close()
    {
        await using var relay = await JetRelayProcess.StartAsync(new Newtonsoft.Json.Linq.JObject { ["handshakeTimeout"] = 5 });
        var m = new Mutator(9201);
        var seeds = TransportParserFuzzTests.JetPackets();
        var inputs = Enumerable.Range(0, Inputs).Select(_ => m.Next(seeds)).ToList();
        var cuts = await SendAllAsync(relay.Tcp!, inputs);
        var statuses = new Dictionary<int, int>();
        foreach (var (cut, input) in cuts.Zip(inputs))
        {
            Assert.True(cut.Ended, $"input {Convert.ToHexString(input)}: still open 30 s after our FIN");
            if (cut.Received.Length == 0) { statuses[0] = statuses.GetValueOrDefault(0) + 1; continue; }
            var r = cut.Received;
            Assert.True(JetWire.ParseHeader(r, out int size, out byte mask) == JetPacketError.None && size == r.Length,
                $"input {Convert.ToHexString(input)}: answer {Convert.ToHexString(r)} is not one JET packet");
            var payload = r[JetWire.HeaderLength..];
            JetWire.ApplyMask(payload, mask);
            Assert.True(JetWire.TryParseResponse(payload, out var response, out _));
            // 200 only for an accept (v1 with its new association, §3.3; v2, §4); errors otherwise.
            Assert.True(response!.Status is 200 or (>= 400 and <= 599), $"status {response.Status}");
            statuses[response.Status] = statuses.GetValueOrDefault(response.Status) + 1;
        }
        output.WriteLine($"{Inputs} mutated JET packets on the tcp port: " + string.Join(", ", statuses.OrderBy(kv => kv.Key).Select(kv => $"{(kv.Key == 0 ? "closed without an answer" : kv.Key.ToString())} ×{kv.Value}"))
            + $"; all closed within {cuts.Max(c => c.HeldSeconds):F1} s");
        var (aid, candidates) = await relay.CreateAndGatherAsync();
        await using var tester = await JetPeer.ConnectAsync(relay.Tcp!);
        await tester.SendRequestAsync(JetWire.BuildRequest(JetMethod.Test, aid, candidates["tcp"].Id, candidates["tcp"].Url.Authority));
        Assert.Equal(200, (await tester.ReadResponseAsync()).Status);
    }
}
