namespace PtHost.Testing;

/// <summary>
/// A FIFO the test holds open for reading and writing and reads only when it chooses: one of pthost's pipes as a
/// parent leaves it when it stops reading (spec/ipc.md §4.1, §4.11). Holding the write side too means pthost's
/// open of the FIFO does not wait for a reader.
/// </summary>
public sealed class HeldFifo : IAsyncDisposable
{
    private const uint Fionread = 0x541B;
    private readonly string _directory;

    private HeldFifo(string directory, string path)
    {
        _directory = directory;
        Path = path;
        Stream = new FileStream(path, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite, 1, FileOptions.None);
    }

    /// <summary>The FIFO's path.</summary>
    public string Path { get; }

    /// <summary>The test's handle (read and write, unbuffered).</summary>
    public FileStream Stream { get; }

    public static async Task<HeldFifo> CreateAsync()
    {
        string directory = Directory.CreateTempSubdirectory("pthost-fifo-").FullName;
        string path = System.IO.Path.Combine(directory, "pipe");
        var (made, _, error) = await PtProcess.RunAsync(DebianPrograms.Require("/usr/bin/mkfifo"), path);
        if (made != 0)
        {
            Directory.Delete(directory, recursive: true);
            throw new InvalidOperationException("mkfifo: " + error);
        }
        return new HeldFifo(directory, path);
    }

    /// <summary>
    /// Starts pthost with <paramref name="config"/> and its descriptor <paramref name="descriptor"/> (1: stdout,
    /// 2: stderr) going to this FIFO; the other pipes are the <see cref="PtProcess"/>'s as usual.
    /// </summary>
    public PtProcess StartPthost(int descriptor, string config) =>
        PtProcess.Start("/bin/sh", ["-c", $"exec \"$0\" \"$1\" {descriptor}>\"$2\"", PtHostExecutable.Path, config, Path], null);

    /// <summary>Bytes waiting in the FIFO (FIONREAD); -1 when the call fails.</summary>
    public int Queued() => ioctl((int)Stream.SafeFileHandle.DangerousGetHandle(), Fionread, out int queued) == 0 ? queued : -1;

    [System.Runtime.InteropServices.DllImport("libc", SetLastError = true)]
    private static extern int ioctl(int fd, nuint request, out int value);

    public async ValueTask DisposeAsync()
    {
        await Stream.DisposeAsync();
        Directory.Delete(_directory, recursive: true);
    }
}
