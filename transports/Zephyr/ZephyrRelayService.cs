using System.Globalization;
using Microsoft.Extensions.Logging;
using PtHost.Contract;

namespace PtHost.Transports.Zephyr;

/// <summary><c>pthost relay zephyr</c> (spec/zephyr.md §5): its options, and the relay under the executable's host.</summary>
public sealed class ZephyrRelayService : IRelayService
{
    public string Name => "zephyr";

    public string Description => "Run the Zephyr relay service (spec/zephyr.md §4, §5).";

    public IReadOnlyList<RelayOption> Options { get; } =
    [
        new("listen", RelayOptionKind.EndPoint, "Where to listen; [::]:PORT listens on IPv6 and IPv4, port 0 picks a free port.", $"0.0.0.0:{ZephyrRelayOptions.DefaultPort}"),
        new("bind-timeout", RelayOptionKind.Seconds, "Time to receive the whole bind request (§4.2).", "15"),
        new("peer-timeout", RelayOptionKind.Seconds, "Time for the named peer to bind back (§4.3).", "30"),
        new("idle-timeout", RelayOptionKind.Seconds, "A bound pair that moves no byte for this long is closed (§4.5).", "600"),
        new("max-lifetime", RelayOptionKind.Seconds, "A bound pair is closed this long after it was bound (§4.5).", "86400"),
        new("max-connections", RelayOptionKind.Count, "Connections held at once (§4.6).", "20000"),
        new("max-per-source", RelayOptionKind.Count, "Connections held at once from one source (§4.6).", "1000"),
        new("ipv6-source-prefix", RelayOptionKind.Count, "IPv6 sources count per network of this many bits, 1 to 128 (§4.6).", "64"),
        new("strict-close", RelayOptionKind.Flag, "Test mode: on the first FIN of a pair, reset both peers at once and discard what is queued (§4.8)."),
        new("stats-interval", RelayOptionKind.Seconds, "Interval of the stats log line and the STATUS line (§4.7).", "60"),
        new("instance", RelayOptionKind.Name, "The instance id in the metrics (§4.9); default: zephyr- and 16 random hex digits."),
    ];

    public IRelay Create(RelayArguments arguments, ILoggerFactory loggerFactory)
    {
        int prefix = arguments.Count("ipv6-source-prefix");
        if (prefix > 128) throw new OptionsException("--ipv6-source-prefix", $"{prefix} is not a prefix length from 1 to 128");
        var options = new ZephyrRelayOptions
        {
            Listen = arguments.EndPoint("listen")!,
            BindTimeout = arguments.Seconds("bind-timeout"),
            PeerTimeout = arguments.Seconds("peer-timeout"),
            MaxConnections = arguments.Count("max-connections"),
            MaxPerSource = arguments.Count("max-per-source"),
            IPv6SourcePrefix = prefix,
            IdleTimeout = arguments.Seconds("idle-timeout"),
            MaxLifetime = arguments.Seconds("max-lifetime"),
            StatsInterval = arguments.Seconds("stats-interval"),
            StrictClose = arguments.Flag("strict-close"),
        };
        if (arguments.Name("instance") is { } instance) options = options with { Instance = instance };
        return new Running(new ZephyrRelay(options, loggerFactory.CreateLogger("PtHost.Relay.Zephyr")), options);
    }

    private sealed class Running(ZephyrRelay relay, ZephyrRelayOptions options) : IRelay, IMetricsSource
    {
        /// <summary>spec/zephyr.md §4.9.</summary>
        public void WriteMetrics(MetricsWriter metrics) => relay.WriteMetrics(metrics, options.Instance);

        public Task StartAsync(CancellationToken cancellationToken)
        {
            try { relay.Start(); }
            catch (System.Net.Sockets.SocketException e) { throw new IOException($"{options.Listen}: {e.Message}", e); }
            return Task.CompletedTask;
        }

        public string ListenText => relay.LocalEndPoint.ToString();

        public TimeSpan? StatusInterval => options.StatsInterval;

        /// <summary>spec/zephyr.md §4.7.</summary>
        public string StatusText()
        {
            var s = relay.GetStats();
            return string.Create(CultureInfo.InvariantCulture,
                $"TRANSPORT=zephyr CONNECTIONS={s.Connections} BOUND-PAIRS={s.BoundPairs} ACCEPTED={s.Accepted} REFUSED-BY-LIMITS={s.RefusedByLimits} BINDINGS={s.Bindings} BIND-FAILURES={s.BindFailures} TIMEOUTS={s.Timeouts} BYTES={s.Bytes} IDLE-CLOSED={s.IdleClosed} LIFETIME-CLOSED={s.LifetimeClosed}");
        }

        public async ValueTask DisposeAsync()
        {
            await relay.DisposeAsync().ConfigureAwait(false);
            relay.LogStats();
        }
    }
}
