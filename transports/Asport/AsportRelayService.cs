using Microsoft.Extensions.Logging;
using PtHost.Contract;
using PtHost.Quic;

namespace PtHost.Transports.Asport;

/// <summary><c>pthost relay asport</c> (spec/asport.md §5): the ASPORT server under the executable's host.</summary>
public sealed class AsportRelayService : IRelayService
{
    public string Name => "asport";

    public string Description => "Run the ASPORT server: QUIC, public TCP/UDP ports for registered clients (spec/asport.md §5).";

    public IReadOnlyList<RelayOption> Options { get; } =
    [
        new("listen", RelayOptionKind.EndPoint, "The QUIC (UDP) listener.", Required: true),
        new("config", RelayOptionKind.File, "The JSON configuration file (spec/asport.md §5).", Required: true),
    ];

    public IRelay Create(RelayArguments arguments, ILoggerFactory loggerFactory)
    {
        if (QuicLibrary.UnavailableReason is { } why) throw new PlatformNotSupportedException(why);
        string file = arguments.File("config")!;
        AsportRelayOptions options;
        try { options = AsportRelayOptions.Load(file) with { Listen = arguments.EndPoint("listen")! }; }
        catch (Exception e) when (e is OptionsException or IOException or UnauthorizedAccessException)
        {
            throw new TransportOptionsException($"{file}: {e.Message}", e);
        }
        return new Running(new AsportRelay(options, loggerFactory.CreateLogger("PtHost.Relay.Asport")), options);
    }

    private sealed class Running(AsportRelay server, AsportRelayOptions options) : IRelay, IMetricsSource
    {
        private readonly string _instance = "asport-" + Convert.ToHexStringLower(System.Security.Cryptography.RandomNumberGenerator.GetBytes(8));

        /// <summary>spec/asport.md §5 (metrics).</summary>
        public void WriteMetrics(MetricsWriter metrics) => server.WriteMetrics(metrics, _instance);

        public Task StartAsync(CancellationToken cancellationToken)
        {
            try { server.Start(); }
            catch (System.Net.Sockets.SocketException e) { throw new IOException($"{options.Listen}: {e.Message}", e); }
            return Task.CompletedTask;
        }

        /// <summary>spec/asport.md §5: the address, then the certificate pin clients use.</summary>
        public string ListenText => $"{server.LocalEndPoint} sha256={Convert.ToHexStringLower(options.Certificate.Sha256)}";

        public TimeSpan? StatusInterval => null; // counters go to the log at shutdown

        public string StatusText() => throw new NotSupportedException("the ASPORT relay writes no STATUS lines");

        public async ValueTask DisposeAsync()
        {
            await server.DisposeAsync().ConfigureAwait(false);
            server.LogStats();
        }
    }
}
