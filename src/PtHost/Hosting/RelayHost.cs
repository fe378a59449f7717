using System.Net.Sockets;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Hosting.Systemd;
using Microsoft.Extensions.Logging;
using PtHost.Contract;
using PtHost.Ipc;

namespace PtHost.Hosting;

/// <summary>
/// One relay (<c>pthost relay NAME</c>, spec/ipc.md §2.4) as the host's service: creates and starts
/// it, writes <c>LISTEN NAME ...</c> and then its <c>STATUS</c> lines on stdout, and closes it when
/// the host stops (SIGTERM, SIGINT). A configuration it refuses ends the run with 78; a relay that
/// cannot run here or cannot listen, with 69. Under systemd (<paramref name="systemd"/>) it sends
/// READY=1 right after <c>LISTEN</c> (never when it fails to start) and STOPPING=1 when it stops.
/// </summary>
internal sealed class RelayHost(IRelayService service, RelayArguments arguments, IpcWriter ipc, IHostApplicationLifetime lifetime, ILoggerFactory loggers,
    ISystemdNotifier? systemd = null, string? command = null)
    : IHostedService
{
    private readonly ILogger _log = loggers.CreateLogger("PtHost.Relay");
    private IRelay? _relay;
    private MetricsEndpoint? _metrics;
    private Timer? _status;

    /// <summary>
    /// <c>--metrics IP:PORT</c> (spec/ipc.md §4.12): the executable adds it to every relay; the Prometheus endpoint
    /// starts after the relay's listeners and the <c>LISTEN</c> line ends with <c>metrics=IP:PORT</c>.
    /// </summary>
    public static readonly RelayOption MetricsOption = new("metrics", RelayOptionKind.EndPoint,
        "Serve Prometheus metrics (GET /metrics) on this address; off unless given (spec/ipc.md §4.12).");
    private bool _listening;

    /// <summary>The process's exit code once the host has stopped.</summary>
    public int ExitCode { get; private set; } = ExitCodes.Ok;

    public async Task StartAsync(CancellationToken cancellationToken)
    {
        try
        {
            _relay = service.Create(arguments, loggers);
            await _relay.StartAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (Exception e) when (e is TransportOptionsException or OptionsException)
        {
            Fail(ExitCodes.Config, e.Message);
            return;
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            // Stopped (SIGTERM, SIGINT) before it listened: exit 0, no LISTEN line, no READY=1.
            _log.LogInformation("stopped before listening");
            return;
        }
        catch (PlatformNotSupportedException e)
        {
            Fail(ExitCodes.Unavailable, e.Message);
            return;
        }
        catch (Exception e) when (e is SocketException or IOException || e.InnerException is SocketException)
        {
            Fail(ExitCodes.Unavailable, "cannot listen: " + e.Message);
            return;
        }
        string listen = _relay.ListenText;
        if (arguments.EndPoint(MetricsOption.Name) is { } metricsAddress)
        {
            try
            {
                var relay = _relay;
                _metrics = MetricsEndpoint.Start(metricsAddress, () => relay is IMetricsSource m ? [m] : [], _log);
            }
            catch (SocketException e)
            {
                await _relay.DisposeAsync().ConfigureAwait(false);
                _relay = null;
                Fail(ExitCodes.Unavailable, "cannot listen: metrics: " + e.Message);
                return;
            }
            listen += " metrics=" + _metrics.LocalEndPoint;
        }
        _listening = true;
        ipc.Listen(service.Name, listen);
        systemd?.Notify(ServiceState.Ready);
        if (_relay.StatusInterval is { } every) _status = new Timer(_ => ipc.RelayStatus(_relay.StatusText()), null, every, every);
    }

    public async Task StopAsync(CancellationToken cancellationToken)
    {
        if (_listening) _log.LogInformation("stopping: closing the listeners");
        if (_listening) systemd?.Notify(ServiceState.Stopping);
        if (_status is not null) await _status.DisposeAsync().ConfigureAwait(false);
        if (_metrics is not null) await _metrics.DisposeAsync().ConfigureAwait(false);
        if (_relay is null) return;
        await _relay.DisposeAsync().ConfigureAwait(false);
        // The last STATUS line, after every held connection was closed (e.g. spec/zephyr.md §4.7).
        if (_listening && _relay.StatusInterval is not null) ipc.RelayStatus(_relay.StatusText());
    }

    private void Fail(int exitCode, string message)
    {
        Console.Error.WriteLine($"pthost: {command ?? "relay " + service.Name}: {message}");
        ExitCode = exitCode;
        lifetime.StopApplication();
    }
}
