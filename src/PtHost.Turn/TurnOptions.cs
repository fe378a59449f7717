using System.Net;

namespace PtHost.Turn;

/// <summary>The top-level <c>turn</c> key of a client configuration (spec/turn.md §2).</summary>
public sealed class TurnOptions
{
    public TurnOptions(IPEndPoint listenAddress, string realm, IReadOnlyDictionary<string, string> users, TurnLimits? limits = null)
    {
        ListenAddress = listenAddress;
        Realm = realm;
        Users = users;
        Limits = limits ?? new TurnLimits();
    }

    /// <summary>Where each transport's TURN listener binds (UDP and TCP on one port); port 0 picks one per transport.</summary>
    public IPEndPoint ListenAddress { get; }

    /// <summary>The REALM of the long-term credential mechanism.</summary>
    public string Realm { get; }

    /// <summary>User name → password.</summary>
    public IReadOnlyDictionary<string, string> Users { get; }

    public TurnLimits Limits { get; }
}

/// <summary>Limits and lifetimes (spec/turn.md §4). The defaults are what the configuration gives.</summary>
public sealed record TurnLimits
{
    /// <summary>Allocations of one listener; over it Allocate gets 508.</summary>
    public int MaxAllocations { get; init; } = 1024;
    /// <summary>Allocations of one user name; over it Allocate gets 486.</summary>
    public int MaxAllocationsPerUser { get; init; } = 128;
    /// <summary>Permissions of one allocation; over it CreatePermission/ChannelBind get 508.</summary>
    public int MaxPermissions { get; init; } = 256;
    /// <summary>Channels of one allocation; over it ChannelBind gets 508.</summary>
    public int MaxChannels { get; init; } = 256;
    /// <summary>TCP connections of one listener; more are closed at accept.</summary>
    public int MaxTcpConnections { get; init; } = 1024;
    public TimeSpan DefaultLifetime { get; init; } = TimeSpan.FromSeconds(600);
    public TimeSpan MaxLifetime { get; init; } = TimeSpan.FromSeconds(3600);
    public TimeSpan PermissionLifetime { get; init; } = TimeSpan.FromSeconds(300);
    public TimeSpan ChannelLifetime { get; init; } = TimeSpan.FromSeconds(600);
    public TimeSpan NonceLifetime { get; init; } = TimeSpan.FromSeconds(600);
    public TimeSpan ReservationLifetime { get; init; } = TimeSpan.FromSeconds(30);
    /// <summary>How long Allocate may take to open the transport session.</summary>
    public TimeSpan AllocateTimeout { get; init; } = TimeSpan.FromSeconds(30);
    /// <summary>A TCP connection without an allocation is closed after this.</summary>
    public TimeSpan TcpIdleWithoutAllocation { get; init; } = TimeSpan.FromSeconds(60);
}
