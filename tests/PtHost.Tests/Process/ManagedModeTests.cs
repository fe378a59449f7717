using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;

namespace PtHost.Tests.Process;

/// <summary>
/// PT 1.0 managed mode (spec/ipc.md §10) driven the way tor drives it: environment in, pt-spec lines
/// out, exit codes. The real tor runs in <see cref="TorTests"/>.
/// </summary>
[Collection("process")]
public class ManagedModeTests
{
    private static readonly string State = Path.Combine(Path.GetTempPath(), "pthost-pt1-state-" + Environment.ProcessId) + "/";

    public static Dictionary<string, string> ClientEnv(params (string, string)[] extra)
    {
        var env = new Dictionary<string, string>
        {
            ["TOR_PT_MANAGED_TRANSPORT_VER"] = "1",
            ["TOR_PT_STATE_LOCATION"] = State,
            ["TOR_PT_CLIENT_TRANSPORTS"] = "plain",
            ["TOR_PT_EXIT_ON_STDIN_CLOSE"] = "1",
        };
        foreach (var (k, v) in extra) env[k] = v;
        return env;
    }

    public static Dictionary<string, string> ServerEnv(params (string, string)[] extra)
    {
        var env = new Dictionary<string, string>
        {
            ["TOR_PT_MANAGED_TRANSPORT_VER"] = "1",
            ["TOR_PT_STATE_LOCATION"] = State,
            ["TOR_PT_SERVER_TRANSPORTS"] = "plain",
            ["TOR_PT_SERVER_BINDADDR"] = "plain-127.0.0.1:0",
            ["TOR_PT_ORPORT"] = "127.0.0.1:9",
            ["TOR_PT_EXIT_ON_STDIN_CLOSE"] = "1",
        };
        foreach (var (k, v) in extra) env[k] = v;
        return env;
    }

    private static PtProcess Start(Dictionary<string, string> env) => PtProcess.Start(PtHostExecutable.Path, [], env);

    public static TheoryData<string, string, string, string[]> EnvironmentErrors => new()
    {
        { "client", "TOR_PT_MANAGED_TRANSPORT_VER", "2", ["VERSION-ERROR no-version"] },
        { "client", "TOR_PT_STATE_LOCATION", "", ["ENV-ERROR TOR_PT_STATE_LOCATION \"\" is not an absolute path"] },
        { "client", "TOR_PT_STATE_LOCATION", "state/here", ["ENV-ERROR TOR_PT_STATE_LOCATION \"state/here\" is not an absolute path"] },
        { "client", "TOR_PT_OUTBOUND_BIND_ADDRESS_V4", "127.1", ["ENV-ERROR TOR_PT_OUTBOUND_BIND_ADDRESS_V4=\"127.1\" is not an IPv4 address"] },
        { "server", "TOR_PT_SERVER_BINDADDR", "plain-127.0.0.1", ["ENV-ERROR TOR_PT_SERVER_BINDADDR entry \"plain-127.0.0.1\": \"127.0.0.1\" is not ip:port"] },
        { "server", "TOR_PT_SERVER_BINDADDR", "plain:127.0.0.1:80", ["ENV-ERROR TOR_PT_SERVER_BINDADDR entry \"plain:127.0.0.1:80\" is not name-ip:port"] },
        { "server", "TOR_PT_ORPORT", "nowhere", ["ENV-ERROR TOR_PT_ORPORT=\"nowhere\" is not ip:port"] },
        { "server", "TOR_PT_EXTENDED_SERVER_PORT", "127.0.0.1:4200", ["ENV-ERROR TOR_PT_EXTENDED_SERVER_PORT is set but TOR_PT_AUTH_COOKIE_FILE is not"] },
        { "client", "PTHOST_METRICS", "localhost:9101", ["ENV-ERROR PTHOST_METRICS=\"localhost:9101\" is not ip:port"] },
        { "server", "PTHOST_INSTANCE", "two words", ["ENV-ERROR PTHOST_INSTANCE=\"two words\" is not a name (1 to 64 of A-Z a-z 0-9 . _ -)"] },
    };

    [Theory]
    [MemberData(nameof(EnvironmentErrors))]
    public async Task Environment_errors_print_their_pt_spec_line_and_exit_78(string role, string variable, string value, string[] expected)
    {
        var env = role == "client" ? ClientEnv((variable, value)) : ServerEnv((variable, value));
        await using var p = Start(env);
        Assert.Equal(78, await p.WaitForExitAsync());
        Assert.Equal(expected, p.StdoutLines);
    }

