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
    [InlineData("zephyr", "--listen", "--bind-timeout", "--peer-timeout", "--idle-timeout", "--max-lifetime", "--max-connections", "--max-per-source", "--ipv6-source-prefix", "--stats-interval", "--loglevel")]
    [InlineData("jet", "--listen", "--config", "--loglevel")]
    [InlineData("asport", "--listen", "--config", "--loglevel")]
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
