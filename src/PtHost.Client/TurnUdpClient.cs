using System.Buffers;
using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using System.Threading.Channels;

namespace PtHost.Client;

/// <summary>
/// UDP through a transport: an RFC 5766 client of pthost's TURN front end (spec/adapters.md §2.8), with
/// <see cref="UdpClient"/>'s shape (<see cref="SendAsync(ReadOnlyMemory{byte}, IPEndPoint, CancellationToken)"/>,
/// <see cref="ReceiveAsync"/>). Allocate with long-term credentials, ChannelBind per peer (which installs the
/// permission), ChannelData both ways, refreshes; Refresh LIFETIME 0 on dispose.
/// </summary>
public sealed class TurnUdpClient : IDisposable
{
    private const uint RequestedLifetime = 600;
    private const int QueueLimit = 4096;
    private readonly Socket _socket;
    private readonly string _user, _password;
    private byte[]? _key;
    private string _realm = "";
    private byte[] _nonce = [];
    private readonly ConcurrentDictionary<string, TaskCompletionSource<Stun.Message>> _transactions = new();
    private readonly ConcurrentDictionary<IPEndPoint, Task<ushort>> _channels = new();
    private readonly ConcurrentDictionary<ushort, IPEndPoint> _peers = new();
    private readonly Channel<UdpReceiveResult> _received = Channel.CreateBounded<UdpReceiveResult>(
        new BoundedChannelOptions(QueueLimit) { FullMode = BoundedChannelFullMode.DropOldest, SingleWriter = true });
    private readonly CancellationTokenSource _closing = new();
    private readonly Task _reader;
    private Task? _refresher;
    private int _nextChannel = 0x4000;
    private long _dropped, _allocationRefreshes, _channelRefreshes;
    private volatile RefreshFailure? _failure;

    internal TurnUdpClient(IPEndPoint turn, string user, string password)
    {
        _socket = new Socket(turn.AddressFamily, SocketType.Dgram, ProtocolType.Udp);
        // §2.8 step 1: 4 MiB buffers requested.
        _socket.ReceiveBufferSize = 4 << 20;
        _socket.SendBufferSize = 4 << 20;
        _socket.Connect(turn);
        _user = user;
        _password = password;
        _reader = Task.Run(ReadAsync);
    }

    /// <summary>The server process's UDP socket (XOR-RELAYED-ADDRESS, spec/turn.md §5.4).</summary>
    public IPEndPoint? RelayedEndPoint { get; private set; }

    public IPEndPoint? MappedEndPoint { get; private set; }

    /// <summary>Datagrams received and dropped because the application did not read them (queue of 4,096).</summary>
    public long Dropped => Interlocked.Read(ref _dropped);

    /// <summary>Successful Refresh transactions of the allocation (§2.8 step 5).</summary>
    public long AllocationRefreshes => Interlocked.Read(ref _allocationRefreshes);

    /// <summary>Successful ChannelBind refreshes (§2.8 step 5), each also refreshing its peer's permission (RFC 5766 §11.1).</summary>
    public long ChannelRefreshes => Interlocked.Read(ref _channelRefreshes);

    /// <summary>
    /// How often each channel (and with it its permission) is bound again: 240 s, inside RFC 5766's fixed permission
    /// lifetime of 300 s. Tests shorten it against a TURN server whose lifetimes they shortened.
    /// </summary>
    internal TimeSpan ChannelRefreshInterval { get; init; } = TimeSpan.FromSeconds(240);

    /// <summary>
    /// Why the allocation was lost, or null while it lives (§5.5): a refresh answered with an error (437 once the
    /// server process's association ended), or unanswered until the allocation's lifetime ran out. After that,
    /// <see cref="SendAsync(ReadOnlyMemory{byte}, IPEndPoint, CancellationToken)"/> and <see cref="ReceiveAsync"/>
    /// (once the datagrams already received are read) throw it.
    /// </summary>
    public Exception? Failure => _failure?.Create();

