using System.Buffers.Binary;
using System.Security.Cryptography;
using Microsoft.Extensions.Logging;
using PtHost.Contract;

namespace PtHost.Turn;

/// <summary>The allocation methods: Allocate (RFC 5766 §6.2), Refresh (§7.2), CreatePermission (§9) and ChannelBind (§11).</summary>
public sealed partial class TurnServer
{
    // ---- Allocate (RFC 5766 §6.2) --------------------------------------------------------------

    private void Allocate(TurnClient client, StunMessage request, string user, byte[] key)
    {
        Allocation? existing;
        lock (_lock) _allocations.TryGetValue(client.Key, out existing);
        if (existing is not null)
        {
            // A retransmission gets the same answer; anything else is a mismatch.
            if (existing.AllocateTransaction.AsSpan().SequenceEqual(request.TransactionId))
            {
                if (existing.AllocateResponse is { } cached) client.Send(cached);
                return;
            }
            SendError(client, request, 437, key);
            return;
        }
        if (!request.TryGet(StunAttribute.RequestedTransport, out var transport) || transport.Length != 4)
        {
            SendError(client, request, 400, key, "Bad Request: REQUESTED-TRANSPORT missing");
            return;
        }
        if (transport[0] != 17)
        {
            SendError(client, request, 442, key);
            return;
        }
        if (request.TryGet(StunAttribute.RequestedAddressFamily, out var family))
        {
            // RFC 6156 §4.2: relayed addresses here are IPv4 (spec/turn.md §3.4).
            if (family.Length != 4 || family[0] is not (1 or 2))
            {
                SendError(client, request, 400, key, "Bad Request: REQUESTED-ADDRESS-FAMILY");
                return;
            }
            if (family[0] == 2)
            {
                SendError(client, request, 440, key);
                return;
            }
        }
        bool hasEven = request.TryGet(StunAttribute.EvenPort, out var even);
        bool hasToken = request.TryGet(StunAttribute.ReservationToken, out var token);
        if ((hasEven && even.Length != 1) || (hasToken && token.Length != 8) || (hasEven && hasToken))
        {
            SendError(client, request, 400, key, "Bad Request: EVEN-PORT and RESERVATION-TOKEN");
            return;
        }
        var now = _time.GetUtcNow();
        var lifetime = Lifetime(request);
        if (lifetime == TimeSpan.Zero) lifetime = _limits.DefaultLifetime;
        Allocation allocation;
        lock (_lock)
        {
            if (hasToken)
            {
                ulong t = BinaryPrimitives.ReadUInt64BigEndian(token);
                if (!_reservations.Remove(t, out var expires) || expires < now)
                {
                    SendError(client, request, 508, key, "Insufficient Capacity: unknown or expired RESERVATION-TOKEN");
                    return;
                }
            }
            if (_allocations.Count >= _limits.MaxAllocations)
            {
                SendError(client, request, 508, key);
                _log.AllocationLimit(client.Remote, _limits.MaxAllocations);
                return;
            }
            int mine = _perUser.GetValueOrDefault(user);
            if (mine >= _limits.MaxAllocationsPerUser)
            {
                SendError(client, request, 486, key);
                _log.UserQuota(user, _limits.MaxAllocationsPerUser);
                return;
            }
            _perUser[user] = mine + 1;
            allocation = new Allocation(Interlocked.Increment(ref _ids), client, user, request.TransactionId.ToArray(), now + lifetime);
            _allocations[client.Key] = allocation;
        }
        ulong reservation = 0;
        if (hasEven && (even[0] & 0x80) != 0)
        {
            reservation = BinaryPrimitives.ReadUInt64BigEndian(RandomNumberGenerator.GetBytes(8));
            lock (_lock) _reservations[reservation] = now + _limits.ReservationLifetime;
        }
        _ = CompleteAllocateAsync(allocation, new PendingRequest(request), key, lifetime, reservation);
    }

