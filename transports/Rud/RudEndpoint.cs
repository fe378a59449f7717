using System.Buffers.Binary;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Threading.Channels;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace PtHost.Transports.Rud;

/// <summary>When a responder demands a token before creating state (spec/rud.md §4.4).</summary>
public enum ChallengePolicy { Load, Always, Never }

/// <summary>Endpoint settings (spec/rud.md §11).</summary>
public sealed class RudEndpointOptions
{
    /// <summary>The responder's static X25519 private key; null for an endpoint that only initiates.</summary>
    public byte[]? StaticPrivateKey { get; init; }
    public ChallengePolicy Challenge { get; init; } = ChallengePolicy.Load;
    public bool AllowFirstContact { get; init; }
    public TimeSpan TokenLifetime { get; init; } = TimeSpan.FromSeconds(10);
    public TimeSpan HandshakeTimeout { get; init; } = TimeSpan.FromSeconds(10);
    public TimeSpan IdleTimeout { get; init; } = TimeSpan.FromSeconds(30);
    public TimeSpan KeepAlive { get; init; } = TimeSpan.FromSeconds(10);
    public int MaxConnections { get; init; } = 4096;
    public int LoadThreshold { get; init; } = 128;
    /// <summary>Packets per key phase before a key update (§7.3); smaller only in tests.</summary>
    public long RekeyInterval { get; init; } = 1L << 22;
    /// <summary>Whether connections probe for <see cref="RudWire.ProbedPacketSize"/>-byte packets (§9.5).</summary>
    public bool PathMtuProbe { get; init; } = true;
    /// <summary>Congestion control of the connections (§9.3).</summary>
    public CongestionControl CongestionControl { get; init; } = CongestionControl.Bbr;
    /// <summary>Wall clock for timestamps and tokens.</summary>
    public TimeProvider Clock { get; init; } = TimeProvider.System;
}

/// <summary>A 32-byte ephemeral public key as a dictionary key (replay cache, §6.1).</summary>
internal readonly record struct EphemeralKeyId(ulong A, ulong B, ulong C, ulong D)
{
    public static EphemeralKeyId From(ReadOnlySpan<byte> k) => new(BinaryPrimitives.ReadUInt64LittleEndian(k),
        BinaryPrimitives.ReadUInt64LittleEndian(k[8..]), BinaryPrimitives.ReadUInt64LittleEndian(k[16..]), BinaryPrimitives.ReadUInt64LittleEndian(k[24..]));
}

/// <summary>
/// One UDP socket carrying many RUD connections (spec/rud.md). One receive loop and one driver
/// loop (timers, pacing, flushing) per endpoint; all protocol state behind one lock.
/// </summary>
public sealed class RudEndpoint : IAsyncDisposable
{
    private const int ReplayCacheLimit = 65_536;
    private static readonly TimeSpan ReplayWindow = TimeSpan.FromSeconds(120);
    private readonly ILogger _log;
    private readonly Dictionary<ulong, RudConnection> _connections = [];
    private readonly List<RudConnection> _iteration = [];
    private readonly Dictionary<EphemeralKeyId, long> _replayCache = [];
    private readonly Dictionary<EphemeralKeyId, RudConnection> _unconfirmedByKey = [];
    private readonly Channel<RudConnection> _incoming = Channel.CreateBounded<RudConnection>(new BoundedChannelOptions(256) { FullMode = BoundedChannelFullMode.DropWrite });
    private readonly SemaphoreSlim _wake = new(0, 1);
    private readonly CancellationTokenSource _stop = new();
    private readonly TokenIssuer _tokens;
    private readonly byte[]? _staticPublic;
    private readonly long _t0 = Stopwatch.GetTimestamp();
    private readonly Task _driver;
    private readonly List<Task> _receivers = [];
    private Socket _socket;
    private readonly UdpBatch _batch;
    private int _flushRequested;
    private int _unconfirmed;
    private long _nextPrune;

    internal readonly object Gate = new();
    internal readonly byte[] ReceivePlain = new byte[RudWire.MaxReceiveSize];
    internal readonly byte[] SendPlain = new byte[RudWire.MaxReceiveSize];
    internal readonly byte[] SendPacketBuffer = new byte[RudWire.MaxReceiveSize];

