using System.Buffers;
using System.Buffers.Binary;
using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using Microsoft.Extensions.Logging;
using PtHost.Contract;
using PtHost.Net.Udp;

namespace PtHost.Turn;

/// <summary>One client 5-tuple as the server sees it: a UDP source address, or a TCP connection.</summary>
public abstract class TurnClient
{
    protected TurnClient(PeerAddress remote) => Remote = remote;

    /// <summary>The client's address and port.</summary>
    public PeerAddress Remote { get; }

    /// <summary>True for TCP: ChannelData is padded to 4 bytes (RFC 5766 §11.5).</summary>
    public abstract bool IsStream { get; }

    /// <summary>Sends one message or ChannelData; never blocks; may drop under congestion.</summary>
    public abstract void Send(ReadOnlySpan<byte> message);

    /// <summary>The allocation key: the source address for UDP, the connection for TCP.</summary>
    internal TurnClientKey Key => new(Remote, IsStream ? this : null);
}

internal readonly record struct TurnClientKey(PeerAddress Remote, TurnClient? Connection);

/// <summary>Opens the relayed side of an allocation: a UDP association through the transport.</summary>
public delegate ValueTask<IAssociation> AssociationOpener(long allocation, CancellationToken cancellationToken);

/// <summary>
/// The TURN server state machine (RFC 5766 over RFC 5389; spec/turn.md §3–§4), independent of
/// sockets: listeners hand it each message with the client it came from; it answers through
/// <see cref="TurnClient.Send"/>. Allocations relay through <see cref="IAssociation"/>s.
/// </summary>
public sealed class TurnServer : IAsyncDisposable
{
    public const string Software = "PtHost TURN";
    /// <summary>Room in front of a received datagram for a Data indication's header (IPv6 peer).</summary>
    internal const int DataHeaderRoom = Stun.HeaderLength + 4 + 20 + 4;
    private const int ResponseBuffer = 1024;

    private readonly TurnOptions _options;
    private readonly TurnLimits _limits;
    private readonly AssociationOpener _open;
    private readonly ILogger _log;
    private readonly TimeProvider _time;
    private readonly Dictionary<string, byte[]> _keys = new(StringComparer.Ordinal);
    private readonly byte[] _nonceSecret = RandomNumberGenerator.GetBytes(32);
    private readonly Dictionary<TurnClientKey, Allocation> _allocations = [];
    private readonly Dictionary<string, int> _perUser = new(StringComparer.Ordinal);
    private readonly Dictionary<ulong, DateTimeOffset> _reservations = [];
    private readonly Lock _lock = new();
    private readonly CancellationTokenSource _stop = new();
    private long _ids;

    private readonly TransportCounters? _counters;

    /// <summary>
    /// Creates the state machine. <paramref name="counters"/>, when given, counts allocations as
    /// sessions and datagram payload bytes (client → peer as in, peer → client as out) for STATUS lines.
    /// </summary>
    public TurnServer(TurnOptions options, AssociationOpener open, ILogger log, TimeProvider? time = null, TransportCounters? counters = null)
    {
        _counters = counters;
        _options = options;
        _limits = options.Limits;
        _open = open;
        _log = log;
        _time = time ?? TimeProvider.System;
        foreach (var (user, password) in options.Users) _keys[user] = Stun.LongTermKey(user, options.Realm, password);
    }

    /// <summary>The address reported in XOR-RELAYED-ADDRESS when the server process's socket has the wildcard address.</summary>
    public System.Net.IPAddress? PublicAddress { get; set; }

    /// <summary>Allocations now (pending ones included).</summary>
    public int AllocationCount { get { lock (_lock) return _allocations.Count; } }

    /// <summary>Messages dropped as malformed or unauthorised indications (for tests and logs).</summary>
    public long Dropped => Interlocked.Read(ref _dropped);
    private long _dropped;

    /// <summary>True when the TCP connection has an allocation (used to close idle connections).</summary>
    public bool HasAllocation(TurnClient client) { lock (_lock) return _allocations.ContainsKey(client.Key); }

    // ---- dispatch ----------------------------------------------------------------------------

