using System.Diagnostics;
using PtHost.Quic.Native;

namespace PtHost.Tests.Quic;

/// <summary>Native/Layout.cs against the C headers: compile layout_probe.c with gcc and compare
/// every size and offset. test.sh installs gcc and the -dev packages; without them this fails
/// and says what to install.</summary>
public sealed class QuicLayoutTests
{
    [Fact]
    public async Task Every_hardcoded_size_and_offset_matches_gcc_on_the_installed_headers()
    {
        const string Need = "install gcc libngtcp2-dev libngtcp2-crypto-gnutls-dev libgnutls28-dev (test.sh does)";
        Assert.True(File.Exists("/usr/include/ngtcp2/ngtcp2.h"), "ngtcp2 headers missing: " + Need);
        Assert.True(File.Exists("/usr/include/gnutls/gnutls.h"), "gnutls headers missing: " + Need);
        var dir = Directory.CreateTempSubdirectory("pthost-layout-").FullName;
        try
        {
            var exe = Path.Combine(dir, "probe");
            var source = Path.Combine(AppContext.BaseDirectory, "Quic", "layout_probe.c");
            var (cc, ccOut) = await RunAsync("gcc", ["-o", exe, source]);
            Assert.True(cc == 0, "gcc failed: " + ccOut);
            var (rc, output) = await RunAsync(exe, []);
            Assert.Equal(0, rc);
            var measured = output.Split('\n', StringSplitOptions.RemoveEmptyEntries)
                .Select(l => l.Split('='))
                .ToDictionary(p => p[0], p => long.Parse(p[1]));
            var ours = Layout.All();
            Assert.Equal(measured.Keys.Order(), ours.Keys.Order());
            var mismatches = ours.Where(kv => measured[kv.Key] != kv.Value)
                .Select(kv => $"{kv.Key}: C# {kv.Value}, gcc {measured[kv.Key]}").ToList();
            Assert.True(mismatches.Count == 0, string.Join("; ", mismatches));
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    private static async Task<(int, string)> RunAsync(string file, string[] args)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = System.Diagnostics.Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(120));
        await p.WaitForExitAsync(cts.Token);
        return (p.ExitCode, await stdout + await stderr);
    }
}
