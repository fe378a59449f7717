using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Newtonsoft.Json.Linq;
using PtHost.Contract;
using PtHost.Net;
using PtHost.Net.Signals;

namespace PtHost.Embedded;

/// <summary>
/// What the in-process client and server share (spec/adapters.md §5.8): the document's <c>transports</c>,
/// <c>options</c> and <c>state</c>, the transports' counters, and signals as method calls and an event, with the
/// executable's envelope rules (<see cref="SignalEnvelopes"/>: ids, duplicates, expiry).
/// </summary>
public abstract class EmbeddedInstance : IAsyncDisposable
{
    private const int PendingSignalLimit = 4096;
    private readonly SignalEnvelopes _envelopes;
    private readonly Queue<string> _pending = new();
    private Action<string>? _signalWritten;
    private readonly string _outKeyword, _inKeyword;
    private protected readonly Dictionary<string, TransportCounters> Counters = new(StringComparer.Ordinal);
    private protected readonly List<IAsyncDisposable> Owned = [];
    private readonly string? _ownedState;

    private protected EmbeddedInstance(bool server, JObject config, ILoggerFactory? loggers)
    {
        Loggers = loggers ?? NullLoggerFactory.Instance;
        _outKeyword = server ? "SMESSAGE" : "CMESSAGE";
        _inKeyword = server ? "CMESSAGE" : "SMESSAGE";
        _envelopes = new SignalEnvelopes(server, (t, payload) => Emit($"{_outKeyword} {t} {payload}"), Loggers.CreateLogger("PtHost.Signals"));
        if (config["state"]?.Type == JTokenType.String) StateDirectory = (string)config["state"]!;
        else StateDirectory = _ownedState = Directory.CreateTempSubdirectory("pthost-embedded-").FullName;
        Options = config["options"] as JObject ?? [];
    }

    private protected ILoggerFactory Loggers { get; }

    private protected string StateDirectory { get; }

    private protected JObject Options { get; }

    /// <summary>
    /// Each signal line this host writes (<c>CMESSAGE t payload</c> or <c>SMESSAGE t payload</c>), the same line
    /// pthost would write on stdout, for the application to carry to the other side (spec/adapters.md §2.5).
    /// Lines written before the first handler is attached are kept (at most 4,096) and handed to it.
    /// </summary>
    public event Action<string> SignalWritten
    {
        add
        {
            string[] queued;
            lock (_pending)
            {
                _signalWritten += value;
                queued = [.. _pending];
                _pending.Clear();
            }
            foreach (var line in queued) value(line);
        }
        remove
        {
            lock (_pending) _signalWritten -= value;
        }
    }

    private void Emit(string line)
    {
        Action<string>? handler;
        lock (_pending)
        {
            handler = _signalWritten;
            if (handler is null)
            {
                _pending.Enqueue(line);
                if (_pending.Count > PendingSignalLimit) _pending.Dequeue();
                return;
            }
        }
        handler(line);
    }

    /// <summary>
    /// A line from the other side (a client takes SMESSAGE, a server CMESSAGE), checked as pthost checks stdin
    /// (spec/ipc.md §6.4). Returns why it was dropped, or null when it was delivered.
    /// </summary>
    public string? DeliverSignal(string line)
    {
        line = line.TrimEnd('\n').TrimEnd('\r');
        var parts = line.Split(' ', 3);
        if (parts.Length != 3 || parts[0] != _inKeyword) throw new ArgumentException($"expected a {_inKeyword} line", nameof(line));
        return _envelopes.Deliver(parts[1], parts[2]);
    }

    private protected ISignalChannel SignalsFor(string transport) => _envelopes.For(transport);

    /// <summary>The transports that started, in configuration order.</summary>
    public abstract IReadOnlyList<string> Transports { get; }

    /// <summary>A transport's counters now (spec/ipc.md §4.7's STATUS values).</summary>
    public TransportStats GetStats(string transport) => Counters[transport].Snapshot();

    /// <summary>The transport, refused clearly when it needs a process of its own (external_*).</summary>
    private protected static IPluggableTransport Create(string name)
    {
        if (BuiltInTransports.IsExternal(name))
            throw new TransportOptionsException($"transport \"{name}\" runs a PT 1.0 program as a child of pthost: it cannot run in process; launch pthost (PtHost.Client) for it");
        foreach (var (n, create) in BuiltInTransports.All)
            if (n == name) return create();
        throw new TransportOptionsException($"no transport named \"{name}\" (known: {string.Join(", ", BuiltInTransports.All.Select(t => t.Name))})");
    }

    private protected TransportEnvironment Environment(string name, TransportCounters counters)
    {
        string state = Path.Combine(StateDirectory, name);
        Directory.CreateDirectory(state);
        Counters[name] = counters;
        return new TransportEnvironment(name, Options[name], state, SignalsFor(name), new DirectDialer(), Loggers, counters);
    }

    private int _instanceDisposed;

    public virtual async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _instanceDisposed, 1) != 0) return;
        for (int i = Owned.Count - 1; i >= 0; i--) await Owned[i].DisposeAsync().ConfigureAwait(false);
        if (_ownedState is not null)
        {
            try { Directory.Delete(_ownedState, true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
        }
        GC.SuppressFinalize(this);
    }
}
