using System.Diagnostics;
using System.Text.RegularExpressions;

namespace PtHost.Client.Tests;

/// <summary>
/// `dotnet pack` makes a package that a fresh console project restores from a folder, offline, and uses against
/// a real pthost: the README's example as written is its Program.cs. Killing that application (SIGKILL) ends
/// its pthost too (spec/adapters.md §2.4: exit-on-stdin-close).
/// </summary>
public sealed partial class PackageTests
{
    [GeneratedRegex("```csharp\n(.*?)```", RegexOptions.Singleline)]
    private static partial Regex CodeBlock();

    [GeneratedRegex(@"^(\d+) bytes, SHA-256 ([0-9a-f]{64}), pthost (\d+)$")]
    private static partial Regex ExampleLine();

    [Fact]
    public async Task PackedPackageRestoresOfflineAndTheReadmeExampleRuns()
    {
        string scratch = Directory.CreateTempSubdirectory("pthost-client-pack-").FullName;
        try
        {
            string feed = Path.Combine(scratch, "feed");
            string version = $"0.1.0-test.{Environment.ProcessId}";
            await DotnetCommand.RunAsync("pack", Path.Combine(PtHostExecutable.RepoRoot, "src", "PtHost.Client"), feed, "-p:PackageVersion=" + version);
            Assert.True(File.Exists(Path.Combine(feed, $"PtHost.Client.{version}.nupkg")));

            string app = Path.Combine(scratch, "app");
            string cache = Environment.GetEnvironmentVariable("NUGET_PACKAGES") is { Length: > 0 } set
                ? set : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");
            Directory.CreateDirectory(app);
            // The only sources: the packed folder, the machine's offline folder and its package cache (System.IO.Hashing).
            await File.WriteAllTextAsync(Path.Combine(app, "nuget.config"), $"""
                <?xml version="1.0" encoding="utf-8"?>
                <configuration>
                  <packageSources>
                    <clear />
                    <add key="packed" value="{feed}" />
                    <add key="offline" value="/opt/nuget/packages" />
                    <add key="cache" value="{cache}" />
                  </packageSources>
                </configuration>
                """);
            await RunAsync(app, "new", "console", "--no-restore", "-o", ".", "-n", "ClientApp");
            await RunAsync(app, "add", "package", "PtHost.Client", "--version", version, "--package-directory", Path.Combine(scratch, "packages"));
            string readme = await File.ReadAllTextAsync(Path.Combine(PtHostExecutable.RepoRoot, "src", "PtHost.Client", "README.md"));
            await File.WriteAllTextAsync(Path.Combine(app, "Program.cs"), CodeBlock().Match(readme).Groups[1].Value);
            await RunAsync(app, "build", "-c", "Release", "-o", Path.Combine(app, "bin-out"), "--packages", Path.Combine(scratch, "packages"));

            await using var web = new HttpFileServer(Support.Body);
            await using var server = await Support.FreePlainServerAsync();
            var psi = new ProcessStartInfo(Path.Combine(app, "bin-out", "ClientApp"))
            {
                RedirectStandardInput = true,
                RedirectStandardOutput = true,
                RedirectStandardError = true,
                UseShellExecute = false,
            };
            psi.ArgumentList.Add(server.EndPoint.ToString());
            psi.ArgumentList.Add($"http://127.0.0.1:{web.Port}/file");
            psi.Environment["PTHOST_EXE"] = PtHostExecutable.Path;

            // Run 1: the example fetches, then ends normally when its stdin closes (dispose ends pthost).
            int pid1;
            using (var p = Process.Start(psi)!)
            {
                pid1 = await ExpectFetchAsync(p);
                p.StandardInput.Close();
                await p.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(30));
                Assert.Equal(0, p.ExitCode);
                Assert.True(Support.Gone(pid1), "pthost ended with the example's dispose");
            }

            // Run 2: the application is killed; its pthost sees stdin close and exits.
            using (var p = Process.Start(psi)!)
            {
                int pid2 = await ExpectFetchAsync(p);
                p.Kill();
                await p.WaitForExitAsync();
                await Eventually.TrueAsync(() => Support.Gone(pid2), "pthost exited after its application was killed", TimeSpan.FromSeconds(15));
            }
        }
        finally
        {
            try { Directory.Delete(scratch, true); } catch (IOException) { }
        }
    }

    private static async Task<int> ExpectFetchAsync(Process p)
    {
        var stderr = p.StandardError.ReadToEndAsync();
        string? line = await p.StandardOutput.ReadLineAsync().WaitAsync(TimeSpan.FromSeconds(60));
        var m = ExampleLine().Match(line ?? "");
        Assert.True(m.Success, $"the example printed '{line}'; stderr: {(p.HasExited ? await stderr : "")}");
        Assert.Equal(Support.Body.Length.ToString(System.Globalization.CultureInfo.InvariantCulture), m.Groups[1].Value);
        Assert.Equal(Support.BodySha, m.Groups[2].Value);
        int pid = int.Parse(m.Groups[3].Value, System.Globalization.CultureInfo.InvariantCulture);
        Assert.False(Support.Gone(pid));
        return pid;
    }

    private static async Task RunAsync(string dir, params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet") { WorkingDirectory = dir, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        foreach (string key in psi.Environment.Keys.Where(k => k.StartsWith("MSBuild", StringComparison.OrdinalIgnoreCase)).ToList()) psi.Environment.Remove(key);
        psi.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        psi.Environment["DOTNET_NOLOGO"] = "1";
        using var p = Process.Start(psi)!;
        var output = Task.WhenAll(p.StandardOutput.ReadToEndAsync(), p.StandardError.ReadToEndAsync());
        await p.WaitForExitAsync().WaitAsync(TimeSpan.FromMinutes(5));
        var text = await output;
        Assert.True(p.ExitCode == 0, $"dotnet {string.Join(' ', args)} exited {p.ExitCode}:\n{text[0]}\n{text[1]}");
    }
}
