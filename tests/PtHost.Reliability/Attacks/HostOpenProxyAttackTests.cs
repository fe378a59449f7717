using System.Net;
using System.Text;
using Newtonsoft.Json.Linq;
using PtHost.Reliability.Support;
using Xunit.Abstractions;

namespace PtHost.Reliability.Attacks;

/// <summary>
/// Issue 24, open-proxy ranges: a free server whose <c>allow</c> list holds a catch-all must not reach the
/// server machine's own loopback (or any other special-purpose range) through the client's SOCKS port,
/// whatever form the destination takes (spec/ipc.md §3.4). The attacker is a SOCKS client of the client
/// process (curl, as a new user would try it, and raw SOCKS5 requests); the victim a web server that
/// listens on the server machine's loopback only.
/// </summary>
public class HostOpenProxyAttackTests(ITestOutputHelper output)
{
    private static readonly byte[] Secret = Encoding.ASCII.GetBytes("loopback-only secret 7f3c9a\n");

    [Theory]
    [InlineData("0.0.0.0/0")]
    [InlineData("::/0,0.0.0.0/0")]
    [InlineData("0.0.0.0/0:80,0.0.0.0/0")]
    public async Task A_catch_all_allow_list_does_not_reach_the_server_machines_loopback(string allow)
    {
        await using var web = new HttpFileServer(Secret);
        await using var chain = await Sessions.StartPlainChainAsync(PtChain.FreeServer("plain", allow.Split(',')));
        string socks = chain.SocksEndPoint.ToString();

        // As a new user would try it: curl through the client's SOCKS port. Every attempt is made, then judged.
        var breaches = new List<string>();
        foreach (string host in new[] { "127.0.0.1", "0.0.0.0", "[::ffff:127.0.0.1]", "localhost" })
        {
            string url = $"http://{host}:{web.Port}/";
            var (exit, stdout, stderr) = await PtProcess.RunAsync(DebianPrograms.Curl, "-sS", "--max-time", "40", "--socks5-hostname", socks, url);
            output.WriteLine($"allow [{allow}]: curl {url} -> exit {exit}, {stdout.Length} bytes, {stderr.Trim()}");
            // curl's exit 97 is "proxy handshake error": the SOCKS reply was a failure.
            if (stdout.Contains("loopback-only secret", StringComparison.Ordinal) || exit != 97) breaches.Add($"curl {url}: exit {exit}, {stdout.Length} bytes");
        }

        // The same with raw SOCKS5 requests, every destination form: reply 02 (not allowed), at once.
        var forms = new (string What, byte[] Request)[]
        {
            ("127.0.0.1", SocksClient.ConnectIPv4(IPAddress.Loopback, web.Port)),
            ("127.1.2.3", SocksClient.ConnectIPv4(IPAddress.Parse("127.1.2.3"), web.Port)),
            ("0.0.0.0", SocksClient.ConnectIPv4(IPAddress.Any, web.Port)),
            ("::ffff:127.0.0.1", SocksClient.ConnectIPv6(IPAddress.Parse("::ffff:127.0.0.1"), web.Port)),
            ("::ffff:0:127.0.0.1 (IPv4-translated)", SocksClient.ConnectIPv6(IPAddress.Parse("::ffff:0:127.0.0.1"), web.Port)),
            ("::127.0.0.1 (IPv4-compatible)", SocksClient.ConnectIPv6(IPAddress.Parse("::127.0.0.1"), web.Port)),
            ("::1", SocksClient.ConnectIPv6(IPAddress.IPv6Loopback, web.Port)),
            ("::", SocksClient.ConnectIPv6(IPAddress.IPv6Any, web.Port)),
            ("name localhost", SocksClient.ConnectDomain("localhost", web.Port)),
            ("name 127.0.0.1", SocksClient.ConnectDomain("127.0.0.1", web.Port)),
            ("169.254.169.254:80 (cloud metadata)", SocksClient.ConnectIPv4(IPAddress.Parse("169.254.169.254"), 80)),
            ("10.0.0.1 (private)", SocksClient.ConnectIPv4(IPAddress.Parse("10.0.0.1"), 80)),
            ("100.64.0.1 (CGNAT)", SocksClient.ConnectIPv4(IPAddress.Parse("100.64.0.1"), 80)),
            ("64:ff9b::7f00:1 (NAT64 of 127.0.0.1)", SocksClient.ConnectIPv6(IPAddress.Parse("64:ff9b::7f00:1"), web.Port)),
        };
        var started = DateTime.UtcNow;
        foreach (var (what, request) in forms)
        {
            await using var c = await SocksClient.ConnectAsync(chain.SocksEndPoint);
            await c.SendAsync([.. SocksClient.Greeting(0x00), .. request]);
            Assert.Equal(new byte[] { 5, 0 }, await c.ReadExactlyAsync(2));
            byte reply = await c.ReadReplyAsync();
            output.WriteLine($"allow [{allow}]: CONNECT {what} -> reply {reply:x2}");
            if (reply != 0x02) breaches.Add($"CONNECT {what}: reply {reply:x2}, expected 02 (not allowed)");
        }
        output.WriteLine($"{forms.Length} raw requests answered in {(DateTime.UtcNow - started).TotalSeconds:0.00} s; the victim accepted {web.Accepted} connections");
        Assert.True(breaches.Count == 0, $"{breaches.Count} attempts were not refused:\n{string.Join("\n", breaches)}");
        Assert.Equal(0, web.Accepted); // not one connection reached the victim

        // pthost said at start-up that the list holds a catch-all (stderr and a LOG line, spec/ipc.md §3.4, §4.6).
        Assert.Contains(chain.ServerStartup, l => l.StartsWith("LOG SEVERITY=warning MESSAGE=\"allow entry", StringComparison.Ordinal) && l.Contains("catch-all"));
        Assert.Contains("catch-all", chain.Server.Stderr);
        await chain.StopAsync();
    }

    [Theory]
    [InlineData("127.0.0.1")]
    [InlineData("127.0.0.0/8")]
    [InlineData("0.0.0.0/0,127.0.0.1")]
    public async Task An_allow_entry_inside_loopback_still_reaches_it(string allow)
    {
        await using var web = new HttpFileServer(Secret);
        await using var chain = await Sessions.StartPlainChainAsync(PtChain.FreeServer("plain", allow.Split(',')));
        foreach (string host in new[] { "127.0.0.1", "localhost" })
        {
            var (exit, stdout, stderr) = await PtProcess.RunAsync(DebianPrograms.Curl, "-sS", "--max-time", "40", "--socks5-hostname", chain.SocksEndPoint.ToString(), $"http://{host}:{web.Port}/");
            output.WriteLine($"allow [{allow}]: curl {host} -> exit {exit} {stderr.Trim()}");
            Assert.Equal(0, exit);
            Assert.Equal(Encoding.ASCII.GetString(Secret), stdout);
        }
        bool catchAll = allow.Contains("/0", StringComparison.Ordinal);
        Assert.Equal(catchAll, chain.ServerStartup.Any(l => l.Contains("catch-all", StringComparison.Ordinal)));
        await chain.StopAsync();
    }
}