    /// <summary>
    /// Handles one message from <paramref name="client"/>: a STUN message or ChannelData, exactly
    /// (TCP listeners split the stream first). Never throws for bad input; answers or drops.
    /// </summary>
    public void Handle(TurnClient client, ReadOnlyMemory<byte> packet)
    {
        var span = packet.Span;
        if (span.Length >= 4 && (span[0] & 0xC0) == 0x40)
        {
            HandleChannelData(client, packet);
            return;
        }
        var error = Stun.TryParse(span, out var message);
        if (error != StunParseError.None)
        {
            Drop(client, $"malformed STUN message ({error})");
            return;
        }
        switch (message.Class)
        {
            case StunClass.Request:
                HandleRequest(client, message);
                break;
            case StunClass.Indication when message.Method == StunMethod.Send:
                HandleSend(client, packet, message);
                break;
            default:
                Drop(client, $"STUN {message.Class} of method 0x{message.Method:x3} is not for a server");
                break;
        }
    }

    private void Drop(TurnClient client, string why)
    {
        Interlocked.Increment(ref _dropped);
        _log.LogDebug("TURN {Client}: dropped: {Why}", client.Remote, why);
    }

    private void HandleRequest(TurnClient client, StunMessage request)
    {
        if (request.Method == StunMethod.Binding)
        {
            if (RejectUnknown(client, request, null)) return;
            Span<byte> buffer = stackalloc byte[ResponseBuffer];
            var w = new StunWriter(buffer, StunMethod.Binding, StunClass.Success, request.TransactionId);
            w.AddXorAddress(StunAttribute.XorMappedAddress, client.Remote);
            Finish(ref w, request, null);
            client.Send(w.Written);
            return;
        }
        if (request.Method is not (StunMethod.Allocate or StunMethod.Refresh or StunMethod.CreatePermission or StunMethod.ChannelBind))
        {
            SendError(client, request, 400, null, $"Bad Request: unknown method 0x{request.Method:x3}");
            return;
        }
        if (!Authenticate(client, request, out string user, out byte[] key)) return;
        if (RejectUnknown(client, request, key)) return;
        switch (request.Method)
        {
            case StunMethod.Allocate: Allocate(client, request, user, key); break;
            case StunMethod.Refresh: Refresh(client, request, user, key); break;
            case StunMethod.CreatePermission: CreatePermission(client, request, user, key); break;
            case StunMethod.ChannelBind: ChannelBind(client, request, user, key); break;
        }
    }

    /// <summary>420 with UNKNOWN-ATTRIBUTES for comprehension-required attributes we do not understand (RFC 5389 §7.3.1).</summary>
    private bool RejectUnknown(TurnClient client, StunMessage request, byte[]? key)
    {
        Span<ushort> unknown = stackalloc ushort[16];
        int n = request.UnknownRequired(unknown);
        if (n == 0) return false;
        _log.LogInformation("TURN {Client}: method 0x{Method:x3} refused (420): unknown comprehension-required attribute(s) {Types}",
            client.Remote, request.Method, string.Join(", ", unknown[..n].ToArray().Select(t => $"0x{t:x4}")));
        Span<byte> buffer = stackalloc byte[ResponseBuffer];
        var w = new StunWriter(buffer, request.Method, StunClass.Error, request.TransactionId);
        w.AddErrorCode(420);
        w.AddUnknownAttributes(unknown[..n]);
        Finish(ref w, request, key);
        client.Send(w.Written);
        return true;
    }

    // ---- long-term credentials (RFC 5389 §10.2) ------------------------------------------------

    private bool Authenticate(TurnClient client, StunMessage request, out string user, out byte[] key)
    {
        user = "";
        key = [];
        if (!request.HasIntegrity)
        {
            SendChallenge(client, request, 401);
            return false;
        }
        if (!request.TryGet(StunAttribute.Username, out var username) || !request.TryGet(StunAttribute.Realm, out _)
            || !request.TryGet(StunAttribute.Nonce, out var nonce))
        {
            SendError(client, request, 400, null, "Bad Request: USERNAME, REALM and NONCE are required with MESSAGE-INTEGRITY");
            return false;
        }
        if (!NonceIsValid(nonce, client.Remote))
        {
            SendChallenge(client, request, 438);
            return false;
        }
        string name;
        try { name = new UTF8Encoding(false, true).GetString(username); }
        catch (DecoderFallbackException) { name = ""; }
        if (!_keys.TryGetValue(name, out var k) || !Stun.CheckIntegrity(request, k))
        {
            _log.LogInformation("TURN {Client}: {Method} with wrong credentials for user \"{User}\"", client.Remote, request.Method, name);
            SendChallenge(client, request, 401);
            return false;
        }
        user = name;
        key = k;
        return true;
    }

