using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using PtHost.Contract;
using PtHost.Net;

namespace PtHost.Transparent;

/// <summary>
/// Transparent TCP (spec/ipc.md §12.3): every connection accepted at <c>proxylistenaddr</c> becomes one
/// transport session to the configured server, with no SOCKS handshake; the server sends it on to its target.
/// </summary>
public sealed class TransparentTcpListener : IFrontEnd
{
    public static readonly TimeSpan ConnectTimeout = TimeSpan.FromSeconds(30);
    private readonly TcpSessionListener _listener;
    private readonly IClientFactory _factory;
    private readonly Destination _server;
    private readonly TransportCounters _counters;
    private readonly ILogger _log;
    private readonly string _transport;
    private static long s_sessionIds;

    /// <param name="server">The PT server (<c>target</c>); null: the transport finds it as for a SOCKS request without a destination.</param>
    public TransparentTcpListener(string transport, IPEndPoint bind, Destination? server, IClientFactory factory, TransportCounters counters, ILogger log, int maxSessions = 16384)
    {
        _transport = transport;
        _factory = factory;
        _server = server ?? new Destination("0.0.0.0", 0);
        _counters = counters;
        _log = log;
        _listener = new TcpSessionListener($"transparent TCP {transport}", bind, RunSessionAsync, log, maxSessions, counters.SessionFailed);
    }

    public IPEndPoint LocalEndPoint => _listener.LocalEndPoint;

    public void Start() => _listener.Start();

    public Task StopAsync(CancellationToken drain) => _listener.StopAsync(drain);

    public ValueTask DisposeAsync() => _listener.DisposeAsync();

    private async Task RunSessionAsync(Socket socket, CancellationToken abort)
    {
        long id = Interlocked.Increment(ref s_sessionIds);
        var client = new NetworkStream(socket, ownsSocket: true);
        Stream? upstream = null;
        bool opened = false;
        try
        {
            using (var connect = CancellationTokenSource.CreateLinkedTokenSource(abort))
            {
                connect.CancelAfter(ConnectTimeout);
                try
                {
                    var settings = _factory.ParseSettings(ConnectionSettings.Empty);
                    upstream = await _factory.ConnectAsync(new ConnectRequest(_server, settings, id), connect.Token).ConfigureAwait(false);
                }
                catch (Exception e) when (e is TransportConnectException or SettingsException or IOException or SocketException
                    || (e is OperationCanceledException && !abort.IsCancellationRequested))
                {
                    // No reply exists in this mode: the accepted connection is reset, so the application sees the failure at once.
                    _counters.SessionFailed();
                    _log.LogInformation("transparent TCP {Transport} session {Id}: transport connect failed: {Error}", _transport, id,
                        e is OperationCanceledException ? $"took longer than {ConnectTimeout.TotalSeconds:0} s" : e.Message);
                    socket.Close(0); // linger 0: RST (NetworkStream's own close would shut down with a FIN first)
                    return;
                }
            }
            opened = true;
            _counters.SessionOpened();
            await Relay.RunAsync(client, upstream, _counters, abort).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or SocketException or OperationCanceledException or ObjectDisposedException)
        {
            _log.LogDebug("transparent TCP {Transport} session {Id} ended: {Error}", _transport, id, e.Message);
        }
        finally
        {
            if (opened) _counters.SessionClosed();
            if (upstream is not null) await upstream.DisposeAsync().ConfigureAwait(false);
            await client.DisposeAsync().ConfigureAwait(false);
        }
    }
}