    private RudEndpoint(Socket socket, RudEndpointOptions options, ILogger? log)
    {
        _socket = socket;
        Options = options;
        _log = log ?? NullLogger.Instance;
        _tokens = new TokenIssuer(options.TokenLifetime);
        _batch = new UdpBatch(Counters);
        _mtuDiscover = ReadMtuDiscover(socket);
        if (options.StaticPrivateKey is { } key)
        {
            _staticPublic = new byte[X25519.KeySize];
            X25519.PublicKey(key, _staticPublic);
        }
        _receivers.Add(ReceiveLoopAsync(socket));
        _driver = DriveAsync();
    }

    /// <summary>Binds a UDP socket at <paramref name="local"/> (port 0: any) and starts the endpoint.</summary>
    public static RudEndpoint Bind(IPEndPoint local, RudEndpointOptions options, ILogger? log = null) => new(NewSocket(local), options, log);

    public RudEndpointOptions Options { get; }
    public RudCounters Counters { get; } = new();
    public IPEndPoint LocalEndPoint { get { lock (Gate) return (IPEndPoint)_socket.LocalEndPoint!; } }

    /// <summary>The responder's static public key (null for an initiator-only endpoint).</summary>
    public byte[]? StaticPublicKey => _staticPublic;

    /// <summary>Connections initiators opened to this endpoint.</summary>
    public ValueTask<RudConnection> AcceptConnectionAsync(CancellationToken cancellationToken) => _incoming.Reader.ReadAsync(cancellationToken);

    public int ConnectionCount { get { lock (Gate) return _connections.Count; } }

    private static Socket NewSocket(IPEndPoint local)
    {
        var s = new Socket(local.AddressFamily, SocketType.Dgram, ProtocolType.Udp);
        try
        {
            s.ReceiveBufferSize = 4 << 20;
            s.SendBufferSize = 4 << 20;
            s.Bind(local);
            return s;
        }
        catch
        {
            s.Dispose();
            throw;
        }
    }

    private const int IpProtoIp = 0, IpMtuDiscover = 10, IpProtoIpv6 = 41, Ipv6MtuDiscover = 23, PmtuDiscProbe = 3;

    /// <summary>
    /// The socket's path-MTU-discovery mode (IP_MTU_DISCOVER / IPV6_MTU_DISCOVER) as the system
    /// set it, or -1 where the option is missing (the endpoint then does not probe, §9.5).
    /// </summary>
    private static int ReadMtuDiscover(Socket s)
    {
        if (!OperatingSystem.IsLinux()) return -1;
        Span<byte> value = stackalloc byte[4];
        try
        {
            int n = s.AddressFamily == AddressFamily.InterNetworkV6
                ? s.GetRawSocketOption(IpProtoIpv6, Ipv6MtuDiscover, value)
                : s.GetRawSocketOption(IpProtoIp, IpMtuDiscover, value);
            return n == 4 ? System.Buffers.Binary.BinaryPrimitives.ReadInt32LittleEndian(value) : -1;
        }
        catch (SocketException) { return -1; }
    }

    private static void SetMtuDiscover(Socket s, int mode)
    {
        Span<byte> value = stackalloc byte[4];
        System.Buffers.Binary.BinaryPrimitives.WriteInt32LittleEndian(value, mode);
        if (s.AddressFamily == AddressFamily.InterNetworkV6) s.SetRawSocketOption(IpProtoIpv6, Ipv6MtuDiscover, value);
        else s.SetRawSocketOption(IpProtoIp, IpMtuDiscover, value);
    }

    private int _mtuDiscover = -1;

    /// <summary>Whether this endpoint's connections probe for larger packets (§9.5).</summary>
    internal bool ProbesPathMtu => Options.PathMtuProbe && _mtuDiscover >= 0;

