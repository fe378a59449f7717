using System.Net;
using System.Net.Sockets;
using System.Threading.Channels;

namespace PtHost.Transports.Rud;

/// <summary>Which key exchange made a connection (spec/rud.md §4.2).</summary>
public enum ExchangeMode { FirstContact, Immediate, Deferred }

/// <summary>
/// One connection (spec/rud.md §5–§9): packet protection, acknowledgements, loss recovery,
/// NewReno congestion control with pacing, and the streams inside. Every member runs under the
/// endpoint's lock (<see cref="Gate"/>).
/// </summary>
public sealed partial class RudConnection
{
    public const int MaxPeerStreams = 256;
    public const long MaxAckDelayUs = 10_000;
    private const long InitialRttUs = 333_000;
    private const long GranularityUs = 1_000;
    private const int MaxPacketThreshold = 64;
    private int _packetThreshold = 3;
    private long _cwndBeforeRecovery, _ssthreshBeforeRecovery;
    private ulong _recoveryCause = ulong.MaxValue;
    private const int MaxPacket = RudWire.MaxPacketSize;
    private const long MinWindow = 2 * MaxPacket;

    private readonly RudEndpoint _ep;

    /// <summary>The endpoint this connection lives on.</summary>
    internal RudEndpoint Endpoint => _ep;
    internal readonly object Gate;
    private readonly RudCounters _counters;

    private PacketProtection? _send, _recv, _recvPrev, _recvNext;
    private ulong _recvPhaseFirst, _sendPhaseFirst, _nextSent;
    private bool _sendPhaseAcked;

    private ReceivedWindow _rx;
    private int _ackElicitingUnacked;
    private long _ackElicitingReceived;
    /// <summary>Acknowledgement frequency (§9.1): every second ack-eliciting packet for the first <see cref="AckQuickPackets"/>, then every tenth.</summary>
    public const int AckEvery = 10;
    public const int AckQuickPackets = 100;
    private bool _ackNow;
    private long _ackDeadline, _largestRxTime;

    private readonly SentRing _sent = new();
    private long _bytesInFlight, _lastAckElicitingSent, _lossTime, _lastSend, _lastReceive;
    private ulong _largestAcked;
    private bool _anyAcked;
    private long _latestRtt, _srtt = InitialRttUs, _rttvar = InitialRttUs / 2, _minRtt;
    private bool _hasRtt;
    private int _ptoCount, _probes;
    private long _cwnd = 10 * MaxPacket, _ssthresh = long.MaxValue, _recoveryStart = -1;
    private double _tokens = 10 * MaxPacket;
    private long _tokensTime;
    // Loss tolerance (§9.3): a moving average of packet outcomes, 1 = lost, weight 1/64 each.
    private double _lossRate;
    public const double LossTolerance = 0.15;
    private const double LossWeight = 1.0 / 64;

    private readonly Dictionary<ulong, RudStream> _streams = [];
    private readonly Queue<RudStream> _sendQueue = new();
    private readonly Queue<ControlFrame> _control = new();
    private readonly ulong[] _nextLocalSeq = new ulong[3];
    private readonly RangeSet[] _peerSeen = [new(), new(), new()];
    private int _peerOpen, _localOpen;
    private bool _pingPending;
    private readonly Channel<RudStream> _accept = Channel.CreateBounded<RudStream>(MaxPeerStreams);
    private readonly Dictionary<ulong, RudDatagramStream> _datagramStreams = [];
    private readonly Channel<RudDatagramStream> _acceptDatagrams = Channel.CreateBounded<RudDatagramStream>(MaxPeerStreams);
    private readonly Queue<OutgoingDatagram> _datagrams = new();
    private readonly TaskCompletionSource _closed = new(TaskCreationOptions.RunContinuationsAsynchronously);
    internal readonly TaskCompletionSource Established = new(TaskCreationOptions.RunContinuationsAsynchronously);

