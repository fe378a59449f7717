using System.Text;
using Microsoft.Extensions.Logging;

namespace PtHost.Ipc;

/// <summary>
/// Reads stdin lines on a dedicated thread (stdin is a blocking descriptor) and hands CMESSAGE /
/// SMESSAGE lines to the <see cref="SignalRouter"/> (spec/ipc.md §6), and a <c>STATUS</c> line to
/// <see cref="StatusRequested"/> (spec/ipc.md §4.7). Lines over <see cref="MaxLineBytes"/> are
/// discarded whole. Reports end of input.
/// </summary>
public sealed class StdinReader
{
    public const int MaxLineBytes = 64 * 1024;
    private readonly Stream _input;
    private readonly SignalRouter _router;
    private readonly ILogger _log;

    /// <summary>The keyword of a parent's request for STATUS lines now (spec/ipc.md §4.10).</summary>
    public const string StatusRequestKeyword = "STATUS";

    /// <summary>Runs on the reader thread for each <c>STATUS</c> line; null: such lines are ignored like any unknown line.</summary>
    public Action? StatusRequested { get; init; }

    public StdinReader(Stream input, SignalRouter router, ILogger<StdinReader> log)
    {
        _input = input;
        _router = router;
        _log = log;
    }

    /// <summary>Starts the reader thread; <paramref name="onEof"/> runs when stdin closes.</summary>
    public void Start(Action onEof)
    {
        var thread = new Thread(() =>
        {
            try { Run(); }
            catch (Exception e) when (e is IOException or ObjectDisposedException) { _log.LogDebug(e, "stdin read failed"); }
            onEof();
        }) { IsBackground = true, Name = "pthost-stdin" };
        thread.Start();
    }

    internal void Run()
    {
        var buffer = new byte[MaxLineBytes + 1];
        int length = 0;
        bool discarding = false;
        var chunk = new byte[8192];
        int n;
        while ((n = _input.Read(chunk, 0, chunk.Length)) > 0)
        {
            int start = 0;
            for (int i = 0; i < n; i++)
            {
                if (chunk[i] != (byte)'\n') continue;
                Append(chunk.AsSpan(start, i - start));
                if (!discarding) HandleLine(buffer.AsSpan(0, length));
                else _log.LogWarning("stdin line longer than {Max} bytes discarded", MaxLineBytes);
                length = 0;
                discarding = false;
                start = i + 1;
            }
            Append(chunk.AsSpan(start, n - start));
        }
        if (discarding) _log.LogWarning("stdin line longer than {Max} bytes discarded", MaxLineBytes);
        else if (length > 0) HandleLine(buffer.AsSpan(0, length));

        void Append(ReadOnlySpan<byte> bytes)
        {
            if (discarding) return;
            if (length + bytes.Length > MaxLineBytes) { discarding = true; return; }
            bytes.CopyTo(buffer.AsSpan(length));
            length += bytes.Length;
        }
    }

    private void HandleLine(ReadOnlySpan<byte> bytes)
    {
        if (bytes.Length > 0 && bytes[^1] == '\r') bytes = bytes[..^1];
        if (bytes.IsEmpty) return;
        string line;
        try { line = new UTF8Encoding(false, true).GetString(bytes); }
        catch (DecoderFallbackException) { _log.LogWarning("stdin line is not UTF-8; ignored"); return; }
        if (line == StatusRequestKeyword && StatusRequested is { } status)
        {
            try { status(); }
            catch (Exception e) { _log.LogError(e, "STATUS request could not be answered"); }
            return;
        }
        var parts = line.Split(' ', 3);
        if (parts.Length == 3 && parts[0] == _router.IncomingKeyword)
        {
            try { _router.Deliver(parts[1], parts[2]); }
            catch (Exception e)
            {
                // A line from the parent must never stop the reader: log and go on with the next line.
                _log.LogError(e, "stdin line could not be handled");
            }
            return;
        }
        _log.LogWarning("stdin line ignored (expected \"{Keyword} <transport> <payload>\"): {Line}",
            _router.IncomingKeyword, line.Length > 80 ? line[..80] + "…" : line);
    }
}