    /// <summary>
    /// Sends a path MTU probe (§9.5) on its own: what is batched goes first, then the probe with
    /// IP_PMTUDISC_PROBE (don't fragment; larger than the interface → EMSGSIZE, counted), then the
    /// socket's own mode again, so ordinary packets are still fragmented where a path needs it.
    /// Caller holds <see cref="Gate"/>.
    /// </summary>
    internal void SendProbe(ReadOnlySpan<byte> packet, SocketAddress to)
    {
        _batch.Send(_socket);
        try
        {
            SetMtuDiscover(_socket, PmtuDiscProbe);
            try { _socket.SendTo(packet, SocketFlags.None, to); }
            finally { SetMtuDiscover(_socket, _mtuDiscover); }
        }
        catch (SocketException) { Counters.Increment(ref Counters.SendErrors); }
        catch (ObjectDisposedException) { Counters.Increment(ref Counters.SendErrors); }
    }

    internal long Now() => Stopwatch.GetElapsedTime(_t0).Ticks / 10;

    private long WallMs() => Options.Clock.GetUtcNow().ToUnixTimeMilliseconds();

    /// <summary>
    /// Moves this endpoint to a new UDP socket on the same address with a fresh port (a NAT
    /// rebinding, for tests of §7.1). Connections carry on: the peer follows the next packet.
    /// </summary>
    public void Rebind()
    {
        Socket old;
        lock (Gate)
        {
            old = _socket;
            var ep = (IPEndPoint)old.LocalEndPoint!;
            _socket = NewSocket(new IPEndPoint(ep.Address, 0));
            _mtuDiscover = ReadMtuDiscover(_socket);
            _receivers.Add(ReceiveLoopAsync(_socket));
            foreach (var c in _connections.Values) if (c.IsEstablished) c.QueuePing();
        }
        old.Dispose();
    }

    // ---- initiating (§4.2) ----

    /// <summary>
    /// Opens a connection to <paramref name="remote"/>. With <paramref name="serverStaticKey"/> the
    /// immediate exchange is used (deferred if the responder asks); without it, first contact.
    /// Throws <see cref="TimeoutException"/> when the handshake does not complete in time.
    /// </summary>
    public async Task<RudConnection> ConnectAsync(IPEndPoint remote, byte[]? serverStaticKey, CancellationToken cancellationToken)
    {
        RudConnection conn;
        lock (Gate)
        {
            long now = Now();
            var peer = remote.Serialize();
            if (peer.Family != _socket.AddressFamily) throw new ArgumentException($"{remote} is not reachable from a socket of family {_socket.AddressFamily}");
            conn = new RudConnection(this, initiator: true, NewLocalId(), peer, now) { RekeyInterval = Options.RekeyInterval };
            conn.EphemeralPrivate = X25519.GeneratePrivateKey();
            conn.EphemeralPublic = new byte[X25519.KeySize];
            X25519.PublicKey(conn.EphemeralPrivate, conn.EphemeralPublic);
            conn.HandshakePacket = new byte[RudWire.HandshakeSize];
            conn.Mezzanine = new byte[RudWire.MezzaninePlainSize];
            BinaryPrimitives.WriteInt64BigEndian(conn.Mezzanine, WallMs());
            if (serverStaticKey is not null)
            {
                if (serverStaticKey.Length != X25519.KeySize) throw new ArgumentException("the server key must be 32 bytes", nameof(serverStaticKey));
                conn.Mode = ExchangeMode.Immediate;
                if (!SetServerKey(conn, serverStaticKey)) throw new ArgumentException("the server key is not a usable X25519 public key", nameof(serverStaticKey));
                BuildInitiatorMessage(conn, complete: false, []);
            }
            else
            {
                conn.Mode = ExchangeMode.FirstContact;
                conn.HandshakeLength = RudWire.WriteHello(conn.HandshakePacket, conn.LocalId);
            }
            _connections.Add(conn.LocalId, conn);
            conn.HandshakeDeadline = now + Options.HandshakeTimeout.Ticks / 10;
            RestartResend(conn, now);
        }
        try
        {
            await conn.Established.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
            return conn;
        }
        catch (OperationCanceledException)
        {
            lock (Gate) conn.FailHandshake("cancelled");
            throw;
        }
    }

