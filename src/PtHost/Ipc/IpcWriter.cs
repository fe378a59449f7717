using System.Net;
using System.Text;
using PtHost.Contract;
using PtHost.Net.Native;

namespace PtHost.Ipc;

/// <summary>
/// The one writer of stdout (spec/ipc.md §4). Each method writes one protocol line and flushes.
/// Names follow the spec's keywords, as goptlib does.
/// </summary>
public sealed class IpcWriter
{
    /// <summary>How long a line that may be dropped (periodic and shutdown STATUS, the shutdown LOG) waits for stdout (spec/ipc.md §4.1).</summary>
    public static readonly TimeSpan DroppableWait = TimeSpan.FromSeconds(1);
    private readonly TextWriter _out;
    private readonly Func<TimeSpan, bool>? _writable;
    private readonly Lock _lock = new();

    /// <param name="output">Where the lines go.</param>
    /// <param name="writable">
    /// Whether <paramref name="output"/> takes a line within the given time without waiting longer (poll(2) for
    /// stdout, <see cref="StdoutWritable"/>); null: it always does (a file, a test's writer).
    /// </param>
    public IpcWriter(TextWriter output, Func<TimeSpan, bool>? writable = null)
    {
        _out = output;
        _writable = writable;
    }

    /// <summary>A writer over the process's real stdout (UTF-8, no BOM, "\n" line ends).</summary>
    public static IpcWriter ForStdout() => new(Stdout(), StdoutWritable);

    /// <summary>
    /// True when stdout (descriptor 1) can take a line without waiting, or becomes able to within
    /// <paramref name="wait"/>: poll(2) for POLLOUT (a pipe with a free buffer takes any write of up to
    /// PIPE_BUF bytes whole). An error or a closed reader counts as writable: the write then fails at once.
    /// </summary>
    public static unsafe bool StdoutWritable(TimeSpan wait)
    {
        var fd = new Libc.PollFd { Fd = 1, Events = Libc.PollOut };
        int ready = Libc.Poll(&fd, 1, (int)Math.Min(int.MaxValue, wait.TotalMilliseconds));
        return ready != 0; // 0: still full when the time ran out; 1 and -1 (an error): write, and a failure shows there
    }

    /// <summary>The process's real stdout as the IPC writes it.</summary>
    public static TextWriter Stdout() =>
        new StreamWriter(Console.OpenStandardOutput(), new UTF8Encoding(false)) { NewLine = "\n", AutoFlush = false };

    /// <summary>
    /// When false (the default), <see cref="Log"/> lines have their addresses scrubbed (spec/ipc.md
    /// §4.6, §4.11); the configuration's <c>unsafe-logging</c> sets it before the first line.
    /// </summary>
    public bool UnsafeLogging { get; set; }

    public void Version(string version) => Line($"VERSION {version}");
    public void VersionError() => Line("VERSION-ERROR no-version");
    public void EnvError(string message) => Line($"ENV-ERROR {OneLine(message)}");
    public void Cmethod(string transport, string protocol, IPEndPoint ep) => Line($"CMETHOD {transport} {protocol} {ep}");
    public void CmethodError(string transport, string message) => Line($"CMETHOD-ERROR {transport} {OneLine(message)}");
    public void CmethodsDone() => Line("CMETHODS DONE");

    public void Smethod(string transport, IPEndPoint ep, IReadOnlyDictionary<string, string> args)
    {
        var sb = new StringBuilder("SMETHOD ").Append(transport).Append(' ').Append(ep.ToString());
        if (args.Count > 0)
        {
            sb.Append(" ARGS:");
            bool first = true;
            foreach (var (k, v) in args)
            {
                if (!first) sb.Append(',');
                first = false;
                sb.Append(EscapeArg(k)).Append('=').Append(EscapeArg(v));
            }
        }
        Line(sb.ToString());
    }

    public void ProxyDone() => Line("PROXY DONE");
    public void ProxyError(string message) => Line($"PROXY-ERROR {OneLine(message)}");

    /// <summary><c>STATUS TYPE=version IMPLEMENTATION=… VERSION=…</c> (pt-spec §3.3.5, read by tor ≥ 0.4.8).</summary>
    public void StatusVersion(string implementation, string version) =>
        Line($"STATUS TYPE=version IMPLEMENTATION={implementation} VERSION={version}");

    public void SmethodError(string transport, string message) => Line($"SMETHOD-ERROR {transport} {OneLine(message)}");
    public void SmethodsDone() => Line("SMETHODS DONE");