    /// <summary>401 or 438 with REALM and a fresh NONCE, without MESSAGE-INTEGRITY.</summary>
    private void SendChallenge(TurnClient client, StunMessage request, int code)
    {
        Span<byte> buffer = stackalloc byte[ResponseBuffer];
        var w = new StunWriter(buffer, request.Method, StunClass.Error, request.TransactionId);
        w.AddErrorCode(code);
        w.AddString(StunAttribute.Realm, _options.Realm);
        w.AddString(StunAttribute.Nonce, NewNonce(client.Remote));
        Finish(ref w, request, null);
        client.Send(w.Written);
    }

    /// <summary>NONCE = 16 hex digits of its expiry (Unix seconds) + 16 hex digits of HMAC-SHA256(secret, expiry | client address) (spec/turn.md §3.3).</summary>
    internal string NewNonce(PeerAddress client)
    {
        long expiry = _time.GetUtcNow().Add(_limits.NonceLifetime).ToUnixTimeSeconds();
        Span<byte> mac = stackalloc byte[32];
        NonceMac(expiry, client, mac);
        return expiry.ToString("x16", CultureInfo.InvariantCulture) + Convert.ToHexStringLower(mac[..8]);
    }

    private bool NonceIsValid(ReadOnlySpan<byte> nonce, PeerAddress client)
    {
        if (nonce.Length != 32) return false;
        Span<char> text = stackalloc char[32];
        for (int i = 0; i < 32; i++) text[i] = (char)nonce[i];
        if (!long.TryParse(text[..16], NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out long expiry)) return false;
        Span<byte> mac = stackalloc byte[32];
        NonceMac(expiry, client, mac);
        Span<byte> given = stackalloc byte[8];
        if (Convert.FromHexString(text[16..], given, out _, out int written) != System.Buffers.OperationStatus.Done || written != 8) return false;
        return CryptographicOperations.FixedTimeEquals(given, mac[..8]) && expiry > _time.GetUtcNow().ToUnixTimeSeconds();
    }

    private void NonceMac(long expiry, PeerAddress client, Span<byte> mac)
    {
        Span<byte> input = stackalloc byte[8 + 16 + 2];
        BinaryPrimitives.WriteInt64BigEndian(input, expiry);
        int n = client.WriteAddress(input[8..]);
        BinaryPrimitives.WriteUInt16BigEndian(input[(8 + n)..], (ushort)client.Port);
        HMACSHA256.HashData(_nonceSecret, input[..(8 + n + 2)], mac);
    }

    // ---- responses ---------------------------------------------------------------------------

    private static void Finish(ref StunWriter w, StunMessage request, byte[]? key)
    {
        w.AddString(StunAttribute.Software, Software);
        if (key is not null) w.AddIntegrity(key);
        if (request.HasFingerprint) w.AddFingerprint();
    }

    private void SendError(TurnClient client, StunMessage request, int code, byte[]? key, string? reason = null)
    {
        Span<byte> buffer = stackalloc byte[ResponseBuffer];
        var w = new StunWriter(buffer, request.Method, StunClass.Error, request.TransactionId);
        w.AddErrorCode(code, reason);
        Finish(ref w, request, key);
        client.Send(w.Written);
    }

    /// <summary>A copy of the request's identity for answering later (after an await).</summary>
    private sealed class PendingRequest(StunMessage request)
    {
        public readonly int Method = request.Method;
        public readonly byte[] TransactionId = request.TransactionId.ToArray();
        public readonly bool Fingerprint = request.HasFingerprint;

        public void Send(TurnClient client, byte[] key, int code, string? reason, Action<PendingWriter>? attributes = null)
        {
            byte[] buffer = new byte[ResponseBuffer];
            var w = new StunWriter(buffer, Method, code == 0 ? StunClass.Success : StunClass.Error, TransactionId);
            if (code != 0) w.AddErrorCode(code, reason);
            var pw = new PendingWriter();
            attributes?.Invoke(pw);
            foreach (var (type, value) in pw.Attributes) w.Add(type, value);
            w.AddString(StunAttribute.Software, Software);
            w.AddIntegrity(key);
            if (Fingerprint) w.AddFingerprint();
            client.Send(w.Written);
            LastResponse = w.Written.ToArray();
        }

