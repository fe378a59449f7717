namespace PtHost.Transports.Rud;

/// <summary>Sending (spec/rud.md §3.1, §9): acknowledgements, control frames and stream data, within the window and the pacing rate; MTU probes and key updates.</summary>
public sealed partial class RudConnection
{
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
        const int h = RudWire.DataHeaderSize;
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
        Hp.Mask(packet[..size]); // §3.3: one AES block
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
        const int h = RudWire.DataHeaderSize;
        int length = RudWire.ProbedPacketSize - h - RudKeys.TagSize;
        plain[0] = 0; // no ACK block
        plain[1] = FrameType.Ping;
        plain[2..length].Clear();
        var packet = _ep.SendPacketBuffer.AsSpan(0, RudWire.ProbedPacketSize);
        RudWire.WriteDataHeader(packet, RemoteId, _send!.Phase, _nextSent);
        _send.Seal(_nextSent, packet[..h], plain[..length], packet[h..]);
        Hp.Mask(packet);
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

    /// <summary>
    /// Test hook (tests/PtHost.Reliability's attack tests forge what a key holder can send): a Data
    /// packet whose payload is a header block without ACK followed by exactly <paramref name="frames"/>,
    /// sealed with the next sent index into <paramref name="packet"/>; returns its length (§7.1's
    /// <see cref="SealFrames"/>).
    /// </summary>
    internal int SealRawPacket(ReadOnlySpan<byte> frames, Span<byte> packet)
    {
        lock (Gate)
        {
            if (!IsEstablished || IsClosed) throw new InvalidOperationException("not established");
            return SealFrames(frames, packet, _ep.Now());
        }
    }

    /// <summary>Test hook: <see cref="SealRawPacket"/> sent to the peer's address; returns the packet's sent index.</summary>
    internal ulong SendRawPacket(ReadOnlySpan<byte> frames)
    {
        var packet = new byte[RudWire.MaxReceiveSize];
        lock (Gate)
        {
            ulong index = _nextSent;
            int n = SealRawPacket(frames, packet);
            _ep.SendTo(packet.AsSpan(0, n), Peer);
            return index;
        }
    }

    /// <summary>Test hook: whether the peer has acknowledged a packet with sent index at least <paramref name="index"/>.</summary>
    internal bool AcknowledgedUpTo(ulong index)
    {
        lock (Gate) return _anyAcked && _largestAcked >= index;
    }
}
