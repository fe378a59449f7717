using System.Diagnostics;
using System.Text;
using System.Threading.Channels;

namespace PtHost.Tests.Process;

/// <summary>A running pthost (or other) process whose stdout lines are collected and checked.</summary>
public sealed class PtProcess : IAsyncDisposable
{
    public static readonly TimeSpan DefaultWait = TimeSpan.FromSeconds(20);

    /// <summary>The keywords spec/ipc.md §4 allows on stdout.</summary>
    public static readonly string[] ProtocolKeywords =
        ["VERSION", "VERSION-ERROR", "ENV-ERROR", "CMETHOD", "CMETHOD-ERROR", "CMETHODS", "SMETHOD", "SMETHOD-ERROR", "SMETHODS", "LOG", "STATUS", "CMESSAGE", "SMESSAGE", "PROXY", "PROXY-ERROR"];

    private readonly System.Diagnostics.Process _process;
    private readonly Channel<string> _lines = Channel.CreateUnbounded<string>();
    private readonly List<string> _stdout = [];
    private readonly StringBuilder _stderr = new();
    private readonly Task _stdoutPump;
    private readonly Task _stderrPump;

    private readonly string? _scratch;

    private PtProcess(System.Diagnostics.Process process, string? scratch)
    {
        _process = process;
        _scratch = scratch;
        _stdoutPump = Task.Run(async () =>
        {
            while (await process.StandardOutput.ReadLineAsync() is { } line)
            {
                lock (_stdout) _stdout.Add(line);
                _lines.Writer.TryWrite(line);
            }
            _lines.Writer.TryComplete();
        });
        _stderrPump = Task.Run(async () =>
        {
            while (await process.StandardError.ReadLineAsync() is { } line)
                lock (_stderr) _stderr.AppendLine(line);
        });
    }

    public int Pid => _process.Id;

    public static PtProcess StartPthost(params string[] args) => Start(PtHostExecutable.Path, args, null);

    public static PtProcess Start(string file, IEnumerable<string> args, IDictionary<string, string>? env, string? workingDirectory = null)
    {
        var psi = new ProcessStartInfo(file)
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        // Each process gets a working directory of its own: "state" defaults to it.
        string? scratch = workingDirectory is null ? Directory.CreateTempSubdirectory("pthost-proc-").FullName : null;
        psi.WorkingDirectory = workingDirectory ?? scratch!;
        foreach (var a in args) psi.ArgumentList.Add(a);
        if (env is not null) foreach (var (k, v) in env) psi.Environment[k] = v;
        return new PtProcess(System.Diagnostics.Process.Start(psi)!, scratch);
    }

    public IReadOnlyList<string> StdoutLines { get { lock (_stdout) return [.. _stdout]; } }
    public string Stderr { get { lock (_stderr) return _stderr.ToString(); } }

    /// <summary>Next stdout line (in order), failing after <paramref name="timeout"/>.</summary>
    public async Task<string> ReadLineAsync(TimeSpan? timeout = null)
    {
        using var cts = new CancellationTokenSource(timeout ?? DefaultWait);
        try { return await _lines.Reader.ReadAsync(cts.Token); }
        catch (OperationCanceledException) { throw new TimeoutException("no stdout line in time; stderr:\n" + Stderr); }
        catch (ChannelClosedException) { throw new EndOfStreamException("stdout closed; stderr:\n" + Stderr); }
    }

    /// <summary>Reads lines until one starts with <paramref name="prefix"/>; returns it.</summary>
    public async Task<string> WaitForLineAsync(string prefix, TimeSpan? timeout = null)
    {
        var deadline = DateTime.UtcNow + (timeout ?? DefaultWait);
        while (true)
        {
            var left = deadline - DateTime.UtcNow;
            if (left <= TimeSpan.Zero) throw new TimeoutException($"no line starting \"{prefix}\"; stdout so far:\n{string.Join('\n', StdoutLines)}\nstderr:\n{Stderr}");
            string line = await ReadLineAsync(left);
            if (line.StartsWith(prefix, StringComparison.Ordinal)) return line;
        }
    }

    /// <summary>Reads the start-up lines up to and including CMETHODS/SMETHODS DONE.</summary>
    public async Task<List<string>> ReadUntilDoneAsync()
    {
        var lines = new List<string>();
        while (true)
        {
            string line = await ReadLineAsync();
            lines.Add(line);
            if (line is "CMETHODS DONE" or "SMETHODS DONE") return lines;
        }
    }

    public async Task WriteLineAsync(string line)
    {
        await _process.StandardInput.WriteAsync(line + "\n");
        await _process.StandardInput.FlushAsync();
    }

    public void CloseStdin() => _process.StandardInput.Close();

    public void Signal(int signal) => _ = kill(_process.Id, signal);

    [System.Runtime.InteropServices.DllImport("libc", SetLastError = true)]
    private static extern int kill(int pid, int sig);

    public async Task<int> WaitForExitAsync(TimeSpan? timeout = null)
    {
        using var cts = new CancellationTokenSource(timeout ?? DefaultWait);
        try { await _process.WaitForExitAsync(cts.Token); }
        catch (OperationCanceledException) { throw new TimeoutException("process did not exit in time; stderr:\n" + Stderr); }
        await Task.WhenAll(_stdoutPump, _stderrPump).WaitAsync(TimeSpan.FromSeconds(5));
        return _process.ExitCode;
    }

    /// <summary>Asserts that every stdout line so far is a protocol line (spec/ipc.md §4).</summary>
    public void AssertOnlyProtocolLinesOnStdout()
    {
        foreach (var line in StdoutLines)
        {
            string keyword = line.Split(' ', 2)[0];
            Assert.True(Array.IndexOf(ProtocolKeywords, keyword) >= 0, $"non-protocol line on stdout: \"{line}\"");
        }
    }

    private int _disposed;

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 1) return;
        if (!_process.HasExited)
        {
            try { _process.Kill(true); } catch (InvalidOperationException) { }
            await _process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(10)).ContinueWith(_ => { });
        }
        _process.Dispose();
        if (_scratch is not null)
        {
            try { Directory.Delete(_scratch, recursive: true); }
            catch (IOException) { }
        }
    }
}
