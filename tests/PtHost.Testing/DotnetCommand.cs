using System.Diagnostics;

namespace PtHost.Testing;

/// <summary><c>dotnet build|publish|pack|test PROJECT -c Release -o OUTPUT [EXTRA...]</c> from a test run (pthost itself, the contract package, the fixture plugin, the tool package).</summary>
public static class DotnetCommand
{
    public static readonly TimeSpan Timeout = TimeSpan.FromMinutes(10); // a NativeAOT publish on a busy 2-core machine takes 3-4

    /// <param name="extra">Further arguments as given, e.g. <c>-p:NAME=VALUE</c>.</param>
    public static async Task RunAsync(string verb, string project, string output, params string[] extra)
    {
        var psi = new ProcessStartInfo(DotnetExecutable())
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
            WorkingDirectory = PtHostExecutable.RepoRoot,
        };
        foreach (string a in new[] { verb, project, "-c", "Release", "-o", output, "--disable-build-servers", "-nologo", "-clp:NoSummary" })
            psi.ArgumentList.Add(a);
        foreach (string a in extra) psi.ArgumentList.Add(a);
        // The test host may run under MSBuild-set variables; a nested build must not inherit them.
        foreach (string key in psi.Environment.Keys.Where(k => k.StartsWith("MSBuild", StringComparison.OrdinalIgnoreCase)).ToList())
            psi.Environment.Remove(key);
        psi.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        psi.Environment["DOTNET_NOLOGO"] = "1";

        using var p = Process.Start(psi) ?? throw new InvalidOperationException("cannot start dotnet");
        p.StandardInput.Close();
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        using var timeout = new CancellationTokenSource(Timeout);
        try
        {
            await p.WaitForExitAsync(timeout.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            Kill(p);
            throw new TimeoutException($"dotnet {verb} {project} took longer than {Timeout}");
        }
        // Output ends when every process holding the pipes has gone; do not wait forever for stray nodes.
        var both = Task.WhenAll(stdout, stderr);
        string text = await both.WaitAsync(TimeSpan.FromSeconds(30)).ConfigureAwait(false) is var r ? r[0] + r[1] : "";
        if (p.ExitCode != 0) throw new InvalidOperationException($"dotnet {verb} {project} exited {p.ExitCode}:\n{text}");
    }

    public static string DotnetExecutable()
    {
        string? host = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH");
        return !string.IsNullOrEmpty(host) && File.Exists(host) ? host : "dotnet";
    }

    private static void Kill(Process p)
    {
        try { if (!p.HasExited) p.Kill(entireProcessTree: true); }
        catch (Exception e) when (e is InvalidOperationException or System.ComponentModel.Win32Exception) { }
    }
}
