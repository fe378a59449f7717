using System.Net;
using System.Net.Sockets;
using System.Text;
using Microsoft.Extensions.Logging;
using Newtonsoft.Json.Linq;
using PtHost.Contract;
using PtHost.Net;

namespace PtHost.Transports.External;

/// <summary>
/// Hosts an existing PT 1.0 transport program (spec/external.md §4): pthost runs it as a managed
/// child with the PT 1.0 environment and puts its own SOCKS5 front end (client) or target (server)
/// around it. Registered as <c>external</c> and as every name <c>external_&lt;method&gt;</c>.
/// </summary>
public sealed class ExternalTransport : IPluggableTransport
{
    /// <summary>Names <c>external_&lt;method&gt;</c> are this transport; the method defaults to the suffix.</summary>
    public const string Prefix = "external_";

    public ExternalTransport() : this("external") { }

    public ExternalTransport(string name) => Name = name;

    /// <summary>True for <c>external</c> and <c>external_&lt;x&gt;</c>.</summary>
    public static bool IsExternalName(string name) => name == "external" || (name.StartsWith(Prefix, StringComparison.Ordinal) && name.Length > Prefix.Length);

    public string Name { get; }

    public IClientFactory CreateClientFactory(TransportEnvironment context) =>
        new ExternalClient(context, ExternalOptions.Parse(context.Name, context.Options, client: true));

    public IServerFactory CreateServerFactory(TransportEnvironment context) => new ExternalServer(context);

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
}

/// <summary>Per-connection settings turned into PT 1.0 argument bytes once, when the session's settings are checked.</summary>
internal sealed record ExternalSettings(byte[] Args);

internal sealed class ExternalClient : IClientFactory, IStartableClientFactory
{
    private readonly TransportEnvironment _context;
    private readonly ExternalOptions _options;
    private readonly Pt1Child _child;
    private readonly string _childName;
    private string _protocol = "socks5";

    public ExternalClient(TransportEnvironment context, ExternalOptions options)
    {
        _context = context;
        _options = options;
        _childName = $"{context.Name} child {Path.GetFileName(options.Exec)}";
        var log = context.LoggerFactory.CreateLogger("PtHost.Transports.External");
        _child = new Pt1Child(context.Name, options, client: true, _ => Environment(), log);
    }

    /// <summary>pt-spec §3.2.2, plus the host's upstream proxy and outbound bind addresses, which the child then applies itself.</summary>
    private Dictionary<string, string> Environment()
    {
        var env = ExternalTransport.CommonEnvironment(_context);
        env["TOR_PT_CLIENT_TRANSPORTS"] = _options.Method;
        var direct = _context.Dialer as DirectDialer;
        if (_context.Dialer is ProxyDialer proxy)
        {
            env["TOR_PT_PROXY"] = proxy.Proxy.ToUri();
            direct = proxy.Direct;
        }
        if (direct?.Bind.V4 is { } v4) env["TOR_PT_OUTBOUND_BIND_ADDRESS_V4"] = v4.ToString();
        if (direct?.Bind.V6 is { } v6) env["TOR_PT_OUTBOUND_BIND_ADDRESS_V6"] = $"[{v6}]";
        return env;
    }

    public async ValueTask StartAsync(CancellationToken cancellationToken)
    {
        var endpoint = await _child.StartAsync(cancellationToken).ConfigureAwait(false);
        _protocol = endpoint.Protocol;
    }

    public object? ParseSettings(ConnectionSettings settings)
    {
        var args = Pt1Wire.SettingsToArgs(settings);
        byte[] bytes = Encoding.UTF8.GetBytes(Pt1Wire.FormatConnectionArgs(args));
        int limit = _protocol == "socks4" ? 255 : Pt1Wire.MaxConnectionArgsBytes;
        if (bytes.Length > limit)
            throw new SettingsException(args[^1].Key, $"makes the PT 1.0 arguments {bytes.Length} bytes long; {_protocol} carries at most {limit}");
        return new ExternalSettings(bytes);
    }