    [Fact]
    public async Task A_missing_state_location_is_ENV_ERROR_with_pt_spec_words()
    {
        var env = ClientEnv();
        env.Remove("TOR_PT_STATE_LOCATION");
        await using var p = PtProcess.Start("/usr/bin/env", ["-u", "TOR_PT_STATE_LOCATION", PtHostExecutable.Path], env);
        Assert.Equal(78, await p.WaitForExitAsync());
        Assert.Equal(["ENV-ERROR No TOR_PT_STATE_LOCATION environment variable."], p.StdoutLines);
    }

    [Theory]
    [InlineData("socks9://127.0.0.1:1080")]
    [InlineData("socks5://127.0.0.1")]
    [InlineData("not a uri")]
    public async Task A_bad_proxy_URI_is_VERSION_then_PROXY_ERROR_and_exit_78(string proxy)
    {
        await using var p = Start(ClientEnv(("TOR_PT_PROXY", proxy)));
        Assert.Equal(78, await p.WaitForExitAsync());
        var lines = p.StdoutLines;
        Assert.Equal(2, lines.Count);
        Assert.Equal("VERSION 1", lines[0]);
        Assert.StartsWith("PROXY-ERROR ", lines[1]);
    }

    [Fact]
    public async Task Client_lines_follow_pt_spec_and_unknown_transports_are_ignored_silently()
    {
        await using var p = Start(ClientEnv(("TOR_PT_CLIENT_TRANSPORTS", "obfs4,plain,meek_lite,zephyr,jet")));
        var lines = await p.ReadUntilDoneAsync();
        Assert.Equal("VERSION 1", lines[0]);
        Assert.StartsWith("STATUS TYPE=version IMPLEMENTATION=pthost VERSION=", lines[1]);
        Assert.Matches(@"^CMETHOD plain socks5 127\.0\.0\.1:\d+$", lines[2]);
        // zephyr and jet signal through the rendezvous a bridge line names (spec/rendezvous.md §7.4): their SOCKS
        // front ends open; a connection whose bridge line names none is refused, saying why (RendezvousTorTests).
        Assert.Contains(lines, l => l.StartsWith("CMETHOD zephyr socks5 ", StringComparison.Ordinal));
        Assert.Contains(lines, l => l.StartsWith("CMETHOD jet socks5 ", StringComparison.Ordinal));
        Assert.DoesNotContain(lines, l => l.Contains("obfs4") || l.Contains("meek_lite"));
        Assert.Equal("CMETHODS DONE", lines[^1]);
        p.CloseStdin();
        Assert.Equal(0, await p.WaitForExitAsync());
        p.AssertOnlyProtocolLinesOnStdout();
        Assert.DoesNotContain(p.StdoutLines, l => l.StartsWith("CMESSAGE", StringComparison.Ordinal));
    }

    [Fact]
    public async Task Server_prints_SMETHOD_at_its_bind_address()
    {
        // tor names the port: a preset candidate, and a fresh one if another program holds it (SMETHOD-ERROR).
        int port = 0;
        List<string> lines = [];
        await using var p = await PresetPort.StartAsync(async candidate =>
        {
            var started = Start(ServerEnv(("TOR_PT_SERVER_BINDADDR", $"plain-127.0.0.1:{candidate}")));
            (port, lines) = (candidate, await started.ReadUntilDoneAsync());
            if (!lines.Any(l => l.StartsWith("SMETHOD-ERROR ", StringComparison.Ordinal))) return started;
            await started.DisposeAsync();
            return null;
        }, "pthost on the port of TOR_PT_SERVER_BINDADDR");
        Assert.Equal(["VERSION 1", lines[1], $"SMETHOD plain 127.0.0.1:{port}", "SMETHODS DONE"], lines);
        Assert.StartsWith("STATUS TYPE=version", lines[1]);
    }

