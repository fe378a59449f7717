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
public sealed class RudConnection
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
    private readonly Dictionary<ulong, RudDatagramStream> _datagramChannels = [];
    private readonly Channel<RudDatagramStream> _acceptDatagrams = Channel.CreateBounded<RudDatagramStream>(MaxPeerStreams);
    private readonly Queue<OutgoingDatagram> _datagrams = new();
    private readonly TaskCompletionSource _closed = new(TaskCreationOptions.RunContinuationsAsynchronously);
    internal readonly TaskCompletionSource Established = new(TaskCreationOptions.RunContinuationsAsynchronously);

    internal RudConnection(RudEndpoint endpoint, bool initiator, ulong localId, SocketAddress peer, long now)
    {
        _ep = endpoint;
        Gate = endpoint.Gate;
        _counters = endpoint.Counters;
        IsInitiator = initiator;
        LocalId = localId;
        Peer = peer;
        _lastReceive = _lastSend = _tokensTime = now;
        if (endpoint.Options.CongestionControl == CongestionControl.Bbr) _bbr = new Bbr(MaxPacket, AckEvery, UdpReceiver.Batch, _cwnd, InitialRttUs, now);
    }

    private readonly Bbr? _bbr;

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
    internal byte[]? ResponderCompleteBytes;
    internal EphemeralKeyId ReplayKey;

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
            if (_datagramChannels.Count >= MaxPeerStreams) throw new IOException($"at most {MaxPeerStreams} datagram streams");
            ulong id = RudWire.MakeStreamId(_nextLocalSeq[(int)StreamKind.Datagram]++, StreamKind.Datagram, IsInitiator ? 0 : 1);
            var ch = new RudDatagramStream(this, id);
            _datagramChannels.Add(id, ch);
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

    // ---- receiving (§3.1, §6.2, §9.1) ----

    internal void OnDataPacket(ReadOnlySpan<byte> packet, SocketAddress from, long now)
    {
        if (!IsEstablished || IsClosed) { _counters.Increment(ref _counters.NoKeys); return; }
        if (!RudWire.TryParseDataHeader(packet, out ulong n, out int headerLength)) { _counters.Increment(ref _counters.Malformed); return; }
        if (_rx.IsReplay(n)) { _counters.Increment(ref _counters.Replayed); return; }
        int phase = packet[RudWire.IdSize] == PacketType.DataPhase1 ? 1 : 0;
        var plain = _ep.ReceivePlain;
        int plainLength = packet.Length - headerLength - RudKeys.TagSize;
        var aad = packet[..headerLength];
        var sealedData = packet[headerLength..];
        bool ok;
        bool switched = false;
        if (phase == _recv!.Phase) ok = _recv.Open(n, aad, sealedData, plain);
        else if (n > _recvPhaseFirst || _recvPrev is null)
        {
            _recvNext ??= _recv.Next();
            ok = _recvNext.Open(n, aad, sealedData, plain);
            switched = ok;
        }
        else ok = _recvPrev.Open(n, aad, sealedData, plain);
        if (!ok) { _counters.Increment(ref _counters.AuthFailed); return; }
        var payload = plain.AsSpan(0, plainLength);
        if (!RudWire.TryParseHeaderBlock(payload, out var header, out int hbLength) || !ValidateFrames(payload[hbLength..]))
        {
            _counters.Increment(ref _counters.Malformed);
            return;
        }
        if (switched)
        {
            _recvPrev?.Dispose();
            _recvPrev = _recv;
            _recv = _recvNext;
            _recvNext = null;
            _recvPhaseFirst = n;
            KeyUpdatesReceived++;
        }
        bool newLargest = !_rx.Any || n > _rx.Largest;
        bool outOfOrder = _rx.Any && n != _rx.Largest + 1;
        if (newLargest && !from.Equals(Peer))
        {
            // Network agility (§7.1): follow the newest authenticated packet.
            Peer = RudEndpoint.Copy(from);
            _counters.Increment(ref _counters.Migrations);
            // A new path may not carry what the old one did (§9.5).
            _maxPacket = RudWire.MaxPacketSize;
            _mtuProbing = false;
            _mtuProbeAttempts = 0;
            _mtuDone = !_ep.ProbesPathMtu;
            _mtuNextProbe = now;
            // What went to the old address is gone: probe at once instead of after a backed-off PTO.
            _ptoCount = 0;
            if (_bytesInFlight > 0) _lastAckElicitingSent = now - PtoDuration;
        }
        _rx.Mark(n);
        if (newLargest) _largestRxTime = now;
        _lastReceive = now;
        if (!IsInitiator && !Confirmed) _ep.OnConfirmed(this);
        if (header.HasRetransmit) _counters.Increment(ref _counters.RetransmissionsReceived);
        if (header.HasAck) OnAck(header, payload.Slice(header.BitfieldOffset, header.BitfieldLength), now);
        bool eliciting = ApplyFrames(payload, hbLength, now);
        if (IsClosed) return;
        if (eliciting)
        {
            _ackElicitingUnacked++;
            int every = ++_ackElicitingReceived <= AckQuickPackets ? 2 : AckEvery;
            if (outOfOrder || _ackElicitingUnacked >= every) _ackNow = true;
            else if (_ackDeadline == 0) _ackDeadline = now + MaxAckDelayUs;
        }
        // Send what this packet made due (an acknowledgement, data the window now allows) on the
        // receiving thread once its batch is handled: no hand-over to the driver loop (§9.4).
        _ep.Touch(this);
    }

    /// <summary>Whether the endpoint's receive batch has this connection on its flush list.</summary>
    internal bool Touched;

    /// <summary>Sends what is due now from the caller's thread (a stream write); the caller holds <see cref="Gate"/>.</summary>
    internal void FlushInline()
    {
        if (!IsClosed) Flush(_ep.Now());
    }

    private static bool ValidateFrames(ReadOnlySpan<byte> frames)
    {
        int pos = 0;
        while (pos < frames.Length)
            if (!RudWire.TryReadFrame(frames, ref pos, out _)) return false;
        return true;
    }

    private bool ApplyFrames(ReadOnlySpan<byte> payload, int start, long now)
    {
        bool eliciting = false;
        int pos = start;
        while (pos < payload.Length)
        {
            RudWire.TryReadFrame(payload, ref pos, out var f);
            if (f.Type == FrameType.Padding) continue;
            eliciting = true;
            switch (f.Type)
            {
                case FrameType.Stream:
                case FrameType.StreamFinal:
                {
                    var s = StreamFor(f.StreamId);
                    if (s is not null && !s.OnStreamFrame(f.Offset, payload.Slice(f.DataOffset, f.DataLength), f.Type == FrameType.StreamFinal))
                    {
                        CloseLocked(3, $"flow-control violation on stream {f.StreamId}", sendClose: true);
                        return eliciting;
                    }
                    break;
                }
                case FrameType.MaxStreamData:
                    if (_streams.TryGetValue(f.StreamId, out var m)) m.OnMaxStreamData(f.Offset);
                    break;
                case FrameType.ResetStream:
                    StreamFor(f.StreamId)?.OnReset(f.Code);
                    break;
                case FrameType.Close:
                {
                    string reason = System.Text.Encoding.UTF8.GetString(payload.Slice(f.DataOffset, Math.Min(f.DataLength, 200)));
                    CloseLocked(f.Code, $"closed by the peer (code {f.Code}: {reason})", sendClose: false);
                    return eliciting;
                }
                case FrameType.Datagram:
                    DatagramStreamFor(f.StreamId)?.Deliver(payload.Slice(f.DataOffset, f.DataLength));
                    break;
            }
        }
        return eliciting;
    }

    /// <summary>The stream a frame names: an open one, a new one the peer opens (§8.1), or null when closed.</summary>
    private RudStream? StreamFor(ulong id)
    {
        if (_streams.TryGetValue(id, out var s)) return s;
        int side = RudWire.StreamSide(id);
        if (side == (IsInitiator ? 0 : 1)) return null; // ours, already closed (or never opened)
        int kind = (int)RudWire.StreamKindOf(id);
        ulong seq = RudWire.StreamSequence(id);
        var seen = _peerSeen[kind];
        if (seen.ContiguousFrom(seq) > seq) return null; // opened before and closed since
        seen.Add(seq, seq + 1);
        if (_peerOpen >= MaxPeerStreams)
        {
            _control.Enqueue(new ControlFrame { Type = FrameType.ResetStream, StreamId = id, Code = 4 });
            _counters.Increment(ref _counters.StreamsRefused);
            return null;
        }
        s = new RudStream(this, id);
        _streams.Add(id, s);
        _peerOpen++;
        _accept.Writer.TryWrite(s);
        return s;
    }

    private RudDatagramStream? DatagramStreamFor(ulong id)
    {
        if (_datagramChannels.TryGetValue(id, out var ch)) return ch;
        if (RudWire.StreamSide(id) == (IsInitiator ? 0 : 1) || _datagramChannels.Count >= MaxPeerStreams)
        {
            _counters.Increment(ref _counters.DatagramsDropped);
            return null;
        }
        ch = new RudDatagramStream(this, id);
        _datagramChannels.Add(id, ch);
        _acceptDatagrams.Writer.TryWrite(ch);
        return ch;
    }

    // ---- acknowledgements and loss detection (§9) ----

    private void OnAck(in HeaderBlock header, ReadOnlySpan<byte> bitfield, long now)
    {
        if (header.AckIndex >= _nextSent) return; // acknowledges a packet never sent: ignored
        bool newlyAcked = false;
        long largestNewlySentTime = -1;
        bool largestEliciting = false;
        AckOne(header.AckIndex, ref newlyAcked, now, isLargest: true, ref largestNewlySentTime, ref largestEliciting);
        // Packets below the oldest one still kept are settled: the walk stops there.
        ulong floor = _sent.Count > 0 ? _sent.FirstNumber : _nextSent;
        for (int b = 0; b < bitfield.Length; b++)
        {
            int v = bitfield[b];
            if (v == 0) continue;
            ulong top = header.AckIndex - 1 - 8 * (ulong)b; // the packet bit 7 of this byte names
            if ((ulong)(8 * b) + 1 > header.AckIndex || top < floor) break;
            for (int j = 0; j < 8; j++)
            {
                if ((v & (0x80 >> j)) == 0) continue;
                if ((ulong)j > top) break;
                ulong n = top - (ulong)j;
                if (n < floor) break;
                AckOne(n, ref newlyAcked, now, isLargest: false, ref largestNewlySentTime, ref largestEliciting);
            }
        }
        if (_mtuProbing && _mtuProbe <= header.AckIndex)
        {
            // The probe is not kept for loss detection, so the window walk may stop short of it.
            ulong d = header.AckIndex - _mtuProbe;
            if (d == 0 || (d - 1 < (ulong)bitfield.Length * 8 && (bitfield[(int)((d - 1) >> 3)] & (0x80 >> (int)((d - 1) & 7))) != 0))
            {
                // The larger packet crossed the path (§9.5).
                _mtuProbing = false;
                _mtuDone = true;
                _maxPacket = RudWire.ProbedPacketSize;
                _counters.Increment(ref _counters.PathMtuRaised);
            }
        }
        if (!_anyAcked || header.AckIndex > _largestAcked)
        {
            _largestAcked = header.AckIndex;
            _anyAcked = true;
        }
        long rttSample = 0;
        if (largestNewlySentTime >= 0 && largestEliciting)
        {
            UpdateRtt(now - largestNewlySentTime, (long)Math.Min(header.AckDelayMicroseconds, (ulong)MaxAckDelayUs));
            rttSample = _latestRtt;
        }
        else if (_newestElicitingSent > 0)
        {
            // The largest was ack-only (both directions busy): the newest ack-eliciting packet this
            // acknowledgement covers still measures the path; its ack delay is unknown, so none is taken off.
            UpdateRtt(now - _newestElicitingSent, 0);
            rttSample = _latestRtt;
        }
        _newestElicitingSent = 0;
        if (!newlyAcked) return;
        DetectLoss(now);
        _ptoCount = 0;
        if (_bbr is not null)
        {
            _bbr.OnAckDone(_ackedBytes, rttSample, _bytesInFlight, now);
            _ackedBytes = 0;
        }
        _sent.PopDone(now - 4 * _srtt);
    }

    private void AckOne(ulong n, ref bool newlyAcked, long now, bool isLargest, ref long largestSentTime, ref bool largestEliciting)
    {

        int i = _sent.IndexOf(n);
        if (i < 0) return;
        ref var p = ref _sent[i];
        if (p.Done)
        {
            if (p.Lost)
            {
                // A late acknowledgement: the loss was reordering (RFC 9002 §6.1.1, §7.? undo).
                p.Lost = false;
                _counters.Increment(ref _counters.SpuriousLosses);
                _lossRate = Math.Max(0, _lossRate - LossWeight);
                ulong distance = (_anyAcked ? Math.Max(_largestAcked, n) : n) - n;
                _packetThreshold = (int)Math.Min(MaxPacketThreshold, Math.Max((ulong)_packetThreshold, distance + 1));
                if (n == _recoveryCause)
                {
                    _cwnd = Math.Max(_cwnd, _cwndBeforeRecovery);
                    _ssthresh = _ssthreshBeforeRecovery;
                    _recoveryCause = ulong.MaxValue;
                }
            }
            return;
        }
        p.Done = true;
        newlyAcked = true;
        if (isLargest) { largestSentTime = p.SentTime; largestEliciting = p.AckEliciting; }
        else if (p.AckEliciting && p.SentTime > _newestElicitingSent) _newestElicitingSent = p.SentTime;
        if (p.InFlight)
        {
            // An underused window does not grow (§9.3, RFC 9002 §7.8): only while at least half of it is in flight.
            bool windowUsed = 2 * _bytesInFlight >= _cwnd;
            _bytesInFlight -= p.Size;
            _lossRate -= _lossRate * LossWeight;
            if (_bbr is not null)
            {
                _bbr.OnAcked(ref p, now);
                _ackedBytes += p.Size;
            }
            // NewReno (§9.3): no growth for packets sent before the current recovery period began.
            else if (p.SentTime > _recoveryStart && windowUsed)
                _cwnd += _cwnd < _ssthresh ? p.Size : Math.Max(1, (long)MaxPacket * p.Size / _cwnd);
        }
        if (n >= _sendPhaseFirst) _sendPhaseAcked = true;
        p.Stream?.OnAcked(p.Offset, p.Length, p.Fin);
        p.Stream = null;
    }

    private void UpdateRtt(long latest, long ackDelay)
    {
        _latestRtt = Math.Max(latest, 1);
        if (!_hasRtt)
        {
            _hasRtt = true;
            _minRtt = _srtt = _latestRtt;
            _rttvar = _latestRtt / 2;
            return;
        }
        _minRtt = Math.Min(_minRtt, _latestRtt);
        long adjusted = _latestRtt >= _minRtt + ackDelay ? _latestRtt - ackDelay : _latestRtt;
        _rttvar = (3 * _rttvar + Math.Abs(_srtt - adjusted)) / 4;
        _srtt = (7 * _srtt + adjusted) / 8;
    }

    private long PtoDuration => _srtt + Math.Max(4 * _rttvar, GranularityUs) + MaxAckDelayUs;

    private void DetectLoss(long now)
    {
        if (!_anyAcked) return;
        long lossDelay = Math.Max(9 * Math.Max(_srtt, _latestRtt) / 8, GranularityUs);
        long lostSendTime = now - lossDelay;
        _lossTime = 0;
        long largestLostSent = -1, firstLostSent = long.MaxValue;
        ulong cause = 0;
        for (int i = 0; i < _sent.Count; i++)
        {
            ref var p = ref _sent[i];
            if (p.Number > _largestAcked) break;
            if (p.Done || !p.InFlight) { if (!p.InFlight) p.Done = true; continue; }
            if (p.Number + (ulong)_packetThreshold <= _largestAcked || p.SentTime <= lostSendTime)
            {
                p.Done = true;
                p.Lost = true;
                cause = p.Number;
                _bytesInFlight -= p.Size;
                _counters.Increment(ref _counters.PacketsLost);
                _bbr?.OnLost(p.Size);
                _lossRate += (1 - _lossRate) * LossWeight;
                largestLostSent = Math.Max(largestLostSent, p.SentTime);
                firstLostSent = Math.Min(firstLostSent, p.SentTime);
                Requeue(ref p, p.Number);
            }
            else
            {
                long t = p.SentTime + lossDelay;
                if (_lossTime == 0 || t < _lossTime) _lossTime = t;
            }
        }
        if (largestLostSent >= 0) OnCongestionEvent(largestLostSent, firstLostSent, cause, now);
        _sent.PopDone(now - 4 * _srtt);
    }

    /// <summary>Puts a packet's reliable frames back in the send queues (§9.2).</summary>
    private void Requeue(ref SentPacket p, ulong number)
    {
        if (p.Stream is { } s)
        {
            s.OnLost(p.Offset, p.Length, p.Fin);
            _retransmitOf = number;
            if (p.Done) p.Stream = null;
        }
        if (p.Control.Type == FrameType.ResetStream) _control.Enqueue(p.Control);
        else if (p.Control.Type == FrameType.MaxStreamData && _streams.TryGetValue(p.Control.StreamId, out var w) && !w.WindowUpdatePending)
        {
            w.WindowUpdatePending = true;
            _control.Enqueue(p.Control);
        }
    }

    private ulong _retransmitOf;
    private long _ackedBytes, _newestElicitingSent;
    private bool _rekeyProbeSent;

    private void OnCongestionEvent(long largestLostSent, long firstLostSent, ulong cause, long now)
    {
        if (_bbr is not null)
        {
            // BBR (§9.3) reads congestion from its model of the path, not from loss.
            if (_hasRtt && largestLostSent - firstLostSent > 3 * PtoDuration) _bbr.OnPersistentCongestion();
            return;
        }
        if (_lossRate <= LossTolerance)
        {
            // Random loss below the tolerance is not taken as congestion (§9.3).
            _counters.Increment(ref _counters.LossesTolerated);
        }
        else if (largestLostSent > _recoveryStart)
        {
            _cwndBeforeRecovery = _cwnd;
            _ssthreshBeforeRecovery = _ssthresh;
            _recoveryCause = cause;
            _recoveryStart = now;
            _ssthresh = Math.Max(_cwnd / 2, MinWindow);
            _cwnd = _ssthresh;
            _counters.Increment(ref _counters.CongestionEvents);
        }
        // Persistent congestion (RFC 9002 §7.6, simplified): losses spanning more than 3 PTOs.
        if (_hasRtt && largestLostSent - firstLostSent > 3 * PtoDuration) _cwnd = MinWindow;
    }

    // ---- timers (§7.4, §9.2) ----

    internal void OnTimer(long now)
    {
        if (IsClosed || !IsEstablished) return;
        if (now - _lastReceive > _ep.Options.IdleTimeout.Ticks / 10)
        {
            CloseLocked(5, "idle timeout", sendClose: false);
            return;
        }
        if (_mtuProbing && now >= _mtuProbeDeadline)
        {
            // Unanswered: the path does not carry it (or it was lost); a few more tries, then keep the base size.
            _mtuProbing = false;
            if (++_mtuProbeAttempts >= MtuProbeAttempts) _mtuDone = true;
            else _mtuNextProbe = now + MtuRetryUs;
        }
        if (_lossTime != 0 && now >= _lossTime) DetectLoss(now);
        else if (PtoAt is long pto && now >= pto)
        {
            _ptoCount++;
            _probes = 2;
            _counters.Increment(ref _counters.ProbeTimeouts);
            bool queued = false;
            for (int i = 0; i < _sent.Count; i++)
            {
                ref var p = ref _sent[i];
                if (p.Done || !p.InFlight || !p.AckEliciting) continue;
                if (p.Stream is not null || p.Control.Type != 0) { Requeue(ref p, p.Number); queued = true; }
                break;
            }
            if (!queued) _pingPending = true;
            _lastAckElicitingSent = now; // the backoff runs from here
        }
        if (_streams.Count > 0 && now - _lastSend > _ep.Options.KeepAlive.Ticks / 10) _pingPending = true;
    }

    private long? PtoAt => _bytesInFlight > 0 ? _lastAckElicitingSent + Math.Min(PtoDuration << Math.Min(_ptoCount, 16), MaxPtoUs) : null;

    /// <summary>The backed-off PTO never exceeds 2 s, so a path that comes back is probed soon (§9.2).</summary>
    private const long MaxPtoUs = 2_000_000;

    /// <summary>Sends a PING soon (after the local address changed, §7.1).</summary>
    internal void QueuePing()
    {
        _pingPending = true;
        _ep.RequestFlush(this);
    }

    /// <summary>The earliest time this connection needs the driver again.</summary>
    internal long NextWake(long now)
    {
        if (IsClosed) return long.MaxValue;
        if (!IsEstablished) return IsInitiator ? Math.Min(HandshakeResendAt, HandshakeDeadline) : long.MaxValue;
        long t = _lastReceive + _ep.Options.IdleTimeout.Ticks / 10;
        if (_ackDeadline != 0) t = Math.Min(t, _ackDeadline);
        if (_mtuProbing) t = Math.Min(t, _mtuProbeDeadline);
        else if (!_mtuDone) t = Math.Min(t, Math.Max(_mtuNextProbe, now));
        if (_lossTime != 0) t = Math.Min(t, _lossTime);
        else if (PtoAt is long pto) t = Math.Min(t, pto);
        if (_streams.Count > 0) t = Math.Min(t, _lastSend + _ep.Options.KeepAlive.Ticks / 10);
        if (HasElicitingWork && _bytesInFlight + _maxPacket <= Cwnd && _tokens < 0)
            t = Math.Min(t, now + (long)Math.Ceiling(-_tokens / PacingRate));
        return t;
    }

    private bool HasElicitingWork => _pingPending || _control.Count > 0 || _sendQueue.Count > 0 || _datagrams.Count > 0;

    /// <summary>Bytes per microsecond: 1.25 × window / smoothed RTT (§9.3).</summary>
    private double PacingRate => _bbr?.PacingRate ?? 1.25 * _cwnd / Math.Max(_srtt, 100);

    private bool PacingAllows(long now)
    {
        double burst = Math.Max(10.0 * MaxPacket, PacingRate * 2000);
        _tokens = Math.Min(burst, _tokens + (now - _tokensTime) * PacingRate);
        _tokensTime = now;
        return _tokens >= 0;
    }

    // ---- sending (§3.1, §9) ----

    /// <summary>Sends what is due: acknowledgements, control frames and stream data, within the window and the pacing rate.</summary>
    internal void Flush(long now)
    {
        if (IsClosed || !IsEstablished) return;
        try
        {
            if (!_mtuDone && !_mtuProbing && now >= _mtuNextProbe && _rx.Any) SendMtuProbe(now);
            for (int budget = 64; budget > 0; budget--)
            {
                bool ackDue = _rx.Any && (_ackNow || (_ackDeadline != 0 && now >= _ackDeadline));
                bool mayElicit = HasElicitingWork && (_probes > 0 || (_bytesInFlight + _maxPacket <= Cwnd && PacingAllows(now)));
                if (!mayElicit && !ackDue)
                {
                    // Nothing to send with room in the window: rate samples until now say little about the path.
                    if (_bbr is not null && !HasElicitingWork && _bytesInFlight + _maxPacket <= Cwnd) _bbr.OnAppLimited(_bytesInFlight);
                    return;
                }
                if (!SendPacket(now, mayElicit)) return;
            }
            _ep.RequestFlush(this); // more to do: come back on the next turn
        }
        finally
        {
            _ep.SendBatch();
        }
    }

    private bool SendPacket(long now, bool elicit)
    {
        MaybeRekey();
        // The payload is built in place: header block first (its ACK part is known now), then room
        // for a retransmit index, then the frames; no copy between buffers.
        var plain = _ep.SendPlain.AsSpan();
        // The ACK block rides only while ack-eliciting packets wait for it (§9.1): repeating it on
        // every packet made each side walk the window per packet for nothing, and cost the room.
        bool withAck = _rx.Any && _ackElicitingUnacked > 0;
        int pos = 1;
        if (withAck)
        {
            pos += RudWire.WriteVarint(plain[pos..], _rx.Largest);
            pos += RudWire.WriteVarint(plain[pos..], (ulong)Math.Max(0, now - _largestRxTime));
            int lengthAt = pos++;
            int bf = _rx.WriteBitfield(plain[pos..]);
            plain[lengthAt] = (byte)bf;
            pos += bf;
        }
        int ackEnd = pos;
        // A retransmitted packet's index is below the next one, so its varint is never longer;
        // unused, the reserved bytes are zeros: PADDING frames (§3.2).
        int framesAt = ackEnd + RudWire.VarintLength(_nextSent);
        int h = RudWire.IdSize + 1 + RudWire.VarintLength(_nextSent);
        int plainRoom = _maxPacket - h - RudKeys.TagSize;
        var frames = plain[framesAt..plainRoom];
        int room = frames.Length;
        int used = 0;
        var record = new SentPacket { Number = _nextSent, SentTime = now };
        bool retransmission = false;
        if (elicit)
        {
            if (_control.Count > 0 && room - used > 40)
            {
                var c = _control.Dequeue();
                if (c.Type == FrameType.MaxStreamData)
                {
                    if (_streams.TryGetValue(c.StreamId, out var ws) && ws.WindowUpdatePending)
                    {
                        ws.WindowUpdatePending = false;
                        used += RudWire.WriteMaxStreamData(frames[used..], c.StreamId, ws.AdvertisedMax);
                        record.Control = c;
                    }
                }
                else
                {
                    used += RudWire.WriteResetStream(frames[used..], c.StreamId, c.Code, c.Value);
                    record.Control = c;
                }
            }
            if (_pingPending)
            {
                frames[used++] = FrameType.Ping;
                _pingPending = false;
            }
            while (_datagrams.Count > 0)
            {
                var d = _datagrams.Peek();
                if (room - used < d.Length + 1 + 8 + 8 + 1 + 2) break;
                used += RudWire.WriteDatagramFrame(frames[used..], d.StreamId, d.Index, d.Buffer.AsSpan(0, d.Length));
                _datagrams.Dequeue();
                System.Buffers.ArrayPool<byte>.Shared.Return(d.Buffer);
            }
            while (_sendQueue.Count > 0)
            {
                var s = _sendQueue.Peek();
                if (!s.HasSendWork || s.Connection != this) { _sendQueue.Dequeue(); s.InSendQueue = false; continue; }
                int n = s.WriteFrame(frames[used..], out ulong off, out int len, out bool fin, out bool re);
                if (n == 0) break;
                used += n;
                record.Stream = s;
                record.Offset = off;
                record.Length = len;
                record.Fin = fin;
                retransmission = re;
                _sendQueue.Dequeue();
                if (s.HasSendWork) _sendQueue.Enqueue(s);
                else s.InSendQueue = false;
                break; // one STREAM frame per packet (§9: the sent record holds one)
            }
        }
        bool eliciting = used > 0;
        if (!eliciting && !(_rx.Any && (_ackNow || (_ackDeadline != 0 && now >= _ackDeadline)))) return false;

        byte flags = 0;
        if (withAck) flags |= RudWire.FlagAck;
        if (retransmission) flags |= RudWire.FlagRetransmit;
        plain[0] = flags;
        pos = ackEnd;
        if (retransmission) pos += RudWire.WriteVarint(plain[pos..], _retransmitOf);
        plain[pos..framesAt].Clear();
        pos = framesAt + used;
        // A packet whose STREAM frame filled the room left (more data was waiting) is padded to
        // exactly the packet size (§9.4): a burst of equal-sized packets goes out as one segmented send.
        if (record.Stream is not null && used >= room - 2 && pos < plainRoom)
        {
            plain[pos..plainRoom].Clear();
            pos = plainRoom;
        }
        int size = h + pos + RudKeys.TagSize;
        var packet = _ep.ReservePacket(Peer);
        RudWire.WriteDataHeader(packet, RemoteId, _send!.Phase, _nextSent);
        _send.Seal(_nextSent, packet[..h], plain[..pos], packet[h..]);
        _ep.CommitPacket(size);
        _nextSent++;
        _lastSend = now;
        if (withAck) { _ackNow = false; _ackDeadline = 0; _ackElicitingUnacked = 0; }
        record.Size = size;
        record.AckEliciting = eliciting;
        record.InFlight = eliciting;
        record.Done = !eliciting;
        if (eliciting)
        {
            _bbr?.OnSend(ref record, _bytesInFlight, now);
            _bytesInFlight += size;
            _lastAckElicitingSent = now;
            _tokens -= size;
            if (_probes > 0) _probes--;
        }
        _sent.Add(record);
        if (!eliciting) _sent.PopDone(now - 4 * _srtt);
        return true;
    }

    /// <summary>
    /// Sends a path MTU probe (§9.5): a PING padded to <see cref="RudWire.ProbedPacketSize"/>
    /// bytes, not counted in flight, so its loss is never taken for congestion; acknowledged, the
    /// connection's packets grow to that size.
    /// </summary>
    private void SendMtuProbe(long now)
    {
        MaybeRekey();
        var plain = _ep.SendPlain.AsSpan();
        int h = RudWire.IdSize + 1 + RudWire.VarintLength(_nextSent);
        int length = RudWire.ProbedPacketSize - h - RudKeys.TagSize;
        plain[0] = 0; // no ACK block
        plain[1] = FrameType.Ping;
        plain[2..length].Clear();
        var packet = _ep.SendPacketBuffer.AsSpan(0, RudWire.ProbedPacketSize);
        RudWire.WriteDataHeader(packet, RemoteId, _send!.Phase, _nextSent);
        _send.Seal(_nextSent, packet[..h], plain[..length], packet[h..]);
        _ep.SendProbe(packet, Peer);
        _sent.Add(new SentPacket { Number = _nextSent, SentTime = now, Size = RudWire.ProbedPacketSize, Done = true });
        _mtuProbe = _nextSent;
        _mtuProbing = true;
        _nextSent++;
        _lastSend = now;
        _mtuProbeDeadline = now + Math.Max(3 * PtoDuration, 200_000);
        _counters.Increment(ref _counters.PathMtuProbes);
    }

    /// <summary>Key update (§7.3): after RekeyInterval packets, once the current phase has been acknowledged.</summary>
    private void MaybeRekey()
    {
        if (_nextSent - _sendPhaseFirst < (ulong)RekeyInterval) return;
        if (!_sendPhaseAcked)
        {
            // Only ack-eliciting packets get acknowledged: a side that sends nothing but
            // acknowledgements asks for one with a PING, once per phase.
            if (!_rekeyProbeSent) { _pingPending = true; _rekeyProbeSent = true; }
            return;
        }
        _rekeyProbeSent = false;
        var next = _send!.Next();
        _send.Dispose();
        _send = next;
        _sendPhaseFirst = _nextSent;
        _sendPhaseAcked = false;
        KeyUpdatesSent++;
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
        foreach (var ch in _datagramChannels.Values) ch.Complete(error);
        _datagramChannels.Clear();
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