    private async Task CompleteAllocateAsync(Allocation allocation, PendingRequest request, byte[] key, TimeSpan lifetime, ulong reservation)
    {
        IAssociation session;
        try
        {
            using var limit = CancellationTokenSource.CreateLinkedTokenSource(_stop.Token);
            limit.CancelAfter(_limits.AllocateTimeout);
            session = await _open(allocation.Id, limit.Token).ConfigureAwait(false);
        }
        catch (Exception e) when (e is TransportConnectException or OperationCanceledException or IOException or System.Net.Sockets.SocketException)
        {
            _log.NoAssociation(allocation.Id, allocation.Client.Remote, e.Message);
            Remove(allocation);
            _counters?.SessionFailed();
            request.Send(allocation.Client, key, 508, $"Insufficient Capacity: transport: {e.Message}");
            return;
        }
        var relayed = session.RelayedAddress;
        if (relayed.IsValid && PublicAddress is { } pub && relayed.ToIPAddress() is { } ra && (ra.Equals(System.Net.IPAddress.Any) || ra.Equals(System.Net.IPAddress.IPv6Any)))
            relayed = PeerAddress.From(new System.Net.IPEndPoint(pub, relayed.Port));
        lock (_lock)
        {
            if (allocation.Deleted)
            {
                _ = session.DisposeAsync().AsTask();
                return;
            }
            allocation.Association = session;
        }
        _counters?.SessionOpened();
        request.Send(allocation.Client, key, 0, null, w =>
        {
            w.AddXorAddress(StunAttribute.XorRelayedAddress, relayed, request.TransactionId);
            w.AddUInt32(StunAttribute.Lifetime, (uint)lifetime.TotalSeconds);
            if (reservation != 0)
            {
                byte[] t = new byte[8];
                BinaryPrimitives.WriteUInt64BigEndian(t, reservation);
                w.Add(StunAttribute.ReservationToken, t);
            }
            w.AddXorAddress(StunAttribute.XorMappedAddress, allocation.Client.Remote, request.TransactionId);
        });
        allocation.AllocateResponse = request.LastResponse;
        _log.Allocated(allocation.Id, allocation.Client.Remote, allocation.User, relayed, lifetime.TotalSeconds);
        _ = RelayFromPeersAsync(allocation, session);
    }

    /// <summary>The requested LIFETIME clamped to [default, max] (RFC 5766 §6.2, §7.2); zero when absent.</summary>
    private TimeSpan Lifetime(StunMessage request)
    {
        if (!request.TryGet(StunAttribute.Lifetime, out var v) || v.Length != 4) return TimeSpan.Zero;
        var asked = TimeSpan.FromSeconds(BinaryPrimitives.ReadUInt32BigEndian(v));
        if (asked < _limits.DefaultLifetime) return _limits.DefaultLifetime;
        return asked > _limits.MaxLifetime ? _limits.MaxLifetime : asked;
    }

    // ---- Refresh (RFC 5766 §7.2) ---------------------------------------------------------------

    private void Refresh(TurnClient client, StunMessage request, string user, byte[] key)
    {
        var allocation = Find(client, request, user, key);
        if (allocation is null) return;
        TimeSpan lifetime;
        if (request.TryGet(StunAttribute.Lifetime, out var v) && v.Length == 4 && BinaryPrimitives.ReadUInt32BigEndian(v) == 0)
        {
            lifetime = TimeSpan.Zero;
            Remove(allocation);
            _log.DeletedByRefresh(allocation.Id);
        }
        else
        {
            lifetime = Lifetime(request);
            if (lifetime == TimeSpan.Zero) lifetime = _limits.DefaultLifetime;
            lock (_lock) allocation.Expires = _time.GetUtcNow() + lifetime;
        }
        Span<byte> buffer = stackalloc byte[ResponseBuffer];
        var w = new StunWriter(buffer, StunMethod.Refresh, StunClass.Success, request.TransactionId);
        w.AddUInt32(StunAttribute.Lifetime, (uint)lifetime.TotalSeconds);
        Finish(ref w, request, key);
        client.Send(w.Written);
    }

    /// <summary>The client's ready allocation; otherwise answers 437 (none) or 441 (another user) and returns null.</summary>
    private Allocation? Find(TurnClient client, StunMessage request, string user, byte[] key)
    {
        Allocation? allocation;
        lock (_lock) _allocations.TryGetValue(client.Key, out allocation);
        if (allocation is null || allocation.Association is null)
        {
            SendError(client, request, 437, key);
            return null;
        }
        if (allocation.User != user)
        {
            SendError(client, request, 441, key);
            return null;
        }
        return allocation;
    }

    // ---- CreatePermission (§9) and ChannelBind (§11) -------------------------------------------

    private void CreatePermission(TurnClient client, StunMessage request, string user, byte[] key)
    {
        var allocation = Find(client, request, user, key);
        if (allocation is null) return;
        var peers = new List<PeerAddress>();
        foreach (var a in request.Attributes)
        {
            if (a.Type != StunAttribute.XorPeerAddress) continue;
            if (!Stun.TryReadXorAddress(a.Value, request.TransactionId, out var peer))
            {
                SendError(client, request, 400, key, "Bad Request: malformed XOR-PEER-ADDRESS");
                return;
            }
            peers.Add(peer);
        }
        if (peers.Count == 0)
        {
            SendError(client, request, 400, key, "Bad Request: XOR-PEER-ADDRESS missing");
            return;
        }
        _ = CompletePermissionAsync(allocation, new PendingRequest(request), key, peers, 0);
    }

