using System.Net;
using System.Net.Sockets;
using Newtonsoft.Json.Linq;
using PtHost.Contract;

namespace PtHost.Transports.External;

internal sealed class ExternalServer(TransportEnvironment context) : IServerFactory
{
    /// <summary>Nothing to generate: the program makes its own keys in its state directory and reports them in SMETHOD ARGS.</summary>
    public GeneratedConfiguration GenerateConfiguration() => new(new JObject(), new JObject());

    public async ValueTask<IServerManager> ListenAsync(ServerBinding binding, CancellationToken cancellationToken)
    {
        var options = ExternalOptions.Parse(context.Name, context.Options, client: false);
        var manager = new ExternalServerManager(context, options, binding);
        try
        {
            await manager.StartAsync(cancellationToken).ConfigureAwait(false);
            return manager;
        }
        catch
        {
            await manager.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    public ValueTask<IServerManager> ProxyAsync(ServerBinding binding, CancellationToken cancellationToken) =>
        throw new TransportOptionsException($"{context.Name} serves a bound server only: a PT 1.0 program forwards every connection to one ORPort and carries no destination (set \"target\")");

    public ValueTask DisposeAsync() => ValueTask.CompletedTask;
}

/// <summary>
/// A running PT 1.0 server child. Its TOR_PT_ORPORT is a loopback listener of ours, which hands each
/// connection to the host (the bound target), so sessions and bytes are counted as for any transport.
/// </summary>
internal sealed class ExternalServerManager : IServerManager
{
    private readonly TransportEnvironment _context;
    private readonly ExternalOptions _options;
    private readonly ServerBinding _binding;
    private readonly ISessionListener _orPort;
    private readonly Pt1Child _child;

    public ExternalServerManager(TransportEnvironment context, ExternalOptions options, ServerBinding binding)
    {
        _context = context;
        _options = options;
        _binding = binding;
        var log = context.LoggerFactory.CreateLogger("PtHost.Transports.External");
        // The child's ORPort connections carry no preamble: each goes to the host's target as it is.
        var handler = binding.Handler;
        _orPort = handler.ListenTcp(new IPEndPoint(IPAddress.Loopback, 0),
            (socket, abort) => handler.ServeRawAsync(new NetworkStream(socket, ownsSocket: true), socket.RemoteEndPoint, abort));
        _child = new Pt1Child(context.Name, options, client: false, Environment, log);
    }

    /// <summary>pt-spec §3.2.3. After a restart the child is asked for the address it first reported, so SMETHOD stays true.</summary>
    private Dictionary<string, string> Environment(IPEndPoint? previous)
    {
        var env = Pt1Child.CommonEnvironment(_context);
        env["TOR_PT_SERVER_TRANSPORTS"] = _options.Method;
        env["TOR_PT_SERVER_BINDADDR"] = $"{_options.Method}-{previous ?? _binding.BindAddress}";
        env["TOR_PT_ORPORT"] = _orPort.LocalEndPoint.ToString();
        env["TOR_PT_EXTENDED_SERVER_PORT"] = "";
        if (_options.ServerOptions.Count > 0) env["TOR_PT_SERVER_TRANSPORT_OPTIONS"] = Pt1Wire.FormatServerOptions(_options.Method, _options.ServerOptions);
        return env;
    }

    public async Task StartAsync(CancellationToken ct)
    {
        var endpoint = await _child.StartAsync(ct).ConfigureAwait(false);
        LocalEndPoint = endpoint.EndPoint;
        Args = endpoint.Args;
    }

    public IPEndPoint LocalEndPoint { get; private set; } = new(IPAddress.Loopback, 0);

    public IReadOnlyDictionary<string, string> Args { get; private set; } = new Dictionary<string, string>();

    public Task StopAsync(CancellationToken cancellationToken) => _orPort.StopAsync(cancellationToken);

    public async ValueTask DisposeAsync()
    {
        await _child.DisposeAsync().ConfigureAwait(false);
        await _orPort.DisposeAsync().ConfigureAwait(false);
    }
}
