using System.Diagnostics;
using System.Net;
using Microsoft.Extensions.Logging;
using PtHost.Contract;
using PtHost.Net.Native;

namespace PtHost.Transports.External;

/// <summary>What a started PT 1.0 child offers: its SOCKS port (client) or its listener and ARGS (server).</summary>
internal sealed record Pt1Endpoint(string Protocol, IPEndPoint EndPoint, IReadOnlyDictionary<string, string> Args);

/// <summary>The child could not be started or did not finish its start-up lines.</summary>
internal sealed class Pt1StartException(string message) : Exception(message);

/// <summary>
/// Runs one external PT 1.0 program as a managed child (spec/external.md §4.4–§4.6): starts it with
/// the PT 1.0 environment, reads its start-up lines, forwards its LOG lines and stderr to our log,
/// restarts it with back-off when it dies, gives up after too many short lives, and stops it with
/// stdin close, then SIGTERM, then SIGKILL.
/// </summary>
internal sealed class Pt1Child : IAsyncDisposable
{
    /// <summary>Variables every child gets (pt-spec §3.2.1): version 1, its state directory, exit on stdin close.</summary>
    internal static Dictionary<string, string> CommonEnvironment(TransportEnvironment context)
    {
        string state = Path.Combine(context.StateDirectory, "pt_state") + Path.DirectorySeparatorChar;
        Directory.CreateDirectory(state);
        return new(StringComparer.Ordinal)
        {
            ["TOR_PT_MANAGED_TRANSPORT_VER"] = "1",
            ["TOR_PT_STATE_LOCATION"] = state,
            ["TOR_PT_EXIT_ON_STDIN_CLOSE"] = "1",
        };
    }

    public static readonly TimeSpan FirstBackoff = TimeSpan.FromSeconds(1);
    public static readonly TimeSpan MaxBackoff = TimeSpan.FromSeconds(30);
    /// <summary>A child that lived this long is healthy: the count of short lives starts again.</summary>
    public static readonly TimeSpan HealthyLife = TimeSpan.FromSeconds(60);
    public static readonly TimeSpan StdinGrace = TimeSpan.FromSeconds(3);
    public static readonly TimeSpan TermGrace = TimeSpan.FromSeconds(3);

    private readonly string _name;
    private readonly ExternalOptions _options;
    private readonly bool _client;
    private readonly Func<IPEndPoint?, IReadOnlyDictionary<string, string>> _environment;
    private readonly ILogger _log;
    private readonly CancellationTokenSource _stopping = new();
    private readonly Lock _lock = new();
    private TaskCompletionSource<Pt1Endpoint> _ready = NewReady();
    private System.Diagnostics.Process? _process;
    private Task? _supervisor;
    private Pt1Endpoint? _first;

    /// <param name="environment">The PT 1.0 variables for a start; its argument is the endpoint the first child reported (null at the first start).</param>
    public Pt1Child(string name, ExternalOptions options, bool client, Func<IPEndPoint?, IReadOnlyDictionary<string, string>> environment, ILogger log)
    {
        _name = name;
        _options = options;
        _client = client;
        _environment = environment;
        _log = log;
    }

    private static TaskCompletionSource<Pt1Endpoint> NewReady() => new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>Starts the child and waits for its start-up lines; throws <see cref="TransportOptionsException"/> when it fails.</summary>
    public async Task<Pt1Endpoint> StartAsync(CancellationToken ct)
    {
        try
        {
            var (process, endpoint) = await RunOnceAsync(null, ct).ConfigureAwait(false);
            _first = endpoint;
            lock (_lock) _process = process;
            _ready.TrySetResult(endpoint);
            _supervisor = SuperviseAsync(process);
            return endpoint;
        }
        catch (Pt1StartException e)
        {
            throw new TransportOptionsException($"{_options.Exec} ({_options.Method}): {e.Message}");
        }
    }

