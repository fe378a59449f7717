using System.Net;
using System.Text;

namespace PtHost.Tests.Process;

/// <summary>
/// TOR_PT_PROXY in PT 1.0 managed mode (spec/ipc.md §10.5, spec/external.md §2): a managed pthost
/// client with the plain transport reaches a plain server (PT 2.0, free) through real Debian proxies;
/// the proxies' logs and credential checks prove the connection went through them.
/// </summary>
[Collection("process")]
public class ManagedProxyTests
{
    private static readonly string State = Path.Combine(Path.GetTempPath(), "pthost-pt1-proxy-" + Environment.ProcessId) + "/";

    private static Dictionary<string, string> ClientEnv(string proxy, params (string, string)[] extra)
    {
        var env = new Dictionary<string, string>
        {
            ["TOR_PT_MANAGED_TRANSPORT_VER"] = "1",
            ["TOR_PT_STATE_LOCATION"] = State,
            ["TOR_PT_CLIENT_TRANSPORTS"] = "plain",
            ["TOR_PT_EXIT_ON_STDIN_CLOSE"] = "1",
            ["TOR_PT_PROXY"] = proxy,
        };
        foreach (var (k, v) in extra) env[k] = v;
        return env;
    }

    /// <summary>Starts the managed client, checks its pt-spec lines, returns its SOCKS endpoint.</summary>
    private static async Task<IPEndPoint> StartClientAsync(PtProcess client)
    {
        var lines = await client.ReadUntilDoneAsync();
        Assert.Equal("VERSION 1", lines[0]);
        Assert.Equal("PROXY DONE", lines[1]);
        return IPEndPoint.Parse(lines.Single(l => l.StartsWith("CMETHOD plain socks5 ", StringComparison.Ordinal)).Split(' ')[3]);
    }

    /// <summary>
    /// A session as tor makes it: the SOCKS destination is the bridge (the plain server), the PT 1.0
    /// argument names the far destination (the echo server). Returns the reply code; on success checks the echo.
    /// </summary>
    private static async Task<byte> SessionAsync(IPEndPoint socksEp, IPEndPoint server, int echoPort)
    {
        await using var socks = await SocksClient.ConnectAsync(socksEp);
        await socks.SendAsync([.. SocksClient.Greeting(0x02), .. SocksClient.UserPass($"destination=127.0.0.1:{echoPort}", "\0"),
            .. SocksClient.ConnectIPv4(server.Address, server.Port)]);
        Assert.Equal([5, 2], await socks.ReadExactlyAsync(2));
        Assert.Equal([1, 0], await socks.ReadExactlyAsync(2));
        byte reply = await socks.ReadReplyAsync();
        if (reply != 0) return reply;
        var data = Encoding.ASCII.GetBytes("through the upstream proxy");
        await socks.SendAsync(data);
        Assert.Equal(data, await socks.ReadExactlyAsync(data.Length));
        return 0;
    }

    private static async Task<(PtProcess Server, IPEndPoint EndPoint)> StartPlainServerAsync()
    {
        var server = PtProcess.StartPthost(PtChain.FreeServer().ToString(Newtonsoft.Json.Formatting.None));
        var lines = await server.ReadUntilDoneAsync();
        return (server, IPEndPoint.Parse(lines.Single(l => l.StartsWith("SMETHOD ", StringComparison.Ordinal)).Split(' ')[2]));
    }

    [Fact]
    public async Task Every_transport_connection_goes_through_dante_given_as_TOR_PT_PROXY()
    {
        await using var echo = new EchoServer();
        var (server, serverEp) = await StartPlainServerAsync();
        await using var _ = server;
        await using var dante = await DebianProxy.DanteAsync("127.0.0.2");
        // An outbound bind address that this machine lacks: the loopback proxy is exempt (spec/external.md §3).
        await using var client = PtProcess.Start(PtHostExecutable.Path, [], ClientEnv($"socks5://{dante.EndPoint}", ("TOR_PT_OUTBOUND_BIND_ADDRESS_V4", "198.51.100.77")));
        var socksEp = await StartClientAsync(client);
        Assert.Equal(0, await SessionAsync(socksEp, serverEp, echo.Port));
        Assert.Equal(0, await SessionAsync(socksEp, serverEp, echo.Port));
        // dante logged its connections to the plain server: the client did not go around it.
        Assert.Contains($"127.0.0.1.{serverEp.Port}", dante.Log);
        client.CloseStdin();
        Assert.Equal(0, await client.WaitForExitAsync());
    }