    internal async Task AllocateAsync(CancellationToken ct)
    {
        var m = await RequestAsync(Stun.Allocate, [(Stun.RequestedTransport, Stun.UInt32(17u << 24)), (Stun.Lifetime, Stun.UInt32(RequestedLifetime))], ct).ConfigureAwait(false);
        if (m.TryGet(Stun.XorRelayedAddress, out var relayed)) RelayedEndPoint = Stun.ReadXorAddress(relayed, m.TransactionId);
        if (m.TryGet(Stun.XorMappedAddress, out var mapped)) MappedEndPoint = Stun.ReadXorAddress(mapped, m.TransactionId);
        uint lifetime = m.TryGet(Stun.Lifetime, out var l) && l.Count == 4 ? BinaryPrimitives.ReadUInt32BigEndian(l) : RequestedLifetime;
        _refresher = Task.Run(() => RefreshLoopAsync(lifetime));
    }

    /// <summary>Sends one datagram to <paramref name="peer"/> as ChannelData (§2.8 step 4); the first to a peer waits for its ChannelBind.</summary>
    public async ValueTask<int> SendAsync(ReadOnlyMemory<byte> datagram, IPEndPoint peer, CancellationToken ct = default)
    {
        ObjectDisposedException.ThrowIf(_closing.IsCancellationRequested, this);
        if (_failure is { } failure) throw failure.Create();
        if (datagram.Length > 65527) throw new ArgumentException("a datagram is at most 65,527 bytes (spec/turn.md §5.2)", nameof(datagram));
        peer = Normalize(peer);
        var bind = _channels.GetOrAdd(peer, p => BindAsync(p, 0));
        ushort channel = bind.IsCompletedSuccessfully ? bind.Result : await bind.WaitAsync(ct).ConfigureAwait(false);
        byte[] frame = ArrayPool<byte>.Shared.Rent(4 + datagram.Length);
        try
        {
            BinaryPrimitives.WriteUInt16BigEndian(frame, channel);
            BinaryPrimitives.WriteUInt16BigEndian(frame.AsSpan(2), (ushort)datagram.Length);
            datagram.Span.CopyTo(frame.AsSpan(4));
            await _socket.SendAsync(frame.AsMemory(0, 4 + datagram.Length), SocketFlags.None, ct).ConfigureAwait(false);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(frame);
        }
        return datagram.Length;
    }

    public ValueTask<int> SendAsync(byte[] datagram, IPEndPoint peer, CancellationToken ct = default) => SendAsync(datagram.AsMemory(), peer, ct);

    /// <summary>The next datagram from any peer, with the peer's address (ChannelData and Data indications).</summary>
    public async ValueTask<UdpReceiveResult> ReceiveAsync(CancellationToken ct = default)
    {
        try
        {
            return await _received.Reader.ReadAsync(ct).ConfigureAwait(false);
        }
        catch (ChannelClosedException) when (!ct.IsCancellationRequested)
        {
            if (_failure is { } failure) throw failure.Create();
            throw new ObjectDisposedException(nameof(TurnUdpClient));
        }
    }

    private static IPEndPoint Normalize(IPEndPoint ep) =>
        ep.Address.IsIPv4MappedToIPv6 ? new IPEndPoint(ep.Address.MapToIPv4(), ep.Port) : ep;

    /// <summary>ChannelBind (RFC 5766 §11): a new channel number, or the peer's own on a refresh.</summary>
    private async Task<ushort> BindAsync(IPEndPoint peer, ushort existing)
    {
        ushort channel = existing != 0 ? existing : (ushort)Interlocked.Increment(ref _nextChannel);
        if (existing == 0) channel--;
        await RequestAsync(Stun.ChannelBind, tid => [(Stun.ChannelNumber, Stun.UInt32((uint)channel << 16)), (Stun.XorPeerAddress, Stun.XorAddress(peer, tid))], _closing.Token).ConfigureAwait(false);
        _peers[channel] = peer;
        return channel;
    }

    /// <summary>
    /// One transaction with the long-term credential mechanism: 401 brings REALM and NONCE and the request is made
    /// again signed; 438 takes the new nonce; another error is a <see cref="TurnException"/> (403: permission).
    /// </summary>
    private Task<Stun.Message> RequestAsync(int method, (ushort, byte[])[] attributes, CancellationToken ct) => RequestAsync(method, _ => attributes, ct);

