using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.RegularExpressions;
using Newtonsoft.Json.Linq;
using PtHost.Contract;
using Xunit.Abstractions;

namespace PtHost.Tests.Process;

/// <summary>
/// Safe logging (spec/ipc.md §4.11): a busy run of every transport and every relay at log level
/// debug, with sessions that work and sessions that fail, leaves no loopback address and none of the
/// run's ports in any process's stderr or stdout LOG lines; <c>unsafe-logging</c> brings them back.
/// </summary>
[Collection("process")]
public sealed partial class SafeLoggingTests(ITestOutputHelper output)
{
    private static readonly byte[] Ping = Encoding.ASCII.GetBytes("safe-logging ping");

    /// <summary>What the run's processes said, and the ports the run used.</summary>
    private sealed class Run
    {
        public List<(string Name, PtProcess Process)> Processes { get; } = [];
        public HashSet<int> Ports { get; } = [];

        public PtProcess Add(string name, PtProcess process)
        {
            Processes.Add((name, process));
            return process;
        }

        public void AddChain(string name, PtChain chain)
        {
            Add(name + " server", chain.Server);
            Add(name + " client", chain.Client);
            foreach (string line in chain.ServerStartup.Concat(chain.ClientStartup)) AddPortsOf(line);
        }

        /// <summary>Every <c>ip:port</c> a protocol line names (CMETHOD, SMETHOD, LISTEN).</summary>
        public void AddPortsOf(string line)
        {
            foreach (string word in line.Split(' ', '='))
                if (IPEndPoint.TryParse(word, out var ep) && ep.Port != 0 && word.Contains(':', StringComparison.Ordinal)) Ports.Add(ep.Port);
        }
    }

    [Fact]
    public async Task A_busy_run_of_every_transport_and_relay_at_debug_level_logs_no_address()
    {
        var run = new Run();
        await using var echo = new EchoServer();
        await using var udpEcho = new UdpEcho();
        using var refused = new RefusingPort();
        int refusedPort = refused.Port;
        run.Ports.UnionWith([echo.Port, udpEcho.Port, refusedPort]);

        await PlainWithTurnAsync(run, echo, udpEcho, refusedPort);
        await ZephyrAsync(run, echo, refusedPort);
        await JetAsync(run, echo, refusedPort);
        await AsportAsync(run, echo);
        await RudAsync(run, echo, refusedPort);
        await ExternalObfs4Async(run, echo);

        var leaks = new List<string>();
        int scrubbed = 0;
        foreach (var (name, p) in run.Processes)
        {
            foreach (string line in LogLines(p))
            {
                if (line.Contains(Logging.AddressScrubber.Scrubbed, StringComparison.Ordinal)) scrubbed++;
                if (Leak(line, run.Ports) is { } what) leaks.Add($"{name}: {what} in: {line}");
            }
        }
        output.WriteLine($"{run.Processes.Count} processes, {run.Processes.Sum(p => LogLines(p.Process).Count())} log lines, {scrubbed} with [scrubbed], ports checked: {string.Join(' ', run.Ports.Order())}");
        Assert.True(leaks.Count == 0, $"{leaks.Count} log lines give an address away:\n{string.Join('\n', leaks.Take(40))}");
        // The run did log the events whose lines carry addresses (else this test could not fail).
        Assert.True(scrubbed >= 30, $"only {scrubbed} log lines had an address to scrub");
    }

