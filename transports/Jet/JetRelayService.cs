using System.Net;
using Microsoft.Extensions.Logging;
using PtHost.Contract;

namespace PtHost.Transports.Jet;

/// <summary><c>pthost relay jet</c> (spec/jet.md §5.1): its options, and the relay under the executable's host.</summary>
public sealed class JetRelayService : IRelayService
{
    public string Name => "jet";

    public string Description => "Run the JET relay service: REST API, binary and WebSocket listeners (spec/jet.md §5).";

    public IReadOnlyList<RelayOption> Options { get; } =
    [
        new("listen", RelayOptionKind.EndPoint, "The HTTP listener (REST API, ws://); overrides the configuration's \"listen\".", $"127.0.0.1:{JetRelayOptions.DefaultPort}"),
        new("config", RelayOptionKind.File, "The JSON configuration file (spec/jet.md §5.1)."),
    ];

    public IRelay Create(RelayArguments arguments, ILoggerFactory loggerFactory)
    {
        var listen = arguments.EndPoint("listen")!;
        var options = JetRelayOptions.ForListen(listen);
        if (arguments.File("config") is { } file)
        {
            try
            {
                string full = Path.GetFullPath(file);
                options = JetRelayOptions.Parse(File.ReadAllText(full), options, Path.GetDirectoryName(full)!);
                if (arguments.IsGiven("listen")) options = options with { Listen = listen }; // the command line wins
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException or OptionsException)
            {
                throw new TransportOptionsException($"configuration {file}: {e.Message}", e);
            }
        }
        return new Running(new JetRelay(options, loggerFactory));
    }

    private sealed class Running(JetRelay relay) : IRelay, IMetricsSource
    {
        /// <summary>spec/jet.md §5.8.</summary>
        public void WriteMetrics(MetricsWriter metrics) => relay.WriteMetrics(metrics);

        public Task StartAsync(CancellationToken cancellationToken) => relay.StartAsync(cancellationToken);

        /// <summary>spec/jet.md §5.1: the HTTP listener, then the listeners that are on.</summary>
        public string ListenText => relay.HttpEndPoint
            + (relay.TcpEndPoint is { } t ? $" tcp={t}" : "")
            + (relay.TlsEndPoint is { } s ? $" tls={s}" : "")
            + (relay.WssEndPoint is { } w ? $" wss={w}" : "");

        public TimeSpan? StatusInterval => null; // stats go to the log only (§5.7)

        public string StatusText() => throw new NotSupportedException("the JET relay writes no STATUS lines");

        public async ValueTask DisposeAsync()
        {
            relay.LogStats();
            await relay.DisposeAsync().ConfigureAwait(false);
        }
    }
}