    private void ChannelBind(TurnClient client, StunMessage request, string user, byte[] key)
    {
        var allocation = Find(client, request, user, key);
        if (allocation is null) return;
        if (!request.TryGet(StunAttribute.ChannelNumber, out var cn) || cn.Length != 4)
        {
            SendError(client, request, 400, key, "Bad Request: CHANNEL-NUMBER missing");
            return;
        }
        ushort channel = BinaryPrimitives.ReadUInt16BigEndian(cn);
        if (channel is < 0x4000 or > 0x7FFF)
        {
            SendError(client, request, 400, key, "Bad Request: channel number outside 0x4000-0x7FFF");
            return;
        }
        if (!request.TryGet(StunAttribute.XorPeerAddress, out var pa) || !Stun.TryReadXorAddress(pa, request.TransactionId, out var peer))
        {
            SendError(client, request, 400, key, "Bad Request: XOR-PEER-ADDRESS missing or malformed");
            return;
        }
        lock (allocation.Lock)
        {
            if (allocation.Channels.TryGetValue(channel, out var bound) && !bound.Peer.Equals(peer))
            {
                SendError(client, request, 400, key, "Bad Request: channel bound to another peer");
                return;
            }
            if (allocation.ChannelOf.TryGetValue(peer.Unmapped(), out var other) && other != channel)
            {
                SendError(client, request, 400, key, "Bad Request: peer bound to another channel");
                return;
            }
            if (allocation.IsCooling(channel, peer, _time.GetUtcNow()))
            {
                SendError(client, request, 400, key, "Bad Request: channel or peer was bound otherwise less than 5 minutes ago");
                return;
            }
        }
        _ = CompletePermissionAsync(allocation, new PendingRequest(request), key, [peer], channel);
    }

    /// <summary>Asks the server process about each peer not asked before; installs permissions (and the channel) or answers 403.</summary>
    private async Task CompletePermissionAsync(Allocation allocation, PendingRequest request, byte[] key, List<PeerAddress> peers, ushort channel)
    {
        foreach (var peer in peers)
        {
            bool known;
            lock (allocation.Lock) known = allocation.Checked.Contains(peer);
            if (known) continue;
            bool allowed;
            try { allowed = await allocation.Association!.CheckPeerAsync(peer, _stop.Token).ConfigureAwait(false); }
            catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException or IOException) { allowed = false; }
            if (!allowed)
            {
                _log.PeerRefused(allocation.Id, peer);
                request.Send(allocation.Client, key, 403, "Forbidden: the server process refuses this peer");
                return;
            }
            lock (allocation.Lock) if (allocation.Checked.Count < _limits.MaxPermissions * 4) allocation.Checked.Add(peer);
        }
        var now = _time.GetUtcNow();
        lock (allocation.Lock)
        {
            int fresh = peers.Select(p => p.Unmapped().WithPort(0)).Distinct().Count(p => !allocation.Permissions.ContainsKey(p));
            if (allocation.Permissions.Count + fresh > _limits.MaxPermissions
                || (channel != 0 && !allocation.Channels.ContainsKey(channel) && allocation.Channels.Count >= _limits.MaxChannels))
            {
                request.Send(allocation.Client, key, 508, null);
                return;
            }
            if (channel != 0)
            {
                if ((allocation.Channels.TryGetValue(channel, out var bound) && !bound.Peer.Equals(peers[0]))
                    || (allocation.ChannelOf.TryGetValue(peers[0].Unmapped(), out var other) && other != channel))
                {
                    request.Send(allocation.Client, key, 400, "Bad Request: channel or peer bound meanwhile");
                    return;
                }
                if (allocation.IsCooling(channel, peers[0], now))
                {
                    request.Send(allocation.Client, key, 400, "Bad Request: channel or peer was bound otherwise less than 5 minutes ago");
                    return;
                }
                allocation.Channels[channel] = new ChannelBinding(peers[0], now + _limits.ChannelLifetime);
                allocation.ChannelOf[peers[0].Unmapped()] = channel;
                allocation.Cooling.Remove(channel);
            }
            foreach (var p in peers) allocation.Permissions[p.Unmapped().WithPort(0)] = now + _limits.PermissionLifetime;
        }
        request.Send(allocation.Client, key, 0, null);
    }
}