    /// <summary>The running child's endpoint; waits while it restarts; throws <see cref="TransportConnectException"/> once given up.</summary>
    public async ValueTask<Pt1Endpoint> ReadyAsync(CancellationToken ct)
    {
        Task<Pt1Endpoint> ready;
        lock (_lock) ready = _ready.Task;
        try { return await ready.WaitAsync(ct).ConfigureAwait(false); }
        catch (Pt1StartException e) { throw new TransportConnectException(ConnectFailure.General, e.Message); }
    }

    /// <summary>Watches the child; restarts it with back-off when it exits while we still run.</summary>
    private async Task SuperviseAsync(System.Diagnostics.Process process)
    {
        var ct = _stopping.Token;
        int shortLives = 0;
        var backoff = FirstBackoff;
        while (true)
        {
            var started = DateTime.UtcNow;
            try { await process.WaitForExitAsync(ct).ConfigureAwait(false); }
            catch (OperationCanceledException) { return; }
            if (ct.IsCancellationRequested) return;
            lock (_lock)
            {
                _ready = NewReady();
                _process = null;
            }
            var lived = DateTime.UtcNow - started;
            if (lived >= HealthyLife) { shortLives = 0; backoff = FirstBackoff; }
            _log.LogWarning("{Name}: {Exec} (pid {Pid}) exited with code {Code} after {Seconds:0.0} s; restarting in {Backoff:0.#} s",
                _name, _options.Exec, process.Id, process.ExitCode, lived.TotalSeconds, backoff.TotalSeconds);
            process.Dispose();
            while (true)
            {
                if (++shortLives > _options.MaxRestarts)
                {
                    string why = $"{_name}: {_options.Exec} died {shortLives} times in a row; giving up (sessions fail until pthost restarts)";
                    _log.LogError("{Message}", why);
                    lock (_lock) _ready.TrySetException(new Pt1StartException(why));
                    return;
                }
                try { await Task.Delay(backoff, ct).ConfigureAwait(false); }
                catch (OperationCanceledException) { return; }
                backoff = TimeSpan.FromTicks(Math.Min(backoff.Ticks * 2, MaxBackoff.Ticks));
                try
                {
                    var (next, endpoint) = await RunOnceAsync(_first!.EndPoint, ct).ConfigureAwait(false);
                    if (!_client && !endpoint.EndPoint.Equals(_first.EndPoint))
                        _log.LogError("{Name}: the restarted {Exec} listens on {New}, not {Old} as announced in SMETHOD", _name, _options.Exec, endpoint.EndPoint, _first.EndPoint);
                    if (!_client && !endpoint.Args.OrderBy(kv => kv.Key).SequenceEqual(_first.Args.OrderBy(kv => kv.Key)))
                        _log.LogError("{Name}: the restarted {Exec} reports different SMETHOD ARGS than announced", _name, _options.Exec);
                    lock (_lock)
                    {
                        _process = next;
                        _ready.TrySetResult(endpoint);
                    }
                    _log.LogWarning("{Name}: {Exec} restarted (pid {Pid}) on {EndPoint}", _name, _options.Exec, next.Id, endpoint.EndPoint);
                    process = next;
                    break;
                }
                catch (Pt1StartException e)
                {
                    _log.LogWarning("{Name}: restarting {Exec} failed: {Error}; next try in {Backoff:0.#} s", _name, _options.Exec, e.Message, backoff.TotalSeconds);
                }
                catch (OperationCanceledException) { return; }
            }
        }
    }

    /// <summary>Starts one child process and reads its start-up lines (pt-spec §3.3).</summary>
    private async Task<(System.Diagnostics.Process, Pt1Endpoint)> RunOnceAsync(IPEndPoint? previous, CancellationToken ct)
    {
        var psi = new ProcessStartInfo(_options.Exec)
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var a in _options.Args) psi.ArgumentList.Add(a);
        // The child must see our PT 1.0 environment only, not the one pthost itself may have been given.
        foreach (var key in psi.Environment.Keys.Where(k => k.StartsWith("TOR_PT_", StringComparison.Ordinal)).ToList()) psi.Environment.Remove(key);
        var environment = _environment(previous);
        foreach (var (k, v) in environment) psi.Environment[k] = v;
        bool proxyGiven = environment.ContainsKey("TOR_PT_PROXY");