    internal RudConnection(RudEndpoint endpoint, bool initiator, ulong localId, SocketAddress peer, long now, RingAccount? sourceRings = null)
    {
        _ep = endpoint;
        Rings = new RingAccount(RudEndpoint.ConnectionRingLimit, sourceRings ?? endpoint.Rings);
        Gate = endpoint.Gate;
        _counters = endpoint.Counters;
        IsInitiator = initiator;
        LocalId = localId;
        Peer = peer;
        _lastReceive = _lastSend = _tokensTime = now;
        if (endpoint.Options.CongestionControl == CongestionControl.Bbr) _bbr = new Bbr(MaxPacket, AckEvery, UdpReceiver.Batch, _cwnd, InitialRttUs, now);
    }

    private readonly Bbr? _bbr;

    /// <summary>The ring memory of this connection's streams (§8.3).</summary>
    internal RingAccount Rings { get; }

    /// <summary>Completes when some stream of the endpoint returns a ring (a writer held back by ring memory waits for it).</summary>
    internal Task RingsReleased => _ep.RingsReleased;

    internal void OnRingsReleased() => _ep.OnRingsReleased();

    // Path MTU probing (§9.5): the packet size in use, and the probe in flight (0: none).
    private int _maxPacket = RudWire.MaxPacketSize;
    private ulong _mtuProbe;
    private bool _mtuProbing;
    private long _mtuProbeDeadline, _mtuNextProbe;
    private int _mtuProbeAttempts;
    private bool _mtuDone;
    private const int MtuProbeAttempts = 3;
    private const long MtuRetryUs = 2_000_000;

    /// <summary>The largest packet this connection sends now (§9.5).</summary>
    public int MaxPacketSize { get { lock (Gate) return _maxPacket; } }

    /// <summary>The congestion window in force (BBR's or NewReno's).</summary>
    private long Cwnd => _bbr?.Window ?? _cwnd;

    public bool IsInitiator { get; }
    public ulong LocalId { get; }
    public ulong RemoteId { get; internal set; }
    public ExchangeMode Mode { get; internal set; }
    internal SocketAddress Peer { get; private set; }
    public IPEndPoint RemoteEndPoint { get { lock (Gate) return RudEndpoint.ToEndPoint(Peer); } }
    public bool IsEstablished { get; private set; }
    public bool IsClosed { get; private set; }
    public string? CloseReason { get; private set; }
    internal bool Confirmed { get; set; }
    internal long RekeyInterval { get; set; } = 1L << 22;
    public int KeyUpdatesSent { get; private set; }
    public int KeyUpdatesReceived { get; private set; }

    /// <summary>Completes when the connection has closed (for any reason).</summary>
    public Task Closed => _closed.Task;

    // ---- handshake state, driven by the endpoint ----
    internal byte[]? HandshakePacket;
    internal int HandshakeLength;
    internal long HandshakeResendAt, HandshakeInterval, HandshakeDeadline, HandshakeSentTime;
    internal bool HandshakeResent;
    internal byte[]? EphemeralPrivate;
    internal byte[]? EphemeralPublic;
    internal byte[]? ServerStatic;
    internal byte[]? MezzanineKey;
    internal byte[]? Mezzanine;
    internal byte[]? Es;
    /// <summary>The packet obfuscation of this connection's responder key (§3.3); first contact's until the Challenge names the key.</summary>
    internal HeaderProtection Hp = null!;
    /// <summary>The initiator's Elligator 2 representative of <see cref="EphemeralPublic"/> (§4.6).</summary>
    internal byte[]? Representative;
    /// <summary>The initiator's static agreement ss (§5.5); null when it proves no static key.</summary>
    internal byte[]? Ss;
    /// <summary>K_a (§5.5), with <see cref="Ss"/>.</summary>
    internal byte[]? ProofKey;
    internal byte[]? ResponderCompleteBytes;
    internal EphemeralKeyId ReplayKey;
    /// <summary>The source prefix state of a connection a peer opened (§11); null for initiators.</summary>
    internal RudEndpoint.SourceState? Source;