    [Fact]
    public async Task Without_an_ExtORPort_sessions_go_to_TOR_PT_ORPORT()
    {
        await using var echo = new EchoServer();
        await using var server = Start(ServerEnv(("TOR_PT_ORPORT", $"127.0.0.1:{echo.Port}"), ("TOR_PT_EXTENDED_SERVER_PORT", "")));
        var smethod = (await server.ReadUntilDoneAsync()).Single(l => l.StartsWith("SMETHOD plain", StringComparison.Ordinal));
        var serverEp = IPEndPoint.Parse(smethod.Split(' ')[2]);
        await using var client = Start(ClientEnv());
        var socksEp = IPEndPoint.Parse((await client.ReadUntilDoneAsync()).Single(l => l.StartsWith("CMETHOD plain", StringComparison.Ordinal)).Split(' ')[3]);
        await using var socks = await SocksClient.ConnectAsync(socksEp);
        // As tor does for a bridge line without arguments: no authentication, CONNECT to the bridge.
        await socks.SendAsync([.. SocksClient.Greeting(0x00), .. SocksClient.ConnectIPv4(serverEp.Address, serverEp.Port), .. "OR cells"u8.ToArray()]);
        Assert.Equal([5, 0], await socks.ReadExactlyAsync(2));
        Assert.Equal(0x00, await socks.ReadReplyAsync());
        Assert.Equal("OR cells"u8.ToArray(), await socks.ReadExactlyAsync(8));
        Assert.Equal(1, echo.Accepted);
    }

    /// <summary>
    /// spec/ipc.md §10.2, §4.12: PTHOST_METRICS and PTHOST_INSTANCE turn the metrics endpoint on under tor, which can only
    /// pass environment variables; the endpoint counts the sessions tor's SOCKS connections make.
    /// </summary>
    [Fact]
    public async Task PTHOST_METRICS_serves_the_sessions_of_a_managed_client_and_server()
    {
        await using var echo = new EchoServer();
        await using var server = Start(ServerEnv(("TOR_PT_ORPORT", $"127.0.0.1:{echo.Port}"), ("PTHOST_METRICS", "127.0.0.1:0"), ("PTHOST_INSTANCE", "bridge-1")));
        var serverEp = IPEndPoint.Parse((await server.ReadUntilDoneAsync()).Single(l => l.StartsWith("SMETHOD plain", StringComparison.Ordinal)).Split(' ')[2]);
        string serverMetrics = (await server.WaitForLineAsync("STATUS TYPE=metrics ADDRESS="))["STATUS TYPE=metrics ADDRESS=".Length..];
        await using var client = Start(ClientEnv(("PTHOST_METRICS", "127.0.0.1:0")));
        var socksEp = IPEndPoint.Parse((await client.ReadUntilDoneAsync()).Single(l => l.StartsWith("CMETHOD plain", StringComparison.Ordinal)).Split(' ')[3]);
        string clientMetrics = (await client.WaitForLineAsync("STATUS TYPE=metrics ADDRESS="))["STATUS TYPE=metrics ADDRESS=".Length..];
        for (int i = 0; i < 3; i++)
        {
            await using var socks = await SocksClient.ConnectAsync(socksEp);
            await socks.SendAsync([.. SocksClient.Greeting(0x00), .. SocksClient.ConnectIPv4(serverEp.Address, serverEp.Port), .. "OR cells"u8.ToArray()]);
            Assert.Equal([5, 0], await socks.ReadExactlyAsync(2));
            Assert.Equal(0x00, await socks.ReadReplyAsync());
            Assert.Equal("OR cells"u8.ToArray(), await socks.ReadExactlyAsync(8));
        }
        using var http = new HttpClient();
        await Eventually.TrueAsync(async () => (await http.GetStringAsync($"http://{clientMetrics}/metrics")).Contains("pthost_sessions_open{transport=\"plain\",role=\"client\"} 0\n", StringComparison.Ordinal), "client sessions closed");
        string c = await http.GetStringAsync($"http://{clientMetrics}/metrics");
        Assert.Contains("pthost_instance_info{id=\"pthost-", c, StringComparison.Ordinal); // the default id
        Assert.Contains("pthost_sessions_opened_total{transport=\"plain\",role=\"client\"} 3\n", c, StringComparison.Ordinal);
        Assert.Contains("pthost_bytes_total{transport=\"plain\",role=\"client\",direction=\"in\"} 24\n", c, StringComparison.Ordinal);
        string s = await http.GetStringAsync($"http://{serverMetrics}/metrics");
        Assert.Contains("pthost_instance_info{id=\"bridge-1\",process=\"server\",", s, StringComparison.Ordinal);
        Assert.Contains("pthost_sessions_opened_total{transport=\"plain\",role=\"server\"} 3\n", s, StringComparison.Ordinal);
    }

