using System.Runtime.InteropServices;

namespace PtHost.Reliability.Support;

/// <summary>Open file descriptors and resident memory of a process, read from /proc.</summary>
public static class ProcStats
{
    public static int FdCount(int pid) => Directory.GetFileSystemEntries($"/proc/{pid}/fd").Length;

    /// <summary>VmRSS in bytes.</summary>
    public static long RssBytes(int pid)
    {
        foreach (var line in File.ReadLines($"/proc/{pid}/status"))
            if (line.StartsWith("VmRSS:", StringComparison.Ordinal))
                return long.Parse(line["VmRSS:".Length..].Trim().Split(' ')[0], System.Globalization.CultureInfo.InvariantCulture) * 1024;
        throw new InvalidOperationException("no VmRSS for " + pid);
    }

    /// <summary>Polls until the fd count is at most <paramref name="limit"/> (or the time is up); returns the last count.</summary>
    public static async Task<int> WaitForFdsAtMostAsync(int pid, int limit, TimeSpan within)
    {
        var deadline = DateTime.UtcNow + within;
        int n;
        while ((n = FdCount(pid)) > limit && DateTime.UtcNow < deadline) await Task.Delay(250);
        return n;
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct RLimit { public ulong Cur; public ulong Max; }

    [DllImport("libc", SetLastError = true)]
    private static extern int getrlimit(int resource, out RLimit rlim);

    [DllImport("libc", SetLastError = true)]
    private static extern int setrlimit(int resource, ref RLimit rlim);

    private const int RlimitNofile = 7;

    /// <summary>Raises this process's RLIMIT_NOFILE soft limit to the hard limit (children inherit it); returns the soft limit now in force.</summary>
    public static ulong RaiseFdLimit()
    {
        if (getrlimit(RlimitNofile, out var l) != 0) return 0;
        if (l.Cur < l.Max)
        {
            var raised = new RLimit { Cur = l.Max, Max = l.Max };
            if (setrlimit(RlimitNofile, ref raised) == 0) return l.Max;
        }
        return l.Cur;
    }
}
