using Newtonsoft.Json.Linq;

namespace PtHost.Tests.Process;

/// <summary>The launcher's contract with its parent: lines, exit codes, stdin and signals.</summary>
[Collection("process")]
public class LauncherTests
{
    [Theory]
    [InlineData("{\"role\":\"client\",\"transports\":[\"plain\"],\"colour\":\"blue\"}", "colour")]
    [InlineData("{\"role\":\"nobody\",\"transports\":[\"plain\"]}", "role")]
    [InlineData("{\"role\":\"server\",\"transports\":[\"plain\"]}", "allow")]
    [InlineData("{\"role\":\"client\",\"transports\":[\"plain\"],\"proxylistenaddr\":\"localhost:1\"}", "proxylistenaddr")]
    [InlineData("{\"role\":\"client\",\"transports\":\"plain\"}", "transports")]
    [InlineData("{\"role\":\"client\",\"transports\":[\"plain\"]", "(document)")]
    public async Task A_bad_config_exits_78_with_one_stderr_line_naming_the_key(string json, string key)
    {
        await using var p = PtProcess.StartPthost(json);
        Assert.Equal(78, await p.WaitForExitAsync());
        var lines = p.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Single(lines);
        Assert.Contains($"'{key}'", lines[0]);
        Assert.All(p.StdoutLines, l => Assert.StartsWith("ENV-ERROR ", l));
    }

    [Fact]
    public async Task An_unsupported_ptversion_prints_VERSION_ERROR_and_exits_78()
    {
        await using var p = PtProcess.StartPthost("{\"ptversion\":\"3\",\"role\":\"client\",\"transports\":[\"plain\"]}");
        Assert.Equal(78, await p.WaitForExitAsync());
        Assert.Equal(["VERSION-ERROR no-version"], p.StdoutLines);
    }

    [Fact]
    public async Task No_arguments_is_a_usage_error_64()
    {
        await using var p = PtProcess.StartPthost();
        Assert.Equal(64, await p.WaitForExitAsync());
        Assert.Empty(p.StdoutLines);
    }

    [Theory]
    [InlineData("client")]
    [InlineData("server")]
    public async Task Stdin_close_exits_0_when_enabled(string role)
    {
        await using var p = PtProcess.StartPthost(Config(role, exitOnStdinClose: true));
        var lines = await p.ReadUntilDoneAsync();
        Assert.Equal("VERSION 2", lines[0]);
        p.CloseStdin();
        Assert.Equal(0, await p.WaitForExitAsync());
        p.AssertOnlyProtocolLinesOnStdout();
    }

    [Theory]
    [InlineData("client")]
    [InlineData("server")]
    public async Task A_plain_process_is_ready_without_loading_OpenSSL(string role)
    {
        // The start-up budget (issue 16): OpenSSL loads with the first cryptographic call (RandomNumberGenerator
        // included), about 5 ms and 6.7 MB of RSS; a plain process makes none before its METHODS DONE line.
        await using var p = PtProcess.StartPthost(Config(role, exitOnStdinClose: true));
        await p.ReadUntilDoneAsync();
        string maps = await File.ReadAllTextAsync($"/proc/{p.Pid}/maps");
        Assert.DoesNotContain("libcrypto.so", maps);
        Assert.DoesNotContain("libssl.so", maps);
    }

    [Fact]
    public async Task Stdin_close_is_ignored_when_not_enabled_and_SIGTERM_exits_0()
    {
        await using var p = PtProcess.StartPthost(Config("client", exitOnStdinClose: false));
        await p.ReadUntilDoneAsync();
        p.CloseStdin();
        // Nothing happens: with the option on, a stdin close ends pthost within milliseconds (the test
        // above); still running 1.5 s later, it has ignored the close.
        await Assert.ThrowsAsync<TimeoutException>(() => p.WaitForExitAsync(TimeSpan.FromMilliseconds(1500)));
        p.Signal(15);
        Assert.Equal(0, await p.WaitForExitAsync());
    }

    [Fact]
    public async Task SIGINT_exits_0()
    {
        await using var p = PtProcess.StartPthost(Config("server", exitOnStdinClose: false));
        await p.ReadUntilDoneAsync();
        p.Signal(2);
        Assert.Equal(0, await p.WaitForExitAsync());
    }

    [Fact]
    public async Task An_unknown_transport_gets_CMETHOD_ERROR_while_the_others_start()
    {
        var config = new JObject { ["role"] = "client", ["transports"] = new JArray("nosuch", "plain"), ["exit-on-stdin-close"] = true };
        await using var p = PtProcess.StartPthost(config.ToString());
        var all = await p.ReadUntilDoneAsync();
        Assert.Contains(all, l => l.StartsWith("LOG SEVERITY=error MESSAGE=\"transport nosuch not started", StringComparison.Ordinal));
        var lines = all.Where(l => !l.StartsWith("LOG ", StringComparison.Ordinal)).ToList();
        Assert.Equal("VERSION 2", lines[0]);
        Assert.StartsWith("CMETHOD-ERROR nosuch ", lines[1]);
        Assert.Matches(@"^CMETHOD plain socks5 127\.0\.0\.1:\d+$", lines[2]);
        Assert.Equal("CMETHODS DONE", lines[3]);
    }

