using System.Net;
using System.Security.Cryptography;
using PtHost.Transports.Rud;
using Xunit.Abstractions;

namespace PtHost.Tests.Process;

/// <summary>
/// Issue 23: RUD packets look like random bytes to anyone without the server's public key (spec/rud.md §3.3,
/// §4.6). A UDP forwarder between the real client and server pthost captures both directions of a curl
/// download of 12 MiB (data packets) and of 500 key exchanges that an initiator holding the client key makes to the
/// real server through the same forwarder (Exchange and Complete); the first 10,000 packets are tested
/// against uniform bytes with Pearson's chi-square (255 degrees of freedom): over every byte of every
/// packet, over the first byte of each packet, and over each of the first 8 byte positions on its own.
/// Significance 10⁻⁴ per test (10 tests: a false alarm about once in a thousand runs); the critical value
/// 347.7 is the chi-square distribution's 0.9999 quantile for 255 degrees of freedom (Wilson–Hilferty).
/// Not a timing test.
/// </summary>
[Collection("process")]
public class RudIndistinguishabilityTests(ITestOutputHelper output)
{
    private const double Critical = 347.7;
    private const int Packets = 10_000;

    [Fact]
    public async Task Handshake_and_data_packets_pass_chi_square_tests_against_uniform_bytes()
    {
        var body = RandomNumberGenerator.GetBytes(12 << 20);
        await using var http = new HttpFileServer(body);
        LossyUdpRelay? relay = null;
        string? clientKey = null;
        await using var chain = await RudChain.StartAsync(editClient: o => clientKey = (string?)o["clientKey"], relayFor: server =>
        {
            relay = new LossyUdpRelay(server, seed: 5) { FromClient = [], FromServer = [] };
            return relay.EndPoint;
        });
        await using var _ = relay!;
        var serverKey = RudChain.ServerKey(chain);

        // Handshakes: 500 exchanges of an initiator holding the client's key, through the forwarder.
        await using (var initiator = RudEndpoint.Bind(new IPEndPoint(IPAddress.Loopback, 0), new RudEndpointOptions
        {
            HandshakeTimeout = TimeSpan.FromSeconds(20),
            InitiatorStaticPrivateKey = clientKey is null ? null : Convert.FromBase64String(clientKey),
        }))
        {
            for (int i = 0; i < 500; i++)
            {
                var conn = await initiator.ConnectAsync(relay!.EndPoint, serverKey, CancellationToken.None);
                conn.Close();
            }
        }
        var handshakeUp = relay!.ClientPackets();
        var handshakeDown = relay.ServerPackets();
        int handshakes = handshakeUp.Length + handshakeDown.Length;

        // Data: a curl download through the chain.
        string file = Path.Combine(Path.GetTempPath(), $"pthost-rud-chi-{Guid.NewGuid():N}");
        try
        {
            var (exit, _, err) = await PtProcess.RunAsync(DebianPrograms.Curl, "-sS", "--max-time", "120", "--socks5-hostname", chain.SocksEndPoint.ToString(),
                "-o", file, $"http://127.0.0.1:{http.Port}/file.bin");
            Assert.True(exit == 0, $"curl exit {exit}: {err}");
        }
        finally { File.Delete(file); }

        // Every handshake packet, then the download's packets (client to server, then server to client) up to 10,000.
        var all = handshakeUp.Concat(handshakeDown).Concat(relay.ClientPackets().Skip(handshakeUp.Length)).Concat(relay.ServerPackets().Skip(handshakeDown.Length)).ToArray();
        Assert.True(all.Length >= Packets, $"captured only {all.Length} packets");
        var packets = all.Take(Packets).ToArray();
        long bytes = packets.Sum(p => (long)p.Length);

        double everyByte = ChiSquare(packets.SelectMany(p => p));
        double first = ChiSquare(packets.Select(p => p[0]));
        var positions = Enumerable.Range(0, 8).Select(i => ChiSquare(packets.Where(p => p.Length > i).Select(p => p[i]))).ToArray();
        output.WriteLine($"{packets.Length} packets ({handshakes} of them handshake packets of 500 exchanges), {bytes:N0} bytes; critical value {Critical} (255 dof, 10^-4)");
        output.WriteLine($"chi-square: every byte {everyByte:0.0}; first byte {first:0.0}; bytes 0..7: {string.Join(", ", positions.Select(v => v.ToString("0.0", System.Globalization.CultureInfo.InvariantCulture)))}");
        Assert.True(handshakes >= 1000, $"only {handshakes} handshake packets");
        Assert.True(everyByte < Critical, $"byte frequencies over all bytes: chi-square {everyByte:0.0}");
        Assert.True(first < Critical, $"first byte: chi-square {first:0.0}");
        for (int i = 0; i < 8; i++) Assert.True(positions[i] < Critical, $"byte {i}: chi-square {positions[i]:0.0}");
    }

    /// <summary>Pearson's chi-square of the byte values against 256 equally likely values.</summary>
    private static double ChiSquare(IEnumerable<byte> values)
    {
        var counts = new long[256];
        long n = 0;
        foreach (byte b in values)
        {
            counts[b]++;
            n++;
        }
        double expected = n / 256.0;
        return counts.Sum(c => (c - expected) * (c - expected) / expected);
    }
}