    private async Task<Stun.Message> RequestAsync(int method, Func<byte[], (ushort, byte[])[]> attributes, CancellationToken ct)
    {
        for (int attempt = 0; ; attempt++)
        {
            // A new transaction id for each request (RFC 5389 §7.2.1); XOR-PEER-ADDRESS depends on it.
            byte[] tid = RandomNumberGenerator.GetBytes(12);
            bool signed = _key is not null;
            var attrs = new List<(ushort, byte[])>(attributes(tid));
            if (signed)
            {
                attrs.Add((Stun.Username, Encoding.UTF8.GetBytes(_user)));
                attrs.Add((Stun.Realm, Encoding.UTF8.GetBytes(_realm)));
                attrs.Add((Stun.Nonce, _nonce));
            }
            var m = await TransactAsync(Stun.Build(method, Stun.Request, tid, attrs, _key), tid, ct).ConfigureAwait(false);
            if (m.Class == Stun.Success) return m;
            var (code, reason) = m.ErrorCodeValue;
            if (m.TryGet(Stun.Nonce, out var nonce)) _nonce = nonce.ToArray();
            if (code == 401 && !signed && m.TryGet(Stun.Realm, out var realm) && attempt == 0)
            {
                _realm = Encoding.UTF8.GetString(realm);
                _key = Stun.LongTermKey(_user, _realm, _password);
            }
            else if (code != 438 || attempt > 2) throw new TurnException(code, code == 401 ? $"credentials refused: {reason}" : reason);
        }
    }

    /// <summary>RFC 5389 §7.2.1 retransmission: RTO 0.5 s doubling, 7 sends, a last wait of 8 s (§2.8 step 7).</summary>
    private async Task<Stun.Message> TransactAsync(byte[] request, byte[] tid, CancellationToken ct)
    {
        string key = Convert.ToHexString(tid);
        var answer = new TaskCompletionSource<Stun.Message>(TaskCreationOptions.RunContinuationsAsynchronously);
        _transactions[key] = answer;
        try
        {
            var rto = TimeSpan.FromMilliseconds(500);
            for (int send = 0; send < 7; send++)
            {
                await _socket.SendAsync(request, SocketFlags.None, ct).ConfigureAwait(false);
                var wait = send == 6 ? TimeSpan.FromSeconds(8) : rto;
                try
                {
                    return await answer.Task.WaitAsync(wait, ct).ConfigureAwait(false);
                }
                catch (TimeoutException) { }
                rto *= 2;
            }
            throw new TimeoutException("no answer from pthost's TURN front end (39.5 s)");
        }
        finally
        {
            _transactions.TryRemove(key, out _);
        }
    }

