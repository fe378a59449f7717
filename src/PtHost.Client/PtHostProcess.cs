using System.Diagnostics;
using System.Text;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;

namespace PtHost.Client;

/// <summary>
/// One pthost child (spec/adapters.md §2.1, §2.3, §2.4): stdin, stdout and stderr are pipes; one stdout reader,
/// one stderr reader (the last 200 lines kept), serialized stdin writes. Ending: close stdin, wait, kill.
/// </summary>
internal sealed partial class PtHostProcess : IAsyncDisposable
{
    private const int StderrLines = 200;
    private readonly Process _process;
    private readonly SemaphoreSlim _stdinLock = new(1, 1);
    private readonly LinkedList<string> _stderr = new();
    private readonly TaskCompletionSource<IReadOnlyList<string>> _startup = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly List<string> _startupLines = [];
    private readonly string _doneLine;
    private readonly Task _stdoutReader, _stderrReader;
    private readonly string? _ownedState;
    private bool _started;
    private volatile bool _stdoutEnded;
    private int _disposed;

    /// <summary>Every line read after start-up (CMESSAGE/SMESSAGE, STATUS, LOG, ...), on the stdout reader.</summary>
    public Action<string> LineRead { get; }

    /// <summary>Called once when pthost's stdout has ended and the process has exited.</summary>
    public Action<PtHostExitedException>? Exited { get; set; }

    public int Pid => _process.Id;

    public PtHostExitedException? ExitError { get; private set; }

    public bool IsExiting => _stdoutEnded || ProcState.IsExiting(_process.Id);

    private PtHostProcess(Process process, string doneLine, string? ownedState, Action<string> lineRead)
    {
        LineRead = lineRead;
        _process = process;
        _doneLine = doneLine;
        _ownedState = ownedState;
        _stdoutReader = Task.Run(ReadStdoutAsync);
        _stderrReader = Task.Run(ReadStderrAsync);
    }

