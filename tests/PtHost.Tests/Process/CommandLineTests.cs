using System.Text.RegularExpressions;

namespace PtHost.Tests.Process;

/// <summary>spec/ipc.md §2: help, version and usage errors of the real executable, for every command.</summary>
[Collection("process")]
public partial class CommandLineTests
{
    public static TheoryData<string[]> Commands => new()
    {
        Array.Empty<string>(),
        new[] { "generate-config" },
        new[] { "demo" },
        new[] { "relay" },
        new[] { "relay", "zephyr" },
        new[] { "relay", "jet" },
        new[] { "relay", "asport" },
    };

    [Theory]
    [MemberData(nameof(Commands))]
    public async Task Help_is_on_stdout_with_exit_0_for_every_command(string[] command)
    {
        foreach (string help in new[] { "--help", "-h" })
        {
            await using var p = PtProcess.StartPthost([.. command, help]);
            Assert.Equal(0, await p.WaitForExitAsync());
            string stdout = string.Join('\n', p.StdoutLines);
            Assert.Contains("Usage:", stdout, StringComparison.Ordinal);
            Assert.Contains("pthost " + string.Join(' ', command), stdout, StringComparison.Ordinal);
            Assert.Equal("", p.Stderr);
        }
    }

    [Theory]
    [InlineData("zephyr", "--listen", "--bind-timeout", "--peer-timeout", "--idle-timeout", "--max-lifetime", "--max-connections", "--max-per-source", "--ipv6-source-prefix", "--stats-interval", "--loglevel", "--config",
        "--metrics", "--instance", "--instance-number", "--link", "--link-secret", "--peers")]
    [InlineData("jet", "--listen", "--config", "--loglevel", "--metrics")]
    [InlineData("asport", "--listen", "--config", "--loglevel", "--metrics")]
    public async Task A_relay_help_lists_every_option_the_relay_describes(string relay, params string[] options)
    {
        await using var p = PtProcess.StartPthost("relay", relay, "--help");
        Assert.Equal(0, await p.WaitForExitAsync());
        string stdout = string.Join('\n', p.StdoutLines);
        Assert.All(options, o => Assert.Contains(o + " <", stdout, StringComparison.Ordinal));
    }

    [Fact]
    public async Task The_root_help_lists_the_relays()
    {
        await using var p = PtProcess.StartPthost("relay", "--help");
        Assert.Equal(0, await p.WaitForExitAsync());
        string stdout = string.Join('\n', p.StdoutLines);
        Assert.All(new[] { "zephyr", "jet", "asport" }, r => Assert.Matches(@$"(?m)^\s+{r}\s", stdout));
    }

