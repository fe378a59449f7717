using System.Diagnostics;
using System.Text;
using System.Threading.Channels;

namespace PtHost.Testing;

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

    /// <summary>Whether the process has ended.</summary>
    public bool HasExited => _process.HasExited;

    public static PtProcess StartPthost(params string[] args) => Start(PtHostExecutable.Path, args, null);

    /// <summary>
    /// Starts pthost with RLIMIT_NOFILE set to <paramref name="fdLimit"/> for both the soft and the hard limit
    /// (util-linux <c>prlimit</c> sets them and then execs pthost in the same process, so <see cref="Pid"/> is
    /// pthost's): a descriptor budget that does not depend on the machine the test runs on.
    /// </summary>
    public static PtProcess StartPthostWithFdLimit(ulong fdLimit, params string[] args) =>
        Start(DebianPrograms.Require("/usr/bin/prlimit"), [$"--nofile={fdLimit}:{fdLimit}", "--", PtHostExecutable.Path, .. args], null);

    /// <summary>The framework-dependent build: the one that loads managed plugins (spec/ipc.md §8.5).</summary>
    public static PtProcess StartFrameworkDependent(params string[] args) => Start(PtHostExecutable.FrameworkDependentPath, args, null);

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

    /// <summary>Waits until stderr has said <paramref name="text"/> at least <paramref name="count"/> times (a log line the process writes when the awaited thing happened).</summary>
    public async Task WaitForStderrAsync(string text, int count = 1, TimeSpan? within = null)
    {
        if (!await Eventually.HoldsWithinAsync(() => Occurrences(Stderr, text) >= count, within ?? DefaultWait))
            Assert.Fail($"stderr did not say \"{text}\" {count} time(s) within {(within ?? DefaultWait).TotalSeconds:0} s:\n{Stderr}");
    }

    private static int Occurrences(string haystack, string needle)
    {
        int n = 0;
        for (int at = haystack.IndexOf(needle, StringComparison.Ordinal); at >= 0; at = haystack.IndexOf(needle, at + needle.Length, StringComparison.Ordinal)) n++;
        return n;
    }

    /// <summary>
    /// Asks for the STATUS lines now (spec/ipc.md §4.7, §4.10: the line <c>STATUS</c> on stdin) and returns the
    /// counters of <paramref name="transport"/> from the answer. Reads <see cref="StdoutLines"/>, so it works while
    /// a <see cref="PtChain"/> carries the process's messages.
    /// </summary>
    public async Task<Dictionary<string, long>> QueryStatusAsync(string transport)
    {
        string prefix = $"STATUS TRANSPORT={transport} ";
        int before = StdoutLines.Count(l => l.StartsWith(prefix, StringComparison.Ordinal));
        await WriteLineAsync("STATUS");
        string? line = null;
        await Eventually.TrueAsync(() =>
        {
            var answers = StdoutLines.Where(l => l.StartsWith(prefix, StringComparison.Ordinal)).ToList();
            line = answers.Count > before ? answers[^1] : null;
            return line is not null;
        }, $"a STATUS line for {transport}", DefaultWait);
        return ParseStatus(line!);
    }

    /// <summary>The K=V fields after <c>STATUS TRANSPORT=t</c> (spec/ipc.md §4.7; the relays' lines have the same shape).</summary>
    public static Dictionary<string, long> ParseStatus(string line) =>
        line.Split(' ').Skip(2).Select(kv => kv.Split('=', 2))
            .ToDictionary(kv => kv[0], kv => long.Parse(kv[1], System.Globalization.CultureInfo.InvariantCulture));

    /// <summary>Waits until the process's STATUS says no session of <paramref name="transport"/> is open (CONNECTIONS=0).</summary>
    public Task SessionsClosedAsync(string transport) =>
        Eventually.TrueAsync(async () => (await QueryStatusAsync(transport))["CONNECTIONS"] == 0, $"CONNECTIONS=0 for {transport} in pid {Pid}");

    private readonly SemaphoreSlim _stdinLock = new(1, 1);

    /// <summary>Writes one line to stdin; callers on several threads (a chain's message relay, a STATUS query) do not interleave.</summary>
    public async Task WriteLineAsync(string line)
    {
        await _stdinLock.WaitAsync();
        try
        {
            await _process.StandardInput.WriteAsync(line + "\n");
            await _process.StandardInput.FlushAsync();
        }
        finally { _stdinLock.Release(); }
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

    /// <summary>Runs a program to its end (killed after <paramref name="timeout"/>, default 120 s); its exit code and output.</summary>
    public static async Task<(int Exit, string Stdout, string Stderr)> RunAsync(string file, IEnumerable<string> args, TimeSpan? timeout = null)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = System.Diagnostics.Process.Start(psi)!;
        var o = p.StandardOutput.ReadToEndAsync();
        var e = p.StandardError.ReadToEndAsync();
        using var cts = new CancellationTokenSource(timeout ?? TimeSpan.FromSeconds(120));
        try { await p.WaitForExitAsync(cts.Token); }
        catch (OperationCanceledException)
        {
            p.Kill(true);
            throw new TimeoutException($"{file} did not finish");
        }
        return (p.ExitCode, await o, await e);
    }

    /// <inheritdoc cref="RunAsync(string, IEnumerable{string}, TimeSpan?)"/>
    public static Task<(int Exit, string Stdout, string Stderr)> RunAsync(string file, params string[] args) => RunAsync(file, args, null);

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