    [Fact]
    public async Task SOCKS4a_with_PT_arguments_in_USERID_reaches_the_server()
    {
        // curl speaks SOCKS4a to the PT 1.0 client; USERID carries destination=… (pt-spec §3.5),
        // which the plain server (free, allow-listed) follows to the HTTP server.
        byte[] body = RandomNumberGenerator.GetBytes(300_000);
        await using var http = new HttpFileServer(body);
        await using var server = PtProcess.StartPthost($$"""{"role":"server","transports":["plain"],"allow":["127.0.0.1"]}""");
        var serverLines = await server.ReadUntilDoneAsync();
        string serverAddress = serverLines.Single(l => l.StartsWith("SMETHOD plain", StringComparison.Ordinal)).Split(' ')[2];
        await using var client = Start(ClientEnv());
        var lines = await client.ReadUntilDoneAsync();
        string socks = lines.Single(l => l.StartsWith("CMETHOD plain", StringComparison.Ordinal)).Split(' ')[3];
        string file = Path.Combine(Path.GetTempPath(), $"pthost-socks4a-{Guid.NewGuid():N}");
        try
        {
            var (exit, _, err) = await PtProcess.RunAsync("/usr/bin/curl", "-sS", "-o", file,
                "-x", $"socks4a://destination=127.0.0.1%3A{http.Port}@{socks}", $"http://{serverAddress}/file");
            Assert.True(exit == 0, $"curl exit {exit}: {err}\nclient stderr:\n{client.Stderr}\nserver stderr:\n{server.Stderr}");
            Assert.Equal(SHA256.HashData(body), SHA256.HashData(await File.ReadAllBytesAsync(file)));
        }
        finally { File.Delete(file); }
    }

    [Fact]
    public async Task A_zephyr_bridge_line_without_a_rendezvous_is_refused_saying_so_and_a_bad_one_names_its_key()
    {
        // spec/rendezvous.md §7.4: zephyr needs a route; the SOCKS5 username carries the bridge line's arguments (§5.4).
        await using var client = Start(ClientEnv(("TOR_PT_CLIENT_TRANSPORTS", "zephyr")));
        var lines = await client.ReadUntilDoneAsync();
        var socks = IPEndPoint.Parse(lines.Single(l => l.StartsWith("CMETHOD zephyr", StringComparison.Ordinal)).Split(' ')[3]);
        async Task<byte> ReplyToAsync(string args)
        {
            await using var s = await SocksClient.ConnectAsync(socks);
            await s.SendAsync(SocksClient.Greeting(0x02));
            Assert.Equal(new byte[] { 5, 2 }, await s.ReadExactlyAsync(2));
            await s.SendAsync(SocksClient.UserPass(args, "\0"));
            Assert.Equal(new byte[] { 1, 0 }, await s.ReadExactlyAsync(2));
            await s.SendAsync(SocksClient.ConnectIPv4(IPAddress.Loopback, 9));
            return await s.ReadReplyAsync();
        }
        Assert.NotEqual(0, await ReplyToAsync("relay=127.0.0.1:7600"));
        await client.WaitForStderrAsync("setting 'rendezvous' is required");
        Assert.NotEqual(0, await ReplyToAsync("rendezvous=http://127.0.0.1:7520;secret=AAAA"));
        await client.WaitForStderrAsync("setting 'secret' must be 16 to 64 bytes");
        client.CloseStdin();
        Assert.Equal(0, await client.WaitForExitAsync());
    }

    [Fact]
    public async Task SOCKS4_requests_that_cannot_be_served_get_reply_91()
    {
        await using var client = Start(ClientEnv());
        var lines = await client.ReadUntilDoneAsync();
        var ep = IPEndPoint.Parse(lines.Single(l => l.StartsWith("CMETHOD plain", StringComparison.Ordinal)).Split(' ')[3]);
        using var refusing = new RefusingPort();
        int closed = refusing.Port;
        using var tcp = new TcpClient();
        await tcp.ConnectAsync(ep);
        var s = tcp.GetStream();
        await s.WriteAsync((byte[])[4, 1, (byte)(closed >> 8), (byte)closed, 127, 0, 0, 1, 0]);
        var reply = new byte[8];
        await s.ReadExactlyAsync(reply).AsTask().WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Equal(0, reply[0]);
        Assert.Equal(0x5B, reply[1]);
        Assert.Equal(0, await s.ReadAsync(new byte[1]).AsTask().WaitAsync(TimeSpan.FromSeconds(10)));
    }

