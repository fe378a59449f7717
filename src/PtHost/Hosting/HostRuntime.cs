using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using PtHost.Configuration;
using PtHost.Contract;
using PtHost.Ipc;
using PtHost.Net;
using PtHost.Plugins;
using PtHost.Socks;

namespace PtHost.Hosting;

/// <summary>
/// Runs the configured role: creates each transport, opens its front end or server, prints the
/// CMETHOD/SMETHOD lines, and on stop drains sessions (spec/ipc.md §4, §9).
/// </summary>
public sealed class HostRuntime : IHostedService, IMetricsSource
{
    public static readonly TimeSpan StatusInterval = TimeSpan.FromSeconds(60);
    private readonly PtConfig _config;
    private readonly IpcWriter _ipc;
    private readonly SignalRouter _signals;
    private readonly SignalRoutes _routes;
    private readonly TransportRegistry _registry;
    private readonly ILoggerFactory _loggers;
    private readonly ILogger _log;
    private readonly IHostApplicationLifetime _lifetime;
    private readonly HostOptions _hostOptions;
    private readonly List<Socks5Listener> _frontEnds = [];
    private readonly List<Transparent.IFrontEnd> _transparent = []; // spec/ipc.md §12
    private readonly List<PtHost.Turn.TurnListener> _turnListeners = []; // spec/turn.md
    private PtHost.Net.Udp.ServerAssociations? _udp; // spec/turn.md §5.4
    private readonly List<(string Name, IServerManager Manager)> _servers = [];
    private readonly List<IAsyncDisposable> _factories = [];
    private readonly Dictionary<string, TransportCounters> _counters = [];
    private readonly CancellationTokenSource _abort = new();
    private Timer? _statusTimer;
    private MetricsEndpoint? _metrics;
    private bool _methodsDone;

    /// <summary>Ends open sessions now instead of letting them drain (a second SIGINT).</summary>
    public void AbortSessions() => _abort.Cancel();

    public HostRuntime(PtConfig config, IpcWriter ipc, SignalRouter signals, SignalRoutes routes, TransportRegistry registry,
        ILoggerFactory loggers, IHostApplicationLifetime lifetime, Microsoft.Extensions.Options.IOptions<HostOptions> hostOptions)
    {
        _routes = routes;
        _config = config;
        _ipc = ipc;
        _signals = signals;
        _registry = registry;
        _loggers = loggers;
        _log = loggers.CreateLogger("PtHost");
        _lifetime = lifetime;
        _hostOptions = hostOptions.Value;
    }

    /// <summary>The METHOD-ERROR text of a transport not started because the host was told to stop while starting.</summary>
    public const string StoppedWhileStarting = "pthost is shutting down: stopped before this transport started";

    /// <summary>Set when no transport could start: the process exits with this code.</summary>
    public int? FailureExitCode { get; private set; }