    private static bool SetServerKey(RudConnection conn, byte[] key)
    {
        var es = new byte[X25519.KeySize];
        if (!X25519.Agree(conn.EphemeralPrivate, key, es)) return false;
        conn.ServerStatic = key;
        conn.Es = es;
        conn.MezzanineKey = RudKeys.MezzanineKey(es, conn.EphemeralPublic, key);
        return true;
    }

    /// <summary>Builds the Exchange (no token) or initiator Complete into the connection's handshake packet (§4.1).</summary>
    private static void BuildInitiatorMessage(RudConnection conn, bool complete, ReadOnlySpan<byte> token)
    {
        var s = conn.HandshakePacket.AsSpan();
        int at = RudWire.WriteExchangePlaintext(s, complete, conn.LocalId, conn.EphemeralPublic, token);
        Span<byte> nonce = stackalloc byte[RudKeys.NonceSize];
        RudKeys.MezzanineNonce(nonce, complete ? (byte)1 : (byte)0);
        using var aead = new AesGcm(conn.MezzanineKey!, RudKeys.TagSize);
        aead.Encrypt(nonce, conn.Mezzanine, s.Slice(at, RudWire.MezzaninePlainSize), s.Slice(at + RudWire.MezzaninePlainSize, RudKeys.TagSize), s[..50]);
        conn.HandshakeLength = RudWire.HandshakeSize;
    }

    private void RestartResend(RudConnection conn, long now)
    {
        conn.HandshakeInterval = 500_000;
        conn.HandshakeResendAt = now + conn.HandshakeInterval;
        conn.HandshakeSentTime = now;
        conn.HandshakeResent = false;
        SendTo(conn.HandshakePacket.AsSpan(0, conn.HandshakeLength), conn.Peer);
        RequestFlush(conn);
    }

    private void OnInitiatorHandshake(RudConnection conn, ReadOnlySpan<byte> p, long now)
    {
        byte type = p[RudWire.IdSize];
        if (type == PacketType.Challenge)
        {
            if (conn.Mode != ExchangeMode.FirstContact || conn.ServerStatic is not null
                || !RudWire.TryParseChallengeOrDefer(p, challenge: true, out int keyAt, out int tokenAt, out int tokenLength))
            { Counters.Increment(ref Counters.HandshakeDropped); return; }
            if (!SetServerKey(conn, p.Slice(keyAt, X25519.KeySize).ToArray())) { Counters.Increment(ref Counters.HandshakeDropped); return; }
            BuildInitiatorMessage(conn, complete: true, p.Slice(tokenAt, tokenLength));
            RestartResend(conn, now);
        }
        else if (type == PacketType.Defer)
        {
            if (conn.ServerStatic is null || !RudWire.TryParseChallengeOrDefer(p, challenge: false, out _, out int tokenAt, out int tokenLength))
            { Counters.Increment(ref Counters.HandshakeDropped); return; }
            if (conn.Mode == ExchangeMode.Immediate) conn.Mode = ExchangeMode.Deferred;
            BuildInitiatorMessage(conn, complete: true, p.Slice(tokenAt, tokenLength));
            RestartResend(conn, now);
        }
        else if (type == PacketType.ResponderComplete)
        {
            if (conn.ServerStatic is null || p.Length < RudWire.ResponderCompleteSize || p[RudWire.IdSize + 1] != RudWire.Version)
            { Counters.Increment(ref Counters.HandshakeDropped); return; }
            var responderEphemeral = p.Slice(RudWire.IdSize + 2, X25519.KeySize);
            Span<byte> ee = stackalloc byte[X25519.KeySize];
            if (!X25519.Agree(conn.EphemeralPrivate, responderEphemeral, ee)) { Counters.Increment(ref Counters.HandshakeDropped); return; }
            var (i, r) = RudKeys.TrafficSecrets(conn.Es, ee, conn.EphemeralPublic, responderEphemeral, conn.ServerStatic);
            int aad = RudWire.IdSize + 2 + X25519.KeySize;
            using (var check = new PacketProtection(r, 0))
            {
                Span<byte> plain = stackalloc byte[RudWire.ResponderCompletePlainSize];
                if (!check.Open(0, p[..aad], p.Slice(aad, RudWire.ResponderCompletePlainSize + RudKeys.TagSize), plain))
                { Counters.Increment(ref Counters.AuthFailed); return; }
                conn.RemoteId = RudWire.ReadId(plain);
            }
            conn.Establish(i, r, now, conn.HandshakeResent ? 0 : now - conn.HandshakeSentTime);
            conn.EphemeralPrivate = null;
            RequestFlush(conn);
        }
        else Counters.Increment(ref Counters.Malformed);
    }

