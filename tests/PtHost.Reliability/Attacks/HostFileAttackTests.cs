using Newtonsoft.Json.Linq;
using Xunit.Abstractions;

namespace PtHost.Reliability.Attacks;

/// <summary>
/// Issue 24, point 8, files: server keys in the state directory (spec/ipc.md §3.7), the transport plugin directory
/// (§8.2) and the demo's download (§2.4), each attacked through the real pthost by someone who can write where
/// pthost reads or writes.
/// </summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public class HostFileAttackTests(ITestOutputHelper output)
{
    private const UnixFileMode Private = UnixFileMode.UserRead | UnixFileMode.UserWrite;

    private static JObject ServerConfig(string transport, string state) => new()
    {
        ["role"] = "server",
        ["transports"] = new JArray(transport),
        ["allow"] = new JArray("127.0.0.1"),
        ["state"] = state,
        ["options"] = transport == "zephyr" ? new JObject { ["zephyr"] = new JObject { ["anyRelay"] = true, ["clientPins"] = new JArray(new string('a', 64)) } } : new JObject(),
        ["exit-on-stdin-close"] = true,
    };

    private static string KeyPath(string transport, string state) =>
        Path.Combine(state, transport, transport == "rud" ? "rud-key" : "server-key.pem");

    private async Task<string> StartServerAsync(string transport, string state)
    {
        await using var p = PtProcess.StartPthost(ServerConfig(transport, state).ToString(Newtonsoft.Json.Formatting.None));
        var lines = await p.ReadUntilDoneAsync();
        string line = lines.Single(l => l.StartsWith($"SMETHOD {transport} ", StringComparison.Ordinal) || l.StartsWith($"SMETHOD-ERROR {transport} ", StringComparison.Ordinal));
        output.WriteLine($"{transport}: {line}");
        return line;
    }

    /// <summary>
    /// A link planted at the zephyr server key's path in the state directory (jet shares the code, PinnedTls), pointing
    /// at a file of the victim's, or at a path where the victim's file does not exist yet. (rud's state key was already
    /// created with CreateNew, which never follows a link.)
    /// </summary>
    [Theory]
    [InlineData("existing")]
    [InlineData("dangling")]
    public async Task A_link_planted_at_the_server_key_path_is_not_followed(string target)
    {
        const string transport = "zephyr";
        string dir = Directory.CreateTempSubdirectory("pthost-keylink-").FullName;
        try
        {
            string state = Path.Combine(dir, "state"), victim = Path.Combine(dir, "victim.conf");
            if (target == "existing")
            {
                await File.WriteAllTextAsync(victim, "precious\n");
                File.SetUnixFileMode(victim, Private | UnixFileMode.GroupRead | UnixFileMode.OtherRead);
            }
            Directory.CreateDirectory(Path.Combine(state, transport));
            File.CreateSymbolicLink(KeyPath(transport, state), victim);

            string line = await StartServerAsync(transport, state);
            string? after = File.Exists(victim) ? await File.ReadAllTextAsync(victim) : null;
            output.WriteLine(after is null ? "victim: absent" : $"victim now: {after.Length} bytes, mode {File.GetUnixFileMode(victim)}{(after.Contains("PRIVATE KEY", StringComparison.Ordinal) ? ", holding the server's private key" : "")}");
            Assert.Equal(target == "existing" ? "precious\n" : null, after);
            Assert.StartsWith($"SMETHOD-ERROR {transport} ", line);
        }
        finally { Directory.Delete(dir, true); }
    }

    /// <summary>A key created at 0600, then opened to others (or replaced by a link to it): the next start refuses it.</summary>
    [Theory]
    [InlineData("zephyr", "0644")]
    [InlineData("zephyr", "link")]
    [InlineData("rud", "0640")]
    [InlineData("rud", "link")]
    public async Task A_server_key_open_to_others_or_behind_a_link_is_refused(string transport, string change)
    {
        string dir = Directory.CreateTempSubdirectory("pthost-keymode-").FullName;
        try
        {
            string state = Path.Combine(dir, "state"), key = KeyPath(transport, state);
            Assert.StartsWith($"SMETHOD {transport} ", await StartServerAsync(transport, state));
            Assert.Equal(Private, File.GetUnixFileMode(key));
            Assert.StartsWith($"SMETHOD {transport} ", await StartServerAsync(transport, state)); // a private key loads
            if (change == "link")
            {
                string moved = Path.Combine(dir, "elsewhere.key");
                File.Move(key, moved);
                File.CreateSymbolicLink(key, moved);
            }
            else File.SetUnixFileMode(key, (UnixFileMode)Convert.ToInt32(change, 8));
            string line = await StartServerAsync(transport, state);
            Assert.StartsWith($"SMETHOD-ERROR {transport} ", line);
            Assert.Contains(change == "link" ? "is a symbolic link" : $"has mode {change}", line);
        }
        finally { Directory.Delete(dir, true); }
    }

    /// <summary>A plugin directory (or a DLL in it) that someone else could change is code run as pthost.</summary>
    [Theory]
    [InlineData("directory 0777")]
    [InlineData("dll 0666")]
    [InlineData("dll 0620")]
    [InlineData("dll owned by nobody")]
    [InlineData("safe")]
    public async Task A_plugin_directory_others_can_change_is_refused(string setup)
    {
        string dir = Directory.CreateTempSubdirectory("pthost-plugins-").FullName;
        try
        {
            string plugins = Path.Combine(dir, "plugins"), dll = Path.Combine(plugins, "Transport.dll");
            Directory.CreateDirectory(plugins);
            File.SetUnixFileMode(plugins, (UnixFileMode)Convert.ToInt32("755", 8));
            await File.WriteAllTextAsync(dll, "not an assembly: skipped when loading (spec/ipc.md §8.2 step 2)");
            File.SetUnixFileMode(dll, (UnixFileMode)Convert.ToInt32("644", 8));
            if (setup == "directory 0777") File.SetUnixFileMode(plugins, (UnixFileMode)Convert.ToInt32("777", 8));
            else if (setup.StartsWith("dll 0", StringComparison.Ordinal)) File.SetUnixFileMode(dll, (UnixFileMode)Convert.ToInt32(setup[4..], 8));
            else if (setup == "dll owned by nobody")
            {
                // Changing a file's owner needs root (CI runs as root, .ci/run).
                Assert.True(PtHost.Net.Native.Libc.GetEffectiveUserId() == 0, "this case needs root to give the DLL to another user");
                await using var chown = PtProcess.Start("/bin/chown", ["65534", dll], null);
                Assert.Equal(0, await chown.WaitForExitAsync());
            }
            var config = new JObject { ["role"] = "client", ["transports"] = new JArray("plain"), ["plugindir"] = plugins, ["exit-on-stdin-close"] = true };
            // The framework-dependent build: the NativeAOT one refuses plugindir altogether (spec/ipc.md §8.5).
            await using var p = PtProcess.StartFrameworkDependent(config.ToString(Newtonsoft.Json.Formatting.None));
            if (setup == "safe")
            {
                Assert.Contains(await p.ReadUntilDoneAsync(), l => l.StartsWith("CMETHOD plain socks5 ", StringComparison.Ordinal));
                return;
            }
            int exit = await p.WaitForExitAsync(TimeSpan.FromSeconds(20)).ContinueWith(t => t.IsCompletedSuccessfully ? t.Result : -1);
            output.WriteLine($"{setup}: exit {exit}; stdout: {string.Join(" | ", p.StdoutLines)}");
            Assert.Equal(78, exit);
            Assert.StartsWith("ENV-ERROR config key 'plugindir': ", Assert.Single(p.StdoutLines));
            Assert.Contains(setup.StartsWith("directory", StringComparison.Ordinal) ? plugins : dll, p.StdoutLines[0]);
        }
        finally { Directory.Delete(dir, true); }
    }

    /// <summary>
    /// The demo downloaded with curl to <c>$TMPDIR/pthost-demo-&lt;pid&gt;.bin</c>: links planted for the next few
    /// thousand process ids made curl write 1 MiB into the victim's file. Now it writes into a private directory.
    /// </summary>
    [Fact]
    public async Task The_demo_download_cannot_be_redirected_by_a_planted_link()
    {
        DebianPrograms.Require("/usr/bin/curl");
        string dir = Directory.CreateTempSubdirectory("pthost-demotmp-").FullName;
        try
        {
            string victim = Path.Combine(dir, "victim.conf");
            await File.WriteAllTextAsync(victim, "precious\n");
            int last = int.Parse(await File.ReadAllTextAsync("/proc/sys/kernel/ns_last_pid"), System.Globalization.CultureInfo.InvariantCulture);
            for (int pid = last + 1; pid <= last + 3000; pid++) File.CreateSymbolicLink(Path.Combine(dir, $"pthost-demo-{pid}.bin"), victim);
            await using var demo = PtProcess.Start(PtHostExecutable.Path, ["demo"], new Dictionary<string, string> { ["TMPDIR"] = dir });
            int exit = await demo.WaitForExitAsync(TimeSpan.FromSeconds(120));
            output.WriteLine($"demo (pid {demo.Pid}) exit {exit}; {string.Join(" | ", demo.StdoutLines.Where(l => l.Contains("curl", StringComparison.Ordinal)))}");
            long size = new FileInfo(victim).Length;
            output.WriteLine($"victim: {size} bytes");
            Assert.True(demo.Pid > last && demo.Pid <= last + 3000, $"pid {demo.Pid} is outside the planted range {last + 1}-{last + 3000}: the attack was not tried");
            Assert.Equal("precious\n", await File.ReadAllTextAsync(victim));
            Assert.Equal(0, exit);
            Assert.Empty(Directory.EnumerateDirectories(dir)); // the private directory is removed
        }
        finally { Directory.Delete(dir, true); }
    }
}