    public async Task StartAsync(CancellationToken cancellationToken)
    {
        if (_config.IpcVersion == 1)
        {
            // pt-spec §3.3: VERSION first; PROXY DONE once the upstream proxy is accepted (Program validated it).
            _ipc.Version("1");
            if (_config.Role == Role.Client && _config.UpstreamProxy is not null) _ipc.ProxyDone();
            _ipc.StatusVersion("pthost", Program.VersionText);
        }
        else
        {
            _ipc.Version(_config.AnnouncedVersion);
            if (_config.Role == Role.Client && _config.UpstreamProxy is not null) _ipc.ProxyDone();
        }
        WarnAboutCatchAlls();
        if (_config.PluginDirectory is { } dir && PluginSupport.IsSupported) _registry.LoadPlugins(dir, _log); // PtConfig refused plugindir otherwise
        var dialer = OutboundDialer.Create(_config);
        int started = 0;
        foreach (string name in _config.Transports)
        {
            if (cancellationToken.IsCancellationRequested)
            {
                // Stopped while starting (stdin closed, SIGTERM): the rest are not started, and that is no failure (spec/ipc.md §9).
                ReportStopped(name);
                continue;
            }
            var transport = _registry.Create(name);
            if (transport is null && _config.IpcVersion == 1)
            {
                _log.LogInformation("transport {Name} is not one pthost has; ignored (pt-spec §3.2.1)", name);
                continue;
            }
            if (transport is null)
            {
                ReportError(name, $"no transport named \"{name}\" (known: {string.Join(", ", _registry.Names.Order())})");
                continue;
            }
            var counters = new TransportCounters();
            try
            {
                string state = Path.Combine(_config.StateDirectory, name);
                Directory.CreateDirectory(state);
                var options = _config.Options.GetValueOrDefault(name);
                var endpoint = _routes.EndpointOf(name);
                if (_config.Role == Role.Server && endpoint is not null) options = BridgeLine.ServerOptions(name, options, endpoint);
                var context = new TransportEnvironment(name, options, state, _routes.For(name) ?? _signals.For(name), dialer, _loggers, counters);
                if (_config.Role == Role.Client && _config.IpcVersion == 1)
                {
                    // spec/rendezvous.md §7.4: a PT 1.0 client takes its route from each bridge line.
                    var bridged = new BridgeLineClientFactory(name, transport, context, _routes, dialer, _loggers);
                    await StartClientAsync(name, bridged, context, cancellationToken).ConfigureAwait(false);
                }
                else if (_config.Role == Role.Client) await StartClientAsync(name, transport.CreateClientFactory(context), context, cancellationToken).ConfigureAwait(false);
                else await StartServerAsync(name, transport, context, dialer, endpoint, cancellationToken).ConfigureAwait(false);
                lock (_counters) _counters[name] = counters; // STATUS lines report transports that started
                started++;
            }
            catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
            {
                ReportStopped(name);
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                // A transport (perhaps a plugin) failing in any way costs that transport only.
                if (e is not (TransportOptionsException or OptionsException or System.Net.Sockets.SocketException or IOException or UnauthorizedAccessException))
                    _log.LogError(e, "transport {Name} threw while starting", name);
                ReportError(name, e.Message);
            }
        }
        if (_config.Role == Role.Client) _ipc.CmethodsDone(); else _ipc.SmethodsDone();
        Volatile.Write(ref _methodsDone, started > 0);
        if (cancellationToken.IsCancellationRequested)
        {
            _log.LogInformation("stopped while starting: {Started} of {Count} transports started", started, _config.Transports.Count);
            return;
        }
        if (started == 0)
        {
            _log.LogError("no transport started; exiting");
            FailureExitCode = ExitCodes.Unavailable;
            _lifetime.StopApplication();
            return;
        }
        _statusTimer = new Timer(_ => ReportStatus(), null, StatusInterval, StatusInterval);
        if (_config.Metrics is { } metrics)
        {
            // spec/ipc.md §4.12: a metrics address that cannot be bound costs the metrics only, never the transports.
            try
            {
                _metrics = MetricsEndpoint.Start(metrics, () => [this], _log);
                _ipc.MetricsAddress(_metrics.LocalEndPoint);
            }
            catch (System.Net.Sockets.SocketException e)
            {
                _log.LogError("metrics endpoint not started: cannot listen on {Address}: {Error}", metrics, e.SocketErrorCode);
                _ipc.Log("error", $"metrics endpoint not started: cannot listen on {metrics}: {e.SocketErrorCode}");
            }
        }
    }

    /// <summary>spec/ipc.md §4.12: the instance, then every started transport's counters.</summary>
    public void WriteMetrics(MetricsWriter metrics)
    {
        string role = _config.Role == Role.Client ? "client" : "server";
        metrics.Gauge("pthost_instance_info", "The process's instance id (constant 1).", 1, ("id", _config.Instance), ("process", role), ("version", Program.VersionText));
        KeyValuePair<string, TransportCounters>[] all;
        lock (_counters) all = [.. _counters];
        foreach (var (name, counters) in all) counters.WriteMetrics(metrics, name, role);
    }

    /// <summary>
    /// spec/ipc.md §3.4: an <c>allow</c> entry with prefix 0 makes a free server an open proxy to every
    /// public address for whoever reaches its transport; said once at start-up on stderr and in a LOG line.
    /// </summary>
    private void WarnAboutCatchAlls()
    {
        if (_config.Allow is not { } allow) return;
        foreach (string entry in allow.CatchAlls)
        {
            string message = $"allow entry \"{entry}\" is a catch-all: anyone who reaches this server's transport can reach every public address through it (special-purpose ranges stay refused unless an entry inside them names them)";
            _log.LogWarning("{Message}", message);
            _ipc.Log("warning", message);
        }
    }

    /// <summary>A transport not started because the host is stopping: the METHOD-ERROR the parent expects, and no error in the log.</summary>
    private void ReportStopped(string name)
    {
        _log.LogInformation("transport {Name} not started: {Message}", name, StoppedWhileStarting);
        if (_config.Role == Role.Client) _ipc.CmethodError(name, StoppedWhileStarting); else _ipc.SmethodError(name, StoppedWhileStarting);
    }

    private void ReportError(string name, string message)
    {
        _log.LogError("transport {Name} not started: {Message}", name, message);
        _ipc.Log("error", $"transport {name} not started: {message}");
        if (_config.Role == Role.Client) _ipc.CmethodError(name, message); else _ipc.SmethodError(name, message);
    }