    /// <summary>Installs the traffic keys (§5.3) and marks the connection established.</summary>
    internal void Establish(byte[] initiatorSecret, byte[] responderSecret, long now, long handshakeRtt = 0)
    {
        // The initiator's exchange was answered once, without a resend: that round trip seeds the RTT (§9.2).
        if (handshakeRtt > 0) UpdateRtt(handshakeRtt, 0);
        _send = new PacketProtection(IsInitiator ? initiatorSecret : responderSecret, 0);
        _recv = new PacketProtection(IsInitiator ? responderSecret : initiatorSecret, 0);
        if (IsInitiator)
        {
            // The responder's Complete used its sent index 0 (§6.2).
            _rx.Mark(0);
        }
        else _nextSent = 1;
        _sendPhaseFirst = _nextSent;
        _mtuNextProbe = now;
        _mtuDone = !_ep.ProbesPathMtu;
        IsEstablished = true;
        HandshakePacket = null;
        _lastReceive = now;
        Established.TrySetResult();
    }

    /// <summary>Seals the responder's Complete payload with sent index 0 (§4.1).</summary>
    internal void SealResponderComplete(ReadOnlySpan<byte> aad, ReadOnlySpan<byte> plaintext, Span<byte> output) => _send!.Seal(0, aad, plaintext, output);

    internal bool OpenResponderComplete(ReadOnlySpan<byte> aad, ReadOnlySpan<byte> sealedData, Span<byte> plaintext) => _recv!.Open(0, aad, sealedData, plaintext);

    // ---- streams (application) ----

    /// <summary>Opens a stream of <paramref name="kind"/>; throws when the connection is closed or at the stream limit.</summary>
    public RudStream OpenStream(StreamKind kind = StreamKind.Asynchronous)
    {
        if (kind == StreamKind.Datagram) throw new ArgumentException("use OpenDatagramStream for datagram streams", nameof(kind));
        lock (Gate)
        {
            if (IsClosed) throw new IOException($"connection closed: {CloseReason}");
            if (_localOpen >= MaxPeerStreams) throw new IOException($"the peer allows {MaxPeerStreams} open streams");
            ulong id = RudWire.MakeStreamId(_nextLocalSeq[(int)kind]++, kind, IsInitiator ? 0 : 1);
            var s = new RudStream(this, id);
            _streams.Add(id, s);
            _localOpen++;
            return s;
        }
    }

    /// <summary>Opens an asynchronous stream, or returns null when the connection is closed or at the stream limit.</summary>
    public RudStream? TryOpenStream()
    {
        lock (Gate)
        {
            if (IsClosed || _localOpen >= MaxPeerStreams) return null;
            return OpenStream();
        }
    }

    /// <summary>Opens a datagram stream (§8.2): unreliable messages for UDP sessions.</summary>
    public RudDatagramStream OpenDatagramStream()
    {
        lock (Gate)
        {
            if (IsClosed) throw new IOException($"connection closed: {CloseReason}");
            if (_datagramStreams.Count >= MaxPeerStreams) throw new IOException($"at most {MaxPeerStreams} datagram streams");
            ulong id = RudWire.MakeStreamId(_nextLocalSeq[(int)StreamKind.Datagram]++, StreamKind.Datagram, IsInitiator ? 0 : 1);
            var ch = new RudDatagramStream(this, id);
            _datagramStreams.Add(id, ch);
            return ch;
        }
    }

    /// <summary>The next datagram stream the peer opened.</summary>
    public ValueTask<RudDatagramStream> AcceptDatagramStreamAsync(CancellationToken cancellationToken) => _acceptDatagrams.Reader.ReadAsync(cancellationToken);

    internal bool QueueDatagram(in OutgoingDatagram d)
    {
        if (_datagrams.Count >= RudDatagramStream.QueueLimit) { _counters.Increment(ref _counters.DatagramsDropped); return false; }
        _datagrams.Enqueue(d);
        _ep.RequestFlush(this);
        return true;
    }

    /// <summary>The next stream the peer opened.</summary>
    public ValueTask<RudStream> AcceptStreamAsync(CancellationToken cancellationToken) => _accept.Reader.ReadAsync(cancellationToken);

    public int OpenStreams { get { lock (Gate) return _streams.Count; } }

    /// <summary>Closes the connection with a CLOSE frame (error code 0).</summary>
    public void Close(string reason = "closed")
    {
        lock (Gate) CloseLocked(0, reason, sendClose: true);
    }

    internal void ScheduleSend(RudStream s)
    {
        if (!s.InSendQueue && s.HasSendWork)
        {
            s.InSendQueue = true;
            _sendQueue.Enqueue(s);
        }
        _ep.RequestFlush(this);
    }

