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
    /// <summary>The initiator's static X25519 private key (§5.5): proved in every exchange this endpoint initiates; null: anonymous.</summary>
    public byte[]? InitiatorStaticPrivateKey { get; init; }
    /// <summary>The responder accepts only initiators proving one of these static public keys (§5.5); null: any initiator.</summary>
    public IReadOnlyCollection<byte[]>? AuthorizedKeys { get; init; }
    /// <summary>Wall clock for timestamps and tokens.</summary>
    public TimeProvider Clock { get; init; } = TimeProvider.System;
}

/// <summary>A 32-byte public key as a dictionary key (the replay cache's ephemeral keys, §6.1; authorized initiator keys, §5.5).</summary>
internal readonly record struct EphemeralKeyId(ulong A, ulong B, ulong C, ulong D)
{
    public static EphemeralKeyId From(ReadOnlySpan<byte> k) => new(BinaryPrimitives.ReadUInt64LittleEndian(k),
        BinaryPrimitives.ReadUInt64LittleEndian(k[8..]), BinaryPrimitives.ReadUInt64LittleEndian(k[16..]), BinaryPrimitives.ReadUInt64LittleEndian(k[24..]));
}

/// <summary>
/// One UDP socket carrying many RUD connections (spec/rud.md). One receive loop and one driver
/// loop (timers, pacing, flushing) per endpoint; all protocol state behind one lock.
/// </summary>
public sealed partial class RudEndpoint : IAsyncDisposable
{
    /// <summary>Ring memory per connection, per source prefix (connections peers opened) and per endpoint (§8.3, §11).</summary>
    public const long ConnectionRingLimit = 64L << 20, SourceRingLimit = 128L << 20, EndpointRingLimit = 256L << 20;
    /// <summary>Connections peers of one source prefix may hold open at once (§11).</summary>
    public const int ConnectionsPerSource = 64;
    private const int ReplayCacheLimit = 65_536;
    private static readonly TimeSpan ReplayWindow = TimeSpan.FromSeconds(120);
    private readonly ILogger _log;
    private readonly Dictionary<ulong, RudConnection> _connections = [];
    private readonly List<RudConnection> _iteration = [];
    private readonly ReplayCache _replay = new(ReplayCacheLimit, (long)ReplayWindow.TotalMilliseconds);
    private readonly HandshakeLoad _handshakeLoad = new();
    private readonly Dictionary<EphemeralKeyId, RudConnection> _unconfirmedByKey = [];
    private readonly Channel<RudConnection> _incoming = Channel.CreateBounded<RudConnection>(new BoundedChannelOptions(256) { FullMode = BoundedChannelFullMode.DropWrite });
    private readonly SemaphoreSlim _wake = new(0, 1);
    private readonly CancellationTokenSource _stop = new();
    private readonly TokenIssuer _tokens;
    private readonly byte[]? _staticPublic;
    private readonly byte[]? _initiatorStaticPublic;
    /// <summary>This responder's packet obfuscation (§3.3); null for an initiator-only endpoint.</summary>
    private readonly HeaderProtection? _hp;
    /// <summary>The obfuscation of each responder key this endpoint initiated connections to (§3.3). Under <see cref="Gate"/>.</summary>
    private readonly Dictionary<EphemeralKeyId, HeaderProtection> _initiatorProtections = [];
    /// <summary>First contact's obfuscation (§4.2, §3.3): the key of 32 zero bytes, known to all.</summary>
    internal static readonly HeaderProtection FirstContactProtection = new(new byte[X25519.KeySize]);
    private readonly HashSet<EphemeralKeyId>? _authorized;
    private readonly long _t0 = Stopwatch.GetTimestamp();
    private readonly Task _driver;
    private readonly List<Task> _receivers = [];
    private Socket _socket;
    private readonly UdpBatch _batch;
    private int _flushRequested;
    private int _unconfirmed;
    private long _nextPrune;

    internal readonly object Gate = new();

    /// <summary>Ring memory of every stream of this endpoint (§8.3).</summary>
    internal readonly RingAccount Rings = new(EndpointRingLimit, null);

    /// <summary>Per source prefix: its connections and their ring memory (responders, §11).</summary>
    private readonly Dictionary<SourcePrefix, SourceState> _sources = [];

    internal sealed class SourceState(SourcePrefix prefix, RingAccount rings)
    {
        public SourcePrefix Prefix { get; } = prefix;
        public RingAccount Rings { get; } = rings;
        public int Connections;
    }

    private TaskCompletionSource? _ringsReleased;

    /// <summary>Completes at the next return of a ring to the pool. Caller holds <see cref="Gate"/>.</summary>
    internal Task RingsReleased => (_ringsReleased ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)).Task;

    internal void OnRingsReleased()
    {
        var w = _ringsReleased;
        _ringsReleased = null;
        w?.TrySetResult();
    }

    /// <summary>The state of <paramref name="source"/>'s prefix, made on first use. Caller holds <see cref="Gate"/>.</summary>
    private SourceState Source(SocketAddress source)
    {
        var prefix = SourcePrefix.From(source);
        if (!_sources.TryGetValue(prefix, out var state))
        {
            state = new SourceState(prefix, new RingAccount(SourceRingLimit, Rings));
            _sources.Add(prefix, state);
        }
        return state;
    }
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
            _hp = new HeaderProtection(_staticPublic);
        }
        if (options.InitiatorStaticPrivateKey is { } mine)
        {
            _initiatorStaticPublic = new byte[X25519.KeySize];
            X25519.PublicKey(mine, _initiatorStaticPublic);
        }
        if (options.AuthorizedKeys is { } authorized) _authorized = [.. authorized.Select(k => EphemeralKeyId.From(k))];
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
        _hp?.Dispose();
        lock (Gate)
            foreach (var hp in _initiatorProtections.Values)
                if (hp != FirstContactProtection) hp.Dispose(); // shared by every endpoint
    }
}
