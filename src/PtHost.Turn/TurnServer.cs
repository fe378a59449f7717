using System.Buffers;
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
public sealed partial class TurnServer : IAsyncDisposable
{
    public const string Software = "PtHost TURN";
    /// <summary>Room in front of a received datagram for a Data indication's header (IPv6 peer).</summary>
    internal const int DataHeaderRoom = Stun.HeaderLength + 4 + 20 + 4;
    internal const int ResponseBuffer = 1024;

    private readonly TurnOptions _options;
    private readonly TurnLimits _limits;
    private readonly AssociationOpener _open;
    private readonly ILogger _log;
    private readonly TimeProvider _time;
    private readonly TurnCredentials _credentials;
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
        _credentials = new TurnCredentials(options, _time);
        _unauthenticated = new UnauthenticatedReplyBudget(_time);
    }

    private readonly UnauthenticatedReplyBudget _unauthenticated;

    /// <summary>Replies without MESSAGE-INTEGRITY not sent over UDP for want of a token (spec/turn.md §4).</summary>
    public long UnauthenticatedRepliesRefused => _unauthenticated.Refused;

    /// <summary>
    /// spec/turn.md §4: a UDP reply without MESSAGE-INTEGRITY (its request's source may be forged) is sent only
    /// within the per-prefix and per-listener budgets; over TCP every reply goes.
    /// </summary>
    private bool MayAnswerUnauthenticated(TurnClient client)
    {
        if (client.IsStream || _unauthenticated.TryTake(client.Remote)) return true;
        Interlocked.Increment(ref _dropped);
        return false;
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
    public void Handle(TurnClient client, ReadOnlyMemory<byte> packet) => _ = HandleAsync(client, packet);

    /// <summary>
    /// As <see cref="Handle"/>; the task is complete unless the message's datagram found its
    /// association congested: then it completes once the association has room again. A listener
    /// that waits for it (bounded) lets its socket's receive buffer, not the host, absorb the burst.
    /// The message's bytes may be reused as soon as this returns.
    /// </summary>
    public ValueTask HandleAsync(TurnClient client, ReadOnlyMemory<byte> packet)
    {
        var span = packet.Span;
        if (span.Length >= 4 && (span[0] & 0xC0) == 0x40) return HandleChannelData(client, packet);
        var error = Stun.TryParse(span, out var message);
        if (error != StunParseError.None)
        {
            Drop(client, $"malformed STUN message ({error})");
            return ValueTask.CompletedTask;
        }
        switch (message.Class)
        {
            case StunClass.Request:
                HandleRequest(client, message);
                break;
            case StunClass.Indication when message.Method == StunMethod.Send:
                return HandleSend(client, packet, message);
            default:
                Drop(client, $"STUN {message.Class} of method 0x{message.Method:x3} is not for a server");
                break;
        }
        return ValueTask.CompletedTask;
    }

    private void Drop(TurnClient client, string why)
    {
        Interlocked.Increment(ref _dropped);
        _log.Dropped(client.Remote, why);
    }

    private void HandleRequest(TurnClient client, StunMessage request)
    {
        if (request.Method == StunMethod.Binding)
        {
            if (RejectUnknown(client, request, null)) return;
            if (!MayAnswerUnauthenticated(client)) return;
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
        if (key is null && !MayAnswerUnauthenticated(client)) return true;
        _log.UnknownAttributes(client.Remote, request.Method, string.Join(", ", unknown[..n].ToArray().Select(t => $"0x{t:x4}")));
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
        if (!_credentials.IsValidNonce(nonce, client.Remote))
        {
            SendChallenge(client, request, 438);
            return false;
        }
        string name;
        try { name = new UTF8Encoding(false, true).GetString(username); }
        catch (DecoderFallbackException) { name = ""; }
        if (!_credentials.TryGetKey(name, out var k) || !Stun.CheckIntegrity(request, k))
        {
            _log.WrongCredentials(client.Remote, request.Method, name);
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
        if (!MayAnswerUnauthenticated(client)) return;
        Span<byte> buffer = stackalloc byte[ResponseBuffer];
        var w = new StunWriter(buffer, request.Method, StunClass.Error, request.TransactionId);
        w.AddErrorCode(code);
        w.AddString(StunAttribute.Realm, _options.Realm);
        w.AddString(StunAttribute.Nonce, _credentials.NewNonce(client.Remote));
        Finish(ref w, request, null);
        client.Send(w.Written);
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
        if (key is null && !MayAnswerUnauthenticated(client)) return;
        Span<byte> buffer = stackalloc byte[ResponseBuffer];
        var w = new StunWriter(buffer, request.Method, StunClass.Error, request.TransactionId);
        w.AddErrorCode(code, reason);
        Finish(ref w, request, key);
        client.Send(w.Written);
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
            _log.Expired(a.Id);
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
                        a.Cooling[c] = new ChannelBinding(b.Peer, now + Allocation.ChannelCooling);
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
            session = allocation.Association;
        }
        if (session is StreamAssociation framed)
            _log.AllocationCounts(allocation.Id, framed.Sent, framed.Dropped, framed.TooLarge);
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
}
