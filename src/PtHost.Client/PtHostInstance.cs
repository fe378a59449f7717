using System.Globalization;
using System.Runtime.CompilerServices;
using System.Text.Json.Nodes;
using System.Threading.Channels;

namespace PtHost.Client;

/// <summary>Counters of one transport's STATUS line (spec/ipc.md §4.7, spec/adapters.md §2.7).</summary>
public sealed record TransportStats(string Transport, long Connections, long Opened, long Failed, long BytesIn, long BytesOut)
{
    internal static TransportStats? Parse(string line)
    {
        if (!line.StartsWith("STATUS ", StringComparison.Ordinal)) return null;
        var kv = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var part in line.Split(' ', StringSplitOptions.RemoveEmptyEntries).Skip(1))
        {
            int eq = part.IndexOf('=');
            if (eq > 0) kv[part[..eq]] = part[(eq + 1)..];
        }
        if (!kv.TryGetValue("TRANSPORT", out var t)) return null;
        long N(string k) => kv.TryGetValue(k, out var v) && long.TryParse(v, NumberStyles.None, CultureInfo.InvariantCulture, out long n) ? n : 0;
        return new TransportStats(t, N("CONNECTIONS"), N("OPENED"), N("FAILED"), N("BYTES-IN"), N("BYTES-OUT"));
    }
}

/// <summary>
/// What a client and a server share (spec/adapters.md §2.1): one pthost child, its signals (§2.5), its
/// statistics (§2.7) and its ending (§2.4).
/// </summary>
public abstract class PtHostInstance : IAsyncDisposable
{
    private const int SignalQueue = 4096;
    private readonly Channel<string> _signals = Channel.CreateBounded<string>(
        new BoundedChannelOptions(SignalQueue) { FullMode = BoundedChannelFullMode.DropOldest, SingleReader = false, SingleWriter = true });
    private readonly SemaphoreSlim _statsLock = new(1, 1);
    private readonly object _statsGate = new();
    private Dictionary<string, TransportStats>? _statsAnswer;
    private TaskCompletionSource? _statsDone;
    private readonly string _outKeyword, _inKeyword;
    private PtHostProcess _host = null!;

    private protected PtHostInstance(bool server)
    {
        _outKeyword = server ? "SMESSAGE " : "CMESSAGE ";
        _inKeyword = server ? "CMESSAGE " : "SMESSAGE ";
    }

    internal PtHostProcess Host => _host;

    /// <summary>The transports that started (configuration order).</summary>
    public abstract IReadOnlyList<string> Transports { get; }

    public int ProcessId => _host.Pid;

    /// <summary>pthost's last 200 stderr lines.</summary>
    public string Stderr => _host.Stderr;

    /// <summary>Set when pthost has exited (by itself or through <see cref="DisposeAsync"/>).</summary>
    public PtHostExitedException? Error => _host.ExitError;

    private protected async Task<IReadOnlyList<string>> LaunchAsync(PtHostOptions options, JsonObject config, string doneLine, CancellationToken ct)
    {
        var (host, lines) = await PtHostProcess.StartAsync(options, config, doneLine, OnLine, ct).ConfigureAwait(false);
        _host = host;
        host.Exited = _ => _signals.Writer.TryComplete();
        if (host.ExitError is not null) _signals.Writer.TryComplete();
        foreach (var line in lines) OnLine(line);
        return lines;
    }

    private void OnLine(string line)
    {
        if (line.StartsWith(_outKeyword, StringComparison.Ordinal)) _signals.Writer.TryWrite(line);
        else if (TransportStats.Parse(line) is { } stats)
            lock (_statsGate)
            {
                if (_statsAnswer is null) return;
                _statsAnswer[stats.Transport] = stats;
                if (Transports.All(_statsAnswer.ContainsKey)) _statsDone!.TrySetResult();
            }
    }

    /// <summary>
    /// The signal lines pthost writes (<c>CMESSAGE</c> for a client, <c>SMESSAGE</c> for a server), whole, for the
    /// application to carry to the other side (spec/adapters.md §2.5). Ends once pthost has exited. Lines
    /// nobody read are kept, at most 4,096 (the oldest go first).
    /// </summary>
    public async IAsyncEnumerable<string> ReadSignalsAsync([EnumeratorCancellation] CancellationToken ct = default)
    {
        await foreach (var line in _signals.Reader.ReadAllAsync(ct).ConfigureAwait(false)) yield return line;
    }