    // ---- responding (§4.3) ----

    private void OnHello(ReadOnlySpan<byte> p, SocketAddress from, long now)
    {
        if (!Options.AllowFirstContact || !RudWire.TryParseHello(p, out ulong initiatorId)) { Counters.Increment(ref Counters.HandshakeDropped); return; }
        Span<byte> token = stackalloc byte[TokenIssuer.TokenSize];
        _tokens.Issue(ToEndPoint(from), initiatorId, WallMs(), token);
        Span<byte> reply = stackalloc byte[RudWire.IdSize + 3 + X25519.KeySize + TokenIssuer.TokenSize];
        int n = RudWire.WriteChallengeOrDefer(reply, initiatorId, _staticPublic, token);
        SendTo(reply[..n], from);
        Counters.Increment(ref Counters.ChallengesSent);
    }

    private void SendDefer(ulong initiatorId, SocketAddress from)
    {
        Span<byte> token = stackalloc byte[TokenIssuer.TokenSize];
        _tokens.Issue(ToEndPoint(from), initiatorId, WallMs(), token);
        Span<byte> reply = stackalloc byte[RudWire.IdSize + 3 + TokenIssuer.TokenSize];
        int n = RudWire.WriteChallengeOrDefer(reply, initiatorId, [], token);
        SendTo(reply[..n], from);
        Counters.Increment(ref Counters.DefersSent);
    }

