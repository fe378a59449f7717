using System.Diagnostics;
using System.Text;
using System.Threading.Channels;
using PtHost.Testing;

namespace PtHost.Benchmarks;

/// <summary>
/// A child process with line-by-line stdout (each line time-stamped when read), a bounded tail of
/// stderr, and a global registry so every child is killed when the harness exits for any reason.
/// </summary>
public sealed class Child : IAsyncDisposable
{
    private static readonly List<Child> s_all = [];
    private const int StderrTailLines = 40;

    private readonly Process _process;
    private readonly Channel<(long Timestamp, string Line)> _stdout = Channel.CreateUnbounded<(long, string)>();
    private readonly Queue<string> _stderrTail = new();
    private readonly Task _stdoutPump;
    private readonly Task _stderrPump;
    private readonly StringBuilder? _allStdout;
    private readonly Action<string>? _observer;
    private readonly SemaphoreSlim _stdinLock = new(1, 1);

    public string Name { get; }
    public long StartTimestamp { get; }
    public int Pid => _process.Id;
    public bool HasExited => _process.HasExited;

    private Child(string name, ProcessStartInfo psi, bool captureAllStdout, Action<string>? observer)
    {
        Name = name;
        _observer = observer;
        _allStdout = captureAllStdout ? new StringBuilder() : null;
        _process = new Process { StartInfo = psi };
        StartTimestamp = Stopwatch.GetTimestamp();
        _process.Start();
        lock (s_all) s_all.Add(this);
        _stdoutPump = PumpStdoutAsync();
        _stderrPump = PumpStderrAsync();
    }

    /// <summary>
    /// Starts <paramref name="file"/>; stdin stays open (a pipe) until disposal or <see cref="CloseStdin"/>.
    /// <paramref name="observer"/> sees every stdout line as it is read (on the pump's thread), before waiters do.
    /// </summary>
    public static Child Start(string name, string file, IEnumerable<string> args, IReadOnlyDictionary<string, string?>? env = null,
        bool captureAllStdout = false, Action<string>? observer = null)
    {
        var psi = new ProcessStartInfo(file)
        {
            UseShellExecute = false,
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            StandardOutputEncoding = Encoding.UTF8,
            StandardErrorEncoding = Encoding.UTF8,
        };
        foreach (var a in args) psi.ArgumentList.Add(a);
        // Nested dotnet/MSBuild invocations must not inherit the MSBuild of "dotnet run".
        foreach (var v in new[] { "MSBuildExtensionsPath", "MSBuildSDKsPath", "MSBUILD_EXE_PATH", "MSBuildLoadMicrosoftTargetsReadOnly" })
            psi.Environment.Remove(v);
        if (env is not null)
            foreach (var (k, v) in env)
            {
                if (v is null) psi.Environment.Remove(k);
                else psi.Environment[k] = v;
            }
        return new Child(name, psi, captureAllStdout, observer);
    }

    /// <summary>Runs a command to completion with a timeout (killed on timeout); returns exit code and output.</summary>
    public static async Task<(int ExitCode, string Stdout, string StderrTail)> RunAsync(
        string file, IEnumerable<string> args, TimeSpan timeout, IReadOnlyDictionary<string, string?>? env = null)
    {
        await using var c = Start(Path.GetFileName(file), file, args, env, captureAllStdout: true);
        c.CloseStdin();
        int code;
        try { code = await c.WaitExitAsync(timeout).ConfigureAwait(false); }
        catch (TimeoutException)
        {
            c.Kill();
            throw new TimeoutException($"{file} {string.Join(' ', args)} did not finish within {timeout.TotalSeconds:0} s; stderr: {c.StderrTail}");
        }
        return (code, c.AllStdout, c.StderrTail);
    }

    private async Task PumpStdoutAsync()
    {
        try
        {
            while (await _process.StandardOutput.ReadLineAsync().ConfigureAwait(false) is { } line)
            {
                long ts = Stopwatch.GetTimestamp();
                _observer?.Invoke(line);
                if (_allStdout is not null) lock (_allStdout) _allStdout.Append(line).Append('\n');
                else _stdout.Writer.TryWrite((ts, line));
            }
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException or InvalidOperationException) { }
        finally { _stdout.Writer.TryComplete(); }
    }

    private async Task PumpStderrAsync()
    {
        try
        {
            while (await _process.StandardError.ReadLineAsync().ConfigureAwait(false) is { } line)
                lock (_stderrTail)
                {
                    _stderrLines++;
                    _stderrTail.Enqueue(line);
                    while (_stderrTail.Count > StderrTailLines) _stderrTail.Dequeue();
                }
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException or InvalidOperationException) { }
    }