    [Fact]
    public async Task Version_names_the_version_and_the_commit_it_was_built_from()
    {
        await using var p = PtProcess.StartPthost("--version");
        Assert.Equal(0, await p.WaitForExitAsync());
        string line = Assert.Single(p.StdoutLines);
        var m = VersionLine().Match(line);
        Assert.True(m.Success, $"\"{line}\" is not \"pthost X.Y.Z (commit HASH)\"");
        // The tests run from the repository the executable was built in: the commit is one of its commits.
        string commit = m.Groups[1].Value;
        var git = System.Diagnostics.Process.Start(new System.Diagnostics.ProcessStartInfo("git", ["-C", AppContext.BaseDirectory, "cat-file", "-t", commit])
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        })!;
        string type = (await git.StandardOutput.ReadToEndAsync()).Trim();
        await git.WaitForExitAsync();
        Assert.Equal("commit", type);
    }

    [Theory]
    [InlineData(new[] { "--colour" }, "--colour")]
    [InlineData(new[] { "generate-config", "plain", "--colour", "blue" }, "--colour")]
    [InlineData(new[] { "relay", "zephyr", "--colour", "blue" }, "--colour")]
    [InlineData(new[] { "relay", "jet", "--listen", "127.0.0.1:0", "--colour" }, "--colour")]
    [InlineData(new[] { "relay", "asport", "--listen", "127.0.0.1:0", "--config", "x.json", "--colour", "blue" }, "--colour")]
    [InlineData(new[] { "relay", "nosuch" }, "nosuch")]
    [InlineData(new[] { "relay", "asport", "--listen", "127.0.0.1:0" }, "--config")]
    [InlineData(new[] { "relay", "jet", "--listen", "localhost:80" }, "--listen")]
    [InlineData(new[] { "relay", "zephyr", "--loglevel", "loud" }, "--loglevel")]
    [InlineData(new[] { "relay", "zephyr", "--listen", "nowhere", "--listen", "127.0.0.1:0" }, "--listen")]
    [InlineData(new[] { "--config", "a.json", "--config", "b.json" }, "--config")]
    [InlineData(new[] { "--config" }, "--config")]
    [InlineData(new[] { "notjson" }, "notjson")]
    [InlineData(new[] { "{}", "--config", "c.json" }, "--config")]
    public async Task A_usage_error_is_one_stderr_line_naming_the_argument_and_exit_64(string[] args, string named)
    {
        await using var p = PtProcess.StartPthost(args);
        Assert.Equal(64, await p.WaitForExitAsync());
        Assert.Empty(p.StdoutLines);
        string line = Assert.Single(p.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith("pthost: ", line, StringComparison.Ordinal);
        Assert.Contains(named, line, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_relay_option_given_twice_counts_its_last_value()
    {
        // As the hand-written parsers did: scripts that add an option to a base command line keep working.
        await using var p = PtProcess.StartPthost("relay", "zephyr", "--listen", "127.0.0.1:1", "--loglevel", "debug", "--listen", "127.0.0.1:0", "--loglevel", "warning");
        string line = await p.ReadLineAsync();
        Assert.Matches(@"^LISTEN zephyr 127\.0\.0\.1:\d+$", line);
        Assert.NotEqual("LISTEN zephyr 127.0.0.1:1", line);
        p.Signal(15);
        Assert.Equal(0, await p.WaitForExitAsync());
        Assert.DoesNotContain("info:", p.Stderr, StringComparison.Ordinal); // --loglevel warning counted
    }

    [Fact]
    public async Task A_relay_without_its_own_file_reads_its_options_from_config_and_the_command_line_wins()
    {
        // spec/ipc.md §2.4: /etc/pthost/zephyr.json in the unit; numbers or strings, checked by kind.
        string file = Path.Combine(Directory.CreateTempSubdirectory("pthost-relay-config-").FullName, "zephyr.json");
        await File.WriteAllTextAsync(file, "{\"listen\": \"127.0.0.1:1\", \"bind-timeout\": 7.5, \"max-per-source\": \"12\"}");
        try
        {
            await using (var p = PtProcess.StartPthost("relay", "zephyr", "--config", file, "--listen", "127.0.0.1:0"))
            {
                Assert.Matches(@"^LISTEN zephyr 127\.0\.0\.1:\d+$", await p.ReadLineAsync());
                await p.WaitForStderrAsync("listening");
                p.Signal(15);
                Assert.Equal(0, await p.WaitForExitAsync());
                Assert.Contains("(bind timeout 7.5s, peer timeout 30s, ", p.Stderr, StringComparison.Ordinal);
                Assert.Contains(" connections, 12 per source, ", p.Stderr, StringComparison.Ordinal);
            }
            await File.WriteAllTextAsync(file, "{\"listen\": \"127.0.0.1:0\", \"stats-interval\": 1}");
            await using (var p = PtProcess.StartPthost("relay", "zephyr", "--config", file))
            {
                Assert.Matches(@"^LISTEN zephyr 127\.0\.0\.1:\d+$", await p.ReadLineAsync());
                Assert.StartsWith("STATUS TRANSPORT=zephyr ", await p.ReadLineAsync(), StringComparison.Ordinal);
                p.Signal(15);
                Assert.Equal(0, await p.WaitForExitAsync());
            }
        }
        finally { Directory.Delete(Path.GetDirectoryName(file)!, true); }
    }

    [Theory]
    [InlineData("{\"listen\": \"x\"}", "listen: \"x\" is not IP:PORT")]
    [InlineData("{\"listen\": 8888}", "listen: must be a string, not the number 8888")]
    [InlineData("{\"bind-timeout\": 0}", "bind-timeout: \"0\" is not a positive number of seconds (at most 86400)")]
    [InlineData("{\"max-connections\": true}", "max-connections: must be a number or a string, not true")]
    [InlineData("{\"strict-close\": 1}", "strict-close: must be true or false, not the number 1")]
    [InlineData("{\"colour\": \"blue\"}", "colour: unknown key (known: listen, ")]
    [InlineData("{\"listen\": \"127.0.0.1:0\",}", "not valid JSON")]
    [InlineData("[]", "must be a JSON object")]
    [InlineData(null, "configuration ")]
    public async Task A_bad_relay_options_file_is_one_stderr_line_naming_the_key_and_exit_78(string? json, string problem)
    {
        string dir = Directory.CreateTempSubdirectory("pthost-relay-config-").FullName;
        string file = Path.Combine(dir, "zephyr.json");
        if (json is not null) await File.WriteAllTextAsync(file, json);
        try
        {
            await using var p = PtProcess.StartPthost("relay", "zephyr", "--config", file);
            Assert.Equal(78, await p.WaitForExitAsync());
            Assert.Empty(p.StdoutLines);
            string line = Assert.Single(p.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
            Assert.StartsWith($"pthost: relay zephyr: configuration {file}: ", line, StringComparison.Ordinal);
            Assert.Contains(problem, line, StringComparison.Ordinal);
        }
        finally { Directory.Delete(dir, true); }
    }

    [Theory]
    [InlineData("@response.txt")]
    [InlineData("[diagram]")]
    [InlineData("-{}")]
    public async Task Arguments_are_never_expanded_or_taken_as_directives(string argument)
    {
        // A response file that would make a valid configuration if '@' were expanded.
        string dir = Path.Combine(Path.GetTempPath(), "pthost-cl-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        await File.WriteAllTextAsync(Path.Combine(dir, "response.txt"), "{\"role\":\"client\",\"transports\":[\"plain\"]}");
        try
        {
            await using var p = PtProcess.Start(PtHostExecutable.Path, [argument], null, dir);
            Assert.Equal(64, await p.WaitForExitAsync());
            Assert.Empty(p.StdoutLines);
        }
        finally { Directory.Delete(dir, true); }
    }

    [Theory]
    [InlineData("{\"role\":\"client\",\"transports\":[\"plain\"],\"loglevel\":\"--help\"}")]
    [InlineData("   {\"role\":\"relay\",\"transports\":[\"plain\"]}")]
    [InlineData("{\"role\":\"client\",\"transports\":[\"plain\"],\"state\":\"@response.txt\",\"bogus\":1}")]
    public async Task A_JSON_document_reaches_the_configuration_reader_untouched(string json)
    {
        // Both documents are refused by the configuration reader (exit 78 naming the key), not by the parser (64).
        await using var p = PtProcess.StartPthost(json);
        Assert.Equal(78, await p.WaitForExitAsync());
        Assert.StartsWith("ENV-ERROR config key '", Assert.Single(p.StdoutLines), StringComparison.Ordinal);
    }

    [GeneratedRegex(@"^pthost \d+\.\d+\.\d+ \(commit ([0-9a-f]{12})\)$")]
    private static partial Regex VersionLine();
}