    private void OnExchange(ReadOnlySpan<byte> p, SocketAddress from, long now)
    {
        if (!RudWire.TryParseExchange(p, out bool complete, out ulong initiatorId, out int ephAt, out int tokenAt, out int tokenLength, out int mezzAt))
        { Counters.Increment(ref Counters.HandshakeDropped); return; }
        if (complete)
        {
            switch (_tokens.Check(p.Slice(tokenAt, tokenLength), ToEndPoint(from), initiatorId, WallMs()))
            {
                case TokenCheck.Invalid: Counters.Increment(ref Counters.TokenInvalid); return;
                case TokenCheck.Expired:
                    Counters.Increment(ref Counters.TokenExpired);
                    SendDefer(initiatorId, from);
                    return;
            }
        }
        var eph = p.Slice(ephAt, X25519.KeySize);
        var keyId = EphemeralKeyId.From(eph);
        // A repeated Exchange of a live, unconfirmed connection: our Complete was lost (step 6).
        if (_unconfirmedByKey.TryGetValue(keyId, out var existing) && !existing.IsClosed && existing.ResponderCompleteBytes is { } again)
        {
            SendTo(again, from);
            Counters.Increment(ref Counters.CompletesResent);
            return;
        }
        if (!complete && (Options.Challenge == ChallengePolicy.Always || (Options.Challenge == ChallengePolicy.Load && _unconfirmed > Options.LoadThreshold)))
        {
            SendDefer(initiatorId, from);
            return;
        }
        Span<byte> es = stackalloc byte[X25519.KeySize];
        if (!X25519.Agree(Options.StaticPrivateKey, eph, es)) { Counters.Increment(ref Counters.HandshakeDropped); return; }
        var km = RudKeys.MezzanineKey(es, eph, _staticPublic);
        Span<byte> nonce = stackalloc byte[RudKeys.NonceSize];
        RudKeys.MezzanineNonce(nonce, complete ? (byte)1 : (byte)0);
        Span<byte> mezz = stackalloc byte[RudWire.MezzaninePlainSize];
        try
        {
            using var aead = new AesGcm(km, RudKeys.TagSize);
            aead.Decrypt(nonce, p.Slice(mezzAt, RudWire.MezzaninePlainSize), p.Slice(mezzAt + RudWire.MezzaninePlainSize, RudKeys.TagSize), mezz, p[..50]);
        }
        catch (AuthenticationTagMismatchException) { Counters.Increment(ref Counters.AuthFailed); return; }
        long stamp = BinaryPrimitives.ReadInt64BigEndian(mezz);
        if (Math.Abs(WallMs() - stamp) > (long)ReplayWindow.TotalMilliseconds || mezz[8] != 0) { Counters.Increment(ref Counters.HandshakeDropped); return; }
        if (_replayCache.ContainsKey(keyId)) { Counters.Increment(ref Counters.Replayed); return; }
        if (_replayCache.Count >= ReplayCacheLimit || _connections.Count >= Options.MaxConnections) { Counters.Increment(ref Counters.HandshakeDropped); return; }

        var conn = new RudConnection(this, initiator: false, NewLocalId(), Copy(from), now)
        {
            RemoteId = initiatorId,
            Mode = complete ? ExchangeMode.Deferred : ExchangeMode.Immediate,
            RekeyInterval = Options.RekeyInterval,
            ReplayKey = keyId,
        };
        var sePrivate = X25519.GeneratePrivateKey();
        Span<byte> sePublic = stackalloc byte[X25519.KeySize];
        X25519.PublicKey(sePrivate, sePublic);
        Span<byte> ee = stackalloc byte[X25519.KeySize];
        if (!X25519.Agree(sePrivate, eph, ee)) { Counters.Increment(ref Counters.HandshakeDropped); return; }
        var (i, r) = RudKeys.TrafficSecrets(es, ee, eph, sePublic, _staticPublic);
        conn.Establish(i, r, now);
        var reply = new byte[RudWire.ResponderCompleteSize];
        RudWire.WriteId(reply, initiatorId);
        reply[RudWire.IdSize] = PacketType.ResponderComplete;
        reply[RudWire.IdSize + 1] = RudWire.Version;
        sePublic.CopyTo(reply.AsSpan(RudWire.IdSize + 2));
        int aad = RudWire.IdSize + 2 + X25519.KeySize;
        Span<byte> plain = stackalloc byte[RudWire.ResponderCompletePlainSize];
        RudWire.WriteId(plain, conn.LocalId);
        plain[RudWire.IdSize] = 0; // ticket length (§7.5)
        conn.SealResponderComplete(reply.AsSpan(0, aad), plain, reply.AsSpan(aad));
        conn.ResponderCompleteBytes = reply;
        _connections.Add(conn.LocalId, conn);
        _replayCache[keyId] = now + 2 * ReplayWindow.Ticks / 10;
        _unconfirmedByKey[keyId] = conn;
        _unconfirmed++;
        Counters.Increment(ref Counters.HandshakesAccepted);
        SendTo(reply, from);
        if (!_incoming.Writer.TryWrite(conn)) conn.CloseLocked(1, "accept queue full", sendClose: true);
    }

    internal void OnConfirmed(RudConnection conn)
    {
        conn.Confirmed = true;
        conn.ResponderCompleteBytes = null;
        _unconfirmed--;
        _unconfirmedByKey.Remove(conn.ReplayKey);
    }

    internal void Forget(RudConnection conn)
    {
        if (_connections.Remove(conn.LocalId) && !conn.IsInitiator && !conn.Confirmed)
        {
            _unconfirmed--;
            _unconfirmedByKey.Remove(conn.ReplayKey);
        }
    }

    // ---- packets in ----

    private Task ReceiveLoopAsync(Socket socket) =>
        Task.Factory.StartNew(() => ReceiveLoop(socket), CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);