    /// <summary>
    /// <c>LOG SEVERITY=… MESSAGE=…</c>; the message scrubbed (§4.11) and quoted as in pt-spec (C-style escapes).
    /// <paramref name="droppable"/>: dropped when stdout does not take it within <see cref="DroppableWait"/> (§4.1).
    /// </summary>
    public void Log(string severity, string message, bool droppable = false) =>
        Line($"LOG SEVERITY={severity} MESSAGE={Quote(UnsafeLogging ? message : Logging.AddressScrubber.Scrub(message))}", droppable);

    /// <summary><c>STATUS TYPE=metrics ADDRESS=IP:PORT</c>: where the Prometheus endpoint listens (spec/ipc.md §4.12), once, when configured.</summary>
    public void MetricsAddress(System.Net.IPEndPoint address) => Line($"STATUS TYPE=metrics ADDRESS={address}");

    /// <summary>
    /// A transport's counters (§4.7). <paramref name="droppable"/> (the periodic and the shutdown lines, not an
    /// answer to the parent's request): dropped when stdout does not take it within <see cref="DroppableWait"/>.
    /// </summary>
    public void Status(string transport, TransportStats s, bool droppable = false) =>
        Line($"STATUS TRANSPORT={transport} CONNECTIONS={s.SessionsActive} OPENED={s.SessionsOpened} FAILED={s.SessionsFailed} BYTES-IN={s.BytesIn} BYTES-OUT={s.BytesOut} SPLICE-FALLBACKS={s.SpliceFallbacks} DATAGRAMS-DROPPED={s.DatagramsDropped}", droppable);

    /// <summary><c>LISTEN &lt;relay&gt; &lt;text&gt;</c>: a relay is listening (spec/ipc.md §2.4).</summary>
    public void Listen(string relay, string text) => Line($"LISTEN {relay} {OneLine(text)}");

    /// <summary><c>STATUS &lt;fields&gt;</c> of a relay (e.g. spec/zephyr.md §4.7), periodic: dropped when stdout does not take it within <see cref="DroppableWait"/> (§4.1).</summary>
    public void RelayStatus(string fields) => TryLine($"STATUS {OneLine(fields)}");

    public void Cmessage(string transport, string payload) => Line($"CMESSAGE {transport} {OneLine(payload)}");
    public void Smessage(string transport, string payload) => Line($"SMESSAGE {transport} {OneLine(payload)}");

    /// <summary>Escapes <c>\</c>, <c>=</c> and <c>,</c> with a backslash (pt-spec, SMETHOD ARGS).</summary>
    public static string EscapeArg(string s)
    {
        var sb = new StringBuilder(s.Length);
        foreach (char c in s)
        {
            if (c is '\\' or '=' or ',') sb.Append('\\');
            sb.Append(c is '\r' or '\n' ? ' ' : c);
        }
        return sb.ToString();
    }

    public static string Quote(string s)
    {
        var sb = new StringBuilder(s.Length + 2).Append('"');
        foreach (char c in s)
        {
            switch (c)
            {
                case '"': sb.Append("\\\""); break;
                case '\\': sb.Append("\\\\"); break;
                case '\n': sb.Append("\\n"); break;
                case '\r': sb.Append("\\r"); break;
                case '\t': sb.Append("\\t"); break;
                default: sb.Append(c < ' ' ? ' ' : c); break;
            }
        }
        return sb.Append('"').ToString();
    }

    private static string OneLine(string s) => s.Contains('\n') || s.Contains('\r') ? s.Replace('\r', ' ').Replace('\n', ' ') : s;

    /// <summary>
    /// Writes <paramref name="line"/> if the writer's lock and stdout are free within <see cref="DroppableWait"/>
    /// each; else drops it. A parent that stops reading stdout then stops nothing but these lines.
    /// </summary>
    private void TryLine(string line)
    {
        if (!_lock.TryEnter(DroppableWait)) return; // another line waits for stdout
        try
        {
            if (_writable is null || _writable(DroppableWait)) Write(line);
        }
        finally
        {
            _lock.Exit();
        }
    }

    /// <summary>Writes <paramref name="line"/>, waiting for stdout; a <paramref name="droppable"/> one goes through <see cref="TryLine"/>.</summary>
    private void Line(string line, bool droppable = false)
    {
        if (droppable) TryLine(line);
        else lock (_lock) Write(line);
    }

    /// <summary>One line and its flush; the caller holds <see cref="_lock"/>.</summary>
    private void Write(string line)
    {
        try
        {
            _out.Write(line);
            _out.Write('\n');
            _out.Flush();
        }
        catch (IOException)
        {
            // The parent closed our stdout; nothing more can be said. Logged by the caller's shutdown path.
        }
    }
}
