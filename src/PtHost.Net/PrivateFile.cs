using System.Runtime.InteropServices;
using PtHost.Net.Native;

namespace PtHost.Net;

/// <summary>
/// Secret files pthost keeps in a state directory, such as server keys (spec/ipc.md §3.7). A new one is created with
/// <c>O_CREAT|O_EXCL</c> (<see cref="FileMode.CreateNew"/>: an existing file, or a symbolic link of any kind at the
/// path, is an error and is never followed) and mode 0600. One is read only when it is a regular file (not a link),
/// owned by this process's user, and neither readable nor writable by group or others.
/// </summary>
public static class PrivateFile
{
    /// <summary>Creates <paramref name="path"/> holding <paramref name="text"/>; throws <see cref="IOException"/> when anything is there already.</summary>
    public static void WriteNew(string path, string text)
    {
        var options = new FileStreamOptions { Mode = FileMode.CreateNew, Access = FileAccess.Write, Share = FileShare.None };
        if (!OperatingSystem.IsWindows()) options.UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite;
        using var writer = new StreamWriter(path, options);
        writer.Write(text);
    }

    /// <summary>The text of a secret file, after <see cref="Check"/>.</summary>
    public static string ReadAllText(string path)
    {
        Check(path);
        return File.ReadAllText(path);
    }

    /// <summary>
    /// Throws <see cref="UnauthorizedAccessException"/> naming the problem when <paramref name="path"/> is a symbolic
    /// link or not a regular file, is owned by another user, or has any group/other permission bit (Linux; elsewhere
    /// nothing is checked).
    /// </summary>
    public static void Check(string path)
    {
        if (!OperatingSystem.IsLinux()) return;
        if (Libc.StatX(Libc.AtFdCwd, path, Libc.AtSymlinkNoFollow, Libc.StatxType | Libc.StatxMode | Libc.StatxUid, out var st) != 0)
            throw new IOException($"{path}: cannot be examined (errno {Marshal.GetLastPInvokeError()})");
        int type = st.Mode & Libc.SIfMt;
        if (type == Libc.SIfLnk) throw new UnauthorizedAccessException($"{path} is a symbolic link; a key file must be a regular file");
        if (type != Libc.SIfReg) throw new UnauthorizedAccessException($"{path} is not a regular file");
        uint me = Libc.GetEffectiveUserId();
        if (st.Uid != me) throw new UnauthorizedAccessException($"{path} is owned by uid {st.Uid}, not by this process's user (uid {me})");
        if ((st.Mode & 0x3F) != 0)
            throw new UnauthorizedAccessException($"{path} has mode {Convert.ToString(st.Mode & 0xFFF, 8).PadLeft(4, '0')}: a key file must not be open to group or others (chmod 600 it)");
    }
}
