using System.Security.Cryptography;
using PtHost.Net.Signals;

namespace PtHost.Tests.Process;

/// <summary>
/// spec/rendezvous.md §2.1: two <c>pthost relay rendezvous</c> instances behind HAProxy hashing the
/// path's <c>/v1/{ch}</c> (<c>balance uri depth 2</c>): every request of a channel reaches the same
/// instance, so what is posted is received, and the channels spread over both instances. All in a
/// loopback-only namespace (fixed ports there; curl plays the peers).
/// </summary>
[Collection("process")]
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public sealed class RendezvousScaleOutTests
{
    [Fact]
    public async Task Two_instances_behind_HAProxy_hashing_the_channel_deliver_every_channels_messages()
    {
        await using var net = await LoopbackNamespace.CreateAsync();
        string dir = net.Directory;
        var a = net.Start(PtHostExecutable.Path, ["relay", "rendezvous", "--listen", "127.0.0.1:7521", "--stats-interval", "1"]);
        var b = net.Start(PtHostExecutable.Path, ["relay", "rendezvous", "--listen", "127.0.0.1:7522", "--stats-interval", "1"]);
        Assert.StartsWith("LISTEN rendezvous 127.0.0.1:7521 http", await a.ReadLineAsync());
        Assert.StartsWith("LISTEN rendezvous 127.0.0.1:7522 http", await b.ReadLineAsync());
        string cfg = Path.Combine(dir, "haproxy.cfg");
        await File.WriteAllTextAsync(cfg, """
            global
              maxconn 1000
            defaults
              mode http
              timeout connect 5s
              timeout client 60s
              timeout server 60s
            frontend rendezvous
              bind 127.0.0.1:7520
              default_backend instances
            backend instances
              balance uri depth 2
              hash-type consistent
              server a 127.0.0.1:7521
              server b 127.0.0.1:7522

            """);
        net.Start("/usr/sbin/haproxy", ["-db", "-f", cfg]);
        const int channels = 16;
        for (int i = 0; i < channels; i++)
        {
            var keys = RendezvousKeys.Parse(RendezvousKeys.NewSecret());
            string cid = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(8));
            string payload = $"{{\"v\":1,\"mid\":{i + 1},\"cid\":\"{cid}\",\"kind\":\"hello\"}}";
            string sealedFile = Path.Combine(dir, $"m{i}");
            await File.WriteAllBytesAsync(sealedFile, keys.Seal("s", "plain", payload));
            string url = $"http://127.0.0.1:7520/v1/{keys.Channel}/s";
            string auth = "Authorization: Bearer " + keys.TokenText;
            // HAProxy may still be starting: curl retries the refused connection.
            var (rc, _, err) = await Curl(net, "-sS", "-f", "--retry", "20", "--retry-connrefused", "--retry-delay", "1", "-H", auth,
                "-H", "Content-Type: application/octet-stream", "--data-binary", "@" + sealedFile, url);
            Assert.True(rc == 0, $"POST channel {i}: {err}");
            string got = Path.Combine(dir, $"got{i}");
            (rc, _, err) = await Curl(net, "-sS", "-f", "-H", auth, "-o", got, url + "?wait=5");
            Assert.True(rc == 0, $"GET channel {i}: {err}");
            var frame = Assert.Single(RendezvousKeys.ReadFrames(await File.ReadAllBytesAsync(got)));
            Assert.Equal(("plain", payload), keys.Open("s", frame.Span, out _));
        }
        // Both instances took a share: each reports some of the 16 posts.
        long Posted(PtProcess p) => p.StdoutLines.Where(l => l.StartsWith("STATUS TRANSPORT=rendezvous ", StringComparison.Ordinal))
            .Select(l => long.Parse(l.Split(' ').First(f => f.StartsWith("POSTED=", StringComparison.Ordinal))[7..], System.Globalization.CultureInfo.InvariantCulture)).DefaultIfEmpty(0).Max();
        Assert.True(await Eventually.HoldsWithinAsync(() => Posted(a) + Posted(b) == channels, TimeSpan.FromSeconds(10)), $"posted: a {Posted(a)}, b {Posted(b)}");
        Assert.True(Posted(a) > 0 && Posted(b) > 0, $"posted: a {Posted(a)}, b {Posted(b)}");
    }

    private static Task<(int Exit, string Stdout, string Stderr)> Curl(LoopbackNamespace net, params string[] args) =>
        PtProcess.RunAsync("/usr/sbin/ip", ["netns", "exec", net.Name, "/usr/bin/curl", .. args], TimeSpan.FromSeconds(60));
}