    [Fact]
    public async Task First_SIGINT_drains_open_sessions_and_the_second_ends_them()
    {
        await using var echo = new EchoServer();
        await using var serverProcess = PtProcess.StartPthost($$"""{"role":"server","transports":["plain"],"target":"127.0.0.1:{{echo.Port}}"}""");
        string serverAddress = (await serverProcess.ReadUntilDoneAsync()).Single(l => l.StartsWith("SMETHOD plain", StringComparison.Ordinal)).Split(' ')[2];
        await using var client = Start(ClientEnv(("TOR_PT_EXIT_ON_STDIN_CLOSE", "0")));
        var ep = IPEndPoint.Parse((await client.ReadUntilDoneAsync()).Single(l => l.StartsWith("CMETHOD plain", StringComparison.Ordinal)).Split(' ')[3]);
        var server = IPEndPoint.Parse(serverAddress);
        await using var socks = await SocksClient.ConnectAsync(ep);
        await socks.SendAsync([.. SocksClient.Greeting(0x00), .. SocksClient.ConnectIPv4(server.Address, server.Port)]);
        await socks.ReadExactlyAsync(2);
        Assert.Equal(0x00, await socks.ReadReplyAsync());
        await socks.Stream.WriteAsync("before"u8.ToArray());
        Assert.Equal("before", await ReadTextAsync(socks.Stream, 6));

        client.Signal(2); // SIGINT: no new sessions, this one goes on
        await client.WaitForLineAsync("LOG SEVERITY=notice MESSAGE=\"shutting down");
        await socks.Stream.WriteAsync("during"u8.ToArray());
        Assert.Equal("during", await ReadTextAsync(socks.Stream, 6));

        client.Signal(2); // the second SIGINT ends it
        Assert.Equal(0, await client.WaitForExitAsync());
        Assert.Contains("second SIGINT", client.Stderr);
        // spec/ipc.md §7/§9: a session aborted at shutdown is reset, not ended cleanly.
        var e = await Assert.ThrowsAsync<IOException>(() => socks.Stream.ReadAsync(new byte[16]).AsTask().WaitAsync(TimeSpan.FromSeconds(10)));
        Assert.Equal(System.Net.Sockets.SocketError.ConnectionReset, Assert.IsType<System.Net.Sockets.SocketException>(e.InnerException).SocketErrorCode);
    }

    [Fact]
    public async Task The_process_ends_when_its_parent_goes_away()
    {
        // A shell starts pthost in the background (stdin from /dev/null: not a stdin close, since
        // TOR_PT_EXIT_ON_STDIN_CLOSE=0), waits until it is up (CMETHODS DONE: it has noted its parent),
        // and exits; pthost is re-parented and must notice.
        var env = ClientEnv(("TOR_PT_EXIT_ON_STDIN_CLOSE", "0"));
        env["PTHOST"] = PtHostExecutable.Path;
        await using var shell = PtProcess.Start("/bin/sh", ["-c",
            "out=$(mktemp); \"$PTHOST\" >\"$out\" 2>/dev/null & echo $!; " +
            "until grep -q '^CMETHODS DONE' \"$out\"; do sleep 0.05; done; rm -f \"$out\""], env);
        int pid = int.Parse(await shell.ReadLineAsync());
        Assert.Equal(0, await shell.WaitForExitAsync());
        Assert.True(await Eventually.HoldsWithinAsync(() => !IsRunning(pid), TimeSpan.FromSeconds(30)), $"pthost {pid} still runs 30 s after its parent exited");
    }

    private static bool IsRunning(int pid)
    {
        try { return !File.ReadAllText($"/proc/{pid}/stat").Split(' ')[2].Equals("Z", StringComparison.Ordinal); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return false; }
    }

    private static async Task<string> ReadTextAsync(Stream s, int n)
    {
        var buffer = new byte[n];
        await s.ReadExactlyAsync(buffer).AsTask().WaitAsync(TimeSpan.FromSeconds(20));
        return System.Text.Encoding.ASCII.GetString(buffer);
    }
}