    private async Task StartClientAsync(string name, IClientFactory factory, TransportEnvironment context, CancellationToken ct)
    {
        _factories.Add(factory);
        if (factory is IStartableClientFactory startable) await startable.StartAsync(ct).ConfigureAwait(false);
        if (_config.Mode != ClientMode.Socks5)
        {
            StartTransparent(name, factory, context.Counters);
            return;
        }
        var listener = new Socks5Listener(name, _config.ProxyListenAddresses[name], factory, context.Counters, new Socks5Limits(), _loggers.CreateLogger("PtHost.Socks"));
        _frontEnds.Add(listener);
        listener.Start();
        _ipc.Cmethod(name, "socks5", listener.LocalEndPoint);
        WarnIfPublic(name, "SOCKS5 front end", listener.LocalEndPoint, "anyone who reaches it can use the transport");
        StartTurn(name, factory, context.Counters);
    }

    /// <summary>
    /// A transparent front end (spec/ipc.md §12.3–§12.5) and its CMETHOD line, whose protocol word names the mode:
    /// <c>transparent-TCP</c>, <c>transparent-UDP</c> or <c>STUN</c> (the dispatcher's mode names).
    /// </summary>
    private void StartTransparent(string name, IClientFactory factory, TransportCounters counters)
    {
        var bind = _config.ProxyListenAddresses[name];
        Transparent.IFrontEnd frontEnd;
        string protocol;
        if (_config.Mode == ClientMode.TransparentTcp)
        {
            frontEnd = new Transparent.TransparentTcpListener(name, bind, _config.Target, factory, counters, _loggers.CreateLogger("PtHost.Transparent"));
            protocol = "transparent-TCP";
        }
        else
        {
            if (!PtHost.Net.Udp.UdpCarrier.CanCarry(factory)) throw new TransportOptionsException($"transport {name} cannot carry UDP (spec/turn.md §5.1): no {(_config.Mode == ClientMode.Stun ? "STUN" : "transparent UDP")} mode");
            frontEnd = new Transparent.TransparentUdpListener(name, bind, _config.Target, factory, counters, _loggers.CreateLogger("PtHost.Transparent"), stunOnly: _config.Mode == ClientMode.Stun);
            protocol = _config.Mode == ClientMode.Stun ? "STUN" : "transparent-UDP";
        }
        _transparent.Add(frontEnd);
        frontEnd.Start();
        _ipc.Cmethod(name, protocol, frontEnd.LocalEndPoint);
        WarnIfPublic(name, protocol + " front end", frontEnd.LocalEndPoint, "anyone who reaches it can use the transport");
    }

    /// <summary>The transport's TURN listener and its CMETHOD line (spec/turn.md §2), when "turn" is configured.</summary>
    private void StartTurn(string name, IClientFactory factory, TransportCounters counters)
    {
        if (_config.Turn is not { } turn) return;
        if (!PtHost.Net.Udp.UdpCarrier.CanCarry(factory))
        {
            _log.LogWarning("transport {Name} cannot carry UDP: no TURN listener", name);
            _ipc.Log("warning", $"transport {name} cannot carry UDP: no TURN listener");
            return;
        }
        PtHost.Turn.TurnListener listener;
        try { listener = new PtHost.Turn.TurnListener(name, turn, factory, _loggers.CreateLogger("PtHost.Turn"), counters: counters); }
        catch (System.Net.Sockets.SocketException e)
        {
            // The transport's SOCKS front end is already announced: it stays; only its TURN listener is missing.
            _log.LogError("transport {Name}: TURN listener not started: cannot listen on {Address}: {Error}", name, turn.ListenAddress, e.SocketErrorCode);
            _ipc.Log("error", $"transport {name}: TURN listener not started: cannot listen on {turn.ListenAddress}: {e.SocketErrorCode}");
            return;
        }
        _turnListeners.Add(listener);
        listener.Start();
        _ipc.Cmethod(name, "turn", listener.LocalEndPoint);
        WarnIfPublic(name, "TURN listener", listener.LocalEndPoint, "anyone who reaches it gets its unauthenticated replies (rate-limited, spec/turn.md §4)");
    }

    /// <summary>spec/ipc.md §3.2 <c>public-frontends</c>: a front end on a non-loopback address is said once, on stderr and in a LOG line.</summary>
    private void WarnIfPublic(string name, string what, System.Net.IPEndPoint address, string consequence)
    {
        if (PtConfig.IsLoopback(address.Address)) return;
        string message = $"transport {name}: {what} listens on {address}, not a loopback address (\"public-frontends\": true): {consequence}";
        _log.LogWarning("{Message}", message);
        _ipc.Log("warning", message);
    }

