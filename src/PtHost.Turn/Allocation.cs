using PtHost.Contract;

namespace PtHost.Turn;

/// <summary>
/// One allocation (RFC 5766 §5): its client and user, permissions, channel bindings (with the
/// 5-minute cooling of expired ones, §11), the peers already checked with the server process
/// (spec/turn.md §5.3), and the association that relays it. Fields are guarded by <see cref="Lock"/>.
/// </summary>
internal sealed class Allocation(long id, TurnClient client, string user, byte[] allocateTransaction, DateTimeOffset expires)
{
    /// <summary>RFC 5766 §11: after a binding expires, neither its channel nor its peer may be bound otherwise for 5 minutes.</summary>
    public static readonly TimeSpan ChannelCooling = TimeSpan.FromMinutes(5);

    public readonly long Id = id;
    public readonly TurnClient Client = client;
    public readonly string User = user;
    public readonly byte[] AllocateTransaction = allocateTransaction;
    public readonly Lock Lock = new();
    public readonly Dictionary<PeerAddress, DateTimeOffset> Permissions = [];
    public readonly Dictionary<ushort, ChannelBinding> Channels = [];
    public readonly Dictionary<PeerAddress, ushort> ChannelOf = [];
    public readonly Dictionary<ushort, ChannelBinding> Cooling = []; // expired bindings, for 5 minutes
    public readonly HashSet<PeerAddress> Checked = [];
    public DateTimeOffset Expires = expires;
    public volatile IAssociation? Association;
    public byte[]? AllocateResponse;
    public volatile bool Deleted;

    /// <summary>True when an expired binding still holds <paramref name="channel"/> for another peer, or <paramref name="peer"/> for another channel. Caller holds <see cref="Lock"/>.</summary>
    public bool IsCooling(ushort channel, PeerAddress peer, DateTimeOffset now)
    {
        foreach (var (c, b) in Cooling)
        {
            if (b.Expires < now) continue;
            if (c == channel && !b.Peer.Equals(peer)) return true;
            if (c != channel && b.Peer.Unmapped().Equals(peer.Unmapped())) return true;
        }
        return false;
    }
}

/// <summary>A channel bound to a peer until <see cref="Expires"/> (RFC 5766 §11).</summary>
internal readonly record struct ChannelBinding(PeerAddress Peer, DateTimeOffset Expires);