    [Fact]
    public async Task When_no_transport_starts_the_process_exits_69_after_DONE()
    {
        var config = new JObject { ["role"] = "server", ["transports"] = new JArray("nosuch"), ["target"] = "127.0.0.1:1" };
        await using var p = PtProcess.StartPthost(config.ToString());
        Assert.Equal(69, await p.WaitForExitAsync());
        var lines = p.StdoutLines.Where(l => !l.StartsWith("LOG ", StringComparison.Ordinal)).ToList();
        Assert.Equal("SMETHODS DONE", lines[^1]);
        Assert.StartsWith("SMETHOD-ERROR nosuch ", lines[^2]);
    }

    [Fact]
    public async Task Config_can_come_from_a_file_and_state_dirs_are_created_there()
    {
        string dir = Path.Combine(Path.GetTempPath(), "pthost-state-" + Guid.NewGuid().ToString("N"));
        string file = Path.Combine(Path.GetTempPath(), "pthost-config-" + Guid.NewGuid().ToString("N") + ".json");
        var config = JObject.Parse(Config("client", true));
        config["state"] = dir;
        await File.WriteAllTextAsync(file, config.ToString());
        try
        {
            await using var p = PtProcess.StartPthost("--config", file);
            await p.ReadUntilDoneAsync();
            Assert.True(Directory.Exists(Path.Combine(dir, "plain")));
            p.CloseStdin();
            Assert.Equal(0, await p.WaitForExitAsync());
        }
        finally
        {
            File.Delete(file);
            if (Directory.Exists(dir)) Directory.Delete(dir, true);
        }
    }

    [Fact]
    public async Task A_stdin_close_while_a_transport_is_still_starting_is_a_clean_shutdown_with_exit_0()
    {
        // An asport server waits up to 30 s for its ASPORT server's ServerHello (spec/asport.md §6.1); here none
        // answers (a UDP socket of the test's that reads and says nothing), so the transport is still starting
        // when stdin closes. Before: SMETHOD-ERROR "A task was canceled." and exit 69 (or 70 when the host itself
        // had not started). After: the transport is reported as stopped before it started, and exit 0.
        using var silent = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.InterNetwork, System.Net.Sockets.SocketType.Dgram, System.Net.Sockets.ProtocolType.Udp);
        silent.Bind(new System.Net.IPEndPoint(System.Net.IPAddress.Loopback, 0));
        var config = new JObject
        {
            ["role"] = "server",
            ["transports"] = new JArray("asport"),
            ["target"] = "127.0.0.1:9",
            ["exit-on-stdin-close"] = true,
            ["options"] = new JObject
            {
                ["asport"] = new JObject
                {
                    ["server"] = silent.LocalEndPoint!.ToString(),
                    ["pin"] = new string('a', 64),
                    ["user"] = Guid.NewGuid().ToString(),
                    ["password"] = "p",
                },
            },
        };
        await using var p = PtProcess.StartPthost(config.ToString(Newtonsoft.Json.Formatting.None));
        Assert.Equal("VERSION 2", await p.ReadLineAsync());
        // The first QUIC Initial reached the silent socket: the transport is starting.
        using (var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30)))
            await silent.ReceiveAsync(new byte[2048], System.Net.Sockets.SocketFlags.None, cts.Token);
        p.CloseStdin();
        Assert.Equal(0, await p.WaitForExitAsync(TimeSpan.FromSeconds(20)));
        var lines = p.StdoutLines.ToList();
        int error = lines.IndexOf($"SMETHOD-ERROR asport {PtHost.Hosting.HostRuntime.StoppedWhileStarting}");
        Assert.True(error > 0, string.Join('\n', lines));
        Assert.True(lines.IndexOf("SMETHODS DONE") > error, string.Join('\n', lines));
        Assert.DoesNotContain("fail:", p.Stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Generate_config_prints_one_JSON_object_with_client_and_server()
    {
        await using var p = PtProcess.StartPthost("generate-config", "plain");
        Assert.Equal(0, await p.WaitForExitAsync());
        var o = JObject.Parse(string.Join('\n', p.StdoutLines));
        Assert.IsType<JObject>(o["client"]);
        Assert.IsType<JObject>(o["server"]);
    }

    private static string Config(string role, bool exitOnStdinClose)
    {
        var o = new JObject { ["role"] = role, ["transports"] = new JArray("plain"), ["exit-on-stdin-close"] = exitOnStdinClose };
        if (role == "server") o["target"] = "127.0.0.1:9";
        return o.ToString(Newtonsoft.Json.Formatting.None);
    }
}

/// <summary>The README's first command: the demo runs a server and a client and fetches through them.</summary>
[Collection("process")]
public class DemoTests
{
    [Fact]
    public async Task Demo_fetches_through_a_server_and_a_client_and_says_OK()
    {
        await using var p = PtProcess.StartPthost("demo");
        Assert.Equal(0, await p.WaitForExitAsync(TimeSpan.FromSeconds(90)));
        Assert.Contains("demo: demo OK", p.StdoutLines);
        Assert.Contains(p.StdoutLines, l => l.Contains("sha256 matches", StringComparison.Ordinal));
        Assert.DoesNotContain("dropped", p.Stderr);
    }
}