    /// <summary>plain: sessions that work, a refused destination, a domain destination, a bad SOCKS greeting, a bad preamble on the server's port; TURN with an allowed and a refused peer; a second server whose port is taken (its LOG line).</summary>
    private async Task PlainWithTurnAsync(Run run, EchoServer echo, UdpEcho udpEcho, int refusedPort)
    {
        var server = Debug(PtChain.FreeServer("plain", "127.0.0.1"));
        var client = Debug(TurnChain.ClientConfig(null));
        await using var chain = await PtChain.StartAsync(server, ep =>
        {
            client["options"]!["plain"]!["serverAddress"] = ep.ToString();
            return client;
        });
        run.AddChain("plain", chain);
        var turn = TurnChain.Of(chain);

        await EchoSessionAsync(chain.SocksEndPoint, SocksClient.ConnectIPv4(IPAddress.Loopback, echo.Port));
        await EchoSessionAsync(chain.SocksEndPoint, SocksClient.ConnectDomain("localhost", echo.Port));
        Assert.NotEqual(0, await RefusedSessionAsync(chain.SocksEndPoint, refusedPort));
        await using (var socks = await SocksClient.ConnectAsync(chain.SocksEndPoint))
        {
            await socks.SendAsync(SocksClient.Greeting(0x7f)); // no method pthost accepts
            Assert.Equal([5, 0xFF], await socks.ReadExactlyAsync(2));
        }
        await NotAPreambleAsync(chain.ServerEndPoint);
        await chain.Server.WaitForStderrAsync("not a session preamble");

        await using (var turnClient = await UdpTurnClient.ConnectAsync(turn.TurnEndPoint))
        {
            Assert.Equal(0, await turnClient.AllocateAsync());
            var peer = PeerAddress.From(udpEcho.EndPoint);
            Assert.Equal(0, await turnClient.CreatePermissionAsync(peer));
            turnClient.SendIndication(peer, Ping);
            var (_, data) = await turnClient.ReceiveDataAsync();
            Assert.Equal(Ping, data);
            // Not in the server's allow list: refused by the server process (spec/turn.md §5.3).
            Assert.Equal(403, await turnClient.CreatePermissionAsync(PeerAddress.From(new IPEndPoint(IPAddress.Parse("127.0.0.2"), udpEcho.Port))));
            Assert.Equal(0, await turnClient.DeleteAsync());
        }
        run.Ports.Add(turn.TurnEndPoint.Port);

        // A second server on the first one's port: SMETHOD-ERROR keeps the address, its LOG line does not.
        var taken = Debug(PtChain.FreeServer("plain", "127.0.0.1"));
        taken["bindaddr"] = new JObject { ["plain"] = chain.ServerEndPoint.ToString() };
        var second = run.Add("plain server on a taken port", PtProcess.StartPthost(taken.ToString(Newtonsoft.Json.Formatting.None)));
        await second.WaitForLineAsync("SMETHODS DONE");
        Assert.Contains(second.StdoutLines, l => l.StartsWith("SMETHOD-ERROR plain ", StringComparison.Ordinal) && l.Contains(chain.ServerEndPoint.ToString(), StringComparison.Ordinal));
        Assert.Contains(second.StdoutLines, l => l.StartsWith("LOG SEVERITY=error MESSAGE=\"transport plain not started: cannot listen on [scrubbed]", StringComparison.Ordinal));
        await second.WaitForExitAsync();

        await chain.Client.WaitForStderrAsync("connected to [scrubbed]");
        await StopAsync(chain);
    }

    /// <summary>zephyr through a relay: a session, a refused destination; a raw peer with a bad bind request on the relay.</summary>
    private async Task ZephyrAsync(Run run, EchoServer echo, int refusedPort)
    {
        var relay = await ZephyrRelayProcess.StartAsync();
        await using var _ = relay;
        run.Add("zephyr relay", relay.Process);
        run.Ports.Add(relay.EndPoint.Port);
        var generated = await ZephyrChain.GenerateAsync();
        var (client, server) = ((JObject)generated["client"]!, (JObject)generated["server"]!);
        client["relay"] = relay.EndPoint.ToString();
        server["relay"] = relay.EndPoint.ToString();
        await using (var chain = await PtChain.StartAsync(Debug(PtChain.FreeServerOf("zephyr", server)), _ => Debug(PtChain.ClientOf("zephyr", client))))
        {
            run.AddChain("zephyr", chain);
            await EchoSessionAsync(chain.SocksEndPoint, SocksClient.ConnectIPv4(IPAddress.Loopback, echo.Port));
            Assert.NotEqual(0, await RefusedSessionAsync(chain.SocksEndPoint, refusedPort));
            await StopAsync(chain);
        }
        using (var raw = await ZephyrPeer.ConnectAsync(relay.EndPoint))
            await raw.SendAsync(new byte[12]); // not a bind request
        await relay.Process.WaitForStderrAsync("bad bind request from [scrubbed]");
        await relay.Process.WaitForStderrAsync("bound zid");
        await TerminateAsync(relay.Process);
    }

