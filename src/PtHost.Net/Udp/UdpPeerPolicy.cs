using PtHost.Contract;

namespace PtHost.Net.Udp;

/// <summary>
/// Which UDP peers a free server process may reach (spec/turn.md §6.1): port 0 never, otherwise
/// the rule every destination of a free server passes (<see cref="AllowList.Refuse"/>: the
/// <c>allow</c> list, and for special-purpose ranges only an entry inside the range).
/// </summary>
public sealed class UdpPeerPolicy
{
    private readonly AllowList _allow;

    public UdpPeerPolicy(AllowList allow) => _allow = allow;

    /// <summary>Null when <paramref name="peer"/> may be reached; otherwise why not (for logs).</summary>
    public string? Refuse(PeerAddress peer) =>
        peer.Port == 0 ? "port 0" : _allow.Refuse(peer.Unmapped().ToIPAddress(), peer.Port);
}