    /// <summary>
    /// The socket's receive thread (§9.4): a batch of datagrams per system call, handled under one
    /// acquisition of the lock; then each connection the batch touched sends what became due.
    /// </summary>
    private void ReceiveLoop(Socket socket)
    {
        Thread.CurrentThread.Name = "rud receive";
        var receiver = new UdpReceiver();
        var from = new SocketAddress(socket.AddressFamily);
        while (!_stop.IsCancellationRequested)
        {
            int n = receiver.Receive(socket, 100);
            if (n < 0) return;
            if (n == 0) continue;
            lock (Gate)
            {
                long now = Now();
                for (int i = 0; i < n; i++)
                {
                    var packet = receiver.Packet(i);
                    if (packet.Length > RudWire.MaxReceiveSize) { Counters.Increment(ref Counters.Malformed); continue; }
                    receiver.Source(i, from);
                    try { OnPacket(packet, from, now); }
                    catch (Exception e) when (e is not OutOfMemoryException)
                    {
                        Counters.Increment(ref Counters.InternalErrors);
                        _log.LogWarning(e, "rud: packet from {From} dropped after an internal error", from);
                    }
                }
                FlushTouched(now);
            }
        }
    }

    private readonly List<RudConnection> _touched = [];

    /// <summary>Marks a connection to flush after the current receive batch. Caller holds <see cref="Gate"/>.</summary>
    internal void Touch(RudConnection conn)
    {
        if (conn.Touched) return;
        conn.Touched = true;
        _touched.Add(conn);
    }