    /// <summary>spec/adapters.md §2.3 "Executable": explicit, PTHOST_EXE, then PATH.</summary>
    public static string FindExecutable(string? explicitPath)
    {
        string? given = !string.IsNullOrEmpty(explicitPath) ? explicitPath : Environment.GetEnvironmentVariable("PTHOST_EXE");
        if (!string.IsNullOrEmpty(given))
            return File.Exists(given) ? given : throw new FileNotFoundException($"no pthost executable at {given}", given);
        foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries))
        {
            var candidate = Path.Combine(dir, "pthost");
            if (File.Exists(candidate)) return candidate;
        }
        throw new FileNotFoundException("no pthost executable: give its path, set PTHOST_EXE or put pthost on PATH", "pthost");
    }

    /// <summary>Starts <c>pthost '&lt;json&gt;'</c> (spec/ipc.md §2.1 form 6) and waits for <paramref name="doneLine"/>.</summary>
    public static async Task<(PtHostProcess Process, IReadOnlyList<string> Lines)> StartAsync(
        PtHostOptions options, JsonObject config, string doneLine, Action<string> lineRead, CancellationToken ct)
    {
        string? ownedState = null;
        if (config["state"] is null)
        {
            // §2.3 "state": pthost's default (the working directory) would leave <transport>/ directories around.
            ownedState = Directory.CreateTempSubdirectory("pthost-state-").FullName;
            config["state"] = ownedState;
        }
        var psi = new ProcessStartInfo(FindExecutable(options.Executable))
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
            StandardOutputEncoding = new UTF8Encoding(false),
            StandardErrorEncoding = new UTF8Encoding(false),
            StandardInputEncoding = new UTF8Encoding(false),
        };
        psi.ArgumentList.Add(config.ToJsonString());
        foreach (var (k, v) in options.Environment) psi.Environment[k] = v;
        Process process;
        try
        {
            process = Process.Start(psi) ?? throw new PtHostException("pthost did not start");
        }
        catch
        {
            if (ownedState is not null) TryDelete(ownedState);
            throw;
        }
        process.StandardInput.AutoFlush = true;
        var host = new PtHostProcess(process, doneLine, ownedState, lineRead);
        try
        {
            using var limit = CancellationTokenSource.CreateLinkedTokenSource(ct);
            limit.CancelAfter(options.StartTimeout);
            IReadOnlyList<string> lines;
            try
            {
                lines = await host._startup.Task.WaitAsync(limit.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (!ct.IsCancellationRequested)
            {
                throw new PtHostException($"pthost did not write {doneLine} within {options.StartTimeout.TotalSeconds:0.#} s");
            }
            return (host, lines);
        }
        catch
        {
            await host.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    public string Stderr
    {
        get { lock (_stderr) return string.Join('\n', _stderr); }
    }

    public async Task WriteLineAsync(string line, CancellationToken ct = default)
    {
        if (ExitError is { } e) throw e;
        await _stdinLock.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            await _process.StandardInput.WriteAsync((line + "\n").AsMemory(), ct).ConfigureAwait(false);
        }
        catch (IOException) when (IsExiting)
        {
            // A line for a pthost that has exited is dropped (spec/adapters.md §2.5).
        }
        finally
        {
            _stdinLock.Release();
        }
    }

    private async Task ReadStdoutAsync()
    {
        try
        {
            while (await _process.StandardOutput.ReadLineAsync().ConfigureAwait(false) is { } line)
            {
                if (!_started)
                {
                    if (line.StartsWith("CMESSAGE ", StringComparison.Ordinal) || line.StartsWith("SMESSAGE ", StringComparison.Ordinal)) { LineRead(line); continue; }
                    _startupLines.Add(line);
                    if (line == _doneLine)
                    {
                        _started = true;
                        _startup.TrySetResult(_startupLines.ToArray());
                    }
                    continue;
                }
                LineRead(line);
            }
        }
        catch (IOException) { }
        catch (ObjectDisposedException) { }
        _stdoutEnded = true;
        await _process.WaitForExitAsync().ConfigureAwait(false);
        try { await _stderrReader.ConfigureAwait(false); } catch { }
        int code = _process.ExitCode;
        if (!_started) _startup.TrySetException(StartFailure(code));
        var error = new PtHostExitedException(
            Volatile.Read(ref _disposed) != 0 ? "pthost was ended by the adapter" : $"pthost exited with status {Describe(code)}: {LastStderrLine()}",
            code, Stderr);
        ExitError = error;
        Exited?.Invoke(error);
        if (_ownedState is not null) TryDelete(_ownedState);
    }

    private async Task ReadStderrAsync()
    {
        try
        {
            while (await _process.StandardError.ReadLineAsync().ConfigureAwait(false) is { } line)
                lock (_stderr)
                {
                    _stderr.AddLast(line);
                    if (_stderr.Count > StderrLines) _stderr.RemoveFirst();
                }
        }
        catch (IOException) { }
        catch (ObjectDisposedException) { }
    }

    private static string Describe(int code) => code > 128 ? $"{code} (signal {code - 128})" : code.ToString(System.Globalization.CultureInfo.InvariantCulture);

    private string LastStderrLine()
    {
        lock (_stderr) return _stderr.Last?.Value ?? "(no stderr)";
    }

    [GeneratedRegex(@"config key '([^']*)'")]
    private static partial Regex ConfigKey();

    /// <summary>spec/adapters.md §2.6: why a start failed, from the exit status, stdout and stderr.</summary>
    private Exception StartFailure(int code)
    {
        string stderr = Stderr;
        if (code is 78 or 73 or 64)
        {
            string? line;
            lock (_stderr) line = _stderr.LastOrDefault(l => l.StartsWith("pthost: ", StringComparison.Ordinal));
            line ??= _startupLines.LastOrDefault(l => l.StartsWith("ENV-ERROR", StringComparison.Ordinal) || l.StartsWith("VERSION-ERROR", StringComparison.Ordinal));
            line ??= $"pthost exited with status {code}";
            var key = ConfigKey().Match(line) is { Success: true } m ? m.Groups[1].Value : null;
            return new PtHostConfigurationException(line, key, code, stderr);
        }
        if (_startupLines.FirstOrDefault(l => l.StartsWith("CMETHOD-ERROR ", StringComparison.Ordinal) || l.StartsWith("SMETHOD-ERROR ", StringComparison.Ordinal)) is { } err)
            return MethodError(err);
        return new PtHostExitedException($"pthost exited with status {Describe(code)} before {_doneLine}: {LastStderrLine()}", code, stderr);
    }

    /// <summary><c>CMETHOD-ERROR &lt;t&gt; &lt;reason&gt;</c> as a typed error.</summary>
    public static TransportStartException MethodError(string line)
    {
        var parts = line.Split(' ', 3);
        return new TransportStartException(parts.Length > 1 ? parts[1] : "", parts.Length > 2 ? parts[2] : "", parts[0]);
    }

    /// <summary>spec/adapters.md §2.4: close stdin, wait (pthost drains up to 4.75 s), then SIGKILL and wait again.</summary>
    public async ValueTask CloseAsync(TimeSpan timeout)
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            await _stdoutReader.ConfigureAwait(false);
            return;
        }
        await _stdinLock.WaitAsync().ConfigureAwait(false);
        try { _process.StandardInput.Close(); } catch (IOException) { }
        finally { _stdinLock.Release(); }
        using (var cts = new CancellationTokenSource(timeout))
        {
            try { await _process.WaitForExitAsync(cts.Token).ConfigureAwait(false); }
            catch (OperationCanceledException)
            {
                try { _process.Kill(); } catch (InvalidOperationException) { }
                await _process.WaitForExitAsync().ConfigureAwait(false);
            }
        }
        await _stdoutReader.ConfigureAwait(false);
        _process.Dispose();
    }

    public ValueTask DisposeAsync() => CloseAsync(TimeSpan.FromSeconds(10));

    private static void TryDelete(string dir)
    {
        try { Directory.Delete(dir, true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }
}

/// <summary>spec/adapters.md §2.6: whether a process is gone, a zombie, or exiting (PF_EXITING 0x4 in /proc/PID/stat).</summary>
internal static class ProcState
{
    public static bool IsExiting(int pid)
    {
        string stat;
        try { stat = File.ReadAllText($"/proc/{pid}/stat"); }
        catch (IOException) { return true; }
        catch (UnauthorizedAccessException) { return false; }
        int close = stat.LastIndexOf(')');
        if (close < 0) return false;
        var fields = stat[(close + 2)..].Split(' ');
        if (fields[0] is "Z" or "X") return true;
        // Field 9 (flags) is fields[6] after "(comm)".
        return fields.Length > 6 && uint.TryParse(fields[6], out uint flags) && (flags & 0x4) != 0;
    }
}

/// <summary>How to launch pthost (spec/adapters.md §2.3).</summary>
public sealed class PtHostOptions
{
    /// <summary>pthost's path; default: PTHOST_EXE, then PATH.</summary>
    public string? Executable { get; set; }
    public TimeSpan StartTimeout { get; set; } = TimeSpan.FromSeconds(30);
    /// <summary>Extra environment variables for pthost.</summary>
    public IDictionary<string, string> Environment { get; } = new Dictionary<string, string>();
}
