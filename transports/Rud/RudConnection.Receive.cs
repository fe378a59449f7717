using System.Net;

namespace PtHost.Transports.Rud;

/// <summary>Receiving (spec/rud.md §3.1, §6.2, §9.1): packets in, frames applied to streams.</summary>
public sealed partial class RudConnection
{
    internal void OnDataPacket(ReadOnlySpan<byte> packet, SocketAddress from, long now)
    {
        if (!IsEstablished || IsClosed) { _counters.Increment(ref _counters.NoKeys); return; }
        if (!RudWire.TryParseDataHeader(packet, out uint truncated, out int headerLength)) { _counters.Increment(ref _counters.Malformed); return; }
        ulong n = RudWire.ExpandSentIndex(_rx.Any ? _rx.Largest + 1 : 1, truncated);
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
        if (!CanTakeFrames(payload[hbLength..]))
        {
            // Reassembly limits (§8.3): not acknowledged, so the peer sends it again once there is room.
            _counters.Increment(ref _counters.ReassemblyRefused);
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
        // Network agility (§7.1): another address is challenged first; the connection moves when it answers.
        if (!from.Equals(Peer)) OnPacketFromOtherAddress(from, packet.Length, newLargest, now);
        _rx.Mark(n);
        if (newLargest) _largestRxTime = now;
        _lastReceive = now;
        if (!IsInitiator && !Confirmed) _ep.OnConfirmed(this);
        if (header.HasRetransmit) _counters.Increment(ref _counters.RetransmissionsReceived);
        if (header.HasAck) OnAck(header, payload.Slice(header.BitfieldOffset, header.BitfieldLength), now);
        bool eliciting = ApplyFrames(payload, hbLength, from, now);
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

    /// <summary>Per stream a packet names: the highest end of its STREAM frames and the ranges they may add.</summary>
    private readonly List<(ulong Id, ulong End, int Ranges)> _taking = [];

    /// <summary>Whether every STREAM frame of a payload fits the reassembly limits (§8.3).</summary>
    private bool CanTakeFrames(ReadOnlySpan<byte> frames)
    {
        _taking.Clear();
        int pos = 0;
        while (pos < frames.Length)
        {
            RudWire.TryReadFrame(frames, ref pos, out var f);
            if (f.Type is not (FrameType.Stream or FrameType.StreamFinal) || f.DataLength == 0) continue;
            ulong end = f.Offset + (ulong)f.DataLength;
            int ranges = _streams.TryGetValue(f.StreamId, out var s) ? s.NewRanges(f.Offset, end) : 1;
            int i = 0;
            while (i < _taking.Count && _taking[i].Id != f.StreamId) i++;
            if (i == _taking.Count) _taking.Add((f.StreamId, end, ranges));
            else _taking[i] = (f.StreamId, Math.Max(end, _taking[i].End), _taking[i].Ranges + ranges);
        }
        long planned = 0;
        foreach (var (id, end, ranges) in _taking)
        {
            if (_streams.TryGetValue(id, out var s))
            {
                if (!s.CanTake(end, ranges, ref planned)) return false;
            }
            else if (RudWire.StreamSide(id) != (IsInitiator ? 0 : 1) && end <= RudStream.Window
                && (ranges > RudStream.MaxReceiveRanges || !RudStream.CanGrow(Rings, 0, 0, end, ref planned)))
                return false; // a stream these frames would open
        }
        return true;
    }

    private bool ApplyFrames(ReadOnlySpan<byte> payload, int start, SocketAddress from, long now)
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
                case FrameType.PathChallenge:
                    OnPathChallenge(payload.Slice(f.DataOffset, 8), from, now);
                    break;
                case FrameType.PathResponse:
                    OnPathResponse(payload.Slice(f.DataOffset, 8), now);
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
        if (seq >= seen.ContiguousFrom(0) + MaxPeerStreams)
        {
            // A peer with at most 256 streams open never names one 256 above the lowest it has not opened
            // (§8.1): refused without a trace, so the set of seen sequences stays small.
            _control.Enqueue(new ControlFrame { Type = FrameType.ResetStream, StreamId = id, Code = 4 });
            _counters.Increment(ref _counters.StreamsRefused);
            return null;
        }
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
        if (_datagramStreams.TryGetValue(id, out var ch)) return ch;
        if (RudWire.StreamSide(id) == (IsInitiator ? 0 : 1) || _datagramStreams.Count >= MaxPeerStreams)
        {
            _counters.Increment(ref _counters.DatagramsDropped);
            return null;
        }
        ch = new RudDatagramStream(this, id);
        _datagramStreams.Add(id, ch);
        _acceptDatagrams.Writer.TryWrite(ch);
        return ch;
    }
}
