using System.Diagnostics;
using System.Text.RegularExpressions;

namespace PtHost.Client.Tests;

/// <summary>
/// The packages as an application meets them (spec/adapters.md §5.9): <c>dotnet pack</c> into a folder, then fresh
/// <c>dotnet new</c> projects whose nuget.config names only that folder, the machine's offline folder and its
/// package cache, so that restore works offline and takes our packages from the folder and nowhere else. Each
/// project's Program.cs is a README's example as written. One instance is one scratch directory, removed on dispose.
/// </summary>
internal sealed partial class OfflineApps : IDisposable
{
    [GeneratedRegex("```csharp\n(.*?)```", RegexOptions.Singleline)]
    private static partial Regex CodeBlock();

    private readonly string _scratch = Directory.CreateTempSubdirectory("pthost-packed-").FullName;

    private string Feed => Path.Combine(_scratch, "feed");

    private string Packages => Path.Combine(_scratch, "packages");

    /// <summary>A version no cache holds, so that restore must take the packed package.</summary>
    public string Version { get; } = $"0.1.0-test.{Environment.ProcessId}";

    /// <summary>Packs src/<paramref name="project"/> into the folder; returns the package file.</summary>
    public async Task<string> PackAsync(string project)
    {
        await DotnetCommand.RunAsync("pack", Path.Combine(PtHostExecutable.RepoRoot, "src", project), Feed, "-p:PackageVersion=" + Version);
        string package = Path.Combine(Feed, $"{project}.{Version}.nupkg");
        Assert.True(File.Exists(package), package + " was not packed");
        return package;
    }

    /// <summary>The first C# block of src/<paramref name="project"/>/README.md.</summary>
    public static string ReadmeExample(string project) =>
        CodeBlock().Match(File.ReadAllText(Path.Combine(PtHostExecutable.RepoRoot, "src", project, "README.md"))).Groups[1].Value;

    /// <summary>
    /// <c>dotnet new <paramref name="template"/></c> as <paramref name="name"/>, <c>dotnet add package</c> each packed
    /// <paramref name="packages"/> entry (restored offline), <paramref name="program"/> as Program.cs, built; returns the
    /// executable.
    /// </summary>
    public async Task<string> CreateAsync(string template, string name, string program, params string[] packages)
    {
        string app = Path.Combine(_scratch, name);
        Directory.CreateDirectory(app);
        string cache = Environment.GetEnvironmentVariable("NUGET_PACKAGES") is { Length: > 0 } set
            ? set : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");
        await File.WriteAllTextAsync(Path.Combine(app, "nuget.config"), $"""
            <?xml version="1.0" encoding="utf-8"?>
            <configuration>
              <packageSources>
                <clear />
                <add key="packed" value="{Feed}" />
                <add key="offline" value="/opt/nuget/packages" />
                <add key="cache" value="{cache}" />
              </packageSources>
            </configuration>
            """);
        await RunAsync(app, "new", template, "--no-restore", "-o", ".", "-n", name);
        foreach (string package in packages)
            await RunAsync(app, "add", "package", package, "--version", Version, "--package-directory", Packages);
        await File.WriteAllTextAsync(Path.Combine(app, "Program.cs"), program);
        await RunAsync(app, "build", "-c", "Release", "-o", Path.Combine(app, "bin-out"), "--packages", Packages);
        return Path.Combine(app, "bin-out", name);
    }

    private static async Task RunAsync(string dir, params string[] args)
    {
        var psi = new ProcessStartInfo(DotnetCommand.DotnetExecutable()) { WorkingDirectory = dir, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        foreach (string key in psi.Environment.Keys.Where(k => k.StartsWith("MSBuild", StringComparison.OrdinalIgnoreCase)).ToList()) psi.Environment.Remove(key);
        psi.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        psi.Environment["DOTNET_NOLOGO"] = "1";
        using var p = Process.Start(psi)!;
        var output = Task.WhenAll(p.StandardOutput.ReadToEndAsync(), p.StandardError.ReadToEndAsync());
        await p.WaitForExitAsync().WaitAsync(DotnetCommand.Timeout);
        var text = await output;
        Assert.True(p.ExitCode == 0, $"dotnet {string.Join(' ', args)} exited {p.ExitCode}:\n{text[0]}\n{text[1]}");
    }

    public void Dispose()
    {
        try { Directory.Delete(_scratch, true); } catch (IOException) { }
    }
}