    private async Task StartServerAsync(string name, IPluggableTransport transport, TransportEnvironment context, INetworkDialer dialer,
        PtHost.Net.Signals.RendezvousEndpoint? endpoint, CancellationToken ct)
    {
        var factory = transport.CreateServerFactory(context);
        _factories.Add(factory);
        var extOrPort = _config.ExtendedOrPort is { } ext
            ? new ExtOrPort.ExtOrPortClient(ext, _config.AuthCookieFile!, name, new DirectDialer(), _loggers.CreateLogger("PtHost.ExtOrPort"))
            : null;
        _udp ??= new PtHost.Net.Udp.ServerAssociations(_config.Target, _config.Allow, _loggers.CreateLogger("PtHost.Turn"));
        var handler = new InboundSessions(name, Onward(dialer, extOrPort), _udp, context.Counters, _loggers.CreateLogger("PtHost.Sessions"));
        var binding = new ServerBinding(_config.BindAddresses[name], _config.Target, handler);
        var manager = _config.Target is null
            ? await factory.ProxyAsync(binding, ct).ConfigureAwait(false)
            : await factory.ListenAsync(binding, ct).ConfigureAwait(false);
        _servers.Add((name, manager));
        // spec/rendezvous.md §7.3: with a route, ARGS carries everything a bridge line needs.
        _ipc.Smethod(name, manager.LocalEndPoint, endpoint is null ? manager.Args : BridgeLine.ServerArgs(name, manager.Args, context.Options, endpoint));
    }

    /// <summary>
    /// Where server sessions go (spec/ipc.md §3.6): in PT 1.0 server mode with an ExtORPort, every
    /// stream session through its handshake (§10.4); else the bound target, or for a free server the
    /// session's destination after the <c>allow</c> check.
    /// </summary>
    private OnwardConnect Onward(INetworkDialer dialer, ExtOrPort.ExtOrPortClient? extOrPort)
    {
        if (extOrPort is not null) return (_, remote, ct) => extOrPort.OpenAsync(remote, ct);
        if (_config.Target is { } target) return (_, _, ct) => dialer.ConnectTcpAsync(target, ct);
        var allow = _config.Allow!;
        return (destination, _, ct) => destination is null
            ? throw new TransportConnectException(ConnectFailure.NotAllowed, "this server is free (no target) and the session names no destination")
            : OutboundDialer.ConnectAllowedAsync(dialer, destination, allow, ct);
    }

    /// <summary>
    /// One STATUS line per started transport (spec/ipc.md §4.7). The counters are read under the lock and written
    /// outside it, so a stdout that waits cannot hold up the metrics endpoint. <paramref name="requested"/>: the
    /// parent asked (stdin), and its answer waits for stdout; the periodic and the shutdown lines are dropped when
    /// stdout does not take them within <see cref="IpcWriter.DroppableWait"/> (§4.1).
    /// </summary>
    private void ReportStatus(bool requested = false)
    {
        KeyValuePair<string, TransportCounters>[] all;
        lock (_counters) all = [.. _counters];
        foreach (var (name, c) in all) _ipc.Status(name, c.Snapshot(), droppable: !requested);
    }

    /// <summary>
    /// A parent's <c>STATUS</c> request on stdin (spec/ipc.md §4.7): one STATUS line per started
    /// transport at once. Before <c>*METHODS DONE</c> it writes nothing (§4.9).
    /// </summary>
    public void ReportStatusNow()
    {
        if (Volatile.Read(ref _methodsDone)) ReportStatus(requested: true);
    }

    public async Task StopAsync(CancellationToken cancellationToken)
    {
        _statusTimer?.Dispose();
        if (_metrics is not null) await _metrics.DisposeAsync().ConfigureAwait(false);
        _ipc.Log("notice", "shutting down: no new sessions; open sessions drain", droppable: true);
        // Stop accepting everywhere first, then let sessions drain until the host's shutdown timeout.
        using var drain = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, _abort.Token);
        drain.CancelAfter(_hostOptions.ShutdownTimeout - TimeSpan.FromMilliseconds(250));
        var stops = _frontEnds.Select(f => f.StopAsync(drain.Token)).Concat(_servers.Select(s => s.Manager.StopAsync(drain.Token)))
            .Concat(_turnListeners.Select(t => t.StopAsync(drain.Token))).Concat(_transparent.Select(t => t.StopAsync(drain.Token)));
        await Task.WhenAll(stops).ConfigureAwait(false);
        foreach (var f in _frontEnds) await f.DisposeAsync().ConfigureAwait(false);
        foreach (var t in _turnListeners) await t.DisposeAsync().ConfigureAwait(false);
        foreach (var t in _transparent) await t.DisposeAsync().ConfigureAwait(false);
        foreach (var (_, m) in _servers) await m.DisposeAsync().ConfigureAwait(false);
        foreach (var f in _factories) await f.DisposeAsync().ConfigureAwait(false);
        if (_counters.Count > 0) ReportStatus();
    }
}

/// <summary>sysexits(3) codes used by pthost.</summary>
public static class ExitCodes
{
    public const int Ok = 0, Usage = 64, DataError = 65, Unavailable = 69, Software = 70, CantCreate = 73, IoError = 74, Config = 78;
}