    /// <summary>Writes a line from the other side (a client takes SMESSAGE, a server CMESSAGE) to pthost's stdin; pthost checks the rest (spec/ipc.md §6.4).</summary>
    public Task SendSignalAsync(string line, CancellationToken ct = default)
    {
        line = line.TrimEnd('\n').TrimEnd('\r');
        if (!line.StartsWith(_inKeyword, StringComparison.Ordinal))
            throw new ArgumentException($"a {(_inKeyword == "SMESSAGE " ? "client" : "server")} takes {_inKeyword.Trim()} lines", nameof(line));
        if (line.Contains('\n') || line.Contains('\r')) throw new ArgumentException("a signal is one line", nameof(line));
        if (_host.ExitError is not null) return Task.CompletedTask; // unreliable by design (spec/ipc.md §6.6)
        return _host.WriteLineAsync(line, ct);
    }

    /// <summary>Carries each one's signals to the other until both have exited or <paramref name="ct"/> ends (spec/adapters.md §2.5 "linked").</summary>
    public static Task LinkSignalsAsync(PtHostInstance a, PtHostInstance b, CancellationToken ct = default)
    {
        static async Task Pump(PtHostInstance from, PtHostInstance to, CancellationToken ct)
        {
            try
            {
                await foreach (var line in from.ReadSignalsAsync(ct).ConfigureAwait(false)) await to.SendSignalAsync(line, ct).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (ct.IsCancellationRequested) { }
            catch (PtHostExitedException) { }
        }
        return Task.WhenAll(Pump(a, b, ct), Pump(b, a, ct));
    }

    /// <summary>
    /// Writes <c>STATUS</c> on stdin and waits (5 s) for one STATUS line per started transport written after it
    /// (spec/adapters.md §2.7): the counters are pthost's at that moment.
    /// </summary>
    public async Task<IReadOnlyDictionary<string, TransportStats>> GetStatsAsync(CancellationToken ct = default)
    {
        if (_host.ExitError is { } e) throw e;
        await _statsLock.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            lock (_statsGate)
            {
                _statsAnswer = new(StringComparer.Ordinal);
                _statsDone = done;
            }
            await _host.WriteLineAsync("STATUS", ct).ConfigureAwait(false);
            await done.Task.WaitAsync(TimeSpan.FromSeconds(5), ct).ConfigureAwait(false);
            lock (_statsGate)
            {
                var answer = _statsAnswer!;
                _statsAnswer = null;
                return answer;
            }
        }
        catch (TimeoutException) when (_host.ExitError is { } exited)
        {
            throw exited;
        }
        finally
        {
            lock (_statsGate) _statsAnswer = null;
            _statsLock.Release();
        }
    }

    /// <summary>Ends pthost (spec/adapters.md §2.4): closes its stdin, waits up to <paramref name="timeout"/> (default 10 s), then kills it.</summary>
    public ValueTask CloseAsync(TimeSpan? timeout = null) => _host is null ? ValueTask.CompletedTask : _host.CloseAsync(timeout ?? TimeSpan.FromSeconds(10));

    public async ValueTask DisposeAsync()
    {
        await CloseAsync().ConfigureAwait(false);
        GC.SuppressFinalize(this);
    }

    /// <summary>spec/adapters.md §2.3: the document with <c>role</c> and <c>exit-on-stdin-close</c> set by the adapter.</summary>
    private protected static JsonObject Prepare(JsonObject config, string role)
    {
        if (config["role"] is { } r && r.ToString() != role) throw new ArgumentException($"role '{r}' given to a {role} adapter", nameof(config));
        if (config["exit-on-stdin-close"] is { } x && x.GetValueKind() == System.Text.Json.JsonValueKind.False)
            throw new ArgumentException("exit-on-stdin-close false: the adapter ends pthost by closing its stdin", nameof(config));
        config["role"] = role;
        config["exit-on-stdin-close"] = true;
        return config;
    }

    private protected static JsonObject Parse(string json) =>
        JsonNode.Parse(json) as JsonObject ?? throw new ArgumentException("the configuration is a JSON object", nameof(json));
}
