using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using PtHost.Net.Native;

namespace PtHost.Hosting;

/// <summary>
/// Stops the host when the parent process goes away (spec/ipc.md §9): on Linux an orphan is
/// re-parented, so getppid(2) changes. Checked once a second.
/// </summary>
internal static class ParentWatch
{
    public static readonly TimeSpan Interval = TimeSpan.FromSeconds(1);

    public static IDisposable? Start(IHostApplicationLifetime lifetime, ILogger log)
    {
        if (!OperatingSystem.IsLinux() && !OperatingSystem.IsMacOS()) return null;
        int parent = Libc.GetParentProcessId();
        return new Timer(_ =>
        {
            int now = Libc.GetParentProcessId();
            if (now == parent) return;
            log.LogInformation("parent process {Parent} is gone (now {Now}); shutting down", parent, now);
            lifetime.StopApplication();
        }, null, Interval, Interval);
    }
}
