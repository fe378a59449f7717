using System.Globalization;
using Microsoft.Extensions.Logging;
using PtHost.Contract;

namespace PtHost.Transports.Zephyr;

/// <summary><c>pthost relay zephyr</c> (spec/zephyr.md §5): its options, and the relay under the executable's host.</summary>
public sealed class ZephyrRelayService : IRelayService
{
    public string Name => "zephyr";

    public string Description => "Run the Zephyr relay service (spec/zephyr.md §4, §5).";

    /// <summary>spec/zephyr.md §8.7: a pair's continuations are splice steps and bind lookups; none blocks.</summary>
    public bool InlineSocketCompletions => true;

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
        new("instance-number", RelayOptionKind.Count, "Cluster: this instance's number, 1 to 15, the tag in its zids (§8.1)."),
        new("link", RelayOptionKind.EndPoint, "Cluster: where the internal link listens (§8.3)."),
        new("link-secret", RelayOptionKind.File, "Cluster: the shared secret of the internal link, at least 32 bytes, mode 0600 (§8.4)."),
        new("peers", RelayOptionKind.File, "Cluster: JSON object instance number -> link IP:PORT of every instance, re-read when it changes (§8.5)."),
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
        // §8: the four cluster options go together.
        string[] cluster = ["instance-number", "link", "link-secret", "peers"];
        int given = cluster.Count(arguments.IsGiven);
        if (given is > 0 and < 4)
            throw new OptionsException("--" + cluster.First(o => !arguments.IsGiven(o)), "is required with " + string.Join(", ", cluster.Where(arguments.IsGiven).Select(o => "--" + o)) + " (a cluster needs all four)");
        if (given == 4)
        {
            int number = arguments.Count("instance-number");
            if (number > ZephyrLink.MaxInstance) throw new OptionsException("--instance-number", $"{number} is not an instance number from 1 to 15");
            byte[] secret;
            try { secret = System.Text.Encoding.UTF8.GetBytes(PtHost.Net.PrivateFile.ReadAllText(arguments.File("link-secret")!).Trim()); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { throw new OptionsException("--link-secret", "unusable: " + e.Message); }
            if (secret.Length < 32) throw new OptionsException("--link-secret", $"holds {secret.Length} bytes; at least 32 are required");
            ZephyrLink link;
            try { link = new ZephyrLink(number, secret, arguments.File("peers")!); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { throw new OptionsException("--peers", "unusable: " + e.Message); }
            catch (OptionsException e) { throw new OptionsException("--peers", e.Message); }
            options = options with { Cluster = link, LinkListen = arguments.EndPoint("link") };
            if (arguments.Name("instance") is null) options = options with { Instance = $"zephyr-{number}" };
        }
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

        /// <summary>spec/zephyr.md §5; a cluster instance adds <c>link=IP:PORT</c> (§8.3).</summary>
        public string ListenText => relay.LocalEndPoint + (relay.LinkEndPoint is { } link ? $" link={link}" : "");

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
