using System.Net;

namespace PtHost.Transports.Zephyr;

/// <summary>Settings of the Zephyr relay service (spec/zephyr.md §5).</summary>
public sealed record ZephyrRelayOptions
{
    public const int DefaultPort = 8888;

    public IPEndPoint Listen { get; init; } = new(IPAddress.Any, DefaultPort);

    /// <summary>Time to receive the whole 12-byte bind request after accepting (§4.2).</summary>
    public TimeSpan BindTimeout { get; init; } = TimeSpan.FromSeconds(15);

    /// <summary>Time for the named peer to bind back after a bind request (§4.3).</summary>
    public TimeSpan PeerTimeout { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>
    /// After one direction of a bound pair ended (FIN passed on), how long the other direction may
    /// stay idle before the pair is closed (§4.5).
    /// </summary>
    public TimeSpan HalfCloseIdleTimeout { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>A bound pair that moved no byte either way for this long is closed (§4.5).</summary>
    public TimeSpan IdleTimeout { get; init; } = TimeSpan.FromSeconds(600);

    /// <summary>A bound pair is closed this long after it was bound, whatever it carries (§4.5).</summary>
    public TimeSpan MaxLifetime { get; init; } = TimeSpan.FromHours(24);

    /// <summary>Connections held at once, in any state (§4.6).</summary>
    public int MaxConnections { get; init; } = 20_000;

    /// <summary>Connections held at once from one source address (§4.6).</summary>
    public int MaxPerSource { get; init; } = 1_000;

    /// <summary>IPv6 sources count per network of this many bits for <see cref="MaxPerSource"/> (§4.6).</summary>
    public int IPv6SourcePrefix { get; init; } = PtHost.Net.SourceAddress.DefaultIPv6Prefix;

    /// <summary>
    /// Test mode (§4.8): on the first end of stream from either peer of a pair, abort both sockets at once
    /// (SO_LINGER 0), discarding whatever is still queued, as the seed's "MUST immediately close" read literally.
    /// </summary>
    public bool StrictClose { get; init; }

    /// <summary>The instance id in the metrics (§4.9): <c>--instance</c>, else "zephyr-" and 16 random hex digits per start.</summary>
    public string Instance { get; init; } = "zephyr-" + Convert.ToHexStringLower(System.Security.Cryptography.RandomNumberGenerator.GetBytes(8));

    /// <summary>The cluster's internal link (§8); null: a lone relay, untagged zids.</summary>
    public ZephyrLink? Cluster { get; init; }

    /// <summary>Where the internal link listens (§8.3); with <see cref="Cluster"/> only.</summary>
    public IPEndPoint? LinkListen { get; init; }

    /// <summary>Interval of the stats log line.</summary>
    public TimeSpan StatsInterval { get; init; } = TimeSpan.FromSeconds(60);
}