    /// <summary>jet through a relay: a session, a refused destination; a TLS handshake failure and a bad request on the relay's binary listeners.</summary>
    private async Task JetAsync(Run run, EchoServer echo, int refusedPort)
    {
        var relay = await JetRelayProcess.StartAsync();
        await using var _ = relay;
        run.Add("jet relay", relay.Process);
        run.Ports.UnionWith(new[] { relay.Http, relay.Tcp, relay.Tls, relay.Wss }.OfType<IPEndPoint>().Select(e => e.Port));
        var generated = await JetChain.GenerateAsync();
        var (client, server) = ((JObject)generated["client"]!, (JObject)generated["server"]!);
        server["relay"] = $"http://{relay.Http}";
        server["kinds"] = new JArray("tcp", "tls", "ws", "wss", "direct");
        await using (var chain = await PtChain.StartAsync(Debug(PtChain.FreeServerOf("jet", server)), _ => Debug(PtChain.ClientOf("jet", client))))
        {
            run.AddChain("jet", chain);
            foreach (string line in chain.ServerStartup.Concat(chain.Server.StdoutLines)) run.AddPortsOf(line);
            await EchoSessionAsync(chain.SocksEndPoint, SocksClient.ConnectIPv4(IPAddress.Loopback, echo.Port));
            Assert.NotEqual(0, await RefusedSessionAsync(chain.SocksEndPoint, refusedPort));
            await chain.Client.WaitForStderrAsync("candidate");
            await StopAsync(chain);
        }
        await NotAPreambleAsync(relay.Tls!);
        await relay.Process.WaitForStderrAsync("tls [scrubbed]: handshake failed");
        await NotAPreambleAsync(relay.Tcp!);
        await relay.Process.WaitForStderrAsync("tcp [scrubbed]: 400");
        await TerminateAsync(relay.Process);
    }

    /// <summary>asport: a bound server registered with the relay, a session; a second server with a wrong password that the relay refuses.</summary>
    private async Task AsportAsync(Run run, EchoServer echo)
    {
        var relay = await AsportRelayProcess.StartAsync();
        await using var _ = relay;
        run.Add("asport relay", relay.Process);
        run.Ports.Add(relay.EndPoint.Port);
        await using (var chain = await PtChain.StartAsync(Debug(AsportTransportTests.ServerConfig(relay.EndPoint, $"127.0.0.1:{echo.Port}")), _ => Debug(AsportTransportTests.ClientConfig())))
        {
            run.AddChain("asport", chain);
            await EchoSessionAsync(chain.SocksEndPoint, SocksClient.ConnectIPv4(IPAddress.Loopback, echo.Port));
            await StopAsync(chain);
        }
        var wrong = run.Add("asport server with a wrong password",
            PtProcess.StartPthost(Debug(AsportTransportTests.ServerConfig(relay.EndPoint, $"127.0.0.1:{echo.Port}", password: "wrong")).ToString(Newtonsoft.Json.Formatting.None)));
        await using (wrong)
        {
            await relay.Process.WaitForStderrAsync("authentication failed");
            wrong.CloseStdin();
            await wrong.WaitForExitAsync(TimeSpan.FromSeconds(30));
        }
        await relay.Process.WaitForStderrAsync("bound port");
        await TerminateAsync(relay.Process);
    }

    /// <summary>rud: a session and a refused destination.</summary>
    private async Task RudAsync(Run run, EchoServer echo, int refusedPort)
    {
        var generated = await PtChain.GenerateConfigAsync("rud");
        var (client, server) = ((JObject)generated["client"]!, (JObject)generated["server"]!);
        await using var chain = await PtChain.StartAsync(Debug(PtChain.FreeServerOf("rud", server)), ep =>
        {
            client["serverAddress"] = ep.ToString();
            return Debug(PtChain.ClientOf("rud", client));
        });
        run.AddChain("rud", chain);
        await EchoSessionAsync(chain.SocksEndPoint, SocksClient.ConnectIPv4(IPAddress.Loopback, echo.Port));
        Assert.NotEqual(0, await RefusedSessionAsync(chain.SocksEndPoint, refusedPort));
        await chain.Server.WaitForStderrAsync("rud: connection from [scrubbed]");
        await StopAsync(chain);
    }

