using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using Newtonsoft.Json.Linq;
using PtHost.Contract;
using PtHost.Net;

namespace PtHost.Transports.Plain;

internal sealed class PlainServer : IServerFactory
{
    public static readonly TimeSpan PreambleTimeout = TimeSpan.FromSeconds(10);
    private readonly TransportEnvironment _context;
    private readonly PlainServerOptions _options;

    public PlainServer(TransportEnvironment context, PlainServerOptions options)
    {
        _context = context;
        _options = options;
    }

    public GeneratedConfiguration GenerateConfiguration() => new(new JObject(), new JObject());

    public ValueTask<IServerManager> ListenAsync(ServerBinding binding, CancellationToken cancellationToken) =>
        ValueTask.FromResult<IServerManager>(new PlainListener(_context, _options, binding));

    public ValueTask<IServerManager> ProxyAsync(ServerBinding binding, CancellationToken cancellationToken) =>
        ValueTask.FromResult<IServerManager>(new PlainListener(_context, _options, binding));

    public ValueTask DisposeAsync() => ValueTask.CompletedTask;
}

internal sealed class PlainListener : IServerManager
{
    public const int MaxSessions = 16384;
    private readonly TransportEnvironment _context;
    private readonly ServerBinding _binding;
    private readonly TcpSessionListener _listener;
    private readonly ILogger _log;
    private readonly CancellationTokenSource _stopping = new();
    private readonly Task _signalLoop;
    private readonly string _advertised;
    private static long s_ids;

    public PlainListener(TransportEnvironment context, PlainServerOptions options, ServerBinding binding)
    {
        _context = context;
        _binding = binding;
        _log = context.LoggerFactory.CreateLogger("PtHost.Transports.Plain");
        try
        {
            _listener = new TcpSessionListener("plain", binding.BindAddress, ServeAsync, _log, MaxSessions, context.Counters.SessionFailed);
        }
        catch (SocketException e)
        {
            throw new TransportOptionsException($"cannot listen on {binding.BindAddress}: {e.SocketErrorCode}", e);
        }
        LocalEndPoint = _listener.LocalEndPoint;
        _advertised = (options.Advertise ?? new Destination(LocalEndPoint)).ToString();
        // Announce where this server is, for clients started with "discover" (spec/plain.md §3).
        _context.Signals.Send(new Signal(PlainSignals.Server, new JObject { ["address"] = _advertised }));
        _listener.Start();
        _signalLoop = AnswerHellosAsync();
    }

    public IPEndPoint LocalEndPoint { get; }

    public IReadOnlyDictionary<string, string> Args { get; } = new Dictionary<string, string>();

    public TransportStats GetStats() => _context.Counters.Snapshot();

    private async Task AnswerHellosAsync()
    {
        try
        {
            await foreach (var s in _context.Signals.Incoming.ReadAllAsync(_stopping.Token).ConfigureAwait(false))
            {
                if (s.Kind != PlainSignals.Hello || s.ClientId is null) continue;
                _context.Signals.Send(new Signal(PlainSignals.Server, new JObject { ["address"] = _advertised }) { ClientId = s.ClientId, ReplyTo = s.MessageId });
            }
        }
        catch (OperationCanceledException) { }
    }

    private async Task ServeAsync(Socket socket, CancellationToken abort)
    {
        long id = Interlocked.Increment(ref s_ids);
        var remote = socket.RemoteEndPoint;
        var stream = new NetworkStream(socket, ownsSocket: true);
        Stream? onward = null;
        bool opened = false, failed = false;
        try
        {
            Destination? destination;
            SessionKind kind;
            using (var preamble = CancellationTokenSource.CreateLinkedTokenSource(abort))
            {
                preamble.CancelAfter(PlainServer.PreambleTimeout);
                try { (destination, kind) = await PlainWire.ReadPreambleAsync(stream, preamble.Token).ConfigureAwait(false); }
                catch (InvalidDataException)
                {
                    failed = true;
                    _context.Counters.SessionFailed();
                    _log.LogInformation("plain session {Id} from {Remote}: not a plain preamble; closed", id, remote);
                    return;
                }
                catch (FormatException e)
                {
                    failed = true;
                    _context.Counters.SessionFailed();
                    await ReplyAsync(stream, (byte)ConnectFailure.AddressTypeNotSupported).ConfigureAwait(false);
                    _log.LogInformation("plain session {Id} from {Remote}: {Error}", id, remote, e.Message);
                    return;
                }
            }
            try
            {
                onward = await _binding.Handler.OpenAsync(new InboundSession(remote, destination, id, kind), abort).ConfigureAwait(false);
            }
            catch (TransportConnectException e)
            {
                failed = true;
                _context.Counters.SessionFailed();
                _log.LogInformation("plain session {Id}: {Error}", id, e.Message);
                await ReplyAsync(stream, (byte)e.Failure).ConfigureAwait(false);
                return;
            }
            await ReplyAsync(stream, 0).ConfigureAwait(false);
            opened = true;
            _context.Counters.SessionOpened();
            await _binding.Handler.RelayAsync(stream, onward, abort).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or SocketException or OperationCanceledException or EndOfStreamException or ObjectDisposedException)
        {
            if (!opened && !failed) _context.Counters.SessionFailed(); // preamble timeout or a peer that vanished
            _log.LogDebug("plain session {Id} ended: {Error}", id, e.Message);
        }
        finally
        {
            if (opened) _context.Counters.SessionClosed();
            if (onward is not null) await onward.DisposeAsync().ConfigureAwait(false);
            await stream.DisposeAsync().ConfigureAwait(false);
        }
    }

    private static async Task ReplyAsync(NetworkStream stream, byte code)
    {
        using var cts = new CancellationTokenSource(PlainServer.PreambleTimeout);
        await stream.WriteAsync(new[] { code }, cts.Token).ConfigureAwait(false);
    }

    public async Task StopAsync(CancellationToken cancellationToken)
    {
        if (!_stopping.IsCancellationRequested) _stopping.Cancel();
        await _signalLoop.ConfigureAwait(false);
        await _listener.StopAsync(cancellationToken).ConfigureAwait(false);
    }

    public async ValueTask DisposeAsync()
    {
        await StopAsync(new CancellationToken(true)).ConfigureAwait(false);
        await _listener.DisposeAsync().ConfigureAwait(false);
        _stopping.Dispose();
    }
}
