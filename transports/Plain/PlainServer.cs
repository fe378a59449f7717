using System.Net;
using Newtonsoft.Json.Linq;
using PtHost.Contract;

namespace PtHost.Transports.Plain;

internal sealed class PlainServer(TransportEnvironment context, PlainServerOptions options) : IServerFactory
{
    public GeneratedConfiguration GenerateConfiguration() => new(new JObject(), new JObject());

    public ValueTask<IServerManager> ListenAsync(ServerBinding binding, CancellationToken cancellationToken) =>
        ValueTask.FromResult<IServerManager>(new PlainListener(context, options, binding));

    public ValueTask<IServerManager> ProxyAsync(ServerBinding binding, CancellationToken cancellationToken) =>
        ValueTask.FromResult<IServerManager>(new PlainListener(context, options, binding));

    public ValueTask DisposeAsync() => ValueTask.CompletedTask;
}

/// <summary>
/// A running plain server: every accepted TCP connection goes to the host, which reads the session
/// preamble and serves it (spec/plain.md §2, spec/session.md); the listener answers "hello" signals (§3).
/// </summary>
internal sealed class PlainListener : IServerManager
{
    private readonly TransportEnvironment _context;
    private readonly ISessionListener _listener;
    private readonly CancellationTokenSource _stopping = new();
    private readonly Task _signalLoop;
    private readonly string _advertised;

    public PlainListener(TransportEnvironment context, PlainServerOptions options, ServerBinding binding)
    {
        _context = context;
        var handler = binding.Handler;
        _listener = handler.ListenTcp(binding.BindAddress, (socket, abort) => handler.ServeAsync(new System.Net.Sockets.NetworkStream(socket, ownsSocket: true), socket.RemoteEndPoint, abort));
        LocalEndPoint = _listener.LocalEndPoint;
        _advertised = (options.Advertise ?? new Destination(LocalEndPoint)).ToString();
        // Announce where this server is, for clients started with "discover" (spec/plain.md §3).
        _context.Signals.Send(new Signal(PlainSignals.Server, new JObject { ["address"] = _advertised }));
        _signalLoop = AnswerHellosAsync();
    }

    public IPEndPoint LocalEndPoint { get; }

    public IReadOnlyDictionary<string, string> Args { get; } = new Dictionary<string, string>();

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