    /// <summary>external: Debian's obfs4proxy as the PT 1.0 child of both ends (its own lines are relayed into pthost's log), a session.</summary>
    private async Task ExternalObfs4Async(Run run, EchoServer echo)
    {
        const string name = "external_obfs4";
        string obfs4proxy = DebianPrograms.Require("/usr/bin/obfs4proxy");
        var server = Debug(PtChain.BoundServer($"127.0.0.1:{echo.Port}", name));
        server["options"] = new JObject { [name] = new JObject { ["exec"] = obfs4proxy, ["serverOptions"] = new JObject { ["iat-mode"] = "0" } } };
        await using var chain = await PtChain.StartAsync(server, ep => Debug(PtChain.ClientOf(name, new JObject { ["exec"] = obfs4proxy, ["serverAddress"] = ep.ToString() })));
        run.AddChain("external", chain);
        var cert = Regex.Match(chain.ServerStartup.Single(l => l.StartsWith("SMETHOD ", StringComparison.Ordinal)), "ARGS:cert=([^,]+),iat-mode=0$");
        Assert.True(cert.Success, "the SMETHOD line has no obfs4 cert");
        var settings = new JObject { ["cert"] = cert.Groups[1].Value, ["iat-mode"] = 0 };
        await EchoSessionAsync(chain.SocksEndPoint, SocksClient.ConnectIPv4(IPAddress.Loopback, echo.Port), settings);
        await StopAsync(chain);
    }

    [Fact]
    public async Task Unsafe_logging_keeps_the_addresses_in_every_place_that_scrubs_them()
    {
        using var refused = new RefusingPort();
        int refusedPort = refused.Port;

        // PT 2.0: "unsafe-logging": true.
        var server = Debug(PtChain.FreeServer("plain", "127.0.0.1"));
        server["unsafe-logging"] = true;
        await using (var chain = await PtChain.StartAsync(server, ep => Unsafe(Debug(PtChain.ClientWith(new JObject { ["serverAddress"] = ep.ToString() })))))
        {
            Assert.NotEqual(0, await RefusedSessionAsync(chain.SocksEndPoint, refusedPort));
            await chain.Server.WaitForStderrAsync($"connecting to 127.0.0.1:{refusedPort}: ConnectionRefused");
            await chain.Client.WaitForStderrAsync($"127.0.0.1:{refusedPort}");
            // The LOG line of a server whose port is taken names it.
            var taken = Unsafe(Debug(PtChain.FreeServer("plain", "127.0.0.1")));
            taken["bindaddr"] = new JObject { ["plain"] = chain.ServerEndPoint.ToString() };
            await using var second = PtProcess.StartPthost(taken.ToString(Newtonsoft.Json.Formatting.None));
            await second.WaitForLineAsync("SMETHODS DONE");
            Assert.Contains(second.StdoutLines, l => l.StartsWith("LOG SEVERITY=error ", StringComparison.Ordinal) && l.Contains(chain.ServerEndPoint.ToString(), StringComparison.Ordinal));
        }

        // PT 1.0 managed mode: PTHOST_UNSAFE_LOGGING=1; without it the same line is scrubbed.
        foreach (bool unsafeLogging in new[] { true, false })
        {
            var env = ManagedModeTests.ServerEnv(("PTHOST_LOGLEVEL", "debug"));
            if (unsafeLogging) env["PTHOST_UNSAFE_LOGGING"] = "1";
            await using var managed = PtProcess.Start(PtHostExecutable.Path, [], env);
            string smethod = await managed.WaitForLineAsync("SMETHOD plain ");
            var at = IPEndPoint.Parse(smethod.Split(' ')[2]);
            var from = await NotAPreambleAsync(at);
            await managed.WaitForStderrAsync("not a session preamble");
            Assert.Equal(unsafeLogging, managed.Stderr.Contains($"from {from}: not a session preamble", StringComparison.Ordinal));
            Assert.Equal(!unsafeLogging, managed.Stderr.Contains("from [scrubbed]: not a session preamble", StringComparison.Ordinal));
        }

        // Every relay: --unsafe-logging (added by the command line to each, spec/ipc.md §2.4).
        await using (var relay = await ZephyrRelayProcess.StartAsync("--unsafe-logging"))
        {
            using var raw = await ZephyrPeer.ConnectAsync(relay.EndPoint);
            var from = (IPEndPoint)raw.Socket.LocalEndPoint!;
            await raw.SendAsync(new byte[12]);
            await relay.Process.WaitForStderrAsync($"bad bind request from {from}");
        }
        await using (var jet = await JetRelayProcess.StartAsync(unsafeLogging: true))
        {
            var from = await NotAPreambleAsync(jet.Tls!);
            await jet.Process.WaitForStderrAsync($"tls {from}: handshake failed");
        }
    }