    internal void QueueWindowUpdate(RudStream s)
    {
        if (s.WindowUpdatePending) return;
        s.WindowUpdatePending = true;
        _control.Enqueue(new ControlFrame { Type = FrameType.MaxStreamData, StreamId = s.Id });
        _ep.RequestFlush(this);
    }

    internal void QueueReset(RudStream s, ulong code)
    {
        s.MarkResetSent();
        _control.Enqueue(new ControlFrame { Type = FrameType.ResetStream, StreamId = s.Id, Code = code, Value = s.FinalSizeForReset });
        _ep.RequestFlush(this);
    }

    internal void StreamMaybeFinished(RudStream s)
    {
        if (!s.Finished || !_streams.Remove(s.Id)) return;
        s.ReturnBuffers();
        if (RudWire.StreamSide(s.Id) == (IsInitiator ? 0 : 1)) _localOpen--;
        else _peerOpen--;
    }

    /// <summary>Ends the connection: streams fail, waiters wake, the endpoint forgets it.</summary>
    internal void CloseLocked(ulong code, string reason, bool sendClose)
    {
        if (IsClosed) return;
        if (sendClose && IsEstablished && _send is not null)
        {
            try
            {
                var plain = _ep.SendPlain.AsSpan();
                plain[0] = 0;
                int pos = 1 + RudWire.WriteClose(plain[1..], code, System.Text.Encoding.UTF8.GetBytes(reason.Length > 100 ? reason[..100] : reason));
                var packet = _ep.SendPacketBuffer.AsSpan();
                int h = RudWire.WriteDataHeader(packet, RemoteId, _send.Phase, _nextSent);
                _send.Seal(_nextSent, packet[..h], plain[..pos], packet[h..]);
                Hp.Mask(packet[..(h + pos + RudKeys.TagSize)]);
                _ep.SendTo(packet[..(h + pos + RudKeys.TagSize)], Peer);
                _nextSent++;
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException) { }
        }
        IsClosed = true;
        CloseReason = reason;
        var error = new IOException($"RUD connection closed: {reason}");
        foreach (var s in _streams.Values.ToArray()) s.Fail(error);
        _streams.Clear();
        _sendQueue.Clear();
        _control.Clear();
        _sent.Clear();
        _accept.Writer.TryComplete(error);
        _acceptDatagrams.Writer.TryComplete(error);
        foreach (var ch in _datagramStreams.Values) ch.Complete(error);
        _datagramStreams.Clear();
        while (_datagrams.TryDequeue(out var d)) System.Buffers.ArrayPool<byte>.Shared.Return(d.Buffer);
        Established.TrySetException(error);
        _send?.Dispose();
        _recv?.Dispose();
        _recvPrev?.Dispose();
        _recvNext?.Dispose();
        _ep.Forget(this);
        _closed.TrySetResult();
    }

    /// <summary>Fails a handshake that ran out of time (§4.5).</summary>
    internal void FailHandshake(string reason)
    {
        if (IsClosed) return;
        IsClosed = true;
        CloseReason = reason;
        Established.TrySetException(new TimeoutException(reason));
        _accept.Writer.TryComplete();
        _ep.Forget(this);
        _closed.TrySetResult();
    }

    /// <summary>Loss-recovery state, for logs and test diagnostics.</summary>
    public string DebugState
    {
        get
        {
            lock (Gate)
                return $"conn {LocalId:x}: sent {_nextSent} ring {_sent.Count} inflight {_bytesInFlight} cwnd {Cwnd} tokens {_tokens:0} pto {_ptoCount} lossTime {_lossTime} " +
                    $"largestAcked {_largestAcked} rxLargest {_rx.Largest} sendQ {_sendQueue.Count} control {_control.Count} ping {_pingPending} threshold {_packetThreshold} streams {_streams.Count} closed {IsClosed}" + (_bbr is null ? "" : " " + _bbr.State);
        }
    }

    /// <summary>A snapshot for tests and logs.</summary>
    public (long Cwnd, long SmoothedRttUs, long BytesInFlight) CongestionState { get { lock (Gate) return (Cwnd, _srtt, _bytesInFlight); } }
}
