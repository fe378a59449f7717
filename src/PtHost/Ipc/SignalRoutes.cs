using Microsoft.Extensions.Logging;
using PtHost.Configuration;
using PtHost.Contract;
using PtHost.Net.Signals;

namespace PtHost.Ipc;

/// <summary>
/// The host's signal routes through rendezvous services (spec/rendezvous.md §7): one route (its own
/// <see cref="SignalEnvelopes"/>, the same envelope rules as the stdio lines) per distinct rendezvous,
/// URL and secret. Routes named in the configuration open at start; a PT 1.0 client opens one per
/// bridge line's rendezvous on first use and keeps it for the life of the process (at most <see cref="MaxRoutes"/>).
/// </summary>
public sealed class SignalRoutes : IAsyncDisposable
{
    /// <summary>Distinct routes a process holds at once.</summary>
    public const int MaxRoutes = 16;

    private readonly Role _role;
    private readonly INetworkDialer? _dialer;
    private readonly ILoggerFactory _loggers;
    private readonly Dictionary<string, (RendezvousRoute Route, SignalEnvelopes Envelopes)> _routes = new(StringComparer.Ordinal);
    private readonly Dictionary<string, RendezvousEndpoint> _configured;

    public SignalRoutes(PtConfig config, INetworkDialer? dialer, ILoggerFactory loggers)
    {
        _role = config.Role;
        _dialer = dialer;
        _loggers = loggers;
        _configured = new(config.SignalRoutes, StringComparer.Ordinal);
        foreach (var (transport, endpoint) in _configured) Open(endpoint).For(transport);
    }

    /// <summary>True when <paramref name="transport"/>'s signals go through a configured rendezvous (stdin lines for it are dropped).</summary>
    public bool IsRouted(string transport) => _configured.ContainsKey(transport);

    /// <summary>The configured endpoint of <paramref name="transport"/>, or null.</summary>
    public RendezvousEndpoint? EndpointOf(string transport) => _configured.GetValueOrDefault(transport);

    /// <summary>The signal channel of a configured route, or null when the transport has none.</summary>
    public ISignalChannel? For(string transport) => _configured.TryGetValue(transport, out var e) ? Open(e).For(transport) : null;

    /// <summary>The route to <paramref name="endpoint"/>, opened on first use. Throws <see cref="InvalidOperationException"/> beyond <see cref="MaxRoutes"/>.</summary>
    public SignalEnvelopes Open(RendezvousEndpoint endpoint)
    {
        lock (_routes)
        {
            if (_routes.TryGetValue(endpoint.RouteKey, out var open)) return open.Envelopes;
            if (_routes.Count >= MaxRoutes) throw new InvalidOperationException($"this process already holds {MaxRoutes} rendezvous routes");
            var log = _loggers.CreateLogger("PtHost.Rendezvous");
            var route = new RendezvousRoute(endpoint, _role == Role.Server, _dialer, log);
            var envelopes = new SignalEnvelopes(_role == Role.Server, route.Write, log);
            route.Start(envelopes);
            _routes[endpoint.RouteKey] = (route, envelopes);
            log.LogInformation("signals through the rendezvous, channel {Channel}, as {Role} {Id}", route.Channel, _role == Role.Server ? "server" : "client", envelopes.InstanceId);
            return envelopes;
        }
    }

    public async ValueTask DisposeAsync()
    {
        List<RendezvousRoute> routes;
        lock (_routes) routes = _routes.Values.Select(r => r.Route).ToList();
        foreach (var r in routes) await r.DisposeAsync().ConfigureAwait(false);
    }
}