    private void FlushTouched(long now)
    {
        foreach (var conn in _touched)
        {
            conn.Touched = false;
            try { conn.Flush(now); }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                Counters.Increment(ref Counters.InternalErrors);
                _log.LogError(e, "rud: connection {Id} failed", conn.LocalId);
                conn.CloseLocked(1, "internal error", sendClose: true);
            }
        }
        _touched.Clear();
    }

    /// <summary>Routes one packet (§3); everything unusable is dropped and counted (§10).</summary>
    internal void OnPacket(ReadOnlySpan<byte> p, SocketAddress from, long now)
    {
        if (p.Length < RudWire.IdSize + 2) { Counters.Increment(ref Counters.Malformed); return; }
        ulong id = RudWire.ReadId(p);
        if (id == 0)
        {
            if (_staticPublic is null) { Counters.Increment(ref Counters.HandshakeDropped); return; }
            switch (p[RudWire.IdSize])
            {
                case PacketType.Hello: OnHello(p, from, now); break;
                case PacketType.Exchange:
                case PacketType.InitiatorComplete: OnExchange(p, from, now); break;
                default: Counters.Increment(ref Counters.Malformed); break;
            }
            return;
        }
        if (!_connections.TryGetValue(id, out var conn)) { Counters.Increment(ref Counters.UnknownId); return; }
        if (conn.IsInitiator && !conn.IsEstablished)
        {
            if (p[RudWire.IdSize] is PacketType.Data or PacketType.DataPhase1) Counters.Increment(ref Counters.NoKeys);
            else OnInitiatorHandshake(conn, p, now);
            return;
        }
        if (p[RudWire.IdSize] is not (PacketType.Data or PacketType.DataPhase1))
        {
            // A late handshake packet after establishment: nothing to do.
            Counters.Increment(ref Counters.HandshakeDropped);
            return;
        }
        conn.OnDataPacket(p, from, now);
        conn.Flush(now);
    }

    // ---- packets out ----

    internal void SendTo(ReadOnlySpan<byte> packet, SocketAddress to)
    {
        _batch.Send(_socket); // keep the order of what was batched before
        try { _socket.SendTo(packet, SocketFlags.None, to); }
        catch (SocketException) { Counters.Increment(ref Counters.SendErrors); }
        catch (ObjectDisposedException) { Counters.Increment(ref Counters.SendErrors); }
    }

    /// <summary>Room for one packet to <paramref name="to"/> in the send batch (§9.4), written in place; <see cref="CommitPacket"/> adds it. Caller holds <see cref="Gate"/>.</summary>
    internal Span<byte> ReservePacket(SocketAddress to) => _batch.Reserve(_socket, to);

    /// <summary>Adds the packet written into <see cref="ReservePacket"/>'s span; <see cref="SendBatch"/> sends it.</summary>
    internal void CommitPacket(int length) => _batch.Commit(_socket, length);

    /// <summary>Sends the batched packets. Caller holds <see cref="Gate"/>.</summary>
    internal void SendBatch() => _batch.Send(_socket);

    /// <summary>Asks the driver loop for a turn (a stream has data, a frame is queued).</summary>
    internal void RequestFlush(RudConnection _)
    {
        if (Interlocked.Exchange(ref _flushRequested, 1) == 1) return;
        try { _wake.Release(); }
        catch (SemaphoreFullException) { }
        catch (ObjectDisposedException) { }
    }

    private async Task DriveAsync()
    {
        await Task.Yield();
        while (!_stop.IsCancellationRequested)
        {
            long wait;
            lock (Gate)
            {
                Volatile.Write(ref _flushRequested, 0);
                long now = Now();
                long next = now + 1_000_000;
                _iteration.Clear();
                _iteration.AddRange(_connections.Values);
                foreach (var conn in _iteration)
                {
                    try
                    {
                        if (conn.IsInitiator && !conn.IsEstablished && !conn.IsClosed)
                        {
                            if (now >= conn.HandshakeDeadline)
                            {
                                Counters.Increment(ref Counters.HandshakesFailed);
                                conn.FailHandshake($"no answer from {ToEndPoint(conn.Peer)} within {Options.HandshakeTimeout.TotalSeconds:0.#} s");
                                continue;
                            }
                            if (now >= conn.HandshakeResendAt)
                            {
                                SendTo(conn.HandshakePacket.AsSpan(0, conn.HandshakeLength), conn.Peer);
                                conn.HandshakeInterval *= 2;
                                conn.HandshakeResent = true;
                                conn.HandshakeResendAt = now + conn.HandshakeInterval;
                            }
                        }
                        conn.OnTimer(now);
                        conn.Flush(now);
                        next = Math.Min(next, conn.NextWake(now));
                    }
                    catch (Exception e) when (e is not OutOfMemoryException)
                    {
                        Counters.Increment(ref Counters.InternalErrors);
                        _log.LogError(e, "rud: connection {Id} failed", conn.LocalId);
                        conn.CloseLocked(1, "internal error", sendClose: true);
                    }
                }
                if (now >= _nextPrune)
                {
                    _nextPrune = now + 1_000_000;
                    foreach (var (k, expiry) in _replayCache)
                        if (expiry <= now) _replayCache.Remove(k);
                }
                wait = next - now;
            }
            if (Volatile.Read(ref _flushRequested) == 1) continue;
            int ms = (int)Math.Clamp((wait + 999) / 1000, 1, 1000);
            try { await _wake.WaitAsync(ms, _stop.Token).ConfigureAwait(false); }
            catch (OperationCanceledException) { return; }
        }
    }

    // ---- helpers ----

    private ulong NewLocalId()
    {
        Span<byte> b = stackalloc byte[8];
        while (true)
        {
            RandomNumberGenerator.Fill(b);
            ulong id = BinaryPrimitives.ReadUInt64BigEndian(b);
            if (id != 0 && !_connections.ContainsKey(id)) return id;
        }
    }

    internal static SocketAddress Copy(SocketAddress a)
    {
        var c = new SocketAddress(a.Family, a.Size);
        a.Buffer.Span[..a.Size].CopyTo(c.Buffer.Span);
        return c;
    }

    internal static IPEndPoint ToEndPoint(SocketAddress a) =>
        (IPEndPoint)(a.Family == AddressFamily.InterNetworkV6 ? new IPEndPoint(IPAddress.IPv6Any, 0) : new IPEndPoint(IPAddress.Any, 0)).Create(a);

    public async ValueTask DisposeAsync()
    {
        lock (Gate)
        {
            foreach (var c in _connections.Values.ToArray())
            {
                if (c.IsEstablished) c.CloseLocked(0, "endpoint closed", sendClose: true);
                else c.FailHandshake("endpoint closed");
            }
        }
        _stop.Cancel();
        _incoming.Writer.TryComplete();
        lock (Gate) _socket.Dispose();
        try { await _driver.ConfigureAwait(false); } catch (OperationCanceledException) { }
        try { await Task.WhenAll(_receivers).ConfigureAwait(false); } catch (Exception) { }
        _wake.Dispose();
        _stop.Dispose();
    }
}
