using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using PtHost.Contract;

namespace PtHost.Net;

/// <summary>
/// A TCP listener that runs one task per accepted connection and tracks them: a limit on open
/// sessions (over it, the connection is reset at once), stop = no more accepts, drain until the
/// token fires, then abort what is left. Accept errors (EMFILE …) are logged and do not stop it.
/// Every TCP listener of the tree uses it: server transports through <see cref="IInboundHandler.ListenTcp"/>,
/// the front ends and relays directly.
/// </summary>
public sealed class TcpSessionListener : ISessionListener
{
    private readonly Socket _listener;
    private readonly Func<Socket, CancellationToken, Task> _serve;
    private readonly ILogger _log;
    private readonly string _name;
    private readonly int _maxSessions;
    private readonly Action? _refused;
    private readonly bool _inline;
    private readonly CancellationTokenSource _stopping = new();
    private readonly CancellationTokenSource _abort = new();
    // Open sessions by number. A session removes itself when it ends (no continuation per session); one that ends
    // before the accept loop has recorded it is noted in _endedEarly instead, and never recorded.
    private readonly Dictionary<long, Task> _sessions = [];
    private readonly HashSet<long> _endedEarly = [];
    private long _lastSession;
    private Task? _acceptLoop;

    /// <param name="serve">Serves one connection; owns the socket. Its token fires when the session must end now.</param>
    /// <param name="maxSessions">Connections served at once; one over it is reset at once (<see cref="int.MaxValue"/>: the caller keeps its own limits).</param>
    /// <param name="refused">Called for each connection turned away by the session limit.</param>
    public TcpSessionListener(string name, IPEndPoint bind, Func<Socket, CancellationToken, Task> serve, ILogger log, int maxSessions, Action? refused = null)
        : this(name, Listen(bind), serve, log, maxSessions, refused)
    {
    }

    /// <summary>As the other constructor, on a socket the caller has bound and put in the listening state (its own options, backlog or port choice).</summary>
    /// <param name="inline">
    /// Runs <paramref name="serve"/> on the accept loop until its first await, so that what it decides
    /// there follows the order of accepts (a relay's per-source and total limits); it must reach that
    /// await at once. Otherwise each connection starts on the thread pool.
    /// </param>
    public TcpSessionListener(string name, Socket listening, Func<Socket, CancellationToken, Task> serve, ILogger log, int maxSessions, Action? refused = null, bool inline = false)
    {
        _inline = inline;
        ArgumentNullException.ThrowIfNull(listening);
        _name = name;
        _serve = serve;
        _log = log;
        _maxSessions = maxSessions;
        _refused = refused;
        _listener = listening;
        LocalEndPoint = (IPEndPoint)_listener.LocalEndPoint!;
    }

    /// <summary>
    /// A TCP socket bound to <paramref name="bind"/> and listening (backlog 4096). A relay that must
    /// bind again at once after a restart sets <paramref name="reuseAddress"/>; one on <c>[::]</c> also
    /// takes IPv4 with <paramref name="dualMode"/>.
    /// </summary>
    public static Socket Listen(IPEndPoint bind, bool reuseAddress = false, bool dualMode = false)
    {
        ArgumentNullException.ThrowIfNull(bind);
        var socket = new Socket(bind.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            if (dualMode && bind.AddressFamily == AddressFamily.InterNetworkV6 && bind.Address.Equals(IPAddress.IPv6Any)) socket.DualMode = true;
            if (reuseAddress) socket.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true);
            socket.Bind(bind);
            socket.Listen(4096);
            return socket;
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    public IPEndPoint LocalEndPoint { get; }

    public int ActiveSessions { get { lock (_sessions) return _sessions.Count; } }

    public void Start() => _acceptLoop ??= AcceptLoopAsync();

    private async Task AcceptLoopAsync()
    {
        while (!_stopping.IsCancellationRequested)
        {
            Socket socket;
            try
            {
                socket = await _listener.AcceptAsync(_stopping.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException) { break; }
            catch (ObjectDisposedException) { break; }
            catch (SocketException e)
            {
                _log.AcceptFailed(_name, LocalEndPoint, e.SocketErrorCode);
                await Task.Delay(50).ConfigureAwait(false);
                continue;
            }
            if (ActiveSessions >= _maxSessions)
            {
                _log.SessionLimit(_name, _maxSessions);
                _refused?.Invoke();
                socket.LingerState = new LingerOption(true, 0);
                socket.Dispose();
                continue;
            }
            socket.NoDelay = true;
            long number = ++_lastSession;
            var task = RunAsync(socket, number);
            lock (_sessions)
                if (!_endedEarly.Remove(number)) _sessions.Add(number, task);
        }
    }

    private async Task RunAsync(Socket socket, long number)
    {
        try
        {
            if (!_inline) await Task.Yield(); // leave the accept loop at once
            await _serve(socket, _abort.Token).ConfigureAwait(false);
        }
        catch (Exception e) { _log.SessionFailed(e, _name); }
        finally
        {
            lock (_sessions)
                if (!_sessions.Remove(number)) _endedEarly.Add(number);
        }
    }

    /// <summary>Stops accepting; sessions finish until <paramref name="drain"/> fires, then are aborted.</summary>
    public async Task StopAsync(CancellationToken drain)
    {
        if (!_stopping.IsCancellationRequested) _stopping.Cancel();
        _listener.Dispose();
        if (_acceptLoop is not null) await _acceptLoop.ConfigureAwait(false);
        Task[] open;
        lock (_sessions) open = [.. _sessions.Values];
        try { await Task.WhenAll(open).WaitAsync(drain).ConfigureAwait(false); }
        catch (OperationCanceledException)
        {
            _abort.Cancel();
            await Task.WhenAll(open).ConfigureAwait(false);
        }
    }

    public async ValueTask DisposeAsync()
    {
        await StopAsync(new CancellationToken(true)).ConfigureAwait(false);
        _stopping.Dispose();
        _abort.Dispose();
    }
}
