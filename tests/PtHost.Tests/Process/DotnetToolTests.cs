namespace PtHost.Tests.Process;

/// <summary>
/// The dotnet tool (packaging/README.md): <c>dotnet pack src/PtHost -p:PackAsTool=true</c> (done by test.sh
/// into <c>$PTHOST_TOOL_SOURCE</c>, else here once), installed offline from that folder alone with
/// <c>dotnet tool install --tool-path</c>, runs the demo and loads plugins (the framework-dependent build).
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
            // Offline: a NuGet configuration naming the folder and nothing else.
            string config = Path.Combine(work, "nuget.config");
            await File.WriteAllTextAsync(config, $"""
                <?xml version="1.0" encoding="utf-8"?>
                <configuration>
                  <packageSources><clear /><add key="local" value="{source}" /></packageSources>
                </configuration>
                """);
            string tools = Path.Combine(work, "tools");
            var install = await PtProcess.RunAsync(DotnetCommand.DotnetExecutable(),
                ["tool", "install", "pthost", "--tool-path", tools, "--configfile", config], TimeSpan.FromMinutes(3));
            Assert.True(install.Exit == 0, install.Stdout + install.Stderr);

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
        }
        finally { Directory.Delete(work, true); }
    }
}
