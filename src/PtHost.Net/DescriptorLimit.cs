using PtHost.Net.Native;

namespace PtHost.Net;

/// <summary>
/// The process's file descriptor limit (RLIMIT_NOFILE, spec/ipc.md §7): every pthost process raises
/// its soft limit to the hard limit at start-up, as Go programs do, since each session holds two
/// sockets in each process and a descriptor shortage resets sessions.
/// </summary>
public static class DescriptorLimit
{
    /// <summary>Raises the soft limit to the hard limit; returns both as they are afterwards ((0, 0) when unknown).</summary>
    public static (ulong Soft, ulong Hard) RaiseToHard()
    {
        if (!OperatingSystem.IsLinux()) return (0, 0);
        if (Libc.GetRLimit(Libc.RLimitNoFile, out var limit) != 0) return (0, 0);
        if (limit.Current < limit.Maximum)
        {
            var raised = new Libc.RLimit { Current = limit.Maximum, Maximum = limit.Maximum };
            if (Libc.SetRLimit(Libc.RLimitNoFile, raised) == 0) limit = raised;
        }
        return (limit.Current, limit.Maximum);
    }

    /// <summary>The soft limit now (int.MaxValue when unlimited or unknown, 1,024 off Linux).</summary>
    public static long Soft =>
        !OperatingSystem.IsLinux() ? 1024
        : Libc.GetRLimit(Libc.RLimitNoFile, out var limit) != 0 || limit.Current > int.MaxValue ? int.MaxValue
        : (long)limit.Current;
}
