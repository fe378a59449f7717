using System.Net;
using System.Security.Cryptography;
using System.Text;
using Newtonsoft.Json.Linq;
using Xunit.Abstractions;

namespace PtHost.Tests.Process;

/// <summary>
/// The external transport (spec/external.md §4) with Debian's obfs4proxy on both ends: a pthost
/// PT 2.0 server and client each run obfs4proxy as a PT 1.0 child; the obfs4 cert the server's
/// child reports in SMETHOD ARGS goes to the client as per-connection settings.
/// </summary>
[Collection("process")]
public class ExternalTransportTests(ITestOutputHelper output)
{
    private const string Name = "external_obfs4";
    private static string Obfs4proxy => DebianPrograms.Require("/usr/bin/obfs4proxy");
    private static string Curl => DebianPrograms.Curl;

    private static JObject ServerConfig(int target, JObject? extra = null)
    {
        var options = new JObject { ["exec"] = Obfs4proxy, ["serverOptions"] = new JObject { ["iat-mode"] = "0" } };
        if (extra is not null) options.Merge(extra);
        var c = PtChain.BoundServer($"127.0.0.1:{target}", Name);
        c["options"] = new JObject { [Name] = options };
        return c;
    }

    private static JObject ClientConfig(IPEndPoint server) => ClientConfig(server, withServerAddress: true);

    private static JObject ClientConfig(IPEndPoint server, bool withServerAddress)
    {
        var options = new JObject { ["exec"] = Obfs4proxy };
        if (withServerAddress) options["serverAddress"] = server.ToString();
        return new()
        {
            ["role"] = "client",
            ["transports"] = new JArray(Name),
            ["options"] = new JObject { [Name] = options },
            ["exit-on-stdin-close"] = true,
        };
    }

    private static string Cert(PtChain chain)
    {
        string smethod = chain.ServerStartup.Single(l => l.StartsWith("SMETHOD ", StringComparison.Ordinal));
        var m = System.Text.RegularExpressions.Regex.Match(smethod, @"ARGS:cert=([^,]+),iat-mode=0$");
        Assert.True(m.Success, $"SMETHOD line without the child's ARGS: {smethod}");
        return m.Groups[1].Value;
    }

    /// <summary>GET through the SOCKS5 front end with the settings as a JSON block (method 09); returns the body.</summary>
    private static Task<(byte Reply, byte[] Body)> GetWithJsonSettingsAsync(IPEndPoint socksEp, JObject settings, int port) =>
        GetWithJsonSettingsAsync(socksEp, settings, new IPEndPoint(IPAddress.Loopback, port));