    public string AllStdout
    {
        get
        {
            if (_allStdout is null) return "";
            lock (_allStdout) return _allStdout.ToString();
        }
    }

    /// <summary>How many stderr lines the child has printed so far.</summary>
    public int StderrLines
    {
        get { lock (_stderrTail) return _stderrLines; }
    }

    private int _stderrLines;

    /// <summary>The stderr lines printed after the first <paramref name="after"/> (as far as the kept tail reaches).</summary>
    public IReadOnlyList<string> StderrSince(int after)
    {
        lock (_stderrTail) return [.. _stderrTail.Skip(Math.Max(0, _stderrTail.Count - (_stderrLines - after)))];
    }

    public string StderrTail
    {
        get { lock (_stderrTail) return string.Join(" | ", _stderrTail); }
    }

    /// <summary>Reads stdout lines until one satisfies <paramref name="match"/>; throws on timeout, EOF, or a line <paramref name="fail"/> accepts.</summary>
    public async Task<(long Timestamp, string Line)> WaitForLineAsync(Func<string, bool> match, TimeSpan timeout, Func<string, bool>? fail = null)
    {
        using var cts = new CancellationTokenSource(timeout);
        try
        {
            while (true)
            {
                var item = await _stdout.Reader.ReadAsync(cts.Token).ConfigureAwait(false);
                if (fail is not null && fail(item.Line))
                    throw new InvalidOperationException($"{Name} printed \"{item.Line}\"; stderr: {StderrTail}");
                if (match(item.Line)) return item;
            }
        }
        catch (OperationCanceledException)
        {
            throw new TimeoutException($"{Name}: expected line not seen within {timeout.TotalMilliseconds:0} ms; stderr: {StderrTail}");
        }
        catch (ChannelClosedException)
        {
            await Eventually.CompletesWithinAsync(_stderrPump, TimeSpan.FromMilliseconds(500)).ConfigureAwait(false); // its last words, if they come at once
            throw new InvalidOperationException($"{Name} closed stdout (exited={_process.HasExited}) before the expected line; stderr: {StderrTail}");
        }
    }

    public async Task<int> WaitExitAsync(TimeSpan timeout)
    {
        using var cts = new CancellationTokenSource(timeout);
        try { await _process.WaitForExitAsync(cts.Token).ConfigureAwait(false); }
        catch (OperationCanceledException) { throw new TimeoutException($"{Name} did not exit within {timeout.TotalSeconds:0.#} s"); }
        // Let the pumps see EOF so captured output is complete.
        // (Bounded: a grandchild that inherited the pipes would hold them open.)
        await Eventually.CompletesWithinAsync(Task.WhenAll(_stdoutPump, _stderrPump), TimeSpan.FromSeconds(2)).ConfigureAwait(false);
        return _process.ExitCode;
    }

    /// <summary>Writes one line to the child's stdin (serialised; a closed pipe is ignored).</summary>
    public async Task WriteLineAsync(string line)
    {
        await _stdinLock.WaitAsync().ConfigureAwait(false);
        try
        {
            await _process.StandardInput.WriteAsync(line + "\n").ConfigureAwait(false);
            await _process.StandardInput.FlushAsync().ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or InvalidOperationException or ObjectDisposedException) { }
        finally { _stdinLock.Release(); }
    }

    public void CloseStdin()
    {
        try { _process.StandardInput.Close(); }
        catch (Exception e) when (e is IOException or InvalidOperationException or ObjectDisposedException) { }
    }

    public void Kill()
    {
        try { if (!_process.HasExited) _process.Kill(entireProcessTree: true); }
        catch (Exception e) when (e is InvalidOperationException or System.ComponentModel.Win32Exception or NotSupportedException) { }
    }

    /// <summary>Closes stdin (pthost's orderly shutdown), waits up to <paramref name="grace"/>, then kills.</summary>
    public async Task<int?> StopAsync(TimeSpan grace)
    {
        CloseStdin();
        try { return await WaitExitAsync(grace).ConfigureAwait(false); }
        catch (TimeoutException)
        {
            Kill();
            try { await WaitExitAsync(TimeSpan.FromSeconds(5)).ConfigureAwait(false); } catch (TimeoutException) { }
            return null;
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (!_process.HasExited) await StopAsync(TimeSpan.FromSeconds(5)).ConfigureAwait(false);
        lock (s_all) s_all.Remove(this);
        _process.Dispose();
    }

    /// <summary>Kills every child still running (exit handlers, Ctrl-C, watchdog).</summary>
    public static void KillAll()
    {
        Child[] all;
        lock (s_all) all = [.. s_all];
        foreach (var c in all) c.Kill();
    }
}
