using System.Runtime.InteropServices;
using PtHost.Net.Native;

namespace PtHost.Plugins;

/// <summary>
/// spec/ipc.md §8.2: pthost runs the code in <c>plugindir</c> with its own rights, so the directory and every
/// <c>*.dll</c> in it (each may be loaded, as a plugin or as a dependency) must be owned by this process's user or
/// by root, and not writable by group or others. Anyone else who could change them could run code as pthost.
/// </summary>
public static class PluginDirectory
{
    /// <summary>Null when <paramref name="directory"/> may be used; else why not, naming the path (Linux; elsewhere null).</summary>
    public static string? Problem(string directory)
    {
        if (!OperatingSystem.IsLinux()) return null;
        if (ProblemOf(directory) is { } d) return d;
        foreach (string path in Directory.EnumerateFiles(directory, "*.dll").Order(StringComparer.Ordinal))
            if (ProblemOf(path) is { } f) return f;
        return null;
    }

    private static string? ProblemOf(string path)
    {
        // Links are followed: what counts is the file that would be loaded.
        if (Libc.StatX(Libc.AtFdCwd, path, 0, Libc.StatxMode | Libc.StatxUid, out var st) != 0)
            return $"\"{path}\" cannot be examined (errno {Marshal.GetLastPInvokeError()})";
        uint me = Libc.GetEffectiveUserId();
        if (st.Uid != me && st.Uid != 0)
            return $"\"{path}\" is owned by uid {st.Uid}, neither this process's user (uid {me}) nor root: plugins run with pthost's rights";
        if ((st.Mode & 0x12) != 0) // S_IWGRP | S_IWOTH
            return $"\"{path}\" has mode {Convert.ToString(st.Mode & 0xFFF, 8).PadLeft(4, '0')}: writable by group or others, who could then run code as pthost (chmod go-w it)";
        return null;
    }
}
