using System.Runtime.InteropServices;

namespace PtHost.Testing;

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

    /// <summary>
    /// Open fds that are sockets or pipes: what a session can leak. Regular files are left out: the runtime
    /// opens each assembly it loads (an error path run for the first time loads a few more), and keeps them.
    /// </summary>
    public static int SocketCount(int pid)
    {
        int n = 0;
        foreach (var fd in Directory.GetFileSystemEntries($"/proc/{pid}/fd"))
        {
            try { if (new FileInfo(fd).LinkTarget is { } t && (t.StartsWith("socket:", StringComparison.Ordinal) || t.StartsWith("pipe:", StringComparison.Ordinal))) n++; }
            catch (IOException) { }
        }
        return n;
    }

    /// <summary>Polls until <see cref="SocketCount"/> is at most <paramref name="limit"/> (or the time is up); returns the last count.</summary>
    public static Task<int> WaitForSocketsAtMostAsync(int pid, int limit, TimeSpan within) =>
        Eventually.ValueAsync(() => SocketCount(pid), n => n <= limit, within);

    /// <summary>Polls until <see cref="SocketCount"/> is at least <paramref name="count"/> (connections accepted by the process, not only queued by the kernel) or the time is up; returns the last count.</summary>
    public static Task<int> WaitForSocketsAtLeastAsync(int pid, int count, TimeSpan within) =>
        Eventually.ValueAsync(() => SocketCount(pid), n => n >= count, within);

    /// <summary>How long a socket count must keep one value to count as at rest.</summary>
    public static readonly TimeSpan RestQuiet = TimeSpan.FromMilliseconds(500);

    /// <summary>
    /// The sockets and pipes of each process once none of the counts has changed for <see cref="RestQuiet"/>: the
    /// baseline of a leak check. Sessions are torn down after their client has seen the end, so a count taken at
    /// once may still hold them.
    /// </summary>
    public static async Task<int[]> SocketsAtRestAsync(params int[] pids)
    {
        // One number that changes whenever any of the counts does (each is far below 2^20).
        long Combined() => pids.Aggregate(0L, (acc, pid) => (acc << 20) ^ SocketCount(pid));
        await Eventually.StableAsync(Combined, RestQuiet, TimeSpan.FromSeconds(30), "the socket counts of " + string.Join(", ", pids)).ConfigureAwait(false);
        return [.. pids.Select(SocketCount)];
    }

    /// <summary>The open file descriptors of each process once none of the counts has changed for <see cref="RestQuiet"/>.</summary>
    public static async Task<int[]> FdsAtRestAsync(params int[] pids)
    {
        long Combined() => pids.Aggregate(0L, (acc, pid) => (acc << 20) ^ FdCount(pid));
        await Eventually.StableAsync(Combined, RestQuiet, TimeSpan.FromSeconds(30), "the fd counts of " + string.Join(", ", pids)).ConfigureAwait(false);
        return [.. pids.Select(FdCount)];
    }

    /// <summary>What a process's fds are: counts by kind, TCP sockets by state and local/remote port (for leak reports).</summary>
    public static string FdSummary(int pid)
    {
        var tcp = new Dictionary<string, string>();
        foreach (var file in new[] { "/proc/net/tcp", "/proc/net/tcp6" })
            foreach (var line in File.ReadLines(file).Skip(1))
            {
                var f = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
                string[] states = ["?", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT", "CLOSE", "CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING"];
                int st = Convert.ToInt32(f[3], 16);
                tcp[f[9]] = $"{(st < states.Length ? states[st] : f[3])} {Port(f[1])}->{Port(f[2])}";
            }
        var kinds = new Dictionary<string, int>();
        foreach (var fd in Directory.GetFileSystemEntries($"/proc/{pid}/fd"))
        {
            string target;
            try { target = new FileInfo(fd).LinkTarget ?? "?"; } catch (IOException) { continue; }
            string kind = target.StartsWith("socket:[", StringComparison.Ordinal)
                ? (tcp.TryGetValue(target[8..^1], out var t) ? "tcp " + t : "socket (not tcp)")
                : target.StartsWith('/') ? "file" : target.Split(':')[0];
            kinds[kind] = kinds.GetValueOrDefault(kind) + 1;
        }
        return string.Join("; ", kinds.OrderByDescending(k => k.Value).Select(k => $"{k.Key} ×{k.Value}"));

        static int Port(string hexAddr) => Convert.ToInt32(hexAddr.Split(':')[1], 16);
    }

    /// <summary>The soft and hard RLIMIT_NOFILE of a process ("Max open files" in /proc/PID/limits; "unlimited" as ulong.MaxValue).</summary>
    public static (ulong Soft, ulong Hard) FdLimits(int pid)
    {
        foreach (var line in File.ReadLines($"/proc/{pid}/limits"))
        {
            if (!line.StartsWith("Max open files", StringComparison.Ordinal)) continue;
            var f = line["Max open files".Length..].Split(' ', StringSplitOptions.RemoveEmptyEntries);
            static ulong Value(string v) => v == "unlimited" ? ulong.MaxValue : ulong.Parse(v, System.Globalization.CultureInfo.InvariantCulture);
            return (Value(f[0]), Value(f[1]));
        }
        throw new InvalidOperationException("no \"Max open files\" for " + pid);
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