        public byte[]? LastResponse { get; private set; }
    }

    /// <summary>Attributes added to a response built after an await.</summary>
    private sealed class PendingWriter
    {
        public readonly List<(ushort, byte[])> Attributes = [];
        public void AddXorAddress(ushort type, PeerAddress address, ReadOnlySpan<byte> transactionId)
        {
            byte[] value = new byte[20];
            int n = Stun.WriteXorAddress(value, address, transactionId);
            Attributes.Add((type, value[..n]));
        }
        public void AddUInt32(ushort type, uint value)
        {
            byte[] v = new byte[4];
            BinaryPrimitives.WriteUInt32BigEndian(v, value);
            Attributes.Add((type, v));
        }
        public void Add(ushort type, byte[] value) => Attributes.Add((type, value));
    }

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
                _log.LogWarning("TURN: allocation for {Client} refused: {Max} allocations", client.Remote, _limits.MaxAllocations);
                return;
            }
            int mine = _perUser.GetValueOrDefault(user);
            if (mine >= _limits.MaxAllocationsPerUser)
            {
                SendError(client, request, 486, key);
                _log.LogInformation("TURN: allocation for user \"{User}\" refused: quota {Max}", user, _limits.MaxAllocationsPerUser);
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
            _log.LogInformation("TURN allocation {Id} for {Client}: the transport could not open a UDP association: {Error}", allocation.Id, allocation.Client.Remote, e.Message);
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
            allocation.Session = session;
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
        _log.LogDebug("TURN allocation {Id} for {Client} (user {User}): relayed {Relayed}, {Lifetime} s", allocation.Id, allocation.Client.Remote, allocation.User, relayed, lifetime.TotalSeconds);
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
            _log.LogDebug("TURN allocation {Id} deleted by Refresh (lifetime 0)", allocation.Id);
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
        if (allocation is null || allocation.Session is null)
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
            if (IsCooling(allocation, channel, peer, _time.GetUtcNow()))
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
            try { allowed = await allocation.Session!.CheckPeerAsync(peer, _stop.Token).ConfigureAwait(false); }
            catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException or IOException) { allowed = false; }
            if (!allowed)
            {
                _log.LogInformation("TURN allocation {Id}: peer {Peer} refused by the server process", allocation.Id, peer);
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
                if (IsCooling(allocation, channel, peers[0], now))
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

    // ---- data: client → peer -------------------------------------------------------------------

    private void HandleSend(TurnClient client, ReadOnlyMemory<byte> packet, StunMessage message)
    {
        Allocation? allocation;
        lock (_lock) _allocations.TryGetValue(client.Key, out allocation);
        Span<ushort> unknown = stackalloc ushort[1];
        if (allocation?.Session is not { } session || message.UnknownRequired(unknown) > 0
            || !message.TryGet(StunAttribute.XorPeerAddress, out var pa) || !Stun.TryReadXorAddress(pa, message.TransactionId, out var peer)
            || !message.TryGet(StunAttribute.Data, out var data))
        {
            Drop(client, "Send indication without allocation, XOR-PEER-ADDRESS or DATA");
            return;
        }
        if (!HasPermission(allocation, peer))
        {
            Drop(client, $"Send indication to {peer} without permission");
            return;
        }
        packet.Span.Overlaps(data, out int offset);
        _counters?.AddBytesIn(data.Length);
        _ = session.SendAsync(peer, packet.Slice(offset, data.Length), _stop.Token); // copies before returning (IAssociation)
    }

    private void HandleChannelData(TurnClient client, ReadOnlyMemory<byte> packet)
    {
        var span = packet.Span;
        ushort channel = BinaryPrimitives.ReadUInt16BigEndian(span);
        int length = BinaryPrimitives.ReadUInt16BigEndian(span[2..]);
        if (4 + length > span.Length)
        {
            Drop(client, "ChannelData length runs past the message");
            return;
        }
        Allocation? allocation;
        lock (_lock) _allocations.TryGetValue(client.Key, out allocation);
        if (allocation?.Session is not { } session)
        {
            Drop(client, "ChannelData without allocation");
            return;
        }
        PeerAddress peer;
        var now = _time.GetUtcNow();
        lock (allocation.Lock)
        {
            if (!allocation.Channels.TryGetValue(channel, out var binding) || binding.Expires < now)
            {
                Drop(client, $"ChannelData on unbound channel 0x{channel:x4}");
                return;
            }
            peer = binding.Peer;
        }
        if (!HasPermission(allocation, peer))
        {
            Drop(client, $"ChannelData to {peer} without permission");
            return;
        }
        _counters?.AddBytesIn(length);
        _ = session.SendAsync(peer, packet.Slice(4, length), _stop.Token); // copies before returning (IAssociation)
    }

    private bool HasPermission(Allocation allocation, PeerAddress peer)
    {
        var now = _time.GetUtcNow();
        lock (allocation.Lock) return allocation.Permissions.TryGetValue(peer.Unmapped().WithPort(0), out var expires) && expires >= now;
    }

    // ---- data: peer → client (RFC 5766 §10.3, §11.6) -------------------------------------------

    private async Task RelayFromPeersAsync(Allocation allocation, IAssociation session)
    {
        int max = Math.Min(session.MaxDatagramSize, ushort.MaxValue - DataHeaderRoom);
        byte[] buffer = ArrayPool<byte>.Shared.Rent(DataHeaderRoom + max + 4);
        try
        {
            while (!allocation.Deleted)
            {
                var (peer, n) = await session.ReceiveAsync(buffer.AsMemory(DataHeaderRoom, max), _stop.Token).ConfigureAwait(false);
                if (n < 0)
                {
                    if (!allocation.Deleted) _log.LogInformation("TURN allocation {Id}: the transport ended the UDP association; allocation deleted", allocation.Id);
                    Remove(allocation);
                    return;
                }
                if (!HasPermission(allocation, peer)) continue; // RFC 5766 §10.3: no permission, no delivery
                _counters?.AddBytesOut(n);
                ushort channel;
                lock (allocation.Lock)
                    channel = allocation.ChannelOf.TryGetValue(peer.Unmapped(), out var c) && allocation.Channels.TryGetValue(c, out var b) && b.Expires >= _time.GetUtcNow() ? c : (ushort)0;
                if (channel != 0)
                {
                    int start = DataHeaderRoom - 4;
                    BinaryPrimitives.WriteUInt16BigEndian(buffer.AsSpan(start), channel);
                    BinaryPrimitives.WriteUInt16BigEndian(buffer.AsSpan(start + 2), (ushort)n);
                    int total = 4 + n;
                    if (allocation.Client.IsStream)
                    {
                        int padded = Stun.Pad(total);
                        buffer.AsSpan(start + total, padded - total).Clear();
                        total = padded;
                    }
                    allocation.Client.Send(buffer.AsSpan(start, total));
                }
                else
                {
                    int header = Stun.HeaderLength + 4 + (peer.IsIPv4 ? 8 : 20) + 4;
                    int start = DataHeaderRoom - header;
                    BuildDataIndication(buffer.AsSpan(start), peer, n);
                    int padded = Stun.Pad(n);
                    buffer.AsSpan(DataHeaderRoom + n, padded - n).Clear();
                    allocation.Client.Send(buffer.AsSpan(start, header + padded));
                }
            }
        }
        catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException or IOException or InvalidDataException or System.Net.Sockets.SocketException)
        {
            if (!allocation.Deleted) _log.LogInformation("TURN allocation {Id}: UDP association failed: {Error}", allocation.Id, e.Message);
            Remove(allocation);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <summary>Writes a Data indication's header in front of <paramref name="length"/> payload bytes already in place.</summary>
    private static void BuildDataIndication(Span<byte> at, PeerAddress peer, int length)
    {
        BinaryPrimitives.WriteUInt16BigEndian(at, Stun.TypeOf(StunMethod.Data, StunClass.Indication));
        BinaryPrimitives.WriteUInt32BigEndian(at[4..], Stun.MagicCookie);
        RandomNumberGenerator.Fill(at.Slice(8, 12));
        int o = Stun.HeaderLength;
        BinaryPrimitives.WriteUInt16BigEndian(at[o..], StunAttribute.XorPeerAddress);
        int addressLength = Stun.WriteXorAddress(at[(o + 4)..], peer, at.Slice(8, 12));
        BinaryPrimitives.WriteUInt16BigEndian(at[(o + 2)..], (ushort)addressLength);
        o += 4 + addressLength;
        BinaryPrimitives.WriteUInt16BigEndian(at[o..], StunAttribute.Data);
        BinaryPrimitives.WriteUInt16BigEndian(at[(o + 2)..], (ushort)length);
        o += 4;
        BinaryPrimitives.WriteUInt16BigEndian(at[2..], (ushort)(o - Stun.HeaderLength + Stun.Pad(length)));
    }

    // ---- lifetimes ---------------------------------------------------------------------------

    /// <summary>Deletes expired allocations, permissions and channels (called every second by the listener).</summary>
    public void Expire()
    {
        var now = _time.GetUtcNow();
        List<Allocation> expired = [];
        lock (_lock)
        {
            foreach (var a in _allocations.Values) if (a.Expires < now) expired.Add(a);
            foreach (var (t, e) in _reservations.ToArray()) if (e < now) _reservations.Remove(t);
        }
        foreach (var a in expired)
        {
            _log.LogDebug("TURN allocation {Id} expired", a.Id);
            Remove(a);
        }
        lock (_lock)
        {
            foreach (var a in _allocations.Values)
            {
                lock (a.Lock)
                {
                    foreach (var (p, e) in a.Permissions.ToArray()) if (e < now) a.Permissions.Remove(p);
                    foreach (var (c, b) in a.Cooling.ToArray()) if (b.Expires < now) a.Cooling.Remove(c);
                    foreach (var (c, b) in a.Channels.ToArray())
                    {
                        if (b.Expires >= now) continue;
                        a.Channels.Remove(c);
                        a.ChannelOf.Remove(b.Peer.Unmapped());
                        a.Cooling[c] = new ChannelBinding(b.Peer, now + ChannelCooling);
                    }
                }
            }
        }
    }

    /// <summary>Deletes the allocation of a TCP connection that closed (RFC 5766 §11... §6: the 5-tuple is gone).</summary>
    public void ClientGone(TurnClient client)
    {
        Allocation? allocation;
        lock (_lock) _allocations.TryGetValue(client.Key, out allocation);
        if (allocation is not null) Remove(allocation);
    }

    private void Remove(Allocation allocation)
    {
        IAssociation? session;
        lock (_lock)
        {
            if (allocation.Deleted) return;
            allocation.Deleted = true;
            if (_allocations.TryGetValue(allocation.Client.Key, out var current) && ReferenceEquals(current, allocation))
                _allocations.Remove(allocation.Client.Key);
            if (_perUser.TryGetValue(allocation.User, out int n)) { if (n <= 1) _perUser.Remove(allocation.User); else _perUser[allocation.User] = n - 1; }
            session = allocation.Session;
        }
        if (session is StreamAssociation framed && framed.Dropped > 0)
            _log.LogInformation("TURN allocation {Id}: {Dropped} datagrams dropped because the transport was congested", allocation.Id, framed.Dropped);
        if (session is not null)
        {
            _counters?.SessionClosed();
            _ = session.DisposeAsync().AsTask();
        }
    }

    public async ValueTask DisposeAsync()
    {
        _stop.Cancel();
        List<Allocation> all;
        lock (_lock) all = [.. _allocations.Values];
        foreach (var a in all) Remove(a);
        await Task.Yield();
        // _stop is not disposed: allocation tasks still finishing read its token.
    }

    private sealed class Allocation(long id, TurnClient client, string user, byte[] allocateTransaction, DateTimeOffset expires)
    {
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
        public volatile IAssociation? Session;
        public byte[]? AllocateResponse;
        public volatile bool Deleted;
    }

    private readonly record struct ChannelBinding(PeerAddress Peer, DateTimeOffset Expires);

    /// <summary>RFC 5766 §11: after a binding expires, neither its channel nor its peer may be bound otherwise for 5 minutes.</summary>
    public static readonly TimeSpan ChannelCooling = TimeSpan.FromMinutes(5);

    /// <summary>True when an expired binding still holds <paramref name="channel"/> for another peer, or <paramref name="peer"/> for another channel. Caller holds the allocation's lock.</summary>
    private static bool IsCooling(Allocation allocation, ushort channel, PeerAddress peer, DateTimeOffset now)
    {
        foreach (var (c, b) in allocation.Cooling)
        {
            if (b.Expires < now) continue;
            if (c == channel && !b.Peer.Equals(peer)) return true;
            if (c != channel && b.Peer.Unmapped().Equals(peer.Unmapped())) return true;
        }
        return false;
    }
}