    public async ValueTask<Stream> ConnectAsync(ConnectRequest request, CancellationToken cancellationToken)
    {
        byte[] args = (request.Settings as ExternalSettings)?.Args ?? [];
        var server = _options.ServerAddress ?? request.Destination;
        if (server.IsUnspecified)
            throw new TransportConnectException(ConnectFailure.HostUnreachable, "no server address: the request names none and the options give no \"serverAddress\"");
        var child = await _child.ReadyAsync(cancellationToken).ConfigureAwait(false);
        Stream stream;
        try
        {
            // The child is on loopback: a plain connection, never through the upstream proxy.
            stream = await new DirectDialer().ConnectTcpAsync(new Destination(child.EndPoint), cancellationToken).ConfigureAwait(false);
        }
        catch (TransportConnectException e)
        {
            throw new TransportConnectException(ConnectFailure.General, $"{_childName} does not accept on {child.EndPoint}: {e.Message}", e);
        }
        try
        {
            if (child.Protocol == "socks4")
                await ProxyHandshake.Socks4aAsync(stream, server, args, _childName, cancellationToken).ConfigureAwait(false);
            else if (args.Length == 0)
                await ProxyHandshake.Socks5Async(stream, server, null, null, _childName, cancellationToken).ConfigureAwait(false);
            else
            {
                var (user, password) = Pt1Wire.SplitForRfc1929(args);
                await ProxyHandshake.Socks5Async(stream, server, user, password, _childName, cancellationToken).ConfigureAwait(false);
            }
            return stream;
        }
        catch (Exception e) when (e is IOException or SocketException)
        {
            await stream.DisposeAsync().ConfigureAwait(false);
            throw new TransportConnectException(ConnectFailure.General, $"{_childName}: {e.Message}", e);
        }
        catch
        {
            await stream.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    public TransportStats GetStats() => _context.Counters.Snapshot();

    public ValueTask DisposeAsync() => _child.DisposeAsync();
}

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
    public const int MaxSessions = 16384;
    private readonly TransportEnvironment _context;
    private readonly ExternalOptions _options;
    private readonly ServerBinding _binding;
    private readonly ILogger _log;
    private readonly TcpSessionListener _orPort;
    private readonly Pt1Child _child;
    private static long s_ids;

    public ExternalServerManager(TransportEnvironment context, ExternalOptions options, ServerBinding binding)
    {
        _context = context;
        _options = options;
        _binding = binding;
        _log = context.LoggerFactory.CreateLogger("PtHost.Transports.External");
        _orPort = new TcpSessionListener(context.Name + "-orport", new IPEndPoint(IPAddress.Loopback, 0), ServeAsync, _log, MaxSessions, context.Counters.SessionFailed);
        _child = new Pt1Child(context.Name, options, client: false, Environment, _log);
    }

    /// <summary>pt-spec §3.2.3. After a restart the child is asked for the address it first reported, so SMETHOD stays true.</summary>
    private Dictionary<string, string> Environment(IPEndPoint? previous)
    {
        var env = ExternalTransport.CommonEnvironment(_context);
        env["TOR_PT_SERVER_TRANSPORTS"] = _options.Method;
        env["TOR_PT_SERVER_BINDADDR"] = $"{_options.Method}-{previous ?? _binding.BindAddress}";
        env["TOR_PT_ORPORT"] = _orPort.LocalEndPoint.ToString();
        env["TOR_PT_EXTENDED_SERVER_PORT"] = "";
        if (_options.ServerOptions.Count > 0) env["TOR_PT_SERVER_TRANSPORT_OPTIONS"] = Pt1Wire.FormatServerOptions(_options.Method, _options.ServerOptions);
        return env;
    }

    public async Task StartAsync(CancellationToken ct)
    {
        _orPort.Start();
        var endpoint = await _child.StartAsync(ct).ConfigureAwait(false);
        LocalEndPoint = endpoint.EndPoint;
        Args = endpoint.Args;
    }

    public IPEndPoint LocalEndPoint { get; private set; } = new(IPAddress.Loopback, 0);

    public IReadOnlyDictionary<string, string> Args { get; private set; } = new Dictionary<string, string>();

    public TransportStats GetStats() => _context.Counters.Snapshot();

    private async Task ServeAsync(Socket socket, CancellationToken abort)
    {
        long id = Interlocked.Increment(ref s_ids);
        var stream = new NetworkStream(socket, ownsSocket: true);
        Stream? onward = null;
        bool opened = false;
        try
        {
            try
            {
                onward = await _binding.Handler.OpenAsync(new InboundSession(socket.RemoteEndPoint, null, id), abort).ConfigureAwait(false);
            }
            catch (TransportConnectException e)
            {
                _context.Counters.SessionFailed();
                _log.LogInformation("{Name} session {Id}: {Error}", _context.Name, id, e.Message);
                return;
            }
            opened = true;
            _context.Counters.SessionOpened();
            await _binding.Handler.RelayAsync(stream, onward, abort).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or SocketException or OperationCanceledException or ObjectDisposedException)
        {
            _log.LogDebug("{Name} session {Id} ended: {Error}", _context.Name, id, e.Message);
        }
        finally
        {
            if (opened) _context.Counters.SessionClosed();
            if (onward is not null) await onward.DisposeAsync().ConfigureAwait(false);
            await stream.DisposeAsync().ConfigureAwait(false);
        }
    }

    public Task StopAsync(CancellationToken cancellationToken) => _orPort.StopAsync(cancellationToken);

    public async ValueTask DisposeAsync()
    {
        await _child.DisposeAsync().ConfigureAwait(false);
        await _orPort.StopAsync(new CancellationToken(true)).ConfigureAwait(false);
        await _orPort.DisposeAsync().ConfigureAwait(false);
    }
}