    private static async Task<(byte Reply, byte[] Body)> GetWithJsonSettingsAsync(IPEndPoint socksEp, JObject settings, IPEndPoint destination)
    {
        await using var socks = await SocksClient.ConnectAsync(socksEp);
        await socks.SendAsync([.. SocksClient.Greeting(0x09), .. SocksClient.SettingsBlock(settings.ToString(Newtonsoft.Json.Formatting.None)),
            .. SocksClient.ConnectIPv4(destination.Address, destination.Port)]);
        Assert.Equal([5, 9], await socks.ReadExactlyAsync(2));
        byte reply = await socks.ReadReplyAsync();
        if (reply != 0) return (reply, []);
        await socks.SendAsync(Encoding.ASCII.GetBytes("GET /file.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
        var all = await socks.ReadToEndAsync(TimeSpan.FromSeconds(60));
        int split = all.AsSpan().IndexOf("\r\n\r\n"u8);
        Assert.True(split > 0, "no HTTP header came back");
        Assert.StartsWith("HTTP/1.1 200", Encoding.ASCII.GetString(all, 0, split));
        return (0, all[(split + 4)..]);
    }

    private async Task<int> CurlAsync(PtChain chain, string args, int port, string file)
    {
        // PT 1.0 arguments in the RFC 1929 user name, percent-encoded for the URL (curl decodes them).
        var (exit, _, err) = await PtProcess.RunAsync(Curl, "-sS", "--max-time", "60", "-x", $"socks5h://{Uri.EscapeDataString(args)}@{chain.SocksEndPoint}",
            "-o", file, $"http://localhost:{port}/file.bin");
        output.WriteLine($"curl exit {exit}: {err}");
        return exit;
    }

    /// <summary>The children of <paramref name="pid"/> (every thread's /proc children list).</summary>
    internal static List<int> ChildPids(int pid)
    {
        var result = new List<int>();
        foreach (var task in Directory.EnumerateDirectories($"/proc/{pid}/task"))
        {
            try
            {
                foreach (var p in File.ReadAllText(Path.Combine(task, "children")).Split(' ', StringSplitOptions.RemoveEmptyEntries))
                    result.Add(int.Parse(p));
            }
            catch (IOException) { }
        }
        return result;
    }

    private static string Comm(int pid) => File.ReadAllText($"/proc/{pid}/comm").Trim();

    [Fact]
    public async Task Obfs4proxy_on_both_ends_carries_a_file_intact_with_the_cert_as_JSON_settings_and_with_curl()
    {
        var body = RandomNumberGenerator.GetBytes(4 * 1024 * 1024);
        await using var http = new HttpFileServer(body);
        await using var chain = await PtChain.StartAsync(ServerConfig(http.Port), ClientConfig);
        string cert = Cert(chain);
        Assert.Contains(chain.ClientStartup, l => l.StartsWith($"CMETHOD {Name} socks5 127.0.0.1:", StringComparison.Ordinal));

        var (reply, got) = await GetWithJsonSettingsAsync(chain.SocksEndPoint, new JObject { ["cert"] = cert, ["iat-mode"] = 0 }, http.Port);
        Assert.Equal(0, reply);
        Assert.Equal(SHA256.HashData(body), SHA256.HashData(got));

        string file = Path.Combine(Path.GetTempPath(), $"pthost-obfs4-{Guid.NewGuid():N}");
        try
        {
            Assert.Equal(0, await CurlAsync(chain, $"cert={cert};iat-mode=0", http.Port, file));
            Assert.Equal(SHA256.HashData(body), SHA256.HashData(await File.ReadAllBytesAsync(file)));
        }
        finally { File.Delete(file); }

        int serverChild = Assert.Single(ChildPids(chain.Server.Pid), p => Comm(p) == "obfs4proxy");
        int clientChild = Assert.Single(ChildPids(chain.Client.Pid), p => Comm(p) == "obfs4proxy");
        var (s, c) = await chain.StopAsync();
        Assert.Equal(0, s);
        Assert.Equal(0, c);
        Assert.False(Directory.Exists($"/proc/{serverChild}"), "the server's obfs4proxy outlived pthost");
        Assert.False(Directory.Exists($"/proc/{clientChild}"), "the client's obfs4proxy outlived pthost");
        chain.Server.AssertOnlyProtocolLinesOnStdout();
        chain.Client.AssertOnlyProtocolLinesOnStdout();
    }

    [Fact]
    public async Task Without_serverAddress_the_SOCKS_destination_is_the_obfs4_server_as_in_a_Tor_bridge_line()
    {
        var body = RandomNumberGenerator.GetBytes(256 * 1024);
        await using var http = new HttpFileServer(body);
        await using var chain = await PtChain.StartAsync(ServerConfig(http.Port), ep => ClientConfig(ep, withServerAddress: false));
        var (reply, got) = await GetWithJsonSettingsAsync(chain.SocksEndPoint, new JObject { ["cert"] = Cert(chain), ["iat-mode"] = "0" }, chain.ServerEndPoint);
        Assert.Equal(0, reply);
        Assert.Equal(SHA256.HashData(body), SHA256.HashData(got));
        // An unspecified destination names no server: 04.
        var (none, _) = await GetWithJsonSettingsAsync(chain.SocksEndPoint, new JObject { ["cert"] = Cert(chain) }, new IPEndPoint(IPAddress.Any, 0));
        Assert.Equal(0x04, none);
    }

    [Fact]
    public async Task A_wrong_cert_fails_that_session_cleanly_and_the_next_one_works()
    {
        var body = RandomNumberGenerator.GetBytes(64 * 1024);
        await using var http = new HttpFileServer(body);
        await using var chain = await PtChain.StartAsync(ServerConfig(http.Port), ClientConfig);
        string cert = Cert(chain);
        // A well-formed cert of other keys: obfs4's handshake fails (the server never answers it).
        string wrong = Convert.ToBase64String(RandomNumberGenerator.GetBytes(52)).TrimEnd('=');
        var (reply, _) = await GetWithJsonSettingsAsync(chain.SocksEndPoint, new JObject { ["cert"] = wrong, ["iat-mode"] = "0" }, http.Port);
        Assert.NotEqual(0, reply);
        output.WriteLine($"wrong cert: reply {reply:x2}");
        // A setting obfs4 cannot parse at all is refused by the child at once.
        var (bad, _) = await GetWithJsonSettingsAsync(chain.SocksEndPoint, new JObject { ["cert"] = "not-a-cert", ["iat-mode"] = "0" }, http.Port);
        Assert.NotEqual(0, bad);
        // Settings that PT 1.0 cannot carry are refused by pthost with 13.
        var (nested, _) = await GetWithJsonSettingsAsync(chain.SocksEndPoint, new JObject { ["cert"] = new JObject() }, http.Port);
        Assert.Equal(0x13, nested);

        var (ok, got) = await GetWithJsonSettingsAsync(chain.SocksEndPoint, new JObject { ["cert"] = cert, ["iat-mode"] = "0" }, http.Port);
        Assert.Equal(0, ok);
        Assert.Equal(body, got);
        Assert.Contains(chain.Client.StdoutLines, l => l.StartsWith("CMETHOD ", StringComparison.Ordinal));
    }

    [Fact]
    public async Task A_child_that_dies_is_restarted_and_sessions_work_again_on_both_ends()
    {
        var body = RandomNumberGenerator.GetBytes(256 * 1024);
        await using var http = new HttpFileServer(body);
        await using var chain = await PtChain.StartAsync(ServerConfig(http.Port), ClientConfig);
        string cert = Cert(chain);
        var settings = new JObject { ["cert"] = cert, ["iat-mode"] = "0" };
        Assert.Equal(body, (await GetWithJsonSettingsAsync(chain.SocksEndPoint, settings, http.Port)).Body);

        foreach (var (process, role) in new[] { (chain.Client, "client"), (chain.Server, "server") })
        {
            int old = Assert.Single(ChildPids(process.Pid), p => Comm(p) == "obfs4proxy");
            Assert.Equal(0, kill(old, 9));
            await process.WaitForStderrAsync($"{Name}: /usr/bin/obfs4proxy (pid {old}) exited with code", within: TimeSpan.FromSeconds(60)); // the death reported
            await process.WaitForStderrAsync($"{Name}: /usr/bin/obfs4proxy restarted", within: TimeSpan.FromSeconds(60));
            int now = Assert.Single(ChildPids(process.Pid), p => Comm(p) == "obfs4proxy");
            Assert.NotEqual(old, now);
            // The server's child is started again on the address and with the keys of the SMETHOD line.
            var (reply, got) = await GetWithJsonSettingsAsync(chain.SocksEndPoint, settings, http.Port);
            Assert.True(reply == 0, $"after the {role} child's restart: reply {reply:x2}\nclient:\n{chain.Client.Stderr}\nserver:\n{chain.Server.Stderr}");
            Assert.Equal(body, got);
        }
        Assert.DoesNotContain("different SMETHOD ARGS", chain.Server.Stderr);
        var (s, c) = await chain.StopAsync();
        Assert.Equal((0, 0), (s, c));
    }

    [Fact]
    public async Task The_hosts_upstream_proxy_is_passed_to_the_child_as_TOR_PT_PROXY_and_used_by_it()
    {
        // The client side runs in this process (the JSON option that sets the upstream proxy is the
        // launcher's business), with a ProxyDialer towards a real dante; obfs4proxy must go through it.
        var body = RandomNumberGenerator.GetBytes(64 * 1024);
        await using var http = new HttpFileServer(body);
        var server = PtProcess.StartPthost(ServerConfig(http.Port).ToString(Newtonsoft.Json.Formatting.None));
        await using var _ = server;
        var lines = await server.ReadUntilDoneAsync();
        string smethod = lines.Single(l => l.StartsWith("SMETHOD ", StringComparison.Ordinal));
        var serverEp = IPEndPoint.Parse(smethod.Split(' ')[2]);
        string cert = System.Text.RegularExpressions.Regex.Match(smethod, "cert=([^,]+)").Groups[1].Value;

        await using var dante = await DebianProxy.DanteAsync("127.0.0.2");
        string state = Directory.CreateTempSubdirectory("pthost-ext-").FullName;
        using var loggers = Microsoft.Extensions.Logging.LoggerFactory.Create(b => { });
        var dialer = PtHost.Net.ProxyDialer.Create(PtHost.Net.UpstreamProxy.Parse($"socks5://{dante.EndPoint}"));
        var context = new PtHost.Contract.TransportEnvironment(Name, new JObject { ["exec"] = Obfs4proxy }, state,
            Moq.Mock.Of<PtHost.Contract.ISignalChannel>(), dialer, loggers, new PtHost.Contract.TransportCounters());
        var transport = new PtHost.Transports.External.ExternalTransport(Name);
        await using var client = transport.CreateClientFactory(context);
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        await ((PtHost.Contract.IStartableClientFactory)client).StartAsync(cts.Token);
        var settings = client.ParseSettings(new PtHost.Contract.ConnectionSettings(new JObject { ["cert"] = cert, ["iat-mode"] = "0" }, PtHost.Contract.SettingsSource.Json));
        await using var stream = await client.ConnectAsync(new PtHost.Contract.ConnectRequest(new PtHost.Contract.Destination(serverEp), settings, 1), cts.Token);
        await stream.WriteAsync(Encoding.ASCII.GetBytes("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"), cts.Token);
        var all = new MemoryStream();
        await stream.CopyToAsync(all, cts.Token);
        var got = all.ToArray();
        int split = got.AsSpan().IndexOf("\r\n\r\n"u8);
        Assert.Equal(SHA256.HashData(body), SHA256.HashData(got[(split + 4)..]));
        // dante's log names the obfs4 server as the destination it connected to.
        Assert.Contains($"127.0.0.1.{serverEp.Port}", dante.Log);
    }

    [System.Runtime.InteropServices.DllImport("libc", SetLastError = true)]
    private static extern int kill(int pid, int sig);
}

/// <summary>
/// The external transport's handling of what a PT 1.0 program says, with small programs written by
/// the test (real processes, run by a real pthost): -ERROR lines, LOG forwarding, a program that
/// keeps dying, the environment it is given.
/// </summary>
[Collection("process")]
public class ExternalProgramTests
{
    private static async Task<string> ScriptAsync(string dir, string body)
    {
        string path = Path.Combine(dir, "pt.sh");
        await File.WriteAllTextAsync(path, "#!/bin/sh\n" + body + "\n");
        if (OperatingSystem.IsLinux()) File.SetUnixFileMode(path, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        return path;
    }

    private static string ClientJson(string exec, string dir, JObject? extra = null)
    {
        var options = new JObject { ["exec"] = exec, ["method"] = "fake", ["startTimeout"] = 20 };
        if (extra is not null) options.Merge(extra);
        return new JObject
        {
            ["role"] = "client",
            ["transports"] = new JArray("external"),
            ["state"] = dir,
            ["options"] = new JObject { ["external"] = options },
            ["exit-on-stdin-close"] = true,
        }.ToString(Newtonsoft.Json.Formatting.None);
    }

    [Fact]
    public async Task A_CMETHOD_ERROR_from_the_program_becomes_our_CMETHOD_ERROR_and_exit_69()
    {
        string dir = Directory.CreateTempSubdirectory("pthost-ext-").FullName;
        string exec = await ScriptAsync(dir, """
            echo 'VERSION 1'
            echo 'LOG SEVERITY=warning MESSAGE="no \"bridges\" here"'
            echo 'CMETHOD-ERROR fake this transport is broken'
            echo 'CMETHODS DONE'
            cat >/dev/null
            """);
        await using var p = PtProcess.StartPthost(ClientJson(exec, dir));
        var lines = await p.ReadUntilDoneAsync();
        Assert.Contains(lines, l => l.StartsWith("CMETHOD-ERROR external ", StringComparison.Ordinal) && l.EndsWith("CMETHOD-ERROR this transport is broken", StringComparison.Ordinal));
        Assert.Equal(69, await p.WaitForExitAsync());
        Assert.Contains("external: fake: no \"bridges\" here", p.Stderr); // the LOG line, unquoted, on our stderr
        p.AssertOnlyProtocolLinesOnStdout();
    }

    [Theory]
    [InlineData("echo 'VERSION-ERROR no-version'", "does not speak PT 1.0 (VERSION-ERROR no-version)")]
    [InlineData("echo 'ENV-ERROR no TOR_PT_STATE_LOCATION'", "ENV-ERROR no TOR_PT_STATE_LOCATION")]
    [InlineData("echo 'VERSION 1'; echo 'CMETHOD other socks5 127.0.0.1:9'; echo 'CMETHODS DONE'; cat >/dev/null", "did not offer the method \"fake\"")]
    [InlineData("echo 'VERSION 1'; exit 3", "exited (code 3) before its start-up lines were complete")]
    [InlineData("echo 'VERSION 1'; echo 'CMETHOD fake socks5 not-an-address'; cat >/dev/null", "malformed CMETHOD line")]
    public async Task A_program_that_fails_to_start_is_a_clean_CMETHOD_ERROR(string script, string message)
    {
        string dir = Directory.CreateTempSubdirectory("pthost-ext-").FullName;
        string exec = await ScriptAsync(dir, script);
        await using var p = PtProcess.StartPthost(ClientJson(exec, dir));
        var lines = await p.ReadUntilDoneAsync();
        Assert.Contains(lines, l => l.StartsWith("CMETHOD-ERROR external ", StringComparison.Ordinal) && l.Contains(message, StringComparison.Ordinal));
        Assert.Equal(69, await p.WaitForExitAsync());
    }

    [Fact]
    public async Task A_program_that_never_finishes_its_lines_times_out()
    {
        string dir = Directory.CreateTempSubdirectory("pthost-ext-").FullName;
        string exec = await ScriptAsync(dir, "echo 'VERSION 1'; cat >/dev/null");
        await using var p = PtProcess.StartPthost(ClientJson(exec, dir, new JObject { ["startTimeout"] = 1 }));
        var lines = await p.ReadUntilDoneAsync();
        Assert.Contains(lines, l => l.StartsWith("CMETHOD-ERROR external ", StringComparison.Ordinal) && l.Contains("within 1 s", StringComparison.Ordinal));
        Assert.Equal(69, await p.WaitForExitAsync());
    }

    [Fact]
    public async Task The_program_gets_the_PT1_client_environment_and_none_of_ours()
    {
        string dir = Directory.CreateTempSubdirectory("pthost-ext-").FullName;
        string exec = await ScriptAsync(dir, $"""
            env | grep '^TOR_PT_' | sort > {dir}/env.txt
            echo 'VERSION 1'
            echo 'CMETHOD fake socks5 127.0.0.1:9'
            echo 'CMETHODS DONE'
            cat >/dev/null
            """);
        var env = new Dictionary<string, string> { ["TOR_PT_SERVER_TRANSPORTS"] = "leak" };
        await using var p = PtProcess.Start(PtHostExecutable.Path, [ClientJson(exec, dir)], env);
        var lines = await p.ReadUntilDoneAsync();
        Assert.Contains(lines, l => l.StartsWith("CMETHOD external socks5 ", StringComparison.Ordinal));
        string seen = await File.ReadAllTextAsync(Path.Combine(dir, "env.txt"));
        Assert.Equal($"""
            TOR_PT_CLIENT_TRANSPORTS=fake
            TOR_PT_EXIT_ON_STDIN_CLOSE=1
            TOR_PT_MANAGED_TRANSPORT_VER=1
            TOR_PT_STATE_LOCATION={dir}/external/pt_state/

            """, seen);
        p.CloseStdin();
        Assert.Equal(0, await p.WaitForExitAsync());
    }

    [Fact]
    public async Task Server_role_gives_the_PT1_server_environment_and_passes_SMETHOD_ARGS_through_escaped()
    {
        string dir = Directory.CreateTempSubdirectory("pthost-ext-").FullName;
        await using var target = new EchoServer();
        // The program reports a listener of its own and ARGS whose values need escaping.
        string exec = await ScriptAsync(dir, $$"""
            env | grep '^TOR_PT_' | sort > {{dir}}/env.txt
            echo 'VERSION 1'
            printf '%s\n' 'SMETHOD fake 127.0.0.1:4711 ARGS:cert=a\,b\=c,iat-mode=0'
            echo 'SMETHODS DONE'
            cat >/dev/null
            """);
        var config = new JObject
        {
            ["role"] = "server",
            ["transports"] = new JArray("external_fake"),
            ["target"] = $"127.0.0.1:{target.Port}",
            ["bindaddr"] = new JObject { ["external_fake"] = "127.0.0.1:4711" },
            ["state"] = dir,
            ["options"] = new JObject { ["external_fake"] = new JObject { ["exec"] = exec, ["serverOptions"] = new JObject { ["a:b"] = "x;y=z\\" } } },
            ["exit-on-stdin-close"] = true,
        };
        await using var p = PtProcess.StartPthost(config.ToString(Newtonsoft.Json.Formatting.None));
        var lines = await p.ReadUntilDoneAsync();
        Assert.Contains(@"SMETHOD external_fake 127.0.0.1:4711 ARGS:cert=a\,b\=c,iat-mode=0", lines);
        var env = (await File.ReadAllLinesAsync(Path.Combine(dir, "env.txt"))).ToDictionary(l => l[..l.IndexOf('=')], l => l[(l.IndexOf('=') + 1)..]);
        Assert.Equal("1", env["TOR_PT_MANAGED_TRANSPORT_VER"]);
        Assert.Equal("fake", env["TOR_PT_SERVER_TRANSPORTS"]);
        Assert.Equal("fake-127.0.0.1:4711", env["TOR_PT_SERVER_BINDADDR"]);
        Assert.Equal("", env["TOR_PT_EXTENDED_SERVER_PORT"]);
        Assert.Equal(@"fake:a\:b=x\;y\=z\\", env["TOR_PT_SERVER_TRANSPORT_OPTIONS"]);
        Assert.Equal($"{dir}/external_fake/pt_state/", env["TOR_PT_STATE_LOCATION"]);
        Assert.Equal("1", env["TOR_PT_EXIT_ON_STDIN_CLOSE"]);
        Assert.False(env.ContainsKey("TOR_PT_CLIENT_TRANSPORTS"));

        // TOR_PT_ORPORT is pthost's own loopback port, which forwards to the target and counts the session.
        var orport = IPEndPoint.Parse(env["TOR_PT_ORPORT"]);
        Assert.Equal(IPAddress.Loopback, orport.Address);
        using (var c = new System.Net.Sockets.TcpClient())
        {
            await c.ConnectAsync(orport);
            var s = c.GetStream();
            await s.WriteAsync("hello"u8.ToArray());
            var back = new byte[5];
            using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(20));
            await s.ReadExactlyAsync(back, cts.Token);
            Assert.Equal("hello"u8.ToArray(), back);
        }
        p.CloseStdin();
        Assert.Equal(0, await p.WaitForExitAsync());
        Assert.Contains(p.StdoutLines, l => l.StartsWith("STATUS TRANSPORT=external_fake ", StringComparison.Ordinal) && l.Contains("OPENED=1", StringComparison.Ordinal));
    }

    [Fact]
    public async Task A_free_server_is_an_SMETHOD_ERROR_because_PT1_carries_no_destination()
    {
        string dir = Directory.CreateTempSubdirectory("pthost-ext-").FullName;
        string exec = await ScriptAsync(dir, "cat >/dev/null");
        var config = new JObject
        {
            ["role"] = "server",
            ["transports"] = new JArray("external_fake"),
            ["allow"] = new JArray("127.0.0.1"),
            ["state"] = dir,
            ["options"] = new JObject { ["external_fake"] = new JObject { ["exec"] = exec } },
        };
        await using var p = PtProcess.StartPthost(config.ToString(Newtonsoft.Json.Formatting.None));
        var lines = await p.ReadUntilDoneAsync();
        Assert.Contains(lines, l => l.StartsWith("SMETHOD-ERROR external_fake external_fake serves a bound server only", StringComparison.Ordinal));
        Assert.Equal(69, await p.WaitForExitAsync());
    }

    [Theory]
    [InlineData("trap 'echo TERM >> {dir}/signals; exit 0' TERM", false)]
    [InlineData("trap 'echo TERM >> {dir}/signals' TERM", true)]
    public async Task On_shutdown_a_program_that_ignores_stdin_close_gets_SIGTERM_and_then_SIGKILL(string trap, bool needsKill)
    {
        string dir = Directory.CreateTempSubdirectory("pthost-ext-").FullName;
        // Ignores stdin entirely; the second variant also survives SIGTERM.
        string exec = await ScriptAsync(dir, trap.Replace("{dir}", dir) + $"""

            echo $$ > {dir}/pid
            echo 'VERSION 1'
            echo 'CMETHOD fake socks5 127.0.0.1:9'
            echo 'CMETHODS DONE'
            while :; do sleep 0.2; done
            """);
        await using var p = PtProcess.StartPthost(ClientJson(exec, dir));
        await p.ReadUntilDoneAsync();
        int child = int.Parse((await File.ReadAllTextAsync(Path.Combine(dir, "pid"))).Trim());
        p.CloseStdin();
        Assert.Equal(0, await p.WaitForExitAsync(TimeSpan.FromSeconds(40)));
        Assert.False(Directory.Exists($"/proc/{child}") && !File.ReadAllText($"/proc/{child}/stat").Contains(") Z "), "the program outlived pthost");
        Assert.Equal("TERM", (await File.ReadAllTextAsync(Path.Combine(dir, "signals"))).Trim());
        Assert.Contains("still runs 3 s after stdin closed; sending SIGTERM", p.Stderr);
        Assert.Equal(needsKill, p.Stderr.Contains("ignored SIGTERM; killing it"));
    }

    /// <summary>
    /// A PT 1.0 client program in Debian's python3: offers socks4 or socks5, records what each session
    /// sent (user id or UNAME/PASSWD, destination) as one JSON line, answers success and echoes.
    /// </summary>
    private const string RecordingProgram = """
        import json, socket, struct, sys, threading
        proto, log = sys.argv[1], sys.argv[2]
        srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(16)
        print("VERSION 1"); print("CMETHOD fake %s 127.0.0.1:%d" % (proto, srv.getsockname()[1])); print("CMETHODS DONE"); sys.stdout.flush()
        def exact(c, n):
            b = b""
            while len(b) < n:
                d = c.recv(n - len(b))
                if not d: raise EOFError
                b += d
            return b
        def until0(c):
            b = b""
            while True:
                d = exact(c, 1)
                if d == b"\0": return b
                b += d
        def serve(c):
            rec = {}
            if proto == "socks4":
                _, _, port = struct.unpack(">BBH", exact(c, 4)); ip = exact(c, 4)
                rec["userid"] = until0(c).hex()
                rec["dest"] = (until0(c).decode() if ip[:3] == b"\0\0\0" else socket.inet_ntoa(ip)) + ":%d" % port
                c.sendall(b"\0\x5a" + b"\0" * 6)
            else:
                _, n = exact(c, 2); rec["methods"] = exact(c, n).hex()
                m = 2 if "02" in [rec["methods"][i:i+2] for i in range(0, len(rec["methods"]), 2)] else 0
                c.sendall(bytes([5, m]))
                if m == 2:
                    _, ul = exact(c, 2); rec["uname"] = exact(c, ul).hex(); pl = exact(c, 1)[0]; rec["passwd"] = exact(c, pl).hex()
                    c.sendall(b"\x01\x00")
                _, _, _, atyp = exact(c, 4)
                host = exact(c, exact(c, 1)[0]).decode() if atyp == 3 else socket.inet_ntoa(exact(c, 4))
                rec["dest"] = host + ":%d" % struct.unpack(">H", exact(c, 2))[0]
                c.sendall(b"\x05\0\0\x01" + b"\0" * 6)
            with open(log, "a") as f: f.write(json.dumps(rec) + "\n")
            while True:
                d = c.recv(65536)
                if not d: break
                c.sendall(d)
            c.close()
        threading.Thread(target=lambda: sys.stdin.read() or sys.exit(0), daemon=True).start()
        while True:
            c, _ = srv.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
        """;

    private static async Task<JObject> OneSessionAsync(string proto, JObject settings, string destination)
    {
        string dir = Directory.CreateTempSubdirectory("pthost-ext-").FullName;
        string script = Path.Combine(dir, "pt.py");
        await File.WriteAllTextAsync(script, RecordingProgram);
        string log = Path.Combine(dir, "sessions.jsonl");
        string python = DebianPrograms.Require("/usr/bin/python3");
        var config = new JObject
        {
            ["role"] = "client",
            ["transports"] = new JArray("external"),
            ["state"] = dir,
            ["options"] = new JObject { ["external"] = new JObject { ["exec"] = python, ["args"] = new JArray("-u", script, proto, log), ["method"] = "fake", ["serverAddress"] = destination } },
            ["exit-on-stdin-close"] = true,
        };
        await using var p = PtProcess.StartPthost(config.ToString(Newtonsoft.Json.Formatting.None));
        var lines = await p.ReadUntilDoneAsync();
        var socksEp = IPEndPoint.Parse(lines.Single(l => l.StartsWith("CMETHOD external socks5 ", StringComparison.Ordinal)).Split(' ')[3]);
        await using (var socks = await SocksClient.ConnectAsync(socksEp))
        {
            await socks.SendAsync([.. SocksClient.Greeting(0x09), .. SocksClient.SettingsBlock(settings.ToString(Newtonsoft.Json.Formatting.None)), .. SocksClient.ConnectIPv4(IPAddress.Any, 0)]);
            await socks.ReadExactlyAsync(2);
            Assert.Equal(0, await socks.ReadReplyAsync());
            await socks.SendAsync("echo"u8.ToArray());
            Assert.Equal("echo"u8.ToArray(), await socks.ReadExactlyAsync(4));
        }
        p.CloseStdin();
        Assert.Equal(0, await p.WaitForExitAsync());
        return JObject.Parse(Assert.Single(await File.ReadAllLinesAsync(log)));
    }

    private static string Hex(string s) => Convert.ToHexStringLower(Encoding.UTF8.GetBytes(s));

    [Fact]
    public async Task Short_arguments_go_in_UNAME_with_a_lone_NUL_PASSWD_and_only_method_02_is_offered()
    {
        var rec = await OneSessionAsync("socks5", new JObject { ["cert"] = "a=b;c", ["iat-mode"] = 0 }, "bridge.example:443");
        Assert.Equal("02", (string?)rec["methods"]);
        Assert.Equal(Hex(@"cert=a\=b\;c;iat-mode=0"), (string?)rec["uname"]);
        Assert.Equal("00", (string?)rec["passwd"]);
        Assert.Equal("bridge.example:443", (string?)rec["dest"]);
    }

    [Fact]
    public async Task Long_arguments_fill_UNAME_with_255_bytes_and_continue_in_PASSWD()
    {
        string cert = new('x', 300);
        var rec = await OneSessionAsync("socks5", new JObject { ["cert"] = cert }, "192.0.2.7:443");
        string all = "cert=" + cert;
        Assert.Equal(Hex(all[..255]), (string?)rec["uname"]);
        Assert.Equal(Hex(all[255..]), (string?)rec["passwd"]);
        Assert.Equal("192.0.2.7:443", (string?)rec["dest"]);
    }

    [Fact]
    public async Task A_socks4_program_gets_the_arguments_as_USERID_and_a_host_name_as_SOCKS4a()
    {
        var rec = await OneSessionAsync("socks4", new JObject { ["cert"] = "abc" }, "bridge.example:443");
        Assert.Equal(Hex("cert=abc"), (string?)rec["userid"]);
        Assert.Equal("bridge.example:443", (string?)rec["dest"]);
    }

    [Fact]
    public async Task A_program_that_keeps_dying_is_restarted_with_back_off_then_given_up_and_sessions_fail_with_01()
    {
        string dir = Directory.CreateTempSubdirectory("pthost-ext-").FullName;
        // Starts fine the first time, then exits at once; every later start fails the same way.
        string exec = await ScriptAsync(dir, $"""
            echo start >> {dir}/starts
            echo 'VERSION 1'
            echo 'CMETHOD fake socks5 127.0.0.1:9'
            echo 'CMETHODS DONE'
            exit 7
            """);
        await using var p = PtProcess.StartPthost(ClientJson(exec, dir, new JObject { ["maxRestarts"] = 2 }));
        var lines = await p.ReadUntilDoneAsync();
        var socksEp = IPEndPoint.Parse(lines.Single(l => l.StartsWith("CMETHOD ", StringComparison.Ordinal)).Split(' ')[3]);
        await p.WaitForStderrAsync("giving up", within: TimeSpan.FromSeconds(60));
        Assert.Contains("exited with code 7", p.Stderr);
        Assert.Contains("restarting in 1 s", p.Stderr);
        Assert.Contains("died 3 times in a row; giving up", p.Stderr);
        Assert.Equal(3, (await File.ReadAllLinesAsync(Path.Combine(dir, "starts"))).Length); // the first start and two restarts

        await using var socks = await SocksClient.ConnectAsync(socksEp);
        await socks.SendAsync([.. SocksClient.Greeting(0x00), .. SocksClient.ConnectIPv4(IPAddress.Loopback, 80)]);
        await socks.ReadExactlyAsync(2);
        Assert.Equal(0x01, await socks.ReadReplyAsync());
        p.CloseStdin();
        Assert.Equal(0, await p.WaitForExitAsync());
    }
}