    [Fact]
    public async Task The_PT2_proxy_key_sends_every_transport_connection_through_dante()
    {
        await using var echo = new EchoServer();
        var (server, serverEp) = await StartPlainServerAsync();
        await using var _ = server;
        await using var dante = await DebianProxy.DanteAsync("127.0.0.2");
        await using var client = PtProcess.StartPthost($$"""{"role":"client","transports":["plain"],"proxy":"socks5://{{dante.EndPoint}}"}""");
        var lines = await client.ReadUntilDoneAsync();
        Assert.Equal(["VERSION 2", "PROXY DONE"], lines[..2]);
        var socksEp = IPEndPoint.Parse(lines.Single(l => l.StartsWith("CMETHOD plain socks5 ", StringComparison.Ordinal)).Split(' ')[3]);
        Assert.Equal(0, await SessionAsync(socksEp, serverEp, echo.Port));
        Assert.Contains($"127.0.0.1.{serverEp.Port}", dante.Log);
    }

    [Theory]
    [InlineData("socks5://127.0.0.1")]
    [InlineData("ftp://127.0.0.1:21")]
    public async Task A_bad_PT2_proxy_key_is_a_config_error_naming_proxy(string proxy)
    {
        await using var p = PtProcess.StartPthost($$"""{"role":"client","transports":["plain"],"proxy":"{{proxy}}"}""");
        Assert.Equal(78, await p.WaitForExitAsync());
        var line = Assert.Single(p.StdoutLines);
        Assert.StartsWith("ENV-ERROR config key 'proxy': ", line);
    }

    [Fact]
    public async Task Microsocks_credentials_from_TOR_PT_PROXY_are_used_and_wrong_ones_fail_the_session_with_02()
    {
        await using var echo = new EchoServer();
        var (server, serverEp) = await StartPlainServerAsync();
        await using var _ = server;
        await using var proxy = await DebianProxy.MicrosocksAsync("127.0.0.3", "tor", "test1234");

        await using (var good = PtProcess.Start(PtHostExecutable.Path, [], ClientEnv($"socks5://tor:test1234@{proxy.EndPoint}")))
            Assert.Equal(0, await SessionAsync(await StartClientAsync(good), serverEp, echo.Port));

        await using var wrong = PtProcess.Start(PtHostExecutable.Path, [], ClientEnv($"socks5://tor:wrong@{proxy.EndPoint}"));
        var socksEp = await StartClientAsync(wrong);
        Assert.Equal(0x02, await SessionAsync(socksEp, serverEp, echo.Port));
        // The log line may reach stderr after the reply: wait for it (bounded).
        await wrong.WaitForStderrAsync("rejected the username/password");
        Assert.Equal(1, echo.Accepted); // only the good client's session reached the far end
    }

    [Fact]
    public async Task Tinyproxy_as_an_http_TOR_PT_PROXY_carries_the_session()
    {
        await using var echo = new EchoServer();
        var (server, serverEp) = await StartPlainServerAsync();
        await using var _ = server;
        await using var proxy = await DebianProxy.TinyproxyAsync("127.0.0.4", "alice", "s3cret");
        await using var client = PtProcess.Start(PtHostExecutable.Path, [], ClientEnv($"http://alice:s3cret@{proxy.EndPoint}"));
        Assert.Equal(0, await SessionAsync(await StartClientAsync(client), serverEp, echo.Port));
        Assert.Contains($"CONNECT 127.0.0.1:{serverEp.Port} HTTP/1.1", proxy.Log);
    }

    [Theory]
    [InlineData("socks5://tor@127.0.0.1:1080", "PROXY-ERROR socks5 proxy credentials need a password as well as a user name (user:pass@)")]
    [InlineData("socks4a://u:p@127.0.0.1:1080", "PROXY-ERROR socks4a proxy takes a user id only, not a password")]
    [InlineData("socks5://proxy.example:1080", "PROXY-ERROR proxy host \"proxy.example\" is not an IP address (a host name is not allowed)")]
    [InlineData("https://127.0.0.1:443", "PROXY-ERROR proxy URI scheme \"https\" is not supported (supported: socks5, socks4a, http)")]
    public async Task A_bad_TOR_PT_PROXY_is_the_exact_PROXY_ERROR_line_and_exit_78(string proxy, string line)
    {
        await using var p = PtProcess.Start(PtHostExecutable.Path, [], ClientEnv(proxy));
        Assert.Equal(78, await p.WaitForExitAsync());
        Assert.Equal(["VERSION 1", line], p.StdoutLines);
    }
}
