namespace PtHost.Tests.Process;

/// <summary>
/// spec/ipc.md §8.5: the NativeAOT build cannot load managed plugins and says which build does; the
/// framework-dependent build takes the same command lines. Runs the native executable (published once
/// when <c>$PTHOST_EXE</c> is not the native one) beside the framework-dependent one.
/// </summary>
[Collection("process")]
public class NativeBuildTests
{
    private const string Refusal = "this pthost is the NativeAOT build, which cannot load managed plugins; the framework-dependent build loads them";

    [Fact]
    public async Task The_native_build_refuses_plugindir_with_78_and_names_the_build_that_loads_plugins()
    {
        string plugins = Directory.CreateTempSubdirectory("pthost-plugins-").FullName;
        try
        {
            string config = "{\"role\":\"client\",\"transports\":[\"plain\"],\"plugindir\":" + Newtonsoft.Json.JsonConvert.ToString(plugins) + "}";
            await using var native = PtProcess.Start(PtHostExecutable.NativeAotPath, [config], null);
            Assert.Equal(78, await native.WaitForExitAsync());
            Assert.Equal("ENV-ERROR config key 'plugindir': " + Refusal + " (dotnet publish src/PtHost, or the dotnet tool pthost)", Assert.Single(native.StdoutLines));
            Assert.Contains("pthost: config key 'plugindir': " + Refusal, native.Stderr, StringComparison.Ordinal);

            // The framework-dependent build starts with the same document (an empty plugin directory).
            await using var fd = PtProcess.StartFrameworkDependent(config.Replace("}", ",\"exit-on-stdin-close\":true}", StringComparison.Ordinal));
            var lines = await fd.ReadUntilDoneAsync();
            Assert.Contains(lines, l => l.StartsWith("CMETHOD plain socks5 ", StringComparison.Ordinal));
            fd.CloseStdin();
            Assert.Equal(0, await fd.WaitForExitAsync());
        }
        finally { Directory.Delete(plugins, true); }
    }

    [Fact]
    public async Task The_native_build_refuses_generate_config_with_plugindir_with_78()
    {
        string plugins = Directory.CreateTempSubdirectory("pthost-plugins-").FullName;
        try
        {
            await using var native = PtProcess.Start(PtHostExecutable.NativeAotPath, ["generate-config", "plain", "--plugindir", plugins], null);
            Assert.Equal(78, await native.WaitForExitAsync());
            Assert.Empty(native.StdoutLines);
            Assert.StartsWith("pthost: generate-config: --plugindir: " + Refusal, Assert.Single(native.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries)), StringComparison.Ordinal);

            await using var fd = PtProcess.StartFrameworkDependent("generate-config", "plain", "--plugindir", plugins);
            Assert.Equal(0, await fd.WaitForExitAsync());
        }
        finally { Directory.Delete(plugins, true); }
    }

    [Fact]
    public async Task The_native_build_is_one_executable_that_runs_with_no_dotnet_installed()
    {
        string native = PtHostExecutable.NativeAotPath;
        Assert.True(PtHostExecutable.IsNativeAot(native));
        Assert.DoesNotContain(Directory.EnumerateFiles(Path.GetDirectoryName(native)!), f => f.EndsWith(".dll", StringComparison.Ordinal));
        // It runs where no .NET is installed: a mount namespace with an empty directory over the .NET root.
        string dotnetRoot = Path.GetFullPath(Path.Combine(System.Runtime.InteropServices.RuntimeEnvironment.GetRuntimeDirectory(), "..", "..", ".."));
        Assert.True(File.Exists(Path.Combine(dotnetRoot, "dotnet")), dotnetRoot + " is not the .NET root");
        await using var p = PtProcess.Start("unshare", ["--mount", "sh", "-c", "mount -t tmpfs none \"$1\" && test ! -e \"$1/dotnet\" && exec \"$2\" --version", "sh", dotnetRoot, native], null);
        Assert.True(await p.WaitForExitAsync() == 0, p.Stderr);
        Assert.StartsWith("pthost ", Assert.Single(p.StdoutLines), StringComparison.Ordinal);
    }
}