        System.Diagnostics.Process process;
        try { process = System.Diagnostics.Process.Start(psi) ?? throw new Pt1StartException("could not be started"); }
        catch (System.ComponentModel.Win32Exception e) { throw new Pt1StartException($"cannot be started: {e.Message}"); }
        _log.LogInformation("{Name}: started {Exec} (pid {Pid})", _name, _options.Exec, process.Id);

        var startup = new TaskCompletionSource<Pt1Endpoint>(TaskCreationOptions.RunContinuationsAsynchronously);
        _ = PumpStdoutAsync(process, startup, proxyGiven);
        _ = PumpStderrAsync(process);
        try
        {
            var endpoint = await startup.Task.WaitAsync(_options.StartTimeout, ct).ConfigureAwait(false);
            return (process, endpoint);
        }
        catch (TimeoutException)
        {
            await StopProcessAsync(process).ConfigureAwait(false);
            throw new Pt1StartException($"did not finish its start-up lines ({(_client ? "CMETHODS" : "SMETHODS")} DONE) within {_options.StartTimeout.TotalSeconds:0} s");
        }
        catch
        {
            await StopProcessAsync(process).ConfigureAwait(false);
            throw;
        }
    }

    private async Task PumpStdoutAsync(System.Diagnostics.Process process, TaskCompletionSource<Pt1Endpoint> startup, bool proxyGiven)
    {
        Pt1Endpoint? offered = null;
        bool proxyDone = false;
        string? error = null;
        try
        {
            while (await process.StandardOutput.ReadLineAsync().ConfigureAwait(false) is { } text)
            {
                var line = Pt1Line.Parse(text);
                if (line.Keyword == "LOG")
                {
                    var (level, message) = Pt1Wire.ParseLog(line.Rest);
                    _log.Log(level, "{Name}: {Method}: {Message}", _name, _options.Method, Pt1Wire.EscapeControl(message));
                    continue;
                }
                if (startup.Task.IsCompleted)
                {
                    _log.LogDebug("{Name}: {Line}", _name, text);
                    continue;
                }
                try
                {
                    switch (line.Keyword)
                    {
                        case "VERSION":
                            if (line.Rest != "1") error = $"answered \"VERSION {line.Rest}\"; only version 1 was offered";
                            break;
                        case "VERSION-ERROR": error = $"does not speak PT 1.0 (VERSION-ERROR {line.Rest})"; break;
                        case "ENV-ERROR": error = $"ENV-ERROR {line.Rest}"; break;
                        case "PROXY-ERROR": error = $"PROXY-ERROR {line.Rest}"; break;
                        case "PROXY": proxyDone = line.Rest == "DONE"; break;
                        case "CMETHOD" when _client:
                            var (cm, protocol, cep) = Pt1Wire.ParseCmethod(line.Rest);
                            if (cm != _options.Method) break;
                            if (protocol is not ("socks5" or "socks4")) error = $"offers {cm} over \"{protocol}\"; only socks5 and socks4 are supported";
                            else offered = new Pt1Endpoint(protocol, cep, new Dictionary<string, string>());
                            break;
                        case "SMETHOD" when !_client:
                            var (sm, sep, args) = Pt1Wire.ParseSmethod(line.Rest);
                            if (sm == _options.Method) offered = new Pt1Endpoint("", sep, args);
                            break;
                        case "CMETHOD-ERROR" or "SMETHOD-ERROR":
                            var (m, msg) = Pt1Line.Parse(line.Rest) is var l ? (l.Keyword, l.Rest) : default;
                            if (m == _options.Method) error = $"{line.Keyword} {msg}";
                            break;
                        case "CMETHODS" or "SMETHODS" when line.Rest == "DONE":
                            error ??= offered is null ? $"did not offer the method \"{_options.Method}\""
                                : proxyGiven && !proxyDone ? "was given TOR_PT_PROXY but did not answer PROXY DONE (it would bypass the upstream proxy)"
                                : null;
                            break;
                        default:
                            _log.LogDebug("{Name}: {Line}", _name, text);
                            break;
                    }
                }
                catch (FormatException e) { error = e.Message; }
                if (error is not null) startup.TrySetException(new Pt1StartException(error));
                else if (line.Keyword is "CMETHODS" or "SMETHODS" && offered is not null) startup.TrySetResult(offered);
            }
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException or InvalidOperationException) { }
        if (!startup.Task.IsCompleted)
        {
            string code;
            try
            {
                using var wait = new CancellationTokenSource(TimeSpan.FromSeconds(5));
                await process.WaitForExitAsync(wait.Token).ConfigureAwait(false);
                code = process.ExitCode.ToString(System.Globalization.CultureInfo.InvariantCulture);
            }
            catch (Exception e) when (e is OperationCanceledException or InvalidOperationException) { code = "unknown"; }
            startup.TrySetException(new Pt1StartException($"exited (code {code}) before its start-up lines were complete"));
        }
    }

    private async Task PumpStderrAsync(System.Diagnostics.Process process)
    {
        try
        {
            while (await process.StandardError.ReadLineAsync().ConfigureAwait(false) is { } line)
                _log.LogInformation("{Name}: [{Method} stderr] {Line}", _name, _options.Method, Pt1Wire.EscapeControl(line));
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException or InvalidOperationException) { }
    }

    /// <summary>pt-spec §3.6: close stdin (the child has TOR_PT_EXIT_ON_STDIN_CLOSE=1), then SIGTERM, then SIGKILL.</summary>
    private async Task StopProcessAsync(System.Diagnostics.Process process)
    {
        try
        {
            if (process.HasExited) return;
            try { process.StandardInput.Close(); } catch (IOException) { }
            if (await ExitedWithinAsync(process, StdinGrace).ConfigureAwait(false)) return;
            _log.LogInformation("{Name}: {Exec} (pid {Pid}) still runs {Seconds:0} s after stdin closed; sending SIGTERM", _name, _options.Exec, process.Id, StdinGrace.TotalSeconds);
            _ = Libc.Kill(process.Id, 15);
            if (await ExitedWithinAsync(process, TermGrace).ConfigureAwait(false)) return;
            _log.LogWarning("{Name}: {Exec} (pid {Pid}) ignored SIGTERM; killing it", _name, _options.Exec, process.Id);
            process.Kill(entireProcessTree: true);
            await ExitedWithinAsync(process, TermGrace).ConfigureAwait(false);
        }
        catch (InvalidOperationException) { } // already gone
    }

    private static async Task<bool> ExitedWithinAsync(System.Diagnostics.Process process, TimeSpan limit)
    {
        using var cts = new CancellationTokenSource(limit);
        try
        {
            await process.WaitForExitAsync(cts.Token).ConfigureAwait(false);
            return true;
        }
        catch (OperationCanceledException) { return false; }
    }

    public async ValueTask DisposeAsync()
    {
        if (_stopping.IsCancellationRequested) return;
        _stopping.Cancel();
        if (_supervisor is not null) await _supervisor.ConfigureAwait(false);
        System.Diagnostics.Process? p;
        lock (_lock)
        {
            p = _process;
            _process = null;
            _ready.TrySetException(new Pt1StartException($"{_name} is shutting down"));
        }
        if (p is not null)
        {
            await StopProcessAsync(p).ConfigureAwait(false);
            p.Dispose();
        }
        _stopping.Dispose();
    }
}
