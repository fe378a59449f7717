using System.Net;
using Newtonsoft.Json.Linq;

namespace PtHost.Tests.Process;

/// <summary>
/// Every JSON text from outside goes through one strict parser and one options reader (spec/ipc.md
/// §3.1, §3.3): a duplicate key or a comment is refused wherever it comes in, and the error names
/// the key's path. The real executable, each entry point.
/// </summary>
[Collection("process")]
public sealed class JsonEntryPointTests
{
    private const string DuplicateInOptions = """{"role":"client","transports":["plain"],"options":{"plain":{"discover":true,"discover":false}}}""";

    [Theory]
    [InlineData("""{"role":"client","role":"server","transports":["plain"]}""", "role", "appears twice")]
    [InlineData(DuplicateInOptions, "options.plain.discover", "appears twice")]
    [InlineData("""{"role":"client", /* c */ "transports":["plain"]}""", "(document)", "not valid JSON")]
    [InlineData("{\"role\":\"client\",\"transports\":[\"plain\"],\"turn\":{\"realm\":\"r\" // c\n}}", "turn", "not valid JSON")]
    public async Task The_configuration_in_argv_refuses_duplicates_and_comments_naming_the_key(string json, string key, string problem)
    {
        await using var p = PtProcess.StartPthost(json);
        Assert.Equal(78, await p.WaitForExitAsync());
        string line = Assert.Single(p.StdoutLines);
        Assert.StartsWith($"ENV-ERROR config key '{key}': ", line, StringComparison.Ordinal);
        Assert.Contains(problem, line, StringComparison.Ordinal);
        Assert.StartsWith($"pthost: config key '{key}': ", Assert.Single(p.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries)), StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(DuplicateInOptions, "options.plain.discover")]
    [InlineData("{\"role\":\"client\",\"transports\":[\"plain\"]}\n// trailing comment\n", "(document)")]
    public async Task The_configuration_file_refuses_duplicates_and_comments_naming_the_key(string json, string key)
    {
        string file = Path.Combine(Directory.CreateTempSubdirectory("pthost-json-").FullName, "config.json");
        await File.WriteAllTextAsync(file, json);
        await using var p = PtProcess.StartPthost("--config", file);
        Assert.Equal(78, await p.WaitForExitAsync());
        Assert.StartsWith($"ENV-ERROR config key '{key}': not valid JSON (RFC 8259): ", Assert.Single(p.StdoutLines), StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_transport_option_error_names_the_key_in_CMETHOD_ERROR()
    {
        var config = new JObject
        {
            ["role"] = "client",
            ["transports"] = new JArray("plain"),
            ["options"] = new JObject { ["plain"] = new JObject { ["serverAddress"] = "nowhere" } },
        };
        await using var p = PtProcess.StartPthost(config.ToString(Newtonsoft.Json.Formatting.None));
        Assert.Equal(69, await p.WaitForExitAsync());
        Assert.Contains("CMETHOD-ERROR plain options.plain.serverAddress: must be \"host:port\", not \"nowhere\"", p.StdoutLines);
    }

    [Theory]
    [InlineData("""{"policy": "api", "policy": "any"}""", "policy: not valid JSON (RFC 8259): appears twice")]
    [InlineData("""{"external": {"tcp": "h:1", "tcp": "h:2"}}""", "external.tcp: not valid JSON (RFC 8259): appears twice")]
    [InlineData("""{"policy": "api" /* c */}""", "(document): not valid JSON (RFC 8259): ")]
    [InlineData("""{"maxConnections": "10"}""", "maxConnections: must be an integer from 1 to 1000000, not a string")]
    public async Task The_JET_relay_configuration_refuses_duplicates_and_comments_naming_the_key(string json, string message)
    {
        string file = Path.Combine(Directory.CreateTempSubdirectory("pthost-json-").FullName, "relay.json");
        await File.WriteAllTextAsync(file, json);
        await AssertRelayRefusesAsync("jet", file, $"configuration {file}: {message}");
    }

    [Theory]
    [InlineData("users", "users.6f0d0f5e-2b4c-4d6a-9c11-0123456789ab: not valid JSON (RFC 8259): appears twice")]
    [InlineData("comment", "(document): not valid JSON (RFC 8259): ")]
    public async Task The_ASPORT_relay_configuration_refuses_duplicates_and_comments_naming_the_key(string edit, string message)
    {
        string dir = Directory.CreateTempSubdirectory("pthost-json-").FullName;
        string file = AsportRelayProcess.WriteConfig(dir);
        string json = await File.ReadAllTextAsync(file);
        json = edit == "users"
            ? json.Replace($"\"{AsportRelayProcess.User}\": \"{AsportRelayProcess.Password}\"", $"\"{AsportRelayProcess.User}\": \"a\", \"{AsportRelayProcess.User}\": \"b\"", StringComparison.Ordinal)
            : json.TrimEnd().TrimEnd('}') + "/* c */ }";
        Assert.NotEqual(await File.ReadAllTextAsync(file), json);
        await File.WriteAllTextAsync(file, json);
        await AssertRelayRefusesAsync("asport", file, $"{file}: {message}");
    }

    /// <summary>The relay exits 78 with nothing on stdout and the message on stderr.</summary>
    private static async Task AssertRelayRefusesAsync(string relay, string configFile, string message)
    {
        await using var p = PtProcess.StartPthost("relay", relay, "--listen", "127.0.0.1:0", "--config", configFile);
        Assert.Equal(78, await p.WaitForExitAsync());
        Assert.Empty(p.StdoutLines);
        Assert.Contains($"pthost: relay {relay}: {message}", p.Stderr, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("""{"destination":"127.0.0.1:1","destination":"127.0.0.1:2"}""")]
    [InlineData("""{"destination":"127.0.0.1:1" /* c */}""")]
    public async Task A_SOCKS_settings_block_with_a_duplicate_or_a_comment_is_answered_0x12(string json)
    {
        await using var echo = new EchoServer();
        await using var chain = await PtChain.StartAsync(PtChain.FreeServer(), ep => PtChain.ClientWith(new JObject { ["serverAddress"] = ep.ToString() }));
        await using var socks = await SocksClient.ConnectAsync(chain.SocksEndPoint);
        await socks.SendAsync([.. SocksClient.Greeting(0x09), .. SocksClient.SettingsBlock(json), .. SocksClient.ConnectIPv4(IPAddress.Loopback, echo.Port)]);
        Assert.Equal(new byte[] { 5, 9 }, await socks.ReadExactlyAsync(2));
        Assert.Equal(0x12, await socks.ReadReplyAsync());
        Assert.Equal(0, echo.Accepted);
    }
}
