using System.Net;
using System.Net.Sockets;
using PtHost.Reliability.Support;
using Xunit.Abstractions;

namespace PtHost.Reliability;

/// <summary>Mutated SOCKS5 handshakes sent to the real client pthost: each is answered or closed, and the process keeps serving.</summary>
public class WireFuzzTests(ITestOutputHelper output)
{
    public const int CiHandshakes = 400;

    /// <summary>Valid handshakes: greeting, then (by method) settings block or RFC 1929 arguments, then the request.</summary>
    private static List<byte[]> Handshakes(int echoPort)
    {
        var list = new List<byte[]>();
        byte[][] requests = [.. Seeds.Requests, SocksClient.ConnectIPv4(IPAddress.Loopback, echoPort)];
        foreach (var r in requests)
        {
            list.Add([.. SocksClient.Greeting(0x00), .. r]);
            list.Add([.. SocksClient.Greeting(0x09), .. SocksClient.SettingsBlock("{}"), .. r]);
            list.Add([.. SocksClient.Greeting(0x00, 0x80), .. SocksClient.SettingsBlock($"{{\"destination\":\"127.0.0.1:{echoPort}\"}}"), .. r]);
            list.Add([.. SocksClient.Greeting(0x02), .. SocksClient.UserPass($"destination=127.0.0.1:{echoPort}", "\0"), .. r]);
            list.Add([.. SocksClient.Greeting(0x02, 0x00), .. SocksClient.UserPass("", ""), .. r]);
        }
        return list;
    }

    /// <summary>The method selection reply, then (for RFC 1929) its status, then the CONNECT reply code.</summary>
    private static string Describe(byte[] g)
    {
        if (g.Length == 0) return ", nothing sent back";
        if (g.Length < 2) return $", {g.Length} byte";
        string text = $", method {g[1]:x2}";
        int at = 2;
        if (g[1] == 2 && g.Length >= 4) { text += $", auth status {g[3]:x2}"; at = 4; }
        if (g.Length >= at + 2 && g[at] == 5) text += $", reply {g[at + 1]:x2}";
        return text;
    }

    private static bool? SuccessReplyAt(byte[] g)
    {
        if (g.Length < 2) return null;
        int at = g[1] == 2 ? 4 : 2;
        return g.Length >= at + 10 && g[at] == 5 && g[at + 1] == 0;
    }

    [Fact]
    public async Task Mutated_handshakes_are_answered_or_closed_and_the_client_keeps_serving()
    {
        int count = Math.Min(Mutator.Iterations(CiHandshakes), 20_000);
        await using var echo = new EchoServer();
        // A bound server: whatever destination a mutated request names, the session goes to the echo server.
        await using var chain = await Sessions.StartPlainChainAsync(PtChain.BoundServer($"127.0.0.1:{echo.Port}"));
        var seeds = Handshakes(echo.Port);
        var m = new Mutator(7001);
        var inputs = Enumerable.Range(0, count).Select(_ => m.Next(seeds)).ToList();

        var outcomes = new System.Collections.Concurrent.ConcurrentDictionary<string, int>();
        var hung = new System.Collections.Concurrent.ConcurrentQueue<string>();
        using var gate = new SemaphoreSlim(32);
        await Task.WhenAll(inputs.Select(async (input, i) =>
        {
            await gate.WaitAsync();
            try
            {
                using var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
                await s.ConnectAsync(chain.SocksEndPoint);
                string outcome;
                try
                {
                    await s.SendAsync(input, SocketFlags.None);
                    // Most inputs end with our FIN; every tenth leaves the connection open (the 10 s handshake limit must end it).
                    bool finSent = i % 10 != 0;
                    if (finSent) s.Shutdown(SocketShutdown.Send);
                    using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30));
                    var got = new MemoryStream();
                    var buf = new byte[4096];
                    try
                    {
                        int n;
                        while ((n = await s.ReceiveAsync(buf, SocketFlags.None, cts.Token)) > 0)
                        {
                            got.Write(buf, 0, n);
                            // A handshake the proxy accepted is a live session to the echo server: end it from our side.
                            if (!finSent && SuccessReplyAt(got.ToArray()) is true) { s.Shutdown(SocketShutdown.Send); finSent = true; }
                        }
                        outcome = "closed";
                    }
                    catch (SocketException) { outcome = "reset"; }
                    catch (OperationCanceledException) { outcome = "HUNG"; hung.Enqueue(Convert.ToHexString(input)); }
                    var g = got.ToArray();
                    outcome += Describe(g);
                }
                catch (SocketException) { outcome = "reset while sending"; }
                outcomes.AddOrUpdate(outcome, 1, (_, v) => v + 1);
            }
            finally { gate.Release(); }
        }));
        foreach (var (k, v) in outcomes.OrderByDescending(kv => kv.Value)) output.WriteLine($"{v,5}  {k}");
        Assert.True(hung.IsEmpty, $"{hung.Count} handshakes neither answered nor closed in 30 s, e.g. {string.Join(", ", hung.Take(3))}");

        // The process is still there and serves a normal session.
        await Sessions.EchoRoundTripAsync(chain.SocksEndPoint, echo.Port, 256 * 1024);
        Assert.True(File.Exists($"/proc/{chain.Client.Pid}/status"));
        Assert.DoesNotContain("Unhandled exception", chain.Client.Stderr);
        var (s0, c0) = await chain.StopAsync();
        Assert.Equal(0, c0);
        Assert.Equal(0, s0);
    }
}