    private async Task ReadAsync()
    {
        var buffer = new byte[65536 + 64];
        while (!_closing.IsCancellationRequested)
        {
            int n;
            try
            {
                n = await _socket.ReceiveAsync(buffer, SocketFlags.None, _closing.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException) { break; }
            catch (ObjectDisposedException) { break; }
            catch (SocketException) { continue; } // ICMP port unreachable while pthost restarts nothing: keep reading
            if (n >= 4 && (buffer[0] & 0xC0) == 0x40)
            {
                // ChannelData (RFC 5766 §11.4).
                ushort channel = BinaryPrimitives.ReadUInt16BigEndian(buffer);
                int len = BinaryPrimitives.ReadUInt16BigEndian(buffer.AsSpan(2));
                if (len > n - 4 || !_peers.TryGetValue(channel, out var peer)) continue;
                Deliver(new UdpReceiveResult(buffer.AsSpan(4, len).ToArray(), peer));
                continue;
            }
            if (Stun.Parse(buffer, n) is not { } m) continue;
            if (m.Class == Stun.Indication && m.Method == Stun.Data)
            {
                if (m.TryGet(Stun.XorPeerAddress, out var a) && Stun.ReadXorAddress(a, m.TransactionId) is { } from && m.TryGet(Stun.DataAttr, out var data))
                    Deliver(new UdpReceiveResult(data.ToArray(), from));
                continue;
            }
            if (m.Class is Stun.Success or Stun.Error && _transactions.TryGetValue(Convert.ToHexString(m.TransactionId), out var pending))
            {
                // Answers with MESSAGE-INTEGRITY are checked with the same key (§2.8 step 2); a forged one is ignored.
                if (m.IntegrityOffset >= 0 && _key is not null && !Stun.IntegrityHolds(buffer, m, _key)) continue;
                var copy = buffer.AsSpan(0, n).ToArray();
                pending.TrySetResult(Stun.Parse(copy, n)!);
            }
        }
        _received.Writer.TryComplete();
    }

    private void Deliver(UdpReceiveResult datagram)
    {
        if (_received.Reader.Count >= QueueLimit) Interlocked.Increment(ref _dropped);
        _received.Writer.TryWrite(datagram);
    }

    /// <summary>
    /// §2.8 step 5: the allocation at max(lifetime − 60 s, lifetime / 2), each channel every 240 s. A refresh that went
    /// unanswered (39.5 s of retransmissions) is tried again while the allocation can still be alive; an error answer,
    /// or an allocation whose lifetime ran out unrefreshed, ends the client (<see cref="Failure"/>, spec/adapters.md §5.5).
    /// </summary>
    private async Task RefreshLoopAsync(uint lifetime)
    {
        var allocationEvery = TimeSpan.FromSeconds(Math.Max(lifetime - 60.0, lifetime / 2.0));
        var channelEvery = ChannelRefreshInterval;
        var expires = DateTime.UtcNow + TimeSpan.FromSeconds(lifetime);
        var nextAllocation = DateTime.UtcNow + allocationEvery;
        var nextChannels = DateTime.UtcNow + channelEvery;
        try
        {
            while (!_closing.IsCancellationRequested)
            {
                var next = nextAllocation < nextChannels ? nextAllocation : nextChannels;
                var delay = next - DateTime.UtcNow;
                if (delay > TimeSpan.Zero) await Task.Delay(delay, _closing.Token).ConfigureAwait(false);
                try
                {
                    if (DateTime.UtcNow >= nextAllocation)
                    {
                        var m = await RequestAsync(Stun.Refresh, [(Stun.Lifetime, Stun.UInt32(RequestedLifetime))], _closing.Token).ConfigureAwait(false);
                        uint granted = m.TryGet(Stun.Lifetime, out var l) && l.Count == 4 ? BinaryPrimitives.ReadUInt32BigEndian(l) : lifetime;
                        Interlocked.Increment(ref _allocationRefreshes);
                        expires = DateTime.UtcNow + TimeSpan.FromSeconds(granted);
                        nextAllocation = DateTime.UtcNow + allocationEvery;
                    }
                    if (DateTime.UtcNow >= nextChannels)
                    {
                        foreach (var (channel, peer) in _peers)
                        {
                            await BindAsync(peer, channel).ConfigureAwait(false);
                            Interlocked.Increment(ref _channelRefreshes);
                        }
                        nextChannels = DateTime.UtcNow + channelEvery;
                    }
                }
                catch (TimeoutException) when (DateTime.UtcNow < expires)
                {
                    // Unanswered, but the allocation may still be alive: the loop tries again at once.
                }
            }
        }
        catch (OperationCanceledException) { }
        catch (TurnException e) { Fail(new RefreshFailure(e.Code, e.Reason, TimedOut: false)); }
        catch (TimeoutException) { Fail(new RefreshFailure(0, $"pthost's TURN front end left every refresh unanswered until the allocation's lifetime ran out at {expires:O}", TimedOut: true)); }
    }

    private void Fail(RefreshFailure failure)
    {
        _failure = failure;
        _received.Writer.TryComplete();
    }

    /// <summary>What <see cref="Failure"/> and the calls after it throw: a new exception each time, so each has its own stack.</summary>
    private sealed record RefreshFailure(int Code, string Message, bool TimedOut)
    {
        public Exception Create() => TimedOut ? new TimeoutException(Message) : new TurnException(Code, Message);
    }

    /// <summary>§2.8 step 6: Refresh with LIFETIME 0 (sent once, not awaited), then the socket is closed.</summary>
    public void Dispose()
    {
        if (_closing.IsCancellationRequested) return;
        if (_key is not null)
        {
            var attrs = new List<(ushort, byte[])>
            {
                (Stun.Lifetime, Stun.UInt32(0)),
                (Stun.Username, Encoding.UTF8.GetBytes(_user)),
                (Stun.Realm, Encoding.UTF8.GetBytes(_realm)),
                (Stun.Nonce, _nonce),
            };
            try { _socket.Send(Stun.Build(Stun.Refresh, Stun.Request, RandomNumberGenerator.GetBytes(12), attrs, _key)); }
            catch (SocketException) { }
        }
        _closing.Cancel();
        _socket.Dispose();
        _received.Writer.TryComplete();
    }
}
