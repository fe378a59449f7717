namespace PtHost.Tests.Process;

/// <summary>
/// The dotnet tool (packaging/README.md): <c>dotnet pack src/PtHost -p:PackAsTool=true</c> (done by test.sh
/// into <c>$PTHOST_TOOL_SOURCE</c>, else here once), installed with <c>dotnet tool install --global pthost
/// --add-source DIR</c> in a network namespace with no network (truly offline), run from the global tool
/// folder, and uninstalled; it runs the demo and loads plugins (the framework-dependent build).
/// </summary>
[Collection("process")]
public class DotnetToolTests
{
    private static readonly Lazy<Task<string>> s_source = new(PackAsync, LazyThreadSafetyMode.ExecutionAndPublication);

    private static async Task<string> PackAsync()
    {
        string? env = Environment.GetEnvironmentVariable("PTHOST_TOOL_SOURCE");
        if (!string.IsNullOrEmpty(env)) return env;
        string output = Directory.CreateTempSubdirectory("pthost-tool-source-").FullName;
        await DotnetCommand.RunAsync("pack", Path.Combine(PtHostExecutable.RepoRoot, "src", "PtHost"), output, "-p:PackAsTool=true");
        return output;
    }

    [Fact]
    public async Task Installs_offline_from_a_local_folder_and_runs()
    {
        string source = await s_source.Value;
        string nupkg = Assert.Single(Directory.GetFiles(source, "pthost.*.nupkg"));
        string work = Directory.CreateTempSubdirectory("pthost-tool-").FullName;
        try
        {
            // --global installs under $DOTNET_CLI_HOME/.dotnet/tools: a home of the test's own, so the machine's is untouched.
            // Offline for real: a network namespace with loopback only (unshare -n; -r as a user). The default source,
            // nuget.org, cannot be reached there, hence --ignore-failed-sources (packaging/README.md).
            var env = new Dictionary<string, string> { ["HOME"] = work, ["DOTNET_CLI_HOME"] = work, ["DOTNET_NOLOGO"] = "1", ["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1" };
            string[] offline = Environment.UserName == "root" ? ["-n"] : ["-rn"];
            string tools = Path.Combine(work, ".dotnet", "tools");
            var install = await RunAsync("unshare", [.. offline, DotnetCommand.DotnetExecutable(), "tool", "install", "--global", "pthost", "--add-source", source, "--ignore-failed-sources"], env);
            Assert.True(install.Exit == 0, install.Output);
            Assert.Contains("was successfully installed", install.Output, StringComparison.Ordinal);
            var list = await RunAsync(DotnetCommand.DotnetExecutable(), ["tool", "list", "--global"], env);
            Assert.Matches(@"(?m)^pthost\s+\d+\.\d+\.\d+\s+pthost\s*$", list.Output);

            string pthost = Path.Combine(tools, "pthost");
            var version = await PtProcess.RunAsync(pthost, "--version");
            Assert.Equal(0, version.Exit);
            Assert.StartsWith($"pthost {Path.GetFileNameWithoutExtension(nupkg)["pthost.".Length..]} (commit ", version.Stdout, StringComparison.Ordinal);

            var demo = await PtProcess.RunAsync(pthost, ["demo"], TimeSpan.FromMinutes(1));
            Assert.True(demo.Exit == 0, demo.Stdout + demo.Stderr);
            Assert.EndsWith("demo: demo OK", demo.Stdout.Trim(), StringComparison.Ordinal);

            // The tool is the build that loads plugins (spec/ipc.md §8.5): an empty plugin directory is accepted.
            string plugins = Directory.CreateDirectory(Path.Combine(work, "plugins")).FullName;
            var generate = await PtProcess.RunAsync(pthost, ["generate-config", "plain", "--plugindir", plugins], TimeSpan.FromMinutes(1));
            Assert.True(generate.Exit == 0, generate.Stderr);

            var uninstall = await RunAsync(DotnetCommand.DotnetExecutable(), ["tool", "uninstall", "--global", "pthost"], env);
            Assert.True(uninstall.Exit == 0, uninstall.Output);
            Assert.False(File.Exists(pthost), "the tool's command is left behind");
        }
        finally { Directory.Delete(work, true); }
    }

    private static async Task<(int Exit, string Output)> RunAsync(string file, string[] args, Dictionary<string, string> env)
    {
        await using var p = PtProcess.Start(file, args, env);
        int exit = await p.WaitForExitAsync(TimeSpan.FromMinutes(3));
        return (exit, string.Join('\n', p.StdoutLines) + "\n" + p.Stderr);
    }
}
