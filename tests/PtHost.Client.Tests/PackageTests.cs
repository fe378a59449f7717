using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Text.RegularExpressions;

namespace PtHost.Client.Tests;

/// <summary>
/// `dotnet pack` makes packages that fresh projects restore from a folder, offline, and use (spec/adapters.md §5.9):
/// each README's example as written is a Program.cs. PtHost.Client runs against a real pthost, and killing that
/// application (SIGKILL) ends its pthost too (§2.4: exit-on-stdin-close); PtHost.Embedded fetches in process through
/// a plain server process; PtHost.AspNetCore serves over plain in process and curl reaches it through a pthost client.
/// </summary>
public sealed partial class PackageTests
{
    [GeneratedRegex(@"^(\d+) bytes, SHA-256 ([0-9a-f]{64}), pthost (\d+)$")]
    private static partial Regex ClientLine();

    [GeneratedRegex(@"^(\d+) bytes, SHA-256 ([0-9a-f]{64})$")]
    private static partial Regex EmbeddedLine();

    [GeneratedRegex(@"^plain server at (\S+)$")]
    private static partial Regex KestrelLine();

    [Fact]
    public async Task PackedClientRestoresOfflineAndTheReadmeExampleRuns()
    {
        using var apps = new OfflineApps();
        await apps.PackAsync("PtHost.Client");
        string exe = await apps.CreateAsync("console", "ClientApp", OfflineApps.ReadmeExample("PtHost.Client"), "PtHost.Client");

        await using var web = new HttpFileServer(Support.Body);
        await using var server = await Support.FreePlainServerAsync();
        var psi = Start(exe, server.EndPoint.ToString(), $"http://127.0.0.1:{web.Port}/file");
        psi.RedirectStandardInput = true;
        psi.Environment["PTHOST_EXE"] = PtHostExecutable.Path;

        // Run 1: the example fetches, then ends normally when its stdin closes (dispose ends pthost).
        using (var p = Process.Start(psi)!)
        {
            int pid1 = await ExpectClientFetchAsync(p);
            p.StandardInput.Close();
            await p.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(30));
            Assert.Equal(0, p.ExitCode);
            Assert.True(Support.Gone(pid1), "pthost ended with the example's dispose");
        }

        // Run 2: the application is killed; its pthost sees stdin close and exits.
        using (var p = Process.Start(psi)!)
        {
            int pid2 = await ExpectClientFetchAsync(p);
            p.Kill();
            await p.WaitForExitAsync();
            await Eventually.TrueAsync(() => Support.Gone(pid2), "pthost exited after its application was killed", TimeSpan.FromSeconds(15));
        }
    }

    [Fact]
    public async Task PackedEmbeddedAndAspNetCoreRestoreOfflineAndTheReadmeExamplesRun()
    {
        using var apps = new OfflineApps();
        // PtHost.Embedded depends on the PtHost.Contract package (plugins share it) and carries the rest inside.
        await apps.PackAsync("PtHost.Contract");
        await apps.PackAsync("PtHost.Embedded");
        await apps.PackAsync("PtHost.AspNetCore");
        string embedded = await apps.CreateAsync("console", "EmbeddedApp", OfflineApps.ReadmeExample("PtHost.Embedded"), "PtHost.Embedded");
        string kestrel = await apps.CreateAsync("web", "KestrelApp", OfflineApps.ReadmeExample("PtHost.AspNetCore"), "PtHost.AspNetCore");

        // PtHost.Embedded: HttpClient over ConnectAsync in process, through a plain server process, 1 MiB by SHA-256.
        await using (var web = new HttpFileServer(Support.Body))
        await using (var server = await Support.FreePlainServerAsync())
        {
            using var p = Process.Start(Start(embedded, server.EndPoint.ToString(), $"http://127.0.0.1:{web.Port}/file"))!;
            var output = Task.WhenAll(p.StandardOutput.ReadToEndAsync(), p.StandardError.ReadToEndAsync());
            await p.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(60));
            var text = await output;
            Assert.True(p.ExitCode == 0, $"exit {p.ExitCode}: {text[1]}");
            var m = EmbeddedLine().Match(text[0].Trim());
            Assert.True(m.Success, $"the example printed '{text[0]}'");
            Assert.Equal(Support.Body.Length.ToString(CultureInfo.InvariantCulture), m.Groups[1].Value);
            Assert.Equal(Support.BodySha, m.Groups[2].Value);
            Assert.True(web.Accepted >= 1);
        }

        // PtHost.AspNetCore: the minimal API over plain in process, reached with curl through a pthost client process.
        var kpsi = Start(kestrel);
        kpsi.RedirectStandardInput = true;
        using var k = Process.Start(kpsi)!;
        try
        {
            string? line = await k.StandardOutput.ReadLineAsync().WaitAsync(TimeSpan.FromSeconds(60));
            var m = KestrelLine().Match(line ?? "");
            Assert.True(m.Success, $"the Kestrel example printed '{line}'");
            await using var client = await PtHostClient.StartAsync(Support.PlainClient(IPEndPoint.Parse(m.Groups[1].Value)), Support.Options());
            Assert.Equal("hello over a pluggable transport\n", await Support.CurlAsync(client.GetSocksEndPoint("plain"), "http://example.invalid/"));
        }
        finally
        {
            k.Kill();
            await k.WaitForExitAsync();
        }
    }

    private static ProcessStartInfo Start(string exe, params string[] args)
    {
        var psi = new ProcessStartInfo(exe) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        return psi;
    }

    private static async Task<int> ExpectClientFetchAsync(Process p)
    {
        var stderr = p.StandardError.ReadToEndAsync();
        string? line = await p.StandardOutput.ReadLineAsync().WaitAsync(TimeSpan.FromSeconds(60));
        var m = ClientLine().Match(line ?? "");
        Assert.True(m.Success, $"the example printed '{line}'; stderr: {(p.HasExited ? await stderr : "")}");
        Assert.Equal(Support.Body.Length.ToString(CultureInfo.InvariantCulture), m.Groups[1].Value);
        Assert.Equal(Support.BodySha, m.Groups[2].Value);
        int pid = int.Parse(m.Groups[3].Value, CultureInfo.InvariantCulture);
        Assert.False(Support.Gone(pid));
        return pid;
    }
}
