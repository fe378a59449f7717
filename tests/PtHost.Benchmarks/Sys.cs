using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;

namespace PtHost.Benchmarks;

/// <summary>/proc readers, port helpers, tool discovery and installation, publishing pthost.</summary>
public static partial class Sys
{
    /// <summary>A field of /proc/PID/status in KiB (VmRSS, RssAnon, VmHWM, ...).</summary>
    public static long StatusKiB(int pid, string field)
    {
        foreach (var line in File.ReadLines($"/proc/{pid}/status"))
        {
            if (!line.StartsWith(field + ":", StringComparison.Ordinal)) continue;
            var parts = line[(field.Length + 1)..].Trim().Split(' ', StringSplitOptions.RemoveEmptyEntries);
            return long.Parse(parts[0], CultureInfo.InvariantCulture);
        }
        throw new InvalidOperationException($"/proc/{pid}/status has no {field}");
    }

    public static int Threads(int pid) => (int)StatusKiB(pid, "Threads");

    public static int OpenFds(int pid)
    {
        try { return Directory.GetFileSystemEntries($"/proc/{pid}/fd").Length; }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return -1; }
    }

    /// <summary>User+system CPU time of a process in seconds (USER_HZ = 100 on Linux x86-64).</summary>
    public static double CpuSeconds(int pid)
    {
        var (user, system) = CpuSplit(pid);
        return user + system;
    }

    /// <summary>User and system CPU time of a process in seconds.</summary>
    public static (double User, double System) CpuSplit(int pid)
    {
        string stat = File.ReadAllText($"/proc/{pid}/stat");
        var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
        // After "pid (comm) ": state is fields[0]; utime is field 14 overall, i.e. fields[11]; stime fields[12].
        return (long.Parse(fields[11], CultureInfo.InvariantCulture) / 100.0, long.Parse(fields[12], CultureInfo.InvariantCulture) / 100.0);
    }

    /// <summary>The soft limit on open files of this process.</summary>
    public static long OpenFileLimit()
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/self/limits"))
                if (line.StartsWith("Max open files", StringComparison.Ordinal))
                {
                    var parts = line["Max open files".Length..].Split(' ', StringSplitOptions.RemoveEmptyEntries);
                    return parts[0] == "unlimited" ? long.MaxValue : long.Parse(parts[0], CultureInfo.InvariantCulture);
                }
        }
        catch (IOException) { }
        return -1;
    }

    public static string? Which(string program)
    {
        foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? "/usr/local/bin:/usr/bin:/bin").Split(':', StringSplitOptions.RemoveEmptyEntries)
                     .Concat(["/usr/sbin", "/sbin", "/usr/bin"]))
        {
            string p = Path.Combine(dir, program);
            if (File.Exists(p)) return p;
        }
        return null;
    }

    /// <summary>Installs missing Debian packages (apt-get install; on failure apt-get update and retry).</summary>
    public static async Task EnsureToolsAsync(IEnumerable<(string Program, string Package)> tools, Action<string> say)
    {
        var missing = tools.Where(t => Which(t.Program) is null).Select(t => t.Package).Distinct().ToList();
        if (missing.Count == 0) return;
        var env = new Dictionary<string, string?> { ["DEBIAN_FRONTEND"] = "noninteractive" };
        string? aptGet = Which("apt-get") ?? throw new InvalidOperationException($"missing {string.Join(", ", missing)} and no apt-get to install them");
        string[] install = ["install", "-y", "--no-install-recommends", .. missing];
        say($"installing {string.Join(' ', missing)} with apt-get");
        var r = await Child.RunAsync(aptGet, install, TimeSpan.FromMinutes(5), env).ConfigureAwait(false);
        if (r.ExitCode != 0)
        {
            say("apt-get install failed; running apt-get update and retrying");
            var u = await Child.RunAsync(aptGet, ["update"], TimeSpan.FromMinutes(5), env).ConfigureAwait(false);
            if (u.ExitCode != 0) say($"apt-get update exited {u.ExitCode}: {u.StderrTail}");
            r = await Child.RunAsync(aptGet, install, TimeSpan.FromMinutes(5), env).ConfigureAwait(false);
        }
        if (r.ExitCode != 0) throw new InvalidOperationException($"apt-get install {string.Join(' ', missing)} exited {r.ExitCode}: {r.StderrTail}");
        foreach (var (program, package) in tools)
            if (Which(program) is null) throw new InvalidOperationException($"{program} still missing after installing {package}");
    }

    /// <summary>The directory holding PtHost.sln, from the working directory or the harness's own location.</summary>
    public static string? FindRepoRoot()
    {
        foreach (var start in new[] { Directory.GetCurrentDirectory(), AppContext.BaseDirectory })
        {
            for (var d = new DirectoryInfo(start); d is not null; d = d.Parent)
                if (File.Exists(Path.Combine(d.FullName, "PtHost.sln"))) return d.FullName;
        }
        return null;
    }

    /// <summary>dotnet publish src/PtHost -c Release -o OUT; returns OUT/pthost.</summary>
    public static async Task<string> PublishPtHostAsync(string repo, string outDir, Action<string> say, params string[] extra)
    {
        string dotnet = Which("dotnet")
            ?? (Environment.GetEnvironmentVariable("DOTNET_ROOT") is { } root && File.Exists(Path.Combine(root, "dotnet")) ? Path.Combine(root, "dotnet") : null)
            ?? throw new InvalidOperationException("dotnet not found on PATH (or give --pthost PATH)");
        say($"publishing pthost to {outDir}");
        var r = await Child.RunAsync(dotnet, ["publish", Path.Combine(repo, "src", "PtHost"), "-c", "Release", "-o", outDir, "--nologo", "-v", "quiet", .. extra],
            TimeSpan.FromMinutes(15)).ConfigureAwait(false);
        if (r.ExitCode != 0)
            throw new InvalidOperationException($"dotnet publish exited {r.ExitCode}: {Tail(r.Stdout, 2000)} {r.StderrTail}");
        string exe = Path.Combine(outDir, "pthost");
        return File.Exists(exe) ? exe : throw new InvalidOperationException($"dotnet publish did not produce {exe}");
    }

    /// <summary>Sends SIGTERM to <paramref name="pid"/> (no error when it is gone).</summary>
    public static void Terminate(int pid) => _ = kill(pid, 15);

    [System.Runtime.InteropServices.LibraryImport("libc", SetLastError = true)]
    private static partial int kill(int pid, int signal);

    public static string Tail(string s, int chars) => s.Length <= chars ? s : s[^chars..];

    public static string KernelRelease()
    {
        try { return File.ReadAllText("/proc/sys/kernel/osrelease").Trim(); }
        catch (IOException) { return "?"; }
    }

    public static string CpuModel()
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/cpuinfo"))
                if (line.StartsWith("model name", StringComparison.Ordinal)) return line[(line.IndexOf(':') + 1)..].Trim();
        }
        catch (IOException) { }
        return "?";
    }
}