    private static JObject Debug(JObject config)
    {
        config["loglevel"] = "debug";
        return config;
    }

    private static JObject Unsafe(JObject config)
    {
        config["unsafe-logging"] = true;
        return config;
    }

    /// <summary>A SOCKS5 session to the echo server: the request (after a JSON settings block when given), a success reply, bytes there and back.</summary>
    private static async Task EchoSessionAsync(IPEndPoint socksEndPoint, byte[] request, JObject? settings = null)
    {
        await using var socks = await SocksClient.ConnectAsync(socksEndPoint);
        if (settings is null) await socks.SendAsync([.. SocksClient.Greeting(0x00), .. request]);
        else await socks.SendAsync([.. SocksClient.Greeting(0x09), .. SocksClient.SettingsBlock(settings.ToString(Newtonsoft.Json.Formatting.None)), .. request]);
        Assert.Equal([5, settings is null ? (byte)0 : (byte)9], await socks.ReadExactlyAsync(2));
        Assert.Equal(0, await socks.ReadReplyAsync());
        await socks.SendAsync(Ping);
        Assert.Equal(Ping, await socks.ReadExactlyAsync(Ping.Length, TimeSpan.FromSeconds(30)));
    }

    /// <summary>A SOCKS5 CONNECT to a port where nothing listens; the reply code.</summary>
    private static async Task<byte> RefusedSessionAsync(IPEndPoint socksEndPoint, int port)
    {
        await using var socks = await SocksClient.ConnectAsync(socksEndPoint);
        await socks.SendAsync([.. SocksClient.Greeting(0x00), .. SocksClient.ConnectIPv4(IPAddress.Loopback, port)]);
        Assert.Equal([5, 0], await socks.ReadExactlyAsync(2));
        return await socks.ReadReplyAsync();
    }

    /// <summary>Connects to <paramref name="endPoint"/>, sends bytes no PtHost peer would send, waits for the close; the local address used.</summary>
    private static async Task<IPEndPoint> NotAPreambleAsync(IPEndPoint endPoint)
    {
        using var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        await s.ConnectAsync(endPoint);
        var from = (IPEndPoint)s.LocalEndPoint!;
        await s.SendAsync(Encoding.ASCII.GetBytes("GET / HTTP/1.0\r\nHost: nowhere\r\n\r\n" + new string('x', 64)));
        s.Shutdown(SocketShutdown.Send);
        var buffer = new byte[4096];
        using var limit = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        try { while (await s.ReceiveAsync(buffer, SocketFlags.None, limit.Token) > 0) { } }
        catch (SocketException) { } // reset
        return from;
    }

    /// <summary>Both ends stop by closing stdin (their last lines included) and exit 0.</summary>
    private static async Task StopAsync(PtChain chain)
    {
        var (s, c) = await chain.StopAsync();
        Assert.Equal(0, s);
        Assert.Equal(0, c);
    }

    /// <summary>SIGTERM, then the exit (its last log lines included).</summary>
    private static async Task TerminateAsync(PtProcess relay)
    {
        relay.Signal(15);
        Assert.Equal(0, await relay.WaitForExitAsync(TimeSpan.FromSeconds(30)));
    }

    /// <summary>A process's log: every stderr line and every stdout <c>LOG</c> line.</summary>
    private static IEnumerable<string> LogLines(PtProcess p) =>
        p.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries)
            .Concat(p.StdoutLines.Where(l => l.StartsWith("LOG ", StringComparison.Ordinal)));

    /// <summary>What in <paramref name="line"/> is an address of this run, or null.</summary>
    private static string? Leak(string line, HashSet<int> ports)
    {
        if (LoopbackText().Match(line) is { Success: true } m) return $"\"{m.Value}\"";
        foreach (Match p in PortText().Matches(line))
            if (ports.Contains(int.Parse(p.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture))) return $"port \"{p.Value}\"";
        return null;
    }

    // 127.x.x.x, ::1 (alone or mapped), localhost with a port.
    [GeneratedRegex(@"\b127\.\d{1,3}\.\d{1,3}\.\d{1,3}\b|(?<![0-9A-Fa-f:])::1(?![0-9A-Fa-f:])|localhost:\d")]
    private static partial Regex LoopbackText();

    // host:port (anything, then a colon, then the port).
    [GeneratedRegex(@"\S:(\d{2,5})(?!\d)")]
    private static partial Regex PortText();
}
